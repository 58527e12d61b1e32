//! Reports event records that the kernel dropped because the ring buffer
//! was full: to every `tail` client, and in the log. The kernel counts
//! each drop in `LOSSES`, which `/metrics` and `parapet status` show.

use std::{
    sync::{Arc, Mutex, TryLockError},
    time::{Duration, Instant},
};

use parapet_common::loss;
use tracing::warn;

use crate::{feed::Feed, kernel::Kernel};

/// How often the loss counter is read.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum time between two log lines about drops.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Reads the kernel's count of dropped records every [`CHECK_INTERVAL`]
/// and reports each increase. Counts from before the first read, such as
/// those of an earlier agent in pinned maps, are not reported.
pub async fn watch(kernel: Arc<Mutex<Kernel>>, feed: Arc<Feed>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    let mut reported: Option<u64> = None;
    let mut unlogged = 0u64;
    let mut logged_at: Option<Instant> = None;
    let mut read_failed = false;
    loop {
        tick.tick().await;
        // The daemon can hold the lock for a while, so a busy lock skips
        // this tick rather than block a runtime thread.
        let kernel = match kernel.try_lock() {
            Ok(kernel) => kernel,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => continue,
        };
        let total = kernel.losses.get(&loss::RING_FULL, 0).map(|per_cpu| per_cpu.iter().sum::<u64>());
        drop(kernel);
        let total = match total {
            Ok(total) => total,
            Err(error) => {
                if !read_failed {
                    warn!(error = %error, "failed to read the kernel's count of dropped event records; retrying every second");
                    read_failed = true;
                }
                continue;
            }
        };
        let previous = *reported.get_or_insert(total);
        if total <= previous {
            continue;
        }
        feed.report_kernel_dropped(total - previous);
        unlogged += total - previous;
        reported = Some(total);
        if logged_at.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
            warn!(
                dropped = unlogged,
                total,
                "the kernel dropped event records because the ring buffer was full; the decision counters still count every operation"
            );
            unlogged = 0;
            logged_at = Some(Instant::now());
        }
    }
}
