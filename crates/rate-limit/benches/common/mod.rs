//! What both benches share: the message, the handler, governor used directly, and the timing
//! loop.
#![allow(dead_code)] // each bench uses its own part

use std::borrow::Cow;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use tower::{BoxError, Layer, Service, ServiceBuilder};
use wsguard_circuit_breaker::CircuitBreakerLayer;
use wsguard_config::{CircuitBreakerConfig, MetricsConfig, RateLimitConfig};
use wsguard_metrics::{ClientIdOptions, ClientRequest, MetricsLayer, MetricsRegistry};
use wsguard_rate_limit::{RateLimitLayer, RateLimitRequest};

pub(crate) const CLIENTS: usize = 1024;
/// High enough that no call of a run is refused: the bench measures the path that passes.
pub(crate) const RATE: u32 = 1_000_000_000;

#[derive(Clone)]
pub(crate) struct Msg {
    pub(crate) client: Arc<str>,
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
pub(crate) struct Bare;

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
pub(crate) struct GovernorDirect {
    pub(crate) limiter: Arc<DefaultKeyedRateLimiter<Arc<str>>>,
    pub(crate) inner: Bare,
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

pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

pub(crate) fn drive<S: Service<Msg>>(svc: &mut S, msgs: &[Msg], iters: u64) {
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
pub(crate) fn timed<S>(make: &(dyn Fn() -> S + Sync), threads: u64, iters: u64) -> Duration
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
    // Each thread times its own calls, started together; the run lasts as long as the slowest.
    // (Timing from the spawning thread reads nothing when that thread is descheduled while the
    // others run.)
    let barrier = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut svc = make();
                    let msgs = clients(t);
                    drive(&mut svc, &msgs, CLIENTS as u64); // every key tracked before the timing
                    barrier.wait();
                    let start = Instant::now();
                    drive(&mut svc, &msgs, iters / threads);
                    start.elapsed()
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a bench thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// The variants every bench compares, built once.
pub(crate) struct Variants {
    pub(crate) messages_only: RateLimitLayer,
    pub(crate) messages_and_bytes: RateLimitLayer,
    pub(crate) governor: Arc<DefaultKeyedRateLimiter<Arc<str>>>,
    pub(crate) metrics: MetricsLayer,
    pub(crate) breaker: CircuitBreakerLayer,
}

impl Variants {
    /// Builds the layers; call inside a tokio runtime (the rate limit starts its sweep there).
    pub(crate) fn new() -> Self {
        let config = |bytes: bool| RateLimitConfig {
            messages_per_second: RATE,
            messages_burst: RATE,
            bytes_per_second: if bytes { RATE } else { 0 },
            bytes_burst: RATE,
            ..RateLimitConfig::default()
        };
        let quota = Quota::per_second(NonZeroU32::new(RATE).unwrap());
        Self {
            messages_only: RateLimitLayer::new(config(false)),
            messages_and_bytes: RateLimitLayer::new(config(true)),
            governor: Arc::new(DefaultKeyedRateLimiter::<Arc<str>>::keyed(quota)),
            metrics: MetricsLayer::new(MetricsRegistry::new(MetricsConfig::default())).route("/ws"),
            breaker: CircuitBreakerLayer::new(CircuitBreakerConfig::default()),
        }
    }

    /// Wall time of `iters` calls over `threads` threads through the variant `name`.
    pub(crate) fn time(&self, name: &str, threads: u64, iters: u64) -> Duration {
        match name {
            "bare" => timed(&|| Bare, threads, iters),
            "governor_direct" => timed(
                &|| GovernorDirect {
                    limiter: Arc::clone(&self.governor),
                    inner: Bare,
                },
                threads,
                iters,
            ),
            "layer_messages" => timed(&|| self.messages_only.layer(Bare), threads, iters),
            "layer_messages_and_bytes" => {
                timed(&|| self.messages_and_bytes.layer(Bare), threads, iters)
            }
            "stack_without" => timed(
                &|| {
                    ServiceBuilder::new()
                        .layer(self.metrics.clone())
                        .layer(self.breaker.clone())
                        .service(Bare)
                },
                threads,
                iters,
            ),
            "stack_with" => timed(
                &|| {
                    ServiceBuilder::new()
                        .layer(self.metrics.clone())
                        .layer(self.messages_and_bytes.clone())
                        .layer(self.breaker.clone())
                        .service(Bare)
                },
                threads,
                iters,
            ),
            other => panic!("no variant {other}"),
        }
    }
}

/// Every variant, in the order the benches report them.
pub(crate) const VARIANTS: [&str; 6] = [
    "bare",
    "governor_direct",
    "layer_messages",
    "layer_messages_and_bytes",
    "stack_without",
    "stack_with",
];
