//! Boots one kernel in QEMU with software emulation, streams its serial
//! console to the terminal, and stops it at a deadline.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// LSMs to activate, `bpf` included. The kernel's own default list comes
/// from its build configuration, which distributions change.
const LSM_LIST: &str = "lockdown,capability,landlock,yama,apparmor,bpf";
/// How often the serial log is read while the guest runs.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Outcome of one QEMU run.
pub struct Boot {
    /// The serial log with carriage returns and escape sequences removed.
    pub console: String,
    /// Whether QEMU had to be killed at the deadline.
    pub killed: bool,
    pub elapsed: Duration,
}

/// Runs QEMU on `vmlinuz` and `initrd`, writing the serial console to
/// `log` and echoing each line with `label` in front. Kills QEMU, by its
/// pid, if it still runs after `deadline`.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    label: &str,
    deadline: Duration,
) -> anyhow::Result<Boot> {
    let _ = fs::remove_file(log);
    let started = Instant::now();
    // `-cpu max` offers the guest every CPU feature that QEMU emulates,
    // RDRAND among them, which both kernels trust to seed their random
    // number generator at boot. `-monitor none` keeps QEMU's monitor off
    // stdio, since the serial console goes to `log`.
    //
    // Both virtual CPUs take turns on one host thread (`thread=single`).
    // With a thread each, QEMU 7.2's default, the 6.12 guest crashed with
    // "Oops: int3" in `syscall_trace_enter` while the agent attached
    // tracepoints: a CPU ran a breakpoint the kernel had already patched
    // away. The 6.1 guest hung instead: both CPUs stuck for minutes
    // (soft lockups) while the agent started next to `runc` or `netprobe`.
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", "2", "-m", "2048"])
        .args([
            "-nographic",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        // `loglevel=5` keeps warnings on the console, so that a soft lockup
        // comes with the stack of the stuck CPU.
        .arg(format!(
            "console=ttyS0 lsm={LSM_LIST} panic=-1 quiet loglevel=5"
        ))
        .stdin(Stdio::null())
        .spawn()
        .context("failed to start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut echo = Echo::default();
    let mut killed = false;
    loop {
        echo.print_new_lines(log, label);
        if qemu.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > deadline {
            eprintln!("vm-test: [{label}] QEMU still runs after {deadline:?}; killing it");
            qemu.kill().context("failed to kill QEMU")?;
            qemu.wait()?;
            killed = true;
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    echo.print_new_lines(log, label);
    echo.flush(label);
    let raw = fs::read(log).unwrap_or_default();
    Ok(Boot {
        console: clean(&String::from_utf8_lossy(&raw)),
        killed,
        elapsed: started.elapsed(),
    })
}

/// Follows the serial log as it grows.
#[derive(Default)]
struct Echo {
    offset: u64,
    partial: String,
}

impl Echo {
    fn print_new_lines(&mut self, log: &Path, label: &str) {
        let Ok(mut file) = fs::File::open(log) else {
            return;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return;
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            println!("[{label}] {}", clean(&line).trim_end());
        }
    }

    fn flush(&mut self, label: &str) {
        if !self.partial.is_empty() {
            println!("[{label}] {}", clean(&self.partial).trim_end());
            self.partial.clear();
        }
    }
}

/// Removes carriage returns, ANSI escape sequences and other control
/// characters but newline and tab from serial console output.
pub fn clean(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // A control sequence: parameters and intermediates, then
                // one final byte in '@'..='~'.
                Some('[') => {
                    for next in chars.by_ref() {
                        if ('@'..='~').contains(&next) {
                            break;
                        }
                    }
                }
                // Any other escape is two characters long.
                _ => {}
            },
            '\n' | '\t' => cleaned.push(c),
            c if c.is_control() => {}
            c => cleaned.push(c),
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_removes_returns_and_escapes() {
        assert_eq!(clean("ok\r\n"), "ok\n");
        assert_eq!(clean("\x1b[0;32mgreen\x1b[0m text\r\n"), "green text\n");
        assert_eq!(clean("\x1bcreset\x07\tx"), "reset\tx");
    }
}
