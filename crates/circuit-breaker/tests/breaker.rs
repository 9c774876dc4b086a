//! Behaviour of the breaker on a generic service, driven with paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Layer, Service, ServiceExt, service_fn};
use wsguard_circuit_breaker::{
    BoxError, CircuitBreakerLayer, Event, Outcome, State, error::CircuitOpen,
};
use wsguard_config::{
    BackoffStrategy, CircuitBreakerConfig, ConfigHandle, OpenBackoff, StabilityConfig, TripMode,
};

/// What the upstream does with a request.
#[derive(Debug, Clone, Copy)]
enum Do {
    Ok,
    Fail,
    /// Fails with an error the classifier ignores.
    Ignore,
    /// Succeeds after this many milliseconds.
    Slow(u64),
    /// Fails after this many milliseconds.
    SlowFail(u64),
    /// Never finishes.
    Hang,
}

async fn upstream(d: Do) -> Result<&'static str, BoxError> {
    match d {
        Do::Ok => Ok("ok"),
        Do::Fail => Err("boom".into()),
        Do::Ignore => Err("ignore".into()),
        Do::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok("slow")
        }
        Do::SlowFail(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Err("late boom".into())
        }
        Do::Hang => std::future::pending().await,
    }
}

fn classify(result: Result<&&'static str, &BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.to_string() == "ignore" => Outcome::Rejected,
        Err(_) => Outcome::Failure,
    }
}

type Classifier = fn(Result<&&'static str, &BoxError>) -> Outcome;

fn layer(config: CircuitBreakerConfig) -> CircuitBreakerLayer<Classifier> {
    CircuitBreakerLayer::new(config).classifier(classify as Classifier)
}

/// The breaker over `upstream`, counting the calls that reach it.
fn breaker(
    layer: &CircuitBreakerLayer<Classifier>,
    hits: &Arc<AtomicUsize>,
) -> impl Service<
    Do,
    Response = &'static str,
    Error = BoxError,
    Future = impl Future<Output = Result<&'static str, BoxError>> + use<>,
> + Clone
+ use<> {
    let hits = Arc::clone(hits);
    layer.layer(service_fn(move |d| {
        hits.fetch_add(1, Ordering::SeqCst);
        upstream(d)
    }))
}

async fn call<S>(svc: &mut S, d: Do) -> Result<&'static str, BoxError>
where
    S: Service<Do, Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(d).await
}

/// A call admitted and still running: spawned and polled once.
async fn started<S>(svc: &mut S, d: Do) -> task::Spawn<S::Future>
where
    S: Service<Do, Response = &'static str, Error = BoxError>,
{
    let mut call = task::spawn(svc.ready().await.unwrap().call(d));
    assert_pending!(call.poll());
    call
}

async fn rejection<S>(svc: &mut S) -> CircuitOpen
where
    S: Service<Do, Response = &'static str, Error = BoxError>,
{
    let err = call(svc, Do::Ok)
        .await
        .expect_err("the breaker should reject");
    err.downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen rejection")
        .clone()
}

fn fixed_wait(secs: u64) -> OpenBackoff {
    OpenBackoff {
        strategy: BackoffStrategy::Fixed,
        multiplier: 1.0,
        max_wait: Duration::from_secs(secs),
        jitter: 0.0,
    }
}

fn consecutive(threshold: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        enabled: true,
        mode: TripMode::ConsecutiveFailures,
        failure_threshold: threshold,
        timeout: Duration::from_secs(10),
        backoff: fixed_wait(10),
        half_open_max_calls: 1,
        success_threshold: 1,
        half_open_max_wait: Duration::ZERO,
        ..CircuitBreakerConfig::testing()
    }
}

fn count_window(size: u32, min_calls: u32, rate: f64) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        mode: TripMode::CountWindow,
        window_size: size,
        minimum_calls: min_calls,
        failure_rate_threshold: rate,
        slow_call_rate_threshold: 100.0,
        slow_call_duration: Duration::from_secs(1),
        half_open_max_calls: 2,
        ..consecutive(1)
    }
}

fn time_window(secs: u64, min_calls: u32, rate: f64) -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        mode: TripMode::TimeWindow,
        window_duration: Duration::from_secs(secs),
        ..count_window(100, min_calls, rate)
    }
}

/// A layer on a live config holding `breaker`: the config, to change and pass to `update`, and
/// its handle.
fn live_layer(
    breaker: CircuitBreakerConfig,
) -> (
    StabilityConfig,
    ConfigHandle,
    CircuitBreakerLayer<Classifier>,
) {
    let mut config = StabilityConfig::testing();
    config.circuit_breaker = breaker;
    let live = ConfigHandle::new(config.clone()).unwrap();
    let layer = CircuitBreakerLayer::new(&live).classifier(classify as Classifier);
    (config, live, layer)
}

async fn run<S>(svc: &mut S, steps: &[Do])
where
    S: Service<Do, Response = &'static str, Error = BoxError>,
{
    for &d in steps {
        let result = call(svc, d).await;
        if let Err(e) = result {
            assert!(!e.is::<CircuitOpen>(), "{d:?} was rejected");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_at_threshold_and_success_restarts_the_run() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = layer(consecutive(3));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &hits);

    run(&mut svc, &[Do::Fail, Do::Fail, Do::Ok, Do::Fail, Do::Fail]).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 2);
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);

    let open = rejection(&mut svc).await;
    assert_eq!(open.retry_after(), Duration::from_secs(10));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        6,
        "a rejected call never reaches the inner service"
    );
    assert_eq!(handle.snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_neither_count_nor_break_the_run() {
    let layer = layer(consecutive(2));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail, Do::Ignore, Do::Ignore]).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        handle.snapshot().failures,
        1,
        "ignored calls are not recorded"
    );
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_threshold_is_inclusive() {
    let layer = layer(count_window(4, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Ok, Do::Fail, Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "exactly 50% trips a 50% threshold"
    );
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls, snap.failures),
        (4, 2),
        "open keeps the tripping figures"
    );
    assert_eq!(snap.failure_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn count_window_waits_for_minimum_calls() {
    let layer = layer(count_window(10, 5, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 4]).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "100% of 4 calls, but 5 are needed"
    );
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn rates_are_unknown_below_minimum_calls() {
    let layer = layer(count_window(10, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    let snap = handle.snapshot();
    assert_eq!((snap.failure_rate, snap.slow_call_rate), (None, None));
    run(&mut svc, &[Do::Fail, Do::Ok, Do::Ok]).await;
    let snap = handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (3, 1));
    assert_eq!(
        (snap.failure_rate, snap.slow_call_rate),
        (None, None),
        "3 of the 4 calls needed: unknown, not 33%"
    );
    run(&mut svc, &[Do::Ok]).await;
    let snap = handle.snapshot();
    assert_eq!(
        (snap.failure_rate, snap.slow_call_rate),
        (Some(25.0), Some(0.0))
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_rates_are_unknown_until_enough_probes() {
    // min probes = min(minimum_calls 4, half_open_max_calls 2) = 2
    let layer = layer(count_window(4, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 4]).await;
    advance(Duration::from_secs(11)).await;
    run(&mut svc, &[Do::Ok]).await;
    let snap = handle.snapshot();
    assert_eq!((snap.state, snap.calls), (State::HalfOpen, 1));
    assert_eq!(snap.failure_rate, None, "one probe of the two that decide");
}

#[tokio::test(start_paused = true)]
async fn consecutive_mode_counts_failures_but_reports_no_rate() {
    let layer = layer(consecutive(3));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail, Do::Fail]).await;
    let snap = handle.snapshot();
    assert_eq!((snap.failures, snap.consecutive_failures), (2, 2));
    assert_eq!(
        (snap.failure_rate, snap.slow_call_rate),
        (None, None),
        "no window, no rate"
    );
}

#[tokio::test(start_paused = true)]
async fn count_window_trips_when_a_success_brings_calls_to_the_minimum() {
    let layer = layer(count_window(10, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail, Do::Fail, Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "2 of 4 failed once 4 calls are in"
    );
}

#[tokio::test(start_paused = true)]
async fn count_window_slides_over_the_last_calls() {
    let layer = layer(count_window(4, 4, 75.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    // [F F O O] 50%, then O evicts F: [F O O O] 25%, then F F: [O O F F] 50%.
    run(
        &mut svc,
        &[
            Do::Fail,
            Do::Fail,
            Do::Ok,
            Do::Ok,
            Do::Ok,
            Do::Fail,
            Do::Fail,
        ],
    )
    .await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().failures, 2);
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open, "[O F F F] is 75%");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_its_span() {
    let layer = layer(time_window(2, 2, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    advance(Duration::from_secs(3)).await;
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.snapshot().calls, 1, "the failure left the window");
    run(&mut svc, &[Do::Ok, Do::Fail]).await;
    assert_eq!(handle.state(), State::Closed, "1 of 3");
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open, "2 of 4");
}

#[tokio::test(start_paused = true)]
async fn time_window_opens_on_failure_rate_within_its_span() {
    let layer = layer(time_window(10, 3, 60.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Ok, Do::Ok, Do::Fail]).await;
    advance(Duration::from_secs(5)).await;
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Closed, "2 of 4 is below 60%");
    advance(Duration::from_secs(4)).await;
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open, "3 of 5 within 10 s");
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_opens_and_slow_means_longer_than_the_duration() {
    let config = CircuitBreakerConfig {
        slow_call_rate_threshold: 50.0,
        slow_call_duration: Duration::from_millis(100),
        ..count_window(4, 2, 100.0)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Slow(100), Do::Ok]).await;
    assert_eq!(
        handle.snapshot().slow_calls,
        0,
        "exactly the duration is not slow"
    );
    run(&mut svc, &[Do::Slow(101)]).await;
    assert_eq!(handle.state(), State::Closed, "1 of 3 slow");
    run(&mut svc, &[Do::Slow(150)]).await;
    assert_eq!(handle.state(), State::Open, "2 of 4 slow reaches 50%");
    assert_eq!(handle.snapshot().slow_call_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn open_moves_to_half_open_only_strictly_after_the_wait() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    advance(Duration::from_secs(4)).await;
    assert_eq!(
        rejection(&mut svc).await.retry_after(),
        Duration::from_secs(6)
    );
    advance(Duration::from_secs(6)).await;
    assert_eq!(rejection(&mut svc).await.retry_after(), Duration::ZERO);
    assert_eq!(handle.state(), State::Open, "no timer: nothing moves it");
    advance(Duration::from_millis(1)).await;
    assert_eq!(call(&mut svc, Do::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_wait_grows_per_cycle_and_starts_over_when_closed() {
    let config = CircuitBreakerConfig {
        backoff: OpenBackoff {
            strategy: BackoffStrategy::Exponential,
            multiplier: 2.0,
            max_wait: Duration::from_secs(30),
            jitter: 0.0,
        },
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    let mut waits = vec![handle.snapshot().retry_after.unwrap().as_secs()];
    for _ in 0..3 {
        advance(Duration::from_secs(waits[waits.len() - 1]) + Duration::from_millis(1)).await;
        run(&mut svc, &[Do::Fail]).await; // the probe fails: open again, one cycle more
        assert_eq!(handle.state(), State::Open);
        waits.push(handle.snapshot().retry_after.unwrap().as_secs());
    }
    assert_eq!(waits, [10, 20, 30, 30], "x2 per cycle, capped at max_wait");
    assert_eq!(handle.snapshot().open_cycles, 4);

    advance(Duration::from_secs(31)).await;
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().open_cycles, 0);
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.snapshot().retry_after, Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_open_wait_within_bounds() {
    let config = CircuitBreakerConfig {
        backoff: OpenBackoff {
            jitter: 0.5,
            ..fixed_wait(10)
        },
        ..consecutive(1)
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let layer = layer(config.clone());
        let mut svc = breaker(&layer, &Arc::default());
        run(&mut svc, &[Do::Fail]).await;
        let wait = layer.handle().snapshot().retry_after.unwrap();
        assert!(wait >= Duration::from_secs(5) && wait <= Duration::from_secs(15));
        seen.insert(wait);
    }
    assert!(seen.len() > 1, "jitter draws different waits");
}

/// Opens the breaker with one failure and lets the open wait pass.
async fn to_half_open_ready<S>(svc: &mut S)
where
    S: Service<Do, Response = &'static str, Error = BoxError>,
{
    run(svc, &[Do::Fail]).await;
    advance(Duration::from_secs(11)).await;
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_max_calls_at_once() {
    let config = CircuitBreakerConfig {
        half_open_max_calls: 2,
        success_threshold: 2,
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    to_half_open_ready(&mut svc).await;

    let first = started(&mut svc, Do::Hang).await;
    let mut other = svc.clone();
    let second = started(&mut other, Do::Hang).await;
    assert_eq!(handle.state(), State::HalfOpen);

    // Full: poll_ready still answers at once, and the call is refused without reaching inner.
    let mut ready = task::spawn(());
    assert_ready_ok!(ready.enter(|cx, _| svc.poll_ready(cx)));
    let mut third = task::spawn(svc.call(Do::Ok));
    let err = assert_ready!(third.poll()).unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Duration::ZERO
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3, "1 failure + 2 probes");

    drop(first); // the client went away: its slot comes back, nothing recorded
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::HalfOpen, "1 of 2 successes");
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    drop(second);
}

#[tokio::test(start_paused = true)]
async fn many_concurrent_callers_never_exceed_the_probe_cap() {
    let config = CircuitBreakerConfig {
        half_open_max_calls: 3,
        success_threshold: 100,
        ..consecutive(1)
    };
    let layer = layer(config);
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    to_half_open_ready(&mut svc).await;
    let before = hits.load(Ordering::SeqCst);
    let mut futures = Vec::new();
    for _ in 0..50 {
        let mut s = svc.clone();
        futures.push(tokio::spawn(async move { call(&mut s, Do::Hang).await }));
    }
    tokio::task::yield_now().await;
    advance(Duration::from_millis(1)).await;
    assert_eq!(hits.load(Ordering::SeqCst) - before, 3);
    let rejected = futures.iter().filter(|f| f.is_finished()).count();
    assert_eq!(rejected, 47);
    for f in futures {
        f.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_gives_its_slot_back_and_records_nothing() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    let probe = started(&mut svc, Do::Hang).await;
    rejection(&mut svc).await;
    drop(probe);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().calls, 0);
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_outliving_its_service_and_layer_still_decides() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    let mut probe = started(&mut svc, Do::Slow(5)).await;
    drop((svc, layer));
    advance(Duration::from_millis(5)).await;
    assert_eq!(assert_ready_ok!(probe.poll()), "slow");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn probe_slots_never_leak_whatever_the_drop_order() {
    let config = CircuitBreakerConfig {
        half_open_max_calls: 3,
        success_threshold: 10,
        half_open_max_wait: Duration::from_secs(5),
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    to_half_open_ready(&mut svc).await;

    let mut probes = Vec::new();
    for _ in 0..3 {
        let probe = started(&mut svc, Do::Hang).await;
        probes.push(Some(probe));
    }
    rejection(&mut svc).await;
    for i in [2, 0, 1] {
        probes[i] = None;
    }
    for _ in 0..3 {
        let probe = started(&mut svc, Do::Hang).await;
        probes.push(Some(probe));
    }
    rejection(&mut svc).await;

    // These probes outlive their half-open cycle: dropping them later must not free slots of the
    // next cycle, nor must their slots stay taken.
    advance(Duration::from_secs(5)).await;
    rejection(&mut svc).await;
    assert_eq!(handle.state(), State::Open);
    advance(Duration::from_secs(11)).await;
    let mut next = Vec::new();
    for _ in 0..3 {
        let probe = started(&mut svc, Do::Hang).await;
        next.push(probe);
    }
    probes.clear();
    rejection(&mut svc).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1 + 3 + 3 + 3);
    drop(next);
}

#[tokio::test(start_paused = true)]
async fn ignored_probe_gives_its_slot_back_and_records_nothing() {
    let config = CircuitBreakerConfig {
        success_threshold: 2,
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    run(&mut svc, &[Do::Ok, Do::Ignore, Do::Ignore]).await;
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "ignored probes are no successes"
    );
    assert_eq!(handle.snapshot().calls, 1);
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn failed_probe_reopens_in_consecutive_mode() {
    let config = CircuitBreakerConfig {
        success_threshold: 3,
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    run(&mut svc, &[Do::Ok, Do::Ok, Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.snapshot().open_cycles, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_judges_the_rate_over_its_probes() {
    // min probes = min(minimum_calls 4, half_open_max_calls 2) = 2
    let layer = layer(count_window(4, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 4]).await;
    advance(Duration::from_secs(11)).await;
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::HalfOpen, "one probe cannot decide");
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Open, "1 of 2 probes failed: 50%");

    advance(Duration::from_secs(11)).await;
    run(&mut svc, &[Do::Ok, Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0, "closing starts a fresh window");
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens_when_probes_never_finish() {
    let config = CircuitBreakerConfig {
        half_open_max_wait: Duration::from_secs(5),
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    let stuck = started(&mut svc, Do::Hang).await;
    advance(Duration::from_secs(4)).await;
    rejection(&mut svc).await;
    assert_eq!(handle.state(), State::HalfOpen);
    advance(Duration::from_secs(1)).await;
    rejection(&mut svc).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.snapshot().open_cycles, 2);

    // The stuck probe belongs to the old cycle: dropping it disturbs nothing.
    drop(stuck);
    advance(Duration::from_secs(11)).await;
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_reopened_by_probes_shows_the_probes_that_reopened_it() {
    let layer = layer(count_window(4, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 4]).await;
    advance(Duration::from_secs(11)).await;
    run(&mut svc, &[Do::Fail, Do::Ok]).await;
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(
        (snap.calls, snap.failures),
        (2, 1),
        "the two probes, not an empty window"
    );
    assert_eq!(snap.failure_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn breaker_reopened_by_a_failed_probe_shows_the_probes_in_consecutive_mode() {
    let config = CircuitBreakerConfig {
        success_threshold: 3,
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    run(&mut svc, &[Do::Ok, Do::Ok, Do::Fail]).await;
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(
        (snap.calls, snap.failures, snap.consecutive_failures),
        (3, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn open_breaker_keeps_its_figures_after_they_leave_the_time_window() {
    let layer = layer(time_window(5, 4, 50.0));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 4]).await;
    advance(Duration::from_secs(6)).await;
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Open, "the open wait is 10 s");
    assert_eq!((snap.calls, snap.failures), (4, 4));
    assert_eq!(snap.failure_rate, Some(100.0));
}

#[tokio::test(start_paused = true)]
async fn open_breaker_past_its_wait_reads_half_open_before_any_call() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "the wait ends strictly after 10 s"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(handle.state(), State::HalfOpen, "the next call is a probe");
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::HalfOpen);
    assert_eq!(snap.retry_after, None);
    assert_eq!(
        (snap.calls, snap.failures, snap.consecutive_failures),
        (0, 0, 0),
        "no probe yet"
    );
    assert_eq!(snap.open_cycles, 1);
    let _probe = started(&mut svc, Do::Hang).await;
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_past_its_max_wait_reads_open_with_the_wait_the_next_call_starts() {
    let config = CircuitBreakerConfig {
        half_open_max_wait: Duration::from_secs(5),
        backoff: OpenBackoff {
            jitter: 0.5,
            ..fixed_wait(10)
        },
        ..consecutive(1)
    };
    let layer = layer(config);
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    advance(Duration::from_secs(16)).await;
    let stuck = started(&mut svc, Do::Hang).await;
    advance(Duration::from_secs(4)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    advance(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), State::Open, "the next call would reopen it");
    let snap = handle.snapshot();
    assert_eq!((snap.state, snap.open_cycles), (State::Open, 2));
    let wait = snap.retry_after.expect("an open breaker tells its wait");
    assert_eq!(
        rejection(&mut svc).await.retry_after(),
        wait,
        "the next call opens it for the wait the snapshot showed"
    );
    let after = handle.snapshot();
    assert_eq!(
        (after.state, after.open_cycles, after.retry_after),
        (State::Open, 2, Some(wait))
    );
    drop(stuck);
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_before_a_transition_are_not_recorded_after_it() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    let mut late = started(&mut svc, Do::SlowFail(20_000)).await;
    to_half_open_ready(&mut svc).await;
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
    advance(Duration::from_secs(10)).await;
    assert!(assert_ready!(late.poll()).is_err());
    assert_eq!(
        handle.state(),
        State::Closed,
        "a failure admitted in an earlier closed period does not count in this one"
    );
    assert_eq!(handle.snapshot().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_forever_until_reset() {
    let layer = layer(consecutive(5));
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    handle.force_open();
    advance(Duration::from_secs(3600)).await;
    let open = rejection(&mut svc).await;
    assert!(open.is_forced());
    assert_eq!(handle.state(), State::ForcedOpen);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    handle.reset();
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn disabled_permits_everything_and_records_nothing() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    handle.disable();
    run(&mut svc, &[Do::Fail; 10]).await;
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    assert_eq!(handle.snapshot().failures, 0);
    handle.reset();
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn enabled_false_in_config_permits_everything() {
    let config = CircuitBreakerConfig {
        enabled: false,
        ..consecutive(1)
    };
    let layer = layer(config);
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail; 5]).await;
    assert_eq!(layer.handle().state(), State::Disabled);
    assert_eq!(layer.handle().snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_and_reports_once_but_never_opens() {
    let layer = layer(consecutive(2));
    let handle = layer.handle();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    let mut events = handle.subscribe();
    handle.metrics_only();
    run(&mut svc, &[Do::Fail; 5]).await;
    assert_eq!(handle.state(), State::MetricsOnly);
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    let snap = handle.snapshot();
    assert_eq!((snap.failures, snap.consecutive_failures), (5, 5));
    assert!(matches!(
        events.try_recv().unwrap(),
        Event::Transition {
            to: State::MetricsOnly,
            ..
        }
    ));
    assert_eq!(
        events.try_recv().unwrap(),
        Event::ConsecutiveFailuresReached { count: 2 }
    );
    assert!(events.try_recv().is_err(), "reported once");
}

#[tokio::test(start_paused = true)]
async fn reset_closes_with_empty_metrics() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail]).await;
    rejection(&mut svc).await;
    handle.reset();
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!((snap.failures, snap.rejected, snap.open_cycles), (0, 0, 0));
    run(&mut svc, &[Do::Ok]).await;
}

#[tokio::test(start_paused = true)]
async fn transitions_are_broadcast_to_subscribers() {
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let mut svc = breaker(&layer, &Arc::default());
    to_half_open_ready(&mut svc).await;
    run(&mut svc, &[Do::Ok]).await;
    let mut transitions = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Transition { from, to, .. } = event {
            transitions.push((from, to));
        }
    }
    assert_eq!(
        transitions,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn calls_finishing_after_a_reload_between_consecutive_and_rate_modes_are_not_recorded() {
    let (mut config, live, layer) = live_layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());

    // Admitted untimed in consecutive mode, failing after the switch to a count window that
    // one failure would trip: it has no duration to judge as slow or not, so it counts nowhere.
    let mut untimed = started(&mut svc, Do::SlowFail(100)).await;
    config.circuit_breaker = count_window(4, 1, 50.0);
    live.update(config.clone()).unwrap();
    run(&mut svc, &[Do::Ok]).await;
    advance(Duration::from_millis(100)).await;
    assert!(assert_ready!(untimed.poll()).is_err());
    let snapshot = handle.snapshot();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!((snapshot.calls, snapshot.failures), (1, 0));
    assert_eq!(snapshot.consecutive_failures, 0);

    // The other way: admitted timed in the count window, failing in consecutive mode.
    let mut timed = started(&mut svc, Do::SlowFail(100)).await;
    config.circuit_breaker = consecutive(1);
    live.update(config).unwrap();
    run(&mut svc, &[Do::Ok]).await;
    advance(Duration::from_millis(100)).await;
    assert!(assert_ready!(timed.poll()).is_err());
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().consecutive_failures, 0);

    // Calls admitted after each reload count as usual.
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn live_config_change_keeps_state_and_applies_new_thresholds() {
    let (mut config, live, layer) = live_layer(consecutive(2));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());

    run(&mut svc, &[Do::Fail]).await;
    config.circuit_breaker.failure_threshold = 3;
    live.update(config.clone()).unwrap();
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "the new threshold of 3 applies"
    );
    run(&mut svc, &[Do::Fail]).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "the run of failures survived the reload"
    );

    config.circuit_breaker.timeout = Duration::from_secs(20);
    live.update(config.clone()).unwrap();
    let open = rejection(&mut svc).await;
    assert_eq!(handle.state(), State::Open, "still open after a reload");
    assert_eq!(
        open.retry_after(),
        Duration::from_secs(10),
        "the running wait is kept"
    );

    config.circuit_breaker.enabled = false;
    live.update(config.clone()).unwrap();
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Disabled);
    config.circuit_breaker.enabled = true;
    live.update(config).unwrap();
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn live_switch_to_a_window_mode_starts_that_window() {
    let (mut config, live, layer) = live_layer(consecutive(10));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail, Do::Ok]).await;
    config.circuit_breaker = count_window(4, 2, 50.0);
    live.update(config).unwrap();
    run(&mut svc, &[Do::Ok, Do::Fail]).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "1 of 2 in the new count window"
    );
}

#[tokio::test(start_paused = true)]
async fn state_is_shared_by_clones_and_by_services_of_a_re_applied_layer() {
    let layer = layer(consecutive(3));
    let hits = Arc::new(AtomicUsize::new(0));
    let mut first = breaker(&layer, &hits);
    let mut clone = first.clone();
    let mut relayered = breaker(&layer, &hits); // Layer::layer called again, as axum does
    run(&mut first, &[Do::Fail]).await;
    run(&mut clone, &[Do::Fail]).await;
    run(&mut relayered, &[Do::Fail]).await;
    assert_eq!(layer.handle().state(), State::Open);
    rejection(&mut first).await;
    rejection(&mut clone).await;
    rejection(&mut relayered).await;
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(layer.handle().snapshot().rejected, 3);
}

#[tokio::test(start_paused = true)]
async fn consecutive_mode_frees_the_state_once_layer_services_and_futures_are_gone() {
    use tokio::sync::broadcast::error::TryRecvError;
    let layer = layer(consecutive(3));
    // The event channel closes when the shared state is dropped.
    let mut events = layer.handle().subscribe();
    let hits = Arc::new(AtomicUsize::new(0));
    let mut svc = breaker(&layer, &hits);
    let unfinished = svc.ready().await.unwrap().call(Do::Hang);
    // Calls finished last on this thread keep no reference behind them.
    run(&mut svc, &[Do::Ok, Do::Fail, Do::Ok]).await;
    drop((layer, svc));
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
    drop(unfinished);
    assert_eq!(events.try_recv(), Err(TryRecvError::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_call_is_admitted_or_rejected_by_what_poll_ready_saw() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = layer(consecutive(1));
    let handle = layer.handle();
    let mut svc = breaker(&layer, &hits);

    // Readied while closed, called after the breaker was forced open: the readiness stands, as
    // a tower service's does, and the call, admitted before the transition, is not recorded.
    svc.ready().await.unwrap();
    handle.force_open();
    assert!(svc.call(Do::Fail).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(handle.state(), State::ForcedOpen);
    assert_eq!(handle.snapshot().failures, 0);

    // Readied for a rejection, called after a reset: still rejected, without reaching the
    // inner service, which was not polled.
    svc.ready().await.unwrap();
    handle.reset();
    let err = svc.call(Do::Ok).await.expect_err("rejected");
    assert!(err.is::<CircuitOpen>());
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Each call needs its own readiness: the next one is admitted by the reset breaker.
    run(&mut svc, &[Do::Ok]).await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // Readied while disabled, called after a reset: the call goes through as a disabled
    // breaker's does, recording nothing (a recorded failure would open it at threshold 1).
    handle.disable();
    svc.ready().await.unwrap();
    handle.reset();
    assert!(svc.call(Do::Fail).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_never_polls_the_inner_service_while_open() {
    let layer = CircuitBreakerLayer::new(consecutive(1));
    let handle = layer.handle();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<(), (), _>(layer);

    inner.allow(0);
    assert_pending!(svc.poll_ready(), "closed: readiness is the inner service's");

    handle.force_open();
    assert_ready_ok!(svc.poll_ready(), "open: ready at once, inner not polled");
    let mut rejected = task::spawn(svc.call(()));
    let err = assert_ready!(rejected.poll()).unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_pending!(inner.poll_request(), "the inner service got no request");

    handle.reset();
    inner.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(()));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response(());
    assert_ready_ok!(fut.poll());
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_the_rejection_decided_by_poll_ready() {
    let layer = CircuitBreakerLayer::new(consecutive(1));
    let handle = layer.handle();
    let (mut svc, mut inner) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    handle.force_open();
    assert_ready_ok!(svc.poll_ready());
    handle.reset();
    let mut clone = tower_test::mock::Spawn::new(svc.get_ref().clone());
    assert_ready_ok!(clone.poll_ready());
    let mut fut = task::spawn(clone.call(()));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_response(());
    assert_ready_ok!(fut.poll());
    // The original decided to reject in poll_ready, so its call is refused.
    let mut refused = task::spawn(svc.call(()));
    assert!(
        assert_ready!(refused.poll())
            .unwrap_err()
            .is::<CircuitOpen>()
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_only_reports_a_rate_crossing_once_and_keeps_recording() {
    let layer = layer(count_window(4, 2, 50.0));
    let handle = layer.handle();
    let mut events = handle.subscribe();
    handle.metrics_only();
    let mut svc = breaker(&layer, &Arc::default());
    run(&mut svc, &[Do::Fail, Do::Fail, Do::Fail, Do::Ok, Do::Fail]).await;
    assert_eq!(handle.state(), State::MetricsOnly);
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls, snap.failures),
        (4, 3),
        "the window keeps sliding"
    );
    let exceeded: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| matches!(e, Event::FailureRateExceeded { .. }))
        .collect();
    assert_eq!(exceeded, [Event::FailureRateExceeded { rate: 100.0 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_windows_trip_when_many_threads_fail_together() {
    for config in [count_window(256, 64, 50.0), time_window(60, 64, 50.0)] {
        let layer = layer(CircuitBreakerConfig {
            timeout: Duration::from_secs(3600),
            ..config
        });
        let handle = layer.handle();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let mut svc = breaker(&layer, &Arc::default());
                tokio::spawn(async move {
                    for n in 0..100 {
                        let d = if (n + i) % 4 == 0 { Do::Ok } else { Do::Fail };
                        let _ = call(&mut svc, d).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(handle.state(), State::Open, "75% failures must open it");
        assert!(handle.snapshot().rejected > 0);
    }
}
