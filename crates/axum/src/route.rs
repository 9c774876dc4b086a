//! The upgrade handler: connection limit, socket settings, and the hand-off to the connection.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::{StatusCode, header};
use tower_service::Service;
use wsguard_config::ClientIdSource;
use wsguard_metrics::{MetricsRegistry, SessionFigures};
use wsguard_session::protocol::SUBPROTOCOL;
use wsguard_session::store::SessionStoreError;
use wsguard_session::{SessionStats, SessionToken, Sessions};

use crate::BoxError;
use crate::close;
use crate::config::WsConfig;
use crate::connection::{self, Opening, Settings};
use crate::drain::Drain;
use crate::identity::ClientIdentity;
use crate::inbound::{self, ConnInfo, ConnectionId, Inbound};
use crate::reply::Replies;
use crate::sender::{DropReport, Sender};
use crate::to_session::SendToSession;
use crate::warn_limit::{WarnLimit, limited_warn};

/// A WebSocket route whose every inbound message is a call of `service`.
///
/// Each upgraded connection gets a clone of `service` (so state belongs in the layers' shared
/// `Arc`s, as with any tower stack), taken when the connection opens. With
/// [`metrics`](Self::metrics) the connection registers with that registry at that moment, so
/// idle connections are counted too; without it a `MetricsLayer` in the stack registers it on its
/// first message. The adapter releases the registration when the connection closes.
///
/// The connection is refused with `503` past `max_connections`; [`stats`](Self::stats) counts
/// open, accepted and refused connections.
///
/// A client that offers the `wsguard.v1` subprotocol, on a route whose `session.enabled` is
/// on, gets a session (`docs/protocol.md`): its connection opens or resumes one in the route's
/// registry ([`sessions`](Self::sessions)), every message to it is numbered and logged until
/// acknowledged, and every message from it is handled once, across reconnects within
/// `session.ttl`. Handlers and layers see the same plain messages as without a session. Other
/// clients get plain WebSocket, unchanged. The first frame (`hello` or `resume`) must come within
/// `idle_timeout`; a connection that drops or is superseded by a resume elsewhere lets its calls
/// in flight finish, so that their replies are logged and their ids count as processed.
///
/// Most routes need only [`ws_route`]; keep a `WsRoute` when you want its stats.
pub struct WsRoute<S> {
    service: Arc<S>,
    config: WsConfig,
    stats: ConnectionStats,
    metrics: Option<MetricsRegistry>,
    sessions: Sessions,
    /// The registry's TTL sweep, started with the first session (`new` may run outside a
    /// runtime).
    sweep: Arc<Once>,
    /// Route labels whose session figures `metrics` reports already.
    session_metrics: Arc<Mutex<Vec<Arc<str>>>>,
    /// Open connections per client id, for `max_connections_per_client`: an entry lives while
    /// its client has a connection open, so there are never more than `max_connections`.
    per_client: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl<S: fmt::Debug> fmt::Debug for WsRoute<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsRoute")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .field("metrics", &self.metrics)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl<S> Clone for WsRoute<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            metrics: self.metrics.clone(),
            sessions: self.sessions.clone(),
            sweep: self.sweep.clone(),
            session_metrics: self.session_metrics.clone(),
            per_client: self.per_client.clone(),
        }
    }
}

/// The route for `service` with `config`, as a one-liner for `Router::route`.
///
/// `config` is a `StabilityConfig` (fixed), a `ConfigHandle` (live) or a [`WsConfig`].
pub fn ws_route<S, St>(service: S, config: impl Into<WsConfig>) -> MethodRouter<St>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    St: Clone + Send + Sync + 'static,
{
    WsRoute::new(service, config).into_method_router()
}

impl<S> WsRoute<S>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// A route calling `service` for every message, configured by `config`.
    ///
    /// Its sessions live in the store `session.store` names ([`Sessions::from_config`]):
    /// memory, or Redis (feature `redis`), shared by every node on the same server or cluster
    /// so that a client resumes on any of them. The Redis store connects in the background;
    /// until it does, `wsguard.v1` clients are answered `unavailable` (close 1013) and retry.
    ///
    /// # Panics
    ///
    /// If the config names a store this build cannot make (`redis` without the `redis`
    /// feature, or a URL that is not a Redis URL): a server must not keep its sessions elsewhere
    /// than its config says. [`try_new`](Self::try_new) returns the error instead.
    pub fn new(service: S, config: impl Into<WsConfig>) -> Self {
        Self::try_new(service, config).unwrap_or_else(|error| panic!("{error}"))
    }

    /// As [`new`](Self::new), with an error instead of a panic when the session store the
    /// config names cannot be made.
    pub fn try_new(service: S, config: impl Into<WsConfig>) -> Result<Self, SessionStoreError> {
        let config = config.into();
        let sessions = Sessions::from_config(config.session().clone())?;
        Ok(Self {
            service: Arc::new(service),
            sessions,
            config,
            stats: ConnectionStats::default(),
            metrics: None,
            sweep: Arc::new(Once::new()),
            session_metrics: Arc::default(),
            per_client: Arc::default(),
        })
    }

    /// Keeps the route's sessions in `sessions` instead of the registry the config names: a
    /// registry the application made ([`Sessions::with_store`] on a store of its own), or one
    /// shared with another route.
    pub fn sessions_in(mut self, sessions: Sessions) -> Self {
        self.sessions = sessions;
        self
    }

    /// Registers each connection with `registry` when it opens, so that idle connections are
    /// counted and listed before their first message; the registration ends when the
    /// connection closes.
    ///
    /// With `session.enabled`, the registry also reports the route's session figures
    /// ([`MetricsRegistry::watch_sessions`], labelled with the matched path) from the first
    /// upgrade on.
    ///
    /// Give it the registry of the stack's `MetricsLayer`. Without it, that layer registers a
    /// connection on its first message.
    pub fn metrics(mut self, registry: MetricsRegistry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// Counters of this route's connections (a shared handle).
    pub fn stats(&self) -> ConnectionStats {
        self.stats.clone()
    }

    /// The route's `wsguard.v1` sessions (a shared handle): send to a client or session whether
    /// or not it is connected ([`Sessions::sender_for_client`]), and read the counters
    /// ([`Sessions::stats`]).
    ///
    /// Sessions are bound to the client id when the route takes it from a header or a query
    /// parameter (`connection.client_id`); with the peer address they are not, since a client
    /// that reconnects may come from another address.
    pub fn sessions(&self) -> Sessions {
        self.sessions.clone()
    }

    /// A `tower::Service<Message>` that logs messages for the newest session of `client`,
    /// connected or not: it follows the client to a newer session at each call
    /// ([`SendToSession`]). `client` is the id the route takes from a header or a query
    /// parameter (`connection.client_id`).
    pub fn sender_for_client(&self, client: &str) -> SendToSession {
        SendToSession::new(self.sessions.sender_for_client(client))
    }

    /// A `tower::Service<Message>` that logs messages for session `token`, connected or not
    /// ([`SendToSession`]); a connection's [`Sender::session`](crate::Sender::session) names
    /// its session.
    pub fn sender_for_session(&self, token: &SessionToken) -> SendToSession {
        SendToSession::new(self.sessions.sender_for_session(token))
    }

    /// The `GET` handler for `Router::route`.
    pub fn into_method_router<St>(self) -> MethodRouter<St>
    where
        St: Clone + Send + Sync + 'static,
    {
        get(move |request: Request| {
            let route = self.clone();
            async move { route.upgrade(request).await }
        })
    }

    async fn upgrade(self, request: Request) -> Response {
        let (mut parts, _body) = request.into_parts();
        let mut upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        let config = self.config.connection().get();
        let drain = parts.extensions.get::<Drain>();
        if drain.is_some_and(Drain::is_draining) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "server going away",
            )
                .into_response();
        }
        let drain = drain.map(Drain::ticket);
        // The application's authentication did not vouch for this client: no upgrade.
        if config.client_id == ClientIdSource::Authenticated
            && parts.extensions.get::<ClientIdentity>().is_none()
        {
            return (StatusCode::UNAUTHORIZED, "authentication required").into_response();
        }
        let Some(permit) = self.stats.try_open(config.max_connections) else {
            static WARN: WarnLimit = WarnLimit::new();
            limited_warn!(
                WARN,
                max_connections = config.max_connections,
                "websocket upgrade refused: connection limit reached"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many connections",
            )
                .into_response();
        };

        let peer_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|path| Arc::from(path.as_str()));
        if let Some(registry) = &self.metrics {
            self.watch_sessions(registry, route.as_deref().unwrap_or(""));
        }
        let id = ConnectionId::next();
        let client_id: Arc<str> = inbound::client_id(&config, &parts, peer_addr).into();
        let Some(client_permit) = ClientPermit::take(
            &self.per_client,
            &client_id,
            config.max_connections_per_client,
        ) else {
            static WARN: WarnLimit = WarnLimit::new();
            limited_warn!(
                WARN,
                client = %client_id,
                max_connections_per_client = config.max_connections_per_client,
                "websocket upgrade refused: the client has its most connections open"
            );
            self.stats.count_refused();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "too many connections for this client",
            )
                .into_response();
        };
        let slot = Arc::new(wsguard_metrics::ConnectionSlot::new());
        let sender = Sender::with_limits(
            config.send_queue_capacity,
            config.send_queue_bytes,
            config.overflow,
            Some(DropReport {
                stats: self.stats.clone(),
                slot: slot.clone(),
                route: route.clone(),
                conn: id,
                client: client_id.clone(),
            }),
        );
        let offers_sessions = self.sessions.config().enabled
            && upgrade
                .requested_protocols()
                .any(|p| p.as_bytes() == SUBPROTOCOL.as_bytes());
        let opening = if offers_sessions {
            upgrade = upgrade.protocols([SUBPROTOCOL]);
            self.start_sweep();
            Some(Opening {
                sessions: self.sessions.clone(),
                client: (config.client_id != ClientIdSource::PeerAddr).then(|| client_id.clone()),
            })
        } else {
            None
        };
        let conn = Arc::new(ConnInfo {
            id,
            client_id,
            peer_addr,
            route,
            sender,
            slot,
        });
        let settings = Settings::new(&config, opening.is_some());
        let write_buffer_size = settings.write_buffer_size;
        let replies = Replies {
            connection: self.config.connection().clone(),
            dedup: self.config.dedup().clone(),
        };
        let service = self.service;
        let stats = self.stats;
        let metrics = self.metrics;
        upgrade
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(write_buffer_size)
            // Pongs a client does not read pile up in the write buffer: cap it. Our own frames
            // never take more than `write_buffer_size` plus one queued message.
            .max_write_buffer_size(
                write_buffer_size
                    .saturating_add(config.send_queue_bytes)
                    .max(write_buffer_size + 1),
            )
            .max_message_size(config.max_message_size)
            .max_frame_size(config.max_message_size)
            .on_failed_upgrade(|err| tracing::debug!(error = %err, "websocket upgrade failed"))
            .on_upgrade(move |socket| async move {
                if let Some(registry) = &metrics {
                    conn.slot.register(registry, Some(&conn.client_id));
                }
                let service = S::clone(&service);
                connection::run(
                    socket, service, conn, settings, replies, stats, drain, opening,
                )
                .await;
                drop(client_permit);
                drop(permit);
            })
    }
}

/// A client's place among its open connections, given back on drop (also when the upgrade
/// fails and the connection never runs).
struct ClientPermit {
    table: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    client: Arc<str>,
}

impl ClientPermit {
    /// A place for one more connection of `client`, or `None` if it has `max` open (`0`: no
    /// limit, nothing tracked).
    fn take(
        table: &Arc<Mutex<HashMap<Arc<str>, usize>>>,
        client: &Arc<str>,
        max: usize,
    ) -> Option<Option<Self>> {
        if max == 0 {
            return Some(None);
        }
        let mut open = table.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Some(Self {
            table: table.clone(),
            client: client.clone(),
        }))
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut open = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(count) = open.get_mut(&self.client) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            open.remove(&self.client);
            // After a burst of clients leaves, give back the room it took: once the table is
            // under a quarter of its capacity, keep twice its clients (the next shrink needs it
            // to halve again, so a close stays amortized constant time).
            let (len, capacity) = (open.len(), open.capacity());
            if capacity > SHRINK_ABOVE_CAPACITY && capacity > 4 * len {
                open.shrink_to(2 * len);
            }
        }
    }
}

/// The per-client table of open connections gives room back above this capacity.
const SHRINK_ABOVE_CAPACITY: usize = 64;

impl<S> WsRoute<S> {
    /// Hands `registry` this route's session counters, once per route label.
    fn watch_sessions(&self, registry: &MetricsRegistry, route: &str) {
        if !self.sessions.config().enabled {
            return;
        }
        let mut watched = self
            .session_metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if watched.iter().any(|r| &**r == route) {
            return;
        }
        watched.push(route.into());
        let sessions = self.sessions.clone();
        registry.watch_sessions(route, move || session_figures(sessions.stats()));
    }

    fn start_sweep(&self) {
        self.sweep.call_once(|| {
            let ttl = self.sessions.config().ttl;
            let period = (ttl / 4).max(Duration::from_millis(100));
            tokio::spawn(self.sessions.clone().sweep_every(period));
        });
    }
}

fn session_figures(stats: SessionStats) -> SessionFigures {
    let mut figures = SessionFigures::default();
    figures.live = stats.sessions.map(|n| n as u64);
    figures.detached = stats.detached.map(|n| n as u64);
    figures.created = stats.created;
    figures.resumed = stats.resumed;
    figures.refused.unknown = stats.refused.unknown;
    figures.refused.expired = stats.refused.expired;
    figures.refused.gap = stats.refused.gap;
    figures.refused.unavailable = stats.refused.unavailable;
    figures.replayed = stats.replayed;
    figures.dropped = stats.dropped;
    figures.expired = stats.expired;
    figures.evicted = stats.evicted;
    figures
}

/// Counters of one route's connections; clones share them.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    send_dropped: AtomicU64,
    closed_slow_reader: AtomicU64,
    closed_protocol_error: AtomicU64,
    close_timeouts: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Upgrades accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Upgrades refused because `max_connections` were open (`503`) or the client had
    /// `max_connections_per_client` open (`429`).
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Outbound messages dropped by full send queues (`drop_newest` or `drop_oldest` overflow).
    pub fn send_dropped(&self) -> u64 {
        self.inner.send_dropped.load(Ordering::Relaxed)
    }

    /// Connections closed with `1008` because the client did not read: its send queue
    /// overflowed under the `close` policy, more than `max_pending_pongs` pings waited for
    /// their pongs, or the socket's write buffer was full.
    pub fn closed_slow_reader(&self) -> u64 {
        self.inner.closed_slow_reader.load(Ordering::Relaxed)
    }

    /// Connections closed with `1002 Protocol Error` or `1007 Invalid Payload` because the
    /// client broke RFC 6455 (unmasked or reserved-bit frames, bad opcodes, bad control frames,
    /// invalid UTF-8 in a text message, ...).
    pub fn closed_protocol_error(&self) -> u64 {
        self.inner.closed_protocol_error.load(Ordering::Relaxed)
    }

    /// Server closes whose handshake did not finish within `close_timeout` (the client did not
    /// take the close frame, or did not answer it); the TCP connection was dropped then.
    pub fn close_timeouts(&self) -> u64 {
        self.inner.close_timeouts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_send_dropped(&self, count: u64) {
        self.inner.send_dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn count_close(&self, code: u16) {
        let counter = match code {
            close::POLICY_VIOLATION => &self.inner.closed_slow_reader,
            close::PROTOCOL_ERROR | close::INVALID_PAYLOAD => &self.inner.closed_protocol_error,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_close_timeout(&self) {
        self.inner.close_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    fn count_refused(&self) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn try_open(&self, max: usize) -> Option<OpenPermit> {
        let opened = self
            .inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            });
        if opened.is_err() {
            self.inner.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        Some(OpenPermit(self.inner.clone()))
    }
}

/// One counted open connection; dropping it (when the connection ends, or the upgrade fails)
/// frees the place.
struct OpenPermit(Arc<Counters>);

impl Drop for OpenPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_client_table_gives_back_the_room_of_clients_that_left() {
        let table = Arc::default();
        let capacity = |t: &Arc<Mutex<HashMap<Arc<str>, usize>>>| t.lock().unwrap().capacity();
        let permits: Vec<_> = (0..10_000)
            .map(|i| {
                let client: Arc<str> = format!("10.0.{}.{}", i / 256, i % 256).into();
                ClientPermit::take(&table, &client, 4).unwrap().unwrap()
            })
            .collect();
        let full = capacity(&table);
        assert!(full >= 10_000, "{full}");
        let mut permits = permits.into_iter();
        permits.by_ref().take(9_900).for_each(drop);
        let left = capacity(&table);
        assert!(left <= 4 * 100, "{full} -> {left}");
        permits.for_each(drop);
        assert!(table.lock().unwrap().is_empty());
        assert!(
            capacity(&table) <= SHRINK_ABOVE_CAPACITY,
            "{}",
            capacity(&table)
        );
    }

    #[test]
    fn connection_limit_counts_and_frees_places() {
        let stats = ConnectionStats::default();
        let a = stats.try_open(2).unwrap();
        let _b = stats.try_open(2).unwrap();
        assert!(stats.try_open(2).is_none());
        assert_eq!((stats.open(), stats.accepted(), stats.refused()), (2, 2, 1));
        drop(a);
        assert_eq!(stats.open(), 1);
        assert!(stats.try_open(2).is_some());
    }
}
