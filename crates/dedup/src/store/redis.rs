use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
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
/// **Redis Cluster.** When `cluster_nodes` is set, the store talks to the cluster those seed
/// nodes belong to through a redis `cluster_async::ClusterConnection` (multiplexed per master,
/// follows `MOVED` and slot changes, reconnects by itself), with the same timeouts and the same
/// failing open or closed; `url` is then not used. Every command touches one key, so the window
/// spreads over all masters by slot; keep hash tags (`{...}`) out of `key_prefix`, or the whole
/// window lands on one master. While a master is down its keys cannot be claimed (and, with
/// Redis's default `cluster-require-full-coverage yes`, after `cluster-node-timeout` no key
/// can): the layer fails open or closed until it is back.
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
    Ready(Link),
    Pending(Arc<PendingConnection>),
}

/// A multiplexed connection to one server or to a cluster.
#[derive(Clone)]
enum Link {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Where the store connects: one server, or a cluster through its seed nodes.
#[derive(Clone)]
enum Endpoint {
    Server(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connection made in the background until it succeeds, by one task per store, started on
/// the first command (a task needs a runtime, which building the layer does not).
struct PendingConnection {
    endpoint: Endpoint,
    timeout: Duration,
    manager: watch::Sender<Option<Link>>,
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
    /// Connects to `config.url`, or to the cluster of `config.cluster_nodes` when that is not
    /// empty; fails if Redis does not answer within `operation_timeout` (times 10, for the
    /// handshake).
    pub async fn connect(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let link = open(endpoint(config)?, config.operation_timeout).await?;
        Ok(Self::from_link(link, config))
    }

    /// A store that connects to `config.url` (or to the cluster of `config.cluster_nodes`) in
    /// the background, from its first command on, and keeps trying (backing off to 5 s) until
    /// Redis answers. Until then every command fails after `operation_timeout`, and the layer
    /// fails open or closed as `on_error` says. Fails only if a URL is not a Redis URL.
    pub fn lazy(config: &RedisStoreConfig) -> Result<Self, StoreError> {
        let pending = PendingConnection {
            endpoint: endpoint(config)?,
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
        Self::from_link(Link::Server(conn), config)
    }

    /// A store on an existing Redis Cluster connection; `key_prefix` and `operation_timeout`
    /// from `config`.
    pub fn from_cluster_connection(conn: ClusterConnection, config: &RedisStoreConfig) -> Self {
        Self::from_link(Link::Cluster(conn), config)
    }

    fn from_link(link: Link, config: &RedisStoreConfig) -> Self {
        Self {
            conn: Connection::Ready(link),
            prefix: config.key_prefix.as_str().into(),
            timeout: config.operation_timeout,
        }
    }

    /// The connection, waiting at most `operation_timeout` for one being made.
    async fn connection(&self) -> Result<Link, StoreError> {
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

/// The server or cluster `config` names; an error if a URL is not a Redis URL.
fn endpoint(config: &RedisStoreConfig) -> Result<Endpoint, StoreError> {
    let timeout = config.operation_timeout;
    if config.cluster_nodes.is_empty() {
        let client = redis::Client::open(config.url.as_str()).map_err(StoreError::new)?;
        return Ok(Endpoint::Server(client));
    }
    ClusterClient::builder(config.cluster_nodes.iter().map(String::as_str))
        .connection_timeout(timeout * 10)
        .response_timeout(timeout)
        .build()
        .map(|client| Endpoint::Cluster(Box::new(client)))
        .map_err(StoreError::new)
}

/// Connects within ten times `timeout` (the handshake); commands then time out after `timeout`.
async fn open(endpoint: Endpoint, timeout: Duration) -> Result<Link, StoreError> {
    let handshake = timeout * 10;
    let link = match endpoint {
        Endpoint::Server(client) => {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(handshake))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let connect = ConnectionManager::new_with_config(client, manager);
            tokio::time::timeout(handshake, connect)
                .await
                .map(|conn| conn.map(Link::Server))
        }
        Endpoint::Cluster(client) => {
            let connect = async move { client.get_async_connection().await };
            tokio::time::timeout(handshake, connect)
                .await
                .map(|conn| conn.map(Link::Cluster))
        }
    };
    link.map_err(|_| StoreError::timeout(handshake))?
        .map_err(StoreError::new)
}

/// One server's connection or the cluster's: the cluster one routes each command to the master
/// of its key's slot.
impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}

impl PendingConnection {
    async fn get(self: &Arc<Self>) -> Result<Link, StoreError> {
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
        match open(p.endpoint.clone(), p.timeout).await {
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
