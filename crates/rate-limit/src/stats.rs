//! Counters for metrics and `/stats` pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wsguard_config::RateLimitAction;

use crate::error::LimitKind;
use crate::shared::Shared;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) limited_messages: AtomicU64,
    pub(crate) limited_bytes: AtomicU64,
    pub(crate) larger_than_burst: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) error_frames: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) expired: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn limited(&self, limit: LimitKind, action: RateLimitAction) {
        Self::add(
            match limit {
                LimitKind::Messages => &self.limited_messages,
                LimitKind::Bytes => &self.limited_bytes,
                LimitKind::LargerThanBurst => &self.larger_than_burst,
            },
            1,
        );
        Self::add(
            match action {
                RateLimitAction::Drop => &self.dropped,
                RateLimitAction::ErrorFrame => &self.error_frames,
                RateLimitAction::Close => &self.closed,
            },
            1,
        );
    }
}

/// A snapshot of a [`RateLimitLayer`](crate::RateLimitLayer)'s counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// The route the layer was named for ([`RateLimitLayer::route`](crate::RateLimitLayer::route)).
    pub route: Option<std::sync::Arc<str>>,
    /// Calls refused by the message limit.
    pub limited_messages: u64,
    /// Calls refused by the byte limit.
    pub limited_bytes: u64,
    /// Calls refused because their payload is larger than `bytes_burst`.
    pub larger_than_burst: u64,
    /// Refused calls whose action was `drop` (on an HTTP route every refusal is a `429`).
    pub dropped: u64,
    /// Refused calls whose action was `error_frame`.
    pub error_frames: u64,
    /// Refused calls whose action was `close`.
    pub closed: u64,
    /// Keys tracked now: the larger of the two limits' tables (each is capped at `max_keys`).
    pub tracked_keys: usize,
    /// Keys evicted to stay within `max_keys` (over both limits' tables).
    pub evicted: u64,
    /// Keys forgotten by the sweep because their limit had refilled completely.
    pub expired: u64,
}

impl RateLimitStats {
    /// Every refused call.
    pub fn limited(&self) -> u64 {
        self.limited_messages + self.limited_bytes + self.larger_than_burst
    }

    /// Refused calls whose action was `action`.
    pub fn limited_by(&self, action: RateLimitAction) -> u64 {
        match action {
            RateLimitAction::Drop => self.dropped,
            RateLimitAction::ErrorFrame => self.error_frames,
            RateLimitAction::Close => self.closed,
        }
    }
}

/// A cheap, cloneable view of a layer's state, for metrics and status pages; shared by the
/// layer and every service it built.
#[derive(Clone)]
pub struct RateLimitHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl RateLimitHandle {
    /// The counters now. Counting the tracked keys reads every shard of the tables: call it for
    /// a status page or an export, not per message.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RateLimitStats {
            route: self.shared.route(),
            limited_messages: load(&c.limited_messages),
            limited_bytes: load(&c.limited_bytes),
            larger_than_burst: load(&c.larger_than_burst),
            dropped: load(&c.dropped),
            error_frames: load(&c.error_frames),
            closed: load(&c.closed),
            tracked_keys: self.shared.tracked_keys(),
            evicted: load(&c.evicted),
            expired: load(&c.expired),
        }
    }

    /// Forgets now every key whose limit has refilled completely, as the background sweep does
    /// every `cleanup_interval` (it runs when the layer is built inside a tokio runtime).
    pub fn sweep(&self) {
        self.shared.sweep();
    }
}
