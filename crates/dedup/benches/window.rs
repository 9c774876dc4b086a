//! Check-and-insert with N live ids: `MemoryStore` against `moka` used as a TTL set, and the
//! whole per-message path (fingerprint + check-and-insert) on the original design's message.
//!
//! `cargo bench -p wsguard-dedup --bench window -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates public functions

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wsguard_dedup::{Claim, Fingerprint, Fingerprinter, MemoryStore};

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

/// The message the Python prototype's benchmark used, as JSON text.
fn message(seq: u64) -> String {
    let text = "hello world ".repeat(4);
    format!(r#"{{"type": "chat", "seq": {seq}, "room": "lobby", "text": "{text}"}}"#)
}

/// The store's clock is tokio's: every bench enters one of these.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The whole per-message path: format message `seq`, fingerprint it, check-and-insert it.
fn fingerprint_and_check(store: &MemoryStore, fp: &Fingerprinter, seq: u64) -> Claim {
    let msg = message(seq);
    store.check_and_insert(fp.fingerprint_json(msg.as_bytes()), TTL)
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

/// The id inserted before `probe` that is still live (the most recent `live` inserts up to
/// `next`), wrapping round to `next`.
fn previous_live(probe: u64, next: u64, live: u64) -> u64 {
    if probe <= next - live + 1 {
        next
    } else {
        probe - 1
    }
}

/// One size of window for the interleaved check: the store, and where each variant is up to.
struct Filled {
    live: u64,
    store: MemoryStore,
    chain: Vec<u64>,
    next: u64,
    probe: u64,
    seq: u64,
    at: usize,
}

impl Filled {
    fn new(live: u64) -> Self {
        let store = filled_store(live);
        let chain = random_cycle(store.heap_bytes() / 8);
        Self {
            live,
            store,
            chain,
            next: live,
            probe: live,
            seq: 0,
            at: 0,
        }
    }

    /// Nanoseconds per operation of `n` fresh inserts, duplicate hits, whole-path messages and
    /// floor loads, in that order.
    fn round(&mut self, fp: &Fingerprinter, n: u64) -> [f64; 4] {
        let per_op = |start: Instant| start.elapsed().as_secs_f64() * 1e9 / n as f64;
        let start = Instant::now();
        for _ in 0..n {
            self.next += 1;
            black_box(self.store.check_and_insert(key(self.next), TTL));
        }
        let fresh = per_op(start);
        let start = Instant::now();
        for _ in 0..n {
            self.probe = previous_live(self.probe, self.next, self.live);
            black_box(self.store.check_and_insert(key(self.probe), TTL));
        }
        let duplicate = per_op(start);
        let start = Instant::now();
        for _ in 0..n {
            self.seq += 1;
            black_box(fingerprint_and_check(&self.store, fp, self.seq));
        }
        let whole = per_op(start);
        let start = Instant::now();
        for _ in 0..n {
            self.at = self.chain[self.at] as usize;
            black_box(self.at);
        }
        [fresh, duplicate, whole, per_op(start)]
    }
}

/// Flatness, 10M ids against 1k, measured in turns: short rounds at each size one after the
/// other, keeping each variant's best round, so that load changing during the run does not
/// decide the ratio. Printed before the criterion groups.
fn interleaved_flatness(fp: &Fingerprinter) {
    const ROUNDS: usize = 15;
    const OPS: u64 = 200_000;
    let mut sizes = [Filled::new(1_000), Filled::new(10_000_000)];
    let mut best = [[f64::MAX; 4]; 2];
    for _ in 0..ROUNDS {
        for (size, best) in sizes.iter_mut().zip(best.iter_mut()) {
            for (best, ns) in best.iter_mut().zip(size.round(fp, OPS)) {
                *best = best.min(ns);
            }
        }
    }
    let [small, large] = best;
    println!(
        "interleaved flatness, best of {ROUNDS} rounds of {OPS} operations, 1k ids / 10M ids: \
         fresh insert {:.1} / {:.1} ns ({:.2}x), duplicate hit {:.1} / {:.1} ns ({:.2}x), \
         fingerprint + check {:.1} / {:.1} ns ({:.2}x), one dependent load in a buffer the \
         size of the store {:.1} / {:.1} ns; at 10M, fresh insert = 1k cost + {:.2} loads, \
         duplicate hit = 1k cost + {:.2} loads",
        small[0],
        large[0],
        large[0] / small[0],
        small[1],
        large[1],
        large[1] / small[1],
        small[2],
        large[2],
        large[2] / small[2],
        small[3],
        large[3],
        (large[0] - small[0]) / large[3],
        (large[1] - small[1]) / large[3],
    );
}

fn check_and_insert(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let fp = Fingerprinter::random(true);
    interleaved_flatness(&fp);
    let mut group = c.benchmark_group("check_and_insert");
    for live in [1_000u64, 100_000, 1_000_000, 10_000_000] {
        let store = filled_store(live);
        let heap = store.heap_bytes();
        let bytes = heap as f64 / store.len() as f64;
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
                probe = previous_live(probe, next, live);
                black_box(store.check_and_insert(key(probe), TTL))
            })
        });
        // The whole per-message path on the same window: fingerprint a fresh message, then
        // check-and-insert it.
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::new("fingerprint_and_check", live), |b| {
            b.iter(|| {
                seq += 1;
                black_box(fingerprint_and_check(&store, &fp, seq))
            })
        });
        drop(store);

        // The floor for any store of this size: one random load that depends on the previous
        // one, in a buffer as large as the store's heap. An exact window over N ids cannot fit
        // in the caches at 1M and 10M ids, so a check-and-insert there costs at least its 1k
        // cost plus one of these.
        let chain = random_cycle(heap / 8);
        let mut at = 0usize;
        group.bench_function(BenchmarkId::new("dependent_load_floor", live), |b| {
            b.iter(|| {
                at = chain[at] as usize;
                black_box(at)
            })
        });
        drop(chain);

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

/// A single cycle through `n` words in random order (Sattolo's algorithm), so that following it
/// from any word visits every word before returning.
fn random_cycle(n: usize) -> Vec<u64> {
    let mut next: Vec<u64> = (0..n as u64).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        next.swap(i, (state % i as u64) as usize);
    }
    next
}

/// The Python prototype's message and path (fingerprint, then check-and-insert), at its sizes.
fn seed_path(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let fp = Fingerprinter::random(true);
    let mut group = c.benchmark_group("seed_path");
    for live in [1_000u64, 10_000, 100_000] {
        let store = filled_store(live);
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::new("fingerprint_and_check", live), |b| {
            b.iter(|| {
                seq += 1;
                black_box(fingerprint_and_check(&store, &fp, seq))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, check_and_insert, seed_path);
criterion_main!(benches);
