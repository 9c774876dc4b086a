//! wsguard: tower middleware that keeps WebSocket services stable.
//!
//! This umbrella crate re-exports the wsguard crates behind features (all on by default).

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub use wsguard_axum as axum;
#[cfg(feature = "circuit-breaker")]
pub use wsguard_circuit_breaker as circuit_breaker;
pub use wsguard_config as config;
#[cfg(feature = "dedup")]
pub use wsguard_dedup as dedup;
#[cfg(feature = "metrics")]
pub use wsguard_metrics as metrics;
