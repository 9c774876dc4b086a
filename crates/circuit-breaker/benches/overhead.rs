//! Per-call overhead of a closed breaker, against the bare service and two peers, for each trip
//! mode, on one thread and on two threads sharing one breaker.
//!
//! Every call is driven the same way: `poll_ready`, `call`, then polling the response future
//! with a no-op waker until it is ready (the inner service answers at once), so no executor cost
//! hides the middleware's own. All calls succeed: this is the closed hot path.
//!
//! `failsafe` has no count window; its closest policy is listed under consecutive and time modes
//! only. `scripts/bench/ratios.py` computes overheads and ratios from criterion's estimates.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service};
use tower_resilience_circuitbreaker::{CircuitBreakerLayer as TrLayer, SlidingWindowType};
use wsguard_circuit_breaker::{BoxError, CircuitBreakerLayer};
use wsguard_config::{CircuitBreakerConfig, TripMode};

/// The bare service: answers at once.
#[derive(Debug, Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

fn poll_until_ready<F: Future>(future: F, cx: &mut Context<'_>) -> F::Output {
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

/// Runs `n` calls through `svc`; returns the time they took. Never inlined, so that every
/// variant's loop is compiled on its own, the same wherever it is called from.
#[inline(never)]
fn drive<S>(svc: &mut S, n: u64) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let start = Instant::now();
    for i in 0..n {
        loop {
            match svc.poll_ready(&mut cx) {
                Poll::Ready(r) => break r.expect("ready"),
                Poll::Pending => std::hint::spin_loop(),
            }
        }
        let out = poll_until_ready(svc.call(black_box(i)), &mut cx);
        black_box(out.expect("the call succeeds"));
    }
    start.elapsed()
}

/// A control for the interleaved run: the least a wrapping tower service can do in this
/// harness. Its service and response future only forward.
#[derive(Debug, Clone)]
struct Forward<S> {
    inner: S,
}

impl<S: Service<u64>> Service<u64> for Forward<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = ForwardFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: u64) -> Self::Future {
        ForwardFuture {
            future: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct ForwardFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for ForwardFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// `failsafe` wraps a future rather than a service.
#[inline(never)]
fn drive_failsafe<B: failsafe::futures::CircuitBreaker>(breaker: &B, n: u64) -> Duration {
    let mut cx = Context::from_waker(Waker::noop());
    let mut inner = Echo;
    let start = Instant::now();
    for i in 0..n {
        let out = poll_until_ready(breaker.call(inner.call(black_box(i))), &mut cx);
        black_box(out.expect("the call succeeds"));
    }
    start.elapsed()
}

/// Two threads, each with its own clone sharing one breaker, each running `n` calls; returns the
/// wall time, so the figure is the time per call seen by each thread.
fn two_threads<T, F>(make: impl Fn() -> T, run: F, n: u64) -> Duration
where
    T: Send + 'static,
    F: Fn(&mut T, u64) -> Duration + Send + Sync + Copy + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut state = make();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                run(&mut state, n)
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .max()
        .expect("two workers")
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Consecutive,
    Count,
    Time,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Consecutive => "consecutive",
            Self::Count => "count_window",
            Self::Time => "time_window",
        }
    }

    fn wsguard(self) -> CircuitBreakerLayer {
        let base = CircuitBreakerConfig::production();
        let config = match self {
            Self::Consecutive => CircuitBreakerConfig {
                mode: TripMode::ConsecutiveFailures,
                failure_threshold: 5,
                ..base
            },
            Self::Count => base,
            Self::Time => CircuitBreakerConfig {
                mode: TripMode::TimeWindow,
                window_duration: Duration::from_secs(60),
                ..base
            },
        };
        CircuitBreakerLayer::new(config)
    }

    fn tower_resilience(self) -> TrLayer {
        let builder = TrLayer::builder()
            .failure_rate_threshold(0.5)
            .minimum_number_of_calls(20)
            .slow_call_duration_threshold(Duration::from_secs(5))
            .wait_duration_in_open(Duration::from_secs(60));
        let builder = match self {
            Self::Consecutive => builder.consecutive_failures(5),
            Self::Count => builder.sliding_window_size(100),
            Self::Time => builder
                .sliding_window_type(SlidingWindowType::TimeBased)
                .sliding_window_duration(Duration::from_secs(60)),
        };
        builder.build().expect("valid tower-resilience config")
    }
}

fn bench_mode(c: &mut Criterion, mode: Mode) {
    let mut group = c.benchmark_group(format!("one_thread/{}", mode.name()));
    group.bench_function("bare", |b| b.iter_custom(|n| drive(&mut Echo, n)));
    let layer = mode.wsguard();
    group.bench_function("wsguard", |b| {
        b.iter_custom(|n| drive(&mut layer.layer(Echo), n))
    });
    if let Mode::Consecutive = mode {
        // The floor: same service and future types, nothing admitted or recorded.
        let disabled = mode.wsguard();
        disabled.handle().disable();
        group.bench_function("wsguard_disabled", |b| {
            b.iter_custom(|n| drive(&mut disabled.layer(Echo), n))
        });
    }
    let tr = mode.tower_resilience();
    group.bench_function("tower_resilience", |b| {
        b.iter_custom(|n| drive(&mut tr.layer(Echo), n))
    });
    match mode {
        Mode::Consecutive => {
            let fs = failsafe_consecutive();
            group.bench_function("failsafe", |b| b.iter_custom(|n| drive_failsafe(&fs, n)));
        }
        Mode::Time => {
            let fs = failsafe_time_window();
            group.bench_function("failsafe", |b| b.iter_custom(|n| drive_failsafe(&fs, n)));
        }
        Mode::Count => {}
    }
    group.finish();

    let mut group = c.benchmark_group(format!("two_threads/{}", mode.name()));
    group.bench_function("bare", |b| {
        b.iter_custom(|n| two_threads(|| Echo, drive, n))
    });
    let layer = mode.wsguard();
    group.bench_function("wsguard", |b| {
        b.iter_custom(|n| two_threads(|| layer.layer(Echo), drive, n))
    });
    // Control: the same two threads, each with a breaker of its own (nothing shared), to tell
    // sharing costs from what the machine does to two busy threads.
    group.bench_function("wsguard_unshared", |b| {
        b.iter_custom(|n| two_threads(|| mode.wsguard().layer(Echo), drive, n))
    });
    let tr = mode.tower_resilience();
    group.bench_function("tower_resilience", |b| {
        b.iter_custom(|n| two_threads(|| tr.layer(Echo), drive, n))
    });
    match mode {
        Mode::Consecutive => {
            let fs = failsafe_consecutive();
            group.bench_function("failsafe", |b| {
                b.iter_custom(|n| two_threads(|| fs.clone(), |s, n| drive_failsafe(s, n), n))
            });
        }
        Mode::Time => {
            let fs = failsafe_time_window();
            group.bench_function("failsafe", |b| {
                b.iter_custom(|n| two_threads(|| fs.clone(), |s, n| drive_failsafe(s, n), n))
            });
        }
        Mode::Count => {}
    }
    group.finish();
}

/// failsafe's closest policy to consecutive mode: 5 consecutive failures, 60 s open.
fn failsafe_consecutive() -> impl failsafe::futures::CircuitBreaker + Clone + Send + 'static {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(60)),
        ))
        .build()
}

/// Consecutive mode, one thread: short rounds of the bare service, a forwarding wrapper, wsguard,
/// wsguard disabled and failsafe in turn, keeping each one's best round, so that load changing
/// while criterion runs its groups one after another does not decide the ratio. Printed before
/// the criterion groups.
fn interleaved_consecutive() {
    const ROUNDS: usize = 40;
    const CALLS: u64 = 1_000_000;
    let layer = Mode::Consecutive.wsguard();
    let disabled = Mode::Consecutive.wsguard();
    disabled.handle().disable();
    let fs = failsafe_consecutive();
    let mut best = [Duration::MAX; 5];
    for _ in 0..ROUNDS {
        let times = [
            drive(&mut Echo, CALLS),
            drive(&mut Forward { inner: Echo }, CALLS),
            drive(&mut layer.layer(Echo), CALLS),
            drive(&mut disabled.layer(Echo), CALLS),
            drive_failsafe(&fs, CALLS),
        ];
        for (best, time) in best.iter_mut().zip(times) {
            *best = (*best).min(time);
        }
    }
    let ns = best.map(|d| d.as_secs_f64() * 1e9 / CALLS as f64);
    println!(
        "interleaved consecutive, best of {ROUNDS} rounds of {CALLS} calls: bare {:.2} ns, \
         forwarding wrapper {:.2} ns, wsguard {:.2} ns, wsguard disabled {:.2} ns, \
         failsafe {:.2} ns; wsguard overhead / failsafe overhead = {:.2}",
        ns[0],
        ns[1],
        ns[2],
        ns[3],
        ns[4],
        (ns[2] - ns[0]) / (ns[4] - ns[0]),
    );
}

/// failsafe's closest policy to time-window mode: success rate over 60 s, at least 20 calls.
fn failsafe_time_window() -> impl failsafe::futures::CircuitBreaker + Clone + Send + 'static {
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::success_rate_over_time_window(
            0.5,
            20,
            Duration::from_secs(60),
            failsafe::backoff::constant(Duration::from_secs(60)),
        ))
        .build()
}

/// Time-window mode, one thread, the same way: bare, wsguard and failsafe in turn, best rounds.
fn interleaved_time_window() {
    const ROUNDS: usize = 20;
    const CALLS: u64 = 200_000;
    let layer = Mode::Time.wsguard();
    let fs = failsafe_time_window();
    let mut best = [Duration::MAX; 3];
    for _ in 0..ROUNDS {
        let times = [
            drive(&mut Echo, CALLS),
            drive(&mut layer.layer(Echo), CALLS),
            drive_failsafe(&fs, CALLS),
        ];
        for (best, time) in best.iter_mut().zip(times) {
            *best = (*best).min(time);
        }
    }
    let ns = best.map(|d| d.as_secs_f64() * 1e9 / CALLS as f64);
    println!(
        "interleaved time window, best of {ROUNDS} rounds of {CALLS} calls: bare {:.2} ns, \
         wsguard {:.2} ns, failsafe {:.2} ns; wsguard overhead / failsafe overhead = {:.2}",
        ns[0],
        ns[1],
        ns[2],
        (ns[1] - ns[0]) / (ns[2] - ns[0]),
    );
}

/// Consecutive mode, two threads against one, the same way: one thread alone, then two threads
/// sharing one breaker, then two threads with a breaker each (the control), in turn; best rounds.
fn interleaved_two_threads() {
    const ROUNDS: usize = 20;
    const CALLS: u64 = 1_000_000;
    let layer = Mode::Consecutive.wsguard();
    let mut best = [Duration::MAX; 5];
    for _ in 0..ROUNDS {
        let times = [
            drive(&mut layer.layer(Echo), CALLS),
            two_threads(|| layer.layer(Echo), drive, CALLS),
            two_threads(|| Mode::Consecutive.wsguard().layer(Echo), drive, CALLS),
            drive(&mut Echo, CALLS),
            two_threads(|| Echo, drive, CALLS),
        ];
        for (best, time) in best.iter_mut().zip(times) {
            *best = (*best).min(time);
        }
    }
    let ns = best.map(|d| d.as_secs_f64() * 1e9 / CALLS as f64);
    println!(
        "interleaved two threads (consecutive), best of {ROUNDS} rounds of {CALLS} calls per \
         thread: wsguard 1 thread {:.2} ns, 2 threads sharing one breaker {:.2} ns ({:.2}x), \
         2 threads with a breaker each {:.2} ns ({:.2}x); bare 1 thread {:.2} ns, 2 threads \
         {:.2} ns",
        ns[0],
        ns[1],
        ns[1] / ns[0],
        ns[2],
        ns[2] / ns[0],
        ns[3],
        ns[4],
    );
}

fn overhead(c: &mut Criterion) {
    interleaved_consecutive();
    interleaved_time_window();
    interleaved_two_threads();
    for mode in [Mode::Consecutive, Mode::Count, Mode::Time] {
        bench_mode(c, mode);
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
