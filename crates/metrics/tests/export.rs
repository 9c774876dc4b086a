//! The exported metric names and labels, rendered through a Prometheus recorder.

mod support;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusBuilder;
use support::{Msg, config, echo};
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard_config::MetricsConfig;
use wsguard_metrics::{ConnectionSlot, Direction, MetricsLayer, MetricsRegistry};

#[tokio::test(start_paused = true)]
async fn prometheus_text_has_low_cardinality_names_and_labels() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&MetricsConfig::DEFAULT_BUCKETS)
        .unwrap()
        .build_recorder();
    let prometheus = recorder.handle();
    // Handles are registered with the recorder current at construction, then reused.
    let (registry, mut svc, mut send) = metrics::with_local_recorder(&recorder, || {
        let registry = MetricsRegistry::new(config());
        let inbound = MetricsLayer::new(registry.clone()).route("/ws");
        let outbound = inbound.clone().direction(Direction::Outbound);
        let svc = inbound.layer(service_fn(echo));
        let send = outbound.layer(service_fn(echo));
        (registry, svc, send)
    });
    let slot = Arc::new(ConnectionSlot::new());
    for i in 0..4 {
        let msg = Msg::on(&slot, "alice-secret-id");
        let msg = if i == 3 { msg.failing() } else { msg };
        let _ = svc.ready().await.unwrap().call(msg).await;
    }
    support::send(&mut send, Msg::on(&slot, "alice-secret-id")).await;
    // The adapter reports messages its send queue dropped for a slow reader.
    slot.record_send_dropped("/ws", 3);
    assert_eq!(registry.client("alice-secret-id").unwrap().send_dropped, 3);
    let _other = registry.connect("bob-secret-id");
    drop(_other);

    // Counts reach the recorder when published: here by the background task, within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let text = prometheus.render();
    let has = |line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    };
    has(r#"wsguard_calls_total{route="/ws",direction="in",outcome="ok"} 3"#);
    has(r#"wsguard_calls_total{route="/ws",direction="in",outcome="error"} 1"#);
    has(r#"wsguard_calls_total{route="/ws",direction="in",outcome="rejected"} 0"#);
    has(r#"wsguard_calls_total{route="/ws",direction="out",outcome="ok"} 1"#);
    has(r#"wsguard_bytes_total{route="/ws",direction="in"} 40"#);
    has(r#"wsguard_bytes_total{route="/ws",direction="out"} 10"#);
    has(r#"wsguard_calls_in_flight{route="/ws",direction="in"} 0"#);
    has(r#"wsguard_call_duration_seconds_count{route="/ws",direction="in"} 4"#);
    has(r#"wsguard_call_duration_seconds_bucket{route="/ws",direction="in",le="0.0001"} 4"#);
    has(r#"wsguard_send_dropped_total{route="/ws"} 3"#);
    has("wsguard_connections_total 2");
    has("wsguard_connections_active 1");
    has("# TYPE wsguard_calls_total counter");
    assert!(
        !text.contains("secret"),
        "client ids never become labels:\n{text}"
    );
    assert!(
        !text.contains("route=\"default\""),
        "builder steps leave no unused series:\n{text}"
    );

    slot.release();
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(Msg::from("carol-secret-id"))
        .await;
    // An explicit publish (e.g. in a `/metrics` handler) makes the rendered text exact now.
    registry.publish();
    let text = prometheus.render();
    for line in [
        "wsguard_connections_active 0",
        r#"wsguard_calls_total{route="/ws",direction="in",outcome="ok"} 4"#,
        r#"wsguard_bytes_total{route="/ws",direction="in"} 50"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn in_flight_gauge_and_cancelled_calls_are_published() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let (mock, mut handle) = tower_test::mock::pair::<Msg, ()>();
    let (registry, mut svc) = metrics::with_local_recorder(&recorder, || {
        let registry = MetricsRegistry::new(config());
        let svc = MetricsLayer::new(registry.clone())
            .route("/slow")
            .layer(mock);
        (registry, svc)
    });
    handle.allow(2);
    let pending = svc.ready().await.unwrap().call(Msg::from("a"));
    let cancelled = svc.ready().await.unwrap().call(Msg::from("a"));
    registry.publish();
    let text = prometheus.render();
    assert!(
        text.contains(r#"wsguard_calls_in_flight{route="/slow",direction="in"} 2"#),
        "{text}"
    );
    drop(cancelled);
    drop(pending);
    registry.publish();
    let text = prometheus.render();
    assert!(
        text.contains(r#"wsguard_calls_in_flight{route="/slow",direction="in"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wsguard_calls_total{route="/slow",direction="in",outcome="cancelled"} 2"#),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn session_figures_reach_the_snapshot_and_prometheus() {
    use std::sync::Mutex;

    use wsguard_metrics::SessionFigures;

    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let figures = Arc::new(Mutex::new(SessionFigures::default()));
    let set = |f: &dyn Fn(&mut SessionFigures)| f(&mut figures.lock().unwrap());
    let registry = metrics::with_local_recorder(&recorder, || {
        let registry = MetricsRegistry::new(config());
        let source = figures.clone();
        registry.watch_sessions("/ws", move || *source.lock().unwrap());
        registry
    });
    set(&|f| {
        f.live = Some(3);
        f.detached = Some(1);
        f.created = 4;
        f.resumed = 2;
        f.refused.unknown = 1;
        f.refused.gap = 2;
        f.replayed = 7;
        f.dropped = 5;
        f.expired = 1;
        f.evicted = 1;
    });

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.sessions.len(), 1);
    assert_eq!(snapshot.sessions[0].route, "/ws");
    assert_eq!(snapshot.sessions[0].figures, *figures.lock().unwrap());
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["sessions"][0]["route"], "/ws");
    assert_eq!(json["sessions"][0]["replayed"], 7);
    assert_eq!(json["sessions"][0]["refused"]["gap"], 2);

    registry.publish();
    let has = |text: &str, line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    };
    let text = prometheus.render();
    for line in [
        r#"wsguard_sessions_live{route="/ws"} 3"#,
        r#"wsguard_sessions_detached{route="/ws"} 1"#,
        r#"wsguard_sessions_created_total{route="/ws"} 4"#,
        r#"wsguard_sessions_resumed_total{route="/ws"} 2"#,
        r#"wsguard_sessions_refused_total{route="/ws",reason="unknown"} 1"#,
        r#"wsguard_sessions_refused_total{route="/ws",reason="expired"} 0"#,
        r#"wsguard_sessions_refused_total{route="/ws",reason="gap"} 2"#,
        r#"wsguard_session_messages_replayed_total{route="/ws"} 7"#,
        r#"wsguard_session_messages_dropped_total{route="/ws"} 5"#,
        r#"wsguard_sessions_expired_total{route="/ws"} 1"#,
        r#"wsguard_sessions_evicted_total{route="/ws"} 1"#,
        "# TYPE wsguard_sessions_refused_total counter",
        "# TYPE wsguard_sessions_live gauge",
    ] {
        has(&text, line);
    }

    // Publishing adds what the totals gained since the last publish, not the totals again.
    set(&|f| {
        f.live = Some(1);
        f.detached = Some(0);
        f.resumed = 3;
        f.refused.gap = 3;
    });
    registry.publish();
    registry.publish();
    let text = prometheus.render();
    for line in [
        r#"wsguard_sessions_live{route="/ws"} 1"#,
        r#"wsguard_sessions_detached{route="/ws"} 0"#,
        r#"wsguard_sessions_resumed_total{route="/ws"} 3"#,
        r#"wsguard_sessions_refused_total{route="/ws",reason="gap"} 3"#,
        r#"wsguard_session_messages_replayed_total{route="/ws"} 7"#,
    ] {
        has(&text, line);
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_figures_reach_the_snapshot_and_prometheus() {
    use std::sync::Mutex;

    use wsguard_metrics::RateLimitFigures;

    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let figures = Arc::new(Mutex::new(RateLimitFigures::default()));
    let set = |f: &dyn Fn(&mut RateLimitFigures)| f(&mut figures.lock().unwrap());
    let registry = metrics::with_local_recorder(&recorder, || {
        let registry = MetricsRegistry::new(config());
        let source = figures.clone();
        registry.watch_rate_limit("/ws", move || *source.lock().unwrap());
        registry
    });
    set(&|f| {
        f.limited.messages.error_frame = 5;
        f.limited.bytes.drop = 2;
        f.limited.larger_than_burst.close = 1;
        f.tracked_keys = 3;
        f.evicted = 4;
        f.expired = 6;
    });

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.rate_limits.len(), 1);
    assert_eq!(snapshot.rate_limits[0].route, "/ws");
    assert_eq!(snapshot.rate_limits[0].figures, *figures.lock().unwrap());
    assert_eq!(snapshot.rate_limits[0].figures.limited.total(), 8);
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["rate_limits"][0]["route"], "/ws");
    assert_eq!(
        json["rate_limits"][0]["limited"]["messages"]["error_frame"],
        5
    );
    assert_eq!(json["rate_limits"][0]["tracked_keys"], 3);

    registry.publish();
    let has = |text: &str, line: &str| {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    };
    let text = prometheus.render();
    for line in [
        r#"wsguard_rate_limited_total{route="/ws",limit="messages",action="error_frame"} 5"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="messages",action="drop"} 0"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="bytes",action="drop"} 2"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="larger_than_burst",action="close"} 1"#,
        r#"wsguard_rate_limit_tracked_keys{route="/ws"} 3"#,
        r#"wsguard_rate_limit_keys_evicted_total{route="/ws"} 4"#,
        r#"wsguard_rate_limit_keys_expired_total{route="/ws"} 6"#,
        "# TYPE wsguard_rate_limited_total counter",
        "# TYPE wsguard_rate_limit_tracked_keys gauge",
    ] {
        has(&text, line);
    }

    // Publishing adds what the totals gained since the last publish, not the totals again.
    set(&|f| {
        f.limited.messages.error_frame = 9;
        f.tracked_keys = 1;
    });
    registry.publish();
    registry.publish();
    let text = prometheus.render();
    for line in [
        r#"wsguard_rate_limited_total{route="/ws",limit="messages",action="error_frame"} 9"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="bytes",action="drop"} 2"#,
        r#"wsguard_rate_limit_tracked_keys{route="/ws"} 1"#,
        r#"wsguard_rate_limit_keys_evicted_total{route="/ws"} 4"#,
    ] {
        has(&text, line);
    }
}
