use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

#[cfg(feature = "load")]
use crate::load::{ConfigLoader, FileUse, LoadError};
use crate::{
    CircuitBreakerConfig, ConnectionConfig, DedupConfig, MetricsConfig, RetryConfig, SessionConfig,
    StabilityConfig, ValidationError,
};

/// A live, validated [`StabilityConfig`] shared by every layer that reads it.
///
/// Cloning is cheap (one `Arc`). Readers call [`load`](Self::load), which takes no lock;
/// [`update`](Self::update) validates a new config and swaps it in, or refuses it and keeps the
/// running one. Subscribers await changes through [`subscribe`](Self::subscribe).
///
/// ```
/// use wsguard_config::{ConfigHandle, StabilityConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = ConfigHandle::new(StabilityConfig::development()).unwrap();
/// let mut changes = handle.subscribe();
/// handle.update(StabilityConfig::production()).unwrap();
/// changes.changed().await.unwrap();
/// assert_eq!(**changes.borrow(), StabilityConfig::production());
/// # }
/// ```
#[derive(Clone)]
pub struct ConfigHandle {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<StabilityConfig>,
    generation: AtomicU64,
    refused: AtomicU64,
    changes: watch::Sender<Arc<StabilityConfig>>,
}

impl fmt::Debug for ConfigHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigHandle")
            .field("generation", &self.generation())
            .field("refused", &self.refused())
            .field("current", &*self.load())
            .finish()
    }
}

impl ConfigHandle {
    /// A handle holding `config`, which must be valid.
    pub fn new(config: StabilityConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        let config = Arc::new(config);
        let (changes, _) = watch::channel(Arc::clone(&config));
        Ok(Self {
            shared: Arc::new(Shared {
                current: ArcSwap::new(config),
                generation: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                changes,
            }),
        })
    }

    /// The running config, without taking a lock. Hold the guard briefly.
    pub fn load(&self) -> Guard<Arc<StabilityConfig>> {
        self.shared.current.load()
    }

    /// The running config as an owned `Arc`.
    pub fn get(&self) -> Arc<StabilityConfig> {
        self.shared.current.load_full()
    }

    /// Counts accepted updates; a reader that caches something derived from the config compares
    /// it to know when to rebuild (one relaxed atomic load).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Counts refused changes: invalid updates, and reloads or file changes that did not load.
    /// Each one kept the running config.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Acquire)
    }

    /// Validates `new` and swaps it in. If it is invalid the running config is kept and every
    /// problem is returned. An update equal to the running config changes nothing.
    pub fn update(&self, new: StabilityConfig) -> Result<(), ValidationError> {
        if let Err(err) = new.validate() {
            self.shared.refused.fetch_add(1, Ordering::AcqRel);
            return Err(err);
        }
        self.swap(new);
        Ok(())
    }

    /// Swaps in a validated config.
    fn swap(&self, new: StabilityConfig) {
        if **self.shared.current.load() == new {
            return;
        }
        let new = Arc::new(new);
        self.shared.current.store(Arc::clone(&new));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.shared.changes.send_replace(new);
        tracing::info!(
            generation = self.generation(),
            "wsguard configuration updated"
        );
    }

    /// A receiver that wakes on every accepted update.
    pub fn subscribe(&self) -> watch::Receiver<Arc<StabilityConfig>> {
        self.shared.changes.subscribe()
    }
}

#[cfg(feature = "load")]
impl ConfigHandle {
    /// Loads `loader`'s result and swaps it in; on any error the running config is kept.
    ///
    /// Unlike [`ConfigLoader::load`], a reload refuses a file that sets no field (empty, blank, or
    /// only comments) with [`LoadError::Empty`]: a file caught between truncation and write looks
    /// like that, and would otherwise silently replace every setting with the loader's base.
    #[cfg_attr(docsrs, doc(cfg(feature = "load")))]
    pub fn reload(&self, loader: &ConfigLoader) -> Result<(), LoadError> {
        let loaded = loader
            .read_file()
            .and_then(|text| loader.load_text(text.as_deref(), FileUse::Reload));
        self.apply(loaded)
    }

    /// Swaps in a loaded config; an error is counted as refused and the running config kept.
    pub(crate) fn apply(
        &self,
        loaded: Result<StabilityConfig, LoadError>,
    ) -> Result<(), LoadError> {
        match loaded {
            Ok(config) => {
                self.swap(config);
                Ok(())
            }
            Err(err) => {
                self.shared.refused.fetch_add(1, Ordering::AcqRel);
                Err(err)
            }
        }
    }
}

/// A part of [`StabilityConfig`] that one layer reads.
pub trait Section: fmt::Debug + Clone + Send + Sync + 'static {
    /// This part of `config`.
    fn of(config: &StabilityConfig) -> &Self;
}

macro_rules! section {
    ($($ty:ty => $field:ident),* $(,)?) => {$(
        impl Section for $ty {
            fn of(config: &StabilityConfig) -> &Self {
                &config.$field
            }
        }
    )*};
}

section! {
    MetricsConfig => metrics,
    CircuitBreakerConfig => circuit_breaker,
    DedupConfig => dedup,
    ConnectionConfig => connection,
    SessionConfig => session,
    RetryConfig => retry,
}

/// Where a layer reads its part of the configuration: a fixed value or a live [`ConfigHandle`].
///
/// Layer constructors take `impl Into<ConfigSource<T>>`, so both a plain config and a handle work.
///
/// ```
/// use wsguard_config::{ConfigHandle, ConfigSource, DedupConfig, StabilityConfig};
///
/// let fixed: ConfigSource<DedupConfig> = DedupConfig::testing().into();
/// assert_eq!(fixed.with(|d| d.ttl.as_secs()), 1);
///
/// let handle = ConfigHandle::new(StabilityConfig::testing()).unwrap();
/// let live: ConfigSource<DedupConfig> = handle.clone().into();
/// let mut next = StabilityConfig::testing();
/// next.dedup.ttl = std::time::Duration::from_secs(9);
/// handle.update(next).unwrap();
/// assert_eq!(live.with(|d| d.ttl.as_secs()), 9);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigSource<T> {
    inner: SourceInner<T>,
}

#[derive(Debug, Clone)]
enum SourceInner<T> {
    Fixed(Arc<T>),
    Live(ConfigHandle),
}

impl<T: Section> ConfigSource<T> {
    /// A source that never changes.
    pub fn fixed(config: T) -> Self {
        Self {
            inner: SourceInner::Fixed(Arc::new(config)),
        }
    }

    /// A source that follows `handle`.
    pub fn live(handle: ConfigHandle) -> Self {
        Self {
            inner: SourceInner::Live(handle),
        }
    }

    /// Runs `f` on the current value, without taking a lock.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        match &self.inner {
            SourceInner::Fixed(config) => f(config),
            SourceInner::Live(handle) => f(T::of(&handle.load())),
        }
    }

    /// A copy of the current value.
    pub fn get(&self) -> T {
        self.with(T::clone)
    }

    /// Changes whenever the value may have changed (always 0 for a fixed source).
    pub fn generation(&self) -> u64 {
        match &self.inner {
            SourceInner::Fixed(_) => 0,
            SourceInner::Live(handle) => handle.generation(),
        }
    }

    /// The handle behind a live source.
    pub fn handle(&self) -> Option<&ConfigHandle> {
        match &self.inner {
            SourceInner::Fixed(_) => None,
            SourceInner::Live(handle) => Some(handle),
        }
    }
}

impl<T: Section> From<T> for ConfigSource<T> {
    fn from(config: T) -> Self {
        Self::fixed(config)
    }
}

impl<T: Section> From<ConfigHandle> for ConfigSource<T> {
    fn from(handle: ConfigHandle) -> Self {
        Self::live(handle)
    }
}

impl<T: Section> From<&ConfigHandle> for ConfigSource<T> {
    fn from(handle: &ConfigHandle) -> Self {
        Self::live(handle.clone())
    }
}
