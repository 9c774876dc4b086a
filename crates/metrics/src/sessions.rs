//! Session figures a registry reports: plain data an adapter fills from its session registry, so
//! that this crate does not depend on one.

use metrics::{Counter, Gauge};
use serde::{Deserialize, Serialize};

use crate::export::{
    SESSION_MESSAGES_DROPPED_TOTAL, SESSION_MESSAGES_REPLAYED_TOTAL, SESSIONS_CREATED_TOTAL,
    SESSIONS_DETACHED, SESSIONS_EVICTED_TOTAL, SESSIONS_EXPIRED_TOTAL, SESSIONS_LIVE,
    SESSIONS_REFUSED_TOTAL, SESSIONS_RESUMED_TOTAL,
};
use crate::watched::Watched;

/// The figures of one route's sessions at one moment: sizes now, and counters since the session
/// registry was made (totals, never deltas; the registry publishes the differences).
///
/// `wsguard-axum` fills it from `wsguard_session::SessionStats` when a route is given a registry
/// (`WsRoute::metrics`); [`MetricsRegistry::watch_sessions`](crate::MetricsRegistry::watch_sessions)
/// takes any [`SessionSource`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionFigures {
    /// Sessions held now, attached or detached (`None` if the store cannot count cheaply).
    pub live: Option<u64>,
    /// Sessions held now whose client is away.
    pub detached: Option<u64>,
    /// Sessions opened.
    pub created: u64,
    /// Resumes that succeeded.
    pub resumed: u64,
    /// Resumes (and opens) refused, by reason.
    pub refused: SessionRefusals,
    /// Messages sent again on resume.
    pub replayed: u64,
    /// Unacknowledged messages dropped by a bound.
    pub dropped: u64,
    /// Sessions freed after their TTL.
    pub expired: u64,
    /// Detached sessions freed early by a global cap.
    pub evicted: u64,
}

/// Refused resumes by reason (the protocol's `reason` values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionRefusals {
    /// Unknown token, or another client's.
    pub unknown: u64,
    /// Expired session.
    pub expired: u64,
    /// Messages after the client's `last` no longer held.
    pub gap: u64,
    /// No session could be opened.
    pub unavailable: u64,
}

impl SessionRefusals {
    const REASONS: [&'static str; 4] = ["unknown", "expired", "gap", "unavailable"];

    fn by_reason(&self) -> [u64; 4] {
        [self.unknown, self.expired, self.gap, self.unavailable]
    }
}

/// Where a registry reads a route's [`SessionFigures`], on every
/// [`publish`](crate::MetricsRegistry::publish) and [`snapshot`](crate::MetricsRegistry::snapshot).
///
/// Implemented for closures returning the figures.
pub trait SessionSource: Send + Sync + 'static {
    /// The figures now.
    fn figures(&self) -> SessionFigures;
}

impl<F> SessionSource for F
where
    F: Fn() -> SessionFigures + Send + Sync + 'static,
{
    fn figures(&self) -> SessionFigures {
        self()
    }
}

impl Watched for SessionFigures {
    type Handles = SessionHandles;

    fn register(route: &str) -> SessionHandles {
        SessionHandles::register(route)
    }

    /// Sets the gauges and pushes what the counters gained since the last publish.
    fn publish(h: &SessionHandles, now: &Self, last: &Self) {
        if let Some(live) = now.live {
            h.live.set(live as f64);
        }
        if let Some(detached) = now.detached {
            h.detached.set(detached as f64);
        }
        // A replaced source may start lower: `saturating_sub` publishes nothing until it passes.
        let delta = |now: u64, last: u64| now.saturating_sub(last);
        h.created.increment(delta(now.created, last.created));
        h.resumed.increment(delta(now.resumed, last.resumed));
        let (refused, before) = (now.refused.by_reason(), last.refused.by_reason());
        for (i, counter) in h.refused.iter().enumerate() {
            counter.increment(delta(refused[i], before[i]));
        }
        h.replayed.increment(delta(now.replayed, last.replayed));
        h.dropped.increment(delta(now.dropped, last.dropped));
        h.expired.increment(delta(now.expired, last.expired));
        h.evicted.increment(delta(now.evicted, last.evicted));
    }
}

pub(crate) struct SessionHandles {
    live: Gauge,
    detached: Gauge,
    created: Counter,
    resumed: Counter,
    refused: [Counter; 4],
    replayed: Counter,
    dropped: Counter,
    expired: Counter,
    evicted: Counter,
}

impl SessionHandles {
    fn register(route: &str) -> Self {
        crate::export::describe_sessions();
        let counter = |name: &'static str| metrics::counter!(name, "route" => route.to_owned());
        Self {
            live: metrics::gauge!(SESSIONS_LIVE, "route" => route.to_owned()),
            detached: metrics::gauge!(SESSIONS_DETACHED, "route" => route.to_owned()),
            created: counter(SESSIONS_CREATED_TOTAL),
            resumed: counter(SESSIONS_RESUMED_TOTAL),
            refused: SessionRefusals::REASONS.map(|reason| {
                metrics::counter!(SESSIONS_REFUSED_TOTAL, "route" => route.to_owned(), "reason" => reason)
            }),
            replayed: counter(SESSION_MESSAGES_REPLAYED_TOTAL),
            dropped: counter(SESSION_MESSAGES_DROPPED_TOTAL),
            expired: counter(SESSIONS_EXPIRED_TOTAL),
            evicted: counter(SESSIONS_EVICTED_TOTAL),
        }
    }
}
