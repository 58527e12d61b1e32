//! The agent loop's part in holding new containers at their first
//! instruction (see `crate::hold`): marking the entries that hold, and
//! letting held processes run once their container is set up.

use std::collections::{HashMap, HashSet};

use parapet_common::hold::CGROUP_HOLD_NEW_PROGRAMS;
use tracing::info;

use super::LoopState;
use crate::{
    cgroups::{ContainerCgroup, Scan},
    cri::{ContainerInfo, PodInfo},
    enforce::{Entry, SlottedPolicy},
    event::{Event, Kind, VerdictName},
    exec_running::DeniedProcess,
    hold::{Decision, Outcome},
    policy::Mode,
    reader,
};

impl LoopState {
    /// Computes the kernel entries for the workloads, with
    /// `CGROUP_HOLD_NEW_PROGRAMS` on those that must hold new programs.
    pub(super) fn desired_entries(
        &mut self,
        pods: &[PodInfo],
        containers: &[ContainerInfo],
        scan: &Scan,
    ) -> HashMap<u64, Entry> {
        let cgroups = &scan.containers;
        let mut desired = crate::enforce::desired_entries(
            self.enforcer.policies(),
            pods,
            containers,
            cgroups,
            &self.exec_rules.resolved(),
        );
        self.enforcer.name_adopted(cgroups);
        self.unlisted
            .carry_over(self.enforcer.applied(), &mut desired, scan, pods, containers);
        // A container with a mount that could not be made read-only (a file
        // open for writing) runs and is reported as not enforced while the
        // agent retries. Holding it would also hold the `exec` that could
        // close that file. A container whose mount namespace the attempt
        // never reached stays held (see `Tracker::lets_run`).
        crate::hold::mark_pending(
            &mut desired,
            self.enforcer.policies(),
            self.read_only_method,
            |id| self.read_only.lets_run(id),
            |id| self.exec_rules.is_resolved(id),
        );
        desired
    }

    /// Writes the entries of containers whose set-up is now done, then
    /// lets their held processes run, or kills those an exec list refuses.
    pub(super) fn settle_held(&mut self, pods: &[PodInfo], containers: &[ContainerInfo], scan: &Scan) {
        let cgroups = &scan.containers;
        let desired = self.desired_entries(pods, containers, scan);
        let kernel = std::sync::Arc::clone(&self.kernel);
        let mut kernel = kernel.lock().unwrap_or_else(|e| e.into_inner());
        self.enforcer.apply(&mut kernel, desired);
        self.held.read_kernel(&kernel);
        if self.held.is_empty() {
            return;
        }

        let pod_ids: HashSet<&str> = pods.iter().map(|pod| pod.id.as_str()).collect();
        let sandboxes = crate::hold::sandbox_ids(&pod_ids, cgroups);
        let by_id: HashMap<u64, &ContainerCgroup> = cgroups.values().map(|cgroup| (cgroup.id, cgroup)).collect();
        let mut held = std::mem::take(&mut self.held);
        let settled = held.settle(&mut kernel, &by_id, |record, cgroup| {
            if sandboxes.contains(&cgroup.id) {
                return Decision::Run;
            }
            self.decide_held(record.pid, cgroup)
        });
        self.held = held;
        drop(kernel);

        for (record, container_id, outcome) in settled {
            let container_id = container_id.unwrap_or_default();
            match outcome {
                Outcome::Released { held } => info!(
                    pid = record.pid,
                    container_id = %container_id,
                    held_us = held.as_micros() as u64,
                    "held program released"
                ),
                Outcome::Killed { held } => info!(
                    pid = record.pid,
                    container_id = %container_id,
                    held_us = held.as_micros() as u64,
                    "held program killed"
                ),
                Outcome::Gone => info!(pid = record.pid, container_id = %container_id, "held process gone"),
            }
        }
    }

    /// Decides on the held process `pid` in the container cgroup `cgroup`:
    /// it waits while the entry that governs it still holds, or while no
    /// read-only attempt has handled its mount namespace, and is then
    /// judged against the exec lists of its container.
    fn decide_held(&self, pid: u32, cgroup: &ContainerCgroup) -> Decision {
        let applied = self.enforcer.applied();
        let own = applied.get(&cgroup.id);
        let governing = own.or_else(|| cgroup.pod.as_ref().and_then(|pod| applied.get(&pod.id)));
        // No entry governs the cgroup any more: its policies went away.
        let Some(entry) = governing else {
            return Decision::Run;
        };
        if entry.policies.flags & CGROUP_HOLD_NEW_PROGRAMS != 0 {
            let waiting_for = if own.is_none() {
                "the runtime to list the container"
            } else {
                "the container's read-only mounts and exec lists"
            };
            return Decision::Wait(waiting_for.to_owned());
        }
        // An attempt made before the program's exec may have handled a mount
        // namespace other than the one the program runs in.
        if self.read_only.lets_run(&cgroup.container_id)
            && let Some(namespace) = crate::mountns::namespaces::of_pid(pid)
            && !self.read_only.covers(&cgroup.container_id, &namespace)
        {
            return Decision::Wait("its mount namespace to be made read-only".to_owned());
        }
        let slots = &entry.policies.slots[..entry.policies.count as usize];
        let policies: Vec<&SlottedPolicy> = self
            .enforcer
            .policies()
            .iter()
            .filter(|slotted| slots.contains(&slotted.slot) && slotted.policy.exec.is_some())
            .collect();
        if policies.is_empty() {
            return Decision::Run;
        }
        let refused = crate::exec_running::denied_processes(&cgroup.path, &policies, |slot, identity| {
            self.exec_rules.rule(slot, identity)
        });
        let Some(process) = refused.into_iter().find(|process| process.pid == pid) else {
            return Decision::Run;
        };
        let enforced = process.mode == Mode::Enforce;
        self.report_held_refusal(cgroup, process);
        if enforced {
            Decision::Kill("an enforce-mode exec list refuses its program".to_owned())
        } else {
            Decision::Run
        }
    }

    /// Sends the exec event of a held program that its container's exec
    /// lists refuse: `deny` when it is killed, `audit` when it runs.
    fn report_held_refusal(&self, cgroup: &ContainerCgroup, process: DeniedProcess) {
        let identity = self
            .identities
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cgroup(cgroup.id)
            .cloned();
        let (verdict, detail) = match process.mode {
            Mode::Enforce => (VerdictName::Deny, "held at its first instruction, then killed before it ran"),
            Mode::Audit => (VerdictName::Audit, "held at its first instruction, then let run"),
        };
        self.sink.emit(Event {
            time: reader::now_rfc3339(),
            node: self.sink.node.clone(),
            kind: Kind::Exec,
            operation: "exec".to_owned(),
            verdict,
            namespace: identity.as_ref().map(|i| i.namespace.clone()),
            pod: identity.as_ref().map(|i| i.pod.clone()),
            pod_uid: identity.as_ref().map(|i| i.pod_uid.clone()),
            container: identity.as_ref().and_then(|i| i.container.clone()),
            container_id: Some(cgroup.container_id.clone()),
            cgroup_id: cgroup.id,
            pid: process.pid,
            tid: process.pid,
            process: String::new(),
            binary: Some(process.binary),
            binary_truncated: false,
            peer: None,
            policy: Some(process.policy),
            rule: process.rule,
            detail: Some(detail.to_owned()),
            path: None,
            resolved_path: None,
            path_truncated: None,
        });
    }
}
