use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of `MetricsLayer` and its `MetricsRegistry`.
///
/// `sample_rate` applies to latency timing and per-client detail only; the aggregate counters are
/// always exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record anything at all. When off the layer passes calls straight through.
    pub enabled: bool,
    /// Fraction of calls, in `0.0..=1.0`, whose latency and per-client detail are recorded.
    pub sample_rate: f64,
    /// A client with no live connection and no activity for this long is removed by the sweep.
    #[serde(with = "crate::duration")]
    pub client_metrics_ttl: Duration,
    /// How often the background sweep looks for inactive clients.
    #[serde(with = "crate::duration")]
    pub cleanup_interval: Duration,
    /// Hard cap on tracked clients; past it the least recently active client is evicted.
    pub max_clients: usize,
    /// Upper bounds, in seconds, of the latency histogram's buckets (strictly increasing).
    pub latency_buckets: Vec<f64>,
    /// How many of the most active clients a snapshot lists.
    pub top_clients: usize,
}

impl MetricsConfig {
    /// The default latency buckets, from 100 µs to 10 s.
    pub const DEFAULT_BUCKETS: [f64; 14] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
    ];

    /// Production settings: 10% sampled detail, clients kept an hour after their last activity.
    pub fn production() -> Self {
        Self {
            enabled: true,
            sample_rate: 0.1,
            client_metrics_ttl: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(300),
            max_clients: 100_000,
            latency_buckets: Self::DEFAULT_BUCKETS.to_vec(),
            top_clients: 20,
        }
    }

    /// Development settings: every call recorded, short TTL.
    pub fn development() -> Self {
        Self {
            sample_rate: 1.0,
            client_metrics_ttl: Duration::from_secs(600),
            cleanup_interval: Duration::from_secs(60),
            max_clients: 10_000,
            ..Self::production()
        }
    }

    /// Testing settings: every call recorded, very short TTL.
    pub fn testing() -> Self {
        Self {
            sample_rate: 1.0,
            client_metrics_ttl: Duration::from_secs(5),
            cleanup_interval: Duration::from_secs(1),
            max_clients: 1_000,
            ..Self::production()
        }
    }
}

impl Default for MetricsConfig {
    /// Same as [`MetricsConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}
