//! Per-call overhead of `MetricsLayer` against the bare service and against recording the same
//! call the axum-prometheus way (the `metrics` macros with labels looked up per call, a counter
//! and a histogram), with a Prometheus recorder installed for both.
#![allow(missing_docs)]

use std::borrow::Cow;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower::{Layer, Service};
use wsguard_config::MetricsConfig;
use wsguard_metrics::{
    ClientIdOptions, ClientRequest, ConnectionSlot, MetricsLayer, MetricsRegistry,
};

#[derive(Clone)]
struct Msg {
    slot: Arc<ConnectionSlot>,
}

impl ClientRequest for Msg {
    fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("bench-client"))
    }
    fn size(&self) -> Option<u64> {
        Some(64)
    }
    fn connection_slot(&self) -> Option<&ConnectionSlot> {
        Some(&self.slot)
    }
}

/// The handler: answers at once.
#[derive(Clone, Copy)]
struct Bare;

impl Service<Msg> for Bare {
    type Response = u16;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<u16, Self::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Msg) -> Self::Future {
        black_box(&req);
        std::future::ready(Ok(200))
    }
}

/// What axum-prometheus does per request: build the labels, look the counter and the histogram
/// up through the macros, time the call.
#[derive(Clone)]
struct AxumPrometheusStyle<S> {
    inner: S,
    endpoint: Arc<str>,
}

impl<S: Service<Msg, Response = u16>> Service<Msg> for AxumPrometheusStyle<S>
where
    S::Future: Unpin,
{
    type Response = u16;
    type Error = S::Error;
    type Future = std::future::Ready<Result<u16, S::Error>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Msg) -> Self::Future {
        let start = Instant::now();
        let result = block_on(self.inner.call(req));
        let status = match &result {
            Ok(s) => s.to_string(),
            Err(_) => "500".to_owned(),
        };
        let labels = [
            ("endpoint", self.endpoint.to_string()),
            ("method", "GET".to_owned()),
            ("status", status),
        ];
        metrics::counter!("axum_http_requests_total", &labels).increment(1);
        metrics::histogram!("axum_http_requests_duration_seconds", &labels)
            .record(start.elapsed().as_secs_f64());
        std::future::ready(result)
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

fn drive<S: Service<Msg>>(svc: &mut S, msg: &Msg, iters: u64) {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..iters {
        let _ = svc.poll_ready(&mut cx);
        let _ = black_box(block_on(svc.call(msg.clone())));
    }
}

/// Runs `iters` calls split over `threads` threads, each with its own clone of the service and
/// its own connection slot; returns the wall time.
fn timed<S>(make: &(dyn Fn() -> S + Sync), threads: u64, iters: u64) -> Duration
where
    S: Service<Msg> + Send,
{
    if threads == 1 {
        let mut svc = make();
        let msg = Msg {
            slot: Arc::new(ConnectionSlot::new()),
        };
        drive(&mut svc, &msg, 1); // registers the slot outside the timing
        let start = Instant::now();
        drive(&mut svc, &msg, iters);
        return start.elapsed();
    }
    let barrier = std::sync::Barrier::new(threads as usize + 1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut svc = make();
                let msg = Msg {
                    slot: Arc::new(ConnectionSlot::new()),
                };
                drive(&mut svc, &msg, 1);
                barrier.wait();
                drive(&mut svc, &msg, iters / threads);
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
    let recorder = PrometheusBuilder::new()
        .set_buckets(&MetricsConfig::DEFAULT_BUCKETS)
        .unwrap()
        .build_recorder();
    let prometheus: PrometheusHandle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("one recorder per bench process");

    let layer_at = |rate: f64| {
        let registry = MetricsRegistry::new(MetricsConfig {
            sample_rate: rate,
            ..MetricsConfig::default()
        });
        MetricsLayer::new(registry).route("/ws")
    };
    let full = layer_at(1.0);
    let tenth = layer_at(0.1);
    let endpoint: Arc<str> = "/ws".into();

    for threads in [1u64, 2] {
        let mut group = c.benchmark_group(format!("per_call/{threads}_thread"));
        let p = prometheus.clone();
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| timed(&|| Bare, threads, iters))
        });
        group.bench_function("wsguard_rate_1.0", |b| {
            b.iter_custom(|iters| {
                let t = timed(&|| full.layer(Bare), threads, iters);
                p.run_upkeep();
                t
            })
        });
        group.bench_function("wsguard_rate_0.1", |b| {
            b.iter_custom(|iters| {
                let t = timed(&|| tenth.layer(Bare), threads, iters);
                p.run_upkeep();
                t
            })
        });
        group.bench_function("axum_prometheus_style", |b| {
            b.iter_custom(|iters| {
                let t = timed(
                    &|| AxumPrometheusStyle {
                        inner: Bare,
                        endpoint: endpoint.clone(),
                    },
                    threads,
                    iters,
                );
                p.run_upkeep();
                t
            })
        });
        group.finish();
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
