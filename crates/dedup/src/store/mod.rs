//! Where the window of remembered keys lives.
//!
//! [`MemoryStore`] is the embedded default; `RedisStore` (feature `redis`) shares one window
//! between several nodes. Any other backend plugs in by implementing [`DedupStore`].

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use wsguard_config::DedupConfig;

use crate::error::StoreError;
use crate::fingerprint::Fingerprint;

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;

/// The answer of [`DedupStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key was not in the window and is now remembered: deliver the message.
    Fresh,
    /// The key is already in the window: drop the message.
    Duplicate {
        /// How long ago the key was first seen.
        age: Duration,
    },
}

/// A window of remembered keys.
///
/// `claim` must be an atomic check-and-insert: of two racing claims of the same key exactly one
/// is [`Claim::Fresh`]. A store that answers without waiting returns [`ClaimFuture::ready`], and
/// [`Dedup`](crate::Dedup) then decides inside `call` without touching the inner service's
/// readiness; a store that waits (on a network) returns [`ClaimFuture::boxed`].
pub trait DedupStore: fmt::Debug + Send + Sync + 'static {
    /// Remembers `key` for `ttl` unless it is already remembered.
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture;

    /// Forgets `key`, so the next claim of it is fresh. Called when the inner service failed or
    /// its response future was dropped; must not block (spawn if it has to wait).
    fn release(&self, key: Fingerprint);

    /// Whether several processes share this store. Keys built from explicit ids (JSON field,
    /// header) are then hashed with a fixed key when no `fingerprint_key` is configured, so
    /// that every node computes the same key.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the settings that may change at run time (such as `max_entries`). Called once
    /// when the layer is built and again after each live configuration change.
    fn configure(&self, config: &DedupConfig) {
        let _ = config;
    }

    /// How many live keys were evicted so far to respect a size bound; [`DedupStats::evictions`]
    /// reports it.
    ///
    /// [`DedupStats::evictions`]: crate::DedupStats::evictions
    fn evictions(&self) -> u64 {
        0
    }

    /// How many keys are remembered now, or `None` if the store cannot count them cheaply (a
    /// shared store would have to ask the network); [`DedupStats::remembered`] reports it.
    ///
    /// Not `len`: not every store can count, while [`MemoryStore::len`] always does and returns
    /// a plain `usize`.
    ///
    /// [`DedupStats::remembered`]: crate::DedupStats::remembered
    fn remembered(&self) -> Option<usize> {
        None
    }
}

/// A store shared by several layers (they share one window).
impl<T: DedupStore + ?Sized> DedupStore for Arc<T> {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        (**self).claim(key, ttl)
    }

    fn release(&self, key: Fingerprint) {
        (**self).release(key)
    }

    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }

    fn configure(&self, config: &DedupConfig) {
        (**self).configure(config)
    }

    fn evictions(&self) -> u64 {
        (**self).evictions()
    }

    fn remembered(&self) -> Option<usize> {
        (**self).remembered()
    }
}

/// The boxed future of a store that waits.
pub type BoxClaimFuture = Pin<Box<dyn Future<Output = Result<Claim, StoreError>> + Send>>;

/// The answer of [`DedupStore::claim`]: ready at once, or a future.
pub struct ClaimFuture {
    inner: ClaimInner,
}

enum ClaimInner {
    Ready(Option<Result<Claim, StoreError>>),
    Boxed(BoxClaimFuture),
}

impl ClaimFuture {
    /// An answer known at once.
    pub fn ready(result: Result<Claim, StoreError>) -> Self {
        Self {
            inner: ClaimInner::Ready(Some(result)),
        }
    }

    /// An answer that needs waiting.
    pub fn boxed<F>(future: F) -> Self
    where
        F: Future<Output = Result<Claim, StoreError>> + Send + 'static,
    {
        Self {
            inner: ClaimInner::Boxed(Box::pin(future)),
        }
    }

    /// The answer if it is known at once, else the future to wait on.
    pub(crate) fn into_ready(self) -> Result<Result<Claim, StoreError>, BoxClaimFuture> {
        match self.inner {
            ClaimInner::Ready(Some(result)) => Ok(result),
            ClaimInner::Ready(None) => Ok(Err(StoreError::new("claim polled after completion"))),
            ClaimInner::Boxed(future) => Err(future),
        }
    }
}

impl fmt::Debug for ClaimFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            ClaimInner::Ready(r) => f.debug_tuple("ClaimFuture::Ready").field(r).finish(),
            ClaimInner::Boxed(_) => f.write_str("ClaimFuture::Boxed"),
        }
    }
}

impl Future for ClaimFuture {
    type Output = Result<Claim, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            ClaimInner::Ready(r) => Poll::Ready(
                r.take()
                    .unwrap_or_else(|| Err(StoreError::new("claim polled after completion"))),
            ),
            ClaimInner::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}
