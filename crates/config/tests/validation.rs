//! Behaviour tests of wsguard-config: validation.
use std::time::Duration;

use wsguard_config::{
    BackoffStrategy, ClientIdSource, DedupScope, KeySource, RateLimitScope, SessionBackend,
    StabilityConfig, StoreBackend, TripMode,
};

type Mutation = fn(&mut StabilityConfig);

/// One failing case per rule: the mutation and the field path its error must name.
const CASES: &[(&str, Mutation)] = &[
    ("metrics.sample_rate", |c| c.metrics.sample_rate = 1.01),
    ("metrics.sample_rate", |c| c.metrics.sample_rate = -0.1),
    ("metrics.client_metrics_ttl", |c| {
        c.metrics.client_metrics_ttl = Duration::ZERO
    }),
    ("metrics.cleanup_interval", |c| {
        c.metrics.cleanup_interval = Duration::ZERO
    }),
    ("metrics.cleanup_interval", |c| {
        c.metrics.cleanup_interval = Duration::from_secs(7200)
    }),
    ("metrics.max_clients", |c| c.metrics.max_clients = 0),
    ("metrics.latency_buckets", |c| {
        c.metrics.latency_buckets.clear()
    }),
    ("metrics.latency_buckets", |c| {
        c.metrics.latency_buckets = vec![0.1, 0.05]
    }),
    ("metrics.latency_buckets", |c| {
        c.metrics.latency_buckets = vec![-1.0, 1.0]
    }),
    ("circuit_breaker.failure_threshold", |c| {
        c.circuit_breaker.failure_threshold = 0
    }),
    ("circuit_breaker.window_size", |c| {
        c.circuit_breaker.window_size = 0
    }),
    ("circuit_breaker.minimum_calls", |c| {
        c.circuit_breaker.minimum_calls = 0
    }),
    ("circuit_breaker.window_duration", |c| {
        c.circuit_breaker.window_duration = Duration::from_millis(1500)
    }),
    ("circuit_breaker.failure_rate_threshold", |c| {
        c.circuit_breaker.failure_rate_threshold = 0.0
    }),
    ("circuit_breaker.failure_rate_threshold", |c| {
        c.circuit_breaker.failure_rate_threshold = 101.0
    }),
    ("circuit_breaker.slow_call_rate_threshold", |c| {
        c.circuit_breaker.slow_call_rate_threshold = 150.0
    }),
    ("circuit_breaker.slow_call_duration", |c| {
        c.circuit_breaker.slow_call_duration = Duration::ZERO
    }),
    ("circuit_breaker.timeout", |c| {
        c.circuit_breaker.timeout = Duration::ZERO
    }),
    ("circuit_breaker.half_open_max_calls", |c| {
        c.circuit_breaker.half_open_max_calls = 0
    }),
    ("circuit_breaker.success_threshold", |c| {
        c.circuit_breaker.success_threshold = 0
    }),
    ("circuit_breaker.backoff.multiplier", |c| {
        c.circuit_breaker.backoff.multiplier = 0.5
    }),
    ("circuit_breaker.backoff.jitter", |c| {
        c.circuit_breaker.backoff.jitter = 1.0
    }),
    ("circuit_breaker.backoff.max_wait", |c| {
        c.circuit_breaker.backoff.strategy = BackoffStrategy::Exponential;
        c.circuit_breaker.backoff.max_wait = Duration::from_secs(1);
    }),
    ("circuit_breaker.minimum_calls", |c| {
        c.circuit_breaker.mode = TripMode::CountWindow;
        c.circuit_breaker.window_size = 10;
        c.circuit_breaker.minimum_calls = 11;
    }),
    ("dedup.ttl", |c| c.dedup.ttl = Duration::ZERO),
    ("dedup.max_entries", |c| c.dedup.max_entries = 0),
    ("dedup.duplicate_status", |c| c.dedup.duplicate_status = 99),
    ("dedup.json_field", |c| {
        c.dedup.key = KeySource::JsonField;
        c.dedup.json_field.clear();
    }),
    ("dedup.header", |c| {
        c.dedup.key = KeySource::Header;
        c.dedup.header = "bad header".to_owned();
    }),
    ("dedup.fingerprint_key", |c| {
        c.dedup.fingerprint_key = Some("not-hex".to_owned())
    }),
    ("dedup.store.redis.url", |c| {
        with_redis(c);
        c.dedup.store.redis.url = "http://localhost".to_owned();
    }),
    ("dedup.store.redis.operation_timeout", |c| {
        with_redis(c);
        c.dedup.store.redis.operation_timeout = Duration::ZERO;
    }),
    ("dedup.ttl", |c| {
        with_redis(c);
        c.dedup.ttl = Duration::from_micros(500);
    }),
    ("dedup.fingerprint_key", |c| {
        with_redis(c);
        c.dedup.fingerprint_key = None;
    }),
    ("connection.max_connections", |c| {
        c.connection.max_connections = 0
    }),
    ("connection.max_message_size", |c| {
        c.connection.max_message_size = 0
    }),
    ("connection.idle_timeout", |c| {
        c.connection.idle_timeout = Duration::ZERO
    }),
    ("connection.ping_interval", |c| {
        c.connection.ping_interval = Duration::ZERO
    }),
    ("connection.ping_interval", |c| {
        c.connection.ping_interval = c.connection.idle_timeout
    }),
    ("connection.send_queue_capacity", |c| {
        c.connection.send_queue_capacity = 0
    }),
    ("connection.send_queue_bytes", |c| {
        c.connection.send_queue_bytes = c.connection.max_message_size - 1
    }),
    ("connection.message_concurrency", |c| {
        c.connection.message_concurrency = 0
    }),
    ("connection.max_pending_pongs", |c| {
        c.connection.max_pending_pongs = 0
    }),
    ("connection.close_timeout", |c| {
        c.connection.close_timeout = Duration::ZERO
    }),
    ("connection.read_buffer_size", |c| {
        c.connection.read_buffer_size = 16
    }),
    ("connection.write_buffer_size", |c| {
        c.connection.write_buffer_size = 0
    }),
    ("connection.client_id_key", |c| {
        c.connection.client_id = ClientIdSource::Header;
        c.connection.client_id_key.clear();
    }),
    ("session.ttl", |c| c.session.ttl = Duration::ZERO),
    ("session.max_messages", |c| c.session.max_messages = 0),
    ("session.max_bytes", |c| {
        c.session.max_bytes = c.connection.max_message_size - 1
    }),
    ("session.max_sessions", |c| c.session.max_sessions = 0),
    ("session.max_total_bytes", |c| {
        c.session.max_total_bytes = c.session.max_bytes - 1
    }),
    ("session.ack_interval", |c| {
        c.session.ack_interval = Duration::ZERO
    }),
    ("session.ack_interval", |c| {
        c.session.ack_interval = c.connection.idle_timeout
    }),
    ("session.store.redis.url", |c| {
        c.session.store.backend = SessionBackend::Redis;
        c.session.store.redis.url = "http://localhost".to_owned();
    }),
    ("session.store.redis.url", |c| {
        c.session.store.backend = SessionBackend::Redis;
        c.session.store.redis.url.clear();
    }),
    ("session.store.redis.cluster_nodes[1]", |c| {
        c.session.store.backend = SessionBackend::Redis;
        c.session.store.redis.cluster_nodes = vec![
            "redis://10.0.0.1:7000".to_owned(),
            "unix:///run/redis.sock".to_owned(),
        ];
    }),
    ("dedup.store.redis.cluster_nodes[0]", |c| {
        with_redis(c);
        c.dedup.store.redis.cluster_nodes = vec!["10.0.0.1:7000".to_owned()];
    }),
    ("session.store.redis.operation_timeout", |c| {
        c.session.store.backend = SessionBackend::Redis;
        c.session.store.redis.operation_timeout = Duration::ZERO;
    }),
    ("dedup.scope", |c| {
        c.connection.client_id = ClientIdSource::Query;
        c.dedup.scope = DedupScope::Client;
    }),
    ("rate_limit.messages_per_second", |c| {
        c.rate_limit.messages_per_second = 0;
        c.rate_limit.bytes_per_second = 0;
    }),
    ("rate_limit.messages_burst", |c| {
        c.rate_limit.messages_burst = 0
    }),
    ("rate_limit.bytes_per_second", |c| {
        c.rate_limit.bytes_per_second = 1_000_000_001
    }),
    ("rate_limit.bytes_burst", |c| {
        c.rate_limit.bytes_burst = c.connection.max_message_size as u32 - 1
    }),
    ("rate_limit.hold_refused", |c| {
        c.connection.idle_timeout = Duration::from_secs(300);
        c.rate_limit.hold_refused = Duration::from_secs(61);
    }),
    ("rate_limit.hold_refused", |c| {
        c.rate_limit.hold_refused = c.connection.idle_timeout
    }),
    ("rate_limit.max_keys", |c| c.rate_limit.max_keys = 0),
    ("rate_limit.cleanup_interval", |c| {
        c.rate_limit.cleanup_interval = Duration::ZERO
    }),
    ("retry.max_attempts", |c| c.retry.max_attempts = 0),
    ("retry.max_backoff", |c| {
        c.retry.initial_backoff = Duration::ZERO;
        c.retry.max_backoff = Duration::ZERO;
    }),
    ("retry.initial_backoff", |c| {
        c.retry.initial_backoff = Duration::from_secs(60)
    }),
    ("retry.multiplier", |c| c.retry.multiplier = 0.9),
    ("retry.jitter", |c| c.retry.jitter = 1.5),
];

fn with_redis(c: &mut StabilityConfig) {
    c.dedup.store.backend = StoreBackend::Redis;
    c.dedup.fingerprint_key = Some("00112233445566778899aabbccddeeff".to_owned());
}

#[test]
fn each_rule_rejects_its_case_and_names_the_field() {
    for (path, mutate) in CASES {
        let mut config = StabilityConfig::default();
        mutate(&mut config);
        let err = config.validate().expect_err(&format!(
            "a config breaking the rule on {path} was accepted"
        ));
        assert!(err.has(path), "expected an error on {path}, got: {err}");
        assert_eq!(
            err.errors().len(),
            1,
            "case for {path} should break one rule only: {err}"
        );
    }
}

#[test]
fn redis_store_with_its_settings_is_valid() {
    let mut config = StabilityConfig::default();
    with_redis(&mut config);
    config.validate().unwrap();
}

#[test]
fn session_redis_store_with_its_defaults_is_valid() {
    let mut config = StabilityConfig::default();
    config.session.store.backend = SessionBackend::Redis;
    config.validate().unwrap();
    for url in ["rediss://cache:6380/0", "unix:///run/redis.sock"] {
        config.session.store.redis.url = url.to_owned();
        config.validate().unwrap();
    }
    config.session.store.redis.cluster_nodes = vec![
        "redis://10.0.0.1:7000".to_owned(),
        "rediss://10.0.0.2:7000".to_owned(),
    ];
    config.validate().unwrap();
}

#[test]
fn session_log_bounds_are_checked_against_the_connection_and_each_other() {
    let mut config = StabilityConfig::default();
    config.connection.max_message_size = 4 * 1024 * 1024;
    config.connection.send_queue_bytes = 4 * 1024 * 1024;
    config.rate_limit.bytes_burst = 4 * 1024 * 1024;
    let err = config.validate().unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(
        err.to_string().contains(
            "session.max_bytes: must be >= connection.max_message_size, or a reply as large as the largest message accepted (an echo) never fits a session log"
        ),
        "{err}"
    );
    config.session.max_bytes = 4 * 1024 * 1024;
    config.validate().unwrap();
    config.session.max_total_bytes = 1024 * 1024;
    let err = config.validate().unwrap_err();
    assert!(err.has("session.max_total_bytes"), "{err}");
    assert!(err.to_string().contains("session.max_bytes"), "{err}");
}

#[test]
fn several_problems_are_all_listed_in_field_order() {
    let mut config = StabilityConfig::default();
    config.metrics.sample_rate = 2.0;
    config.circuit_breaker.timeout = Duration::ZERO;
    config.dedup.ttl = Duration::ZERO;
    config.connection.ping_interval = Duration::from_secs(600);
    config.retry.jitter = -1.0;
    let err = config.validate().unwrap_err();
    let paths: Vec<&str> = err.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "metrics.sample_rate",
            "circuit_breaker.timeout",
            "dedup.ttl",
            "connection.ping_interval",
            "retry.jitter"
        ]
    );
    let text = err.to_string();
    assert!(
        text.starts_with("invalid configuration (5 problems):"),
        "{text}"
    );
    assert!(text.contains("\n  dedup.ttl: must be > 0"), "{text}");
    assert!(
        text.contains("connection.idle_timeout"),
        "cross-field message names the other field: {text}"
    );
}

#[test]
fn client_scope_with_a_client_chosen_id_is_refused_with_the_reason_and_the_fix() {
    for (source, name) in [
        (ClientIdSource::Header, "header"),
        (ClientIdSource::Query, "query"),
    ] {
        let mut config = StabilityConfig::default();
        config.connection.client_id = source;
        config.dedup.scope = DedupScope::Client;
        let err = config.validate().unwrap_err();
        assert!(err.has("dedup.scope"), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "dedup.scope: \"client\" with connection.client_id = \"{name}\" lets any client suppress another client's messages by claiming its id"
            )),
            "{text}"
        );
        assert!(text.contains("use scope = \"connection\""), "{text}");
        assert!(
            text.contains("connection.client_id_trusted = true"),
            "{text}"
        );
    }
}

#[test]
fn client_scope_with_a_trusted_client_chosen_id_is_accepted() {
    for source in [ClientIdSource::Header, ClientIdSource::Query] {
        let mut config = StabilityConfig::default();
        config.connection.client_id = source;
        config.connection.client_id_trusted = true;
        config.dedup.scope = DedupScope::Client;
        config.validate().unwrap();
    }
}

#[test]
fn client_scope_with_the_peer_address_is_accepted() {
    let mut config = StabilityConfig::default();
    config.connection.client_id = ClientIdSource::PeerAddr;
    config.dedup.scope = DedupScope::Client;
    config.validate().unwrap();
}

#[cfg(feature = "load")]
#[test]
fn client_chosen_ids_are_untrusted_unless_a_file_says_otherwise() {
    assert!(!StabilityConfig::default().connection.client_id_trusted);
    let text = "[connection]\nclient_id = \"query\"\nclient_id_key = \"client\"\n[dedup]\nscope = \"client\"\n";
    let err = StabilityConfig::from_toml_str(text).unwrap_err();
    assert!(
        err.field_errors().iter().any(|e| e.path == "dedup.scope"),
        "{err}"
    );
    let trusted = text.replace("[dedup]", "client_id_trusted = true\n[dedup]");
    let config = StabilityConfig::from_toml_str(&trusted).unwrap();
    assert!(config.connection.client_id_trusted);
    assert_eq!(config.dedup.scope, DedupScope::Client);
}

#[test]
fn rate_limit_checks_only_the_limits_that_are_on() {
    let mut config = StabilityConfig::default();
    // A byte limit that is off needs no burst, and may not fit the largest message.
    config.rate_limit.bytes_per_second = 0;
    config.rate_limit.bytes_burst = 0;
    config.validate().unwrap();
    // Likewise a message limit that is off.
    config.rate_limit.bytes_per_second = 1024 * 1024;
    config.rate_limit.bytes_burst = 1024 * 1024;
    config.rate_limit.messages_per_second = 0;
    config.rate_limit.messages_burst = 0;
    config.validate().unwrap();
    // A disabled layer may turn both off.
    config.rate_limit.bytes_per_second = 0;
    let err = config.validate().unwrap_err();
    assert!(err.has("rate_limit.messages_per_second"), "{err}");
    assert!(
        err.to_string()
            .contains("rate_limit.bytes_per_second are both 0"),
        "{err}"
    );
    config.rate_limit.enabled = false;
    config.validate().unwrap();
    for scope in [
        RateLimitScope::Client,
        RateLimitScope::Connection,
        RateLimitScope::Global,
    ] {
        let mut config = StabilityConfig::default();
        config.rate_limit.scope = scope;
        config.validate().unwrap();
    }
}

#[test]
fn rate_limit_byte_burst_is_checked_against_the_largest_message() {
    let mut config = StabilityConfig::default();
    config.connection.max_message_size = 4 * 1024 * 1024;
    config.connection.send_queue_bytes = 4 * 1024 * 1024;
    config.session.max_bytes = 4 * 1024 * 1024;
    let err = config.validate().unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(
        err.to_string().contains(
            "rate_limit.bytes_burst: must be >= connection.max_message_size when rate_limit.bytes_per_second is set"
        ),
        "{err}"
    );
    config.rate_limit.bytes_burst = 4 * 1024 * 1024;
    config.validate().unwrap();
}

#[cfg(feature = "load")]
#[test]
fn rate_limit_section_loads_from_toml_and_bad_values_are_refused_with_their_paths() {
    use wsguard_config::RateLimitAction;
    let config = StabilityConfig::from_toml_str(
        "[rate_limit]\nscope = \"connection\"\nmessages_per_second = 5\nmessages_burst = 10\non_limit = \"close\"\nhold_refused = \"250ms\"\ncleanup_interval = \"30s\"\n",
    )
    .unwrap();
    assert_eq!(config.rate_limit.scope, RateLimitScope::Connection);
    assert_eq!(config.rate_limit.messages_per_second, 5);
    assert_eq!(config.rate_limit.on_limit, RateLimitAction::Close);
    assert_eq!(config.rate_limit.cleanup_interval, Duration::from_secs(30));
    assert_eq!(config.rate_limit.hold_refused, Duration::from_millis(250));
    assert_eq!(
        config.rate_limit.bytes_per_second,
        StabilityConfig::default().rate_limit.bytes_per_second
    );

    let err = StabilityConfig::from_toml_str("[rate_limit]\nmessages_burst = 0\nmax_keys = 0\n")
        .unwrap_err();
    let paths: Vec<_> = err.field_errors().iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["rate_limit.messages_burst", "rate_limit.max_keys"]);
    assert!(StabilityConfig::from_toml_str("[rate_limit]\non_limit = \"ignore\"\n").is_err());
}

#[test]
fn an_authenticated_identity_is_trusted_for_the_client_scope_and_needs_no_key() {
    let mut config = StabilityConfig::default();
    config.connection.client_id = ClientIdSource::Authenticated;
    config.connection.client_id_key.clear();
    config.dedup.scope = DedupScope::Client;
    config.validate().unwrap();
    // The same with a client-chosen header is refused, as before.
    config.connection.client_id = ClientIdSource::Header;
    config.connection.client_id_key = "x-client".into();
    assert!(config.validate().unwrap_err().has("dedup.scope"));
}
