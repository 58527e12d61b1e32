//! `/metrics` in the Prometheus text format. The decision counters come
//! straight from the kernel's own counters at each scrape, so they stay
//! exact when the ring buffer drops records.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::{Arc, Mutex, RwLock},
};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use parapet_common::{EventKind, Verdict, loss};
use tracing::{info, warn};

use crate::{
    identity::Identities,
    kernel::Kernel,
    probe::{Choice, Promise},
};

pub struct MetricsState {
    pub kernel: Arc<Mutex<Kernel>>,
    pub identities: Arc<RwLock<Identities>>,
    pub backends: Vec<Choice>,
    pub status: Arc<RwLock<crate::status::Status>>,
    /// Set once the agent's first pass over the workloads named their
    /// cgroups. Before that, the decision series are left out rather than
    /// exported without their pod and container labels: after a restart the
    /// pinned counters are there before the names are.
    pub workloads_named: Arc<std::sync::atomic::AtomicBool>,
    /// When the agent started, in seconds since the Unix epoch.
    pub started_unix_seconds: u64,
}

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<MetricsState>) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "serving metrics");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let state = Arc::clone(&state);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        render(&state),
                    )
                        .into_response()
                }
            }),
        )
        .merge(health_routes());
    axum::serve(listener, app).await
}

/// `/healthz` for readiness probes: a cheap `ok` that reads no kernel map.
/// The agent starts this server only after its kernel programs are attached
/// and its policies installed, so any response means it enforces them. It
/// does not tell whether the container runtime answers.
fn health_routes() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}

/// Labels of one decision series.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    namespace: String,
    pod: String,
    container: String,
    kind: &'static str,
    policy: String,
    verdict: Verdict,
}

fn render(state: &MetricsState) -> String {
    let mut decisions: BTreeMap<SeriesKey, u64> = BTreeMap::new();
    let mut losses = [0u64; loss::COUNT as usize];
    let policed_cgroups: BTreeSet<u64>;
    {
        let kernel = state.kernel.lock().unwrap_or_else(|e| e.into_inner());
        policed_cgroups = kernel.cgroup_policies.keys().flatten().collect();
        let identities = state.identities.read().unwrap_or_else(|e| e.into_inner());
        let named = state.workloads_named.load(std::sync::atomic::Ordering::Acquire);
        for item in named.then(|| kernel.decision_counters.iter()).into_iter().flatten() {
            let (key, per_cpu) = match item {
                Ok(item) => item,
                Err(error) => {
                    warn!(error = %error, "failed to read a kernel decision counter");
                    continue;
                }
            };
            let Some(verdict) = Verdict::from_u32(key.verdict) else {
                continue;
            };
            let identity = identities.cgroup(key.cgroup_id).cloned().unwrap_or_default();
            let series = SeriesKey {
                namespace: identity.namespace,
                pod: identity.pod,
                container: identity.container.unwrap_or_default(),
                kind: match EventKind::from_u32(key.kind) {
                    Some(EventKind::Connect | EventKind::Sendmsg | EventKind::Socket) => "network",
                    Some(EventKind::Exec) => "exec",
                    Some(EventKind::File) => "file",
                    None => "unknown",
                },
                policy: identities.policy(key.policy_slot).unwrap_or("").to_owned(),
                verdict,
            };
            *decisions.entry(series).or_default() += per_cpu.iter().sum::<u64>();
        }
        for (index, total) in losses.iter_mut().enumerate() {
            if let Ok(per_cpu) = kernel.losses.get(&(index as u32), 0) {
                *total = per_cpu.iter().sum();
            }
        }
    }
    let mut out = String::new();
    write_decisions(
        &mut out,
        "parapet_violations_total",
        "Operations refused by a policy: blocked (verdict deny) or let through in audit mode (verdict audit).",
        decisions.iter().filter(|(key, _)| key.verdict != Verdict::Allow),
        true,
    );
    write_decisions(
        &mut out,
        "parapet_allowed_total",
        "Operations of policed workloads that their policies allowed.",
        decisions.iter().filter(|(key, _)| key.verdict == Verdict::Allow),
        false,
    );
    write_backends(&mut out, &state.backends);
    let status = state.status.read().unwrap_or_else(|e| e.into_inner());
    write_workloads(&mut out, &status, &policed_cgroups);
    write_policies(&mut out, &status);
    write_held(&mut out, &status);
    drop(status);
    write_agent(&mut out, state);
    let _ = writeln!(
        out,
        "# HELP parapet_events_lost_total Event records the kernel could not hand to the agent, and decisions it could not count, by reason."
    );
    let _ = writeln!(out, "# TYPE parapet_events_lost_total counter");
    let _ = writeln!(
        out,
        "parapet_events_lost_total{{reason=\"ring_buffer_full\"}} {}",
        losses[loss::RING_FULL as usize]
    );
    let _ = writeln!(
        out,
        "parapet_events_lost_total{{reason=\"counter_map_full\"}} {}",
        losses[loss::COUNTERS_FULL as usize]
    );
    out
}

fn write_decisions<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a SeriesKey, &'a u64)>,
    with_verdict: bool,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (key, value) in series {
        let _ = write!(
            out,
            "{name}{{namespace=\"{}\",pod=\"{}\",container=\"{}\",kind=\"{}\",policy=\"{}\"",
            escape(&key.namespace),
            escape(&key.pod),
            escape(&key.container),
            key.kind,
            escape(&key.policy),
        );
        if with_verdict {
            let verdict = match key.verdict {
                Verdict::Allow => "allow",
                Verdict::Deny => "deny",
                Verdict::Audit => "audit",
            };
            let _ = write!(out, ",verdict=\"{verdict}\"");
        }
        let _ = writeln!(out, "}} {value}");
    }
}

/// Writes one series per promise and possible backend: 1 for the backend
/// in use, 0 for the others.
fn write_backends(out: &mut String, backends: &[Choice]) {
    let _ = writeln!(
        out,
        "# HELP parapet_backend_info Enforcement backend per promise: 1 for the one in use, 0 for the others it could use."
    );
    let _ = writeln!(out, "# TYPE parapet_backend_info gauge");
    for promise in Promise::ALL {
        let chosen = backends.iter().find(|c| c.promise == promise).map(|c| c.backend);
        for &backend in promise.backends() {
            let value = u8::from(chosen == Some(backend));
            let _ = writeln!(
                out,
                "parapet_backend_info{{promise=\"{}\",backend=\"{}\"}} {value}",
                promise.as_str(),
                backend.as_str()
            );
        }
    }
}

/// Workloads that policies select for a promise, and how many of them are
/// enforced: auditors check that gap first. A network workload counts as
/// enforced when `policed_cgroups`, the keys of the kernel's policy map,
/// contains its cgroup.
fn write_workloads(out: &mut String, status: &crate::status::Status, policed_cgroups: &BTreeSet<u64>) {
    // NOTE: the network counts start from the entries the agent wrote, so
    // an entry whose write failed is missing from both; the log names it.
    let network = status.workloads.iter().filter(|w| w.restricts_network).count();
    let network_enforced = status
        .workloads
        .iter()
        .filter(|w| w.restricts_network && policed_cgroups.contains(&w.cgroup_id))
        .count();
    let read_only = status.read_only.iter().filter(|c| !c.released).count();
    let read_only_enforced = status.read_only.iter().filter(|c| c.enforced).count();
    let exec = status.exec.len();
    let exec_enforced = status.exec.iter().filter(|c| c.looked_up).count();
    let _ = writeln!(out, "# HELP parapet_workloads_selected Workloads (containers and pods) that policies select, per promise.");
    let _ = writeln!(out, "# TYPE parapet_workloads_selected gauge");
    let _ = writeln!(out, "parapet_workloads_selected{{promise=\"network\"}} {network}");
    let _ = writeln!(out, "parapet_workloads_selected{{promise=\"filesystem\"}} {read_only}");
    let _ = writeln!(out, "parapet_workloads_selected{{promise=\"exec\"}} {exec}");
    let _ = writeln!(out, "# HELP parapet_workloads_not_enforced Selected workloads whose policy is not in force, per promise.");
    let _ = writeln!(out, "# TYPE parapet_workloads_not_enforced gauge");
    let _ = writeln!(
        out,
        "parapet_workloads_not_enforced{{promise=\"network\"}} {}",
        network - network_enforced
    );
    let _ = writeln!(
        out,
        "parapet_workloads_not_enforced{{promise=\"filesystem\"}} {}",
        read_only - read_only_enforced
    );
    let _ = writeln!(
        out,
        "parapet_workloads_not_enforced{{promise=\"exec\"}} {}",
        exec - exec_enforced
    );
}

/// Writes the processes held at their first instruction and what became
/// of those the agent settled.
fn write_held(out: &mut String, status: &crate::status::Status) {
    let totals = &status.held_totals;
    let _ = writeln!(out, "# HELP parapet_held_processes Processes stopped at their first instruction until their container is set up.");
    let _ = writeln!(out, "# TYPE parapet_held_processes gauge");
    let _ = writeln!(out, "parapet_held_processes {}", status.held.len());
    let _ = writeln!(out, "# HELP parapet_held_settled_total Held processes the agent settled, by outcome: released, killed (an exec list refuses the program) or gone (exited or moved while held).");
    let _ = writeln!(out, "# TYPE parapet_held_settled_total counter");
    for (outcome, count) in [("released", totals.released), ("killed", totals.killed), ("gone", totals.gone)] {
        let _ = writeln!(out, "parapet_held_settled_total{{outcome=\"{outcome}\"}} {count}");
    }
    let _ = writeln!(out, "# HELP parapet_held_seconds_total Time released and killed processes spent held.");
    let _ = writeln!(out, "# TYPE parapet_held_seconds_total counter");
    let _ = writeln!(out, "parapet_held_seconds_total {}", totals.held_seconds);
}

/// Writes the loaded policies, with their content hashes, and the count of
/// rejected reloads.
fn write_policies(out: &mut String, status: &crate::status::Status) {
    let _ = writeln!(out, "# HELP parapet_policy_info Loaded policies: 1 per policy, with its mode and content hash.");
    let _ = writeln!(out, "# TYPE parapet_policy_info gauge");
    for policy in &status.policies {
        let _ = writeln!(
            out,
            "parapet_policy_info{{policy=\"{}\",mode=\"{}\",hash=\"{}\"}} 1",
            escape(&policy.name),
            escape(&policy.mode),
            escape(&policy.hash)
        );
    }
    let _ = writeln!(
        out,
        "# HELP parapet_policy_reload_failures_total Policy changes rejected as invalid; the previous policies stayed in force."
    );
    let _ = writeln!(out, "# TYPE parapet_policy_reload_failures_total counter");
    let _ = writeln!(out, "parapet_policy_reload_failures_total {}", status.policy_reload_failures);
    let _ = writeln!(
        out,
        "# HELP parapet_policy_reload_failed 1 while the last policy change is rejected and older policies are in force."
    );
    let _ = writeln!(out, "# TYPE parapet_policy_reload_failed gauge");
    let _ = writeln!(out, "parapet_policy_reload_failed {}", u8::from(status.policy_error.is_some()));
    let _ = writeln!(
        out,
        "# HELP parapet_cri_up 1 while the container runtime responds; at 0 every kernel entry stays as it was."
    );
    let _ = writeln!(out, "# TYPE parapet_cri_up gauge");
    let _ = writeln!(out, "parapet_cri_up {}", u8::from(status.cri.up));
    let _ = writeln!(out, "# HELP parapet_cri_errors_total Failed attempts to list the workloads from the container runtime.");
    let _ = writeln!(out, "# TYPE parapet_cri_errors_total counter");
    let _ = writeln!(out, "parapet_cri_errors_total {}", status.cri.failures);
}

/// Writes the agent's build and its own CPU time, memory and descriptors.
fn write_agent(out: &mut String, state: &MetricsState) {
    let stats = crate::process_stats::read();
    let _ = writeln!(out, "# HELP parapet_build_info The agent's version: always 1.");
    let _ = writeln!(out, "# TYPE parapet_build_info gauge");
    let _ = writeln!(out, "parapet_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "# HELP process_cpu_seconds_total User and system CPU time of the agent, in seconds.");
    let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
    let _ = writeln!(out, "process_cpu_seconds_total {}", stats.cpu_seconds);
    let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory of the agent, in bytes.");
    let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
    let _ = writeln!(out, "process_resident_memory_bytes {}", stats.resident_bytes);
    let _ = writeln!(out, "# HELP process_virtual_memory_bytes Virtual memory of the agent, in bytes.");
    let _ = writeln!(out, "# TYPE process_virtual_memory_bytes gauge");
    let _ = writeln!(out, "process_virtual_memory_bytes {}", stats.virtual_bytes);
    let _ = writeln!(out, "# HELP process_open_fds Open file descriptors of the agent.");
    let _ = writeln!(out, "# TYPE process_open_fds gauge");
    let _ = writeln!(out, "process_open_fds {}", stats.open_fds);
    let _ = writeln!(out, "# HELP process_start_time_seconds Start time of the agent, in seconds since the Unix epoch.");
    let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
    let _ = writeln!(out, "process_start_time_seconds {}", state.started_unix_seconds);
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::{escape, health_routes};

    #[tokio::test]
    async fn healthz_returns_ok() {
        let request = Request::builder().uri("/healthz").body(Body::empty()).unwrap();
        let response = health_routes().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"ok\n");
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), r"a\nb");
    }
}
