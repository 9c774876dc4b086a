//! Rate-limit figures a registry reports: plain data filled from a rate-limit layer's counters, so
//! that this crate does not depend on one.

use metrics::{Counter, Gauge};
use serde::{Deserialize, Serialize};

use crate::export::{
    RATE_LIMIT_KEYS_EVICTED_TOTAL, RATE_LIMIT_KEYS_EXPIRED_TOTAL, RATE_LIMIT_TRACKED_KEYS,
    RATE_LIMITED_TOTAL,
};
use crate::watched::Watched;

/// The figures of one route's rate limit at one moment: keys tracked now, and counters since the
/// layer was built (totals, never deltas; the registry publishes the differences).
///
/// Fill it from `wsguard_rate_limit::RateLimitStats` (the `wsguard` crate's
/// `watch_rate_limit` does); [`MetricsRegistry::watch_rate_limit`](crate::MetricsRegistry::watch_rate_limit)
/// takes any [`RateLimitSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimitFigures {
    /// Calls refused, by the limit that refused them and the action taken.
    pub limited: RateLimitRefusals,
    /// Keys (clients, connections) tracked now.
    pub tracked_keys: u64,
    /// Keys evicted to stay within `max_keys`.
    pub evicted: u64,
    /// Keys forgotten by the sweep because their limit had refilled.
    pub expired: u64,
}

/// Refused calls by limit (`messages`, `bytes`, `larger_than_burst`: the payload can never
/// pass), each split by the action the client met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimitRefusals {
    /// Refused by the message limit.
    pub messages: RateLimitActions,
    /// Refused by the byte limit.
    pub bytes: RateLimitActions,
    /// Refused because the payload is larger than the byte burst.
    pub larger_than_burst: RateLimitActions,
}

/// Refused calls by action (`rate_limit.on_limit` when they were refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimitActions {
    /// Dropped without a word (on an HTTP route: answered `429`).
    pub drop: u64,
    /// Answered with an error frame carrying the retry delay.
    pub error_frame: u64,
    /// Answered by closing the connection with `1008`.
    pub close: u64,
}

impl RateLimitActions {
    const LABELS: [&'static str; 3] = ["drop", "error_frame", "close"];

    fn by_label(&self) -> [u64; 3] {
        [self.drop, self.error_frame, self.close]
    }

    /// Every refused call of this limit.
    pub fn total(&self) -> u64 {
        self.by_label().iter().sum()
    }
}

impl RateLimitRefusals {
    const LABELS: [&'static str; 3] = ["messages", "bytes", "larger_than_burst"];

    fn by_label(&self) -> [&RateLimitActions; 3] {
        [&self.messages, &self.bytes, &self.larger_than_burst]
    }

    /// Every refused call.
    pub fn total(&self) -> u64 {
        self.by_label().iter().map(|a| a.total()).sum()
    }
}

/// Where a registry reads a route's [`RateLimitFigures`], on every
/// [`publish`](crate::MetricsRegistry::publish) and [`snapshot`](crate::MetricsRegistry::snapshot).
///
/// Implemented for closures returning the figures.
pub trait RateLimitSource: Send + Sync + 'static {
    /// The figures now.
    fn figures(&self) -> RateLimitFigures;
}

impl<F> RateLimitSource for F
where
    F: Fn() -> RateLimitFigures + Send + Sync + 'static,
{
    fn figures(&self) -> RateLimitFigures {
        self()
    }
}

impl Watched for RateLimitFigures {
    type Handles = RateLimitHandles;

    fn register(route: &str) -> RateLimitHandles {
        RateLimitHandles::register(route)
    }

    /// Sets the gauge and pushes what the counters gained since the last publish.
    fn publish(h: &RateLimitHandles, now: &Self, last: &Self) {
        h.tracked_keys.set(now.tracked_keys as f64);
        // A replaced source may start lower: `saturating_sub` publishes nothing until it passes.
        let delta = |now: u64, last: u64| now.saturating_sub(last);
        let (limited, before) = (now.limited.by_label(), last.limited.by_label());
        for (l, counters) in h.limited.iter().enumerate() {
            let (now, before) = (limited[l].by_label(), before[l].by_label());
            for (a, counter) in counters.iter().enumerate() {
                counter.increment(delta(now[a], before[a]));
            }
        }
        h.evicted.increment(delta(now.evicted, last.evicted));
        h.expired.increment(delta(now.expired, last.expired));
    }
}

pub(crate) struct RateLimitHandles {
    /// By limit, then by action, in the order of the `LABELS`.
    limited: [[Counter; 3]; 3],
    tracked_keys: Gauge,
    evicted: Counter,
    expired: Counter,
}

impl RateLimitHandles {
    fn register(route: &str) -> Self {
        crate::export::describe_rate_limits();
        Self {
            limited: RateLimitRefusals::LABELS.map(|limit| {
                RateLimitActions::LABELS.map(|action| {
                    metrics::counter!(RATE_LIMITED_TOTAL, "route" => route.to_owned(), "limit" => limit, "action" => action)
                })
            }),
            tracked_keys: metrics::gauge!(RATE_LIMIT_TRACKED_KEYS, "route" => route.to_owned()),
            evicted: metrics::counter!(RATE_LIMIT_KEYS_EVICTED_TOTAL, "route" => route.to_owned()),
            expired: metrics::counter!(RATE_LIMIT_KEYS_EXPIRED_TOTAL, "route" => route.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_in_label_order() {
        let actions = |base: u64| RateLimitActions {
            drop: base,
            error_frame: base + 1,
            close: base + 2,
        };
        let refusals = RateLimitRefusals {
            messages: actions(0),
            bytes: actions(10),
            larger_than_burst: actions(20),
        };
        let by_label = refusals.by_label().map(RateLimitActions::by_label);
        assert_eq!(by_label, [[0, 1, 2], [10, 11, 12], [20, 21, 22]]);
        assert_eq!(
            RateLimitRefusals::LABELS,
            ["messages", "bytes", "larger_than_burst"]
        );
        assert_eq!(RateLimitActions::LABELS, ["drop", "error_frame", "close"]);
        assert_eq!(refusals.total(), 99);
        assert_eq!(refusals.bytes.total(), 33);
    }
}
