use std::fmt;
use std::sync::{Arc, OnceLock};

use tower_layer::Layer;
use wsguard_config::{ConfigSource, MetricsConfig};

use crate::export::RouteStats;
use crate::request::ClientIdOptions;
use crate::{Metrics, MetricsRegistry};
use wsguard_policy::DefaultClassifier;

/// Which way the calls of a layer go: the layer's calls count as messages (and bytes) in or out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Requests received: the route's handler, or each inbound WebSocket message.
    #[default]
    Inbound,
    /// Messages sent: a service that sends to the client.
    Outbound,
}

impl Direction {
    /// The label value: `in` or `out`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// Records every call of the wrapped service into a [`MetricsRegistry`].
///
/// Build one per route (its label in exported metrics, [`route`](Self::route)) and per
/// direction; layers of one service share a registry. The classifier, which maps results to
/// [`Outcome`](crate::Outcome)s, is swapped with [`classifier`](Self::classifier).
pub struct MetricsLayer<C = DefaultClassifier> {
    pub(crate) shared: Arc<Shared<C>>,
}

pub(crate) struct Shared<C> {
    pub(crate) registry: MetricsRegistry,
    pub(crate) route: Arc<str>,
    pub(crate) direction: Direction,
    // Made when the first service is built, so that builder steps leave no unused series.
    stats: OnceLock<Arc<RouteStats>>,
    pub(crate) options: ClientIdOptions,
    pub(crate) classifier: C,
}

impl MetricsLayer {
    /// A layer recording into `registry`, inbound, route label `default`, default classifier.
    pub fn new(registry: MetricsRegistry) -> Self {
        Self::build(
            registry,
            "default".into(),
            Direction::Inbound,
            ClientIdOptions::default(),
            DefaultClassifier,
        )
    }

    /// A layer over a new registry reading `config`; reach the registry with
    /// [`registry`](Self::registry).
    pub fn from_config(config: impl Into<ConfigSource<MetricsConfig>>) -> Self {
        Self::new(MetricsRegistry::new(config))
    }
}

impl<C> MetricsLayer<C> {
    fn build(
        registry: MetricsRegistry,
        route: Arc<str>,
        direction: Direction,
        options: ClientIdOptions,
        classifier: C,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry,
                route,
                direction,
                stats: OnceLock::new(),
                options,
                classifier,
            }),
        }
    }

    fn rebuild<C2>(
        &self,
        route: Arc<str>,
        direction: Direction,
        options: ClientIdOptions,
        classifier: C2,
    ) -> MetricsLayer<C2> {
        MetricsLayer::build(
            self.shared.registry.clone(),
            route,
            direction,
            options,
            classifier,
        )
    }

    /// The registry this layer records into.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.shared.registry
    }

    /// The route label of exported metrics. Keep it low-cardinality: a route pattern such as
    /// `/ws/{room}`, never a concrete path or a client id.
    pub fn route(self, route: impl Into<Arc<str>>) -> Self
    where
        C: Clone,
    {
        let s = &self.shared;
        self.rebuild(
            route.into(),
            s.direction,
            s.options.clone(),
            s.classifier.clone(),
        )
    }

    /// Which way this layer's calls go (default [`Direction::Inbound`]).
    pub fn direction(self, direction: Direction) -> Self
    where
        C: Clone,
    {
        let s = &self.shared;
        self.rebuild(
            s.route.clone(),
            direction,
            s.options.clone(),
            s.classifier.clone(),
        )
    }

    /// The header naming the client of an `http::Request` (default `x-client-id`).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn client_id_header(self, header: http::HeaderName) -> Self
    where
        C: Clone,
    {
        let s = &self.shared;
        let mut options = s.options.clone();
        options.set_header(header);
        self.rebuild(s.route.clone(), s.direction, options, s.classifier.clone())
    }

    /// Replaces the classifier that maps call results to outcomes.
    pub fn classifier<C2>(self, classifier: C2) -> MetricsLayer<C2> {
        let s = &self.shared;
        self.rebuild(s.route.clone(), s.direction, s.options.clone(), classifier)
    }
}

impl<C> Shared<C> {
    /// The counters of this layer's route and direction, registered with the registry (and
    /// their facade handles with the current recorder) on first use.
    #[inline]
    pub(crate) fn stats(&self) -> &RouteStats {
        self.stats
            .get_or_init(|| self.registry.inner.route_stats(&self.route, self.direction))
    }
}

impl<C> Clone for MetricsLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for MetricsLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsLayer")
            .field("route", &self.shared.route)
            .field("direction", &self.shared.direction)
            .field("classifier", &std::any::type_name::<C>())
            .field("registry", &self.shared.registry)
            .finish()
    }
}

impl<S, C> Layer<S> for MetricsLayer<C> {
    type Service = Metrics<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        // Register the route's handles now, with the recorder current while the stack is built.
        self.shared.stats();
        Metrics {
            inner,
            shared: self.shared.clone(),
        }
    }
}
