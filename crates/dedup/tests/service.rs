//! Behaviour of `Dedup` on a tower service (memory store, paused time).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_test::{assert_pending, task};
use tower::{Service, ServiceExt, service_fn};
use wsguard_config::{
    ConfigHandle, DedupConfig, DedupScope, FailureMode, KeySource, StabilityConfig,
};
use wsguard_dedup::error::{BoxError, Duplicate, StoreError, StoreUnavailable};
use wsguard_dedup::{
    ClaimFuture, DedupLayer, DedupRequest, DedupStore, Fingerprint, MemoryStore, Payload,
};

/// A WebSocket-like message, implemented the way the adapter would.
#[derive(Debug, Clone)]
enum Msg {
    Text(&'static str),
    Binary(Vec<u8>),
    Ping,
}

#[derive(Debug, Clone)]
struct Inbound {
    msg: Msg,
    conn: u64,
    client: &'static str,
}

impl DedupRequest for Inbound {
    fn payload(&self) -> Option<Payload<'_>> {
        match &self.msg {
            Msg::Text(t) => Some(Payload::Text(t)),
            Msg::Binary(b) => Some(Payload::Binary(b)),
            Msg::Ping => None,
        }
    }
    fn connection_id(&self) -> Option<u64> {
        Some(self.conn)
    }
    fn client_id(&self) -> Option<&str> {
        Some(self.client)
    }
}

fn text(t: &'static str) -> Inbound {
    Inbound {
        msg: Msg::Text(t),
        conn: 1,
        client: "alice",
    }
}

fn config() -> DedupConfig {
    DedupConfig {
        ttl: Duration::from_secs(10),
        ..DedupConfig::default()
    }
}

/// A handler that counts its calls and fails on messages containing "fail".
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn service<R: DedupRequest + Send + 'static>(
        &self,
    ) -> impl Service<R, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let calls = Arc::clone(&self.0);
        service_fn(move |req: R| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = req
                .payload()
                .is_some_and(|p| matches!(p, Payload::Text(t) if t.contains("fail")));
            async move {
                if fail {
                    Err::<(), BoxError>("handler failed".into())
                } else {
                    Ok(())
                }
            }
        })
    }
}

async fn send<S>(svc: &mut S, req: Inbound) -> Result<(), BoxError>
where
    S: Service<Inbound, Response = (), Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

fn is_dup(r: &Result<(), BoxError>) -> bool {
    r.as_ref().is_err_and(|e| e.is::<Duplicate>())
}

#[tokio::test(start_paused = true)]
async fn duplicate_within_ttl_never_reaches_inner_and_passes_after_ttl() {
    let counter = Counter::default();
    let layer = DedupLayer::new(config());
    let mut svc = tower::Layer::layer(&layer, counter.service());

    send(&mut svc, text(r#"{"a":1}"#)).await.unwrap();
    tokio::time::advance(Duration::from_millis(9_999)).await;
    let err = send(&mut svc, text(r#"{"a":1}"#)).await.unwrap_err();
    let dup = err.downcast_ref::<Duplicate>().expect("a Duplicate");
    assert_eq!(dup.age(), Duration::from_millis(9_999));
    assert_eq!(counter.calls(), 1);

    tokio::time::advance(Duration::from_millis(1)).await;
    send(&mut svc, text(r#"{"a":1}"#)).await.unwrap();
    assert_eq!(counter.calls(), 2);
    let stats = layer.stats();
    assert_eq!((stats.checked, stats.duplicates), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn key_order_and_whitespace_are_the_same_message_but_other_content_passes() {
    let counter = Counter::default();
    let mut svc = DedupLayer::new(config()).layer_for(counter.service());
    send(
        &mut svc,
        text(r#"{"type":"chat","room":"lobby","n":[1,2]}"#),
    )
    .await
    .unwrap();
    let again = send(
        &mut svc,
        text("{\n  \"n\" : [ 1, 2.0 ],\n  \"room\": \"lobby\", \"type\":\"chat\" }"),
    )
    .await;
    assert!(is_dup(&again));
    send(
        &mut svc,
        text(r#"{"type":"chat","room":"lobby","n":[2,1]}"#),
    )
    .await
    .unwrap();
    send(&mut svc, text(r#"{"type":"chat","room":"hall","n":[1,2]}"#))
        .await
        .unwrap();
    assert_eq!(counter.calls(), 3);
}

/// Shorthand used by the tests.
trait LayerFor {
    fn layer_for<S>(&self, s: S) -> wsguard_dedup::Dedup<S>;
}

impl LayerFor for DedupLayer {
    fn layer_for<S>(&self, s: S) -> wsguard_dedup::Dedup<S> {
        tower::Layer::layer(self, s)
    }
}

#[tokio::test(start_paused = true)]
async fn json_field_key_uses_the_client_id_and_falls_back_per_config() {
    let counter = Counter::default();
    let cfg = DedupConfig {
        key: KeySource::JsonField,
        json_field: "msg_id".into(),
        fingerprint_when_missing: false,
        ..config()
    };
    let mut svc = DedupLayer::new(cfg.clone()).layer_for(counter.service());
    send(&mut svc, text(r#"{"msg_id":"m1","body":"a"}"#))
        .await
        .unwrap();
    // Same id, other content: the client says it is the same message.
    assert!(is_dup(
        &send(&mut svc, text(r#"{"body":"b","msg_id":"m1"}"#)).await
    ));
    // Other id, same content: a new message.
    send(&mut svc, text(r#"{"msg_id":"m2","body":"a"}"#))
        .await
        .unwrap();
    send(&mut svc, text(r#"{"msg_id":7}"#)).await.unwrap();
    assert!(is_dup(&send(&mut svc, text(r#"{"msg_id":7,"x":1}"#)).await));
    // No id and no fallback: never deduplicated.
    send(&mut svc, text(r#"{"body":"a"}"#)).await.unwrap();
    send(&mut svc, text(r#"{"body":"a"}"#)).await.unwrap();
    assert_eq!(counter.calls(), 5);

    let counter = Counter::default();
    let fallback = DedupConfig {
        fingerprint_when_missing: true,
        ..cfg
    };
    let mut svc = DedupLayer::new(fallback).layer_for(counter.service());
    send(&mut svc, text(r#"{"body":"a"}"#)).await.unwrap();
    assert!(is_dup(&send(&mut svc, text(r#"{ "body" : "a" }"#)).await));
    assert_eq!(counter.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn messages_differing_in_repeated_key_order_exact_number_or_frame_type_all_pass() {
    let binary = |b: &[u8]| Inbound {
        msg: Msg::Binary(b.to_vec()),
        conn: 1,
        client: "alice",
    };
    let many = r#"{"a":2,"k0":0,"k1":0,"k2":0,"k3":0,"k4":0,"k5":0,"k6":0,"k7":0,"k8":0,"k9":0,"k10":0,"k11":0,"k12":0,"k13":0,"k14":0,"k15":0,"a":1}"#;
    let many_swapped = r#"{"a":1,"k0":0,"k1":0,"k2":0,"k3":0,"k4":0,"k5":0,"k6":0,"k7":0,"k8":0,"k9":0,"k10":0,"k11":0,"k12":0,"k13":0,"k14":0,"k15":0,"a":2}"#;
    let pairs = [
        (text(r#"{"a":2,"a":1}"#), text(r#"{"a":1,"a":2}"#)),
        (text(many), text(many_swapped)),
        (text("[9007199254740993.0]"), text("[9007199254740992]")),
        (text("[12345678901234567.5]"), text("[12345678901234568]")),
        (text("[1e400]"), text("[1e500]")),
        (text("[1e-400]"), text("[2e-400]")),
        (text("hello"), binary(b"hello")),
    ];
    for (first, second) in pairs {
        let counter = Counter::default();
        let mut svc = DedupLayer::new(config()).layer_for(counter.service());
        send(&mut svc, first.clone()).await.unwrap();
        send(&mut svc, second.clone()).await.unwrap();
        assert_eq!(counter.calls(), 2, "{second:?} after {first:?}");
        // Each is still remembered: a resend of either is dropped.
        assert!(is_dup(&send(&mut svc, second).await));
        assert!(is_dup(&send(&mut svc, first).await));
    }
}

#[tokio::test(start_paused = true)]
async fn json_field_ids_come_only_from_string_and_number_tokens() {
    let counter = Counter::default();
    let cfg = DedupConfig {
        key: KeySource::JsonField,
        json_field: "id".into(),
        fingerprint_when_missing: false,
        ..config()
    };
    let mut svc = DedupLayer::new(cfg).layer_for(counter.service());
    send(&mut svc, text(r#"{"id":5,"body":"a"}"#))
        .await
        .unwrap();
    assert!(is_dup(
        &send(&mut svc, text(r#"{"id":5,"body":"b"}"#)).await
    ));
    // serde_json's `arbitrary_precision` token, written by a client, is an object and no id:
    // not the message with id 5, and never deduplicated without `fingerprint_when_missing`.
    let forged = r#"{"id":{"$serde_json::private::Number":"5"},"body":"c"}"#;
    send(&mut svc, text(forged)).await.unwrap();
    send(&mut svc, text(forged)).await.unwrap();
    assert_eq!(counter.calls(), 3);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn header_key_deduplicates_http_requests_with_409() {
    use axum::body::Body;
    use http::{Request, Response, StatusCode};

    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = service_fn(move |_req: Request<Body>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::convert::Infallible>(Response::new(Body::empty())) }
    });
    let cfg = DedupConfig {
        key: KeySource::Header,
        header: "Idempotency-Key".into(),
        fingerprint_when_missing: false,
        scope: DedupScope::Global,
        ..config()
    };
    let svc = tower::Layer::layer(&DedupLayer::http(cfg.clone()), handler.clone());
    let req = |key: Option<&str>| {
        let mut b = Request::post("/pay");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Body::empty()).unwrap()
    };
    let status = |r: Result<Response<Body>, std::convert::Infallible>| r.unwrap().status();
    assert_eq!(
        status(svc.clone().oneshot(req(Some("k1"))).await),
        StatusCode::OK
    );
    assert_eq!(
        status(svc.clone().oneshot(req(Some("k1"))).await),
        StatusCode::CONFLICT
    );
    assert_eq!(
        status(svc.clone().oneshot(req(Some("k2"))).await),
        StatusCode::OK
    );
    assert_eq!(status(svc.clone().oneshot(req(None)).await), StatusCode::OK);
    assert_eq!(status(svc.clone().oneshot(req(None)).await), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    let custom = DedupConfig {
        duplicate_status: 208,
        ..cfg
    };
    let svc = tower::Layer::layer(&DedupLayer::http(custom), handler);
    svc.clone().oneshot(req(Some("k1"))).await.unwrap();
    assert_eq!(
        status(svc.clone().oneshot(req(Some("k1"))).await),
        StatusCode::ALREADY_REPORTED
    );
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_5xx_releases_the_key() {
    use axum::body::Body;
    use http::{Request, Response, StatusCode};

    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let handler = service_fn(move |_req: Request<Body>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = Response::new(Body::empty());
            if n == 0 {
                *res.status_mut() = StatusCode::BAD_GATEWAY;
            }
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let cfg = DedupConfig {
        key: KeySource::Header,
        scope: DedupScope::Global,
        ..config()
    };
    let svc = tower::Layer::layer(&DedupLayer::http(cfg), handler);
    let req = || {
        Request::post("/pay")
            .header("idempotency-key", "k")
            .body(Body::empty())
            .unwrap()
    };
    let s = |r: Result<Response<Body>, std::convert::Infallible>| r.unwrap().status();
    assert_eq!(s(svc.clone().oneshot(req()).await), StatusCode::BAD_GATEWAY);
    assert_eq!(s(svc.clone().oneshot(req()).await), StatusCode::OK);
    assert_eq!(s(svc.clone().oneshot(req()).await), StatusCode::CONFLICT);
}

#[tokio::test(start_paused = true)]
async fn client_scope_never_lets_one_client_suppress_another() {
    let counter = Counter::default();
    let cfg = DedupConfig {
        scope: DedupScope::Client,
        ..config()
    };
    let mut svc = DedupLayer::new(cfg).layer_for(counter.service());
    let from = |client, conn| Inbound {
        msg: Msg::Text(r#"{"op":"buy"}"#),
        conn,
        client,
    };
    send(&mut svc, from("alice", 1)).await.unwrap();
    send(&mut svc, from("bob", 2)).await.unwrap();
    send(&mut svc, from("mallory", 3)).await.unwrap();
    // Alice's own resend on another connection is a duplicate.
    assert!(is_dup(&send(&mut svc, from("alice", 4)).await));
    assert_eq!(counter.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn connection_and_global_scopes() {
    let counter = Counter::default();
    let on = |conn, client| Inbound {
        msg: Msg::Text("hello"),
        conn,
        client,
    };
    let mut per_conn = DedupLayer::new(config()).layer_for(counter.service());
    send(&mut per_conn, on(1, "a")).await.unwrap();
    send(&mut per_conn, on(2, "a")).await.unwrap();
    assert!(is_dup(&send(&mut per_conn, on(1, "b")).await));
    assert_eq!(counter.calls(), 2);

    let global = DedupConfig {
        scope: DedupScope::Global,
        ..config()
    };
    let mut global = DedupLayer::new(global).layer_for(counter.service());
    send(&mut global, on(1, "a")).await.unwrap();
    assert!(is_dup(&send(&mut global, on(2, "b")).await));
    assert_eq!(counter.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn eviction_at_the_cap_drops_the_oldest_and_counts() {
    let counter = Counter::default();
    let cfg = DedupConfig {
        max_entries: 2,
        ..config()
    };
    let layer = DedupLayer::new(cfg);
    let mut svc = layer.layer_for(counter.service());
    for m in ["one", "two", "three"] {
        send(&mut svc, text(m)).await.unwrap();
    }
    let stats = layer.stats();
    assert_eq!(stats.evictions, 1);
    assert_eq!(stats.remembered, Some(2));
    assert!(is_dup(&send(&mut svc, text("three")).await));
    assert!(is_dup(&send(&mut svc, text("two")).await));
    // "one" was the oldest: forgotten, so it passes again.
    send(&mut svc, text("one")).await.unwrap();
    assert_eq!(counter.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn failure_releases_the_key_so_a_retry_passes() {
    let counter = Counter::default();
    let mut svc = DedupLayer::new(config()).layer_for(counter.service());
    assert!(!is_dup(&send(&mut svc, text("fail me")).await));
    let retry = send(&mut svc, text("fail me")).await;
    assert!(
        retry.is_err() && !is_dup(&retry),
        "retry reached the handler"
    );
    assert_eq!(counter.calls(), 2);

    let keep = DedupConfig {
        release_on_failure: false,
        ..config()
    };
    let counter = Counter::default();
    let layer = DedupLayer::new(keep);
    let mut svc = layer.layer_for(counter.service());
    send(&mut svc, text("fail me")).await.unwrap_err();
    assert!(is_dup(&send(&mut svc, text("fail me")).await));
    assert_eq!(counter.calls(), 1);
    assert_eq!(layer.stats().released, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unfinished_call_releases_the_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let slow = service_fn(move |_: Inbound| {
        seen.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        }
    });
    let layer = DedupLayer::new(config());
    let mut svc = layer.layer_for(slow);
    let mut first = task::spawn(svc.ready().await.unwrap().call(text("x")));
    assert_pending!(first.poll());
    // While the first is in flight, a copy is a duplicate.
    let second = svc.ready().await.unwrap().call(text("x")).await;
    assert!(is_dup(&second));
    drop(first);
    assert_eq!(layer.stats().released, 1);
    let mut third = task::spawn(svc.ready().await.unwrap().call(text("x")));
    assert_pending!(third.poll());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_duplicates_reach_the_inner_service_exactly_once() {
    let counter = Counter::default();
    let layer = DedupLayer::new(DedupConfig {
        scope: DedupScope::Global,
        ..config()
    });
    let messages: Vec<String> = (0..2_000).map(|i| format!(r#"{{"seq":{i}}}"#)).collect();
    let messages = Arc::new(messages);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let svc = layer.layer_for(counter.service::<String>());
        let messages = Arc::clone(&messages);
        tasks.push(tokio::spawn(async move {
            let mut passed = 0usize;
            for i in 0..messages.len() {
                // Two tasks walk forwards, two backwards, so copies meet at different points.
                let i = if t % 2 == 0 {
                    i
                } else {
                    messages.len() - 1 - i
                };
                if svc.clone().oneshot(messages[i].clone()).await.is_ok() {
                    passed += 1;
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            passed
        }));
    }
    let mut passed = 0;
    for t in tasks {
        passed += t.await.unwrap();
    }
    assert_eq!(passed, 2_000);
    assert_eq!(counter.calls(), 2_000);
    assert_eq!(layer.stats().duplicates, 3 * 2_000);
}

#[tokio::test(start_paused = true)]
async fn malformed_empty_binary_and_deep_payloads_never_panic() {
    let counter = Counter::default();
    let mut svc = DedupLayer::new(config()).layer_for(counter.service());
    let deep: &'static str =
        Box::leak(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_boxed_str());
    let open: &'static str = Box::leak("{\"a\":".repeat(100_000).into_boxed_str());
    for m in [r#"{"a":"#, "{]", "\u{0}", deep, open, r#"{"a":1} tail"#] {
        send(&mut svc, text(m)).await.unwrap();
        assert!(is_dup(&send(&mut svc, text(m)).await), "{:.20}", m);
    }
    // Empty payloads and control frames are never deduplicated.
    for _ in 0..2 {
        send(&mut svc, text("")).await.unwrap();
        send(
            &mut svc,
            Inbound {
                msg: Msg::Ping,
                conn: 1,
                client: "a",
            },
        )
        .await
        .unwrap();
    }
    let bin = |b: &[u8]| Inbound {
        msg: Msg::Binary(b.to_vec()),
        conn: 1,
        client: "a",
    };
    send(&mut svc, bin(&[0xff, 0x00, 0x7b])).await.unwrap();
    assert!(is_dup(&send(&mut svc, bin(&[0xff, 0x00, 0x7b])).await));
    send(&mut svc, bin(&[0xff, 0x00])).await.unwrap();
    assert_eq!(counter.calls(), 6 + 4 + 2);
}

#[tokio::test(start_paused = true)]
async fn live_config_changes_ttl_and_enabled_without_losing_the_window() {
    let mut base = StabilityConfig::testing();
    base.dedup.ttl = Duration::from_secs(10);
    let handle = ConfigHandle::new(base.clone()).unwrap();
    let counter = Counter::default();
    let layer = DedupLayer::new(&handle);
    let mut svc = layer.layer_for(counter.service());
    send(&mut svc, text("m")).await.unwrap();

    let mut shorter = base.clone();
    shorter.dedup.ttl = Duration::from_secs(2);
    handle.update(shorter.clone()).unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        is_dup(&send(&mut svc, text("m")).await),
        "window kept across the change"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut svc, text("m")).await.unwrap();

    let mut off = shorter;
    off.dedup.enabled = false;
    handle.update(off).unwrap();
    send(&mut svc, text("m")).await.unwrap();
    assert_eq!(counter.calls(), 3);
}

/// A store that answers after a delay, or fails.
#[derive(Debug)]
struct SlowStore {
    inner: Arc<MemoryStore>,
    delay: Duration,
    fail: bool,
}

impl DedupStore for SlowStore {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        let (inner, delay, fail) = (Arc::clone(&self.inner), self.delay, self.fail);
        ClaimFuture::boxed(async move {
            tokio::time::sleep(delay).await;
            if fail {
                Err(StoreError::timeout(delay))
            } else {
                Ok(inner.check_and_insert(key, ttl))
            }
        })
    }
    fn release(&self, key: Fingerprint) {
        self.inner.remove(key);
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_store_is_awaited_before_the_inner_service_is_called() {
    let counter = Counter::default();
    let store = SlowStore {
        inner: Arc::new(MemoryStore::new(100)),
        delay: Duration::from_millis(20),
        fail: false,
    };
    let layer = DedupLayer::new(config()).store(store);
    let mut svc = layer.layer_for(counter.service());
    let mut first = task::spawn(svc.ready().await.unwrap().call(text("m")));
    assert_pending!(first.poll());
    assert_eq!(
        counter.calls(),
        0,
        "inner not called before the store answered"
    );
    first.await.unwrap();
    assert_eq!(counter.calls(), 1);
    assert!(is_dup(&send(&mut svc, text("m")).await));
    assert_eq!(counter.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn store_failure_fails_open_or_closed_per_config() {
    let failing = || SlowStore {
        inner: Arc::new(MemoryStore::new(100)),
        delay: Duration::from_millis(5),
        fail: true,
    };
    let counter = Counter::default();
    let open = DedupLayer::new(config()).store(failing());
    let mut svc = open.layer_for(counter.service());
    send(&mut svc, text("m")).await.unwrap();
    send(&mut svc, text("m")).await.unwrap();
    assert_eq!(counter.calls(), 2);
    assert_eq!(open.stats().store_errors, 2);

    let mut cfg = config();
    cfg.store.redis.on_error = FailureMode::FailClosed;
    let closed = DedupLayer::new(cfg).store(failing());
    let mut svc = closed.layer_for(counter.service());
    let err = send(&mut svc, text("m")).await.unwrap_err();
    assert!(err.is::<StoreUnavailable>());
    assert_eq!(counter.calls(), 2);
    assert_eq!(closed.stats().rejected_unavailable, 1);
}

#[tokio::test(start_paused = true)]
async fn two_layers_on_one_store_share_the_window() {
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new(1_000));
    let counter = Counter::default();
    let cfg = DedupConfig {
        scope: DedupScope::Global,
        ..config()
    };
    let mut a = DedupLayer::new(cfg.clone())
        .store(Arc::clone(&store))
        .layer_for(counter.service());
    let mut b = DedupLayer::new(cfg)
        .store(store)
        .layer_for(counter.service());
    send(&mut a, text("m")).await.unwrap();
    assert!(is_dup(&send(&mut b, text("m")).await));
    assert_eq!(counter.calls(), 1);
}
