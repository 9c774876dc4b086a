use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a message's deduplication key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A keyed 128-bit fingerprint of the content (JSON compared as values, other payloads as bytes).
    Fingerprint,
    /// A client-supplied id in the top-level JSON field named by `json_field`: a string or an
    /// integer token; any other value, or the field given twice, is no id.
    JsonField,
    /// A client-supplied id in the HTTP header named by `header`.
    Header,
}

/// Whose messages share one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupScope {
    /// Each connection has its own window.
    Connection,
    /// Each client id has its own window; one client never suppresses another's message, as
    /// long as it cannot claim another's id. Validation refuses it with a client-chosen id
    /// (`connection.client_id = "header"` or `"query"`) unless `connection.client_id_trusted`.
    Client,
    /// One window for everyone.
    Global,
}

/// What a WebSocket client hears of a duplicate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateAction {
    /// Nothing: the duplicate is dropped silently.
    Drop,
    /// A small JSON acknowledgement frame.
    Ack,
}

/// Which store holds the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// In-process memory, bounded by `max_entries` (the embedded default).
    Memory,
    /// A Redis server shared by several nodes (`SET key NX PX`).
    Redis,
}

/// What the Redis store does when Redis errors or does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Deliver the message, count it and log a warning.
    FailOpen,
    /// Reject the message.
    FailClosed,
}

/// Settings of the Redis store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://` or `rediss://` URL of the server.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://` URLs). Empty (the default): one
    /// server at `url`. Set: the store talks to the cluster these nodes belong to, discovering
    /// the others from whichever answers, and `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key the store writes.
    pub key_prefix: String,
    /// Longest wait for one Redis command before `on_error` applies.
    #[serde(with = "crate::duration")]
    pub operation_timeout: Duration,
    /// Deliver (fail open) or reject (fail closed) when Redis fails.
    pub on_error: FailureMode,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            cluster_nodes: Vec::new(),
            key_prefix: "wsguard:dedup:".to_owned(),
            operation_timeout: Duration::from_millis(50),
            on_error: FailureMode::FailOpen,
        }
    }
}

/// Which store holds the window, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Memory or Redis.
    pub backend: StoreBackend,
    /// Used when `backend = "redis"`.
    pub redis: RedisStoreConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Memory,
            redis: RedisStoreConfig::default(),
        }
    }
}

/// Settings of `DedupLayer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// When off every message passes.
    pub enabled: bool,
    /// How long after its first sight a key suppresses its duplicates.
    #[serde(with = "crate::duration", alias = "ttl_seconds")]
    pub ttl: Duration,
    /// Fingerprint with keyed SipHash-1-3 (fast); off: keyed SipHash-2-4 (more rounds). Both 128-bit.
    pub use_fast_hash: bool,
    /// Where a message's key comes from.
    pub key: KeySource,
    /// JSON field holding the client's message id (`key = "json_field"`).
    pub json_field: String,
    /// HTTP header holding the client's idempotency key (`key = "header"`).
    pub header: String,
    /// With `json_field` or `header`: fingerprint messages that carry no id instead of passing them.
    pub fingerprint_when_missing: bool,
    /// Whose messages share one window.
    pub scope: DedupScope,
    /// Most keys remembered at once; past it the oldest are evicted (and counted).
    pub max_entries: usize,
    /// Forget a key when the inner service fails, so a retry can pass (keeps at-least-once).
    pub release_on_failure: bool,
    /// HTTP status answered for a duplicate request.
    pub duplicate_status: u16,
    /// What a WebSocket client hears of a duplicate message.
    pub on_duplicate: DuplicateAction,
    /// 32 hex digits (128 bits) keying the fingerprint. Unset: a random key per process. Set the
    /// same key on every node that shares a Redis window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint_key: Option<String>,
    /// Which store holds the window.
    pub store: StoreConfig,
}

impl DedupConfig {
    /// Production settings: a 5-minute window of at most a million keys per process.
    pub fn production() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(300),
            use_fast_hash: true,
            key: KeySource::Fingerprint,
            json_field: "id".to_owned(),
            header: "idempotency-key".to_owned(),
            fingerprint_when_missing: true,
            scope: DedupScope::Connection,
            max_entries: 1_000_000,
            release_on_failure: true,
            duplicate_status: 409,
            on_duplicate: DuplicateAction::Drop,
            fingerprint_key: None,
            store: StoreConfig::default(),
        }
    }

    /// Development settings: a 1-minute window.
    pub fn development() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_entries: 100_000,
            ..Self::production()
        }
    }

    /// Testing settings: a 1-second window.
    pub fn testing() -> Self {
        Self {
            ttl: Duration::from_secs(1),
            max_entries: 10_000,
            ..Self::production()
        }
    }

    /// The fingerprint key as 16 bytes, if `fingerprint_key` is set and valid.
    pub fn fingerprint_key_bytes(&self) -> Option<[u8; 16]> {
        parse_hex_key(self.fingerprint_key.as_deref()?)
    }
}

impl Default for DedupConfig {
    /// Same as [`DedupConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}

pub(crate) fn parse_hex_key(s: &str) -> Option<[u8; 16]> {
    let s = s.as_bytes();
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}
