//! `RedisStore` on a real Redis Cluster of three masters that the test starts itself
//! (`redis-server` in cluster mode, joined by `redis-cli --cluster create`). Real time: the
//! servers are real processes; each wait is bounded by a deadline.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn};
use wsguard_config::{DedupConfig, DedupScope, FailureMode, StoreBackend};
use wsguard_dedup::error::{BoxError, Duplicate, StoreUnavailable};
use wsguard_dedup::store::RedisStore;
use wsguard_dedup::{Dedup, DedupLayer};
use wsguard_test_support::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// What a call may take past `OP_TIMEOUT` on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(300);

/// A config naming the cluster by `seeds`; `url` names a port nobody listens on, so a store
/// that used it instead of the cluster could not work.
fn config(seeds: Vec<String>, on_error: FailureMode) -> DedupConfig {
    let mut cfg = DedupConfig {
        ttl: Duration::from_secs(30),
        scope: DedupScope::Global,
        fingerprint_key: Some("00112233445566778899aabbccddeeff".into()),
        ..DedupConfig::default()
    };
    cfg.store.backend = StoreBackend::Redis;
    cfg.store.redis.url = "redis://127.0.0.1:1/".to_owned();
    cfg.store.redis.cluster_nodes = seeds;
    cfg.store.redis.operation_timeout = OP_TIMEOUT;
    cfg.store.redis.on_error = on_error;
    cfg
}

type Handler = tower::util::BoxCloneSyncService<String, (), BoxError>;

fn handler(calls: &Arc<AtomicUsize>) -> Handler {
    let calls = Arc::clone(calls);
    tower::util::BoxCloneSyncService::new(service_fn(move |_: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<(), BoxError>(()) }
    }))
}

async fn send(svc: &mut Dedup<Handler>, msg: &str) -> Result<(), BoxError> {
    svc.ready().await?.call(msg.to_owned()).await
}

/// Sends `msg` and checks the answer came within the operation timeout.
async fn send_timed(svc: &mut Dedup<Handler>, msg: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    let result = send(svc, msg).await;
    let took = started.elapsed();
    assert!(took < OP_TIMEOUT + SLACK, "{msg:?} took {took:?}");
    result
}

fn messages(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!(r#"{{"{tag}":{i}}}"#)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_a_cluster_drop_duplicates_and_the_keys_spread_over_the_masters() {
    let cluster = RedisCluster::start();
    let calls = Arc::new(AtomicUsize::new(0));
    // Each node knows one seed only and finds the other masters through it.
    let a_cfg = config(vec![cluster.url(0)], FailureMode::FailClosed);
    let b_cfg = config(vec![cluster.url(2)], FailureMode::FailClosed);
    let store = RedisStore::connect(&a_cfg.store.redis).await.unwrap();
    let a_layer = DedupLayer::new(a_cfg).store(store);
    let b_layer = DedupLayer::new(b_cfg).connect_store().await.unwrap();
    let mut a = tower::Layer::layer(&a_layer, handler(&calls));
    let mut b = tower::Layer::layer(&b_layer, handler(&calls));

    let n = 60;
    for msg in messages("first", n) {
        send(&mut a, &msg).await.unwrap();
    }
    for msg in messages("first", n) {
        let err = send(&mut b, &msg).await.unwrap_err();
        assert!(err.is::<Duplicate>(), "{msg}: {err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), n);

    // Racing: both nodes get every message at the same time.
    let race = |svc: Dedup<Handler>| async move {
        let mut passed = 0;
        for msg in messages("race", n) {
            if svc.clone().oneshot(msg).await.is_ok() {
                passed += 1;
            }
        }
        passed
    };
    let (pa, pb) = tokio::join!(race(a.clone()), race(b.clone()));
    assert_eq!(pa + pb, n);
    assert_eq!(calls.load(Ordering::SeqCst), 2 * n);
    assert_eq!(
        a_layer.stats().duplicates + b_layer.stats().duplicates,
        2 * n as u64
    );

    let sizes = cluster.dbsizes();
    assert_eq!(sizes.iter().sum::<u64>(), 2 * n as u64, "{sizes:?}");
    // 120 keys on random slots: the chance that a master holds none is (2/3)^120.
    assert!(sizes.iter().all(|&keys| keys > 0), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_built_from_a_config_naming_cluster_nodes_uses_the_cluster() {
    let cluster = RedisCluster::start();
    let cfg = config(cluster.seed_urls(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    // What every server does: `DedupLayer::new(&config)`, no store wired by hand. The config's
    // `url` answers nothing, so only the cluster can make these calls succeed.
    let (a_layer, b_layer) = (DedupLayer::new(cfg.clone()), DedupLayer::new(cfg));
    assert!(a_layer.handle().store().is_shared());
    let mut a = tower::Layer::layer(&a_layer, handler(&calls));
    let mut b = tower::Layer::layer(&b_layer, handler(&calls));

    let deadline = Instant::now() + Duration::from_secs(10);
    // The store connects in the background: until it has, calls fail closed.
    while let Err(err) = send(&mut a, r#"{"order":7}"#).await {
        assert!(err.is::<StoreUnavailable>(), "{err}");
        assert!(Instant::now() < deadline, "never connected to the cluster");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = send(&mut b, r#"{"order":7}"#).await.unwrap_err();
    assert!(err.is::<Duplicate>(), "{err}");
    for msg in messages("more", 30) {
        send(&mut a, &msg).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 31);
    assert_eq!(cluster.dbsizes().iter().sum::<u64>(), 31);
    let prefix = DedupConfig::default().store.redis.key_prefix;
    for i in 0..3 {
        for key in cluster.keys(i) {
            assert!(key.starts_with(&prefix), "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_open_within_the_timeout_and_the_cluster_recovers_by_itself() {
    let mut cluster = RedisCluster::start();
    let cfg = config(cluster.seed_urls(), FailureMode::FailOpen);
    let calls = Arc::new(AtomicUsize::new(0));
    let store = RedisStore::connect(&cfg.store.redis).await.unwrap();
    let layer = DedupLayer::new(cfg).store(store);
    let mut svc = tower::Layer::layer(&layer, handler(&calls));
    let before = messages("before", 30);
    for msg in &before {
        send(&mut svc, msg).await.unwrap();
    }
    assert!(!cluster.keys(0).is_empty(), "no key on the master to kill");

    cluster.stop(0);
    // Fail open: every call is answered in time and delivered, the duplicates of keys on the
    // killed master included, since nobody can tell they are duplicates.
    for msg in &before {
        match send_timed(&mut svc, msg).await {
            Ok(()) => {}
            Err(err) => assert!(err.is::<Duplicate>(), "{msg}: {err}"),
        }
    }
    let errors = layer.stats().store_errors;
    assert!(errors > 0, "no store error with a master down");
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        before.len() as u64 + errors,
        "each call the store could not answer was delivered"
    );

    cluster.restart(0);
    wait_until_deduplicating(&mut svc, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_closed_within_the_timeout_and_the_cluster_recovers_by_itself() {
    let mut cluster = RedisCluster::start();
    let cfg = config(cluster.seed_urls(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    let store = RedisStore::connect(&cfg.store.redis).await.unwrap();
    let layer = DedupLayer::new(cfg).store(store);
    let mut svc = tower::Layer::layer(&layer, handler(&calls));
    send(&mut svc, "before").await.unwrap();

    cluster.stop(0);
    // Fail closed: every call is answered in time; a message whose key the store cannot
    // claim is rejected, never delivered. Keys on the live masters may still be claimed until
    // they notice the failure (`cluster-node-timeout`), then none can.
    let mut unavailable = 0;
    for msg in messages("during", 30) {
        match send_timed(&mut svc, &msg).await {
            Ok(()) => {}
            Err(err) if err.is::<StoreUnavailable>() => unavailable += 1,
            Err(err) => panic!("{msg}: {err}"),
        }
    }
    assert!(unavailable > 0, "no call rejected with a master down");
    assert_eq!(layer.stats().rejected_unavailable, unavailable);
    assert_eq!(
        calls.load(Ordering::SeqCst) as u64,
        1 + 30 - unavailable,
        "a rejected message was delivered"
    );

    cluster.restart(0);
    wait_until_deduplicating(&mut svc, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_cluster_is_down_at_start_fails_as_configured_until_it_comes_up() {
    let mut cluster = RedisCluster::start();
    let cfg = config(cluster.urls(), FailureMode::FailClosed);
    for i in 0..3 {
        cluster.stop(i);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DedupLayer::new(cfg);
    let mut svc = tower::Layer::layer(&layer, handler(&calls));
    for i in 0..3 {
        let err = send_timed(&mut svc, &format!("early {i}"))
            .await
            .unwrap_err();
        assert!(err.is::<StoreUnavailable>(), "{err}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    cluster.restart_all();
    wait_until_deduplicating(&mut svc, "after").await;
}

/// After the master comes back, the store reconnects by itself: every message (on every
/// master) passes once and is a duplicate the second time.
async fn wait_until_deduplicating(svc: &mut Dedup<Handler>, tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for round in 0.. {
        let batch = messages(&format!("{tag}{round}"), 30);
        let mut ok = true;
        for msg in &batch {
            ok &= send(svc, msg).await.is_ok();
            ok &= send(svc, msg).await.is_err_and(|e| e.is::<Duplicate>());
        }
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the master came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_config_whose_cluster_nodes_are_not_redis_urls_is_refused_at_startup() {
    let cfg = config(vec!["http://127.0.0.1:1/".into()], FailureMode::FailOpen);
    let err = DedupLayer::try_new(cfg).unwrap_err();
    assert!(err.to_string().contains("cluster_nodes"), "{err}");
    assert!(err.to_string().contains("are not Redis URLs"), "{err}");
}
