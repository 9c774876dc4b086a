use std::fmt;
use std::time::Duration;

use crate::{
    BackoffStrategy, CircuitBreakerConfig, ClientIdSource, ConnectionConfig, DedupConfig,
    DedupScope, KeySource, MetricsConfig, RateLimitConfig, RetryConfig, SessionBackend,
    SessionConfig, StabilityConfig, StoreBackend, TripMode,
};

/// One problem with one field of a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, such as `dedup.ttl`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    errors: Vec<FieldError>,
}

impl ValidationError {
    /// The problems, in field order.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Whether some problem concerns the field at `path`.
    pub fn has(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

#[derive(Default)]
struct Problems {
    errors: Vec<FieldError>,
}

impl Problems {
    fn check(&mut self, ok: bool, path: &str, message: impl Into<String>) {
        if !ok {
            self.errors.push(FieldError {
                path: path.to_owned(),
                message: message.into(),
            });
        }
    }
}

fn is_fraction(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

fn is_percent(x: f64) -> bool {
    x > 0.0 && x <= 100.0
}

impl StabilityConfig {
    /// Checks every rule and returns every problem at once, each naming its field path.
    ///
    /// ```
    /// use std::time::Duration;
    /// use wsguard_config::StabilityConfig;
    ///
    /// let mut config = StabilityConfig::default();
    /// config.dedup.ttl = Duration::ZERO;
    /// config.metrics.sample_rate = 1.5;
    /// let err = config.validate().unwrap_err();
    /// assert!(err.has("dedup.ttl") && err.has("metrics.sample_rate"));
    /// assert!(err.to_string().contains("dedup.ttl: must be > 0"));
    /// ```
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::default();
        validate_metrics(&self.metrics, &mut p);
        validate_breaker(&self.circuit_breaker, &mut p);
        validate_dedup(&self.dedup, &mut p);
        validate_client_scope(&self.dedup, &self.connection, &mut p);
        validate_connection(&self.connection, &mut p);
        validate_session(&self.session, &self.connection, &mut p);
        validate_rate_limit(&self.rate_limit, &self.connection, &mut p);
        validate_retry(&self.retry, &mut p);
        if p.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError { errors: p.errors })
        }
    }
}

fn validate_metrics(m: &MetricsConfig, p: &mut Problems) {
    p.check(
        is_fraction(m.sample_rate),
        "metrics.sample_rate",
        "must be between 0.0 and 1.0",
    );
    p.check(
        !m.client_metrics_ttl.is_zero(),
        "metrics.client_metrics_ttl",
        "must be > 0",
    );
    p.check(
        !m.cleanup_interval.is_zero(),
        "metrics.cleanup_interval",
        "must be > 0",
    );
    p.check(m.max_clients > 0, "metrics.max_clients", "must be > 0");
    p.check(
        !m.latency_buckets.is_empty(),
        "metrics.latency_buckets",
        "must list at least one bucket",
    );
    p.check(
        m.latency_buckets.iter().all(|b| b.is_finite() && *b > 0.0),
        "metrics.latency_buckets",
        "every bucket must be a finite number of seconds > 0",
    );
    p.check(
        m.latency_buckets.windows(2).all(|w| w[0] < w[1]),
        "metrics.latency_buckets",
        "buckets must be strictly increasing",
    );
    p.check(
        m.cleanup_interval <= m.client_metrics_ttl || m.client_metrics_ttl.is_zero(),
        "metrics.cleanup_interval",
        "must be <= metrics.client_metrics_ttl, or inactive clients outlive their TTL by up to a whole interval",
    );
}

fn validate_breaker(c: &CircuitBreakerConfig, p: &mut Problems) {
    const P: &str = "circuit_breaker";
    let path = |f: &str| format!("{P}.{f}");
    p.check(
        c.failure_threshold > 0,
        &path("failure_threshold"),
        "must be > 0",
    );
    p.check(c.window_size > 0, &path("window_size"), "must be > 0");
    p.check(c.minimum_calls > 0, &path("minimum_calls"), "must be > 0");
    p.check(
        c.window_duration.as_secs() >= 1 && c.window_duration.subsec_nanos() == 0,
        &path("window_duration"),
        "must be a whole number of seconds, at least 1s",
    );
    p.check(
        is_percent(c.failure_rate_threshold),
        &path("failure_rate_threshold"),
        "must be in (0, 100]",
    );
    p.check(
        is_percent(c.slow_call_rate_threshold),
        &path("slow_call_rate_threshold"),
        "must be in (0, 100]",
    );
    p.check(
        !c.slow_call_duration.is_zero(),
        &path("slow_call_duration"),
        "must be > 0",
    );
    p.check(!c.timeout.is_zero(), &path("timeout"), "must be > 0");
    p.check(
        c.half_open_max_calls > 0,
        &path("half_open_max_calls"),
        "must be > 0, or a half-open breaker can never probe and never closes",
    );
    p.check(
        c.success_threshold > 0,
        &path("success_threshold"),
        "must be > 0",
    );
    p.check(
        c.backoff.multiplier.is_finite() && c.backoff.multiplier >= 1.0,
        &path("backoff.multiplier"),
        "must be >= 1.0",
    );
    p.check(
        (0.0..1.0).contains(&c.backoff.jitter),
        &path("backoff.jitter"),
        "must be in [0.0, 1.0)",
    );
    if c.backoff.strategy == BackoffStrategy::Exponential {
        p.check(
            c.backoff.max_wait >= c.timeout,
            &path("backoff.max_wait"),
            "must be >= circuit_breaker.timeout, or the cap is below the first wait and the backoff never grows",
        );
    }
    if c.mode == TripMode::CountWindow && c.window_size > 0 {
        p.check(
            c.minimum_calls <= c.window_size,
            &path("minimum_calls"),
            "must be <= circuit_breaker.window_size in count_window mode, or the window never holds enough calls and the breaker never opens",
        );
    }
}

fn validate_dedup(d: &DedupConfig, p: &mut Problems) {
    p.check(!d.ttl.is_zero(), "dedup.ttl", "must be > 0");
    p.check(d.max_entries > 0, "dedup.max_entries", "must be > 0");
    p.check(
        (100..=599).contains(&d.duplicate_status),
        "dedup.duplicate_status",
        "must be an HTTP status code (100..=599)",
    );
    if d.key == KeySource::JsonField {
        p.check(
            !d.json_field.is_empty(),
            "dedup.json_field",
            "must name a field when dedup.key = \"json_field\"",
        );
    }
    if d.key == KeySource::Header {
        p.check(
            http_token(&d.header),
            "dedup.header",
            "must be a valid HTTP header name when dedup.key = \"header\"",
        );
    }
    if let Some(key) = &d.fingerprint_key {
        p.check(
            crate::dedup::parse_hex_key(key).is_some(),
            "dedup.fingerprint_key",
            "must be 32 hex digits (a 128-bit key)",
        );
    }
    if d.store.backend == StoreBackend::Redis {
        let r = &d.store.redis;
        p.check(
            redis_url(&r.url),
            "dedup.store.redis.url",
            "must be a redis://, rediss:// or unix:// URL",
        );
        validate_cluster_nodes(&r.cluster_nodes, "dedup.store.redis.cluster_nodes", p);
        p.check(
            !r.operation_timeout.is_zero(),
            "dedup.store.redis.operation_timeout",
            "must be > 0, or a slow Redis would hang requests",
        );
        p.check(
            d.ttl.as_millis() >= 1,
            "dedup.ttl",
            "must be at least 1ms with the Redis store (PX is in milliseconds)",
        );
        let fingerprints = d.key == KeySource::Fingerprint || d.fingerprint_when_missing;
        p.check(
            !fingerprints || d.fingerprint_key.is_some(),
            "dedup.fingerprint_key",
            "must be set when fingerprints go to the shared Redis store, or every node hashes with its own random key and duplicates across nodes are never seen",
        );
    }
}

/// A client-chosen id would let any client claim another's id and suppress its messages.
fn validate_client_scope(d: &DedupConfig, c: &ConnectionConfig, p: &mut Problems) {
    let source = match c.client_id {
        ClientIdSource::PeerAddr | ClientIdSource::Authenticated => return,
        ClientIdSource::Header => "header",
        ClientIdSource::Query => "query",
    };
    p.check(
        d.scope != DedupScope::Client || c.client_id_trusted,
        "dedup.scope",
        format!(
            "\"client\" with connection.client_id = \"{source}\" lets any client suppress another client's messages by claiming its id; use scope = \"connection\", or set connection.client_id_trusted = true if the id is set by your own authentication"
        ),
    );
}

fn validate_cluster_nodes(nodes: &[String], path: &str, p: &mut Problems) {
    for (i, node) in nodes.iter().enumerate() {
        p.check(
            node.starts_with("redis://") || node.starts_with("rediss://"),
            &format!("{path}[{i}]"),
            "must be a redis:// or rediss:// URL (cluster nodes are reached over TCP)",
        );
    }
}

fn redis_url(url: &str) -> bool {
    ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_connection(c: &ConnectionConfig, p: &mut Problems) {
    p.check(
        c.max_connections > 0,
        "connection.max_connections",
        "must be > 0",
    );
    p.check(
        c.max_message_size > 0,
        "connection.max_message_size",
        "must be > 0",
    );
    p.check(
        !c.idle_timeout.is_zero(),
        "connection.idle_timeout",
        "must be > 0",
    );
    p.check(
        !c.ping_interval.is_zero(),
        "connection.ping_interval",
        "must be > 0",
    );
    p.check(
        c.ping_interval < c.idle_timeout || c.idle_timeout.is_zero(),
        "connection.ping_interval",
        "must be < connection.idle_timeout, or a healthy but quiet client is closed before it is ever pinged",
    );
    p.check(
        c.send_queue_capacity > 0,
        "connection.send_queue_capacity",
        "must be > 0",
    );
    p.check(
        c.send_queue_bytes >= c.max_message_size,
        "connection.send_queue_bytes",
        "must be >= connection.max_message_size, or a reply as large as the largest message accepted (an echo) never fits the send queue",
    );
    p.check(
        c.message_concurrency > 0,
        "connection.message_concurrency",
        "must be > 0",
    );
    p.check(
        c.max_pending_pongs > 0,
        "connection.max_pending_pongs",
        "must be > 0, or a client is closed for the first ping it sends while its socket is busy",
    );
    p.check(
        !c.close_timeout.is_zero(),
        "connection.close_timeout",
        "must be > 0, or no client ever receives the server's close frame",
    );
    p.check(
        c.read_buffer_size >= 256,
        "connection.read_buffer_size",
        "must be >= 256 bytes",
    );
    p.check(
        c.write_buffer_size > 0,
        "connection.write_buffer_size",
        "must be > 0",
    );
    if matches!(c.client_id, ClientIdSource::Header | ClientIdSource::Query) {
        p.check(
            !c.client_id_key.is_empty(),
            "connection.client_id_key",
            "must name the header or query parameter when connection.client_id is \"header\" or \"query\"",
        );
    }
}

fn validate_session(s: &SessionConfig, c: &ConnectionConfig, p: &mut Problems) {
    p.check(!s.ttl.is_zero(), "session.ttl", "must be > 0");
    p.check(s.max_messages > 0, "session.max_messages", "must be > 0");
    p.check(
        s.max_bytes >= c.max_message_size,
        "session.max_bytes",
        "must be >= connection.max_message_size, or a reply as large as the largest message accepted (an echo) never fits a session log",
    );
    p.check(s.max_sessions > 0, "session.max_sessions", "must be > 0");
    p.check(
        s.max_total_bytes >= s.max_bytes,
        "session.max_total_bytes",
        "must be >= session.max_bytes, or the logs together cannot hold what one session's log may",
    );
    p.check(
        !s.ack_interval.is_zero(),
        "session.ack_interval",
        "must be > 0",
    );
    p.check(
        s.ack_interval < c.idle_timeout || c.idle_timeout.is_zero(),
        "session.ack_interval",
        "must be < connection.idle_timeout, or a quiet connection can close before its client's messages are acknowledged, and the client resends them all",
    );
    if s.store.backend == SessionBackend::Redis {
        let r = &s.store.redis;
        p.check(
            redis_url(&r.url),
            "session.store.redis.url",
            "must be a redis://, rediss:// or unix:// URL",
        );
        validate_cluster_nodes(&r.cluster_nodes, "session.store.redis.cluster_nodes", p);
        p.check(
            !r.operation_timeout.is_zero(),
            "session.store.redis.operation_timeout",
            "must be > 0, or a slow Redis would hang every hello and resume",
        );
    }
}

/// governor counts time in nanoseconds: one cell per nanosecond is the finest rate it can hold.
const MAX_BYTES_PER_SECOND: u32 = 1_000_000_000;

/// Longest hold of a refused message (`rate_limit.hold_refused`).
const MAX_HOLD_REFUSED: Duration = Duration::from_secs(60);

fn validate_rate_limit(r: &RateLimitConfig, c: &ConnectionConfig, p: &mut Problems) {
    p.check(
        !r.enabled || r.messages_per_second > 0 || r.bytes_per_second > 0,
        "rate_limit.messages_per_second",
        "and rate_limit.bytes_per_second are both 0, so nothing is limited: set one, or enabled = false",
    );
    if r.messages_per_second > 0 {
        p.check(
            r.messages_burst > 0,
            "rate_limit.messages_burst",
            "must be > 0 when rate_limit.messages_per_second is set, or no message ever passes",
        );
    }
    if r.bytes_per_second > 0 {
        p.check(
            r.bytes_per_second <= MAX_BYTES_PER_SECOND,
            "rate_limit.bytes_per_second",
            "must be <= 1000000000 (one byte per nanosecond, the limiter's resolution)",
        );
        p.check(
            u64::from(r.bytes_burst) >= c.max_message_size as u64,
            "rate_limit.bytes_burst",
            "must be >= connection.max_message_size when rate_limit.bytes_per_second is set, or a message the connection accepts can never pass the limit",
        );
    }
    p.check(
        r.hold_refused <= MAX_HOLD_REFUSED,
        "rate_limit.hold_refused",
        "must be <= 60s",
    );
    p.check(
        // A zero idle timeout is refused on its own.
        r.hold_refused.is_zero() || c.idle_timeout.is_zero() || r.hold_refused < c.idle_timeout,
        "rate_limit.hold_refused",
        "must be < connection.idle_timeout, or a held connection could be closed as idle",
    );
    p.check(r.max_keys > 0, "rate_limit.max_keys", "must be > 0");
    p.check(
        !r.cleanup_interval.is_zero(),
        "rate_limit.cleanup_interval",
        "must be > 0",
    );
}

fn validate_retry(r: &RetryConfig, p: &mut Problems) {
    p.check(
        r.max_attempts > 0,
        "retry.max_attempts",
        "must be > 0 (1 means no retry)",
    );
    p.check(!r.max_backoff.is_zero(), "retry.max_backoff", "must be > 0");
    p.check(
        r.initial_backoff <= r.max_backoff,
        "retry.initial_backoff",
        "must be <= retry.max_backoff",
    );
    p.check(
        r.multiplier.is_finite() && r.multiplier >= 1.0,
        "retry.multiplier",
        "must be >= 1.0",
    );
    p.check(
        is_fraction(r.jitter),
        "retry.jitter",
        "must be between 0.0 and 1.0",
    );
}
