//! Cost of the client table: a connection's register + release, and per-client detail of a
//! call (sample rate 1.0, client named by the request, no connection) for a known client
//! against a new client arriving at a full table, which evicts the least recently active.
#![allow(missing_docs)]

use std::borrow::Cow;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};
use wsguard_config::MetricsConfig;
use wsguard_metrics::{ClientIdOptions, ClientRequest, MetricsLayer, MetricsRegistry};

struct Named<'a>(&'a str);

impl ClientRequest for Named<'_> {
    fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.0))
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn table(c: &mut Criterion) {
    let mut group = c.benchmark_group("clients");

    let registry = MetricsRegistry::new(MetricsConfig::default());
    let ids: Vec<String> = (0..4096).map(|i| format!("client-{i}")).collect();
    let mut i = 0;
    // One client's connection opened and closed: its entry created, then removed.
    group.bench_function("connect_then_release", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            drop(black_box(registry.connect(&ids[i])));
        })
    });

    for cap in [4_096usize, 100_000] {
        let registry = MetricsRegistry::new(MetricsConfig {
            max_clients: cap,
            sample_rate: 1.0,
            ..MetricsConfig::default()
        });
        let mut svc = MetricsLayer::new(registry.clone())
            .layer(service_fn(|_: Named<'_>| async { Ok::<_, ()>(()) }));
        let mut call = |id: &str| block_on(svc.call(Named(id))).unwrap();
        // 36-byte ids, as long as a UUID.
        let known: Vec<String> = (0..cap)
            .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
            .collect();
        for id in &known {
            call(id);
        }
        assert_eq!(registry.client_count(), cap);
        let mut k = 0;
        group.bench_function(format!("known_client_cap_{cap}"), |b| {
            b.iter(|| {
                k = (k + 7919) % cap;
                call(&known[k]);
            })
        });
        // Fresh ids, made outside the timing in batches.
        let mut n = 0u64;
        group.bench_function(format!("new_client_at_cap_{cap}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    format!("new-{n:08x}-4000-8000-000000000000")
                },
                |id| call(&id),
                criterion::BatchSize::SmallInput,
            )
        });
        assert_eq!(registry.client_count(), cap);
    }
    group.finish();
}

criterion_group!(benches, table);
criterion_main!(benches);
