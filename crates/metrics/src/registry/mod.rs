//! [`MetricsRegistry`]: the shared figures, the client table, connections and the sweep.

pub(crate) mod aggregate;
pub(crate) mod clients;

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::time::Instant;
use wsguard_config::{ConfigSource, MetricsConfig};

use self::aggregate::{LatencyHistogram, Totals};
use self::clients::{ClientEntry, ClientTable};
use crate::Direction;
use crate::export::{RegistryHandles, RouteStats};
use crate::request::bounded_id;
use crate::sample::{self, Sampler};
use crate::snapshot::{
    ClientSnapshot, ClientsSnapshot, HistogramSnapshot, MetricsSnapshot, OutcomeCounts,
    RouteSnapshot,
};

/// The figures every [`MetricsLayer`](crate::MetricsLayer) of a service records into.
///
/// Cloning is cheap (one `Arc`); clones share everything. It holds:
/// - exact aggregates (calls by outcome, in flight, messages and bytes per direction, active
///   and total connections), striped per thread so that the request path takes no lock;
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
                rt.spawn(background(weak.clone(), rx, interval));
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

    fn publish(&self) {
        for r in self.routes() {
            r.publish();
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
        ConnectionGuard {
            registry: Some(self.clone()),
            entry,
            released: AtomicBool::new(false),
        }
    }

    fn cleanup(&self, ttl: Duration) -> usize {
        let ttl = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        let removed = self.clients.remove_inactive(self.now(), ttl);
        self.handles.clients_expired.increment(removed as u64);
        removed
    }
}

/// How often the background task publishes to the `metrics` facade.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

async fn background(registry: Weak<Inner>, stop: oneshot::Receiver<()>, interval: Duration) {
    let mut stop = pin!(stop);
    let mut next_sweep = Instant::now() + interval;
    loop {
        let wake = next_sweep.min(Instant::now() + PUBLISH_INTERVAL);
        let mut tick = pin!(tokio::time::sleep_until(wake));
        let stopped = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            tick.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if stopped {
            return;
        }
        let Some(inner) = registry.upgrade() else {
            return;
        };
        inner.publish();
        if Instant::now() < next_sweep {
            continue;
        }
        let (ttl, interval) = inner
            .source
            .with(|c| (c.client_metrics_ttl, c.cleanup_interval));
        // Shard by shard, yielding now and then, so a big table never holds a worker long.
        let ttl = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
        let mut removed = 0;
        for shard in 0..inner.clients.shard_count() {
            removed += inner.clients.remove_inactive_in(shard, inner.now(), ttl);
            if shard % 16 == 15 {
                tokio::task::yield_now().await;
            }
        }
        inner.handles.clients_expired.increment(removed as u64);
        if removed > 0 {
            tracing::debug!(removed, "wsguard-metrics: removed inactive clients");
        }
        next_sweep = Instant::now() + interval;
    }
}

/// A registered connection; dropping it (or [`release`](Self::release)) ends the connection in
/// the registry, and removes its client's state when that was the client's last connection.
pub struct ConnectionGuard {
    registry: Option<Arc<Inner>>,
    entry: Option<Arc<ClientEntry>>,
    released: AtomicBool,
}

impl ConnectionGuard {
    /// A guard that was never registered, already released.
    fn closed() -> Self {
        Self {
            registry: None,
            entry: None,
            released: AtomicBool::new(true),
        }
    }

    /// The client this connection belongs to, if known.
    pub fn client_id(&self) -> Option<&str> {
        self.entry.as_deref().map(|e| &*e.id)
    }

    /// Ends the connection now; later calls and the drop do nothing.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(inner) = &self.registry else { return };
        inner.connections_active.fetch_sub(1, Ordering::Relaxed);
        inner.handles.connections_active.decrement(1.0);
        if let Some(entry) = &self.entry {
            inner.clients.disconnect(entry);
        }
    }

    /// Whether the connection was released.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// The client entry to record into, if this guard is live and belongs to `registry`.
    #[inline]
    fn entry_in(&self, registry: &Arc<Inner>) -> Option<&Arc<ClientEntry>> {
        let same = self
            .registry
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, registry));
        if same && !self.released.load(Ordering::Relaxed) {
            self.entry.as_ref()
        } else {
            None
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("client_id", &self.client_id())
            .field("released", &self.is_released())
            .finish()
    }
}

/// A place for a long-lived connection's registration, owned by the connection.
///
/// Give each connection a slot and expose it through
/// [`ClientRequest::connection_slot`](crate::ClientRequest::connection_slot). The connection is
/// registered with a registry (as [`MetricsRegistry::connect`] does) and the guard stored here,
/// whichever comes first:
/// - when it opens, if its owner takes its copy of the service stack with
///   [`open`](Self::open): the registry is that of the first [`Metrics`](crate::Metrics)
///   service in the stack, so an idle connection is counted and listed from its first moment;
/// - on the first call the [`Metrics`](crate::Metrics) service sees with the slot, with the
///   request's client id.
///
/// Later calls cost one atomic check and record per-client detail straight into the client's
/// entry, without a table lookup. Call [`release`](Self::release) (or drop the slot) when the
/// connection closes. A slot released before it registered never registers. A slot registers
/// with one registry; layers recording into another registry count its calls in their
/// aggregates only.
#[derive(Default)]
pub struct ConnectionSlot {
    guard: OnceLock<ConnectionGuard>,
    /// The route figures that [`record_send_dropped`](Self::record_send_dropped) counts into,
    /// found on its first use.
    dropped_route: OnceLock<Arc<RouteStats>>,
}

impl ConnectionSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Clones `service` for the connection this slot belongs to, which opens now, and registers
    /// the connection with the registry of the first [`Metrics`](crate::Metrics) service the
    /// clone passes through (the outermost one), under `client_id` (`None`: counted in the
    /// aggregates only).
    ///
    /// Use it where a connection takes its own copy of a shared service stack, as `wsguard-axum`
    /// does for every upgraded WebSocket. The stack is found by cloning, so it needs no trait
    /// beyond `Clone` and works through any layers that clone their inner service (tower's own,
    /// `BoxCloneService`); no call is made and no readiness is reserved. If no `Metrics`
    /// service is cloned along the way (there is none, or it sits behind a `Buffer`, whose
    /// clones share one worker), the slot stays empty and registers on its first call instead.
    ///
    /// ```
    /// use tower::{Layer, service_fn};
    /// use wsguard_metrics::{ConnectionSlot, MetricsLayer, MetricsRegistry};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let registry = MetricsRegistry::new(wsguard_config::MetricsConfig::development());
    /// let stack = MetricsLayer::new(registry.clone())
    ///     .layer(service_fn(|msg: String| async move { Ok::<_, std::convert::Infallible>(msg) }));
    ///
    /// let slot = ConnectionSlot::new();
    /// let _per_connection = slot.open(&stack, Some("alice"));
    /// assert_eq!(registry.active_connections(), 1);
    /// assert_eq!(registry.client("alice").unwrap().connections, 1);
    ///
    /// slot.release(); // the connection closed
    /// assert_eq!(registry.active_connections(), 0);
    /// assert!(registry.client("alice").is_none());
    /// # }
    /// ```
    pub fn open<S: Clone>(&self, service: &S, client_id: Option<&str>) -> S {
        let finding = FindRegistry::start();
        let service = service.clone();
        if let Some(registry) = finding.finish() {
            self.guard.get_or_init(|| registry.connect(client_id));
        }
        service
    }

    /// Ends the connection's registration, if any, and keeps the slot from registering again.
    pub fn release(&self) {
        if self.guard.set(ConnectionGuard::closed()).is_err()
            && let Some(guard) = self.guard.get()
        {
            guard.release();
        }
    }

    /// Counts `count` outbound messages of this connection dropped by its send queue's overflow
    /// policy (the client reads too slowly): under `route` (the `out` direction's
    /// [`RouteSnapshot::send_dropped`](crate::RouteSnapshot::send_dropped) and
    /// [`SEND_DROPPED_TOTAL`](crate::export::SEND_DROPPED_TOTAL)) and under the connection's
    /// client while it is live ([`ClientSnapshot::send_dropped`]). Exact, never sampled. Does
    /// nothing if the connection never registered with a registry.
    pub fn record_send_dropped(&self, route: &str, count: u64) {
        let Some(guard) = self.guard.get() else {
            return;
        };
        let Some(registry) = &guard.registry else {
            return;
        };
        self.dropped_route
            .get_or_init(|| registry.route_stats(&Arc::from(route), Direction::Outbound))
            .record_send_dropped(count);
        if let Some(entry) = guard.entry_in(registry) {
            entry.send_dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Whether a call registered this connection (and it was not released since).
    pub fn is_registered(&self) -> bool {
        self.guard
            .get()
            .is_some_and(|g| g.registry.is_some() && !g.is_released())
    }

    /// The client id the connection was registered under.
    pub fn client_id(&self) -> Option<&str> {
        self.guard.get().and_then(ConnectionGuard::client_id)
    }

    /// The entry to record into; registers the connection on first use.
    #[inline]
    pub(crate) fn entry<'r>(
        &self,
        registry: &Arc<Inner>,
        client_id: impl FnOnce() -> Option<Cow<'r, str>>,
    ) -> Option<&Arc<ClientEntry>> {
        self.guard
            .get_or_init(|| registry.connect(client_id().as_deref()))
            .entry_in(registry)
    }
}

impl fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("guard", &self.guard.get())
            .finish()
    }
}

thread_local! {
    /// While [`ConnectionSlot::open`] clones a stack on this thread: `Some`, holding the registry
    /// of the first `Metrics` service cloned so far, if any.
    static FINDING: Cell<Option<Option<Arc<Inner>>>> = const { Cell::new(None) };
}

/// Called by every `Metrics` clone: notes its registry if a slot is opening on this thread and
/// none was noted yet.
#[inline]
pub(crate) fn note_cloned(registry: &Arc<Inner>) {
    // `try_with`: a clone made while the thread's locals are being destroyed notes nothing.
    let _ = FINDING.try_with(|finding| {
        let state = finding.take();
        finding.set(match state {
            Some(None) => Some(Some(registry.clone())),
            other => other,
        });
    });
}

/// One search for a registry during a clone; restores the thread's previous search (slots may
/// open inside a clone) when finished, and on unwind.
struct FindRegistry {
    outer: Option<Option<Arc<Inner>>>,
    done: bool,
}

impl FindRegistry {
    fn start() -> Self {
        Self {
            outer: FINDING.replace(Some(None)),
            done: false,
        }
    }

    fn finish(mut self) -> Option<Arc<Inner>> {
        self.done = true;
        FINDING.replace(self.outer.take()).flatten()
    }
}

impl Drop for FindRegistry {
    fn drop(&mut self) {
        if !self.done {
            FINDING.set(self.outer.take());
        }
    }
}
