//! Programs that were already running in a container when its exec policy
//! arrived. The exec tracepoint judges a program when it starts, so such
//! a process is never stopped. The agent looks for them once, right after
//! it has looked up a container's exec lists, and reports each one that
//! the policy refuses, so that an auditor can see it.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use parapet_common::exec::{ExecRuleValue, LIST_ALLOW, LIST_DENY};

use crate::{enforce::SlottedPolicy, mountns::FileIdentity, policy::Mode};

/// A process whose program its container's exec policy denies.
#[derive(Debug, PartialEq, Eq)]
pub struct DeniedProcess {
    pub pid: u32,
    /// `/proc/PID/exe` as the host reads it.
    pub binary: String,
    pub policy: String,
    pub mode: Mode,
    /// The deny entry that names the program, as a path into the policy;
    /// `None` when the program is missing from an allow list.
    pub rule: Option<String>,
}

/// Returns the processes in the cgroup at `cgroup` and below whose
/// programs `policies` refuse. `rule_of` returns the kernel's exec rule
/// for a policy slot and file, as the agent wrote it.
pub fn denied_processes(
    cgroup: &Path,
    policies: &[&SlottedPolicy],
    rule_of: impl Fn(u32, FileIdentity) -> Option<ExecRuleValue>,
) -> Vec<DeniedProcess> {
    let mut denied = Vec::new();
    for pid in crate::cgroups::pids(cgroup) {
        let exe = format!("/proc/{pid}/exe");
        // The process may have exited since the cgroup was read.
        let Ok(metadata) = fs::metadata(&exe) else {
            continue;
        };
        let identity = FileIdentity::from_stat(metadata.dev(), metadata.ino());
        let binary = fs::read_link(&exe)
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        for slotted in policies {
            let Some(exec) = &slotted.policy.exec else {
                continue;
            };
            let rule = rule_of(slotted.slot, identity).unwrap_or_default();
            let verdict = if rule.lists & LIST_DENY != 0 {
                Some(Some(format!("spec.exec.deny[{}]", rule.deny_index)))
            } else if exec.allow.is_some() && rule.lists & LIST_ALLOW == 0 {
                Some(None)
            } else {
                None
            };
            if let Some(rule) = verdict {
                denied.push(DeniedProcess {
                    pid,
                    binary: binary.clone(),
                    policy: slotted.policy.name.clone(),
                    mode: slotted.policy.mode,
                    rule,
                });
                break;
            }
        }
    }
    denied
}
