use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Section, StabilityConfig};

/// Whose messages share one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Each client id has its own limit, shared by all of that client's connections (opening
    /// more connections does not raise it). As good as the client id: with a client-chosen id
    /// (`connection.client_id = "header"` or `"query"`) a client can take a fresh limit by
    /// changing its id, or spend another client's by claiming it.
    Client,
    /// Each connection has its own limit.
    Connection,
    /// One limit for everyone.
    Global,
}

/// What a WebSocket client hears when it goes over its rate limit. HTTP routes always answer
/// `429 Too Many Requests` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// Nothing: the message is dropped silently.
    Drop,
    /// A JSON error frame carrying the delay after which a message may pass again.
    ErrorFrame,
    /// Close the connection with `1008 Policy Violation`.
    Close,
}

/// Settings of `RateLimitLayer`: messages per second and bytes per second, each with a burst.
///
/// A limit refills at its rate and holds at most its burst: a quiet client may send `burst`
/// messages at once, then one every `1 / rate` seconds. A rate of `0` turns that limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// When off every message passes.
    pub enabled: bool,
    /// Whose messages share one limit.
    pub scope: RateLimitScope,
    /// Messages per second that refill the message limit; `0`: no message limit.
    pub messages_per_second: u32,
    /// Most messages passed at once after a quiet spell.
    pub messages_burst: u32,
    /// Payload bytes per second that refill the byte limit (at most 10^9); `0`: no byte limit.
    pub bytes_per_second: u32,
    /// Most payload bytes passed at once after a quiet spell; a larger message never passes.
    pub bytes_burst: u32,
    /// What a WebSocket client hears when it goes over its limit.
    pub on_limit: RateLimitAction,
    /// With `on_limit = "drop"` or `"error_frame"`, each refusal is held until the client's
    /// limit would let a message pass again, at most this long; `0s`: refusals are immediate.
    ///
    /// The WebSocket adapter reads a connection's next message only when enough of its calls
    /// are done (`connection.message_concurrency`), so a held refusal slows the reading of that
    /// connection to its limit and TCP flow control slows its sender: a flood costs the server,
    /// and the clients beside it, one refusal per retry delay instead of one per message sent.
    /// The flooding client's own later messages wait their turn behind it. Not applied to
    /// `on_limit = "close"` nor on HTTP routes, whose `429` is immediate. At most 60 s and less
    /// than `connection.idle_timeout`.
    #[serde(with = "crate::duration")]
    pub hold_refused: Duration,
    /// Most keys (clients, connections) tracked at once, per limit; past it the key closest to a
    /// full limit is evicted (and counted).
    pub max_keys: usize,
    /// How often the background sweep forgets keys whose limit has refilled completely.
    #[serde(with = "crate::duration")]
    pub cleanup_interval: Duration,
}

impl RateLimitConfig {
    /// Production settings: per client, 100 messages per second (bursts of 200) and 1 MiB per
    /// second (bursts of 2 MiB), an error frame past the limit held until the limit refills (at
    /// most 1 s), at most 100,000 clients tracked.
    pub fn production() -> Self {
        Self {
            enabled: true,
            scope: RateLimitScope::Client,
            messages_per_second: 100,
            messages_burst: 200,
            bytes_per_second: 1024 * 1024,
            bytes_burst: 2 * 1024 * 1024,
            on_limit: RateLimitAction::ErrorFrame,
            hold_refused: Duration::from_secs(1),
            max_keys: 100_000,
            cleanup_interval: Duration::from_secs(60),
        }
    }

    /// Development settings: the production limits, fewer keys, a sweep every 10 s.
    pub fn development() -> Self {
        Self {
            max_keys: 10_000,
            cleanup_interval: Duration::from_secs(10),
            ..Self::production()
        }
    }

    /// Testing settings: the production limits with immediate refusals, at most 1,000 keys, a
    /// sweep every second.
    pub fn testing() -> Self {
        Self {
            hold_refused: Duration::ZERO,
            max_keys: 1_000,
            cleanup_interval: Duration::from_secs(1),
            ..Self::production()
        }
    }
}

impl Default for RateLimitConfig {
    /// Same as [`RateLimitConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}

impl Section for RateLimitConfig {
    fn of(config: &StabilityConfig) -> &Self {
        &config.rate_limit
    }
}
