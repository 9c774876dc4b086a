//! Counters for metrics and `/stats` pages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wsguard_config::RateLimitAction;

use crate::error::LimitKind;
use crate::shared::Shared;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Refused calls by limit (rows, [`limit_index`]) and action (columns, [`action_index`]).
    pub(crate) limited: [[AtomicU64; 3]; 3],
    pub(crate) evicted: AtomicU64,
    pub(crate) expired: AtomicU64,
}

const LIMITS: [LimitKind; 3] = [
    LimitKind::Messages,
    LimitKind::Bytes,
    LimitKind::LargerThanBurst,
];
const ACTIONS: [RateLimitAction; 3] = [
    RateLimitAction::Drop,
    RateLimitAction::ErrorFrame,
    RateLimitAction::Close,
];

const fn limit_index(limit: LimitKind) -> usize {
    match limit {
        LimitKind::Messages => 0,
        LimitKind::Bytes => 1,
        LimitKind::LargerThanBurst => 2,
    }
}

const fn action_index(action: RateLimitAction) -> usize {
    match action {
        RateLimitAction::Drop => 0,
        RateLimitAction::ErrorFrame => 1,
        RateLimitAction::Close => 2,
    }
}

impl Counters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn limited(&self, limit: LimitKind, action: RateLimitAction) {
        Self::add(&self.limited[limit_index(limit)][action_index(action)], 1);
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
    by_limit_and_action: [[u64; 3]; 3],
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

    /// Calls refused by `limit` whose action was `action` (the labels of a metrics export).
    pub fn limited_with(&self, limit: LimitKind, action: RateLimitAction) -> u64 {
        self.by_limit_and_action[limit_index(limit)][action_index(action)]
    }

    /// Every (limit, action) pair with its count of refused calls, zeros included.
    pub fn limited_by_limit_and_action(
        &self,
    ) -> impl Iterator<Item = (LimitKind, RateLimitAction, u64)> + '_ {
        LIMITS.into_iter().flat_map(move |limit| {
            ACTIONS
                .into_iter()
                .map(move |action| (limit, action, self.limited_with(limit, action)))
        })
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
        let matrix = c.limited.each_ref().map(|row| row.each_ref().map(load));
        let by_limit = |limit: LimitKind| matrix[limit_index(limit)].iter().sum();
        let by_action =
            |action: RateLimitAction| matrix.iter().map(|row| row[action_index(action)]).sum();
        RateLimitStats {
            route: self.shared.route(),
            limited_messages: by_limit(LimitKind::Messages),
            limited_bytes: by_limit(LimitKind::Bytes),
            larger_than_burst: by_limit(LimitKind::LargerThanBurst),
            dropped: by_action(RateLimitAction::Drop),
            error_frames: by_action(RateLimitAction::ErrorFrame),
            closed: by_action(RateLimitAction::Close),
            tracked_keys: self.shared.tracked_keys(),
            evicted: load(&c.evicted),
            expired: load(&c.expired),
            by_limit_and_action: matrix,
        }
    }

    /// Forgets now every key whose limit has refilled completely, as the background sweep does
    /// every `cleanup_interval` (it runs when the layer is built inside a tokio runtime).
    pub fn sweep(&self) {
        self.shared.sweep();
    }
}
