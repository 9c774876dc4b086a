//! Warnings a client can cause, let through at a bounded rate.
//!
//! A refused upgrade or a misbehaving client writes a `WARN` line; an attacker repeating it
//! thousands of times a second must not flood the log. Each kind of warning passes at most
//! [`PER_SECOND`] times a second; the rest are counted, and the next one let through carries
//! `suppressed = N` (how many of its kind were left out since the last one written).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Warnings of one kind written per second at most.
pub(crate) const PER_SECOND: u64 = 10;

static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Warnings left out of the log by the rate limit since the process started, all kinds together.
///
/// The warnings that are written report how many of their kind were left out before them
/// (`suppressed = N`).
pub fn suppressed_warnings() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

/// The rate limit of one kind of warning; a `static` beside the warning it limits.
#[derive(Debug)]
pub(crate) struct WarnLimit {
    /// When this kind of warning was first asked for.
    epoch: OnceLock<Instant>,
    /// The second (since `epoch`, counting from 1) that `written` counts in.
    second: AtomicU64,
    written: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimit {
    pub(crate) const fn new() -> Self {
        Self {
            epoch: OnceLock::new(),
            second: AtomicU64::new(0),
            written: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last one)` if this warning is to be written, `None` if it is
    /// left out (and counted). Races between threads may let a few more through; never fewer.
    pub(crate) fn admit(&self) -> Option<u64> {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = Instant::now().saturating_duration_since(epoch).as_secs() + 1;
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.written.store(0, Ordering::Relaxed);
        }
        if self.written.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `tracing::warn!` through the rate limit `$limit` (a `static WarnLimit`); the event gets a
/// `suppressed` field.
macro_rules! limited_warn {
    ($limit:expr, $($field:tt)+) => {
        if let Some(suppressed) = $limit.admit() {
            tracing::warn!(suppressed, $($field)+);
        }
    };
}

pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_most_per_second_pass_and_the_next_reports_the_rest() {
        static LIMIT: WarnLimit = WarnLimit::new();
        let before = suppressed_warnings();
        let passed = (0..1000).filter_map(|_| LIMIT.admit()).collect::<Vec<_>>();
        assert_eq!(passed.len() as u64, PER_SECOND);
        assert!(passed.iter().all(|&s| s == 0));
        assert!(suppressed_warnings() - before >= 1000 - PER_SECOND);

        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(LIMIT.admit(), Some(1000 - PER_SECOND));
        assert_eq!(LIMIT.admit(), Some(0));
    }
}
