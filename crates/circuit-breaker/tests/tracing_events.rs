//! Every transition is a `tracing` event. In a test binary of its own: `tracing` caches each
//! callsite's interest process-wide, so tests on other threads (with no subscriber) racing this
//! one could leave the breaker's callsites marked "never" while this test's scoped subscriber
//! is installed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard_circuit_breaker::{BoxError, CircuitBreakerLayer};
use wsguard_config::{CircuitBreakerConfig, TripMode};

/// Counts the transition events of the breaker's `tracing` target.
struct TransitionEvents(Arc<AtomicUsize>);

impl tracing::Subscriber for TransitionEvents {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Ask on every event rather than caching a verdict.
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == "wsguard::circuit_breaker"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == "wsguard::circuit_breaker"
            && event.fields().any(|f| f.name() == "from")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn every_transition_is_a_tracing_event() {
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = TransitionEvents(Arc::clone(&seen));
    tracing::subscriber::with_default(subscriber, || {
        let config = CircuitBreakerConfig {
            mode: TripMode::ConsecutiveFailures,
            failure_threshold: 1,
            ..CircuitBreakerConfig::testing()
        };
        let layer = CircuitBreakerLayer::new(config);
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|()| async {
            Err::<(), BoxError>("down".into())
        }));
        tokio_test::block_on(async {
            let mut svc = svc;
            let _ = svc.ready().await.unwrap().call(()).await; // Closed -> Open
        });
        handle.force_open();
        handle.metrics_only();
        handle.disable();
        handle.reset();
    });
    assert_eq!(seen.load(Ordering::SeqCst), 5);
}
