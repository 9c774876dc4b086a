//! Aggregates are exact under concurrency; sampling is unbiased; live config applies.

mod support;

use std::time::Duration;

use support::{BoxError, Msg, config, echo, send};
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard_config::{ConfigHandle, MetricsConfig, StabilityConfig};
use wsguard_metrics::{Direction, MetricsLayer, MetricsRegistry, Outcome, Sampler};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_exact_under_concurrency() {
    const TASKS: usize = 16;
    const CALLS: usize = 5_000;
    let registry = MetricsRegistry::new(config()); // every call sampled
    let layer = MetricsLayer::new(registry.clone());
    let slot = std::sync::Arc::new(wsguard_metrics::ConnectionSlot::new());
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut svc = layer.layer(service_fn(echo));
            let slot = slot.clone();
            tokio::spawn(async move {
                for i in 0..CALLS {
                    let msg = if t % 2 == 0 {
                        Msg::on(&slot, "shared")
                    } else {
                        Msg::from("shared")
                    };
                    let msg = if i % 10 == 0 { msg.failing() } else { msg };
                    let _ = svc.ready().await.unwrap().call(msg).await;
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = (TASKS * CALLS) as u64;
    let errors = (TASKS * CALLS / 10) as u64;
    let snap = registry.snapshot();
    assert_eq!(snap.messages_in, total);
    assert_eq!(snap.bytes_in, total * 10);
    assert_eq!(snap.calls.ok, total - errors);
    assert_eq!(snap.calls.error, errors);
    assert_eq!(snap.in_flight, 0);
    assert_eq!(snap.latency_inbound.count, total);
    let shared = registry.client("shared").unwrap();
    assert_eq!(shared.messages_in, total);
    assert_eq!(shared.bytes_in, total * 10);
    assert_eq!(shared.errors, errors);
    assert_eq!(shared.connections, 1);
}

#[tokio::test(start_paused = true)]
async fn sampling_rate_within_statistical_bound() {
    const CALLS: u64 = 100_000;
    const RATE: f64 = 0.1;
    let cfg = MetricsConfig {
        sample_rate: RATE,
        ..config()
    };
    let registry = MetricsRegistry::with_sampler(cfg, Sampler::seeded(0x5eed));
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    for _ in 0..CALLS {
        send(&mut svc, Msg::from("sam")).await;
    }
    let snap = registry.snapshot();
    // Aggregates are never sampled.
    assert_eq!(snap.messages_in, CALLS);
    assert_eq!(snap.calls.ok, CALLS);
    // Latency and per-client detail are: within 5 standard deviations of a binomial.
    let mean = CALLS as f64 * RATE;
    let bound = 5.0 * (CALLS as f64 * RATE * (1.0 - RATE)).sqrt();
    let timed = snap.latency_inbound.count as f64;
    assert!(
        (timed - mean).abs() < bound,
        "{timed} sampled, expected {mean} ± {bound}"
    );
    let detail = registry.client("sam").unwrap().messages_in as f64;
    assert!(
        (detail - mean).abs() < bound,
        "{detail} sampled, expected {mean} ± {bound}"
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_sampling_is_reproducible() {
    let run = || async {
        let cfg = MetricsConfig {
            sample_rate: 0.3,
            ..config()
        };
        let registry = MetricsRegistry::with_sampler(cfg, Sampler::seeded(99));
        let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
        for _ in 0..1000 {
            send(&mut svc, Msg::from("x")).await;
        }
        registry.snapshot().latency_inbound.count
    };
    assert_eq!(run().await, run().await);
}

#[tokio::test(start_paused = true)]
async fn outbound_layer_counts_messages_and_bytes_out() {
    let registry = MetricsRegistry::new(config());
    let mut inbound = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let mut outbound = MetricsLayer::new(registry.clone())
        .direction(Direction::Outbound)
        .layer(service_fn(echo));
    inbound
        .ready()
        .await
        .unwrap()
        .call(Msg::from("o"))
        .await
        .unwrap();
    for _ in 0..3 {
        outbound
            .ready()
            .await
            .unwrap()
            .call(Msg::from("o"))
            .await
            .unwrap();
    }
    let snap = registry.snapshot();
    assert_eq!((snap.messages_in, snap.messages_out), (1, 3));
    let routes: Vec<_> = snap
        .routes
        .iter()
        .map(|r| (r.route.as_str(), r.direction.as_str(), r.calls.ok, r.bytes))
        .collect();
    assert_eq!(
        routes,
        [("default", "in", 1, 10), ("default", "out", 3, 30)]
    );
    assert_eq!((snap.bytes_in, snap.bytes_out), (10, 30));
    assert_eq!(snap.latency_outbound.count, 3);
    let o = registry.client("o").unwrap();
    assert_eq!((o.messages_in, o.messages_out, o.bytes_out), (1, 3, 30));
}

#[tokio::test(start_paused = true)]
async fn latency_lands_in_the_configured_bucket() {
    let cfg = MetricsConfig {
        latency_buckets: vec![0.01, 0.1, 1.0],
        ..config()
    };
    let registry = MetricsRegistry::new(cfg);
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(|_: Msg| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, BoxError>(())
    }));
    send(&mut svc, Msg::from("l")).await;
    let h = registry.snapshot().latency_inbound;
    assert_eq!(h.counts, vec![0, 1, 0]);
    assert_eq!(h.overflow, 0);
    assert!((h.sum_seconds - 0.05).abs() < 0.005, "{}", h.sum_seconds);
}

#[tokio::test(start_paused = true)]
async fn live_config_changes_sampling_buckets_and_enabled_keeping_counts() {
    let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let registry = MetricsRegistry::new(&handle);
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    send(&mut svc, Msg::from("c")).await;
    assert_eq!(registry.snapshot().latency_inbound.count, 1);

    let mut next = StabilityConfig::testing();
    next.metrics.sample_rate = 0.0;
    next.metrics.latency_buckets = vec![0.5, 1.0];
    handle.update(next.clone()).unwrap();
    send(&mut svc, Msg::from("c")).await;
    let snap = registry.snapshot();
    assert_eq!(snap.messages_in, 2, "counters kept across the change");
    assert_eq!(snap.sample_rate, 0.0);
    assert_eq!(snap.latency_inbound.bounds, vec![0.5, 1.0]);
    assert_eq!(snap.latency_inbound.count, 0, "nothing sampled at rate 0");

    next.metrics.enabled = false;
    handle.update(next).unwrap();
    send(&mut svc, Msg::from("c")).await;
    assert_eq!(
        registry.snapshot().messages_in,
        2,
        "disabled: passes through"
    );
}

#[tokio::test(start_paused = true)]
async fn classifier_closure_maps_outcomes_per_client() {
    let registry = MetricsRegistry::new(config());
    let classify = |r: Result<&u8, &BoxError>| match r {
        Ok(0) => Outcome::Duplicate,
        Ok(1) => Outcome::Rejected,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let mut svc = MetricsLayer::new(registry.clone())
        .classifier(classify)
        .layer(service_fn(|m: Msg| async move {
            match m.size {
                Some(s) if s < 3 => Ok(s as u8),
                Some(s) if s < 100 => Ok(2),
                _ => Err::<u8, BoxError>("boom".into()),
            }
        }));
    for size in [0, 1, 1, 5, 500] {
        let msg = Msg {
            size: Some(size),
            ..Msg::from("k")
        };
        let _ = svc.ready().await.unwrap().call(msg).await;
    }
    let snap = registry.snapshot();
    assert_eq!(
        (
            snap.calls.ok,
            snap.calls.error,
            snap.calls.rejected,
            snap.calls.duplicate
        ),
        (1, 1, 2, 1)
    );
    let k = registry.client("k").unwrap();
    assert_eq!((k.errors, k.rejections, k.duplicates), (1, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn snapshot_serialises_with_top_clients_by_activity() {
    let cfg = MetricsConfig {
        top_clients: 2,
        ..config()
    };
    let registry = MetricsRegistry::new(cfg);
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    for (id, n) in [("quiet", 1), ("busy", 9), ("mid", 4)] {
        for _ in 0..n {
            send(&mut svc, Msg::from(id)).await;
        }
    }
    let json = serde_json::to_value(registry.snapshot()).unwrap();
    assert_eq!(json["clients"]["tracked"], 3);
    let top: Vec<_> = json["clients"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(top, ["busy", "mid"]);
    assert_eq!(json["calls"]["ok"], 14);
    assert_eq!(json["clients"]["top"][0]["messages_in"], 9);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn route_level_http_request_counts_client_from_header() {
    use axum::{Router, body::Body, http::Request, routing::get};
    let registry = MetricsRegistry::new(config());
    let app = Router::new()
        .route("/ws", get(|| async { "ok" }))
        .route_layer(
            MetricsLayer::new(registry.clone())
                .route("/ws")
                .client_id_header(axum::http::HeaderName::from_static("x-user")),
        );
    for _ in 0..2 {
        let req = Request::get("/ws")
            .header("x-user", "hana")
            .header("content-length", "7")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap();
    }
    let snap = registry.snapshot();
    assert_eq!((snap.calls.ok, snap.bytes_in), (2, 14));
    assert_eq!(registry.client("hana").unwrap().messages_in, 2);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn route_level_client_falls_back_to_peer_ip_from_connect_info() {
    use std::net::SocketAddr;

    use axum::extract::connect_info::MockConnectInfo;
    use axum::extract::{ConnectInfo, Request};
    use axum::{Router, body::Body, middleware, routing::get};

    // The recipe of the `ClientRequest for http::Request` docs.
    async fn peer_addr(ConnectInfo(addr): ConnectInfo<SocketAddr>, mut req: Request) -> Request {
        req.extensions_mut().insert(addr);
        req
    }

    let registry = MetricsRegistry::new(config());
    let app = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(MetricsLayer::new(registry.clone()).route("/"))
        .layer(middleware::map_request(peer_addr))
        .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
    app.clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let with_header = Request::get("/")
        .header("x-client-id", "named")
        .body(Body::empty())
        .unwrap();
    app.oneshot(with_header).await.unwrap();
    assert_eq!(registry.client("192.0.2.7").unwrap().messages_in, 1);
    assert_eq!(registry.client("named").unwrap().messages_in, 1);
}

#[tokio::test(start_paused = true)]
async fn layer_from_live_config_follows_the_handle() {
    let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let layer = MetricsLayer::from_config(&handle);
    let registry = layer.registry().clone();
    let mut svc = layer.layer(service_fn(echo));
    let mut next = StabilityConfig::testing();
    next.metrics.top_clients = 1;
    handle.update(next).unwrap();
    for id in ["a", "b"] {
        send(&mut svc, Msg::from(id)).await;
    }
    let snap = registry.snapshot();
    assert_eq!((snap.clients.tracked, snap.clients.top.len()), (2, 1));
}
