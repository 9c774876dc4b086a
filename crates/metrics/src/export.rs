//! Export through the `metrics` facade: names and labels.
//!
//! Handles are registered with the recorder installed when the registry (connection metrics) or
//! the first service of a route (call metrics, at [`Layer::layer`](tower_layer::Layer::layer))
//! is built, then reused: install the recorder first.
//!
//! Call counts, bytes and in-flight calls are counted in wsguard's own per-thread counters and
//! pushed to the facade by [`MetricsRegistry::publish`](crate::MetricsRegistry::publish): every
//! second by the registry's background task, and whenever you call it (call it in your `/metrics`
//! handler before rendering, and the rendered figures are exact at that moment). So the request
//! path touches no shared cache line of the recorder. Latencies of sampled calls and connection
//! events are recorded as they happen.
//!
//! A Prometheus endpoint with `metrics-exporter-prometheus`:
//!
//! ```
//! use axum::{Router, routing::get};
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use wsguard_config::MetricsConfig;
//! use wsguard_metrics::{MetricsLayer, MetricsRegistry};
//!
//! # #[cfg(feature = "http")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = MetricsConfig::default();
//! let recorder = PrometheusBuilder::new()
//!     .set_buckets(&config.latency_buckets)
//!     .unwrap()
//!     .build_recorder();
//! let prometheus = recorder.handle();
//! metrics::set_global_recorder(recorder).unwrap(); // first, then the registry and layers
//!
//! let registry = MetricsRegistry::new(config);
//! let scrape = registry.clone();
//! let app: Router = Router::new()
//!     .route("/ws", get(|| async { "upgrade here" }))
//!     .route_layer(MetricsLayer::new(registry).route("/ws"))
//!     .route("/metrics", get(move || async move {
//!         scrape.publish(); // exact counts at this scrape
//!         prometheus.render()
//!     }));
//! # let _ = app;
//! # }
//! # #[cfg(not(feature = "http"))] fn main() {}
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::registry::aggregate::{Counters, Totals};
use crate::{Direction, classify};

/// `wsguard_calls_total{route, direction, outcome}`: finished calls; `outcome` is `ok`, `error`,
/// `rejected`, `duplicate`, or `cancelled` (the caller dropped the call before it finished).
pub const CALLS_TOTAL: &str = "wsguard_calls_total";
/// `wsguard_calls_in_flight{route, direction}`: calls started and not yet finished.
pub const CALLS_IN_FLIGHT: &str = "wsguard_calls_in_flight";
/// `wsguard_bytes_total{route, direction}`: payload bytes of calls whose size is known.
pub const BYTES_TOTAL: &str = "wsguard_bytes_total";
/// `wsguard_call_duration_seconds{route, direction}`: latency of sampled calls.
pub const CALL_DURATION_SECONDS: &str = "wsguard_call_duration_seconds";
/// `wsguard_send_dropped_total{route}`: outbound messages dropped by a connection's send queue
/// (`drop_newest` or `drop_oldest` overflow: the client reads too slowly).
pub const SEND_DROPPED_TOTAL: &str = "wsguard_send_dropped_total";
/// `wsguard_connections_active`: live connections.
pub const CONNECTIONS_ACTIVE: &str = "wsguard_connections_active";
/// `wsguard_connections_total`: connections opened.
pub const CONNECTIONS_TOTAL: &str = "wsguard_connections_total";
/// `wsguard_clients_evicted_total`: clients dropped from the table by the `max_clients` cap.
pub const CLIENTS_EVICTED_TOTAL: &str = "wsguard_clients_evicted_total";
/// `wsguard_clients_expired_total`: clients removed by the inactivity sweep.
pub const CLIENTS_EXPIRED_TOTAL: &str = "wsguard_clients_expired_total";

/// `wsguard_sessions_live{route}`: `wsguard.v1` sessions held now, attached or detached.
pub const SESSIONS_LIVE: &str = "wsguard_sessions_live";
/// `wsguard_sessions_detached{route}`: sessions held now whose client is away.
pub const SESSIONS_DETACHED: &str = "wsguard_sessions_detached";
/// `wsguard_sessions_created_total{route}`: sessions opened.
pub const SESSIONS_CREATED_TOTAL: &str = "wsguard_sessions_created_total";
/// `wsguard_sessions_resumed_total{route}`: resumes that succeeded.
pub const SESSIONS_RESUMED_TOTAL: &str = "wsguard_sessions_resumed_total";
/// `wsguard_sessions_refused_total{route, reason}`: resumes refused; `reason` is `unknown`,
/// `expired`, `gap` or `unavailable` (no session could be opened).
pub const SESSIONS_REFUSED_TOTAL: &str = "wsguard_sessions_refused_total";
/// `wsguard_session_messages_replayed_total{route}`: messages sent again on resume.
pub const SESSION_MESSAGES_REPLAYED_TOTAL: &str = "wsguard_session_messages_replayed_total";
/// `wsguard_session_messages_dropped_total{route}`: unacknowledged messages dropped by a session
/// bound (`max_messages`, `max_bytes`, `max_total_bytes`).
pub const SESSION_MESSAGES_DROPPED_TOTAL: &str = "wsguard_session_messages_dropped_total";
/// `wsguard_sessions_expired_total{route}`: sessions freed after their TTL.
pub const SESSIONS_EXPIRED_TOTAL: &str = "wsguard_sessions_expired_total";
/// `wsguard_sessions_evicted_total{route}`: detached sessions freed early by a global cap.
pub const SESSIONS_EVICTED_TOTAL: &str = "wsguard_sessions_evicted_total";

/// `wsguard_rate_limited_total{route, limit, action}`: calls a rate limit refused; `limit` is
/// `messages`, `bytes` or `larger_than_burst` (the payload is larger than the byte burst),
/// `action` is `drop`, `error_frame` or `close` (`rate_limit.on_limit` at the time).
pub const RATE_LIMITED_TOTAL: &str = "wsguard_rate_limited_total";
/// `wsguard_rate_limit_tracked_keys{route}`: keys (clients, connections) a rate limit tracks now.
pub const RATE_LIMIT_TRACKED_KEYS: &str = "wsguard_rate_limit_tracked_keys";
/// `wsguard_rate_limit_keys_evicted_total{route}`: keys evicted by the `max_keys` cap.
pub const RATE_LIMIT_KEYS_EVICTED_TOTAL: &str = "wsguard_rate_limit_keys_evicted_total";
/// `wsguard_rate_limit_keys_expired_total{route}`: keys forgotten by the sweep because their limit
/// had refilled.
pub const RATE_LIMIT_KEYS_EXPIRED_TOTAL: &str = "wsguard_rate_limit_keys_expired_total";

/// The counters of one route and direction, shared by every layer built for them.
pub(crate) struct RouteStats {
    pub(crate) route: Arc<str>,
    pub(crate) direction: Direction,
    pub(crate) counters: Counters,
    /// Outbound messages dropped by send queues of this route's connections (exact).
    pub(crate) send_dropped: AtomicU64,
    handles: RouteHandles,
    published: Mutex<Totals>,
}

impl RouteStats {
    pub(crate) fn new(route: Arc<str>, direction: Direction) -> Self {
        Self {
            handles: RouteHandles::register(&route, direction),
            route,
            direction,
            counters: Counters::new(),
            send_dropped: AtomicU64::new(0),
            published: Mutex::new(Totals::default()),
        }
    }

    pub(crate) fn record_send_dropped(&self, count: u64) {
        self.send_dropped.fetch_add(count, Ordering::Relaxed);
        self.handles.send_dropped.increment(count);
    }

    #[inline]
    pub(crate) fn record_latency(&self, seconds: f64) {
        self.handles.duration.record(seconds);
    }

    /// Pushes what changed since the last publish to the facade.
    pub(crate) fn publish(&self) {
        let mut last = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.counters.totals();
        let h = &self.handles;
        for (i, counter) in h.calls.iter().enumerate() {
            counter.increment(now.outcomes[i].saturating_sub(last.outcomes[i]));
        }
        h.cancelled
            .increment(now.cancelled.saturating_sub(last.cancelled));
        let d = self.direction.index();
        h.bytes
            .increment(now.bytes[d].saturating_sub(last.bytes[d]));
        h.in_flight.set(now.in_flight() as f64);
        *last = now;
    }
}

/// Handles of one route and direction.
struct RouteHandles {
    calls: [Counter; 4],
    cancelled: Counter,
    in_flight: Gauge,
    bytes: Counter,
    duration: Histogram,
    send_dropped: Counter,
}

impl RouteHandles {
    fn register(route: &str, direction: Direction) -> Self {
        describe();
        let dir = direction.as_str();
        let call = |outcome: &'static str| metrics::counter!(CALLS_TOTAL, "route" => route.to_owned(), "direction" => dir, "outcome" => outcome);
        Self {
            calls: classify::ALL.map(|o| call(classify::label(o))),
            cancelled: call("cancelled"),
            in_flight: metrics::gauge!(CALLS_IN_FLIGHT, "route" => route.to_owned(), "direction" => dir),
            bytes: metrics::counter!(BYTES_TOTAL, "route" => route.to_owned(), "direction" => dir),
            duration: metrics::histogram!(CALL_DURATION_SECONDS, "route" => route.to_owned(), "direction" => dir),
            send_dropped: metrics::counter!(SEND_DROPPED_TOTAL, "route" => route.to_owned()),
        }
    }
}

/// Handles of a registry.
pub(crate) struct RegistryHandles {
    pub(crate) connections_active: Gauge,
    pub(crate) connections_total: Counter,
    pub(crate) clients_evicted: Counter,
    pub(crate) clients_expired: Counter,
}

impl RegistryHandles {
    pub(crate) fn register() -> Self {
        describe();
        Self {
            connections_active: metrics::gauge!(CONNECTIONS_ACTIVE),
            connections_total: metrics::counter!(CONNECTIONS_TOTAL),
            clients_evicted: metrics::counter!(CLIENTS_EVICTED_TOTAL),
            clients_expired: metrics::counter!(CLIENTS_EXPIRED_TOTAL),
        }
    }
}

fn describe() {
    metrics::describe_counter!(CALLS_TOTAL, Unit::Count, "Calls finished, by outcome");
    metrics::describe_gauge!(CALLS_IN_FLIGHT, Unit::Count, "Calls in flight");
    metrics::describe_counter!(BYTES_TOTAL, Unit::Bytes, "Payload bytes");
    metrics::describe_histogram!(
        CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Latency of sampled calls"
    );
    metrics::describe_counter!(
        SEND_DROPPED_TOTAL,
        Unit::Count,
        "Outbound messages dropped by full send queues"
    );
    metrics::describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "Live connections");
    metrics::describe_counter!(CONNECTIONS_TOTAL, Unit::Count, "Connections opened");
    metrics::describe_counter!(
        CLIENTS_EVICTED_TOTAL,
        Unit::Count,
        "Clients evicted by the max_clients cap"
    );
    metrics::describe_counter!(
        CLIENTS_EXPIRED_TOTAL,
        Unit::Count,
        "Clients removed by the inactivity sweep"
    );
}

pub(crate) fn describe_sessions() {
    metrics::describe_gauge!(SESSIONS_LIVE, Unit::Count, "Sessions held");
    metrics::describe_gauge!(
        SESSIONS_DETACHED,
        Unit::Count,
        "Sessions whose client is away"
    );
    metrics::describe_counter!(SESSIONS_CREATED_TOTAL, Unit::Count, "Sessions opened");
    metrics::describe_counter!(SESSIONS_RESUMED_TOTAL, Unit::Count, "Sessions resumed");
    metrics::describe_counter!(
        SESSIONS_REFUSED_TOTAL,
        Unit::Count,
        "Resumes refused, by reason"
    );
    metrics::describe_counter!(
        SESSION_MESSAGES_REPLAYED_TOTAL,
        Unit::Count,
        "Messages sent again on resume"
    );
    metrics::describe_counter!(
        SESSION_MESSAGES_DROPPED_TOTAL,
        Unit::Count,
        "Unacknowledged messages dropped by a session bound"
    );
    metrics::describe_counter!(
        SESSIONS_EXPIRED_TOTAL,
        Unit::Count,
        "Sessions freed after their TTL"
    );
    metrics::describe_counter!(
        SESSIONS_EVICTED_TOTAL,
        Unit::Count,
        "Detached sessions freed by a global cap"
    );
}

pub(crate) fn describe_rate_limits() {
    metrics::describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "Calls refused by a rate limit, by limit and action"
    );
    metrics::describe_gauge!(
        RATE_LIMIT_TRACKED_KEYS,
        Unit::Count,
        "Keys a rate limit tracks"
    );
    metrics::describe_counter!(
        RATE_LIMIT_KEYS_EVICTED_TOTAL,
        Unit::Count,
        "Rate-limit keys evicted by the max_keys cap"
    );
    metrics::describe_counter!(
        RATE_LIMIT_KEYS_EXPIRED_TOTAL,
        Unit::Count,
        "Rate-limit keys forgotten after their limit refilled"
    );
}
