use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which store holds the sessions and their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionBackend {
    /// In-process memory, bounded by `max_sessions` and `max_total_bytes` (the embedded default).
    Memory,
    /// A Redis server shared by several nodes, so a client can resume on any of them.
    Redis,
}

/// Settings of the Redis session store.
///
/// Unlike the dedup store there is no `on_error`: a session cannot fail open, so when Redis
/// errors or does not answer in time the hello or resume is answered `unavailable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionRedisConfig {
    /// `redis://`, `rediss://` or `unix://` URL of the server.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://` or `rediss://` URLs). Empty (the default): one
    /// server at `url`. Set: the store talks to the cluster these nodes belong to, and `url` is
    /// not used. All keys of one session share a hash tag, so they live on one shard.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key the store writes.
    pub key_prefix: String,
    /// Longest wait for one Redis command before the client is answered `unavailable`.
    #[serde(with = "crate::duration")]
    pub operation_timeout: Duration,
}

impl Default for SessionRedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            cluster_nodes: Vec::new(),
            key_prefix: "wsguard:session:".to_owned(),
            operation_timeout: Duration::from_millis(50),
        }
    }
}

/// Which store holds the sessions, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionStoreConfig {
    /// Memory or Redis.
    pub backend: SessionBackend,
    /// Used when `backend = "redis"`.
    pub redis: SessionRedisConfig,
}

impl Default for SessionStoreConfig {
    fn default() -> Self {
        Self {
            backend: SessionBackend::Memory,
            redis: SessionRedisConfig::default(),
        }
    }
}

/// Settings of sessions: the `wsguard.v1` subprotocol, under which a client that drops and
/// reconnects within `ttl` loses no message and sees none twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Serve `wsguard.v1` to clients that offer it; off: they get plain WebSocket. On in every
    /// preset, since only a client that offers the subprotocol gets a session.
    pub enabled: bool,
    /// How long a detached session (its client disconnected) is kept and keeps logging messages.
    #[serde(with = "crate::duration")]
    pub ttl: Duration,
    /// Outbound messages one session log holds until acknowledged; past it the oldest are dropped.
    pub max_messages: usize,
    /// Outbound payload bytes one session log holds until acknowledged.
    pub max_bytes: usize,
    /// Sessions live or detached at once, per process.
    pub max_sessions: usize,
    /// Outbound payload bytes held by all session logs together, per process. The memory store
    /// checks it against a total its shards update in steps, so it may be passed by up to
    /// 1/16 of it (64 KiB per shard at most) before it frees detached sessions.
    pub max_total_bytes: usize,
    /// Longest wait before the server acknowledges processed client messages (acks are batched).
    #[serde(with = "crate::duration")]
    pub ack_interval: Duration,
    /// Which store holds the sessions.
    pub store: SessionStoreConfig,
}

impl SessionConfig {
    /// Production settings: sessions kept 5 minutes after a disconnect, 1000 messages or 1 MiB
    /// per session, 100 000 sessions and 256 MiB per process.
    pub fn production() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(300),
            max_messages: 1_000,
            max_bytes: 1024 * 1024,
            max_sessions: 100_000,
            max_total_bytes: 256 * 1024 * 1024,
            ack_interval: Duration::from_millis(50),
            store: SessionStoreConfig::default(),
        }
    }

    /// Development settings: 10 000 sessions and 64 MiB per process.
    pub fn development() -> Self {
        Self {
            max_sessions: 10_000,
            max_total_bytes: 64 * 1024 * 1024,
            ..Self::production()
        }
    }

    /// Testing settings: sessions kept 5 seconds, small logs and caps, acks within 10 ms.
    pub fn testing() -> Self {
        Self {
            ttl: Duration::from_secs(5),
            max_messages: 64,
            max_bytes: 64 * 1024,
            max_sessions: 1_000,
            max_total_bytes: 8 * 1024 * 1024,
            ack_interval: Duration::from_millis(10),
            ..Self::production()
        }
    }
}

impl Default for SessionConfig {
    /// Same as [`SessionConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}
