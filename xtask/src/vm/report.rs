//! Reads the guest's report out of its console log: the marker lines that
//! `/init` prints, and between a test's start and end, the `SKIPPED:` lines
//! of the test crate and libtest's `test result:` line.

use super::init::MARKER;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

#[derive(Debug, PartialEq)]
pub struct TestResult {
    pub binary: String,
    pub name: String,
    pub outcome: Outcome,
    /// Run time in seconds, when the test ended.
    pub seconds: Option<f64>,
}

/// Everything one kernel run reported.
#[derive(Debug, Default)]
pub struct KernelReport {
    /// Contents of `/sys/kernel/security/lsm`.
    pub lsm: Option<String>,
    /// `uname -r` in the guest.
    pub release: Option<String>,
    pub tests: Vec<TestResult>,
    /// Reasons the run as a whole failed: `fatal` lines of `/init`, test
    /// binaries that could not list their tests.
    pub errors: Vec<String>,
    /// Whether `/init` reached its end.
    pub finished: bool,
    /// Guest uptime in seconds when the first test started, which is how
    /// long the boot took.
    pub tests_started: Option<f64>,
    /// Guest uptime in seconds when the last test ended.
    pub tests_ended: Option<f64>,
    /// The kernel's oops and panic lines, which show why a guest stopped
    /// early.
    pub crash: Vec<String>,
}

/// Parts of the first line a Linux kernel prints when it oopses, panics or
/// finds a CPU in a soft lockup.
const CRASH_STARTS: [&str; 4] = ["Oops:", "BUG:", "Kernel panic", "general protection fault"];
/// Parts of the lines after it that name the process and the code address.
const CRASH_DETAILS: [&str; 2] = ["RIP: 0010:", " Comm: "];
/// Maximum number of crash lines a report keeps.
const CRASH_LINES_KEPT: usize = 12;

impl KernelReport {
    pub fn parse(console: &str) -> Self {
        let mut report = Self::default();
        let mut current: Option<Running> = None;
        for line in console.lines() {
            let Some(rest) = line
                .find(MARKER)
                .map(|start| line[start + MARKER.len()..].trim())
            else {
                if let Some(test) = current.as_mut() {
                    test.read_output(line);
                }
                let starts = CRASH_STARTS.iter().any(|part| line.contains(part));
                let details = !report.crash.is_empty()
                    && CRASH_DETAILS.iter().any(|part| line.contains(part));
                if (starts || details) && report.crash.len() < CRASH_LINES_KEPT {
                    report.crash.push(line.trim().to_string());
                }
                continue;
            };
            let (kind, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "lsm" => report.lsm = Some(value.to_string()),
                "kernel" => report.release = Some(value.to_string()),
                "fatal" => report.errors.push(value.to_string()),
                "list-failed" => report.errors.push(format!("{value} --list failed")),
                "tests-start" => report.tests_started = value.parse().ok(),
                "done" => {
                    report.finished = true;
                    report.tests_ended = value.parse().ok();
                }
                "start" => {
                    if let Some(test) = current.take() {
                        report.tests.push(test.unfinished());
                    }
                    let mut words = value.splitn(3, ' ');
                    let started = words.next().and_then(|uptime| uptime.parse().ok());
                    let binary = words.next().unwrap_or_default();
                    let name = words.next().unwrap_or_default();
                    current = Some(Running::new(binary, name, started));
                }
                "end" => {
                    let mut words = value.splitn(3, ' ');
                    let ended: Option<f64> = words.next().and_then(|uptime| uptime.parse().ok());
                    let status = words.next().unwrap_or_default();
                    if let Some(test) = current.take() {
                        report.tests.push(test.finish(status, ended));
                    }
                }
                _ => {}
            }
        }
        if let Some(test) = current.take() {
            report.tests.push(test.unfinished());
        }
        report
    }

    pub fn count(&self, matches: fn(&Outcome) -> bool) -> usize {
        self.tests
            .iter()
            .filter(|test| matches(&test.outcome))
            .count()
    }

    /// Returns whether the guest ran to the end with `bpf` active and no
    /// error outside the tests.
    pub fn completed(&self) -> bool {
        self.bpf_active() && self.finished && self.errors.is_empty()
    }

    /// Returns whether the run counts as a success: completed, and no test
    /// failed.
    #[cfg(test)]
    fn succeeded(&self) -> bool {
        self.completed() && self.count(|outcome| matches!(outcome, Outcome::Failed(_))) == 0
    }

    /// Returns why the run did not complete, a reason each.
    pub fn incomplete_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.bpf_active() {
            reasons.push("bpf is not an active LSM".to_string());
        }
        reasons.extend(self.errors.iter().cloned());
        if !self.finished {
            reasons.push("the guest did not reach the end of /init".to_string());
        }
        reasons
    }

    pub fn bpf_active(&self) -> bool {
        self.lsm
            .as_deref()
            .is_some_and(|lsm| lsm.split(',').any(|name| name == "bpf"))
    }
}

/// A test whose start marker was seen and whose end marker was not yet.
struct Running {
    binary: String,
    name: String,
    skip_reason: Option<String>,
    ignored: bool,
    /// Guest uptime in seconds at the start.
    started: Option<f64>,
    /// The first panic message or returned error of the test, a line each.
    failure: Vec<String>,
    /// Whether the lines read are still part of that message.
    in_failure: bool,
}

/// Lines of a panic message or returned error a report keeps.
const FAILURE_LINES_KEPT: usize = 6;
/// Starts of the lines that follow such a message: the backtrace, its
/// hint, libtest's verdict, and the agent log the harness prints.
const FAILURE_ENDS: [&str; 5] = [
    "stack backtrace:",
    "Stack backtrace:",
    "note: run with",
    "FAILED",
    "parapet-tests: agent log:",
];

impl Running {
    fn new(binary: &str, name: &str, started: Option<f64>) -> Self {
        Self {
            binary: binary.to_string(),
            name: name.to_string(),
            skip_reason: None,
            ignored: false,
            started,
            failure: Vec::new(),
            in_failure: false,
        }
    }

    fn read_output(&mut self, line: &str) {
        let line = line.trim_start();
        // libtest prints `test NAME ... ` and then the test's own output on
        // the same line, so a skip line or an error can follow that prefix.
        let after_libtest = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
            .map_or(line, |(_, output)| output);
        self.read_failure(after_libtest);
        if let Some(reason) = after_libtest.strip_prefix("SKIPPED:") {
            self.skip_reason
                .get_or_insert_with(|| reason.trim().to_string());
        } else if line.starts_with("test result:") && line.contains(" 1 ignored") {
            self.ignored = true;
        }
    }

    /// Keeps the first panic message (`thread '...' panicked at` and the
    /// lines after it) or the error a test returned (`Error:` and its
    /// causes), up to the backtrace. `line` comes without libtest's
    /// `test NAME ... ` prefix.
    fn read_failure(&mut self, line: &str) {
        // Kernel lines, such as a soft lockup report, start with the uptime
        // in brackets and are not the test's.
        if line.starts_with('[') {
            return;
        }
        let starts = line.contains("panicked at ") || line.starts_with("Error: ");
        if self.failure.is_empty() && starts {
            self.in_failure = true;
        }
        if !self.in_failure || line.is_empty() {
            return;
        }
        let ends = FAILURE_ENDS.iter().any(|end| line.starts_with(end))
            || self.failure.len() == FAILURE_LINES_KEPT;
        if ends {
            self.in_failure = false;
        } else {
            self.failure.push(line.to_string());
        }
    }

    /// Returns the kept failure message, ready to follow a reason.
    fn failure_message(&self) -> String {
        if self.failure.is_empty() {
            String::new()
        } else {
            format!("; {}", self.failure.join(" / "))
        }
    }

    fn finish(self, status: &str, ended: Option<f64>) -> TestResult {
        let message = self.failure_message();
        let outcome = match (status, self.skip_reason) {
            ("0", Some(reason)) => Outcome::Skipped(reason),
            ("0", None) if self.ignored => Outcome::Skipped("marked #[ignore]".to_string()),
            ("0", None) => Outcome::Passed,
            ("137", _) => Outcome::Failed(format!("killed after the per-test time limit{message}")),
            (status, _) => Outcome::Failed(format!("exit status {status}{message}")),
        };
        TestResult {
            binary: self.binary,
            name: self.name,
            outcome,
            seconds: self
                .started
                .zip(ended)
                .map(|(started, ended)| ended - started),
        }
    }

    fn unfinished(self) -> TestResult {
        let message = self.failure_message();
        TestResult {
            binary: self.binary,
            name: self.name,
            outcome: Outcome::Failed(format!("did not finish before the guest stopped{message}")),
            seconds: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_of_a_whole_run() {
        let console = "\
early kernel noise
@@parapet-vm@@ lsm lockdown,capability,landlock,yama,apparmor,bpf
@@parapet-vm@@ kernel 6.1.0-57-cloud-amd64
@@parapet-vm@@ tests-start 3.25
@@parapet-vm@@ start 3.50 backends chosen_backends_are_reported
running 1 test
test chosen_backends_are_reported ... ok
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out
@@parapet-vm@@ end 5.75 0 backends chosen_backends_are_reported
@@parapet-vm@@ start 6.00 backends require_lsm
SKIPPED: require_lsm: containerd not found in PATH
@@parapet-vm@@ end 7.00 0 backends require_lsm
@@parapet-vm@@ start 6.00 harness_smoke harness_smoke
test harness_smoke ... 
thread 'harness_smoke' panicked at tests/tests/harness_smoke.rs:20:5:
[  140.617545] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [containerd:1647]
assertion failed: pod started
stack backtrace:
   0: std::panicking::begin_panic
thread 'harness_smoke' panicked at tests/src/agent.rs:9:9:
a second panic
test harness_smoke ... FAILED
@@parapet-vm@@ end 7.00 101 harness_smoke harness_smoke
@@parapet-vm@@ start 6.00 harness_smoke slow
test slow ... Error: failed to start pod clinic/server

Caused by:
    CRI StartContainer timed out after 60s

Stack backtrace:
   0: <anyhow::Error as core::convert::From<parapet::cri::CriError>>::from
@@parapet-vm@@ end 7.00 137 harness_smoke slow
@@parapet-vm@@ start 6.00 harness_smoke ignored_one
test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out
@@parapet-vm@@ end 7.00 0 harness_smoke ignored_one
@@parapet-vm@@ done 9.50
";
        let report = KernelReport::parse(console);
        assert_eq!(report.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert!(report.lsm.as_deref().unwrap().ends_with(",bpf"));
        assert!(report.finished);
        assert!(report.errors.is_empty());
        assert!(report.bpf_active());
        assert_eq!(report.tests_started, Some(3.25));
        assert_eq!(report.tests_ended, Some(9.5));
        assert_eq!(report.tests[0].seconds, Some(2.25));
        assert_eq!(report.tests[0].name, "chosen_backends_are_reported");
        let outcomes: Vec<&Outcome> = report.tests.iter().map(|test| &test.outcome).collect();
        assert_eq!(outcomes[0], &Outcome::Passed);
        assert_eq!(
            outcomes[1],
            &Outcome::Skipped("require_lsm: containerd not found in PATH".to_string())
        );
        assert_eq!(
            outcomes[2],
            &Outcome::Failed(
                "exit status 101; thread 'harness_smoke' panicked at \
                 tests/tests/harness_smoke.rs:20:5: / assertion failed: pod started"
                    .to_string()
            )
        );
        assert_eq!(
            outcomes[3],
            &Outcome::Failed(
                "killed after the per-test time limit; Error: failed to start pod \
                 clinic/server / Caused by: / CRI StartContainer timed out after 60s"
                    .to_string()
            )
        );
        assert_eq!(
            outcomes[4],
            &Outcome::Skipped("marked #[ignore]".to_string())
        );
        assert_eq!(report.tests[2].binary, "harness_smoke");
        assert!(!report.succeeded());
    }

    #[test]
    fn parse_of_a_cut_off_run() {
        let console = "\
@@parapet-vm@@ fatal bpf is not in the active LSM list: lockdown,capability
";
        let report = KernelReport::parse(console);
        assert!(!report.finished);
        assert_eq!(report.errors.len(), 1);
        assert!(!report.succeeded());
        assert_eq!(
            report.incomplete_reasons().len(),
            3,
            "{:?}",
            report.incomplete_reasons()
        );

        let console = "\
@@parapet-vm@@ start 6.00 backends hangs
some output
[  391.250000] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[  391.250100] CPU: 1 UID: 0 PID: 812 Comm: containerd Not tainted 6.12.118+deb12-cloud-amd64 #1
[  391.250200] RIP: 0010:syscall_exit_to_user_mode_prepare+0x1/0x90
[  391.260000] Kernel panic - not syncing: Fatal exception in interrupt
";
        let report = KernelReport::parse(console);
        assert!(
            matches!(&report.tests[0].outcome, Outcome::Failed(reason) if reason.contains("did not finish"))
        );
        assert_eq!(report.crash.len(), 4, "{:?}", report.crash);
        assert!(report.crash[0].contains("Oops: int3"));
        assert!(report.crash[3].contains("Kernel panic"));
        let warning = "[  3.000000] CPU: 0 PID: 1 Comm: init\n[  3.000100] RIP: 0010:f+0x1/0x2\n";
        assert!(KernelReport::parse(warning).crash.is_empty());
    }

    #[test]
    fn skip_line_after_libtest_prefix() {
        let mut running = Running::new("lsm_backend", "some_test", None);
        running.read_output("test some_test ... SKIPPED: some_test: no io_uring");
        let result = running.finish("0", None);
        assert_eq!(
            result.outcome,
            Outcome::Skipped("some_test: no io_uring".to_string())
        );
    }
}
