use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use wsguard_config::RedisStoreConfig;

use super::{Claim, ClaimFuture, DedupStore};
use crate::error::StoreError;
use crate::fingerprint::Fingerprint;

/// A window shared by several nodes through Redis.
///
/// A claim is one `SET <key_prefix><fingerprint> <first sight, unix ms> NX PX <ttl> GET`:
/// atomic, so of two nodes claiming the same key at once exactly one wins, and the loser learns
/// when the key was first seen. A release is a `DEL`, sent in the background. Every command is
/// bounded by `operation_timeout`; an error or a timeout is a [`StoreError`], and the layer then
/// fails open or closed as `on_error` says. The connection is a redis `ConnectionManager`
/// (multiplexed, reconnects by itself once Redis is back).
///
/// Needs Redis 7.0 or newer (`SET ... NX GET`), and the same `fingerprint_key` on every node.
///
/// ```no_run
/// use wsguard_config::DedupConfig;
/// use wsguard_dedup::{DedupLayer, store::RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = DedupConfig::default();
/// config.fingerprint_key = Some("000102030405060708090a0b0c0d0e0f".into());
/// let store = RedisStore::connect(&config.store.redis).await?;
/// let layer = DedupLayer::new(config).store(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `config.url`; fails if Redis does not answer within `operation_timeout`
    /// (times 10, for the handshake).
    pub async fn connect(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(StoreError::new)?;
        let timeout = config.operation_timeout;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout * 10))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout * 10,
            ConnectionManager::new_with_config(client, manager),
        )
        .await
        .map_err(|_| StoreError::timeout(timeout * 10))?
        .map_err(StoreError::new)?;
        Ok(Self::from_connection(conn, config))
    }

    /// A store on an existing connection; `key_prefix` and `operation_timeout` from `config`.
    pub fn from_connection(conn: ConnectionManager, config: &RedisStoreConfig) -> Self {
        Self {
            conn,
            prefix: config.key_prefix.as_str().into(),
            timeout: config.operation_timeout,
        }
    }

    /// The Redis key under which `key` is remembered.
    pub fn redis_key(&self, key: Fingerprint) -> String {
        format!("{}{}", self.prefix, key)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DedupStore for RedisStore {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        let mut conn = self.conn.clone();
        let redis_key = self.redis_key(key);
        let timeout = self.timeout;
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        ClaimFuture::boxed(async move {
            let now = unix_ms();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&redis_key)
                .arg(now)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .arg("GET");
            match tokio::time::timeout(timeout, cmd.query_async::<Option<String>>(&mut conn)).await
            {
                Err(_) => Err(StoreError::timeout(timeout)),
                Ok(Err(e)) => Err(StoreError::new(e)),
                Ok(Ok(None)) => Ok(Claim::Fresh),
                Ok(Ok(Some(first))) => {
                    let first = first.parse::<u64>().unwrap_or(now);
                    Ok(Claim::Duplicate {
                        age: Duration::from_millis(now.saturating_sub(first)),
                    })
                }
            }
        })
    }

    fn release(&self, key: Fingerprint) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("dedup key not released: no tokio runtime to send DEL on");
            return;
        };
        let mut conn = self.conn.clone();
        let redis_key = self.redis_key(key);
        let timeout = self.timeout;
        runtime.spawn(async move {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&redis_key);
            let del = cmd.query_async::<i64>(&mut conn);
            match tokio::time::timeout(timeout, del).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "dedup key release (DEL) failed"),
                Err(_) => tracing::warn!("dedup key release (DEL) timed out"),
            }
        });
    }

    fn is_shared(&self) -> bool {
        true
    }
}
