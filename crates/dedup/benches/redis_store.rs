//! Claims through `RedisStore` against a real `redis-server` (and a three-master Redis Cluster),
//! with the bare redis client sending the same `SET key now NX PX ttl GET` as the baseline of the
//! same run: 16 claims in flight at once over one multiplexed connection, fresh keys.
//!
//! `cargo bench -p wsguard-dedup --features redis --bench redis_store -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates public functions

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use redis::aio::ConnectionManager;
use tokio::task::JoinSet;
use wsguard_config::RedisStoreConfig;
use wsguard_dedup::store::RedisStore;
use wsguard_dedup::{DedupStore, Fingerprint};
use wsguard_test_support::{RedisCluster, RedisServer};

const IN_FLIGHT: u64 = 16;
const TTL: Duration = Duration::from_secs(60);

fn config(url: String, cluster_nodes: Vec<String>) -> RedisStoreConfig {
    RedisStoreConfig {
        url,
        cluster_nodes,
        operation_timeout: Duration::from_secs(1),
        ..RedisStoreConfig::default()
    }
}

/// A fresh key each time, spread over the hash slots as real fingerprints are.
fn next_key(counter: &AtomicU64) -> Fingerprint {
    let i = counter.fetch_add(1, Ordering::Relaxed);
    Fingerprint::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

async fn claims(store: &RedisStore, counter: &AtomicU64) {
    let mut set = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        set.spawn(store.claim(next_key(counter), TTL));
    }
    while let Some(claim) = set.join_next().await {
        claim.unwrap().unwrap();
    }
}

async fn bare_sets(conn: &ConnectionManager, prefix: &str, counter: &AtomicU64) {
    let mut set = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mut conn = conn.clone();
        let key = format!("{prefix}{}", next_key(counter));
        set.spawn(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(1_u64)
                .arg("NX")
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .arg("GET")
                .query_async::<Option<String>>(&mut conn)
                .await
        });
    }
    while let Some(answer) = set.join_next().await {
        answer.unwrap().unwrap();
    }
}

fn redis_store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let counter = AtomicU64::new(0);

    let single = config(server.url(), Vec::new());
    let store = rt.block_on(RedisStore::connect(&single)).unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let bare = rt.block_on(ConnectionManager::new(client)).unwrap();
    let on_cluster = config(server.url(), cluster.seed_urls());
    let cluster_store = rt.block_on(RedisStore::connect(&on_cluster)).unwrap();

    let mut group = c.benchmark_group("redis_claims_16_in_flight");
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.bench_function("bare_client_single_server", |b| {
        b.to_async(&rt)
            .iter(|| bare_sets(&bare, "wsguard:bench:", &counter))
    });
    group.bench_function("redis_store_single_server", |b| {
        b.to_async(&rt).iter(|| claims(&store, &counter))
    });
    group.bench_function("redis_store_cluster", |b| {
        b.to_async(&rt).iter(|| claims(&cluster_store, &counter))
    });
    group.finish();
}

criterion_group!(benches, redis_store);
criterion_main!(benches);
