//! `RedisStore`'s claims to one server go out in pipelines: a burst of claims takes a few round
//! trips, each claim gets its own answer (duplicates inside one pipeline included), and each
//! still fails within its own timeout when Redis does not answer. Against a real `redis-server`
//! started by the test; real time, every wait bounded.
#![cfg(feature = "redis")]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use wsguard_config::RedisStoreConfig;
use wsguard_dedup::error::StoreError;
use wsguard_dedup::store::RedisStore;
use wsguard_dedup::{Claim, ClaimFuture, DedupStore, Fingerprint};
use wsguard_test_support::RedisServer;

const TTL: Duration = Duration::from_secs(60);
/// What a claim may take past its timeout on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(300);

fn config(url: &str, operation_timeout: Duration) -> RedisStoreConfig {
    RedisStoreConfig {
        url: url.to_owned(),
        operation_timeout,
        ..RedisStoreConfig::default()
    }
}

fn key(i: u64) -> Fingerprint {
    Fingerprint::from_u128(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

/// The answer of `claim` if it is known without waiting.
fn answer_now(claim: ClaimFuture) -> Option<Result<Claim, StoreError>> {
    let mut claim = pin!(claim);
    match claim.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => Some(answer),
        Poll::Pending => None,
    }
}

async fn all(claims: Vec<ClaimFuture>) -> Vec<Result<Claim, StoreError>> {
    let mut answers = Vec::with_capacity(claims.len());
    for claim in claims {
        answers.push(claim.await);
    }
    answers
}

// One thread: every claim of the burst is queued before the store's task runs, so the burst
// fills whole pipelines.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_claims_takes_a_few_round_trips_and_one_of_two_copies_in_a_pipeline_wins() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&config(&server.url(), Duration::from_secs(5)))
        .await
        .unwrap();
    // Keys 0..50 are in the window before the burst.
    for i in 0..50 {
        assert_eq!(store.claim(key(i), TTL).await.unwrap(), Claim::Fresh);
    }
    let before = store.round_trips();

    // 300 keys, each claimed twice in a row: both copies travel in the same pipeline.
    let claims: Vec<ClaimFuture> = (0..300)
        .flat_map(|i| [store.claim(key(i), TTL), store.claim(key(i), TTL)])
        .collect();
    let answers = all(claims).await;

    let round_trips = store.round_trips() - before;
    assert!(
        round_trips <= 600_u64.div_ceil(256),
        "600 claims took {round_trips} round trips"
    );
    for (i, pair) in answers.chunks(2).enumerate() {
        let (first, second) = (pair[0].as_ref().unwrap(), pair[1].as_ref().unwrap());
        assert!(
            matches!(second, Claim::Duplicate { .. }),
            "key {i}: the second copy passed"
        );
        if i < 50 {
            assert!(
                matches!(first, Claim::Duplicate { .. }),
                "key {i} was in the window before the burst"
            );
        } else {
            assert_eq!(*first, Claim::Fresh, "key {i}: the first copy was refused");
        }
    }
    assert_eq!(server.dbsize(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_many_tasks_at_once_get_exactly_one_winner_per_key() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&config(&server.url(), Duration::from_secs(5)))
        .await
        .unwrap();
    // 16 tasks claim the same 200 keys, each in its own order, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16_u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut fresh = Vec::new();
            let claims: Vec<(u64, ClaimFuture)> = (0..200)
                .map(|i| (i * 7 + t * 31) % 200)
                .map(|i| (i, store.claim(key(i), TTL)))
                .collect();
            for (i, claim) in claims {
                if claim.await.unwrap() == Claim::Fresh {
                    fresh.push(i);
                }
            }
            fresh
        });
    }
    let mut fresh: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    fresh.sort_unstable();
    assert_eq!(fresh, (0..200).collect::<Vec<_>>(), "one winner per key");
    assert!(
        store.round_trips() < 16 * 200 / 4,
        "3,200 claims took {} round trips",
        store.round_trips()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_frozen_redis_fails_each_claim_within_its_own_timeout_and_a_full_queue_at_once() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let server = RedisServer::start();
    let store = RedisStore::connect(&config(&server.url(), TIMEOUT))
        .await
        .unwrap();
    assert_eq!(store.claim(key(0), TTL).await.unwrap(), Claim::Fresh);

    server.freeze();
    // As many claims as may wait: all queued, none answered yet.
    let started = Instant::now();
    let early: Vec<ClaimFuture> = (1..=RedisStore::MAX_WAITING as u64)
        .map(|i| store.claim(key(i), TTL))
        .collect();
    // One more fails at once: the queue does not grow past its bound.
    let refused = answer_now(store.claim(key(100_000), TTL)).expect("refused without waiting");
    assert!(refused.is_err(), "{refused:?}");

    // A claim made later waits its own timeout, not the one of the claims before it.
    let late_wait = async {
        tokio::time::sleep(TIMEOUT / 2).await;
        // By now the queue is still full of unanswered claims: refused at once too.
        assert!(answer_now(store.claim(key(100_001), TTL)).is_some());
        tokio::time::sleep(TIMEOUT).await;
        // The early claims timed out and left the queue: this one is taken and waits.
        let made_after = Instant::now();
        let answer = store.claim(key(100_002), TTL).await;
        (made_after, answer, Instant::now())
    };
    let early = async {
        let answers = all(early).await;
        (answers, started.elapsed())
    };
    let ((early, early_done), (made_after, late, late_done)) = tokio::join!(early, late_wait);

    for answer in &early {
        let err = answer.as_ref().unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    assert!(
        early_done >= TIMEOUT && early_done < TIMEOUT + SLACK,
        "the early claims were answered after {early_done:?}"
    );
    let err = late.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let late_took = late_done - made_after;
    assert!(
        late_took >= TIMEOUT && late_took < TIMEOUT + SLACK,
        "the late claim was answered after {late_took:?}"
    );

    // Thawed: Redis answers again, and the store with it.
    server.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.claim(key(200_000), TTL).await.is_err() {
        assert!(Instant::now() < deadline, "no answer after the thaw");
    }
    assert!(matches!(
        store.claim(key(200_000), TTL).await.unwrap(),
        Claim::Duplicate { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_fail_within_their_timeout_while_redis_is_down_and_a_burst_works_after_a_restart() {
    const TIMEOUT: Duration = Duration::from_millis(200);
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&config(&server.url(), TIMEOUT))
        .await
        .unwrap();
    assert_eq!(store.claim(key(0), TTL).await.unwrap(), Claim::Fresh);

    server.stop();
    for round in 0..3_u64 {
        let started = Instant::now();
        let claims: Vec<ClaimFuture> = (0..100)
            .map(|i| store.claim(key(1000 * round + i), TTL))
            .collect();
        for answer in all(claims).await {
            assert!(answer.is_err(), "answered while Redis was down: {answer:?}");
        }
        let took = started.elapsed();
        assert!(took < TIMEOUT + SLACK, "round {round} took {took:?}");
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0_u64.. {
        let keys: Vec<Fingerprint> = (0..300)
            .map(|i| key(1_000_000 * (attempt + 1) + i))
            .collect();
        let first = all(keys.iter().map(|&k| store.claim(k, TTL)).collect()).await;
        let again = all(keys.iter().map(|&k| store.claim(k, TTL)).collect()).await;
        let fresh = first.iter().all(|a| matches!(a, Ok(Claim::Fresh)));
        let duplicates = again
            .iter()
            .all(|a| matches!(a, Ok(Claim::Duplicate { .. })));
        if fresh && duplicates {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
