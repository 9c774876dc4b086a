//! Figures a registry reads from an outside source (a route's sessions, its rate limit) and
//! publishes through the facade as gauges and counter deltas.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// Figures read from a source: totals since the source began, published as differences.
pub(crate) trait Watched: Copy + Default + Send + 'static {
    /// The facade handles of one route.
    type Handles: Send + Sync;

    /// Registers the handles of `route`.
    fn register(route: &str) -> Self::Handles;

    /// Sets the gauges from `now` and adds to each counter what it gained since `last`.
    fn publish(handles: &Self::Handles, now: &Self, last: &Self);
}

/// Where a route's figures are read.
pub(crate) type Source<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// One route's source, its facade handles and what was last published.
pub(crate) struct RouteWatch<T: Watched> {
    pub(crate) route: Arc<str>,
    source: Mutex<Source<T>>,
    handles: T::Handles,
    published: Mutex<T>,
}

impl<T: Watched> fmt::Debug for RouteWatch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteWatch")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl<T: Watched> RouteWatch<T> {
    /// Watches `route` through `source` in `routes`; a route watched already gets the new
    /// source, and the counters published so far stay.
    pub(crate) fn watch(routes: &Mutex<Vec<Arc<Self>>>, route: Arc<str>, source: Source<T>) {
        let mut routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
        match routes.iter().find(|r| r.route == route) {
            Some(existing) => {
                *existing
                    .source
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = source;
            }
            None => routes.push(Arc::new(Self {
                handles: T::register(&route),
                route,
                source: Mutex::new(source),
                published: Mutex::new(T::default()),
            })),
        }
    }

    /// The figures now.
    pub(crate) fn figures(&self) -> T {
        let source = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        source()
    }

    /// Publishes the gauges and what the counters gained since the last publish.
    pub(crate) fn publish(&self) {
        let now = self.figures();
        let mut last = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        T::publish(&self.handles, &now, &last);
        *last = now;
    }
}
