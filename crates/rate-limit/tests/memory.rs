//! Bytes per tracked key, both limits on: the tables hold a 64-bit hashed key and governor's
//! 8-byte state per limit, whatever the length of the client id.

use std::borrow::Cow;

use tower::{Layer, ServiceExt, service_fn};
use wsguard_config::RateLimitConfig;
use wsguard_rate_limit::{RateLimitLayer, RateLimitRequest};

struct Msg(String);

impl RateLimitRequest for Msg {
    fn client_id(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.0))
    }
    fn size(&self) -> Option<u64> {
        Some(100)
    }
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test]
async fn bytes_per_tracked_key_at_most_128_with_both_limits() {
    const KEYS: usize = 200_000;
    let layer = RateLimitLayer::new(RateLimitConfig {
        max_keys: KEYS,
        ..RateLimitConfig::default()
    });
    let svc = layer.layer(service_fn(|_: Msg| async { Ok::<_, std::io::Error>(()) }));
    // 36-byte ids, as long as a UUID; they are hashed, never stored.
    let ids: Vec<String> = (0..KEYS)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let before = resident_bytes();
    for id in &ids {
        svc.clone().oneshot(Msg(id.clone())).await.unwrap();
    }
    let after = resident_bytes();
    let stats = layer.stats();
    assert_eq!(stats.tracked_keys, KEYS);
    assert_eq!(stats.evicted, 0);
    if before > 0 {
        let per_key = (after - before) / KEYS;
        eprintln!("resident bytes per tracked key (two limits): {per_key}");
        assert!(per_key <= 128, "{per_key} B per key");
    }
}
