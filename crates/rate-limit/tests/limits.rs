//! Behaviour of `RateLimitLayer` on paused time: bursts and refill, bytes against messages, each
//! scope, each action, live config, bounded key tables.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::advance;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use wsguard_config::{
    ConfigHandle, RateLimitAction, RateLimitConfig, RateLimitScope, StabilityConfig,
};
use wsguard_rate_limit::error::{LimitKind, RateLimited};
use wsguard_rate_limit::{RateLimitLayer, RateLimitRequest};

/// A message as a WebSocket adapter hands it over: who sent it, on which connection, how big.
#[derive(Debug, Clone)]
struct Msg {
    client: String,
    conn: u64,
    size: u64,
}

impl RateLimitRequest for Msg {
    fn client_id(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.client))
    }
    fn connection_id(&self) -> Option<u64> {
        Some(self.conn)
    }
    fn size(&self) -> Option<u64> {
        Some(self.size)
    }
}

fn msg(client: &str, conn: u64) -> Msg {
    sized(client, conn, 10)
}

fn sized(client: &str, conn: u64, size: u64) -> Msg {
    Msg {
        client: client.to_owned(),
        conn,
        size,
    }
}

/// Message limit only: `rate` per second, bursts of `burst`, per client.
fn messages(rate: u32, burst: u32) -> RateLimitConfig {
    RateLimitConfig {
        messages_per_second: rate,
        messages_burst: burst,
        bytes_per_second: 0,
        ..RateLimitConfig::testing()
    }
}

/// [`messages`] with each refusal held at most `hold` (`hold_refused`).
fn held(rate: u32, burst: u32, hold: Duration) -> RateLimitConfig {
    RateLimitConfig {
        hold_refused: hold,
        ..messages(rate, burst)
    }
}

/// A handler that counts the calls reaching it.
#[derive(Clone, Default)]
struct Handler(Arc<AtomicUsize>);

impl Handler {
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Msg, Response = u64, Error = Infallible, Future: Send> + Clone + Send + use<>
    {
        let calls = Arc::clone(&self.0);
        service_fn(move |m: Msg| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(m.conn))
        })
    }
}

/// Sends `m` through a clone of `svc` (as the adapter does per message).
async fn send<S>(svc: &S, m: Msg) -> Result<u64, BoxError>
where
    S: Service<Msg, Response = u64, Error = BoxError> + Clone,
{
    svc.clone().oneshot(m).await
}

fn limited(result: Result<u64, BoxError>) -> RateLimited {
    let err = result.expect_err("refused by the limit");
    *err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not a RateLimited: {err}"))
}

#[tokio::test(start_paused = true)]
async fn burst_passes_at_once_then_the_limit_refills_at_its_rate() {
    let handler = Handler::default();
    let layer = RateLimitLayer::new(messages(10, 5));
    let svc = layer.layer(handler.service());

    for _ in 0..5 {
        send(&svc, msg("alice", 1)).await.unwrap();
    }
    let refused = limited(send(&svc, msg("alice", 1)).await);
    assert_eq!(refused.limit(), LimitKind::Messages);
    // Five cells of 100 ms are taken; the first comes back 100 ms from now.
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(
        handler.calls(),
        5,
        "a refused call never reaches the handler"
    );

    advance(Duration::from_millis(99)).await;
    let refused = limited(send(&svc, msg("alice", 1)).await);
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(1)));
    advance(Duration::from_millis(1)).await;
    send(&svc, msg("alice", 1)).await.unwrap();
    limited(send(&svc, msg("alice", 1)).await);

    // A quiet second refills the whole burst, and no more.
    advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        send(&svc, msg("alice", 1)).await.unwrap();
    }
    limited(send(&svc, msg("alice", 1)).await);

    let stats = layer.stats();
    assert_eq!(handler.calls(), 11);
    assert_eq!(stats.limited_messages, 4);
    assert_eq!(stats.limited(), 4);
}

#[tokio::test(start_paused = true)]
async fn bytes_are_weighed_by_size_and_messages_by_count() {
    let config = RateLimitConfig {
        messages_per_second: 100,
        messages_burst: 3,
        bytes_per_second: 1000,
        bytes_burst: 1000,
        ..RateLimitConfig::testing()
    };
    let handler = Handler::default();
    let layer = RateLimitLayer::new(config);
    let svc = layer.layer(handler.service());

    // Bytes: 600 pass, 600 more do not fit what is left (400), 400 do.
    send(&svc, sized("alice", 1, 600)).await.unwrap();
    let refused = limited(send(&svc, sized("alice", 1, 600)).await);
    assert_eq!(refused.limit(), LimitKind::Bytes);
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(200)));
    send(&svc, sized("alice", 1, 400)).await.unwrap();

    // Messages: bob's tiny messages are counted, not weighed; the burst of 3 runs out first.
    for _ in 0..3 {
        send(&svc, sized("bob", 2, 1)).await.unwrap();
    }
    let refused = limited(send(&svc, sized("bob", 2, 1)).await);
    assert_eq!(refused.limit(), LimitKind::Messages);
    assert_eq!(refused.retry_after(), Some(Duration::from_millis(10)));

    // A payload larger than the byte burst never passes, and says so.
    advance(Duration::from_secs(10)).await;
    let refused = limited(send(&svc, sized("carol", 3, 1001)).await);
    assert_eq!(refused.limit(), LimitKind::LargerThanBurst);
    assert_eq!(refused.retry_after(), None);
    // An empty payload passes the byte limit unweighed.
    send(&svc, sized("dave", 4, 0)).await.unwrap();

    let stats = layer.stats();
    assert_eq!(
        (
            stats.limited_bytes,
            stats.limited_messages,
            stats.larger_than_burst
        ),
        (1, 1, 1)
    );
    assert_eq!(handler.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn client_scope_shares_one_limit_across_all_connections_of_a_client() {
    let handler = Handler::default();
    let svc = RateLimitLayer::new(messages(1, 4)).layer(handler.service());

    // Alice opens a second connection: it does not get a second limit.
    send(&svc, msg("alice", 1)).await.unwrap();
    send(&svc, msg("alice", 2)).await.unwrap();
    send(&svc, msg("alice", 1)).await.unwrap();
    send(&svc, msg("alice", 2)).await.unwrap();
    limited(send(&svc, msg("alice", 1)).await);
    limited(send(&svc, msg("alice", 2)).await);
    limited(send(&svc, msg("alice", 3)).await);
    // Bob has his own.
    for _ in 0..4 {
        send(&svc, msg("bob", 4)).await.unwrap();
    }
    assert_eq!(handler.calls(), 8);
}

#[tokio::test(start_paused = true)]
async fn connection_scope_gives_each_connection_its_own_limit() {
    let config = RateLimitConfig {
        scope: RateLimitScope::Connection,
        ..messages(1, 2)
    };
    let svc = RateLimitLayer::new(config).layer(Handler::default().service());

    for _ in 0..2 {
        send(&svc, msg("alice", 1)).await.unwrap();
    }
    limited(send(&svc, msg("alice", 1)).await);
    // Same client, another connection: a fresh limit.
    for _ in 0..2 {
        send(&svc, msg("alice", 2)).await.unwrap();
    }
    limited(send(&svc, msg("alice", 2)).await);
}

#[tokio::test(start_paused = true)]
async fn global_scope_shares_one_limit_between_everyone() {
    let config = RateLimitConfig {
        scope: RateLimitScope::Global,
        ..messages(1, 3)
    };
    let svc = RateLimitLayer::new(config).layer(Handler::default().service());

    send(&svc, msg("alice", 1)).await.unwrap();
    send(&svc, msg("bob", 2)).await.unwrap();
    send(&svc, msg("carol", 3)).await.unwrap();
    limited(send(&svc, msg("dave", 4)).await);
    limited(send(&svc, msg("alice", 1)).await);
}

#[tokio::test(start_paused = true)]
async fn requests_without_an_id_share_one_limit_apart_from_those_with_one() {
    let svc = RateLimitLayer::new(messages(1, 2)).layer(service_fn(|s: String| async move {
        Ok::<_, Infallible>(s.len())
    }));
    // `String` carries no client id: every such request shares one bucket.
    svc.clone().oneshot("a".to_owned()).await.unwrap();
    svc.clone().oneshot("b".to_owned()).await.unwrap();
    let err = svc.clone().oneshot("c".to_owned()).await.unwrap_err();
    assert!(err.is::<RateLimited>());
}

#[tokio::test(start_paused = true)]
async fn the_configured_action_and_retry_delay_travel_with_each_refusal() {
    for action in [
        RateLimitAction::Drop,
        RateLimitAction::ErrorFrame,
        RateLimitAction::Close,
    ] {
        let layer = RateLimitLayer::new(RateLimitConfig {
            on_limit: action,
            ..messages(2, 1)
        });
        let svc = layer.layer(Handler::default().service());
        send(&svc, msg("alice", 1)).await.unwrap();
        let refused = limited(send(&svc, msg("alice", 1)).await);
        assert_eq!(refused.action(), action);
        assert_eq!(refused.retry_after(), Some(Duration::from_millis(500)));
        assert!(
            refused.to_string().contains("retry after 500 ms"),
            "{refused}"
        );
        let stats = layer.stats();
        assert_eq!(stats.limited_by(action), 1, "{action:?}: {stats:?}");
        assert_eq!(stats.limited(), 1);
        assert_eq!(stats.limited_with(LimitKind::Messages, action), 1);
        let counted: Vec<_> = stats
            .limited_by_limit_and_action()
            .filter(|&(_, _, n)| n > 0)
            .collect();
        assert_eq!(counted, [(LimitKind::Messages, action, 1)]);
    }
}

#[tokio::test(start_paused = true)]
async fn live_changes_apply_to_the_next_call_and_keep_state_unless_a_limit_changes() {
    let mut config = StabilityConfig::testing();
    config.rate_limit = messages(1, 2);
    let handle = ConfigHandle::new(config.clone()).unwrap();
    let layer = RateLimitLayer::new(&handle);
    let svc = layer.layer(Handler::default().service());

    send(&svc, msg("alice", 1)).await.unwrap();
    send(&svc, msg("alice", 1)).await.unwrap();
    assert_eq!(
        limited(send(&svc, msg("alice", 1)).await).action(),
        RateLimitAction::ErrorFrame
    );

    // Another action: alice's spent limit is kept.
    config.rate_limit.on_limit = RateLimitAction::Close;
    handle.update(config.clone()).unwrap();
    assert_eq!(
        limited(send(&svc, msg("alice", 1)).await).action(),
        RateLimitAction::Close
    );

    // An invalid config is refused and the running limits kept.
    let mut bad = config.clone();
    bad.rate_limit.messages_burst = 0;
    let err = handle.update(bad).unwrap_err();
    assert!(err.has("rate_limit.messages_burst"), "{err}");
    limited(send(&svc, msg("alice", 1)).await);

    // Disabled: everything passes, and no new key is tracked.
    config.rate_limit.enabled = false;
    handle.update(config.clone()).unwrap();
    let before = layer.stats();
    for i in 0..10 {
        send(&svc, msg("alice", 1)).await.unwrap();
        send(&svc, msg(&format!("other-{i}"), 2)).await.unwrap();
    }
    let after = layer.stats();
    assert_eq!(after.limited(), before.limited());
    assert_eq!(after.tracked_keys, before.tracked_keys);

    // A new burst starts the message limit afresh.
    config.rate_limit.enabled = true;
    config.rate_limit.messages_burst = 3;
    handle.update(config).unwrap();
    for _ in 0..3 {
        send(&svc, msg("alice", 1)).await.unwrap();
    }
    limited(send(&svc, msg("alice", 1)).await);
}

#[tokio::test(start_paused = true)]
async fn key_table_stays_bounded_under_many_distinct_keys() {
    let layer = RateLimitLayer::new(RateLimitConfig {
        max_keys: 100,
        ..messages(1, 5)
    });
    let svc = layer.layer(Handler::default().service());

    // A flooding client spends its burst first.
    for _ in 0..5 {
        send(&svc, msg("flooder", 1)).await.unwrap();
    }
    limited(send(&svc, msg("flooder", 1)).await);

    for i in 0..5_000 {
        send(&svc, msg(&format!("client-{i}"), 10 + i))
            .await
            .unwrap();
    }
    let stats = layer.stats();
    assert!(stats.tracked_keys <= 100, "{stats:?}");
    assert_eq!(stats.evicted, 5_000 + 1 - 100, "{stats:?}");
    // Eviction takes the keys closest to a full limit: the flooder's spent limit is kept.
    limited(send(&svc, msg("flooder", 1)).await);
}

#[tokio::test(start_paused = true)]
async fn sweep_forgets_keys_whose_limit_has_refilled() {
    let layer = RateLimitLayer::new(RateLimitConfig {
        cleanup_interval: Duration::from_secs(30),
        ..messages(10, 10)
    });
    let handle = layer.handle();
    let svc = layer.layer(Handler::default().service());
    for i in 0..50 {
        send(&svc, msg(&format!("client-{i}"), i)).await.unwrap();
    }
    // One client spends its whole burst: it is not forgotten until it has refilled.
    for _ in 0..10 {
        send(&svc, msg("busy", 99)).await.unwrap();
    }
    assert_eq!(handle.stats().tracked_keys, 51);

    advance(Duration::from_millis(200)).await;
    handle.sweep();
    let stats = handle.stats();
    assert_eq!((stats.tracked_keys, stats.expired), (1, 50), "{stats:?}");

    // The background sweep runs every cleanup_interval by itself.
    advance(Duration::from_secs(30)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let stats = handle.stats();
    assert_eq!((stats.tracked_keys, stats.expired), (0, 51), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_layer_ends_its_background_sweep() {
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let layer = RateLimitLayer::new(messages(10, 10));
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        before + 1
    );
    let svc = layer.layer(Handler::default().service());
    drop(layer);
    send(&svc, msg("alice", 1)).await.unwrap();
    drop(svc);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        before
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_burst_in_a_config_built_in_code_is_a_burst_of_one() {
    // Validation refuses it; a fixed config is not validated, and must neither panic nor turn
    // the limit off.
    let svc = RateLimitLayer::new(messages(1, 0)).layer(Handler::default().service());
    send(&svc, msg("alice", 1)).await.unwrap();
    let refused = limited(send(&svc, msg("alice", 1)).await);
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_held_refusal_resolves_when_its_limit_refills_at_most_after_the_hold() {
    use tokio_test::{assert_pending, assert_ready};

    let handler = Handler::default();
    // 2 per second: a refused message could pass 500 ms later.
    let layer = RateLimitLayer::new(held(2, 1, Duration::from_secs(1)));
    let svc = layer.layer(handler.service());
    send(&svc, msg("alice", 1)).await.unwrap();

    let mut refused = tokio_test::task::spawn(send(&svc, msg("alice", 1)));
    assert_pending!(refused.poll());
    advance(Duration::from_millis(499)).await;
    assert_pending!(refused.poll());
    advance(Duration::from_millis(1)).await;
    let refusal = limited(assert_ready!(refused.poll()));
    assert_eq!(refusal.retry_after(), Some(Duration::from_millis(500)));
    assert_eq!(handler.calls(), 1);
    // Another client is not held behind alice.
    send(&svc, msg("bob", 2)).await.unwrap();

    // The hold is capped: a longer retry delay resolves after `max`.
    let layer = RateLimitLayer::new(held(1, 1, Duration::from_millis(100)));
    let svc = layer.layer(handler.service());
    send(&svc, msg("carol", 3)).await.unwrap();
    let mut refused = tokio_test::task::spawn(send(&svc, msg("carol", 3)));
    assert_pending!(refused.poll());
    advance(Duration::from_millis(100)).await;
    let refusal = limited(assert_ready!(refused.poll()));
    assert_eq!(refusal.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn without_a_hold_a_refusal_resolves_at_once() {
    use tokio_test::assert_ready;

    let layer = RateLimitLayer::new(messages(2, 1));
    let svc = layer.layer(Handler::default().service());
    send(&svc, msg("alice", 1)).await.unwrap();
    let mut refused = tokio_test::task::spawn(send(&svc, msg("alice", 1)));
    limited(assert_ready!(refused.poll()));
}

#[tokio::test(start_paused = true)]
async fn a_refusal_that_closes_is_never_held() {
    use tokio_test::assert_ready;

    let config = RateLimitConfig {
        on_limit: RateLimitAction::Close,
        ..held(2, 1, Duration::from_secs(1))
    };
    let svc = RateLimitLayer::new(config).layer(Handler::default().service());
    send(&svc, msg("alice", 1)).await.unwrap();
    let mut refused = tokio_test::task::spawn(send(&svc, msg("alice", 1)));
    let refusal = limited(assert_ready!(refused.poll()));
    assert_eq!(refusal.action(), RateLimitAction::Close);
}

#[tokio::test(start_paused = true)]
async fn a_live_change_of_the_hold_applies_to_the_next_refusal() {
    use tokio_test::{assert_pending, assert_ready};

    let mut config = StabilityConfig::testing();
    config.rate_limit = messages(2, 1);
    let handle = ConfigHandle::new(config.clone()).unwrap();
    let svc = RateLimitLayer::new(&handle).layer(Handler::default().service());
    send(&svc, msg("alice", 1)).await.unwrap();
    let mut refused = tokio_test::task::spawn(send(&svc, msg("alice", 1)));
    limited(assert_ready!(refused.poll()));

    config.rate_limit.hold_refused = Duration::from_secs(1);
    handle.update(config).unwrap();
    let mut refused = tokio_test::task::spawn(send(&svc, msg("alice", 1)));
    assert_pending!(refused.poll());
    advance(Duration::from_millis(500)).await;
    limited(assert_ready!(refused.poll()));
}
