//! Behaviour tests of wsguard-config: retry_policy.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower::retry::RetryLayer;
use tower::retry::backoff::MakeBackoff;
use tower::{Service, ServiceBuilder, ServiceExt};
use wsguard_config::{ConfigBackoffMaker, RetryConfig};

#[test]
fn waits_grow_by_the_multiplier_up_to_the_cap() {
    let config = RetryConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        multiplier: 3.0,
        jitter: 0.0,
        ..RetryConfig::production()
    };
    let mut backoff = ConfigBackoffMaker::new(config).make_backoff();
    let waits: Vec<u64> = (0..4)
        .map(|_| backoff.next_wait().as_millis() as u64)
        .collect();
    assert_eq!(waits, [100, 300, 500, 500]);
}

#[test]
fn jitter_stays_within_its_band() {
    let config = RetryConfig {
        initial_backoff: Duration::from_millis(1000),
        max_backoff: Duration::from_secs(10),
        jitter: 0.25,
        ..RetryConfig::production()
    };
    let mut maker = ConfigBackoffMaker::new(config);
    let mut seen_low = false;
    let mut seen_high = false;
    for _ in 0..200 {
        let ms = maker.make_backoff().next_wait().as_millis();
        assert!((750..=1250).contains(&ms), "{ms} outside 1000 ms ± 25%");
        seen_low |= ms < 950;
        seen_high |= ms > 1050;
    }
    assert!(seen_low && seen_high, "jitter spreads both ways");
}

#[tokio::test(start_paused = true)]
async fn policy_tries_max_attempts_times_then_gives_up() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig::testing().policy()))
        .service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>("down") }
        });
    let result = svc.ready().await.unwrap().call(1).await;
    assert!(result.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        RetryConfig::testing().max_attempts
    );
}

#[tokio::test(start_paused = true)]
async fn policy_stops_at_the_first_success_and_disabled_never_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig::production().policy()))
        .service_fn(move |_: u32| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { if n == 0 { Err("first fails") } else { Ok(n) } }
        });
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let disabled = RetryConfig {
        enabled: false,
        ..RetryConfig::production()
    };
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(disabled.policy()))
        .service_fn(move |_: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>("down") }
        });
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
