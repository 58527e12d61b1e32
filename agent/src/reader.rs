//! Draining the kernel's ring buffer: each record becomes an `Event` with
//! its workload and policy named, printed as a JSON line on stdout and sent
//! to every `parapet tail` client.

use std::{
    io::Write as _,
    sync::{Arc, RwLock},
};

use aya::maps::{MapData, RingBuf};
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use parapet_common::EventKind;

use crate::{
    event::{self, Event, Kind, Record, VerdictName},
    identity::Identities,
};

/// Everything the reader needs to name a record.
pub struct Namer {
    pub node: String,
    pub identities: Arc<RwLock<Identities>>,
}

/// Records read before the reader lets other tasks run.
const BATCH: usize = 1024;

/// Reads records until the ring buffer fails, which only happens when its
/// file descriptor does.
pub async fn run(ring: RingBuf<MapData>, namer: Namer, sink: Arc<EventSink>) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map file descriptor, which stays open
    // and unchanged for as long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|error| error.into_parts().1)?;
    let mut undecodable: u64 = 0;
    loop {
        let mut guard = ring.readable_mut().await?;
        let clock = Clock::now();
        let ring = guard.get_inner_mut();
        let mut drained = true;
        for _ in 0..BATCH {
            let Some(item) = ring.next() else {
                drained = true;
                break;
            };
            drained = false;
            let event = match namer.decode(&item, &clock) {
                Ok(event) => event,
                Err(error) => {
                    undecodable += 1;
                    if undecodable.is_power_of_two() {
                        warn!(error = %error, total = undecodable, "dropped an undecodable event record");
                    }
                    continue;
                }
            };
            // NOTE: in audit mode every mutation the tracepoints report is
            // emitted, in writable paths and /dev too. The path text alone
            // cannot tell which mount a file is on (`/tmp/link` may lead to
            // the root), and events must agree with the kernel's counters.
            sink.emit(event);
        }
        if drained {
            guard.clear_ready();
        } else {
            // Under a flood the buffer never empties: let the metrics
            // server and API clients run between batches.
            drop(guard);
            tokio::task::yield_now().await;
        }
    }
}

/// Makes a path that a process gave absolute, against its working
/// directory (`AT_FDCWD`) or the directory descriptor it used, read from
/// `/proc` when the event arrives. `None` when that is gone.
fn resolve_path(pid: u32, dirfd: i32, path: &str) -> Option<String> {
    if path.starts_with('/') {
        return Some(path.to_owned());
    }
    let base = if dirfd == parapet_common::file::AT_FDCWD {
        format!("/proc/{pid}/cwd")
    } else {
        format!("/proc/{pid}/fd/{dirfd}")
    };
    let base = std::fs::read_link(base).ok()?;
    Some(base.join(path).to_string_lossy().into_owned())
}

/// Describes a file record: the call, the descriptor when the call gave
/// no path, and the error the kernel returned.
fn file_detail(file: &parapet_common::file::FileEvent) -> Option<String> {
    let name = parapet_common::file::op::name(file.op);
    let call = if file.path.len == 0 {
        format!("{name} on descriptor {}", file.dirfd)
    } else {
        name.to_owned()
    };
    if file.ret < 0 {
        // `unsigned_abs`, because `-file.ret` overflows for `i64::MIN`.
        let errno = i32::try_from(file.ret.unsigned_abs()).unwrap_or(i32::MAX);
        let error = std::io::Error::from_raw_os_error(errno);
        Some(format!("{call} returned {error}"))
    } else if file.path.len == 0 {
        Some(call)
    } else {
        None
    }
}

/// Returns the path of a process's open descriptor, read from `/proc`
/// when the event arrives. `None` when the process or descriptor is gone.
fn descriptor_path(pid: u32, fd: i32) -> Option<String> {
    if fd < 0 {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some(path.to_string_lossy().into_owned())
}

/// Event destination: a JSON line on stdout and the feed of `tail` clients.
pub struct EventSink {
    pub node: String,
    pub feed: Arc<crate::feed::Feed>,
}

impl EventSink {
    pub fn emit(&self, event: Event) {
        let event = Arc::new(event);
        if let Ok(line) = serde_json::to_string(&*event) {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            // A closed stdout must not stop enforcement or the stream.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        self.feed.publish(event);
    }
}

/// Returns the current time in the RFC 3339 form events use.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Wall-clock time of a boot-time timestamp.
pub struct Clock {
    realtime_minus_boottime_ns: i128,
}

impl Clock {
    /// Reads the current offset between the wall clock and the boot clock.
    pub fn now() -> Self {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let boottime = clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            realtime_minus_boottime_ns: realtime - boottime,
        }
    }

    fn format(&self, boot_time_ns: u64) -> String {
        let wall_ns = boot_time_ns as i128 + self.realtime_minus_boottime_ns;
        let time: DateTime<Utc> = DateTime::from_timestamp_nanos(wall_ns as i64);
        time.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Namer {
    /// Decodes one ring buffer record into the event the reader emits for
    /// it. Any byte string is accepted: a record that does not decode is an
    /// error.
    pub fn decode(&self, bytes: &[u8], clock: &Clock) -> Result<Event, event::DecodeError> {
        let record = event::decode(bytes)?;
        Ok(self.name(&record, clock))
    }

    fn name(&self, record: &Record, clock: &Clock) -> Event {
        let header = record.header();
        let identities = self.identities.read().unwrap_or_else(|e| e.into_inner());
        let identity = identities
            .cgroup(header.cgroup_id)
            .or_else(|| identities.cgroup(header.policed_cgroup_id))
            .cloned()
            .unwrap_or_default();
        let policy = identities.policy(header.policy_slot).map(str::to_owned);
        drop(identities);
        let verdict = parapet_common::Verdict::from_u32(header.verdict)
            .map(VerdictName::from)
            .unwrap_or(VerdictName::Deny);
        let (kind, peer, rule, recorded_binary, detail) = match record {
            Record::Net(net) if header.kind == EventKind::Socket as u32 => (
                Kind::Network,
                None,
                None,
                event::exec_path(&net.binary),
                Some(event::socket_detail(net)),
            ),
            Record::Net(net) => (
                Kind::Network,
                Some(event::net_peer(net)),
                event::rule_index(header).map(|index| format!("spec.network.egress[{index}]")),
                event::exec_path(&net.binary),
                None,
            ),
            Record::Exec(exec) => (
                Kind::Exec,
                None,
                event::exec_rule(header),
                event::exec_path(&exec.binary),
                Some(event::exec_detail(exec)),
            ),
            Record::File(file) => (
                Kind::File,
                None,
                Some("spec.filesystem.readOnly".to_owned()),
                event::exec_path(&file.binary),
                file_detail(file),
            ),
        };
        let (path, resolved_path, path_truncated, operation) = match record {
            Record::File(file) => {
                let given = event::exec_path(&file.path);
                let truncated = given.as_ref().is_some_and(|(_, truncated)| *truncated);
                let given = given.map(|(path, _)| path);
                let resolved = if file.dirfd == parapet_common::file::PATH_FROM_KERNEL {
                    // Rebuilt by an LSM program: absolute in the container
                    // already, unless cut.
                    given.clone().filter(|_| !truncated)
                } else {
                    match given.as_deref() {
                        Some(_) if truncated => None,
                        Some(path) => resolve_path(header.pid, file.dirfd, path),
                        // A call on a descriptor: the path is the descriptor's.
                        None => descriptor_path(header.pid, file.dirfd),
                    }
                };
                (
                    given,
                    resolved,
                    Some(truncated),
                    parapet_common::file::op::name(file.op).to_owned(),
                )
            }
            _ => (None, None, None, event::operation(header).to_owned()),
        };
        let (binary, binary_truncated) = match recorded_binary {
            Some((path, truncated)) => (Some(path), truncated),
            None => (
                std::fs::read_link(format!("/proc/{}/exe", header.pid))
                    .ok()
                    .map(|path| path.to_string_lossy().into_owned()),
                false,
            ),
        };
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Event {
            time: clock.format(header.boot_time_ns),
            node: self.node.clone(),
            kind,
            operation,
            verdict,
            namespace: non_empty(identity.namespace),
            pod: non_empty(identity.pod),
            pod_uid: non_empty(identity.pod_uid),
            container: identity.container,
            container_id: identity.container_id,
            cgroup_id: header.cgroup_id,
            pid: header.pid,
            tid: header.tid,
            process: event::comm(header),
            binary,
            binary_truncated,
            peer,
            policy,
            rule,
            detail,
            path,
            resolved_path,
            path_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use parapet_common::{EventHeader, ExecPath, MAX_EXEC_PATH, NO_RULE, file};

    use super::*;

    fn file_event(ret: i64) -> file::FileEvent {
        let empty = ExecPath {
            len: 0,
            truncated: 0,
            bytes: [0; MAX_EXEC_PATH],
        };
        file::FileEvent {
            header: EventHeader {
                kind: EventKind::File as u32,
                verdict: 1,
                boot_time_ns: 0,
                cgroup_id: 0,
                policed_cgroup_id: 0,
                tid: 1,
                pid: 1,
                policy_slot: 0,
                rule: NO_RULE,
                comm: [0; 16],
            },
            op: file::op::OPENAT,
            dirfd: 3,
            ret,
            path: empty,
            binary: empty,
        }
    }

    #[test]
    fn file_detail_names_the_error() {
        assert_eq!(
            file_detail(&file_event(-13)).as_deref(),
            Some("openat on descriptor 3 returned Permission denied (os error 13)")
        );
    }

    /// Found by the `event_record` fuzz target: negating `i64::MIN`
    /// overflowed, which panics with overflow checks and gave errno 0
    /// without them.
    #[test]
    fn file_detail_of_most_negative_return() {
        let detail = file_detail(&file_event(i64::MIN)).unwrap();
        assert!(
            detail.starts_with("openat on descriptor 3 returned "),
            "{detail}"
        );
        assert!(detail.ends_with("(os error 2147483647)"), "{detail}");
    }
}
