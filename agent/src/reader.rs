//! Draining the kernel's ring buffer: each record becomes an event line
//! with its workload and policy named, printed on stdout and sent to every
//! `parapet tail` client.

mod line;
mod names;

use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, RawFd},
    time::Duration,
    sync::{Arc, Mutex, RwLock},
};

use aya::maps::{MapData, RingBuf};
use chrono::{SecondsFormat, Utc};
use tracing::warn;

use crate::{
    event::{self, Event},
    feed::{EventKey, Published},
    identity::Identities,
};
use line::LineWriter;
use names::NameCache;

/// Everything the reader needs to name a record and write its line.
pub struct Namer {
    identities: Arc<RwLock<Identities>>,
    names: NameCache,
    line: LineWriter,
}

/// Records named before their stdout lines are written and the clock is
/// read again.
const BATCH: usize = 1024;

/// Reads records until the ring buffer fails, which only happens when its
/// file descriptor does. It blocks, so it runs on a thread of its own. A
/// stall of the async runtime then cannot hold up the draining, which
/// matters because the 4 MiB ring buffer has room for about 7,000 file or
/// 11,000 network records and fills in tens of milliseconds under a flood.
pub fn run(mut ring: RingBuf<MapData>, mut namer: Namer, sink: Arc<EventSink>) -> std::io::Result<()> {
    let mut undecodable: u64 = 0;
    loop {
        let mut clock = Clock::now();
        let mut named = 0usize;
        while let Some(item) = ring.next() {
            let published = match namer.name(&item, &clock) {
                Ok(published) => published,
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
            sink.push(published);
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
        self.push(Published::new(event));
        self.flush();
    }

    /// Keeps an event line until [`EventSink::flush`], or until enough
    /// stdout lines are pending. Under a flood, one write to stdout and one
    /// wake-up of each `tail` client per batch cost far less than one per
    /// event.
    pub fn push(&self, published: Published) {
        let published = Arc::new(published);
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

    /// Returns the wall-clock time of a boot-time timestamp, in
    /// nanoseconds since the Unix epoch. A time beyond the `i64` range,
    /// which only a corrupt record gives, wraps around rather than panic.
    fn wall_ns(&self, boot_time_ns: u64) -> i64 {
        (boot_time_ns as i128 + self.realtime_minus_boottime_ns) as i64
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
    pub fn new(node: String, identities: Arc<RwLock<Identities>>) -> Self {
        Self { line: LineWriter::new(&node), identities, names: NameCache::default() }
    }

    /// Decodes one ring buffer record and writes the event line of it.
    /// Any byte string is accepted: a record that does not decode is an
    /// error.
    pub fn name(&mut self, bytes: &[u8], clock: &Clock) -> Result<Published, event::DecodeError> {
        let record = event::decode(bytes)?;
        let header = record.header();
        let identities = self.identities.read().unwrap_or_else(|e| e.into_inner());
        let (workload, policy) =
            self.names.lookup(&identities, header.cgroup_id, header.policed_cgroup_id, header.policy_slot);
        drop(identities);
        let key = EventKey {
            kind: line::kind(&record),
            verdict: line::verdict(header),
            namespace: workload.namespace.clone(),
            pod: workload.pod.clone(),
            container: workload.container.clone(),
            policy: policy.name.clone(),
        };
        let line = self.line.write(&record, clock.wall_ns(header.boot_time_ns), workload, policy);
        Ok(Published::from_line(key, line))
    }
}

#[cfg(test)]
mod line_tests;
