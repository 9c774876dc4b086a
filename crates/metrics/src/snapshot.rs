//! Serialisable views of a [`MetricsRegistry`](crate::MetricsRegistry).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::export::RouteStats;
use crate::rate_limits::RateLimitFigures;
use crate::registry::Inner;
use crate::registry::aggregate::{LatencyHistogram, Totals};
use crate::registry::clients::ClientEntry;
use crate::sessions::SessionFigures;

/// Everything the registry knows, at one moment; see
/// [`MetricsRegistry::snapshot`](crate::MetricsRegistry::snapshot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Whether recording is on.
    pub enabled: bool,
    /// The sampling rate of latency and per-client detail.
    pub sample_rate: f64,
    /// Finished calls by outcome (exact).
    pub calls: OutcomeCounts,
    /// Calls started and not finished (exact).
    pub in_flight: u64,
    /// Calls of inbound layers (exact).
    pub messages_in: u64,
    /// Calls of outbound layers (exact).
    pub messages_out: u64,
    /// Payload bytes of inbound calls whose size was known (exact).
    pub bytes_in: u64,
    /// Payload bytes of outbound calls whose size was known (exact).
    pub bytes_out: u64,
    /// Live connections.
    pub connections_active: u64,
    /// Connections opened since the registry was built.
    pub connections_total: u64,
    /// Latency of sampled inbound calls.
    pub latency_inbound: HistogramSnapshot,
    /// Latency of sampled outbound calls.
    pub latency_outbound: HistogramSnapshot,
    /// The same exact counts per route and direction (the labels of the exported metrics).
    pub routes: Vec<RouteSnapshot>,
    /// The client table.
    pub clients: ClientsSnapshot,
    /// `wsguard.v1` session figures of each route that reports them
    /// ([`MetricsRegistry::watch_sessions`](crate::MetricsRegistry::watch_sessions)).
    #[serde(default)]
    pub sessions: Vec<SessionsSnapshot>,
    /// Rate-limit figures of each route that reports them
    /// ([`MetricsRegistry::watch_rate_limit`](crate::MetricsRegistry::watch_rate_limit)).
    #[serde(default)]
    pub rate_limits: Vec<RateLimitsSnapshot>,
}

/// The rate-limit figures of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimitsSnapshot {
    /// The route label.
    pub route: String,
    /// Its figures at this moment.
    #[serde(flatten)]
    pub figures: RateLimitFigures,
}

/// The session figures of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SessionsSnapshot {
    /// The route label.
    pub route: String,
    /// Its figures at this moment.
    #[serde(flatten)]
    pub figures: SessionFigures,
}

/// Exact counts of one route in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteSnapshot {
    /// The route label.
    pub route: String,
    /// `in` or `out`.
    pub direction: String,
    /// Finished calls by outcome.
    pub calls: OutcomeCounts,
    /// Calls in flight.
    pub in_flight: u64,
    /// Payload bytes of calls whose size was known.
    pub bytes: u64,
    /// Outbound messages dropped by full send queues of this route's connections (counted on
    /// the `out` direction; exact).
    pub send_dropped: u64,
}

impl RouteSnapshot {
    pub(crate) fn of(stats: &RouteStats, totals: &Totals) -> Self {
        Self {
            route: stats.route.to_string(),
            direction: stats.direction.as_str().to_owned(),
            calls: OutcomeCounts::of(totals),
            in_flight: totals.in_flight(),
            bytes: totals.bytes[stats.direction.index()],
            send_dropped: stats.send_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Finished calls by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// [`Outcome::Success`](crate::Outcome::Success).
    pub ok: u64,
    /// [`Outcome::Failure`](crate::Outcome::Failure).
    pub error: u64,
    /// [`Outcome::Rejected`](crate::Outcome::Rejected).
    pub rejected: u64,
    /// [`Outcome::Duplicate`](crate::Outcome::Duplicate).
    pub duplicate: u64,
    /// Dropped by the caller before finishing.
    pub cancelled: u64,
}

impl OutcomeCounts {
    pub(crate) fn of(totals: &Totals) -> Self {
        Self {
            ok: totals.outcomes[0],
            error: totals.outcomes[1],
            rejected: totals.outcomes[2],
            duplicate: totals.outcomes[3],
            cancelled: totals.cancelled,
        }
    }

    /// Every finished call, cancelled ones included.
    pub fn total(&self) -> u64 {
        self.ok + self.error + self.rejected + self.duplicate + self.cancelled
    }
}

/// A latency histogram: `counts[i]` calls took at most `bounds[i]` seconds (and more than the
/// previous bound); `overflow` took longer than the last bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Upper bounds in seconds (`latency_buckets`).
    pub bounds: Vec<f64>,
    /// Calls per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Calls slower than the last bound.
    pub overflow: u64,
    /// Sampled calls measured.
    pub count: u64,
    /// Their total latency in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub(crate) fn of(h: &LatencyHistogram) -> Self {
        let (mut counts, sum) = h.read();
        let overflow = counts.pop().unwrap_or(0);
        Self {
            bounds: h.bounds().to_vec(),
            count: counts.iter().sum::<u64>() + overflow,
            counts,
            overflow,
            sum_seconds: Inner::nanos_to_secs(sum),
        }
    }
}

/// The per-client table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientsSnapshot {
    /// Clients tracked now.
    pub tracked: usize,
    /// Clients evicted by the `max_clients` cap so far.
    pub evicted: u64,
    /// Clients removed by the inactivity sweep so far.
    pub expired: u64,
    /// The `top_clients` most active clients (messages in + out), most active first.
    pub top: Vec<ClientSnapshot>,
}

/// One client's figures. Message, byte and outcome counts cover sampled calls only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientSnapshot {
    /// The client id.
    pub client_id: String,
    /// Its live connections.
    pub connections: u32,
    /// Seconds since it connected (or was first seen, for a client without a connection).
    pub connected_secs: f64,
    /// Seconds since its last recorded activity.
    pub idle_secs: f64,
    /// Inbound messages (sampled).
    pub messages_in: u64,
    /// Outbound messages (sampled).
    pub messages_out: u64,
    /// Inbound bytes (sampled).
    pub bytes_in: u64,
    /// Outbound bytes (sampled).
    pub bytes_out: u64,
    /// Calls that ended in [`Outcome::Failure`](crate::Outcome::Failure) (sampled).
    pub errors: u64,
    /// Calls dropped as [`Outcome::Duplicate`](crate::Outcome::Duplicate) (sampled).
    pub duplicates: u64,
    /// Calls [`Outcome::Rejected`](crate::Outcome::Rejected) (sampled).
    pub rejections: u64,
    /// Outbound messages dropped by full send queues of its connections (exact).
    pub send_dropped: u64,
}

impl ClientSnapshot {
    pub(crate) fn of(e: &ClientEntry, now: u64) -> Self {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            client_id: e.id.to_string(),
            connections: e.connections.load(Ordering::Relaxed),
            connected_secs: Inner::nanos_to_secs(now.saturating_sub(e.created)),
            idle_secs: Inner::nanos_to_secs(now.saturating_sub(load(&e.last_activity))),
            messages_in: load(&e.messages[0]),
            messages_out: load(&e.messages[1]),
            bytes_in: load(&e.bytes[0]),
            bytes_out: load(&e.bytes[1]),
            errors: load(&e.errors),
            duplicates: load(&e.duplicates),
            rejections: load(&e.rejections),
            send_dropped: load(&e.send_dropped),
        }
    }
}
