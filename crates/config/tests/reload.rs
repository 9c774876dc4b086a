//! Behaviour tests of wsguard-config: reload.
use std::time::Duration;

use wsguard_config::{ConfigHandle, ConfigSource, DedupConfig, StabilityConfig};

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
    assert_eq!(handle.refused(), 1);
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

#[cfg(feature = "load")]
#[test]
fn reload_refuses_a_file_that_sets_no_field_which_startup_accepts() {
    use wsguard_config::{ConfigLoader, LoadError, Preset};

    const RUNNING: &str = "[connection]\nmax_connections = 500\n[dedup]\nenabled = false\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsguard.toml");
    let loader = ConfigLoader::new()
        .without_env()
        .preset(Preset::Development)
        .file(&path);
    std::fs::write(&path, RUNNING).unwrap();
    let handle = ConfigHandle::new(loader.load().unwrap()).unwrap();
    let running = handle.get();

    let texts = [
        "",
        " \n\t\n",
        "# every default\n",
        "[dedup]\n[connection]\n",
    ];
    for (refused, text) in (1..).zip(texts) {
        std::fs::write(&path, text).unwrap();
        assert_eq!(loader.load().unwrap(), StabilityConfig::development());
        let err = handle.reload(&loader).unwrap_err();
        assert!(matches!(err, LoadError::Empty { .. }), "{text:?}: {err}");
        assert!(err.to_string().contains("sets no field"), "{err}");
        assert_eq!(
            handle.get(),
            running,
            "{text:?} replaced the running config"
        );
        assert_eq!(handle.refused(), refused);
    }

    std::fs::write(&path, "[connection]\nmax_connections = 700\n").unwrap();
    handle.reload(&loader).unwrap();
    assert_eq!(handle.get().connection.max_connections, 700);
}
