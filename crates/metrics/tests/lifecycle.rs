//! Client state lives as long as its connections; the sweep and the cap are safety nets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Msg, config, echo, send};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard_config::MetricsConfig;
use wsguard_metrics::{ConnectionSlot, MetricsLayer, MetricsRegistry};

#[tokio::test(start_paused = true)]
async fn client_state_removed_on_disconnect() {
    let registry = MetricsRegistry::new(config());
    let first = registry.connect("alice");
    let second = registry.connect("alice");
    let _bob = registry.connect("bob");
    assert_eq!(registry.client_count(), 2);
    assert_eq!(registry.active_connections(), 3);
    assert_eq!(registry.client("alice").unwrap().connections, 2);

    drop(first);
    assert_eq!(registry.client("alice").unwrap().connections, 1);
    second.release();
    assert!(registry.client("alice").is_none());
    drop(second); // already released: nothing more happens
    assert_eq!(registry.client_count(), 1);
    let snap = registry.snapshot();
    assert_eq!(snap.connections_active, 1);
    assert_eq!(snap.connections_total, 3);
}

#[tokio::test(start_paused = true)]
async fn slot_registers_once_and_release_removes_client() {
    let registry = MetricsRegistry::new(config());
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let slot = Arc::new(ConnectionSlot::new());
    assert!(!slot.is_registered());

    for _ in 0..5 {
        send(&mut svc, Msg::on(&slot, "alice")).await;
    }
    assert!(slot.is_registered());
    assert_eq!(slot.client_id(), Some("alice"));
    let snap = registry.snapshot();
    assert_eq!(snap.connections_total, 1, "one registration per slot");
    assert_eq!(snap.connections_active, 1);
    let alice = registry.client("alice").unwrap();
    assert_eq!(
        (alice.connections, alice.messages_in, alice.bytes_in),
        (1, 5, 50)
    );

    slot.release();
    assert!(!slot.is_registered());
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.active_connections(), 0);
    // Calls after the release still count in the aggregates but register nothing.
    send(&mut svc, Msg::on(&slot, "alice")).await;
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.snapshot().messages_in, 6);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_slot_disconnects() {
    let registry = MetricsRegistry::new(config());
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let slot = Arc::new(ConnectionSlot::new());
    send(&mut svc, Msg::on(&slot, "carol")).await;
    assert_eq!(registry.client_count(), 1);
    drop(slot);
    assert_eq!(registry.client_count(), 0);
    assert_eq!(registry.active_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn slot_released_before_any_call_never_registers() {
    let registry = MetricsRegistry::new(config());
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let slot = Arc::new(ConnectionSlot::new());
    slot.release();
    send(&mut svc, Msg::on(&slot, "dave")).await;
    assert_eq!(registry.snapshot().connections_total, 0);
    assert_eq!(registry.client_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn cleanup_removes_inactive_clients_after_ttl_never_connected_ones() {
    // The background sweep is kept out of the way: this test calls the cleanup itself.
    let registry = MetricsRegistry::new(MetricsConfig {
        client_metrics_ttl: Duration::from_secs(7200),
        cleanup_interval: Duration::from_secs(7200),
        ..config()
    });
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let _live = registry.connect("live");
    send(&mut svc, Msg::from("idle")).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    send(&mut svc, Msg::from("recent")).await;
    assert_eq!(registry.client_count(), 3);

    // Custom TTL: only `idle` is older than 2 s.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(registry.cleanup_inactive_clients(Duration::from_secs(2)), 1);
    assert!(registry.client("idle").is_none());
    assert!(registry.client("recent").is_some());

    // Much later: `recent` goes, `live` stays however long it has been quiet.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(registry.client_count(), 2);
    assert_eq!(registry.cleanup_inactive_clients(Duration::from_secs(2)), 1);
    assert!(registry.client("live").is_some());
    assert_eq!(registry.snapshot().clients.expired, 2);
}

#[tokio::test(start_paused = true)]
async fn background_sweep_uses_configured_ttl_and_stops_with_the_registry() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    // testing(): TTL 5 s, sweep every 1 s.
    let registry = MetricsRegistry::new(config());
    assert_eq!(tasks(), before + 1, "the sweep task runs");
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    send(&mut svc, Msg::from("eve")).await;
    let _live = registry.connect("frank");

    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(registry.client("eve").is_some(), "not yet past the TTL");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(registry.client("eve").is_none(), "swept after the TTL");
    assert!(
        registry.client("frank").is_some(),
        "connected clients are never swept"
    );

    drop(svc);
    drop(_live);
    drop(registry);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(
        tasks(),
        before,
        "the sweep ends when the registry is dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn cap_evicts_the_least_recently_active_client() {
    let cfg = MetricsConfig {
        max_clients: 3,
        ..config()
    };
    let registry = MetricsRegistry::new(cfg);
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    for id in ["a", "b", "c"] {
        send(&mut svc, Msg::from(id)).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // `a` is active again, so `b` is now the least recently active.
    send(&mut svc, Msg::from("a")).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut svc, Msg::from("d")).await;

    assert_eq!(registry.client_count(), 3);
    assert!(registry.client("b").is_none());
    for id in ["a", "c", "d"] {
        assert!(registry.client(id).is_some(), "{id} kept");
    }
    assert_eq!(registry.snapshot().clients.evicted, 1);
}

#[tokio::test(start_paused = true)]
async fn cap_holds_under_a_flood_of_new_clients() {
    let cfg = MetricsConfig {
        max_clients: 10_000,
        ..config()
    };
    let registry = MetricsRegistry::new(cfg);
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    for i in 0..30_000 {
        send(&mut svc, Msg::from(&format!("flood-{i}"))).await;
    }
    assert_eq!(registry.client_count(), 10_000);
    assert_eq!(registry.snapshot().clients.evicted, 20_000);
}

#[tokio::test(start_paused = true)]
async fn churn_of_100k_clients_leaves_the_table_empty() {
    let registry = MetricsRegistry::new(MetricsConfig {
        max_clients: 100_000,
        ..config()
    });
    let mut svc = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let mut open: Vec<Arc<ConnectionSlot>> = Vec::new();
    for i in 0..100_000u32 {
        let slot = Arc::new(ConnectionSlot::new());
        let id = format!("client-{i}");
        send(&mut svc, Msg::on(&slot, &id)).await;
        send(&mut svc, Msg::on(&slot, &id)).await;
        open.push(slot);
        // Connections overlap: up to 1000 open at once, closed oldest first.
        if open.len() == 1000 {
            for slot in open.drain(..500) {
                slot.release();
            }
        }
        if i % 1000 == 0 {
            tokio::time::advance(Duration::from_millis(10)).await;
        }
    }
    assert!(registry.client_count() > 0);
    drop(open);
    let snap = registry.snapshot();
    assert_eq!(snap.clients.tracked, 0);
    assert_eq!(snap.connections_active, 0);
    assert_eq!(snap.connections_total, 100_000);
    assert_eq!(snap.messages_in, 200_000);
    assert_eq!(
        snap.clients.evicted + snap.clients.expired,
        0,
        "nothing needed the safety nets"
    );
}

#[tokio::test(start_paused = true)]
async fn unfinished_call_counts_as_in_flight_then_cancelled() {
    let registry = MetricsRegistry::new(config());
    let (mock, mut handle) = tower_test::mock::pair::<Msg, ()>();
    let mut svc = MetricsLayer::new(registry.clone()).layer(mock);
    handle.allow(2);
    let mut first = task::spawn(svc.ready().await.unwrap().call(Msg::from("a")));
    let second = svc.ready().await.unwrap().call(Msg::from("a"));
    assert_pending!(first.poll());
    assert_eq!(registry.snapshot().in_flight, 2);

    drop(second);
    let snap = registry.snapshot();
    assert_eq!((snap.in_flight, snap.calls.cancelled), (1, 1));

    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(());
    assert_ready_ok!(first.poll());
    let snap = registry.snapshot();
    assert_eq!((snap.in_flight, snap.calls.ok), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn register_counts_an_idle_connection_and_calls_reuse_it() {
    let registry = MetricsRegistry::new(config());
    let stack = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let slot = Arc::new(ConnectionSlot::new());

    slot.register(&registry, Some("alice"));
    let mut svc = stack.clone();
    assert!(slot.is_registered(), "registered before any message");
    assert_eq!(slot.client_id(), Some("alice"));
    assert_eq!(registry.active_connections(), 1);
    let alice = registry.client("alice").unwrap();
    assert_eq!((alice.connections, alice.messages_in), (1, 0));

    for _ in 0..3 {
        send(&mut svc, Msg::on(&slot, "alice")).await;
    }
    let snap = registry.snapshot();
    assert_eq!(
        snap.connections_total, 1,
        "the calls did not register again"
    );
    assert_eq!(registry.client("alice").unwrap().messages_in, 3);

    // Clones of the stack register nothing.
    let _other = stack.clone();
    let _again = svc.clone();
    assert_eq!(registry.snapshot().connections_total, 1);

    slot.release();
    assert_eq!(registry.active_connections(), 0);
    assert!(registry.client("alice").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slot_registers_with_one_registry_and_other_layers_count_aggregates_only() {
    let outer = MetricsRegistry::new(config());
    let inner = MetricsRegistry::new(config());
    let mut stack = tower::ServiceBuilder::new()
        .layer(tower::util::BoxCloneService::layer())
        .layer(MetricsLayer::new(outer.clone()))
        .map_request(|msg: Msg| msg)
        .layer(MetricsLayer::new(inner.clone()))
        .service(service_fn(echo));

    let slot = Arc::new(ConnectionSlot::new());
    slot.register(&outer, Some("bob"));
    slot.register(&inner, Some("bob"));
    send(&mut stack, Msg::on(&slot, "bob")).await;
    assert_eq!(outer.active_connections(), 1);
    assert_eq!(outer.client("bob").unwrap().messages_in, 1);
    assert_eq!(inner.active_connections(), 0, "one registry per slot");
    assert!(inner.client("bob").is_none());
    assert_eq!(inner.snapshot().messages_in, 1);
    drop(slot);
    assert_eq!(outer.active_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_slot_registers_on_its_first_call() {
    let registry = MetricsRegistry::new(config());
    let slot = Arc::new(ConnectionSlot::new());
    assert!(!slot.is_registered());

    // Cloning a `Metrics` service registers nothing ...
    let layered = MetricsLayer::new(registry.clone()).layer(service_fn(echo));
    let mut svc = layered.clone();
    assert_eq!(registry.active_connections(), 0);
    // ... its first call with the slot does.
    send(&mut svc, Msg::on(&slot, "carol")).await;
    assert!(slot.is_registered());
    assert_eq!(registry.client("carol").unwrap().connections, 1);
}

#[tokio::test(start_paused = true)]
async fn register_after_release_registers_nothing() {
    let registry = MetricsRegistry::new(config());
    let slot = ConnectionSlot::new();
    slot.release();
    slot.register(&registry, Some("dave"));
    assert!(!slot.is_registered());
    assert_eq!(registry.snapshot().connections_total, 0);
}
