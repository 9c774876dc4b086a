//! Behaviour tests of wsguard-config: reload.
use std::time::Duration;

use wsguard_config::{ConfigHandle, ConfigLoader, ConfigSource, DedupConfig, StabilityConfig};

#[test]
fn handle_refuses_an_invalid_initial_config() {
    let mut config = StabilityConfig::default();
    config.dedup.max_entries = 0;
    assert!(ConfigHandle::new(config).is_err());
}

#[tokio::test]
async fn valid_update_is_seen_by_readers_and_subscribers() {
    let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let reader = handle.clone();
    let section: ConfigSource<DedupConfig> = (&handle).into();
    let mut changes = handle.subscribe();
    let before = section.generation();

    let mut next = StabilityConfig::testing();
    next.dedup.ttl = Duration::from_secs(42);
    handle.update(next.clone()).unwrap();

    assert_eq!(reader.load().dedup.ttl, Duration::from_secs(42));
    assert_eq!(section.with(|d| d.ttl), Duration::from_secs(42));
    assert_ne!(section.generation(), before);
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("subscriber woken")
        .unwrap();
    assert_eq!(**changes.borrow_and_update(), next);
}

#[test]
fn invalid_update_is_refused_and_the_old_config_kept() {
    let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let changes = handle.subscribe();
    let generation = handle.generation();

    let mut bad = StabilityConfig::testing();
    bad.dedup.ttl = Duration::ZERO;
    bad.metrics.sample_rate = -1.0;
    let err = handle.update(bad).unwrap_err();

    assert!(err.has("dedup.ttl") && err.has("metrics.sample_rate"));
    assert_eq!(**handle.load(), StabilityConfig::testing());
    assert_eq!(handle.generation(), generation);
    assert!(
        !changes.has_changed().unwrap(),
        "subscribers not woken by a refused update"
    );
}

#[test]
fn equal_update_changes_nothing() {
    let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let generation = handle.generation();
    handle.update(StabilityConfig::testing()).unwrap();
    assert_eq!(handle.generation(), generation);
}

#[test]
fn fixed_source_never_changes() {
    let source: ConfigSource<DedupConfig> = DedupConfig::testing().into();
    assert_eq!(source.generation(), 0);
    assert!(source.handle().is_none());
    assert_eq!(source.get(), DedupConfig::testing());
}

#[tokio::test]
async fn file_watch_picks_up_a_real_change_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsguard.toml");
    std::fs::write(&path, "[dedup]\nttl = \"10s\"\n").unwrap();
    let loader = ConfigLoader::new()
        .without_env()
        .preset(wsguard_config::Preset::Testing)
        .file(&path);
    let handle = ConfigHandle::new(loader.load().unwrap()).unwrap();
    let mut changes = handle.subscribe();
    let _watch = handle.watch_file(&path, loader).unwrap();

    // A refused change first: invalid, so nothing is published and the running config stays.
    std::fs::write(&path, "[dedup]\nttl = \"0s\"\n").unwrap();
    // Then a valid one, which must arrive (the refused one never does).
    std::fs::write(&path, "[dedup]\nttl = \"20s\"\n").unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            changes.changed().await.unwrap();
            let ttl = changes.borrow_and_update().dedup.ttl;
            assert_ne!(
                ttl,
                Duration::ZERO,
                "an invalid file must never be published"
            );
            if ttl == Duration::from_secs(20) {
                return ttl;
            }
        }
    })
    .await
    .expect("file change picked up within 10 s");
    assert_eq!(seen, Duration::from_secs(20));
    assert_eq!(handle.load().dedup.ttl, Duration::from_secs(20));
}
