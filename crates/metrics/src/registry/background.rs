//! The registry's background task: publishes to the `metrics` facade and sweeps the client table.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Weak;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Inner;

/// How often the background task publishes to the `metrics` facade.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes every [`PUBLISH_INTERVAL`] and sweeps every `interval` (re-read from the config after
/// each sweep) until `stop` fires or the registry is gone.
pub(super) async fn run(registry: Weak<Inner>, stop: oneshot::Receiver<()>, interval: Duration) {
    let mut stop = pin!(stop);
    let mut next_sweep = Instant::now() + interval;
    loop {
        let wake = next_sweep.min(Instant::now() + PUBLISH_INTERVAL);
        let mut tick = pin!(tokio::time::sleep_until(wake));
        let stopped = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            tick.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if stopped {
            return;
        }
        let Some(inner) = registry.upgrade() else {
            return;
        };
        inner.publish();
        if Instant::now() < next_sweep {
            continue;
        }
        let (ttl, interval) = inner
            .source
            .with(|c| (c.client_metrics_ttl, c.cleanup_interval));
        // Shard by shard, yielding now and then, so a big table never holds a worker long.
        let ttl = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut removed = 0;
        for shard in 0..inner.clients.shard_count() {
            removed += inner.clients.remove_inactive_in(shard, inner.now(), ttl);
            if shard % 16 == 15 {
                tokio::task::yield_now().await;
            }
        }
        inner.handles.clients_expired.increment(removed as u64);
        if removed > 0 {
            tracing::debug!(removed, "wsguard-metrics: removed inactive clients");
        }
        next_sweep = Instant::now() + interval;
    }
}
