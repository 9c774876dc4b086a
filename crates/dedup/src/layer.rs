use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use wsguard_config::{ConfigSource, DedupConfig, StoreBackend};

use wsguard_policy::{DefaultClassifier, ReturnError};

use crate::error::StoreError;
use crate::future::Policies;
use crate::service::Dedup;
use crate::shared::Shared;
use crate::stats::{DedupHandle, DedupStats};
use crate::store::{DedupStore, MemoryStore};

/// Applies [`Dedup`] to a service: a request whose key was seen within `ttl` never reaches it.
///
/// The window lives in the layer: every service built by [`Layer::layer`] (axum builds one per
/// route and clones it per request) shares it, and so do the layer's clones.
///
/// The two policies every wsguard layer takes: the classifier `C` says which outcomes release
/// the key (a call that failed or was rejected further in was not handled, so its retry must
/// pass), and the rejection `R` says what a duplicate or an unavailable store returns:
/// [`DedupLayer::new`] returns the errors [`Duplicate`](crate::error::Duplicate) and
/// [`StoreUnavailable`](crate::error::StoreUnavailable); [`DedupLayer::http`] answers
/// `duplicate_status` (`409` by default) or `503`.
#[derive(Clone)]
pub struct DedupLayer<C = DefaultClassifier, R = ReturnError> {
    shared: Arc<Shared>,
    policies: Policies<C, R>,
}

impl<C, R> fmt::Debug for DedupLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupLayer")
            .field("store", &self.shared.store)
            .field("classifier", &std::any::type_name::<C>())
            .field("rejection", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

impl DedupLayer {
    /// A layer reading `config` (fixed, or live through a `ConfigHandle`), with the store
    /// `store.backend` names: a [`MemoryStore`] sized by `max_entries`, or (feature `redis`) a
    /// [`RedisStore`](crate::store::RedisStore) on `store.redis` (one server at `url`, or the
    /// Redis Cluster of `cluster_nodes` when that is set) that connects in the background
    /// (until it does, the layer fails open or closed as `on_error` says). A duplicate is the
    /// error [`Duplicate`](crate::error::Duplicate) (a `BoxError`).
    ///
    /// # Panics
    ///
    /// If the config names a store this build cannot make (`redis` without the `redis` feature,
    /// or a URL that is not a Redis URL): a server must not run on another store than the one
    /// its config names. [`try_new`](Self::try_new) returns the error instead.
    pub fn new(config: impl Into<ConfigSource<DedupConfig>>) -> Self {
        Self::try_new(config).unwrap_or_else(|error| panic!("{error}"))
    }

    /// As [`new`](Self::new), with an error instead of a panic when the store the config names
    /// cannot be made.
    pub fn try_new(config: impl Into<ConfigSource<DedupConfig>>) -> Result<Self, StoreError> {
        Self::with_policies(config.into(), DefaultClassifier, ReturnError)
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl DedupLayer<wsguard_policy::StatusClassifier, wsguard_policy::RespondWithStatus> {
    /// For HTTP services: the inner error type is kept, a duplicate is answered with
    /// `duplicate_status` (default `409 Conflict`), an unavailable store with `503`, and `5xx`
    /// responses release the key. Use `key = "header"` (for example `Idempotency-Key`): request
    /// bodies are not read. Panics as [`new`](DedupLayer::new) does.
    pub fn http(config: impl Into<ConfigSource<DedupConfig>>) -> Self {
        Self::with_policies(
            config.into(),
            wsguard_policy::StatusClassifier,
            wsguard_policy::RespondWithStatus,
        )
        .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl<C, R> DedupLayer<C, R> {
    fn with_policies(
        config: ConfigSource<DedupConfig>,
        classifier: C,
        rejection: R,
    ) -> Result<Self, StoreError> {
        let store = config.with(store_from_config)?;
        Ok(Self {
            shared: Arc::new(Shared::new(config, store)),
            policies: Policies {
                classifier,
                rejection,
            },
        })
    }

    /// Uses `store` for the window: a `RedisStore`, or an `Arc<dyn DedupStore>` that other
    /// layers use too (they then share one window). Call it before building services: services
    /// built earlier keep the previous store.
    pub fn store(self, store: impl DedupStore) -> Self {
        Self {
            shared: Arc::new(Shared::new(self.shared.config.clone(), Arc::new(store))),
            policies: self.policies,
        }
    }

    /// Connects the store that `store.backend` names now, instead of in the background: for
    /// `redis`, a [`RedisStore`](crate::store::RedisStore) from `store.redis`; for `memory`, the
    /// layer is returned as it is. Fails if Redis cannot be reached: for a server that must not
    /// start without it.
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
                Ok(self.store(store))
            }
        }
    }

    /// Replaces the classifier, which says which outcomes release the key.
    pub fn classifier<C2>(self, classifier: C2) -> DedupLayer<C2, R> {
        DedupLayer {
            shared: self.shared,
            policies: Policies {
                classifier,
                rejection: self.policies.rejection,
            },
        }
    }

    /// Replaces the rejection, which says what a duplicate or an unavailable store returns.
    pub fn rejection<R2>(self, rejection: R2) -> DedupLayer<C, R2> {
        DedupLayer {
            shared: self.shared,
            policies: Policies {
                classifier: self.policies.classifier,
                rejection,
            },
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

/// The store `store.backend` names. A later reload that changes the backend does not move the
/// window: the store is chosen when the layer is built.
fn store_from_config(config: &DedupConfig) -> Result<Arc<dyn DedupStore>, StoreError> {
    match config.store.backend {
        StoreBackend::Memory => Ok(Arc::new(MemoryStore::from_config(config))),
        #[cfg(feature = "redis")]
        StoreBackend::Redis => {
            let redis = &config.store.redis;
            let store = crate::store::RedisStore::lazy(redis).map_err(|e| {
                StoreError::new(if redis.cluster_nodes.is_empty() {
                    format!(
                        "dedup.store.redis.url {:?} is not a Redis URL: {e}",
                        redis.url
                    )
                } else {
                    format!(
                        "dedup.store.redis.cluster_nodes {:?} are not Redis URLs: {e}",
                        redis.cluster_nodes
                    )
                })
            })?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redis"))]
        StoreBackend::Redis => Err(StoreError::new(
            "dedup.store.backend is \"redis\", but wsguard-dedup was built without its `redis` \
             feature: enable it (wsguard's `redis` feature) or use backend = \"memory\"",
        )),
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for DedupLayer<C, R> {
    type Service = Dedup<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::from_parts(inner, Arc::clone(&self.shared), self.policies.clone())
    }
}
