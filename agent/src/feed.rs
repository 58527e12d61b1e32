//! The event feed of `parapet tail` clients: live events through a
//! broadcast channel, and the most recent ones kept in a bounded buffer so
//! that a client can ask for the last minutes again (`--since`). Each
//! event is serialized once, when it is published, and every client is
//! sent the same bytes.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, watch};

use crate::event::{Event, Kind, VerdictName};

/// Events kept for replay. At an estimated few hundred bytes each, this is
/// a few MiB.
pub const RECENT_CAPACITY: usize = 4096;

/// Events a live client may fall behind by before it misses some.
const LIVE_BACKLOG: usize = 4096;

/// Bytes reserved for an event's JSON line before it is serialized.
const LINE_CAPACITY: usize = 1024;

/// An event's JSON line, as stdout and every client receive it, and the
/// fields clients filter on. The rest of the event is dropped once it is
/// serialized, so that the events kept for replay hold few allocations.
pub struct Published {
    pub key: EventKey,
    /// The event as one line of JSON, with its newline.
    pub line: Box<[u8]>,
}

/// The fields of an event that `tail` clients filter on. The names are
/// shared with the reader's cache, so that a key costs no allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct EventKey {
    pub kind: Kind,
    pub verdict: VerdictName,
    pub namespace: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
    pub policy: Option<Arc<str>>,
}

impl From<Event> for EventKey {
    fn from(event: Event) -> Self {
        Self {
            kind: event.kind,
            verdict: event.verdict,
            namespace: event.namespace.map(Arc::from),
            pod: event.pod.map(Arc::from),
            container: event.container.map(Arc::from),
            policy: event.policy.map(Arc::from),
        }
    }
}

impl Published {
    /// Serializes `event` into its line.
    pub fn new(event: Event) -> Self {
        // Most events fit, so the line is not grown step by step.
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        if let Err(error) = serde_json::to_writer(&mut line, &event) {
            // Serializing these plain fields cannot fail. Should it ever,
            // the line still reports that an event happened.
            line = format!("{{\"error\":\"failed to serialize an event: {error}\"}}").into_bytes();
        }
        line.push(b'\n');
        Self { key: EventKey::from(event), line: line.into_boxed_slice() }
    }

    /// Takes a line that is already serialized, with its newline.
    pub fn from_line(key: EventKey, line: &[u8]) -> Self {
        Self { key, line: line.into() }
    }
}

pub struct Feed {
    recent: Mutex<Recent>,
    sender: broadcast::Sender<Arc<Published>>,
    /// Event records the kernel dropped because its ring buffer was full,
    /// of any workload, since the agent started. A watch channel rather
    /// than the broadcast, so that a client that falls behind still learns
    /// of every drop.
    kernel_dropped: watch::Sender<u64>,
}

#[derive(Default)]
struct Recent {
    events: VecDeque<(Instant, Arc<Published>)>,
    /// When the newest event pushed out of the buffer was published.
    newest_dropped: Option<Instant>,
}

/// A new client's events: the recent ones it asked for, then the live
/// stream from the event after them.
pub struct Subscription {
    pub replay: Vec<Arc<Published>>,
    /// True when events inside the requested window were already pushed
    /// out of the buffer, so the replay lacks its oldest part.
    pub replay_incomplete: bool,
    pub live: broadcast::Receiver<Arc<Published>>,
    pub kernel_dropped: watch::Receiver<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        Self {
            recent: Mutex::new(Recent::default()),
            sender: broadcast::channel(LIVE_BACKLOG).0,
            kernel_dropped: watch::Sender::new(0),
        }
    }

    /// Keeps the event for replay and sends it to live clients.
    pub fn publish(&self, event: Arc<Published>) {
        self.publish_all(std::iter::once(event));
    }

    /// Keeps the events for replay and sends them to live clients, under
    /// one lock, so that a client woken by the first finds them all.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Arc<Published>>) {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            if recent.events.len() == RECENT_CAPACITY
                && let Some((published, _)) = recent.events.pop_front()
            {
                recent.newest_dropped = Some(published);
            }
            recent.events.push_back((now, Arc::clone(&event)));
            // Sending under the lock orders the live stream after every
            // replay taken before it. An error only means that no client
            // is connected.
            let _ = self.sender.send(event);
        }
    }

    /// Tells live clients that the kernel dropped `count` event records.
    pub fn report_kernel_dropped(&self, count: u64) {
        self.kernel_dropped.send_modify(|total| *total += count);
    }

    /// Subscribes to live events and takes the events published in the last
    /// `since`, as one step, so that no event is missed or sent twice.
    pub fn subscribe(&self, since: Option<Duration>) -> Subscription {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.sender.subscribe();
        let kernel_dropped = self.kernel_dropped.subscribe();
        let Some(since) = since else {
            return Subscription {
                replay: Vec::new(),
                replay_incomplete: false,
                live,
                kernel_dropped,
            };
        };
        let cutoff = Instant::now().checked_sub(since);
        let in_window = |published: &Instant| cutoff.is_none_or(|cutoff| *published >= cutoff);
        let replay = recent
            .events
            .iter()
            .filter(|(published, _)| in_window(published))
            .map(|(_, event)| Arc::clone(event))
            .collect();
        Subscription {
            replay,
            replay_incomplete: recent.newest_dropped.as_ref().is_some_and(in_window),
            live,
            kernel_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(published: &Published) -> u32 {
        serde_json::from_slice::<Event>(&published.line).unwrap().pid
    }

    fn event(pid: u32) -> Arc<Published> {
        Arc::new(Published::new(plain_event(pid)))
    }

    fn plain_event(pid: u32) -> Event {
        Event {
            time: String::new(),
            node: "node".to_owned(),
            kind: Kind::File,
            operation: "openat".to_owned(),
            verdict: VerdictName::Deny,
            namespace: None,
            pod: None,
            pod_uid: None,
            container: None,
            container_id: None,
            cgroup_id: 0,
            pid,
            tid: pid,
            process: String::new(),
            binary: None,
            binary_truncated: false,
            peer: None,
            policy: None,
            rule: None,
            detail: None,
            path: None,
            resolved_path: None,
            path_truncated: None,
        }
    }

    #[test]
    fn replay_then_live_without_gap_or_repeat() {
        let feed = Feed::new();
        feed.publish(event(1));
        feed.publish(event(2));
        let mut subscription = feed.subscribe(Some(Duration::from_secs(60)));
        feed.publish(event(3));
        let replayed: Vec<u32> = subscription.replay.iter().map(|e| pid(e)).collect();
        assert_eq!(replayed, [1, 2]);
        assert!(!subscription.replay_incomplete);
        assert_eq!(subscription.live.try_recv().map(|e| pid(&e)).ok(), Some(3));
        assert!(subscription.live.try_recv().is_err());
    }

    #[test]
    fn published_line_is_the_event_as_json() {
        let published = Published::new(plain_event(7));
        assert_eq!(published.line.last(), Some(&b'\n'));
        let parsed: Event = serde_json::from_slice(&published.line).unwrap();
        assert_eq!(parsed, plain_event(7));
        assert_eq!(published.key, EventKey::from(plain_event(7)));
    }

    #[test]
    fn no_since_means_live_only() {
        let feed = Feed::new();
        feed.publish(event(1));
        let subscription = feed.subscribe(None);
        assert!(subscription.replay.is_empty());
    }

    #[test]
    fn overflow_marks_the_replay_incomplete() {
        let feed = Feed::new();
        for pid in 0..(RECENT_CAPACITY as u32 + 10) {
            feed.publish(event(pid));
        }
        let subscription = feed.subscribe(Some(Duration::from_secs(60)));
        assert_eq!(subscription.replay.len(), RECENT_CAPACITY);
        assert_eq!(subscription.replay.first().map(|e| pid(e)), Some(10));
        assert!(subscription.replay_incomplete);
    }
}
