//! Per-call cost of `RateLimitLayer` (calls within their limits, 1,024 clients in turn) against
//! the bare service, against governor's keyed limiter used directly in a service of the same
//! shape, and inside a stack (metrics, circuit breaker, handler) against the same stack without
//! it.
#![allow(missing_docs)] // criterion_group! generates public functions

use std::borrow::Cow;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, Quota};
use tower::{BoxError, Layer, Service, ServiceBuilder};
use wsguard_circuit_breaker::CircuitBreakerLayer;
use wsguard_config::{CircuitBreakerConfig, MetricsConfig, RateLimitConfig};
use wsguard_metrics::{ClientIdOptions, ClientRequest, MetricsLayer, MetricsRegistry};
use wsguard_rate_limit::{RateLimitLayer, RateLimitRequest};

const CLIENTS: usize = 1024;
/// High enough that no call of a run is refused: the bench measures the path that passes.
const RATE: u32 = 1_000_000_000;

#[derive(Clone)]
struct Msg {
    client: Arc<str>,
}

impl RateLimitRequest for Msg {
    fn client_id(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.client))
    }
    fn size(&self) -> Option<u64> {
        Some(64)
    }
}

impl ClientRequest for Msg {
    fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.client))
    }
    fn size(&self) -> Option<u64> {
        Some(64)
    }
}

/// The handler: answers at once.
#[derive(Clone, Copy)]
struct Bare;

impl Service<Msg> for Bare {
    type Response = u16;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u16, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Msg) -> Self::Future {
        black_box(&req);
        std::future::ready(Ok(200))
    }
}

/// governor used directly: its default keyed limiter (a `HashMap` behind one mutex, the std
/// monotonic clock), keyed by the client id, checked before the handler's call.
#[derive(Clone)]
struct GovernorDirect {
    limiter: Arc<DefaultKeyedRateLimiter<Arc<str>>>,
    inner: Bare,
}

impl Service<Msg> for GovernorDirect {
    type Response = u16;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u16, BoxError>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Msg) -> Self::Future {
        match self.limiter.check_key(&req.client) {
            Ok(()) => self.inner.call(req),
            Err(_) => std::future::ready(Err("rate limited".into())),
        }
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

fn drive<S: Service<Msg>>(svc: &mut S, msgs: &[Msg], iters: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..iters as usize {
        let _ = svc.poll_ready(&mut cx);
        let out = block_on(svc.call(msgs[i % msgs.len()].clone()));
        assert!(
            out.is_ok(),
            "a call was refused: the bench must measure the passing path"
        );
        black_box(out.ok());
    }
}

/// Runs `iters` calls split over `threads` threads, each with its own clone of the service and
/// its own 1,024 clients; returns the wall time.
fn timed<S>(make: &(dyn Fn() -> S + Sync), threads: u64, iters: u64) -> Duration
where
    S: Service<Msg> + Send,
{
    let clients = |t: u64| -> Vec<Msg> {
        (0..CLIENTS)
            .map(|i| Msg {
                client: format!("client-{t}-{i}").into(),
            })
            .collect()
    };
    let barrier = std::sync::Barrier::new(threads as usize + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let barrier = &barrier;
            scope.spawn(move || {
                let mut svc = make();
                let msgs = clients(t);
                drive(&mut svc, &msgs, CLIENTS as u64); // every key tracked before the timing
                barrier.wait();
                drive(&mut svc, &msgs, iters / threads);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();

    let config = |bytes: bool| RateLimitConfig {
        messages_per_second: RATE,
        messages_burst: RATE,
        bytes_per_second: if bytes { RATE } else { 0 },
        bytes_burst: RATE,
        ..RateLimitConfig::default()
    };
    let messages_only = RateLimitLayer::new(config(false));
    let messages_and_bytes = RateLimitLayer::new(config(true));
    let quota = Quota::per_second(NonZeroU32::new(RATE).unwrap());
    let governor = Arc::new(DefaultKeyedRateLimiter::<Arc<str>>::keyed(quota));

    let registry = MetricsRegistry::new(MetricsConfig::default());
    let metrics = MetricsLayer::new(registry).route("/ws");
    let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::default());

    for threads in [1u64, 2] {
        let mut group = c.benchmark_group(format!("per_call/{threads}_thread"));
        group.bench_function("bare", |b| b.iter_custom(|n| timed(&|| Bare, threads, n)));
        group.bench_function("governor_direct", |b| {
            b.iter_custom(|n| {
                let make = || GovernorDirect {
                    limiter: Arc::clone(&governor),
                    inner: Bare,
                };
                timed(&make, threads, n)
            })
        });
        group.bench_function("layer_messages", |b| {
            b.iter_custom(|n| timed(&|| messages_only.layer(Bare), threads, n))
        });
        group.bench_function("layer_messages_and_bytes", |b| {
            b.iter_custom(|n| timed(&|| messages_and_bytes.layer(Bare), threads, n))
        });
        group.bench_function("stack_without", |b| {
            b.iter_custom(|n| {
                let make = || {
                    ServiceBuilder::new()
                        .layer(metrics.clone())
                        .layer(breaker.clone())
                        .service(Bare)
                };
                timed(&make, threads, n)
            })
        });
        group.bench_function("stack_with", |b| {
            b.iter_custom(|n| {
                let make = || {
                    ServiceBuilder::new()
                        .layer(metrics.clone())
                        .layer(messages_and_bytes.clone())
                        .layer(breaker.clone())
                        .service(Bare)
                };
                timed(&make, threads, n)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
