use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
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
/// [`DedupLayer::new`](crate::DedupLayer::new) builds one by itself when the config says
/// `store.backend = "redis"` ([`lazy`](Self::lazy): it connects in the background, so building
/// the layer needs no `.await`); [`connect`](Self::connect) connects first and fails if Redis
/// cannot be reached.
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
    conn: Connection,
    prefix: Arc<str>,
    timeout: Duration,
}

/// The store's connection: made before the store, or being made in the background.
#[derive(Clone)]
enum Connection {
    Ready(ConnectionManager),
    Pending(Arc<PendingConnection>),
}

/// A connection made in the background until it succeeds, by one task per store, started on
/// the first command (a task needs a runtime, which building the layer does not).
struct PendingConnection {
    client: redis::Client,
    timeout: Duration,
    manager: watch::Sender<Option<ConnectionManager>>,
    started: AtomicBool,
    failures: AtomicU64,
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
        let conn = open(client, config.operation_timeout).await?;
        Ok(Self::from_connection(conn, config))
    }

    /// A store that connects to `config.url` in the background, from its first command on, and
    /// keeps trying (backing off to 5 s) until Redis answers. Until then every command fails
    /// after `operation_timeout`, and the layer fails open or closed as `on_error` says. Fails
    /// only if the URL is not a Redis URL.
    pub fn lazy(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(StoreError::new)?;
        let pending = PendingConnection {
            client,
            timeout: config.operation_timeout,
            manager: watch::Sender::new(None),
            started: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        };
        Ok(Self {
            conn: Connection::Pending(Arc::new(pending)),
            prefix: config.key_prefix.as_str().into(),
            timeout: config.operation_timeout,
        })
    }

    /// A store on an existing connection; `key_prefix` and `operation_timeout` from `config`.
    pub fn from_connection(conn: ConnectionManager, config: &RedisStoreConfig) -> Self {
        Self {
            conn: Connection::Ready(conn),
            prefix: config.key_prefix.as_str().into(),
            timeout: config.operation_timeout,
        }
    }

    /// The connection, waiting at most `operation_timeout` for one being made.
    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        match &self.conn {
            Connection::Ready(conn) => Ok(conn.clone()),
            Connection::Pending(pending) => pending.get().await,
        }
    }

    /// The Redis key under which `key` is remembered.
    pub fn redis_key(&self, key: Fingerprint) -> String {
        format!("{}{}", self.prefix, key)
    }
}

/// Connects within ten times `timeout` (the handshake); commands then time out after `timeout`.
async fn open(client: redis::Client, timeout: Duration) -> Result<ConnectionManager, StoreError> {
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout * 10))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    tokio::time::timeout(
        timeout * 10,
        ConnectionManager::new_with_config(client, manager),
    )
    .await
    .map_err(|_| StoreError::timeout(timeout * 10))?
    .map_err(StoreError::new)
}

impl PendingConnection {
    async fn get(self: &Arc<Self>) -> Result<ConnectionManager, StoreError> {
        if let Some(conn) = &*self.manager.borrow() {
            return Ok(conn.clone());
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(connect_until_done(Arc::downgrade(self)));
        }
        let mut made = self.manager.subscribe();
        match tokio::time::timeout(self.timeout, made.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => Ok(conn.clone().expect("waited for")),
            _ => Err(StoreError::timeout(self.timeout)),
        }
    }
}

/// Connects until it succeeds or the store is gone.
async fn connect_until_done(pending: Weak<PendingConnection>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(p) = pending.upgrade() else { return };
        match open(p.client.clone(), p.timeout).await {
            Ok(conn) => {
                p.manager.send_replace(Some(conn));
                tracing::info!("dedup store connected to Redis");
                return;
            }
            Err(error) => {
                let n = p.failures.fetch_add(1, Ordering::Relaxed) + 1;
                // Every power of two: a Redis that stays down must not flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(attempts = n, %error, "dedup store cannot reach Redis; retrying");
                }
            }
        }
        drop(p);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DedupStore for RedisStore {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        let store = self.clone();
        let redis_key = self.redis_key(key);
        let timeout = self.timeout;
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        ClaimFuture::boxed(async move {
            let mut conn = store.connection().await?;
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
        let store = self.clone();
        let redis_key = self.redis_key(key);
        let timeout = self.timeout;
        runtime.spawn(async move {
            let Ok(mut conn) = store.connection().await else {
                tracing::warn!("dedup key release (DEL) failed: no connection to Redis");
                return;
            };
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
