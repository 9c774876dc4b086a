//! Behaviour tests of wsguard-config: presets.
use std::time::Duration;

use wsguard_config::{
    BackoffStrategy, OverflowPolicy, Preset, SessionBackend, StabilityConfig, StoreBackend,
    TripMode,
};

#[test]
fn default_is_production() {
    assert_eq!(StabilityConfig::default(), StabilityConfig::production());
}

#[test]
fn every_preset_is_valid() {
    for preset in [Preset::Production, Preset::Development, Preset::Testing] {
        preset
            .config()
            .validate()
            .unwrap_or_else(|e| panic!("{preset:?}: {e}"));
    }
}

#[test]
fn production_samples_ten_percent_with_high_thresholds_and_long_ttls() {
    let c = StabilityConfig::production();
    assert_eq!(c.metrics.sample_rate, 0.1);
    assert_eq!(c.metrics.client_metrics_ttl, Duration::from_secs(3600));
    assert_eq!(c.circuit_breaker.mode, TripMode::CountWindow);
    assert_eq!(c.circuit_breaker.window_size, 100);
    assert_eq!(c.circuit_breaker.failure_rate_threshold, 50.0);
    assert_eq!(c.circuit_breaker.failure_threshold, 10);
    assert_eq!(c.circuit_breaker.timeout, Duration::from_secs(60));
    assert_eq!(
        c.circuit_breaker.backoff.strategy,
        BackoffStrategy::Exponential
    );
    assert_eq!(c.dedup.ttl, Duration::from_secs(300));
    assert_eq!(c.dedup.store.backend, StoreBackend::Memory);
    assert_eq!(c.connection.overflow, OverflowPolicy::Close);
    assert_eq!(c.connection.read_buffer_size, 4096);
}

#[test]
fn development_records_everything_with_low_thresholds() {
    let c = StabilityConfig::development();
    let p = StabilityConfig::production();
    assert_eq!(c.metrics.sample_rate, 1.0);
    assert_eq!(c.circuit_breaker.mode, TripMode::ConsecutiveFailures);
    assert_eq!(c.circuit_breaker.failure_threshold, 5);
    assert!(c.circuit_breaker.failure_threshold < p.circuit_breaker.failure_threshold);
    assert!(c.circuit_breaker.timeout < p.circuit_breaker.timeout);
    assert!(c.dedup.ttl < p.dedup.ttl);
    assert!(c.metrics.client_metrics_ttl < p.metrics.client_metrics_ttl);
}

#[test]
fn testing_has_very_low_thresholds_and_very_short_ttls() {
    let c = StabilityConfig::testing();
    let d = StabilityConfig::development();
    assert_eq!(c.metrics.sample_rate, 1.0);
    assert_eq!(c.circuit_breaker.failure_threshold, 2);
    assert_eq!(c.circuit_breaker.success_threshold, 1);
    assert_eq!(c.circuit_breaker.timeout, Duration::from_secs(1));
    assert_eq!(c.dedup.ttl, Duration::from_secs(1));
    assert_eq!(c.retry.jitter, 0.0);
    assert!(c.circuit_breaker.failure_threshold < d.circuit_breaker.failure_threshold);
    assert!(c.metrics.client_metrics_ttl < d.metrics.client_metrics_ttl);
}

#[test]
fn sessions_are_served_in_every_preset_with_bounds_that_shrink_for_tests() {
    const MIB: usize = 1024 * 1024;
    let p = StabilityConfig::production().session;
    let d = StabilityConfig::development().session;
    let t = StabilityConfig::testing().session;
    assert!(p.enabled && d.enabled && t.enabled);
    assert_eq!(p.store.backend, SessionBackend::Memory);
    assert_eq!(p.store.redis.key_prefix, "wsguard:session:");
    assert_eq!(
        (p.ttl, p.max_messages, p.max_bytes, p.ack_interval),
        (
            Duration::from_secs(300),
            1000,
            MIB,
            Duration::from_millis(50)
        )
    );
    assert_eq!((p.max_sessions, p.max_total_bytes), (100_000, 256 * MIB));
    assert_eq!((d.ttl, d.max_messages), (p.ttl, p.max_messages));
    assert_eq!((d.max_sessions, d.max_total_bytes), (10_000, 64 * MIB));
    assert_eq!(
        (t.ttl, t.max_messages, t.max_bytes, t.ack_interval),
        (
            Duration::from_secs(5),
            64,
            64 * 1024,
            Duration::from_millis(10)
        )
    );
    assert_eq!((t.max_sessions, t.max_total_bytes), (1_000, 8 * MIB));
}

#[test]
fn preset_names_resolve() {
    assert_eq!(Preset::from_name("Production"), Some(Preset::Production));
    assert_eq!(Preset::from_name("dev"), Some(Preset::Development));
    assert_eq!(Preset::from_name("testing"), Some(Preset::Testing));
    assert_eq!(Preset::from_name("staging"), None);
}
