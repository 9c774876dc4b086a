//! Behaviour tests of wsguard-config: following a file.
#![cfg(feature = "watch")]
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use wsguard_config::{ConfigHandle, ConfigLoader, FileWatcher, Preset};

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
