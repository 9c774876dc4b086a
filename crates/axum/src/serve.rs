//! An HTTP/1 server for WebSocket routes that bounds the connections still sending their
//! upgrade request.
//!
//! `axum::serve` sets no header-read timeout, and a connection counts against a route's
//! `max_connections` only once its upgrade request has arrived; a client that connects and sends
//! part of a request head, or nothing, holds a socket and its buffers for as long as it likes.
//! [`serve`] runs the same router with two bounds on such connections:
//!
//! - [`header_read_timeout`](Serve::header_read_timeout) (10 s by default): a connection whose
//!   request head is not complete in time is closed. Hyper closes it without a response (no
//!   `408`) and [`ServeStats::header_timeouts`] counts it. The timeout runs while hyper waits for
//!   any request head, so it also closes a keep-alive connection left idle that long between
//!   requests; it stops applying once a connection is upgraded to a WebSocket.
//! - [`max_pending_handshakes`](Serve::max_pending_handshakes) (1,024 by default): at most this
//!   many accepted connections may be waiting for their first request head. A connection
//!   accepted past it is closed at once, without a response, counted in [`ServeStats::refused`]
//!   and logged (at a bounded rate). A connection stops counting when its first request reaches
//!   the router or when it closes.
//!
//! Accepted sockets have `TCP_NODELAY` set: frames go out as soon as they are written.
//!
//! Handlers see the peer address as `ConnectInfo<SocketAddr>` (and as a plain `SocketAddr`
//! extension, which `RateLimitLayer::http` keys by), as with
//! `Router::into_make_service_with_connect_info::<SocketAddr>()`, so [`ws_route`](crate::ws_route)
//! takes client ids from it. Every request also carries the server's [`Drain`]: on the shutdown
//! signal the WebSocket connections of its routes are drained (upgrades refused with `503`, each
//! connection closed with `1001` and a reconnect delay once its calls and queue are done), then
//! the server stops accepting.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use axum::Router;
//! use wsguard_axum::{BoxError, Inbound, Message, ws_route};
//! use wsguard_config::StabilityConfig;
//!
//! async fn echo(request: Inbound) -> Result<Option<Message>, BoxError> {
//!     Ok(Some(request.message))
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route(
//!     "/ws",
//!     ws_route(tower::service_fn(echo), StabilityConfig::development()),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//!
//! let server = wsguard_axum::serve(listener, app)
//!     .header_read_timeout(Duration::from_secs(5))
//!     .max_pending_handshakes(512)
//!     .with_graceful_shutdown(async {
//!         let _ = stopped.await;
//!     });
//! let stats = server.stats();
//! let running = tokio::spawn(server.into_future());
//!
//! // ... later: drain the WebSockets (at most `drain_timeout`), stop accepting, let HTTP
//! // connections finish (at most `shutdown_timeout`).
//! let _ = stop.send(());
//! running.await.unwrap();
//! println!("{} refused, {} header timeouts", stats.refused(), stats.header_timeouts());
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower::util::Oneshot;
use tower_service::Service;

use crate::drain::{Drain, DrainReport};
use crate::warn_limit::{WarnLimit, limited_warn};

const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 1024;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(5);
/// Pause after an accept error such as `EMFILE`, which would otherwise repeat at once.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `app` on `listener` over HTTP/1 with WebSocket upgrades, bounding the connections that
/// have not sent their first request head (see the [module docs](self)).
///
/// Configure the returned [`Serve`] with its builder methods, then `.await` it. It runs until
/// its [graceful shutdown](Serve::with_graceful_shutdown) signal, forever without one.
pub fn serve<S>(listener: TcpListener, app: S) -> Serve<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    Serve {
        listener,
        app,
        header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        reconnect_window: DEFAULT_RECONNECT_WINDOW,
        drain: Drain::new(),
        signal: None,
        stats: ServeStats::default(),
    }
}

/// A server made by [`serve`]: its options, then `.await` to run it.
#[must_use = "a server does nothing until awaited"]
pub struct Serve<S> {
    listener: TcpListener,
    app: S,
    header_read_timeout: Duration,
    max_pending_handshakes: usize,
    shutdown_timeout: Duration,
    drain_timeout: Duration,
    reconnect_window: Duration,
    drain: Drain,
    signal: Option<ShutdownSignal>,
    stats: ServeStats,
}

impl<S> Serve<S> {
    /// Time a client has to send a complete request head, counted from when the server starts
    /// reading it (10 s by default). Past it the connection is closed without a response.
    ///
    /// Applies to every request head of a connection, so a keep-alive connection idle this long
    /// between requests is closed too; an upgraded WebSocket is no longer subject to it.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Most accepted connections whose first request head has not arrived yet (1,024 by
    /// default). A connection accepted past it is closed at once, without a response.
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending_handshakes = max;
        self
    }

    /// How long a graceful shutdown waits for HTTP connections to finish before closing them
    /// (10 s by default).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a shutdown waits for WebSocket connections to close (10 s by default): each one
    /// stops reading, finishes its calls in flight, writes what is queued for it and closes with
    /// `1001`. The shutdown never waits longer; connections still open then are counted in the
    /// [report](crate::DrainReport).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The window reconnect delays are spread over (5 s by default): each WebSocket closed by the
    /// drain is told, in its close reason, to reconnect after its own delay in it
    /// (`server going away; reconnect in 1234 ms`), so clients do not all come back at once.
    pub fn reconnect_window(mut self, window: Duration) -> Self {
        self.reconnect_window = window;
        self
    }

    /// The drain of this server's WebSocket connections: every request carries it, so routes
    /// made by [`ws_route`](crate::ws_route) refuse upgrades with `503` once it has started and
    /// close their connections when it runs. Its [report](crate::Drain::run) says what happened.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// Stops the server when `signal` completes. First the WebSocket connections are drained:
    /// upgrades are refused with `503` and `Retry-After`, every connection closes with `1001` and
    /// a reconnect delay after finishing its calls and writing what is queued (for at most
    /// [`drain_timeout`](Self::drain_timeout)); the report is logged. Then no more connections
    /// are accepted, idle HTTP connections close, requests in progress finish (for at most
    /// [`shutdown_timeout`](Self::shutdown_timeout)), and the server's future completes.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The server's counters; clones share them, and they stay readable after it stops.
    pub fn stats(&self) -> ServeStats {
        self.stats.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S> IntoFuture for Serve<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Output = ();
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(self.run()))
    }
}

impl<S> Serve<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    async fn run(self) {
        let Self {
            listener,
            app,
            header_read_timeout,
            max_pending_handshakes,
            shutdown_timeout,
            drain_timeout,
            reconnect_window,
            drain,
            signal,
            stats,
        } = self;
        let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        // The drain runs while connections are still accepted, so that upgrades get a `503`.
        let draining = drain.clone();
        let mut drained = pin!(async move {
            (&mut signal).await;
            draining.run(drain_timeout, reconnect_window).await
        });

        loop {
            tokio::select! {
                biased;
                report = &mut drained => {
                    log_drain(&report);
                    break;
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        stats.inner.accepted.fetch_add(1, Ordering::Relaxed);
                        // WebSocket frames are small and written as soon as they are ready: with
                        // Nagle's algorithm on, a write after another waits for the peer's
                        // delayed ACK (a resume's replay took 44 ms instead of 0.6 ms).
                        let _ = stream.set_nodelay(true);
                        let Some(slot) = PendingSlot::reserve(&stats.inner, max_pending_handshakes)
                        else {
                            static WARN: WarnLimit = WarnLimit::new();
                            stats.inner.refused.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                            limited_warn!(
                                WARN,
                                max_pending_handshakes,
                                "connection refused: too many waiting for their request head"
                            );
                            continue;
                        };
                        let app = ConnectionApp { app: app.clone(), peer, slot, drain: drain.clone() };
                        let conn = http.serve_connection(TokioIo::new(stream), app).with_upgrades();
                        let open = OpenConnection::new(&stats.inner);
                        connections.spawn(serve_connection(conn, shutdown_rx.clone(), open));
                    }
                    Err(err) => {
                        stats.inner.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if is_connection_error(&err) {
                            continue;
                        }
                        // An error such as `EMFILE` repeats as long as its cause lasts.
                        static ACCEPT_ERRORS: WarnLimit = WarnLimit::new();
                        if let Some(suppressed) = ACCEPT_ERRORS.admit() {
                            tracing::error!(error = %err, suppressed, "accept failed; backing off");
                        }
                        tokio::select! {
                            report = &mut drained => {
                                log_drain(&report);
                                break;
                            }
                            () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        }
                    }
                },
            }
        }

        drop(listener);
        shutdown.send_replace(true);
        let drained = tokio::time::timeout(shutdown_timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = connections.len(),
                "graceful shutdown timed out; closing the remaining HTTP connections"
            );
            connections.shutdown().await;
        }
    }
}

fn log_drain(report: &DrainReport) {
    tracing::info!(
        closed = report.connections_closed,
        flushed = report.messages_flushed,
        dropped = report.messages_dropped,
        still_open = report.still_open,
        elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        "websocket connections drained"
    );
}

/// The future of a running [`Serve`]; completes after a graceful shutdown.
#[must_use = "futures do nothing unless polled"]
pub struct ServeFuture(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for ServeFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

async fn serve_connection<S>(
    conn: http1::UpgradeableConnection<TokioIo<TcpStream>, ConnectionApp<S>>,
    mut shutdown: watch::Receiver<bool>,
    open: OpenConnection,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // The guard `wait_for` returns is not `Send`: drop it before awaiting the connection.
        () = async { drop(shutdown.wait_for(|&stop| stop).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(err) = result {
        if err.is_timeout() {
            open.counters
                .header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("connection closed: request head not received in time");
        } else {
            tracing::debug!(error = %err, "connection ended with an error");
        }
    }
}

/// ECONNABORTED and the like: one client's failure, not the listener's.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The router as one connection sees it: each request carries the peer address, and the first
/// one frees the connection's pending place.
struct ConnectionApp<S> {
    app: S,
    peer: SocketAddr,
    slot: PendingSlot,
    drain: Drain,
}

impl<S> hyper::service::Service<http::Request<Incoming>> for ConnectionApp<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Oneshot<S, Request>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.slot.release();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // Also plain, for layers that do not depend on axum (`RateLimitLayer::http` keys
        // upgrade requests by this address).
        request.extensions_mut().insert(self.peer);
        request.extensions_mut().insert(self.drain.clone());
        self.app.clone().oneshot(request)
    }
}

/// A connection's place among those waiting for their first request head, freed by
/// [`release`](Self::release) or on drop, whichever comes first.
struct PendingSlot {
    counters: Arc<Counters>,
    held: AtomicBool,
}

impl PendingSlot {
    fn reserve(counters: &Arc<Counters>, max: usize) -> Option<Self> {
        counters
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending < max).then_some(pending + 1)
            })
            .ok()?;
        Some(Self {
            counters: counters.clone(),
            held: AtomicBool::new(true),
        })
    }

    fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.counters.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// One HTTP connection being served, counted until its task ends or is aborted.
struct OpenConnection {
    counters: Arc<Counters>,
}

impl OpenConnection {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.connections.fetch_add(1, Ordering::AcqRel);
        Self {
            counters: counters.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of a [`Serve`]; clones share them.
#[derive(Debug, Clone, Default)]
pub struct ServeStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    pending: AtomicUsize,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    accept_errors: AtomicU64,
    connections: AtomicUsize,
}

impl ServeStats {
    /// TCP connections accepted so far, refused ones included.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// Connections accepted whose first request head has not reached the router yet.
    pub fn pending_handshakes(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Connections closed at once because
    /// [`max_pending_handshakes`](Serve::max_pending_handshakes) were pending.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because a request head, first or later, did not arrive within
    /// [`header_read_timeout`](Serve::header_read_timeout).
    pub fn header_timeouts(&self) -> u64 {
        self.inner.header_timeouts.load(Ordering::Relaxed)
    }

    /// Errors returned by `accept`, including a client's aborted connection.
    pub fn accept_errors(&self) -> u64 {
        self.inner.accept_errors.load(Ordering::Relaxed)
    }

    /// HTTP connections being served now; an upgraded WebSocket no longer counts.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_slots_stop_at_max_and_free_once_on_release_or_drop() {
        let counters = Arc::new(Counters::default());
        let first = PendingSlot::reserve(&counters, 2).unwrap();
        let second = PendingSlot::reserve(&counters, 2).unwrap();
        assert!(PendingSlot::reserve(&counters, 2).is_none());
        assert_eq!(counters.pending.load(Ordering::Acquire), 2);

        first.release();
        first.release();
        assert_eq!(counters.pending.load(Ordering::Acquire), 1);
        drop(first);
        assert_eq!(counters.pending.load(Ordering::Acquire), 1);

        let third = PendingSlot::reserve(&counters, 2).unwrap();
        assert!(PendingSlot::reserve(&counters, 2).is_none());
        drop(second);
        drop(third);
        assert_eq!(counters.pending.load(Ordering::Acquire), 0);
    }
}
