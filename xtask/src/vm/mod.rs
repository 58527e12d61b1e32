//! `cargo xtask vm-test`: runs end-to-end tests inside QEMU guests that
//! boot stock Debian cloud kernels with BPF LSM active, which the host
//! kernel may lack.
//!
//! Each guest boots from an initramfs that contains the agent, the test
//! binaries, containerd, runc and the CNI plugins at their host paths, so
//! the containerd harness of the test crate runs unchanged inside it.
//! `/init` checks `/sys/kernel/security/lsm` for `bpf` before any test.

mod cargo;
mod cpio;
mod guest;
mod init;
mod initramfs;
mod kernels;
mod report;
mod tree;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::bail;

use self::{
    init::InitConfig,
    report::{KernelReport, Outcome},
};
use crate::test::workspace_root;

/// Cargo names of the test targets in `tests/tests` that run in the guest.
/// Each must build with `cargo test --release`, and runs as root with the
/// environment the host harness gives it (see `/init` in `init.rs`).
///
/// NOTE: a test that starts the agent took 25 to 150 s in the guest (the
/// exec and read-only tests on 6.12, measured on 2 busy cores), so about
/// 18 such tests fill the watchdog below.
const GUEST_TESTS: [&str; 5] = [
    "backends",
    "first_instruction",
    "harness_smoke",
    "lsm_backend",
    "restart",
];

/// Time the harness of the test crate waits for the agent's log lines and
/// events in the guest (`PARAPET_TEST_WAIT_SECONDS`). Starting the agent
/// took about 20 s under emulation on 6.12, all of the harness's default.
/// With the guests side by side, one start on 6.1 took more than 120 s.
const AGENT_WAIT: Duration = Duration::from_secs(240);
/// Time one test may run in the guest before it is killed and failed.
/// `restart::crashed_upgrade_leaves_no_gap` starts the agent four times
/// and took 276 to 336 s on 6.1.
const TEST_TIMEOUT: Duration = Duration::from_secs(900);
/// Time after which the guest powers itself off, whatever still runs.
/// The 6.1 suite took 1,070 to 1,300 s on a quiet machine and 1,462 s
/// while the host also built and tested, and 1,812 s in a later CI run,
/// next to 1,209 s for the 6.12 suite, and then about 2,050 s. The guests
/// run side by side, so this limit, plus the host's grace, plus the 23 to
/// 28 minutes that set-up, build and host tests took in three CI runs,
/// make at most 80 minutes, within a 90-minute CI job.
const WATCHDOG: Duration = Duration::from_secs(50 * 60);
/// Time the host waits beyond the watchdog (boot and power-off) before it
/// kills QEMU.
const HOST_GRACE: Duration = Duration::from_secs(120);

/// Runs the guest tests matching `filters` on the kernel series named in
/// `selected`, or on every series when it is empty.
/// Test counts of a `vm-test` run over every kernel.
#[derive(Debug, Default)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Kernels whose run failed for another reason than a failed test: the
    /// guest did not finish, or `bpf` was not an active LSM.
    pub broken_kernels: Vec<String>,
    /// Each failed test with its kernel and reason, for the end of a long
    /// output.
    pub failures: Vec<String>,
}

/// Runs `cargo xtask vm-test` and fails when a test or a kernel failed.
pub fn run(selected: &[String], filters: &[String]) -> anyhow::Result<()> {
    let counts = run_and_count(selected, filters)?;
    println!(
        "summary: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    for failure in &counts.failures {
        println!("failed {failure}");
    }
    if counts.failed > 0 || !counts.broken_kernels.is_empty() {
        bail!("vm tests failed");
    }
    Ok(())
}

/// Boots each selected kernel with the guest tests and returns the counts.
/// Fails only when the run itself could not be prepared.
pub fn run_and_count(selected: &[String], filters: &[String]) -> anyhow::Result<Counts> {
    for name in selected {
        if !kernels::SERIES.iter().any(|series| series.name == name) {
            let known: Vec<&str> = kernels::SERIES.iter().map(|series| series.name).collect();
            bail!(
                "unknown kernel series {name:?}; expected one of {}",
                known.join(", ")
            );
        }
    }
    let root = workspace_root();
    let cache = root.join("target/vm");
    let mut timings = Vec::new();

    let started = Instant::now();
    let kernels = kernels::SERIES
        .iter()
        .filter(|series| selected.is_empty() || selected.iter().any(|name| name == series.name))
        .map(|series| kernels::fetch(series, &cache.join("kernels")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    timings.push(("kernel download".to_string(), started.elapsed()));

    let started = Instant::now();
    let build = cargo::build(&root, &GUEST_TESTS)?;
    timings.push(("cargo build".to_string(), started.elapsed()));

    let started = Instant::now();
    let base = initramfs::base(&cache)?;
    let per_build = cache.join("build.cpio.gz");
    let script = init::script(&InitConfig {
        agent: &build.agent.to_string_lossy(),
        binaries: &build.tests,
        filters,
        agent_wait: AGENT_WAIT,
        test_timeout: TEST_TIMEOUT,
        watchdog: WATCHDOG,
    });
    let mut programs = build.programs.clone();
    programs.extend(build.tests.iter().map(|test| test.path.clone()));
    initramfs::build(&script, &programs, &per_build)?;
    let mut initrds = Vec::new();
    for kernel in &kernels {
        let modules = initramfs::modules(kernel, &cache)?;
        let initrd = cache.join(format!("initrd-{}.cpio.gz", kernel.release));
        initramfs::join(&[base.clone(), modules, per_build.clone()], &initrd)?;
        initrds.push(initrd);
    }
    timings.push(("initramfs".to_string(), started.elapsed()));

    // Each guest's virtual CPUs take turns on one host thread, so the
    // guests run side by side, and on two cores the run should take about
    // as long as the slower kernel's suite.
    let started = Instant::now();
    let boots = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .zip(&initrds)
            .map(|(kernel, initrd)| {
                let log = cache.join(format!("console-{}.log", kernel.release));
                scope.spawn(move || {
                    eprintln!("vm-test: booting {} ({})", kernel.release, kernel.package);
                    let boot = guest::boot(
                        &kernel.vmlinuz,
                        initrd,
                        &log,
                        kernel.series,
                        WATCHDOG + HOST_GRACE,
                    );
                    (kernel, boot, log)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("the thread running a guest panicked"))
            .collect::<Vec<_>>()
    });
    timings.push(("all guests, side by side".to_string(), started.elapsed()));
    let mut reports = Vec::new();
    for (kernel, boot, log) in boots {
        // A guest whose QEMU failed does not discard the other's results:
        // its kernel is reported as broken.
        let boot = match boot {
            Ok(boot) => boot,
            Err(error) => {
                let mut report = KernelReport::default();
                report.errors.push(format!("failed to run QEMU: {error:#}"));
                reports.push((kernel, report, log));
                continue;
            }
        };
        let mut report = KernelReport::parse(&boot.console);
        if boot.killed {
            report
                .errors
                .push(format!("QEMU was killed after {:?}", boot.elapsed));
        }
        timings.push((format!("{} in QEMU", kernel.series), boot.elapsed));
        reports.push((kernel, report, log));
    }

    let mut counts = print_results(&reports, &timings);
    for (kernel, report, _) in reports.iter().filter(|(_, report, _)| !report.completed()) {
        counts.broken_kernels.push(kernel.series.to_owned());
        counts.failures.push(format!(
            "in the {} guest: the run did not complete: {}",
            kernel.series,
            report.incomplete_reasons().join("; ")
        ));
    }
    Ok(counts)
}

fn print_results(
    reports: &[(&kernels::Kernel, KernelReport, PathBuf)],
    timings: &[(String, Duration)],
) -> Counts {
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    println!();
    for (kernel, report, log) in reports {
        let release = report
            .release
            .as_deref()
            .unwrap_or("did not report its release");
        println!(
            "vm-test: kernel {} [{release}], console log {}",
            kernel.series,
            log.display()
        );
        println!(
            "  active LSMs: {}",
            report.lsm.as_deref().unwrap_or("not reported")
        );
        if !report.bpf_active() {
            println!(
                "  ERROR: bpf is not an active LSM; nothing this kernel ran proves enforcement"
            );
        }
        for error in &report.errors {
            println!("  ERROR: {error}");
        }
        if !report.finished {
            println!("  ERROR: the guest did not reach the end of /init");
        }
        if !report.crash.is_empty() {
            println!("  the guest kernel reported a crash or a lockup; its first lines:");
            for line in &report.crash {
                println!("    {line}");
            }
        }
        for test in &report.tests {
            let seconds = test
                .seconds
                .map(|s| format!(" ({s:.1} s)"))
                .unwrap_or_default();
            let name = format!("{}::{}", test.binary, test.name);
            match &test.outcome {
                Outcome::Passed => println!("  passed  {name}{seconds}"),
                Outcome::Failed(reason) => {
                    println!("  FAILED  {name}{seconds}: {reason}");
                    failures.push(format!("in the {} guest: {name}: {reason}", kernel.series));
                }
                Outcome::Skipped(reason) => println!("  skipped {name}: {reason}"),
            }
        }
        if report.tests.is_empty() {
            println!("  no test matched; check the filter and GUEST_TESTS");
        }
        if let (Some(start), Some(end)) = (report.tests_started, report.tests_ended) {
            println!(
                "  boot {start:.1} s, tests {:.1} s (guest clock)",
                end - start
            );
        }
        passed += report.count(|outcome| matches!(outcome, Outcome::Passed));
        failed += report.count(|outcome| matches!(outcome, Outcome::Failed(_)));
        skipped += report.count(|outcome| matches!(outcome, Outcome::Skipped(_)));
    }
    let timings: Vec<String> = timings
        .iter()
        .map(|(phase, elapsed)| format!("{phase} {:.1} s", elapsed.as_secs_f64()))
        .collect();
    println!("vm-test: timings: {}", timings.join(", "));
    println!(
        "vm-test: {} kernels, {passed} tests passed, {failed} failed, {skipped} skipped",
        reports.len()
    );
    Counts {
        passed: passed as u64,
        failed: failed as u64,
        skipped: skipped as u64,
        broken_kernels: Vec::new(),
        failures,
    }
}
