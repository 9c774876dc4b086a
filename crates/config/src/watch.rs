use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::ConfigHandle;
use crate::load::{ConfigLoader, FileUse, LoadError};

/// How long a watched file must go without events before it is read: long enough for a writer's
/// truncate, write and close to land as one change, short enough that an edit applies at once.
const SETTLE: Duration = Duration::from_millis(200);

impl ConfigHandle {
    /// Reloads `loader` (usually [`ConfigLoader::file`] plus the environment) whenever the file
    /// at `path` changes, until the returned [`FileWatcher`] is dropped. A change that does not load
    /// or validate is refused: its errors are logged through `tracing`, counted in
    /// [`refused`](Self::refused), and the running config kept.
    ///
    /// A burst of events is read once, 200 ms after its last event, so a writer's truncate and
    /// write arrive together. As in [`reload`](Self::reload), a file that sets no field is never
    /// applied, so a writer pausing between truncation and write leaves the running config in
    /// place; the file is also read twice and applied only if both reads agree. A writer that
    /// pauses mid-write for longer than that can still expose a valid prefix of its file: write
    /// a temporary file and rename it over the config, which is atomic and works because the
    /// directory holding the file is watched, not the file itself.
    #[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
    pub fn watch_file(
        &self,
        path: impl AsRef<Path>,
        loader: ConfigLoader,
    ) -> Result<FileWatcher, notify::Error> {
        use notify::{EventKind, RecursiveMode, Watcher};

        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().map(ToOwned::to_owned);
        let shown = path.display().to_string();
        let (signals, received) = mpsc::channel();
        let on_event = signals.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event)
                    if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_))
                        && event.paths.iter().any(|p| p.file_name() == name.as_deref()) =>
                {
                    let _ = on_event.send(Signal::Changed);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(file = %shown, error = %err, "wsguard config watch error");
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let handle = self.clone();
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("wsguard-config-watch".to_owned())
            .spawn(move || handle.follow(&loader, &received, &shown))
            .map_err(notify::Error::io)?;
        Ok(FileWatcher {
            _watcher: watcher,
            signals,
            path,
        })
    }

    /// Reloads once per settled burst of file events, until told to stop.
    fn follow(&self, loader: &ConfigLoader, received: &Receiver<Signal>, shown: &str) {
        while let Ok(Signal::Changed) = received.recv() {
            loop {
                match received.recv_timeout(SETTLE) {
                    Ok(Signal::Changed) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if let Some(Err(err)) = self.reload_settled(loader, || loader.read_file()) {
                tracing::warn!(
                    file = %shown,
                    "wsguard configuration change refused, running config kept: {err}"
                );
            }
        }
    }

    /// [`reload`](Self::reload) with the file's text from `read`, called a second time after
    /// loading: if the two reads differ the file is still being written, nothing is applied
    /// (`None`), and the write's own event brings another reload.
    fn reload_settled(
        &self,
        loader: &ConfigLoader,
        mut read: impl FnMut() -> Result<Option<String>, LoadError>,
    ) -> Option<Result<(), LoadError>> {
        let text = match read() {
            Ok(text) => text,
            Err(err) => return Some(self.apply(Err(err))),
        };
        let loaded = loader.load_text(text.as_deref(), FileUse::Reload);
        match read() {
            Ok(again) if again != text => None,
            Ok(_) => Some(self.apply(loaded)),
            Err(err) => Some(self.apply(Err(err))),
        }
    }
}

enum Signal {
    Changed,
    Stop,
}

/// Keeps a file watch of [`ConfigHandle::watch_file`] alive; dropping it stops watching.
#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    signals: Sender<Signal>,
    path: PathBuf,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        let _ = self.signals.send(Signal::Stop);
    }
}

impl fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWatcher")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StabilityConfig;

    #[test]
    fn file_that_changes_between_its_two_reads_is_not_applied() {
        let loader = ConfigLoader::new().without_env().file("wsguard.toml");
        let handle = ConfigHandle::new(StabilityConfig::default()).unwrap();
        let mut reads = ["[dedup]\nttl = \"1s\"\n", "[dedup]\nttl = \"10s\"\n"].into_iter();
        let outcome = handle.reload_settled(&loader, || Ok(reads.next().map(str::to_owned)));
        assert!(
            outcome.is_none(),
            "a file still being written is left for its next event"
        );
        assert_eq!(handle.generation(), 0);
        assert_eq!(handle.refused(), 0);

        let text = "[dedup]\nttl = \"10s\"\n";
        let outcome = handle.reload_settled(&loader, || Ok(Some(text.to_owned())));
        assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
        assert_eq!(handle.load().dedup.ttl, Duration::from_secs(10));
    }
}
