//! Behaviour tests of wsguard-config: reload.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use wsguard_config::{
    ConfigHandle, ConfigLoader, ConfigSource, DedupConfig, FileWatcher, LoadError, Preset,
    StabilityConfig,
};

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

/// The running file of the watch tests: it differs from the development base in the two settings
/// the issue saw lost (connection limit, dedup off).
const RUNNING: &str = "[connection]\nmax_connections = 500\n[dedup]\nenabled = false\n";

struct Watched {
    path: PathBuf,
    handle: ConfigHandle,
    _watch: FileWatcher,
    _dir: TempDir,
}

fn watched(text: &str) -> Watched {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsguard.toml");
    std::fs::write(&path, text).unwrap();
    let loader = ConfigLoader::new()
        .without_env()
        .preset(Preset::Development)
        .file(&path);
    let handle = ConfigHandle::new(loader.load().unwrap()).unwrap();
    let watch = handle.watch_file(&path, loader).unwrap();
    Watched {
        path,
        handle,
        _watch: watch,
        _dir: dir,
    }
}

/// Waits for `done`, failing after 10 s: the watcher reacts to real file events, so the wait is
/// real, but bounded.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

#[tokio::test]
async fn invalid_config_written_in_place_by_a_slow_writer_never_replaces_the_running_one() {
    let w = watched(RUNNING);
    let running = w.handle.get();
    let generation = w.handle.generation();
    let changes = w.handle.subscribe();

    // A slow `open("w")`: truncation, a pause until the watcher has read the empty file, the write.
    let mut file = std::fs::File::create(&w.path).unwrap();
    eventually("the empty file refused", || w.handle.refused() >= 1).await;
    file.write_all(b"[connection]\nmax_connections = 0\n")
        .unwrap();
    drop(file);
    eventually("the invalid file refused", || w.handle.refused() >= 2).await;

    assert_eq!(w.handle.get(), running);
    assert_eq!(w.handle.generation(), generation);
    assert!(!changes.has_changed().unwrap(), "no change published");
}

#[tokio::test]
async fn invalid_config_written_in_place_in_one_go_is_refused() {
    let w = watched(RUNNING);
    let running = w.handle.get();
    let changes = w.handle.subscribe();

    std::fs::write(&w.path, "[connection]\nmax_connections = 0\n").unwrap();
    eventually("the invalid file refused", || w.handle.refused() >= 1).await;

    assert_eq!(w.handle.get(), running);
    assert_eq!(w.handle.generation(), 0);
    assert!(!changes.has_changed().unwrap(), "no change published");
}

#[tokio::test]
async fn valid_config_written_in_place_by_a_slow_writer_is_applied_once() {
    let w = watched(RUNNING);
    let mut changes = w.handle.subscribe();

    let mut file = std::fs::File::create(&w.path).unwrap();
    eventually("the empty file refused", || w.handle.refused() >= 1).await;
    file.write_all(b"[connection]\nmax_connections = 700\n[dedup]\nenabled = false\n")
        .unwrap();
    drop(file);
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the new file applied within 10 s")
        .unwrap();

    let applied = changes.borrow_and_update().clone();
    assert_eq!(applied.connection.max_connections, 700);
    assert!(!applied.dedup.enabled);
    assert_eq!(w.handle.generation(), 1, "only the finished file applied");
}

#[tokio::test]
async fn file_truncated_to_empty_keeps_the_running_config() {
    let w = watched(RUNNING);
    let running = w.handle.get();
    let changes = w.handle.subscribe();

    drop(std::fs::File::create(&w.path).unwrap());
    eventually("the empty file refused", || w.handle.refused() >= 1).await;

    assert_eq!(w.handle.get(), running);
    assert_eq!(w.handle.get().connection.max_connections, 500);
    assert_eq!(w.handle.generation(), 0);
    assert!(!changes.has_changed().unwrap(), "no change published");
}

#[tokio::test]
async fn file_renamed_over_the_config_is_refused_when_invalid_and_applied_when_valid() {
    let w = watched(RUNNING);
    let mut changes = w.handle.subscribe();
    let rename_over = |text: &str| {
        let temp = w.path.with_extension("toml.tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &w.path).unwrap();
    };

    rename_over("[connection]\nmax_connections = 0\n");
    eventually("the invalid file refused", || w.handle.refused() >= 1).await;
    assert_eq!(w.handle.generation(), 0);

    rename_over("[connection]\nmax_connections = 700\n");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the renamed file applied within 10 s")
        .unwrap();
    assert_eq!(changes.borrow_and_update().connection.max_connections, 700);
    assert_eq!(w.handle.generation(), 1);
}

#[test]
fn reload_refuses_a_file_that_sets_no_field_which_startup_accepts() {
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
