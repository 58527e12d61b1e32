//! Read-only enforcement through mount flags on real pods:
//! `parapet::mountns::make_read_only` blocks every kind of mutation inside
//! the container while declared writable paths, other pods and the host
//! keep writing; a file open for writing makes it report EBUSY until the
//! writer is gone; `stat_in_container` identifies files as the container
//! sees them; and the agent's own mount namespace is refused.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use parapet::mountns::{
    FileIdentity, MountNsError, ReadOnlyReport, make_read_only, stat_in_container, verify_read_only,
};
use parapet_tests::{Containerd, ExecOutput, Pod, image};

const EROFS_MESSAGE: &str = "Read-only file system";
/// Environment variable that passes the host pid to `host_namespace_probe`.
const HOST_PID_VARIABLE: &str = "PARAPET_TEST_HOST_PID";
/// A pid above the kernel's maximum (`PID_MAX_LIMIT`, 4194304), so no
/// process has it.
const UNUSED_PID: u32 = 4_194_305;
/// Time a killed writer gets to exit and close its file.
const WRITER_EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// Creates the files that the mutations below act on. `/data.txt` contains
/// `original\n` (9 bytes, mode 644).
const SETUP: &str = "rm -rf /newfile /renamed.txt /newdir /hardlink /symlink /fifo /dev/shm/new \
     && printf 'original\\n' > /data.txt && chmod 644 /data.txt && chown 0:0 /data.txt \
     && mkdir -p /olddir && printf 'segment' > /dev/shm/segment";

/// Mutations of files outside the writable path, each of which must fail
/// with EROFS on a read-only pod and succeed on an ordinary one.
const MUTATIONS: [(&str, &str); 18] = [
    ("create a file", "touch /newfile"),
    ("overwrite a file", "echo changed > /data.txt"),
    ("append to a file", "echo more >> /data.txt"),
    ("truncate a file", ": > /data.txt"),
    ("set file times", "touch /data.txt"),
    ("remove a file", "rm /data.txt"),
    ("rename a file", "mv /data.txt /renamed.txt"),
    ("create a directory", "mkdir /newdir"),
    ("remove a directory", "rmdir /olddir"),
    ("create a hard link", "ln /data.txt /hardlink"),
    ("create a symlink", "ln -s /data.txt /symlink"),
    ("create a FIFO", "mknod /fifo p"),
    ("change the mode", "chmod 600 /data.txt"),
    ("change the owner", "chown 1:1 /data.txt"),
    (
        "append to /etc/hosts",
        "echo '10.0.0.1 other' >> /etc/hosts",
    ),
    (
        "append to /etc/resolv.conf",
        "echo 'nameserver 10.0.0.1' >> /etc/resolv.conf",
    ),
    ("overwrite /etc/hostname", "echo other > /etc/hostname"),
    ("write to /dev/shm", "echo x > /dev/shm/new"),
];

/// Commands whose output must not change while the mutations fail.
const STATE_PROBES: [&str; 6] = [
    "cat /data.txt",
    "stat -c '%a %u %g %s %Y' /data.txt",
    "ls -1a /",
    "ls -1a /etc /olddir /dev/shm",
    "cat /etc/hosts /etc/resolv.conf /etc/hostname",
    "cat /dev/shm/segment",
];

fn writable_tmp() -> Vec<PathBuf> {
    vec![PathBuf::from("/tmp")]
}

async fn sh(pod: &Pod, script: &str) -> Result<ExecOutput> {
    pod.exec(&["sh", "-c", script]).await
}

/// Runs `script` and fails unless it exits with 0.
async fn sh_ok(pod: &Pod, script: &str) -> Result<String> {
    let output = sh(pod, script).await?;
    if output.exit_code != 0 {
        bail!("{script:?} failed in pod {}: {output:?}", pod.name);
    }
    Ok(output.stdout)
}

/// Runs `body` with a fresh containerd, then cleans up whether or not the
/// body failed. A panic in the body drops the containerd, whose teardown
/// removes the pods as well.
macro_rules! with_containerd {
    ($body:ident) => {{
        parapet_tests::skip_unless_testbed!(Ok(()));
        let containerd = Containerd::start(env!("CARGO_BIN_EXE_netprobe")).await?;
        let result = $body(&containerd).await;
        let cleanup = containerd.cleanup().await;
        result?;
        cleanup
    }};
}

#[tokio::test]
async fn readonly_blocks_mutations() -> Result<()> {
    with_containerd!(blocks_mutations)
}

async fn blocks_mutations(containerd: &Containerd) -> Result<()> {
    let enforced = Pod::run(containerd, "ro-enforced", "readonly", &[("app", "ro")]).await?;
    let control = Pod::run(containerd, "ro-control", "readonly", &[("app", "ro")]).await?;
    for pod in [&enforced, &control] {
        sh_ok(pod, SETUP).await?;
    }
    let state_before = probe_state(&enforced).await?;
    let host_mountinfo_before = std::fs::read_to_string("/proc/self/mountinfo")?;

    let started = Instant::now();
    let report = make_read_only(enforced.pid, &writable_tmp())?;
    println!(
        "make_read_only on a fresh pod: {:?} ({} mounts made read-only, {} bound writable)",
        started.elapsed(),
        report.made_read_only.len(),
        report.bound_writable.len()
    );
    println!("{report:#?}");
    assert!(report.is_complete(), "{report:#?}");
    assert_eq!(report.bound_writable, writable_tmp());
    assert!(report.missing_writable.is_empty(), "{report:#?}");
    for mount_point in [
        "/",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/dev",
        "/dev/shm",
    ] {
        assert!(
            report.made_read_only.contains(&PathBuf::from(mount_point)),
            "{mount_point} missing from made_read_only: {report:#?}"
        );
    }
    for mount_point in ["/proc", "/dev/pts", "/sys"] {
        assert!(
            report
                .skipped
                .iter()
                .any(|(path, _)| path == Path::new(mount_point)),
            "{mount_point} missing from skipped: {report:#?}"
        );
    }
    let still_writable = verify_read_only(enforced.pid, &writable_tmp())?;
    assert!(still_writable.is_empty(), "{still_writable:?}");

    for (what, script) in MUTATIONS {
        let output = sh(&enforced, script).await?;
        assert_ne!(
            output.exit_code, 0,
            "{what} succeeded on the read-only pod: {output:?}"
        );
        assert!(
            output.stderr.contains(EROFS_MESSAGE),
            "{what} failed for another reason than EROFS: {output:?}"
        );
    }
    let state_after = probe_state(&enforced).await?;
    for ((probe, before), after) in STATE_PROBES.iter().zip(&state_before).zip(&state_after) {
        assert_eq!(
            before, after,
            "output of {probe:?} changed on the read-only pod"
        );
    }
    assert_eq!(
        state_after[0], "original\n",
        "content of /data.txt on the read-only pod"
    );

    let tmp_work = sh_ok(
        &enforced,
        "echo hi > /tmp/a && mkdir /tmp/d && mv /tmp/a /tmp/d/b && ln -s /tmp/d/b /tmp/l \
         && ln /tmp/d/b /tmp/h && chmod 600 /tmp/d/b && cat /tmp/l && rm -r /tmp/d /tmp/l /tmp/h",
    )
    .await?;
    assert_eq!(tmp_work, "hi\n", "writes below the writable /tmp");
    sh_ok(&enforced, "echo x > /dev/null").await?;

    check_control_pod_writes(&control).await?;
    check_host_unaffected(containerd, &enforced, &host_mountinfo_before).await?;

    let mountinfo_path = format!("/proc/{}/mountinfo", enforced.pid);
    let mountinfo_before_second_call = std::fs::read_to_string(&mountinfo_path)?;
    let started = Instant::now();
    let second = make_read_only(enforced.pid, &writable_tmp())?;
    println!(
        "make_read_only again on the same pod: {:?}",
        started.elapsed()
    );
    check_second_call_changes_nothing(&report, &second);
    assert_eq!(
        std::fs::read_to_string(&mountinfo_path)?,
        mountinfo_before_second_call,
        "the second call changed the pod's mount table"
    );
    print_repeated_call_times(&enforced)?;
    Ok(())
}

/// Prints the spread of times of calls that find everything done already.
/// Each call still forks, enters the namespace and reads mountinfo.
fn print_repeated_call_times(pod: &Pod) -> Result<()> {
    const CALLS: usize = 20;
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        let report = make_read_only(pod.pid, &writable_tmp())?;
        times.push(started.elapsed());
        assert!(report.made_read_only.is_empty(), "{report:#?}");
    }
    times.sort();
    println!(
        "make_read_only repeated {CALLS} times: min {:?}, median {:?}, max {:?}",
        times[0],
        times[CALLS / 2],
        times[CALLS - 1]
    );
    Ok(())
}

async fn probe_state(pod: &Pod) -> Result<Vec<String>> {
    let mut outputs = Vec::new();
    for probe in STATE_PROBES {
        outputs.push(sh_ok(pod, probe).await?);
    }
    Ok(outputs)
}

/// Checks that every mutation succeeds on a pod that was left alone, and
/// that its mounts stay writable.
async fn check_control_pod_writes(control: &Pod) -> Result<()> {
    for (what, script) in MUTATIONS {
        sh_ok(control, SETUP).await?;
        let output = sh(control, script).await?;
        assert_eq!(
            output.exit_code, 0,
            "{what} failed on the control pod: {output:?}"
        );
    }
    let writable = verify_read_only(control.pid, &writable_tmp())?;
    assert!(
        writable.contains(&PathBuf::from("/")),
        "root of the control pod is not writable: {writable:?}"
    );
    Ok(())
}

/// Checks that the host's mount table is unchanged, that the host writes
/// files, and that the host can still write the file behind the pod's
/// read-only `/etc/hosts`.
async fn check_host_unaffected(
    containerd: &Containerd,
    enforced: &Pod,
    host_mountinfo_before: &str,
) -> Result<()> {
    let host_mountinfo_after = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert_eq!(
        host_mountinfo_before, host_mountinfo_after,
        "the host's mount table changed"
    );
    assert!(
        !root_mount_options(&host_mountinfo_after)?
            .split(',')
            .any(|option| option == "ro"),
        "the host's root mount is read-only"
    );

    let host_file = std::env::temp_dir().join(format!("parapet-readonly-{}", std::process::id()));
    std::fs::write(&host_file, "host write\n")?;
    let read_back = std::fs::read_to_string(&host_file);
    std::fs::remove_file(&host_file)?;
    assert_eq!(read_back?, "host write\n");

    let hosts_file = containerd
        .dir()
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&enforced.sandbox_id)
        .join("hosts");
    let mut hosts = std::fs::read_to_string(&hosts_file)
        .with_context(|| format!("failed to read {}", hosts_file.display()))?;
    hosts.push_str("# written by the host\n");
    std::fs::write(&hosts_file, &hosts)?;
    let seen_in_pod = sh_ok(enforced, "cat /etc/hosts").await?;
    assert_eq!(seen_in_pod, hosts, "the pod does not see the host's write");
    Ok(())
}

fn check_second_call_changes_nothing(first: &ReadOnlyReport, second: &ReadOnlyReport) {
    assert!(second.is_complete(), "{second:#?}");
    assert!(second.made_read_only.is_empty(), "{second:#?}");
    assert!(second.bound_writable.is_empty(), "{second:#?}");
    assert!(second.missing_writable.is_empty(), "{second:#?}");
    for mount_point in &first.made_read_only {
        assert!(
            second.already_read_only.contains(mount_point),
            "{} not already read-only on the second call: {second:#?}",
            mount_point.display()
        );
    }
    assert!(
        second
            .skipped
            .iter()
            .any(|(path, _)| path == Path::new("/tmp")),
        "the /tmp bind is not skipped as writable: {second:#?}"
    );
}

/// Returns the per-mount options (field 6) of the `/` line of a mountinfo
/// text.
fn root_mount_options(mountinfo: &str) -> Result<String> {
    mountinfo
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields.len() > 5 && fields[4] == "/")
        .map(|fields| fields[5].to_string())
        .next_back()
        .context("no / line in mountinfo")
}

#[tokio::test]
async fn readonly_writable_edge_cases() -> Result<()> {
    with_containerd!(writable_edge_cases)
}

/// Checks that a writable path behind a symlink is rejected rather than
/// followed, that a missing one is reported and not created, and that a
/// writable file works like a writable directory.
async fn writable_edge_cases(containerd: &Containerd) -> Result<()> {
    let pod = Pod::run(containerd, "ro-edges", "readonly", &[("app", "ro")]).await?;
    sh_ok(
        &pod,
        "ln -s / /escape && printf 'log\\n' > /app.log && mkdir -p /var/data",
    )
    .await?;
    let writable: Vec<PathBuf> = ["/tmp", "/escape", "/app.log", "/missing/dir", "/var/data/"]
        .iter()
        .map(PathBuf::from)
        .collect();

    let report = make_read_only(pod.pid, &writable)?;
    assert_eq!(report.failed, [(PathBuf::from("/escape"), libc::ELOOP)]);
    assert_eq!(report.missing_writable, [PathBuf::from("/missing/dir")]);
    assert_eq!(
        report.bound_writable,
        ["/tmp", "/app.log", "/var/data"].map(PathBuf::from)
    );
    assert!(
        report.made_read_only.contains(&PathBuf::from("/")),
        "{report:#?}"
    );
    assert!(verify_read_only(pod.pid, &writable)?.is_empty());

    for script in [
        "touch /escape/newfile",
        "touch /newfile",
        "rm /app.log",
        "mkdir /missing",
    ] {
        let output = sh(&pod, script).await?;
        assert_ne!(output.exit_code, 0, "{script:?} succeeded: {output:?}");
        assert!(
            output.stderr.contains(EROFS_MESSAGE),
            "{script:?}: {output:?}"
        );
    }
    let log = sh_ok(&pod, "echo more >> /app.log && cat /app.log").await?;
    assert_eq!(log, "log\nmore\n", "writes to the writable file");
    sh_ok(
        &pod,
        "mkdir /var/data/x && touch /var/data/x/y && rm -r /var/data/x",
    )
    .await?;

    let second = make_read_only(pod.pid, &writable)?;
    assert_eq!(second.failed, report.failed, "the symlink is refused again");
    assert!(second.made_read_only.is_empty(), "{second:#?}");
    assert!(second.bound_writable.is_empty(), "{second:#?}");
    assert_eq!(second.missing_writable, report.missing_writable);
    Ok(())
}

#[tokio::test]
async fn readonly_busy_writer() -> Result<()> {
    with_containerd!(busy_writer)
}

async fn busy_writer(containerd: &Containerd) -> Result<()> {
    let pod = Pod::run(containerd, "ro-busy", "readonly", &[("app", "ro")]).await?;
    // The writer keeps /data2.txt, on the root mount, open for writing.
    sh_ok(
        &pod,
        "sh -c 'exec 3>/data2.txt; echo $$ > /tmp/writer.pid; exec sleep 60' \
         </dev/null >/dev/null 2>&1 &",
    )
    .await?;
    let writer_pid = wait_for_writer(&pod).await?;

    let started = Instant::now();
    let busy = make_read_only(pod.pid, &writable_tmp())?;
    println!("make_read_only with a writer open: {:?}", started.elapsed());
    assert!(!busy.is_complete(), "{busy:#?}");
    assert_eq!(busy.failed, [(PathBuf::from("/"), libc::EBUSY)]);
    assert_eq!(busy.busy(), [Path::new("/")]);
    assert_eq!(busy.bound_writable, writable_tmp());
    assert!(
        busy.made_read_only.contains(&PathBuf::from("/etc/hosts")),
        "{busy:#?}"
    );
    assert_eq!(
        verify_read_only(pod.pid, &writable_tmp())?,
        [PathBuf::from("/")]
    );

    sh_ok(&pod, &format!("kill {writer_pid}")).await?;
    let deadline = Instant::now() + WRITER_EXIT_PATIENCE;
    let done = loop {
        let started = Instant::now();
        let report = make_read_only(pod.pid, &writable_tmp())?;
        let elapsed = started.elapsed();
        if report.is_complete() || Instant::now() >= deadline {
            println!("make_read_only after the writer exited: {elapsed:?}");
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(done.is_complete(), "{done:#?}");
    assert_eq!(done.made_read_only, [PathBuf::from("/")]);
    assert!(done.bound_writable.is_empty(), "{done:#?}");
    assert!(verify_read_only(pod.pid, &writable_tmp())?.is_empty());

    let output = sh(&pod, "touch /after-writer").await?;
    assert_ne!(output.exit_code, 0, "{output:?}");
    assert!(output.stderr.contains(EROFS_MESSAGE), "{output:?}");
    sh_ok(&pod, "touch /tmp/after-writer").await?;
    Ok(())
}

/// Waits until the background writer wrote its pid, and returns it.
async fn wait_for_writer(pod: &Pod) -> Result<String> {
    let deadline = Instant::now() + WRITER_EXIT_PATIENCE;
    loop {
        let output = sh(pod, "cat /tmp/writer.pid").await?;
        let pid = output.stdout_trimmed().to_string();
        if output.exit_code == 0 && !pid.is_empty() {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            bail!("the writer did not start: {output:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stat_in_container_identities() -> Result<()> {
    with_containerd!(identities)
}

async fn identities(containerd: &Containerd) -> Result<()> {
    let pod = Pod::run(containerd, "ro-stat", "readonly", &[("app", "ro")]).await?;
    sh_ok(
        &pod,
        "printf hello > /tmp/f && ln /tmp/f /tmp/hard && cp /tmp/f /tmp/copy \
         && ln -s /bin/busybox /bin/mysh && ln -s /etc/hostname /tmp/hostname-link",
    )
    .await?;
    let existing = [
        "/tmp/f",
        "/tmp/hard",
        "/tmp/copy",
        "/bin/mysh",
        "/bin/busybox",
        "/tmp/hostname-link",
        "/etc/hostname",
    ];
    let mut paths: Vec<PathBuf> = existing.iter().map(PathBuf::from).collect();
    paths.push(PathBuf::from("/does/not/exist"));

    let started = Instant::now();
    let identities = stat_in_container(pod.pid, &paths)?;
    println!(
        "stat_in_container of {} paths: {:?}",
        paths.len(),
        started.elapsed()
    );
    let identity = |path: &str| {
        let index = paths
            .iter()
            .position(|candidate| candidate == Path::new(path))
            .expect("listed path");
        identities[index].unwrap_or_else(|| panic!("{path} not found in the pod"))
    };
    assert_eq!(identity("/tmp/hard"), identity("/tmp/f"), "hard link");
    assert_ne!(identity("/tmp/copy"), identity("/tmp/f"), "copy");
    assert_eq!(
        identity("/bin/mysh"),
        identity("/bin/busybox"),
        "absolute symlink"
    );
    assert_eq!(
        identity("/tmp/hostname-link"),
        identity("/etc/hostname"),
        "symlink to a bind-mounted file"
    );
    assert_eq!(identities.last(), Some(&None), "missing path");

    for path in existing {
        let output = sh_ok(&pod, &format!("stat -L -c '%d %i' {path}")).await?;
        let (dev, ino) = output
            .trim()
            .split_once(' ')
            .with_context(|| format!("unexpected stat output {output:?}"))?;
        let seen_in_pod = FileIdentity::from_stat(dev.parse()?, ino.parse()?);
        assert_eq!(identity(path), seen_in_pod, "identity of {path}");
    }

    // The pod's busybox is a copy in the image, not the host's file.
    let host_busybox = std::fs::metadata(image::BUSYBOX)?;
    assert_ne!(
        identity("/bin/busybox"),
        FileIdentity::from_stat(host_busybox.dev(), host_busybox.ino()),
        "/bin/busybox resolved on the host"
    );
    // The pod's /etc/hostname is a bind of a file the runtime keeps on the
    // host, so both sides see one file.
    let hostname_file = containerd
        .dir()
        .join("root/io.containerd.grpc.v1.cri/sandboxes")
        .join(&pod.sandbox_id)
        .join("hostname");
    let host_hostname = std::fs::metadata(&hostname_file)
        .with_context(|| format!("failed to stat {}", hostname_file.display()))?;
    assert_eq!(
        identity("/etc/hostname"),
        FileIdentity::from_stat(host_hostname.dev(), host_hostname.ino()),
        "/etc/hostname versus {}",
        hostname_file.display()
    );
    Ok(())
}

#[tokio::test]
async fn readonly_refuses_own_namespace() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let own_pid = std::process::id();
    let mountinfo_before = std::fs::read_to_string("/proc/self/mountinfo")?;

    let error = make_read_only(own_pid, &writable_tmp()).expect_err("own namespace");
    assert!(
        matches!(error, MountNsError::SameMountNamespace { pid } if pid == own_pid),
        "{error}"
    );
    assert!(
        error.to_string().contains("same mount namespace"),
        "{error}"
    );
    let error = make_read_only(1, &writable_tmp()).expect_err("pid 1");
    assert!(
        matches!(error, MountNsError::ReservedPid { pid: 1 }),
        "{error}"
    );
    let error = make_read_only(0, &writable_tmp()).expect_err("pid 0");
    assert!(
        matches!(error, MountNsError::ReservedPid { pid: 0 }),
        "{error}"
    );
    let error = stat_in_container(own_pid, &[PathBuf::from("/")]).expect_err("own namespace");
    assert!(
        matches!(error, MountNsError::SameMountNamespace { .. }),
        "{error}"
    );

    let error = make_read_only(UNUSED_PID, &writable_tmp()).expect_err("no such process");
    assert!(
        matches!(
            error,
            MountNsError::Proc {
                pid: UNUSED_PID,
                ..
            }
        ),
        "{error}"
    );

    let mountinfo_after = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert_eq!(
        mountinfo_before, mountinfo_after,
        "the refused calls changed this process's mount table"
    );
    Ok(())
}

/// Runs `host_namespace_probe` in a child with a mount namespace of its
/// own, as the agent runs, where the comparison with its own namespace no
/// longer covers the host. The child mounts nothing, and it calls only
/// `stat_in_container`, which changes no mount even if its checks failed.
#[test]
fn readonly_refuses_host_namespace() -> Result<()> {
    parapet_tests::skip_unless_testbed!(Ok(()));
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args([
            "--exact",
            "host_namespace_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOST_PID_VARIABLE, std::process::id().to_string());
    // SAFETY: the closure runs in the forked child before exec and makes
    // one system call, which affects only that child.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let output = command.output().context("failed to run the probe")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "probe failed with {}:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "probe did not run:\n{stdout}\n{stderr}"
    );
    Ok(())
}

#[test]
#[ignore = "readonly_refuses_host_namespace runs it in a mount namespace of its own"]
fn host_namespace_probe() {
    let Ok(host_pid) = std::env::var(HOST_PID_VARIABLE) else {
        println!("SKIPPED: host_namespace_probe: {HOST_PID_VARIABLE} is not set");
        return;
    };
    let host_pid: u32 = host_pid.parse().expect("host pid");
    let own_namespace = std::fs::read_link("/proc/self/ns/mnt").expect("own namespace");
    let host_namespace =
        std::fs::read_link(format!("/proc/{host_pid}/ns/mnt")).expect("host namespace");
    assert_ne!(
        own_namespace, host_namespace,
        "the probe does not run in a mount namespace of its own"
    );

    let error = stat_in_container(host_pid, &[PathBuf::from("/")]).expect_err("host namespace");
    assert!(
        matches!(error, MountNsError::HostMountNamespace { pid, .. } if pid == host_pid),
        "{error}"
    );
}
