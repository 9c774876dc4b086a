//! [`MetricsRegistry`]: the shared figures every layer of a service records into.

pub(crate) mod aggregate;
mod background;
pub(crate) mod clients;
mod connection;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::time::Instant;
use wsguard_config::{ConfigSource, MetricsConfig};

use self::aggregate::{LatencyHistogram, Totals};
use self::clients::{ClientEntry, ClientTable};
pub use self::connection::{ConnectionGuard, ConnectionSlot};
use crate::Direction;
use crate::export::{RegistryHandles, RouteStats};
use crate::rate_limits::{RateLimitFigures, RateLimitSource};
use crate::request::bounded_id;
use crate::sample::{self, Sampler};
use crate::sessions::{SessionFigures, SessionSource};
use crate::snapshot::{
    ClientSnapshot, ClientsSnapshot, HistogramSnapshot, MetricsSnapshot, OutcomeCounts,
    RateLimitsSnapshot, RouteSnapshot, SessionsSnapshot,
};
use crate::watched::RouteWatch;

/// The figures every [`MetricsLayer`](crate::MetricsLayer) of a service records into.
///
/// Cloning is cheap (one `Arc`); clones share everything. It holds:
/// - exact aggregates (calls by outcome, in flight, messages and bytes per direction, active
///   and total connections), kept per thread so that the request path takes no lock;
/// - the latency histograms (`latency_buckets`), fed by sampled calls only;
/// - the per-client table: one entry per client with a live connection or recent sampled
///   activity. An entry goes away when the client's last connection closes; a background sweep
///   removes entries idle longer than `client_metrics_ttl` (never one with a live connection)
///   and `max_clients` caps the table, evicting the least recently active client (clients
///   without a live connection first). Up to 1024 clients the victim is the least recently
///   active of the whole table; above that, of the new client's shard (the table has one shard
///   per 256 clients, up to 4096 shards), which bounds the work of an insert at the cap.
///
/// Built inside a tokio runtime, `new` spawns a background task that publishes to the facade
/// every second and sweeps the client table every `cleanup_interval`; it holds only a weak
/// reference and stops when the last clone of the registry (and the last connection guard) is
/// dropped. Built outside one, no task runs: call [`publish`](Self::publish) and
/// [`cleanup_inactive_clients`](Self::cleanup_inactive_clients) yourself.
///
/// **Sampling.** `sample_rate` applies to latency timing and to per-client detail (messages,
/// bytes, outcomes and last activity of a client), never to the aggregate counters, which are
/// always exact. Each call is sampled independently with probability `sample_rate`; a client's
/// counts are therefore counts of its sampled calls (divide by the rate for an estimate).
/// Connection lifecycle (connect, disconnect, live connections) is never sampled.
///
/// **Export.** Aggregates are also reported through the `metrics` facade under the names in
/// [`export`](crate::export), with low-cardinality labels only (route, direction, outcome);
/// per-client detail stays in-process ([`snapshot`](Self::snapshot)). Install the recorder
/// before building the registry and the layers: their handles are registered once, then reused.
/// Call counts reach the facade through [`publish`](Self::publish), every second from the
/// background task and whenever you call it.
#[derive(Clone)]
pub struct MetricsRegistry {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    source: ConfigSource<MetricsConfig>,
    seen_generation: AtomicU64,
    refresh_lock: Mutex<()>,
    enabled: AtomicBool,
    threshold: AtomicU64,
    sample_rate_bits: AtomicU64,
    sampler: Sampler,
    routes: Mutex<Vec<Arc<RouteStats>>>,
    sessions: Mutex<Vec<Arc<RouteWatch<SessionFigures>>>>,
    rate_limits: Mutex<Vec<Arc<RouteWatch<RateLimitFigures>>>>,
    histograms: ArcSwap<[LatencyHistogram; 2]>,
    connections_active: AtomicU64,
    connections_total: AtomicU64,
    pub(crate) clients: ClientTable,
    epoch: Instant,
    handles: RegistryHandles,
    // Dropping it wakes the background task, which then ends.
    _stop_background: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("MetricsRegistry")
            .field("enabled", &i.enabled.load(Ordering::Relaxed))
            .field("sampler", &i.sampler)
            .field(
                "connections_active",
                &i.connections_active.load(Ordering::Relaxed),
            )
            .field("clients", &i.clients.len())
            .finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// A registry reading `config` (fixed, or live through a `ConfigHandle`), sampling with the
    /// default [`Sampler`].
    pub fn new(config: impl Into<ConfigSource<MetricsConfig>>) -> Self {
        Self::with_sampler(config, Sampler::default())
    }

    /// A registry drawing its sampling decisions from `sampler` (e.g. [`Sampler::seeded`] in
    /// tests).
    pub fn with_sampler(config: impl Into<ConfigSource<MetricsConfig>>, sampler: Sampler) -> Self {
        let source = config.into();
        let (enabled, rate, buckets, max_clients, interval) = source.with(|c| {
            (
                c.enabled,
                c.sample_rate,
                c.latency_buckets.clone(),
                c.max_clients,
                c.cleanup_interval,
            )
        });
        let handles = RegistryHandles::register();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let stop = runtime.map(|rt| {
                let (tx, rx) = oneshot::channel();
                rt.spawn(background::run(weak.clone(), rx, interval));
                tx
            });
            Inner {
                seen_generation: AtomicU64::new(source.generation()),
                source,
                refresh_lock: Mutex::new(()),
                enabled: AtomicBool::new(enabled),
                threshold: AtomicU64::new(sample::threshold(rate)),
                sample_rate_bits: AtomicU64::new(rate.to_bits()),
                sampler,
                routes: Mutex::new(Vec::new()),
                sessions: Mutex::new(Vec::new()),
                rate_limits: Mutex::new(Vec::new()),
                histograms: ArcSwap::from_pointee([
                    LatencyHistogram::new(&buckets),
                    LatencyHistogram::new(&buckets),
                ]),
                connections_active: AtomicU64::new(0),
                connections_total: AtomicU64::new(0),
                clients: ClientTable::new(max_clients, handles.clients_evicted.clone()),
                epoch: Instant::now(),
                handles,
                _stop_background: stop,
            }
        });
        Self { inner }
    }

    /// Registers a connection of `client_id`: active and total connections +1, the client's
    /// live connections +1 (its entry created if needed). Dropping the guard (or
    /// [`ConnectionGuard::release`]) undoes it and removes the client's state when its last
    /// connection goes.
    ///
    /// Ids longer than [`MAX_CLIENT_ID_LEN`](crate::MAX_CLIENT_ID_LEN) bytes are cut.
    pub fn connect(&self, client_id: &str) -> ConnectionGuard {
        self.inner.connect(Some(client_id))
    }

    /// Registers a connection whose client is unknown: counted in the aggregates only.
    pub fn connect_anonymous(&self) -> ConnectionGuard {
        self.inner.connect(None)
    }

    /// Removes clients without a live connection and inactive for more than `ttl`; returns how
    /// many. The background sweep calls this with `client_metrics_ttl`. Shards are locked one at
    /// a time, so calls keep flowing meanwhile.
    pub fn cleanup_inactive_clients(&self, ttl: Duration) -> usize {
        self.inner.cleanup(ttl)
    }

    /// How many clients the table tracks.
    pub fn client_count(&self) -> usize {
        self.inner.clients.len()
    }

    /// The figures of one client, if tracked.
    pub fn client(&self, client_id: &str) -> Option<ClientSnapshot> {
        let id = bounded_id(client_id);
        let now = self.inner.now();
        self.inner
            .clients
            .get(id)
            .map(|e| ClientSnapshot::of(&e, now))
    }

    /// Pushes the call counts, bytes and in-flight calls counted since the last publish to the
    /// `metrics` facade. The background task does it every second; call it before rendering
    /// (e.g. in a `/metrics` handler) for figures exact at that moment.
    pub fn publish(&self) {
        self.inner.publish();
    }

    /// Reports the `wsguard.v1` session figures of `route` from `source`, read on every
    /// [`publish`](Self::publish) and [`snapshot`](Self::snapshot): in the snapshot's `sessions`
    /// and through the facade (`wsguard_sessions_*{route}`, see [`export`](crate::export)).
    ///
    /// `WsRoute::metrics` in `wsguard-axum` calls it with the route's session registry. Watching
    /// a route again replaces its source; the counters published so far stay.
    ///
    /// ```
    /// use wsguard_config::MetricsConfig;
    /// use wsguard_metrics::{MetricsRegistry, SessionFigures};
    ///
    /// let registry = MetricsRegistry::new(MetricsConfig::testing());
    /// registry.watch_sessions("/ws", || {
    ///     let mut figures = SessionFigures::default();
    ///     figures.live = Some(2);
    ///     figures.resumed = 5;
    ///     figures
    /// });
    /// let snapshot = registry.snapshot();
    /// assert_eq!(snapshot.sessions[0].route, "/ws");
    /// assert_eq!(snapshot.sessions[0].figures.resumed, 5);
    /// ```
    pub fn watch_sessions(&self, route: impl Into<Arc<str>>, source: impl SessionSource) {
        RouteWatch::watch(
            &self.inner.sessions,
            route.into(),
            Arc::new(move || source.figures()),
        );
    }

    /// Reports the rate-limit figures of `route` from `source`, read on every
    /// [`publish`](Self::publish) and [`snapshot`](Self::snapshot): in the snapshot's
    /// `rate_limits` and through the facade (`wsguard_rate_limited_total{route, limit, action}`,
    /// `wsguard_rate_limit_*{route}`, see [`export`](crate::export)).
    ///
    /// The `wsguard` crate's `watch_rate_limit` calls it with a `RateLimitLayer`'s counters.
    /// Watching a route again replaces its source; the counters published so far stay. The calls
    /// a limit refuses are also counted by a `MetricsLayer` outside it, as `rejected` with a
    /// classifier that knows the limit's error (`wsguard_axum::MessageClassifier` does).
    ///
    /// ```
    /// use wsguard_config::MetricsConfig;
    /// use wsguard_metrics::{MetricsRegistry, RateLimitFigures};
    ///
    /// let registry = MetricsRegistry::new(MetricsConfig::testing());
    /// registry.watch_rate_limit("/ws", || {
    ///     let mut figures = RateLimitFigures::default();
    ///     figures.limited.messages.error_frame = 3;
    ///     figures.tracked_keys = 2;
    ///     figures
    /// });
    /// let snapshot = registry.snapshot();
    /// assert_eq!(snapshot.rate_limits[0].route, "/ws");
    /// assert_eq!(snapshot.rate_limits[0].figures.limited.total(), 3);
    /// ```
    pub fn watch_rate_limit(&self, route: impl Into<Arc<str>>, source: impl RateLimitSource) {
        RouteWatch::watch(
            &self.inner.rate_limits,
            route.into(),
            Arc::new(move || source.figures()),
        );
    }

    /// Live connections.
    pub fn active_connections(&self) -> u64 {
        self.inner.connections_active.load(Ordering::Relaxed)
    }

    /// Estimated heap bytes per tracked client (entry, id, and the table's slots including
    /// spare capacity), or `None` when the table is empty. Allocator overhead is not counted.
    pub fn bytes_per_client(&self) -> Option<usize> {
        let (clients, bytes) = self.inner.clients.approx_bytes();
        (clients > 0).then(|| bytes / clients)
    }

    /// The configuration source this registry reads.
    pub fn config(&self) -> &ConfigSource<MetricsConfig> {
        &self.inner.source
    }

    /// Aggregates, latency histograms and the `top_clients` most active clients, serialisable
    /// (e.g. with `serde_json` for a JSON endpoint).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let inner = &self.inner;
        inner.refresh();
        let routes: Vec<_> = inner
            .routes()
            .into_iter()
            .map(|r| {
                let t = r.counters.totals();
                (r, t)
            })
            .collect();
        let mut totals = Totals::default();
        for (_, t) in &routes {
            totals.add(t);
        }
        let now = inner.now();
        let top_n = inner.source.with(|c| c.top_clients);
        let histograms = inner.histograms.load();
        let [inbound, outbound] = &**histograms;
        MetricsSnapshot {
            enabled: inner.enabled.load(Ordering::Relaxed),
            sample_rate: f64::from_bits(inner.sample_rate_bits.load(Ordering::Relaxed)),
            calls: OutcomeCounts::of(&totals),
            in_flight: totals.in_flight(),
            messages_in: totals.calls[0],
            messages_out: totals.calls[1],
            bytes_in: totals.bytes[0],
            bytes_out: totals.bytes[1],
            connections_active: inner.connections_active.load(Ordering::Relaxed),
            connections_total: inner.connections_total.load(Ordering::Relaxed),
            latency_inbound: HistogramSnapshot::of(inbound),
            latency_outbound: HistogramSnapshot::of(outbound),
            routes: routes
                .iter()
                .map(|(r, t)| RouteSnapshot::of(r, t))
                .collect(),
            clients: ClientsSnapshot {
                tracked: inner.clients.len(),
                evicted: inner.clients.evicted.load(Ordering::Relaxed),
                expired: inner.clients.expired.load(Ordering::Relaxed),
                top: inner
                    .clients
                    .top(top_n)
                    .iter()
                    .map(|e| ClientSnapshot::of(e, now))
                    .collect(),
            },
            sessions: inner
                .sessions()
                .iter()
                .map(|s| SessionsSnapshot {
                    route: s.route.to_string(),
                    figures: s.figures(),
                })
                .collect(),
            rate_limits: inner
                .rate_limits()
                .iter()
                .map(|l| RateLimitsSnapshot {
                    route: l.route.to_string(),
                    figures: l.figures(),
                })
                .collect(),
        }
    }
}

impl Inner {
    /// The counters of `route` in `direction`, created on first use and kept for the registry's
    /// life (routes are few: they are labels).
    pub(crate) fn route_stats(&self, route: &Arc<str>, direction: Direction) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = routes
            .iter()
            .find(|r| r.direction == direction && r.route == *route)
        {
            return r.clone();
        }
        let stats = Arc::new(RouteStats::new(route.clone(), direction));
        routes.push(stats.clone());
        stats
    }

    fn routes(&self) -> Vec<Arc<RouteStats>> {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn sessions(&self) -> Vec<Arc<RouteWatch<SessionFigures>>> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn rate_limits(&self) -> Vec<Arc<RouteWatch<RateLimitFigures>>> {
        self.rate_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self) {
        for r in self.routes() {
            r.publish();
        }
        for s in self.sessions() {
            s.publish();
        }
        for l in self.rate_limits() {
            l.publish();
        }
    }

    /// Nanoseconds since the registry was built.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// `at` in nanoseconds since the registry was built.
    #[inline]
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(crate) fn nanos_to_secs(nanos: u64) -> f64 {
        Duration::from_nanos(nanos).as_secs_f64()
    }

    /// Rebuilds what is derived from a live config when it changed (one atomic compare when
    /// it did not). Counters and the client table are kept; the histograms restart only if the
    /// buckets changed.
    #[inline]
    pub(crate) fn refresh(&self) {
        let generation = self.source.generation();
        if generation != self.seen_generation.load(Ordering::Acquire) {
            self.refresh_slow(generation);
        }
    }

    #[cold]
    fn refresh_slow(&self, generation: u64) {
        let _lock = self
            .refresh_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if generation == self.seen_generation.load(Ordering::Acquire) {
            return;
        }
        let (enabled, rate, buckets) = self
            .source
            .with(|c| (c.enabled, c.sample_rate, c.latency_buckets.clone()));
        self.enabled.store(enabled, Ordering::Relaxed);
        self.threshold
            .store(sample::threshold(rate), Ordering::Relaxed);
        self.sample_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
        if self.histograms.load()[0].bounds() != buckets.as_slice() {
            self.histograms.store(Arc::new([
                LatencyHistogram::new(&buckets),
                LatencyHistogram::new(&buckets),
            ]));
        }
        self.seen_generation.store(generation, Ordering::Release);
    }

    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn sample(&self) -> bool {
        self.sampler.sample(self.threshold.load(Ordering::Relaxed))
    }

    pub(crate) fn record_latency(&self, direction: Direction, elapsed: Duration) {
        let nanos = elapsed.as_nanos() as u64;
        self.histograms.load()[direction.index()].record(elapsed.as_secs_f64(), nanos);
    }

    pub(crate) fn touch_client(&self, id: &str) -> Arc<ClientEntry> {
        let cap = self.source.with(|c| c.max_clients);
        self.clients.touch(bounded_id(id), self.now(), cap)
    }

    fn connect(self: &Arc<Self>, client_id: Option<&str>) -> ConnectionGuard {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.handles.connections_active.increment(1.0);
        self.handles.connections_total.increment(1);
        let entry = client_id.map(|id| {
            let cap = self.source.with(|c| c.max_clients);
            self.clients.connect(bounded_id(id), self.now(), cap)
        });
        ConnectionGuard::new(self.clone(), entry)
    }

    fn cleanup(&self, ttl: Duration) -> usize {
        let ttl = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        let removed = self.clients.remove_inactive(self.now(), ttl);
        self.handles.clients_expired.increment(removed as u64);
        removed
    }
}
