//! State shared by a layer and every service it builds: config, store, derived keys, counters.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use wsguard_config::{ConfigSource, DedupConfig, FailureMode};
use wsguard_policy::{Reason, Rejection};

use crate::error::{Duplicate, StoreError, StoreUnavailable};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::key::message_key;
use crate::request::DedupRequest;
use crate::stats::Counters;
use crate::store::{Claim, DedupStore};

/// Explicit ids going to a shared store are hashed with this public key when no
/// `fingerprint_key` is configured, so that every node derives the same store key.
const SHARED_ID_KEY: [u8; 16] = *b"wsguard-dedup-id";

pub(crate) struct Shared {
    pub(crate) config: ConfigSource<DedupConfig>,
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) counters: Counters,
    derived: ArcSwap<Derived>,
}

/// What is derived from the config and cached until the config changes.
struct Derived {
    generation: u64,
    content: Fingerprinter,
    ids: Fingerprinter,
}

impl Derived {
    fn build(generation: u64, config: &DedupConfig, shared_store: bool) -> Self {
        let content = Fingerprinter::from_config(config);
        let ids = match config.fingerprint_key_bytes() {
            None if shared_store => Fingerprinter::new(SHARED_ID_KEY, false),
            _ => content.clone(),
        };
        Self {
            generation,
            content,
            ids,
        }
    }
}

/// What `call` decided before the store answered.
pub(crate) struct Check {
    pub(crate) key: Fingerprint,
    pub(crate) ttl: Duration,
    pub(crate) release: bool,
}

/// What to do with a request once the store answered.
pub(crate) enum Admit {
    /// Call the inner service, holding the guard (if the key is to be released on failure).
    Call(Option<ClaimGuard>),
    /// Do not call it.
    Reject(Rejection),
}

impl Shared {
    pub(crate) fn new(config: ConfigSource<DedupConfig>, store: Arc<dyn DedupStore>) -> Self {
        let generation = config.generation();
        let derived = config.with(|cfg| {
            store.configure(cfg);
            Derived::build(generation, cfg, store.is_shared())
        });
        Self {
            config,
            store,
            counters: Counters::default(),
            derived: ArcSwap::from_pointee(derived),
        }
    }

    /// The key of `req`, or `None` if it passes unchecked.
    pub(crate) fn check<R: DedupRequest>(&self, req: &R) -> Option<Check> {
        // Read the generation first: a config newer than it only causes one more rebuild.
        let generation = self.config.generation();
        self.config.with(|cfg| {
            if !cfg.enabled {
                return None;
            }
            let mut derived = self.derived.load();
            if derived.generation != generation {
                self.store.configure(cfg);
                self.derived.store(Arc::new(Derived::build(
                    generation,
                    cfg,
                    self.store.is_shared(),
                )));
                derived = self.derived.load();
            }
            let key = message_key(req, cfg, &derived.content, &derived.ids)?;
            Counters::bump(&self.counters.checked);
            Some(Check {
                key,
                ttl: cfg.ttl,
                release: cfg.release_on_failure,
            })
        })
    }

    pub(crate) fn admit(
        self: &Arc<Self>,
        check: &Check,
        answer: Result<Claim, StoreError>,
    ) -> Admit {
        match answer {
            Ok(Claim::Fresh) => Admit::Call(check.release.then(|| ClaimGuard {
                shared: Arc::clone(self),
                key: check.key,
                armed: true,
            })),
            Ok(Claim::Duplicate { age }) => {
                Counters::bump(&self.counters.duplicates);
                {
                    let status = self.config.with(|cfg| cfg.duplicate_status);
                    Admit::Reject(
                        Rejection::new(Reason::Duplicate, Duplicate { age }).with_status(status),
                    )
                }
            }
            Err(error) => {
                let n = Counters::bump(&self.counters.store_errors);
                match self.config.with(|cfg| cfg.store.redis.on_error) {
                    FailureMode::FailOpen => {
                        // Every power of two: a dead store must not flood the log.
                        if n.is_power_of_two() {
                            tracing::warn!(store_errors = n, %error, "dedup store failed; delivering unchecked (fail open)");
                        }
                        Admit::Call(None)
                    }
                    FailureMode::FailClosed => {
                        Counters::bump(&self.counters.rejected_unavailable);
                        if n.is_power_of_two() {
                            tracing::warn!(store_errors = n, %error, "dedup store failed; rejecting (fail closed)");
                        }
                        Admit::Reject(Rejection::new(Reason::Unavailable, StoreUnavailable(error)))
                    }
                }
            }
        }
    }
}

/// A claimed key: released when dropped armed (the call failed or never finished).
pub(crate) struct ClaimGuard {
    shared: Arc<Shared>,
    key: Fingerprint,
    armed: bool,
}

impl ClaimGuard {
    /// The call succeeded: keep the key.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard")
            .field("key", &self.key)
            .field("armed", &self.armed)
            .finish()
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.armed {
            Counters::bump(&self.shared.counters.released);
            self.shared.store.release(self.key);
        }
    }
}
