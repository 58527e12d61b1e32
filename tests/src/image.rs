//! Container images built on the spot, since no registry is reachable: a
//! root folder with Debian's static busybox and the `netprobe` binary,
//! packed as one layer into OCI image archives (OCI image layout 1.0) and
//! imported with `ctr images import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

/// Static busybox from Debian's busybox-static package.
pub const BUSYBOX: &str = "/bin/busybox";
/// Image that containerd runs as every pod's sandbox container.
pub const PAUSE_IMAGE: &str = "parapet.test/pause:1";
/// Image of the test containers.
pub const TEST_IMAGE: &str = "parapet.test/workload:1";
/// Path of `netprobe` inside both images; it is also on the images' `PATH`.
pub const NETPROBE_IN_IMAGE: &str = "/usr/local/bin/netprobe";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Never-ending command of the pause image. busybox `sleep` as PID 1 ignores
/// SIGTERM, which is fine because containerd stops sandboxes with SIGKILL.
const PAUSE_COMMAND: [&str; 2] = ["sleep", "2147483647"];
/// Default command of the test image.
pub const DEFAULT_COMMAND: [&str; 2] = ["sleep", "3600"];

/// Builds the pause and test images under `work_dir` and imports both into
/// the `k8s.io` namespace of the containerd listening on `socket`.
pub fn build_and_import(work_dir: &Path, netprobe: &Path, socket: &Path) -> Result<()> {
    let rootfs = work_dir.join("rootfs");
    build_rootfs(&rootfs, netprobe)?;
    let layer = layer_tar(&rootfs)?;
    for (name, command) in [
        (PAUSE_IMAGE, &PAUSE_COMMAND),
        (TEST_IMAGE, &DEFAULT_COMMAND),
    ] {
        let file_name = name.replace(['/', ':'], "_") + ".tar";
        let archive = work_dir.join(file_name);
        write_archive(&archive, name, command, &layer)?;
        import(&archive, socket)?;
    }
    Ok(())
}

/// Fills `rootfs` with busybox and a link for each of its applets, and
/// `netprobe` with the shared libraries and the dynamic loader that `ldd`
/// lists, each at the same path as on the host.
pub fn build_rootfs(rootfs: &Path, netprobe: &Path) -> Result<()> {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/local/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "root",
        "tmp",
    ] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    copy_file(Path::new(BUSYBOX), &rootfs.join("bin/busybox"))?;
    for applet in busybox_applets()? {
        let link = rootfs.join(&applet);
        if link.exists() || link.is_symlink() {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("failed to link {}", link.display()))?;
    }
    copy_file(
        netprobe,
        &rootfs.join(NETPROBE_IN_IMAGE.trim_start_matches('/')),
    )?;
    for library in shared_libraries(netprobe)? {
        let target = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        copy_file(&library, &target)?;
    }
    Ok(())
}

/// Lists busybox's applets as paths relative to the root (`usr/bin/wget`).
fn busybox_applets() -> Result<Vec<String>> {
    let output = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("failed to run {BUSYBOX} --list-full"))?;
    if !output.status.success() {
        bail!("{BUSYBOX} --list-full failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty() && *applet != "bin/busybox")
        .map(str::to_string)
        .collect())
}

/// Lists the absolute paths of the shared objects `ldd` names for `binary`,
/// the dynamic loader included. A static binary needs none.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("failed to run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
    // or "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    let mut libraries = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("failed to copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Packs `rootfs` into an uncompressed layer tarball, keeping symlinks.
fn layer_tar(rootfs: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", rootfs)
        .with_context(|| format!("failed to pack {}", rootfs.display()))?;
    Ok(builder.into_inner()?)
}

/// A content-addressed blob of an OCI image layout.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let hash = Sha256::digest(&bytes);
        let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
        Self {
            digest: format!("sha256:{hex}"),
            bytes,
        }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }

    fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

/// Writes an OCI image archive: `oci-layout`, `index.json` naming the image,
/// and the manifest, config and layer blobs.
fn write_archive(archive: &Path, name: &str, command: &[&str], layer_bytes: &[u8]) -> Result<()> {
    let layer = Blob::new(layer_bytes.to_vec());
    let config = Blob::new(serde_json::to_vec(&serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": command,
            "WorkingDir": "/",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [layer.digest],
        },
    }))?);
    let manifest = Blob::new(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(CONFIG_MEDIA_TYPE),
        "layers": [layer.descriptor(LAYER_MEDIA_TYPE)],
    }))?);
    let mut manifest_entry = manifest.descriptor(MANIFEST_MEDIA_TYPE);
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    manifest_entry["annotations"] = serde_json::json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_entry] });

    let mut builder = tar::Builder::new(Vec::new());
    append_bytes(
        &mut builder,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_bytes(&mut builder, "index.json", &serde_json::to_vec(&index)?)?;
    for blob in [&manifest, &config, &layer] {
        append_bytes(&mut builder, &blob.path(), &blob.bytes)?;
    }
    std::fs::write(archive, builder.into_inner()?)
        .with_context(|| format!("failed to write {}", archive.display()))
}

fn append_bytes(builder: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, path, bytes)?;
    Ok(())
}

/// Returns the OCI name of the host CPU architecture.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn import(archive: &Path, socket: &Path) -> Result<()> {
    let output = Command::new("ctr")
        .arg("--namespace=k8s.io")
        .arg("--address")
        .arg(socket)
        .args(["images", "import"])
        .arg(archive)
        .output()
        .context("failed to run ctr")?;
    if !output.status.success() {
        bail!(
            "ctr images import {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
