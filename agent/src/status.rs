//! `parapet status`: what the agent enforces, read from its own state and
//! from the kernel maps themselves.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::kernel::Kernel;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// RFC 3339 time the agent started.
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Policy reloads rejected since the agent started.
    #[serde(default)]
    pub policy_reload_failures: u64,
    /// Violations counted by the kernel for the workloads it still tracks:
    /// refused and audit-mode decisions of every kind.
    #[serde(default)]
    pub violations: u64,
    /// Records the kernel could not hand to the agent, and decisions it
    /// could not count.
    #[serde(default)]
    pub lost: Lost,
    /// The cgroup the kernel programs are attached to.
    pub attach_cgroup: String,
    /// The bpffs directory the kernel links and maps are pinned in.
    #[serde(default)]
    pub pin_dir: String,
    /// Generation of this agent's kernel programs; it counts the agent
    /// starts on this pin directory.
    #[serde(default)]
    pub generation: u32,
    /// The backend in use per promise, and why it was chosen.
    pub backends: Vec<crate::probe::Choice>,
    pub policies: Vec<PolicyStatus>,
    pub workloads: Vec<WorkloadStatus>,
    /// Cgroup ids that have an entry in the kernel's policy map.
    pub kernel_policed_cgroups: BTreeSet<u64>,
    /// Cgroup ids that have decision counters in the kernel.
    pub kernel_counter_cgroups: BTreeSet<u64>,
    /// The last policy reload error, if the last reload failed.
    pub policy_error: Option<String>,
    /// Whether the container runtime responds.
    #[serde(default)]
    pub cri: crate::cri_health::CriStatus,
    /// Containers that exec policies select.
    #[serde(default)]
    pub exec: Vec<ExecStatus>,
    /// Containers that enforce-mode read-only policies select.
    #[serde(default)]
    pub read_only: Vec<ReadOnlyStatus>,
    /// Processes stopped at their first instruction until their
    /// container is set up.
    #[serde(default)]
    pub held: Vec<crate::hold::HeldStatus>,
    #[serde(default)]
    pub held_totals: crate::hold::HeldTotals,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadOnlyStatus {
    pub container_id: String,
    pub enforced: bool,
    /// Reason the container is not read-only yet.
    pub reason: Option<String>,
    /// No policy selects the container any more, but its mounts stay
    /// read-only until it restarts.
    #[serde(default)]
    pub released: bool,
    /// Only audit-mode policies select the container: the LSM backend
    /// reports its mutations and refuses none.
    #[serde(default)]
    pub audit_only: bool,
}

/// A container under an exec policy, and whether the agent has looked up
/// the files on its lists, without which allow lists are only reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStatus {
    pub container_id: String,
    pub looked_up: bool,
}

/// Records and decisions lost between kernel and agent, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    pub ring_buffer_full: u64,
    pub counter_map_full: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub source: String,
    pub mode: String,
    pub slot: u32,
    /// `Policy::content_hash`.
    #[serde(default)]
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Whether one of its policies restricts egress.
    #[serde(default)]
    pub restricts_network: bool,
    pub cgroup_id: u64,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub policies: Vec<String>,
}

/// Fills in the kernel-side fields of `status` from the maps.
pub fn read_kernel(kernel: &Kernel, status: &mut Status) {
    use parapet_common::{Verdict, loss};
    status.violations = kernel
        .decision_counters
        .iter()
        .flatten()
        .filter(|(key, _)| key.verdict != Verdict::Allow as u32)
        .map(|(_, per_cpu)| per_cpu.iter().sum::<u64>())
        .sum();
    let lost = |reason: u32| {
        kernel
            .losses
            .get(&reason, 0)
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .unwrap_or(0)
    };
    status.lost = Lost {
        ring_buffer_full: lost(loss::RING_FULL),
        counter_map_full: lost(loss::COUNTERS_FULL),
    };
    status.kernel_policed_cgroups = kernel.cgroup_policies.keys().flatten().collect();
    status.kernel_counter_cgroups = kernel
        .decision_counters
        .keys()
        .flatten()
        .map(|key| key.cgroup_id)
        .collect();
}

/// Renders the status as text for a terminal.
pub fn render_text(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "node:           {}", status.node);
    let _ = writeln!(out, "version:        {}", status.version);
    let _ = writeln!(out, "started:        {} (up {} s)", status.started_at, status.uptime_seconds);
    let _ = writeln!(out, "violations:     {}", status.violations);
    let _ = writeln!(
        out,
        "lost:           {} records (ring buffer full), {} decisions uncounted (counter map full)",
        status.lost.ring_buffer_full, status.lost.counter_map_full
    );
    let _ = writeln!(out, "reload errors:  {}", status.policy_reload_failures);
    let _ = writeln!(out, "attached to:    {}", status.attach_cgroup);
    let _ = writeln!(out, "pinned in:      {} (generation {})", status.pin_dir, status.generation);
    match (&status.cri.error, &status.cri.down_since) {
        (Some(error), since) => {
            let _ = writeln!(
                out,
                "runtime:        DOWN since {} ({} failures), kernel entries kept as they were: {error}",
                since.as_deref().unwrap_or("?"),
                status.cri.failures
            );
        }
        (None, _) => {
            let _ = writeln!(out, "runtime:        up at {}", status.cri.socket);
        }
    }
    for choice in &status.backends {
        let _ = writeln!(
            out,
            "{:<15} {} ({})",
            format!("{}:", choice.promise.as_str()),
            choice.backend,
            choice.reason
        );
    }
    if let Some(error) = &status.policy_error {
        let _ = writeln!(out, "last reload:    FAILED, previous policies stay in force:");
        for line in error.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "policies:       {}", status.policies.len());
    for policy in &status.policies {
        let _ = writeln!(
            out,
            "  {} ({}, slot {}, hash {}) from {}",
            policy.name, policy.mode, policy.slot, policy.hash, policy.source
        );
    }
    let _ = writeln!(out, "workloads:      {}", status.workloads.len());
    for workload in &status.workloads {
        let _ = writeln!(
            out,
            "  {}/{}/{} cgroup {} policies {}",
            workload.namespace,
            workload.pod,
            workload.container.as_deref().unwrap_or("(pod)"),
            workload.cgroup_id,
            workload.policies.join(",")
        );
    }
    let _ = writeln!(out, "kernel entries: {}", status.kernel_policed_cgroups.len());
    let _ = writeln!(out, "exec lists:     {}", status.exec.len());
    for container in &status.exec {
        let state = if container.looked_up {
            "enforced"
        } else {
            "NOT ENFORCED: its files are not looked up yet, so allow lists are only reported"
        };
        let _ = writeln!(out, "  {} {state}", container.container_id);
    }
    let _ = writeln!(out, "read-only:      {}", status.read_only.len());
    for container in &status.read_only {
        if container.released {
            let _ = writeln!(
                out,
                "  {} released: no policy asks for read-only any more; its mounts stay read-only until it restarts",
                container.container_id
            );
            continue;
        }
        match &container.reason {
            None if container.audit_only => {
                let _ = writeln!(out, "  {} audited: mutations are reported, not refused", container.container_id);
            }
            None => {
                let _ = writeln!(out, "  {} enforced", container.container_id);
            }
            Some(reason) => {
                let _ = writeln!(out, "  {} NOT ENFORCED: {reason}", container.container_id);
            }
        }
    }
    let totals = &status.held_totals;
    let _ = writeln!(
        out,
        "held:           {} now; {} released, {} killed, {} gone since start, {:.3} s held in all",
        status.held.len(),
        totals.released,
        totals.killed,
        totals.gone,
        totals.held_seconds
    );
    for held in &status.held {
        let _ = writeln!(
            out,
            "  pid {} in {} held {} ms, waiting for {}",
            held.pid,
            held.container_id.as_deref().unwrap_or("an unknown cgroup"),
            held.held_ms,
            held.waiting_for
        );
    }
    out
}
