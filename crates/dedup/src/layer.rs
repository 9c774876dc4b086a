use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use wsguard_config::{ConfigSource, DedupConfig};

use crate::policy::BoxErrors;
use crate::service::Dedup;
use crate::shared::Shared;
use crate::stats::{DedupHandle, DedupStats};
use crate::store::{DedupStore, MemoryStore};

/// Applies [`Dedup`] to a service: a request whose key was seen within `ttl` never reaches it.
///
/// The window lives in the layer: every service built by [`Layer::layer`] (axum builds one per
/// route and clones it per request) shares it, and so do the layer's clones.
///
/// `P` decides what a duplicate turns into: [`BoxErrors`] (the default, [`DedupLayer::new`]) or
/// [`HttpStatus`](crate::policy::HttpStatus) ([`DedupLayer::http`]).
#[derive(Clone)]
pub struct DedupLayer<P = BoxErrors> {
    shared: Arc<Shared>,
    policy: P,
}

impl<P: fmt::Debug> fmt::Debug for DedupLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("store", &self.shared.store)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl DedupLayer {
    /// A layer reading `config` (fixed, or live through a `ConfigHandle`), with a
    /// [`MemoryStore`] sized by `max_entries`; for Redis, add
    /// [`with_store`](Self::with_store). A duplicate is the error [`Duplicate`](crate::error::Duplicate)
    /// (a `BoxError`).
    pub fn new(config: impl Into<ConfigSource<DedupConfig>>) -> Self {
        Self::with_policy_and_config(config.into(), BoxErrors)
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl DedupLayer<crate::policy::HttpStatus> {
    /// For HTTP services: the inner error type is kept, a duplicate is answered with
    /// `duplicate_status` (default `409 Conflict`), and `5xx` responses release the key. Use
    /// `key = "header"` (for example `Idempotency-Key`): request bodies are not read.
    pub fn http(config: impl Into<ConfigSource<DedupConfig>>) -> Self {
        Self::with_policy_and_config(config.into(), crate::policy::HttpStatus)
    }
}

impl<P> DedupLayer<P> {
    fn with_policy_and_config(config: ConfigSource<DedupConfig>, policy: P) -> Self {
        let store = Arc::new(config.with(MemoryStore::from_config));
        Self {
            shared: Arc::new(Shared::new(config, store)),
            policy,
        }
    }

    /// Uses `store` for the window (for example a `RedisStore`). Call it before building
    /// services: services built earlier keep the previous store.
    pub fn with_store(self, store: impl DedupStore) -> Self {
        self.with_shared_store(Arc::new(store))
    }

    /// Connects the store that `store.backend` names: for `redis`, a
    /// [`RedisStore`](crate::store::RedisStore) from `store.redis`; for `memory`, the layer is
    /// returned as it is. Fails if Redis cannot be reached.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn connect_store(self) -> Result<Self, crate::error::StoreError> {
        let (backend, redis) = self
            .shared
            .config
            .with(|cfg| (cfg.store.backend, cfg.store.redis.clone()));
        match backend {
            wsguard_config::StoreBackend::Memory => Ok(self),
            wsguard_config::StoreBackend::Redis => {
                let store = crate::store::RedisStore::connect(&redis).await?;
                Ok(self.with_store(store))
            }
        }
    }

    /// Uses a store that other layers use too: they then share one window.
    pub fn with_shared_store(self, store: Arc<dyn DedupStore>) -> Self {
        Self {
            shared: Arc::new(Shared::new(self.shared.config.clone(), store)),
            policy: self.policy,
        }
    }

    /// Uses `policy` to turn rejections into output and to classify failures.
    pub fn with_policy<Q>(self, policy: Q) -> DedupLayer<Q> {
        DedupLayer {
            shared: self.shared,
            policy,
        }
    }

    /// A handle on the counters and the store, shared with every service of this layer.
    pub fn handle(&self) -> DedupHandle {
        DedupHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> DedupStats {
        self.handle().stats()
    }
}

impl<S, P: Clone> Layer<S> for DedupLayer<P> {
    type Service = Dedup<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::from_parts(inner, Arc::clone(&self.shared), self.policy.clone())
    }
}
