//! Draining the kernel's ring buffer: each record becomes an `Event` with
//! its workload and policy named, printed as a JSON line on stdout and sent
//! to every `parapet tail` client.

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, RawFd},
    time::Duration,
    sync::{Arc, Mutex, RwLock},
};

use aya::maps::{MapData, RingBuf};
use chrono::{DateTime, SecondsFormat, Utc};
use tracing::warn;

use parapet_common::EventKind;

use crate::{
    event::{self, Event, Kind, Record, VerdictName},
    feed::Published,
    identity::Identities,
};

/// Everything the reader needs to name a record.
pub struct Namer {
    pub node: String,
    pub identities: Arc<RwLock<Identities>>,
}

/// Records named before their stdout lines are written and the clock is
/// read again.
const BATCH: usize = 1024;

/// Reads records until the ring buffer fails, which only happens when its
/// file descriptor does. It blocks, so it runs on a thread of its own. A
/// stall of the async runtime then cannot hold up the draining, which
/// matters because the 4 MiB ring buffer has room for about 7,000 file or
/// 11,000 network records and fills in tens of milliseconds under a flood.
pub fn run(mut ring: RingBuf<MapData>, namer: Namer, sink: Arc<EventSink>) -> std::io::Result<()> {
    let mut undecodable: u64 = 0;
    loop {
        let mut clock = Clock::now();
        let mut named = 0usize;
        while let Some(item) = ring.next() {
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
            sink.push(event);
            named += 1;
            if named.is_multiple_of(BATCH) {
                sink.flush();
                clock = Clock::now();
            }
        }
        sink.flush();
        if named > 0 {
            // Let records gather before the next read: one wake-up of this
            // thread, of each `tail` client and of its process then serves
            // a whole batch under a flood, for at most this much delay.
            std::thread::sleep(GATHER);
        }
        wait_readable(ring.as_raw_fd())?;
    }
}

/// Time the reader lets records gather after it read some. A million
/// network records a second fill the ring buffer in about 11 ms.
const GATHER: Duration = Duration::from_millis(1);

/// Waits until the ring buffer contains a record. Its poll reports readable
/// while any record is unread, so a record that arrived after the last
/// read wakes this at once.
fn wait_readable(fd: RawFd) -> std::io::Result<()> {
    let mut poll_fd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `poll_fd` is one valid pollfd for the call's duration.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, -1) };
        if ready >= 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
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
    pending: Mutex<Pending>,
}

/// Events pushed but not yet published or written.
#[derive(Default)]
struct Pending {
    events: Vec<Arc<Published>>,
    /// Their stdout lines.
    lines: Vec<u8>,
}

/// Bytes of pending stdout lines that make [`EventSink::push`] flush them.
const STDOUT_BATCH: usize = 64 * 1024;

impl EventSink {
    pub fn new(node: String, feed: Arc<crate::feed::Feed>) -> Self {
        let pending = Pending { events: Vec::new(), lines: Vec::with_capacity(STDOUT_BATCH) };
        Self { node, feed, pending: Mutex::new(pending) }
    }

    /// Sends `event` to stdout and to `tail` clients at once.
    pub fn emit(&self, event: Event) {
        self.push(event);
        self.flush();
    }

    /// Keeps `event` until [`EventSink::flush`], or until enough stdout
    /// lines are pending. Under a flood, one write to stdout and one
    /// wake-up of each `tail` client per batch cost far less than one per
    /// event.
    pub fn push(&self, event: Event) {
        let published = Arc::new(Published::new(event));
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.lines.extend_from_slice(&published.line);
            pending.events.push(published);
            pending.lines.len() >= STDOUT_BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Publishes the pending events to `tail` clients, then writes their
    /// stdout lines.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.events.is_empty() {
            return;
        }
        self.feed.publish_all(pending.events.drain(..));
        // A closed stdout must not stop enforcement or the stream. Stdout
        // is line buffered, and passes a write of whole lines straight on.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&pending.lines);
        let _ = out.flush();
        pending.lines.clear();
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
mod line_tests;

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
