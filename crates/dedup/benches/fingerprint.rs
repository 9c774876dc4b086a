//! Fingerprint of 100 B, 1 KB and 10 KB JSON: the streaming keyed SipHash fingerprint against the
//! original paths (parse into a value, serialise with sorted keys, then MD5 / SHA-256 / FxHash).
//!
//! `cargo bench -p wsguard-dedup --bench fingerprint -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates public functions

use std::hash::Hasher;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use md5::{Digest, Md5};
use sha2::Sha256;
use wsguard_dedup::Fingerprinter;

fn message(seq: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "chat",
        "seq": seq,
        "room": "lobby",
        "text": "hello world, hello there, hi!",
        "from": "alice",
    })
}

/// JSON documents of about 100 B, 1 KB and 10 KB, keys in no particular order.
fn documents() -> Vec<(&'static str, Vec<u8>)> {
    let small = serde_json::to_vec(&message(12_345)).unwrap();
    let batch = |n: usize| {
        let items: Vec<_> = (0..n).map(message).collect();
        serde_json::to_vec(&serde_json::json!({ "op": "batch", "items": items })).unwrap()
    };
    vec![("100B", small), ("1KB", batch(13)), ("10KB", batch(135))]
}

/// The original path: parse, then serialise with sorted keys (serde_json's default `Map` is a
/// `BTreeMap`; `preserve_order` is off in this build, checked below).
fn canonical(json: &[u8]) -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    serde_json::to_vec(&value).unwrap()
}

fn fingerprints(c: &mut Criterion) {
    let sorted = canonical(br#"{"b":1,"a":2}"#);
    assert_eq!(
        sorted, br#"{"a":2,"b":1}"#,
        "serde_json preserve_order is on: baseline would not sort"
    );

    interleaved_ratio();
    let fast = Fingerprinter::random(true);
    let strong = Fingerprinter::random(false);
    let mut group = c.benchmark_group("fingerprint");
    for (name, doc) in documents() {
        eprintln!("document {name}: {} bytes", doc.len());
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("siphash13_streaming", name),
            &doc,
            |b, d| b.iter(|| fast.fingerprint_json(black_box(d))),
        );
        group.bench_with_input(
            BenchmarkId::new("siphash24_streaming", name),
            &doc,
            |b, d| b.iter(|| strong.fingerprint_json(black_box(d))),
        );
        group.bench_with_input(
            BenchmarkId::new("siphash13_raw_bytes", name),
            &doc,
            |b, d| b.iter(|| fast.fingerprint_bytes(black_box(d))),
        );
        group.bench_with_input(
            BenchmarkId::new("sorted_serialise_fxhash", name),
            &doc,
            |b, d| {
                b.iter(|| {
                    let mut h = rustc_hash::FxHasher::default();
                    h.write(&canonical(black_box(d)));
                    h.finish()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("sorted_serialise_md5", name),
            &doc,
            |b, d| b.iter(|| Md5::digest(canonical(black_box(d)))),
        );
        group.bench_with_input(
            BenchmarkId::new("sorted_serialise_sha256", name),
            &doc,
            |b, d| b.iter(|| Sha256::digest(canonical(black_box(d)))),
        );
        group.bench_with_input(BenchmarkId::new("parse_only", name), &doc, |b, d| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(d)).unwrap())
        });
    }
    group.finish();
}

/// The 100 B message with its keys in the order a client might write them: `documents()` come
/// from serde_json's sorted map, so their keys are sorted already.
fn unsorted_small() -> (&'static str, Vec<u8>) {
    let doc = br#"{"type":"chat","seq":12345,"room":"lobby","text":"hello world, hello there, hi!","from":"alice"}"#;
    ("100B unsorted keys", doc.to_vec())
}

/// The machine is shared: criterion's groups run one after the other while the load changes.
/// This alternates short rounds of the streaming fingerprint and of the FxHash baseline and keeps
/// each one's best round, so that both see the same conditions.
fn interleaved_ratio() {
    let fast = Fingerprinter::random(true);
    let unsorted = unsorted_small();
    assert_eq!(
        canonical(&unsorted.1),
        documents()[0].1,
        "the unsorted message is the 100 B document"
    );
    for (name, doc) in documents().into_iter().chain([unsorted]) {
        let iters = (200_000 / doc.len()).max(200);
        let (mut ours, mut base) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = std::time::Instant::now();
            for _ in 0..iters {
                black_box(fast.fingerprint_json(black_box(&doc)));
            }
            ours = ours.min(t.elapsed().as_nanos() as f64 / iters as f64);
            let t = std::time::Instant::now();
            for _ in 0..iters {
                let mut h = rustc_hash::FxHasher::default();
                h.write(&canonical(black_box(&doc)));
                black_box(h.finish());
            }
            base = base.min(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        eprintln!(
            "interleaved {name}: streaming siphash13 {ours:.0} ns, parse+sorted serialise+fxhash {base:.0} ns, ratio {:.2}x",
            base / ours
        );
    }
}

criterion_group!(benches, fingerprints);
criterion_main!(benches);
