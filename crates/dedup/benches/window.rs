//! Check-and-insert with N live ids: `MemoryStore` against `moka` used as a TTL set, and the
//! whole per-message path (fingerprint + check-and-insert) on the original design's message.
//!
//! `cargo bench -p wsguard-dedup --bench window -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates public functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wsguard_dedup::{Fingerprint, Fingerprinter, MemoryStore};

const TTL: Duration = Duration::from_secs(3600);

fn key(i: u64) -> Fingerprint {
    // Uniform like real (keyed SipHash) fingerprints: splitmix64 of the id, twice.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = mix(a ^ 0x5851_f42d_4c95_7f2d);
    Fingerprint::from_u128(u128::from(a) << 64 | u128::from(b))
}

/// The original design's benchmark message (`seed_dedup.py`), as JSON text.
fn message(seq: u64) -> String {
    let text = "hello world ".repeat(4);
    format!(r#"{{"type": "chat", "seq": {seq}, "room": "lobby", "text": "{text}"}}"#)
}

/// A store holding `live` ids and bounded at `live`: every fresh insert evicts the oldest, so the
/// number of live ids stays `live` for the whole measurement.
fn filled_store(live: u64) -> MemoryStore {
    let store = MemoryStore::new(live as usize);
    for i in 0..live {
        store.check_and_insert(key(i), TTL);
    }
    store
}

fn check_and_insert(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let fp = Fingerprinter::random(true);
    let mut group = c.benchmark_group("check_and_insert");
    for live in [1_000u64, 100_000, 1_000_000, 10_000_000] {
        let store = filled_store(live);
        let bytes = store.heap_bytes() as f64 / store.len() as f64;
        eprintln!("memory_store live={live} heap_bytes_per_id={bytes:.1}");
        let mut next = live;
        group.bench_function(BenchmarkId::new("memory_store_fresh", live), |b| {
            b.iter(|| {
                next += 1;
                black_box(store.check_and_insert(key(next), TTL))
            })
        });
        let mut probe = next;
        group.bench_function(BenchmarkId::new("memory_store_duplicate", live), |b| {
            b.iter(|| {
                // Ids still live: the most recent `live` inserts.
                probe = if probe <= next - live + 1 {
                    next
                } else {
                    probe - 1
                };
                black_box(store.check_and_insert(key(probe), TTL))
            })
        });
        // The whole per-message path on the same window: fingerprint a fresh message, then
        // check-and-insert it.
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::new("fingerprint_and_check", live), |b| {
            b.iter(|| {
                seq += 1;
                let msg = message(seq);
                black_box(store.check_and_insert(fp.fingerprint_json(msg.as_bytes()), TTL))
            })
        });
        drop(store);

        if live <= 1_000_000 {
            let cache: moka::sync::Cache<Fingerprint, ()> = moka::sync::Cache::builder()
                .max_capacity(live)
                .time_to_live(TTL)
                .build();
            for i in 0..live {
                cache.insert(key(i), ());
            }
            cache.run_pending_tasks();
            let mut next = live;
            group.bench_function(BenchmarkId::new("moka_fresh", live), |b| {
                b.iter(|| {
                    next += 1;
                    black_box(cache.entry(key(next)).or_insert(()).is_fresh())
                })
            });
        }
    }
    group.finish();
}

/// The original design's message and path, to compare with `seed_dedup.py` at the same sizes.
fn seed_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let fp = Fingerprinter::random(true);
    let mut group = c.benchmark_group("seed_path");
    for live in [1_000u64, 10_000, 100_000] {
        let store = filled_store(live);
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::new("fingerprint_and_check", live), |b| {
            b.iter(|| {
                seq += 1;
                let msg = message(seq);
                black_box(store.check_and_insert(fp.fingerprint_json(msg.as_bytes()), TTL))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, check_and_insert, seed_path);
criterion_main!(benches);
