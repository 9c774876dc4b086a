mod queue;

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisWrite, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use wsguard_config::RedisStoreConfig;

use self::queue::Queue;
use super::{Claim, ClaimFuture, DedupStore};
use crate::error::StoreError;
use crate::fingerprint::Fingerprint;

/// A window shared by several nodes through Redis.
///
/// A claim is one `SET <key_prefix><fingerprint> <first sight, unix ms> NX PX <ttl> GET`:
/// atomic, so of two nodes claiming the same key at once exactly one wins, and the loser learns
/// when the key was first seen. A release is a `DEL`, sent in the background. Every claim is
/// bounded by `operation_timeout` from the moment it is made; an error or a timeout is a
/// [`StoreError`], and the layer then fails open or closed as `on_error` says. The connection
/// is a redis `ConnectionManager` (multiplexed, reconnects by itself once Redis is back).
///
/// **Claims go to one server in pipelines.** The store's one task takes the claims that wait
/// (up to 256) and sends them as one pipeline, four pipelines in flight at most; claims made
/// meanwhile wait and go out together in the next one. Redis runs a pipeline's commands in
/// order, so of two claims of one key in it the first wins. The same task answers each claim
/// that Redis has not answered by its deadline with a timeout. At most
/// [`MAX_WAITING`](Self::MAX_WAITING) claims wait: past that a claim fails at once, as if Redis
/// had failed, so a Redis that does not answer cannot make the queue grow.
/// [`round_trips`](Self::round_trips) counts the pipelines.
///
/// **Redis Cluster.** When `cluster_nodes` is set, the store talks to the cluster those seed
/// nodes belong to through a redis `cluster_async::ClusterConnection` (multiplexed per master,
/// follows `MOVED` and slot changes, reconnects by itself), with the same timeouts and the same
/// failing open or closed; `url` is then not used. Every command touches one key, so the window
/// spreads over all masters by slot; keep hash tags (`{...}`) out of `key_prefix`, or the whole
/// window lands on one master. While a master is down its keys cannot be claimed (and, with
/// Redis's default `cluster-require-full-coverage yes`, after `cluster-node-timeout` no key
/// can): the layer fails open or closed until it is back. On a cluster each claim is its own
/// command (a pipeline must stay on one slot, and fingerprints spread over all of them).
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
    /// Claims to one server go through it; `None` on a cluster.
    queue: Option<Arc<Queue>>,
    /// Claims sent one command each (on a cluster).
    commands: Arc<AtomicU64>,
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
        let endpoint = endpoint(config)?;
        let cluster = matches!(endpoint, Endpoint::Cluster(_));
        let pending = PendingConnection {
            endpoint,
            timeout: config.operation_timeout,
            manager: watch::Sender::new(None),
            started: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        };
        Ok(Self::new(
            Connection::Pending(Arc::new(pending)),
            cluster,
            config,
        ))
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
        let cluster = matches!(link, Link::Cluster(_));
        Self::new(Connection::Ready(link), cluster, config)
    }

    /// How many claims may wait for Redis at once; past it a claim fails at once, as if Redis
    /// had failed (`on_error` applies). Bounds what a Redis that does not answer holds in
    /// memory. On a cluster each claim waits on its own, bounded by its timeout.
    pub const MAX_WAITING: usize = queue::MAX_WAITING;

    fn new(conn: Connection, cluster: bool, config: &RedisStoreConfig) -> Self {
        let timeout = config.operation_timeout;
        Self {
            queue: (!cluster).then(|| Arc::new(Queue::new(conn.clone(), timeout))),
            conn,
            commands: Arc::new(AtomicU64::new(0)),
            prefix: config.key_prefix.as_str().into(),
            timeout,
        }
    }

    /// The Redis key under which `key` is remembered.
    pub fn redis_key(&self, key: Fingerprint) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// How many round trips to Redis the claims took so far: one per pipeline on one server,
    /// one per claim on a cluster. Releases are not counted.
    pub fn round_trips(&self) -> u64 {
        self.commands.load(Ordering::Relaxed) + self.queue.as_ref().map_or(0, |q| q.round_trips())
    }
}

impl Connection {
    /// The connection, waiting at most `operation_timeout` for one being made.
    async fn get(&self) -> Result<Link, StoreError> {
        match self {
            Connection::Ready(conn) => Ok(conn.clone()),
            Connection::Pending(pending) => pending.get().await,
        }
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

/// `SET <prefix><key> <now> NX PX <ttl_ms> GET`: remembers the key unless it is remembered, and
/// answers when it was first seen if it was. The key is written as [`RedisStore::redis_key`]
/// spells it, straight into the command.
fn claim_command(prefix: &str, key: Fingerprint, now: u64, ttl: Duration) -> Cmd {
    let ttl_ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    let mut cmd = Cmd::with_capacity(7, prefix.len() + 80);
    cmd.arg("SET");
    {
        let mut arg = cmd.writer_for_next_arg();
        let _ = arg.write_all(prefix.as_bytes());
        let _ = arg.write_all(&hex(key));
    }
    cmd.arg(now).arg("NX").arg("PX").arg(ttl_ms).arg("GET");
    cmd
}

/// `key` in 32 lowercase hex digits, as its `Display` writes it.
fn hex(key: Fingerprint) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let value = key.as_u128();
    let mut out = [0u8; 32];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The claim a `SET ... NX GET` made at `now` answers: nil is fresh, a value the first sight.
fn answer(value: Result<Value, StoreError>, now: u64) -> Result<Claim, StoreError> {
    let first = match value? {
        Value::Nil => return Ok(Claim::Fresh),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|first| first.parse::<u64>().ok()),
        other => redis::from_redis_value::<String>(other)
            .map_err(StoreError::new)?
            .parse::<u64>()
            .ok(),
    };
    let first = first.unwrap_or(now);
    Ok(Claim::Duplicate {
        age: Duration::from_millis(now.saturating_sub(first)),
    })
}

impl DedupStore for RedisStore {
    fn claim(&self, key: Fingerprint, ttl: Duration) -> ClaimFuture {
        let timeout = self.timeout;
        let now = unix_ms();
        let cmd = claim_command(&self.prefix, key, now, ttl);
        let deadline = Instant::now() + timeout;
        let Some(queue) = &self.queue else {
            let conn = self.conn.clone();
            let commands = Arc::clone(&self.commands);
            return ClaimFuture::boxed(async move {
                let sent = async {
                    let mut link = conn.get().await?;
                    commands.fetch_add(1, Ordering::Relaxed);
                    cmd.query_async::<Value>(&mut link)
                        .await
                        .map_err(StoreError::new)
                };
                match tokio::time::timeout_at(deadline, sent).await {
                    Err(_) => Err(StoreError::timeout(timeout)),
                    Ok(value) => answer(value, now),
                }
            });
        };
        match queue.push(cmd, now, deadline) {
            Err(error) => ClaimFuture::ready(Err(error)),
            // Answered by the queue's task by the deadline: a timeout too.
            Ok(reply) => ClaimFuture::boxed(async move {
                reply.await.unwrap_or_else(|_| {
                    Err(StoreError::new("the dedup claim was dropped unanswered"))
                })
            }),
        }
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
            let Ok(mut conn) = store.conn.get().await else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_made_without_a_runtime_and_a_claim_outside_one_fails() {
        let store = RedisStore::lazy(&RedisStoreConfig::default()).unwrap();
        let answer = store.claim(Fingerprint::from_u128(1), Duration::from_secs(5));
        let Ok(answer) = answer.into_ready() else {
            panic!("not answered at once");
        };
        let err = answer.unwrap_err();
        assert!(err.to_string().contains("no tokio runtime"), "{err}");
    }

    #[test]
    fn a_claim_sets_the_key_redis_key_names() {
        let config = RedisStoreConfig {
            key_prefix: "app:{x}:".into(),
            ..RedisStoreConfig::default()
        };
        let store = RedisStore::lazy(&config).unwrap();
        for key in [0, 1, 0xfedc_ba98_7654_3210_0123_4567_89ab_cdef, u128::MAX] {
            let key = Fingerprint::from_u128(key);
            let cmd = claim_command(
                &config.key_prefix,
                key,
                1_700_000_000_000,
                Duration::from_secs(5),
            );
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            let redis_key = store.redis_key(key);
            let expected: [&[u8]; 7] = [
                b"SET",
                redis_key.as_bytes(),
                b"1700000000000",
                b"NX",
                b"PX",
                b"5000",
                b"GET",
            ];
            assert_eq!(args, expected.map(<[u8]>::to_vec));
        }
    }

    #[test]
    fn an_answer_is_fresh_on_nil_and_a_duplicate_with_its_age_on_a_value() {
        let now = 1_700_000_001_500;
        assert_eq!(answer(Ok(Value::Nil), now).unwrap(), Claim::Fresh);
        let first = Value::BulkString(b"1700000000000".to_vec());
        assert_eq!(
            answer(Ok(first), now).unwrap(),
            Claim::Duplicate {
                age: Duration::from_millis(1500)
            }
        );
        // A value this store did not write: a duplicate of unknown age.
        let other = Value::BulkString(b"not a time".to_vec());
        assert_eq!(
            answer(Ok(other), now).unwrap(),
            Claim::Duplicate {
                age: Duration::ZERO
            }
        );
        assert!(answer(Err(StoreError::new("down")), now).is_err());
    }
}
