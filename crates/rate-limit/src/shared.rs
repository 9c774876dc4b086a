//! State shared by a layer and every service it builds: config, limiters, key tables, counters.

use std::future::{Future, poll_fn};
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::{NotUntil, Quota, RateLimiter};
use tokio::sync::oneshot;
use wsguard_config::{ConfigSource, RateLimitAction, RateLimitConfig, RateLimitScope};
use wsguard_policy::{Reason, Rejection};

use crate::clock::TokioClock;
use crate::error::{LimitKind, RateLimited};
use crate::request::RateLimitRequest;
use crate::stats::Counters;
use crate::table::{KeyTable, TableRef};

/// The key of requests that have no id for the configured scope, and of `scope = "global"`;
/// every other key has its low bit set.
const SHARED_KEY: u64 = 0;

type Gcra = RateLimiter<u64, TableRef, TokioClock, NoOpMiddleware<Nanos>>;

/// One limit: governor's keyed GCRA over its own bounded table.
struct Limit {
    rate: u32,
    burst: u32,
    gcra: Gcra,
    table: Arc<KeyTable>,
}

impl Limit {
    fn new(
        rate: u32,
        burst: u32,
        cap: usize,
        clock: TokioClock,
        counters: &Arc<Counters>,
    ) -> Option<Arc<Self>> {
        // A burst of 0 (refused by validation, possible in a config built in code) would let
        // nothing pass; the strictest limit that lets anything through is a burst of 1.
        let burst_cells = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(NonZeroU32::new(rate)?).allow_burst(burst_cells);
        let table = Arc::new(KeyTable::new(cap, Arc::clone(counters)));
        Some(Arc::new(Self {
            rate,
            burst,
            gcra: RateLimiter::new(quota, TableRef(Arc::clone(&table)), clock),
            table,
        }))
    }

    /// This limit if `rate` and `burst` are unchanged (its keys keep their state), else a new one.
    fn keep_or_new(
        old: Option<&Arc<Self>>,
        rate: u32,
        burst: u32,
        cap: usize,
        clock: TokioClock,
        counters: &Arc<Counters>,
    ) -> Option<Arc<Self>> {
        match old {
            Some(limit) if limit.rate == rate && limit.burst == burst => {
                limit.table.set_cap(cap);
                Some(Arc::clone(limit))
            }
            _ => Self::new(rate, burst, cap, clock, counters),
        }
    }
}

/// A service's own view of the derived state: checking it costs a pointer comparison, not the
/// shared `ArcSwap`'s load.
pub(crate) type DerivedCache = arc_swap::Cache<Arc<ArcSwap<Derived>>, Arc<Derived>>;

/// What is derived from the config and cached until the config changes.
pub(crate) struct Derived {
    generation: u64,
    enabled: bool,
    scope: RateLimitScope,
    action: RateLimitAction,
    /// `hold_refused`, zero for `on_limit = "close"`.
    hold: Duration,
    messages: Option<Arc<Limit>>,
    bytes: Option<Arc<Limit>>,
}

/// A call over its limit: what it returns, and how long it is held first (`hold_refused`).
pub(crate) struct Refused {
    pub(crate) rejection: Rejection,
    pub(crate) hold: Option<Duration>,
}

pub(crate) struct Shared {
    config: ConfigSource<RateLimitConfig>,
    clock: TokioClock,
    hasher: RandomState,
    derived: Arc<ArcSwap<Derived>>,
    rebuild: Mutex<()>,
    route: RwLock<Option<Arc<str>>>,
    pub(crate) counters: Arc<Counters>,
    // Dropping it (with the layer's last reference) ends the background sweep.
    _stop_sweep: Option<oneshot::Sender<()>>,
}

impl Shared {
    /// The shared state, and a background sweep if a tokio runtime is running.
    pub(crate) fn new(config: ConfigSource<RateLimitConfig>) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (stop, stopped) = match runtime {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let clock = TokioClock::new();
        let counters = Arc::new(Counters::default());
        // The generation first: a config newer than it only causes one more rebuild.
        let generation = config.generation();
        let derived = config.with(|cfg| derive(generation, cfg, None, clock, &counters));
        let shared = Arc::new(Self {
            config,
            clock,
            hasher: RandomState::new(),
            derived: Arc::new(ArcSwap::from_pointee(derived)),
            rebuild: Mutex::new(()),
            route: RwLock::new(None),
            counters,
            _stop_sweep: stop,
        });
        if let (Some(rt), Some(stopped)) = (runtime, stopped) {
            rt.spawn(sweep_until(Arc::downgrade(&shared), stopped));
        }
        shared
    }

    pub(crate) fn set_route(&self, route: Arc<str>) {
        *self.route.write().unwrap_or_else(PoisonError::into_inner) = Some(route);
    }

    pub(crate) fn route(&self) -> Option<Arc<str>> {
        self.route
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A cache of the derived state for one service.
    pub(crate) fn cache(&self) -> DerivedCache {
        arc_swap::Cache::new(Arc::clone(&self.derived))
    }

    /// The derived state, rebuilt first if the config changed since.
    fn current(&self) -> arc_swap::Guard<Arc<Derived>> {
        let generation = self.config.generation();
        if self.derived.load().generation != generation {
            self.refresh(generation);
        }
        self.derived.load()
    }

    fn refresh(&self, generation: u64) {
        let _one_at_a_time = self.rebuild.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.derived.load_full();
        // Generations only grow: another call may have rebuilt from a newer one meanwhile.
        if old.generation < generation {
            let new = self
                .config
                .with(|cfg| derive(generation, cfg, Some(&old), self.clock, &self.counters));
            self.derived.store(Arc::new(new));
        }
    }

    /// `Ok` if `req` is within its limits (and counts against them), else the refusal.
    #[inline]
    pub(crate) fn check<R: RateLimitRequest>(
        &self,
        cache: &mut DerivedCache,
        req: &R,
    ) -> Result<(), Refused> {
        // Read the generation first: a config newer than it only causes one more rebuild.
        let generation = self.config.generation();
        if cache.load().generation != generation {
            self.refresh(generation);
        }
        let derived = cache.load();
        if !derived.enabled {
            return Ok(());
        }
        let key = self.key(req, derived.scope);
        if let Some(messages) = &derived.messages
            && let Err(not_until) = messages.gcra.check_key(&key)
        {
            return Err(self.refuse(LimitKind::Messages, Some(not_until), derived));
        }
        if let Some(bytes) = &derived.bytes
            && let Some(n) = req
                .size()
                .and_then(|size| NonZeroU32::new(u32::try_from(size).unwrap_or(u32::MAX)))
        {
            match bytes.gcra.check_key_n(&key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(self.refuse(LimitKind::Bytes, Some(not_until), derived));
                }
                Err(_larger_than_burst) => {
                    return Err(self.refuse(LimitKind::LargerThanBurst, None, derived));
                }
            }
        }
        Ok(())
    }

    fn key<R: RateLimitRequest>(&self, req: &R, scope: RateLimitScope) -> u64 {
        let key = match scope {
            RateLimitScope::Client => req
                .client_id()
                .map(|id| self.hasher.hash_one((1u8, id.as_ref()))),
            RateLimitScope::Connection => req
                .connection_id()
                .map(|id| self.hasher.hash_one((2u8, id))),
            RateLimitScope::Global => None,
        };
        key.map_or(SHARED_KEY, |k| k | 1)
    }

    fn refuse(
        &self,
        limit: LimitKind,
        not_until: Option<NotUntil<Nanos>>,
        derived: &Derived,
    ) -> Refused {
        let action = derived.action;
        self.counters.limited(limit, action);
        let retry_after: Option<Duration> = not_until.map(|n| n.wait_time_from(self.clock.now()));
        let error = RateLimited {
            limit,
            retry_after,
            action,
        };
        let rejection = Rejection::new(Reason::RateLimited, error);
        let hold = match retry_after {
            _ if derived.hold.is_zero() => None,
            Some(wait) => Some(wait.min(derived.hold)),
            // A payload that never passes.
            None => Some(derived.hold),
        };
        Refused {
            rejection: match retry_after {
                Some(wait) => rejection.with_retry_after(wait),
                None => rejection,
            },
            hold,
        }
    }

    /// Forgets every key whose limit has refilled completely.
    pub(crate) fn sweep(&self) {
        let derived = self.current();
        for limit in [&derived.messages, &derived.bytes].into_iter().flatten() {
            limit.gcra.retain_recent();
        }
    }

    pub(crate) fn tracked_keys(&self) -> usize {
        let derived = self.current();
        [&derived.messages, &derived.bytes]
            .into_iter()
            .flatten()
            .map(|limit| limit.table.len())
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn describe(&self) -> String {
        self.config.with(|c| {
            format!(
                "{:?}: {} msg/s (burst {}), {} B/s (burst {}), {:?}",
                c.scope,
                c.messages_per_second,
                c.messages_burst,
                c.bytes_per_second,
                c.bytes_burst,
                c.on_limit
            )
        })
    }
}

/// The limits `cfg` describes; a limit whose rate and burst did not change keeps its keys.
fn derive(
    generation: u64,
    cfg: &RateLimitConfig,
    old: Option<&Derived>,
    clock: TokioClock,
    counters: &Arc<Counters>,
) -> Derived {
    // Another scope gives every key another meaning: start the tables afresh.
    let old = old.filter(|old| old.scope == cfg.scope);
    Derived {
        generation,
        enabled: cfg.enabled,
        scope: cfg.scope,
        action: cfg.on_limit,
        hold: match cfg.on_limit {
            RateLimitAction::Close => Duration::ZERO,
            RateLimitAction::Drop | RateLimitAction::ErrorFrame => cfg.hold_refused,
        },
        messages: Limit::keep_or_new(
            old.and_then(|o| o.messages.as_ref()),
            cfg.messages_per_second,
            cfg.messages_burst,
            cfg.max_keys,
            clock,
            counters,
        ),
        bytes: Limit::keep_or_new(
            old.and_then(|o| o.bytes.as_ref()),
            cfg.bytes_per_second,
            cfg.bytes_burst,
            cfg.max_keys,
            clock,
            counters,
        ),
    }
}

/// Sweeps every `cleanup_interval` (re-read after each sweep) until `stop` fires or the layer
/// is gone.
async fn sweep_until(shared: Weak<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        let Some(interval) = shared
            .upgrade()
            .map(|s| s.config.with(|c| c.cleanup_interval))
        else {
            return;
        };
        let mut tick = pin!(tokio::time::sleep(interval));
        let stopped = poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            tick.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if stopped {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep();
    }
}
