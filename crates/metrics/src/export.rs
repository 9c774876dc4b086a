//! Export through the `metrics` facade: names, labels, and the handles cached per layer.
//!
//! Handles are registered with the recorder installed when the registry (connection metrics) or
//! the layer (call metrics) is built, and reused for every call: install the recorder first.

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::{Direction, Outcome};

/// `wsguard_calls_total{route, direction, outcome}`: finished calls; `outcome` is `ok`, `error`,
/// `rejected`, `duplicate`, or `cancelled` (the caller dropped the call before it finished).
pub const CALLS_TOTAL: &str = "wsguard_calls_total";
/// `wsguard_calls_in_flight{route, direction}`: calls started and not yet finished.
pub const CALLS_IN_FLIGHT: &str = "wsguard_calls_in_flight";
/// `wsguard_bytes_total{route, direction}`: payload bytes of calls whose size is known.
pub const BYTES_TOTAL: &str = "wsguard_bytes_total";
/// `wsguard_call_duration_seconds{route, direction}`: latency of sampled calls.
pub const CALL_DURATION_SECONDS: &str = "wsguard_call_duration_seconds";
/// `wsguard_connections_active`: live connections.
pub const CONNECTIONS_ACTIVE: &str = "wsguard_connections_active";
/// `wsguard_connections_total`: connections opened.
pub const CONNECTIONS_TOTAL: &str = "wsguard_connections_total";
/// `wsguard_clients_evicted_total`: clients dropped from the table by the `max_clients` cap.
pub const CLIENTS_EVICTED_TOTAL: &str = "wsguard_clients_evicted_total";
/// `wsguard_clients_expired_total`: clients removed by the inactivity sweep.
pub const CLIENTS_EXPIRED_TOTAL: &str = "wsguard_clients_expired_total";

/// Handles of one layer (a route and a direction).
pub(crate) struct RouteHandles {
    pub(crate) calls: [Counter; 4],
    pub(crate) cancelled: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) bytes: Counter,
    pub(crate) duration: Histogram,
}

impl RouteHandles {
    pub(crate) fn register(route: &str, direction: Direction) -> Self {
        describe();
        let dir = direction.as_str();
        let call = |outcome: &'static str| metrics::counter!(CALLS_TOTAL, "route" => route.to_owned(), "direction" => dir, "outcome" => outcome);
        Self {
            calls: Outcome::ALL.map(|o| call(o.as_str())),
            cancelled: call("cancelled"),
            in_flight: metrics::gauge!(CALLS_IN_FLIGHT, "route" => route.to_owned(), "direction" => dir),
            bytes: metrics::counter!(BYTES_TOTAL, "route" => route.to_owned(), "direction" => dir),
            duration: metrics::histogram!(CALL_DURATION_SECONDS, "route" => route.to_owned(), "direction" => dir),
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
