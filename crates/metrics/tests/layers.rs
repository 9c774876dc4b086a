//! Outcomes produced by the other wsguard layers, recognised through their marker errors.

use std::borrow::Cow;

use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use wsguard_circuit_breaker::{CircuitBreakerLayer, error::CircuitOpen};
use wsguard_config::{CircuitBreakerConfig, DedupConfig, MetricsConfig};
use wsguard_dedup::{DedupLayer, DedupRequest, Payload, error::Duplicate};
use wsguard_metrics::{ClientIdOptions, ClientRequest, MetricsLayer, MetricsRegistry, Outcome};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Msg {
    client: &'static str,
    text: &'static str,
}

impl ClientRequest for Msg {
    fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.client))
    }
    fn size(&self) -> Option<u64> {
        Some(self.text.len() as u64)
    }
}

impl DedupRequest for Msg {
    fn payload(&self) -> Option<Payload<'_>> {
        Some(Payload::Text(self.text))
    }
}

/// What the WebSocket adapter supplies: the layers' marker errors mapped to outcomes.
fn classify(result: Result<&(), &BoxError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(e) if e.is::<CircuitOpen>() => Outcome::Rejected,
        Err(e) if e.is::<Duplicate>() => Outcome::Duplicate,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_rejections_and_duplicates_classified_right() {
    let registry = MetricsRegistry::new(MetricsConfig {
        sample_rate: 1.0,
        ..MetricsConfig::testing()
    });
    // `testing()` breaker: open after 2 failures in a row.
    let handler = ServiceBuilder::new()
        .layer(DedupLayer::new(DedupConfig::default()))
        .layer(CircuitBreakerLayer::new(CircuitBreakerConfig::testing()))
        .service(service_fn(|m: Msg| async move {
            if m.text.starts_with("fail") {
                Err::<(), BoxError>("handler failed".into())
            } else {
                Ok(())
            }
        }));
    let mut svc = MetricsLayer::new(registry.clone())
        .route("/ws")
        .classifier(classify)
        .layer(handler);

    let mut send = async |text| {
        let msg = Msg {
            client: "alice",
            text,
        };
        svc.ready().await.unwrap().call(msg).await
    };
    assert!(send(r#"{"op":"buy"}"#).await.is_ok());
    let dup = send(r#"{ "op": "buy" }"#).await.unwrap_err();
    assert!(dup.is::<Duplicate>());
    for text in ["fail 1", "fail 2"] {
        let err = send(text).await.unwrap_err();
        assert!(!err.is::<CircuitOpen>());
    }
    let open = send(r#"{"op":"sell"}"#).await.unwrap_err();
    assert!(open.is::<CircuitOpen>());

    let snap = registry.snapshot();
    assert_eq!(
        (
            snap.calls.ok,
            snap.calls.duplicate,
            snap.calls.error,
            snap.calls.rejected
        ),
        (1, 1, 2, 1)
    );
    let alice = registry.client("alice").unwrap();
    assert_eq!(
        (alice.duplicates, alice.errors, alice.rejections),
        (1, 2, 1)
    );
    assert_eq!(alice.messages_in, 5);
}
