//! A connection's registration: [`ConnectionGuard`], and [`ConnectionSlot`] where a long-lived
//! connection keeps it.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::clients::ClientEntry;
use super::{Inner, MetricsRegistry};
use crate::Direction;
use crate::export::RouteStats;

/// A registered connection; dropping it (or [`release`](Self::release)) ends the connection in
/// the registry, and removes its client's state when that was the client's last connection.
pub struct ConnectionGuard {
    registry: Option<Arc<Inner>>,
    entry: Option<Arc<ClientEntry>>,
    released: AtomicBool,
}

impl ConnectionGuard {
    /// The guard of a connection `registry` has just counted, of the client of `entry` if known.
    pub(super) fn new(registry: Arc<Inner>, entry: Option<Arc<ClientEntry>>) -> Self {
        Self {
            registry: Some(registry),
            entry,
            released: AtomicBool::new(false),
        }
    }

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
/// - when it opens, if its owner calls [`register`](Self::register) with the registry, so an
///   idle connection is counted and listed from its first moment (`wsguard-axum` does this for
///   a route given a registry with `WsRoute::metrics`);
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

    /// Registers the connection this slot belongs to, which opens now, with `registry` under
    /// `client_id` (`None`: counted in the aggregates only), before any call.
    ///
    /// Give it the registry of the stack's [`MetricsLayer`](crate::MetricsLayer), so that the
    /// layer's calls record into this registration. Does nothing if the slot is already
    /// registered (with any registry) or was released.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use wsguard_metrics::{ConnectionSlot, MetricsRegistry};
    ///
    /// let registry = MetricsRegistry::new(wsguard_config::MetricsConfig::development());
    /// let slot = Arc::new(ConnectionSlot::new());
    /// slot.register(&registry, Some("alice"));
    /// assert_eq!(registry.active_connections(), 1);
    /// assert_eq!(registry.client("alice").unwrap().connections, 1);
    ///
    /// slot.release(); // the connection closed
    /// assert_eq!(registry.active_connections(), 0);
    /// assert!(registry.client("alice").is_none());
    /// ```
    pub fn register(&self, registry: &MetricsRegistry, client_id: Option<&str>) {
        self.guard.get_or_init(|| registry.inner.connect(client_id));
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
    /// client while it is live
    /// ([`ClientSnapshot::send_dropped`](crate::ClientSnapshot::send_dropped)). Exact, never
    /// sampled. Does nothing if the connection never registered with a registry.
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

    /// Whether the connection is registered (by [`register`](Self::register) or a call) and was
    /// not released since.
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
