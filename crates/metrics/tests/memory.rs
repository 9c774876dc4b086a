//! Bytes per tracked client: the target is at most 256.

use wsguard_config::MetricsConfig;
use wsguard_metrics::MetricsRegistry;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn bytes_per_tracked_client_at_most_256() {
    const CLIENTS: usize = 200_000;
    let registry = MetricsRegistry::new(MetricsConfig {
        max_clients: CLIENTS,
        ..MetricsConfig::default()
    });
    // 36-byte ids, as long as a UUID: longer than most peer addresses.
    let ids: Vec<String> = (0..CLIENTS)
        .map(|i| format!("{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let before = resident_bytes();
    let guards: Vec<_> = ids.iter().map(|id| registry.connect(id)).collect();
    let after = resident_bytes();
    assert_eq!(registry.client_count(), CLIENTS);

    // The guards are the connections' own cost (an Arc and a flag each), not the table's.
    let guard_bytes = CLIENTS * std::mem::size_of_val(&guards[0]);
    let estimate = registry.bytes_per_client().unwrap();
    eprintln!(
        "bytes per client: structural estimate {estimate}, resident {} (guards {} B each excluded)",
        (after - before).saturating_sub(guard_bytes) / CLIENTS,
        std::mem::size_of_val(&guards[0])
    );
    assert!(
        estimate <= 256,
        "structural estimate {estimate} B per client"
    );
    if before > 0 {
        let resident = (after - before).saturating_sub(guard_bytes) / CLIENTS;
        assert!(resident <= 256, "resident {resident} B per client");
    }
    drop(guards);
    assert_eq!(registry.client_count(), 0);
}
