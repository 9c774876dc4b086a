//! A rate limit's counters reported through a metrics registry.

use wsguard_metrics::{MetricsRegistry, RateLimitActions, RateLimitFigures};
use wsguard_rate_limit::RateLimitHandle;
use wsguard_rate_limit::error::{LimitKind, RateLimitAction};

/// Reports the counters of the rate limit behind `limit` through `registry`
/// ([`MetricsRegistry::watch_rate_limit`]): in its snapshot's `rate_limits` and as
/// `wsguard_rate_limited_total{route, limit, action}`, `wsguard_rate_limit_tracked_keys{route}`
/// and the evicted and expired key counters, labelled with the layer's
/// [`route`](wsguard_rate_limit::RateLimitLayer::route) (`""` without one).
///
/// The counters are read when the registry publishes (every second) and on each snapshot;
/// counting the tracked keys reads every shard of the limit's tables, which is cheap next to a
/// second.
///
/// ```
/// use wsguard::config::{MetricsConfig, RateLimitConfig};
/// use wsguard::metrics::MetricsRegistry;
/// use wsguard::rate_limit::RateLimitLayer;
///
/// let registry = MetricsRegistry::new(MetricsConfig::testing());
/// let limit = RateLimitLayer::new(RateLimitConfig::testing()).route("/ws");
/// wsguard::watch_rate_limit(&registry, limit.handle());
/// let snapshot = registry.snapshot();
/// assert_eq!(snapshot.rate_limits[0].route, "/ws");
/// assert_eq!(snapshot.rate_limits[0].figures.limited.total(), 0);
/// ```
pub fn watch_rate_limit(registry: &MetricsRegistry, limit: RateLimitHandle) {
    let route = limit.stats().route.unwrap_or_else(|| "".into());
    registry.watch_rate_limit(route, move || figures(&limit));
}

fn figures(limit: &RateLimitHandle) -> RateLimitFigures {
    let stats = limit.stats();
    let mut figures = RateLimitFigures::default();
    for (kind, action, count) in stats.limited_by_limit_and_action() {
        let actions: &mut RateLimitActions = match kind {
            LimitKind::Messages => &mut figures.limited.messages,
            LimitKind::Bytes => &mut figures.limited.bytes,
            // `LimitKind` may grow; today this is `LargerThanBurst`.
            _ => &mut figures.limited.larger_than_burst,
        };
        match action {
            RateLimitAction::Drop => actions.drop = count,
            RateLimitAction::ErrorFrame => actions.error_frame = count,
            RateLimitAction::Close => actions.close = count,
        }
    }
    figures.tracked_keys = u64::try_from(stats.tracked_keys).unwrap_or(u64::MAX);
    figures.evicted = stats.evicted;
    figures.expired = stats.expired;
    figures
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt, service_fn};
    use wsguard_config::RateLimitConfig;
    use wsguard_rate_limit::RateLimitLayer;

    use super::*;

    #[tokio::test]
    async fn every_refusal_lands_under_its_limit_and_action() {
        let config = RateLimitConfig {
            messages_per_second: 0,
            bytes_per_second: 1,
            bytes_burst: 4,
            on_limit: RateLimitAction::ErrorFrame,
            cleanup_interval: Duration::from_secs(3600),
            ..RateLimitConfig::testing()
        };
        let layer = RateLimitLayer::new(config).route("/chat");
        let svc = layer.layer(service_fn(
            |s: String| async move { Ok::<_, std::io::Error>(s) },
        ));
        svc.clone().oneshot("abcd".to_owned()).await.unwrap();
        // The burst is spent: refused by the byte limit; then a payload that never fits.
        assert!(svc.clone().oneshot("ab".to_owned()).await.is_err());
        assert!(svc.clone().oneshot("abcdef".to_owned()).await.is_err());

        let registry = MetricsRegistry::new(wsguard_config::MetricsConfig::testing());
        watch_rate_limit(&registry, layer.handle());
        let snapshot = registry.snapshot();
        let reported = &snapshot.rate_limits[0];
        assert_eq!(reported.route, "/chat");
        assert_eq!(reported.figures.limited.bytes.error_frame, 1);
        assert_eq!(reported.figures.limited.larger_than_burst.error_frame, 1);
        assert_eq!(reported.figures.limited.total(), 2);
        assert_eq!(reported.figures.tracked_keys, 1);
    }
}
