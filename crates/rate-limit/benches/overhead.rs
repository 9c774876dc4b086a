//! Per-call cost of `RateLimitLayer` (calls within their limits, 1,024 clients in turn) against
//! the bare service, against governor's keyed limiter used directly in a service of the same
//! shape, and inside a stack (metrics, circuit breaker, handler) against the same stack without
//! it. `ratios` measures the same variants interleaved, for ratios on a busy machine.
#![allow(missing_docs)] // criterion_group! generates public functions

mod common;

use criterion::{Criterion, criterion_group, criterion_main};

use common::{VARIANTS, Variants};

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let variants = Variants::new();
    for threads in [1u64, 2] {
        let mut group = c.benchmark_group(format!("per_call/{threads}_thread"));
        for name in VARIANTS {
            group.bench_function(name, |b| b.iter_custom(|n| variants.time(name, threads, n)));
        }
        group.finish();
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
