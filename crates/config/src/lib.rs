//! Shared configuration of the wsguard middleware: one serde tree, presets, validation that lists
//! every problem, and live updates; with features, loading from files and the environment and
//! following a file.
//!
//! Every wsguard layer reads its part of a [`StabilityConfig`]: `CircuitBreakerLayer` the
//! [`CircuitBreakerConfig`], `DedupLayer` the [`DedupConfig`], `MetricsLayer` the
//! [`MetricsConfig`], `RateLimitLayer` the [`RateLimitConfig`], and the WebSocket adapter the
//! [`ConnectionConfig`] and, for clients that speak the `wsguard.v1` subprotocol, the
//! [`SessionConfig`]. A layer takes its part
//! either fixed or through a [`ConfigHandle`], which swaps in a new validated config without a
//! restart and without a lock on the request path.
//!
//! [`StabilityConfig::default`] is the production preset; [`StabilityConfig::development`] and
//! [`StabilityConfig::testing`] trade safety margins for fast feedback.
//!
//! ```
//! use std::time::Duration;
//! use wsguard_config::{ConfigHandle, StabilityConfig};
//!
//! let mut config = StabilityConfig::development();
//! config.dedup.ttl = Duration::from_secs(120);
//!
//! // Layers read through a handle; `update` validates, then swaps.
//! let handle = ConfigHandle::new(config)?;
//! let mut next = handle.get().as_ref().clone();
//! next.dedup.ttl = Duration::ZERO;
//! assert!(handle.update(next).is_err()); // refused, every problem listed
//! assert_eq!(handle.load().dedup.ttl, Duration::from_secs(120)); // old config kept
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! None is on by default, so a layer that takes a config built in code compiles neither figment
//! nor notify. The `wsguard` crate turns on `load` and `watch` by default.
//!
//! | feature | adds |
//! |---|---|
//! | `load` | `ConfigLoader`, `LoadError`, `StabilityConfig::from_toml_str`, `from_json_str`, `from_file` and `from_env`, `ConfigHandle::reload`: a preset, then a TOML or JSON file, then `WSGUARD_` environment overrides, validated (figment) |
//! | `watch` | `ConfigHandle::watch_file` and `FileWatcher`: apply each valid change to a file, refuse and log the others (notify); implies `load` |
//! | `tower` | `RetryConfig::policy`: the retry settings as a `tower::retry` policy |
//!
//! Writing a config out ([`StabilityConfig::to_toml_string`], [`StabilityConfig::to_json_string`])
//! needs no feature.
//!
//! With `load`, a file overrides the fields it names and the rest keep the base:
//!
//! ```
//! # #[cfg(feature = "load")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use wsguard_config::StabilityConfig;
//!
//! let config = StabilityConfig::from_toml_str(r#"
//!     [circuit_breaker]
//!     mode = "consecutive_failures"
//!     failure_threshold = 3
//!     timeout = "30s"
//!
//!     [dedup]
//!     ttl = "2m"
//! "#)?;
//! assert_eq!(config.circuit_breaker.timeout, Duration::from_secs(30));
//! assert_eq!(config.dedup.ttl, Duration::from_secs(120));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "load"))]
//! # fn main() {}
//! ```
//!
//! With `watch`, `ConfigHandle::watch_file` follows a file: a change that does not load or
//! validate is refused and the running config kept, and a reload never applies a file that sets
//! no field (an empty file is what a writer leaves between truncation and write).

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod circuit_breaker;
mod connection;
mod dedup;
mod duration;
#[cfg(feature = "load")]
mod load;
mod metrics;
mod rate_limit;
mod reload;
mod retry;
mod serialize;
mod session;
#[cfg(feature = "tower")]
mod tower_retry;
mod validate;
#[cfg(feature = "watch")]
mod watch;

use serde::{Deserialize, Serialize};

#[cfg(feature = "load")]
#[cfg_attr(docsrs, doc(cfg(feature = "load")))]
pub use self::load::{ConfigLoader, LoadError};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use self::tower_retry::{ConfigBackoff, ConfigBackoffMaker, RetryPolicy, RetryWait};
#[cfg(feature = "watch")]
#[cfg_attr(docsrs, doc(cfg(feature = "watch")))]
pub use self::watch::FileWatcher;
pub use self::{
    circuit_breaker::{BackoffStrategy, CircuitBreakerConfig, OpenBackoff, TripMode},
    connection::{ClientIdSource, ConnectionConfig, OverflowPolicy, RejectionAction},
    dedup::{
        DedupConfig, DedupScope, DuplicateAction, FailureMode, KeySource, RedisStoreConfig,
        StoreBackend, StoreConfig,
    },
    metrics::MetricsConfig,
    rate_limit::{RateLimitAction, RateLimitConfig, RateLimitScope},
    reload::{ConfigHandle, ConfigSource, Section},
    retry::RetryConfig,
    serialize::SerializeError,
    session::{SessionBackend, SessionConfig, SessionRedisConfig, SessionStoreConfig},
    validate::{FieldError, ValidationError},
};

/// The whole wsguard configuration.
///
/// `Default` is the production preset: sampled latency metrics, high thresholds, long TTLs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StabilityConfig {
    /// `MetricsLayer` and its registry.
    pub metrics: MetricsConfig,
    /// `CircuitBreakerLayer`.
    pub circuit_breaker: CircuitBreakerConfig,
    /// `DedupLayer`.
    pub dedup: DedupConfig,
    /// WebSocket connections.
    pub connection: ConnectionConfig,
    /// Sessions of clients that speak `wsguard.v1`: resume after a disconnect, exactly once.
    pub session: SessionConfig,
    /// `RateLimitLayer`: messages and bytes per second, per client, per connection or for all.
    pub rate_limit: RateLimitConfig,
    /// Retries of outbound calls.
    pub retry: RetryConfig,
}

/// A named preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// [`StabilityConfig::production`], the default.
    Production,
    /// [`StabilityConfig::development`].
    Development,
    /// [`StabilityConfig::testing`].
    Testing,
}

impl Preset {
    /// The preset named `name` (`production`, `development` or `testing`; `prod`, `dev` and
    /// `test` also work).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "production" | "prod" => Some(Self::Production),
            "development" | "dev" => Some(Self::Development),
            "testing" | "test" => Some(Self::Testing),
            _ => None,
        }
    }

    /// The configuration of this preset.
    pub fn config(self) -> StabilityConfig {
        match self {
            Self::Production => StabilityConfig::production(),
            Self::Development => StabilityConfig::development(),
            Self::Testing => StabilityConfig::testing(),
        }
    }
}

impl StabilityConfig {
    /// Production: 10% sampled latency and per-client detail, rate-based breaker over 100 calls
    /// with a 60 s open wait, 5-minute dedup window, clients kept an hour, sessions kept 5 minutes
    /// after a disconnect, 100 messages and 1 MiB per second per client. Same as `default()`.
    pub fn production() -> Self {
        Self {
            metrics: MetricsConfig::production(),
            circuit_breaker: CircuitBreakerConfig::production(),
            dedup: DedupConfig::production(),
            connection: ConnectionConfig::production(),
            session: SessionConfig::production(),
            rate_limit: RateLimitConfig::production(),
            retry: RetryConfig::production(),
        }
    }

    /// Development: every call measured, breaker opens after 5 failures in a row for 10 s,
    /// 1-minute dedup window, clients kept 10 minutes, sessions kept 5 minutes.
    pub fn development() -> Self {
        Self {
            metrics: MetricsConfig::development(),
            circuit_breaker: CircuitBreakerConfig::development(),
            dedup: DedupConfig::development(),
            connection: ConnectionConfig::development(),
            session: SessionConfig::development(),
            rate_limit: RateLimitConfig::development(),
            retry: RetryConfig::development(),
        }
    }

    /// Testing: every call measured, breaker opens after 2 failures in a row for 1 s, 1-second
    /// dedup window, clients and sessions kept 5 seconds.
    pub fn testing() -> Self {
        Self {
            metrics: MetricsConfig::testing(),
            circuit_breaker: CircuitBreakerConfig::testing(),
            dedup: DedupConfig::testing(),
            connection: ConnectionConfig::testing(),
            session: SessionConfig::testing(),
            rate_limit: RateLimitConfig::testing(),
            retry: RetryConfig::testing(),
        }
    }
}
