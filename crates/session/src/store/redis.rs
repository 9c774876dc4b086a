mod answer;
mod connection;
mod listen;
mod queue;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::cluster::ClusterClientBuilder;
use redis::{Cmd, FromRedisValue, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use wsguard_config::{SessionConfig, SessionRedisConfig};

use self::answer::{entries, read_attached};
use self::connection::{Conn, Endpoint, Pending, bounded};
use self::listen::subscribe_until_dropped;
use self::queue::Job;
use super::{
    Appended, Attached, Created, Logged, RemoteListener, SessionStore, SessionStoreError,
    StoreFuture, Target,
};
use crate::data::MessageData;
use crate::token::SessionToken;

/// Sessions in Redis, shared by every node on the same server or cluster: a client resumes on
/// any node, and a message logged on one node for a session attached on another reaches it.
///
/// **Keys** (`P` is `key_prefix`, `T` a session's token, as 32 hex digits):
///
/// | key | type | holds |
/// |---|---|---|
/// | `P{T}:meta` | hash | client, `last` seq, `acked`, `dropped`, `processed`, payload `bytes`, the `node` it is attached to, `exp` (unix ms when a detached session expires; 0 while attached), `w:<node>` (the number of the last append each node sent) |
/// | `P{T}:log` | stream | the messages held, entry id `seq-0`, fields `k` (`j` JSON or `b` binary) and `d` (the payload) |
/// | `P{T}:gone` | string | the client of a freed session (its tombstone: its resume reads `expired`), for one `ttl` |
/// | `P{index}:attached` | sorted set | attached sessions, scored by the end of their lease (unix µs) |
/// | `P{index}:detached` | sorted set | detached sessions, scored by their expiry time (unix µs): eviction for `max_sessions`, and the sweep |
/// | `Pclient:C` | string | the newest session of client `C` (`Target::Client`) |
///
/// The keys of one session share the hash tag `{T}`, so every step on a session is one Lua
/// script on one shard, atomic on a cluster as on one server. The index and the client entries
/// are separate keys with their own slots: a step that touches them as well (create, attach,
/// detach, remove, the sweep) takes two or three calls, each atomic, and the order of those calls
/// is chosen so that a failure in between errs on keeping a session (a count that is one too
/// high for a while) rather than losing one. `max_sessions` therefore holds for the whole store
/// (all nodes together), exactly on one server and within a few concurrent creates on a
/// cluster.
///
/// **Expiry** is Redis's: a detached session's keys get a `PEXPIREAT` of its detach time (by
/// Redis's clock) plus `ttl`, so it is freed even if no node sweeps. **Leases**: the node a
/// session is attached to renews its lease (`ttl`, and at least 20 operation timeouts) three
/// times per lease, for all its sessions in a few commands; a node that dies stops, and the
/// sweep detaches its sessions once their leases lapse, so they expire and free their place
/// under `max_sessions` like any other. **Bounds**: `max_messages` and `max_bytes` hold per
/// session exactly as in memory; `max_total_bytes` bounds what waits on this node to reach
/// Redis, not what Redis holds (Redis's own `maxmemory` is the bound of a shared server;
/// `max_sessions` times `max_bytes` is the most the store holds).
///
/// **Across nodes**: a session's hash names the node it is attached to (each store has a random
/// node id). An append on another node publishes `logged T seq` on that node's channel
/// `Pnode:<id>`, from the same script; each store subscribes to its own channel once and wakes
/// the connection, which then reads the message from the store. A resume on another node
/// publishes `superseded T`, and the connection here closes. Pub/sub loses what is published
/// while a subscriber is disconnected; when the subscription is made again every connection
/// reads its log again.
///
/// **Order**: appends, processed marks, attaches and detaches from this node go to Redis in the
/// order they were asked for, through one queue served by one task (appends and marks
/// pipelined, up to 256 per round trip; on a cluster one pipeline per session, sessions in
/// parallel), so that a message sent without waiting keeps its place. The queue holds at most
/// `max_total_bytes` of payloads: past it an append fails at once (`max_total_bytes` bounds
/// what this node holds, as it does in memory).
///
/// **Failures**: every command is bounded by `operation_timeout`; an error or a timeout is a
/// [`SessionStoreError`], and a hello or resume is then answered `unavailable`. The connection
/// is a multiplexed `ConnectionManager` (or a cluster connection) that reconnects by itself. A
/// message sent without waiting (`SessionSender::send_now`, which a connection's `Sender`
/// uses) that Redis then fails to log is lost with a WARN: its sender was already told it was
/// queued, and it never got a `seq`, so no client sees a gap for it.
///
/// **Exactly once across a failure**: a session one of whose appends or marks fails or gets no
/// answer is refused its later appends until it is attached again (its connection closes, and
/// the client resumes from what Redis holds). A step that got no answer may still run once
/// Redis does: each append therefore records this node's number for it (`w:<node>` in the
/// hash), and a processed mark is recorded only if the last append of its session sent before
/// it ran. So a call's reply that reaches Redis late brings its mark along (the resume does not
/// ask for the call again, which would run it twice), and a mark never covers a reply that was
/// refused or lost (the call is resent and run).
///
/// Needs Redis 7.0 or newer.
///
/// ```no_run
/// use wsguard_config::SessionConfig;
/// use wsguard_session::Sessions;
/// use wsguard_session::store::RedisSessionStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = SessionConfig::production();
/// let store = RedisSessionStore::connect(&config.store.redis).await?;
/// let sessions = Sessions::with_store(store, config);
/// # let _ = sessions; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSessionStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Pending,
    prefix: Arc<str>,
    timeout: Duration,
    node: Arc<str>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Bytes of the steps waiting in the queue (payloads and a fixed cost per step).
    queued: AtomicUsize,
    /// `max_total_bytes` of the last config the store was given: the most the queue holds.
    max_queued: AtomicUsize,
    /// Taken by the task that serves the queue, on the first job.
    queue: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    listeners: Arc<Mutex<Vec<RemoteListener>>>,
    /// Whether the subscriber is subscribed; the subscriber stops when this is dropped.
    subscribed: watch::Sender<bool>,
    subscriber_started: AtomicBool,
    ever_subscribed: Arc<AtomicBool>,
    pubsub_urls: Vec<String>,
    /// The `ttl` of the last config the store was given: `detach` is not given one.
    ttl_ms: AtomicU64,
    /// Sessions attached here, whose leases this node renews.
    held: Mutex<HashSet<SessionToken>>,
    /// Sessions one of whose steps failed: their later appends are refused until they are
    /// attached again, and their later marks refused too, or recorded only behind the append
    /// they wait for (see [`queue::Failed`]), so that Redis never records a mark past a message
    /// it lost.
    failed: Mutex<HashMap<SessionToken, queue::Failed>>,
    /// This node's appends so far: each append carries its number to Redis, where a processed
    /// mark sent after it can check that it ran.
    appends: AtomicU64,
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.inner.prefix)
            .field("node", &self.inner.node)
            .field("timeout", &self.inner.timeout)
            .field("subscribed", &*self.inner.subscribed.borrow())
            .finish_non_exhaustive()
    }
}

/// Client numbers past this are clamped: the scripts format seqs into stream ids as Lua
/// numbers, exact and without an exponent below 10^14.
const MAX_SEQ: u64 = 99_999_999_999_999;

/// A lease lasts `ttl`, and at least this many operation timeouts.
const LEASE_TIMEOUTS: u32 = 20;

/// Sessions whose leases one command renews.
const RENEW_BATCH: usize = 512;

/// How many due sessions one sweep looks at.
const SWEEP_BATCH: usize = 256;

/// How an attach treats a session attached to another node (see the `ATTACH` script).
#[derive(Debug, Clone, Copy)]
enum Handover {
    Ask,
    Wait,
    Take,
}

impl Handover {
    fn word(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::Wait => "wait",
            Self::Take => "take",
        }
    }
}

/// How long a resume waits for the node a session is attached to to let go of it (its calls
/// in flight finish and its connection detaches), in operation timeouts, before taking it over.
const HANDOVER_TIMEOUTS: u32 = 10;

enum OwnedTarget {
    Session(SessionToken),
    Client(String),
}

/// The keys of one session.
struct Keys {
    meta: String,
    log: String,
    gone: String,
}

impl RedisSessionStore {
    /// Connects to the server at `config.url`, or the cluster of `config.cluster_nodes`; fails
    /// if Redis does not answer within ten times `operation_timeout`.
    pub async fn connect(config: &SessionRedisConfig) -> Result<Self, SessionStoreError> {
        let store = Self::lazy(config)?;
        let conn = store
            .inner
            .conn
            .get_within(config.operation_timeout * 10)
            .await?;
        drop(conn);
        Ok(store)
    }

    /// A store that connects in the background, from its first command on, and keeps trying
    /// (backing off to 5 s) until Redis answers; until then every command fails after
    /// `operation_timeout`. Fails only if a URL is not a Redis URL or `key_prefix` holds a
    /// brace (it would break the hash tags).
    pub fn lazy(config: &SessionRedisConfig) -> Result<Self, SessionStoreError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(SessionStoreError::new(format!(
                "session.store.redis.key_prefix {:?} must not hold braces (hash tags)",
                config.key_prefix
            )));
        }
        let invalid = |url: &str, e: redis::RedisError| {
            SessionStoreError::new(format!("{url:?} is not a Redis URL: {e}"))
        };
        let timeout = config.operation_timeout;
        let (endpoint, pubsub_urls) = if config.cluster_nodes.is_empty() {
            let client =
                redis::Client::open(config.url.as_str()).map_err(|e| invalid(&config.url, e))?;
            (Endpoint::Single(client), vec![config.url.clone()])
        } else {
            for url in &config.cluster_nodes {
                redis::Client::open(url.as_str()).map_err(|e| invalid(url, e))?;
            }
            let client = ClusterClientBuilder::new(config.cluster_nodes.clone())
                .connection_timeout(timeout * 10)
                .response_timeout(timeout)
                .build()
                .map_err(|e| SessionStoreError::new(format!("session.store.redis: {e}")))?;
            (
                Endpoint::Cluster(Box::new(client)),
                config.cluster_nodes.clone(),
            )
        };
        let (jobs, queue) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                conn: Pending::new(endpoint, timeout),
                prefix: config.key_prefix.as_str().into(),
                timeout,
                node: SessionToken::generate().to_string()[..16].into(),
                jobs,
                queued: AtomicUsize::new(0),
                max_queued: AtomicUsize::new(SessionConfig::default().max_total_bytes),
                queue: Mutex::new(Some(queue)),
                listeners: Arc::default(),
                subscribed: watch::Sender::new(false),
                subscriber_started: AtomicBool::new(false),
                ever_subscribed: Arc::default(),
                pubsub_urls,
                ttl_ms: AtomicU64::new(millis(SessionConfig::default().ttl)),
                held: Mutex::default(),
                failed: Mutex::default(),
                appends: AtomicU64::new(0),
            }),
        })
    }

    /// This store's node id: the name under which sessions attached here are known to other
    /// nodes, and the end of its pub/sub channel (`key_prefix` + `node:` + id).
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// Whether this store's subscriber is listening for other nodes now.
    pub fn is_listening(&self) -> bool {
        *self.inner.subscribed.borrow()
    }
}

impl Inner {
    fn keys(&self, token: &SessionToken) -> Keys {
        let p = &self.prefix;
        Keys {
            meta: format!("{p}{{{token}}}:meta"),
            log: format!("{p}{{{token}}}:log"),
            gone: format!("{p}{{{token}}}:gone"),
        }
    }

    /// Attached sessions, scored by the end of their lease (unix µs).
    fn attached_index(&self) -> String {
        format!("{}{{index}}:attached", self.prefix)
    }

    /// Detached sessions, scored by their expiry time (unix µs).
    fn detached_index(&self) -> String {
        format!("{}{{index}}:detached", self.prefix)
    }

    /// How long an attached session stays attached in Redis without this node renewing it: a
    /// node that dies leaves its sessions detached (and then expiring) after this.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
            .max(self.timeout * LEASE_TIMEOUTS)
    }

    fn held_here(&self) -> MutexGuard<'_, HashSet<SessionToken>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves `token` into the attached index with a fresh lease.
    async fn hold(&self, conn: &mut Conn, token: &SessionToken) -> Result<(), SessionStoreError> {
        let mut invocation = scripts::HOLD.prepare_invoke();
        invocation
            .key(self.attached_index())
            .key(self.detached_index())
            .arg(token.to_string())
            .arg(millis(self.lease()));
        self.run::<i64>(conn, &invocation).await?;
        self.held_here().insert(*token);
        Ok(())
    }

    /// Renews the lease of every session attached here, in batches.
    async fn renew(&self) -> Result<(), SessionStoreError> {
        let held: Vec<SessionToken> = self.held_here().iter().copied().collect();
        if held.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        for batch in held.chunks(RENEW_BATCH) {
            let mut invocation = scripts::RENEW.prepare_invoke();
            invocation
                .key(self.attached_index())
                .arg(millis(self.lease()));
            for token in batch {
                invocation.arg(token.to_string());
            }
            self.run::<i64>(&mut conn, &invocation).await?;
        }
        Ok(())
    }

    fn client_key(&self, client: &str) -> String {
        format!("{}client:{client}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}node:{}", self.prefix, self.node)
    }

    async fn conn(&self) -> Result<Conn, SessionStoreError> {
        self.conn.get_within(self.timeout).await
    }

    /// Runs a script within `operation_timeout`.
    async fn run<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, SessionStoreError> {
        bounded(self.timeout, invocation.invoke_async(conn)).await
    }

    async fn query<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        cmd: &Cmd,
    ) -> Result<T, SessionStoreError> {
        bounded(self.timeout, cmd.query_async(conn)).await
    }

    /// Starts the subscriber (once) and waits, at most `operation_timeout`, until it first
    /// listens: the first sessions are attached here once other nodes can reach this one.
    /// Later, while it subscribes again, nobody waits: it then wakes every connection.
    async fn listening(self: &Arc<Self>) {
        if !self.subscriber_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(subscribe_until_dropped(
                Arc::downgrade(self),
                self.subscribed.subscribe(),
            ));
            tokio::spawn(renew_until_dropped(Arc::downgrade(self)));
        }
        if self.ever_subscribed.load(Ordering::Acquire) {
            return;
        }
        let mut subscribed = self.subscribed.subscribe();
        let _ = tokio::time::timeout(self.timeout, subscribed.wait_for(|s| *s)).await;
    }

    fn remember(&self, config: &SessionConfig) {
        self.ttl_ms.store(millis(config.ttl), Ordering::Relaxed);
        self.max_queued
            .store(config.max_total_bytes, Ordering::Relaxed);
    }

    async fn append_now(
        &self,
        to: &OwnedTarget,
        payload: &MessageData,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Option<Appended>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let token = match to {
            OwnedTarget::Session(token) => *token,
            OwnedTarget::Client(client) => {
                let mut get = redis::cmd("GET");
                get.arg(self.client_key(client));
                let found: Option<String> = self.query(&mut conn, &get).await?;
                match found.and_then(|t| t.parse().ok()) {
                    Some(token) => token,
                    None => return Ok(None),
                }
            }
        };
        let keys = self.keys(&token);
        let (kind, data): (&str, &[u8]) = match payload {
            MessageData::Json(json) => ("j", json.get().as_bytes()),
            MessageData::Binary(bytes) => ("b", bytes),
        };
        let mut invocation = scripts::APPEND.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .arg(kind)
            .arg(data)
            .arg(max_messages.max(1))
            .arg(max_bytes)
            .arg(&*self.node)
            .arg(&*self.prefix)
            .arg(token.to_string())
            .arg(self.next_append());
        let answer: Option<(u64, u64)> = self.run(&mut conn, &invocation).await?;
        Ok(answer.map(|(seq, dropped)| Appended {
            session: token,
            seq,
            dropped,
            evicted: Vec::new(),
        }))
    }

    /// Frees `token` if it is detached (`expire`: and due); answers the script's word.
    async fn free(
        &self,
        conn: &mut Conn,
        token: &SessionToken,
        mode: &str,
        ttl: Duration,
        node: &str,
    ) -> Result<String, SessionStoreError> {
        let keys = self.keys(token);
        let mut invocation = scripts::FREE.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.gone)
            .arg(mode)
            .arg(millis(ttl))
            .arg(node);
        self.run(conn, &invocation).await
    }

    async fn client_entry(
        &self,
        conn: &mut Conn,
        client: &str,
        token: &SessionToken,
        action: &str,
        at: u64,
    ) -> Result<(), SessionStoreError> {
        let mut invocation = scripts::CLIENT.prepare_invoke();
        invocation
            .key(self.client_key(client))
            .arg(token.to_string())
            .arg(action)
            .arg(at);
        self.run::<i64>(conn, &invocation).await.map(drop)
    }

    async fn create(
        &self,
        token: SessionToken,
        client: Option<String>,
        config: &SessionConfig,
    ) -> Result<Created, SessionStoreError> {
        let mut conn = self.conn().await?;
        let mut admit = scripts::ADMIT.prepare_invoke();
        admit
            .key(self.attached_index())
            .key(self.detached_index())
            .arg(token.to_string())
            .arg(config.max_sessions.max(1))
            .arg(millis(self.lease()));
        let Some(candidates): Option<Vec<String>> = self.run(&mut conn, &admit).await? else {
            return Ok(Created::Full);
        };
        let mut evicted = Vec::new();
        for candidate in candidates.iter().filter_map(|t| t.parse().ok()) {
            match self
                .free(&mut conn, &candidate, "evict", config.ttl, "")
                .await?
                .as_str()
            {
                // Resumed since the index was read: it stays, counted again.
                "attached" => self.hold(&mut conn, &candidate).await?,
                _ => evicted.push(candidate),
            }
        }
        let made = self.make(&mut conn, &token, client.as_deref()).await;
        if made.is_err() {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(self.attached_index()).arg(token.to_string());
            let _ = self.query::<i64>(&mut conn, &zrem).await;
        } else {
            self.held_here().insert(token);
        }
        made.map(|()| Created::Created { evicted })
    }

    async fn make(
        &self,
        conn: &mut Conn,
        token: &SessionToken,
        client: Option<&str>,
    ) -> Result<(), SessionStoreError> {
        let keys = self.keys(token);
        let mut invocation = scripts::CREATE.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.gone)
            .arg(identity(client))
            .arg(client.unwrap_or(""))
            .arg(if client.is_some() { "1" } else { "0" })
            .arg(&*self.node);
        self.run::<i64>(conn, &invocation).await?;
        if let Some(client) = client {
            let mut set = redis::cmd("SET");
            set.arg(self.client_key(client)).arg(token.to_string());
            self.query::<Value>(conn, &set).await?;
        }
        Ok(())
    }

    /// Attaches `token`; `None` while another node holds it (see [`Handover`]).
    async fn attach(
        &self,
        token: SessionToken,
        client: Option<String>,
        after: u64,
        ttl: Duration,
        mode: Handover,
    ) -> Result<Option<Attached>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let keys = self.keys(&token);
        let mut invocation = scripts::ATTACH.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.gone)
            .arg(identity(client.as_deref()))
            .arg(format!("{}-0", after.min(MAX_SEQ) + 1))
            .arg(&*self.node)
            .arg(millis(ttl))
            .arg(&*self.prefix)
            .arg(token.to_string())
            .arg(mode.word());
        let answer: Vec<Value> = self.run(&mut conn, &invocation).await?;
        let Some(attached) = read_attached(answer, client)? else {
            return Ok(None);
        };
        if let Attached::Held { state, .. } = &attached {
            self.hold(&mut conn, &token).await?;
            if let Some(client) = &state.client {
                self.client_entry(&mut conn, client, &token, "persist", 0)
                    .await?;
            }
        }
        Ok(Some(attached))
    }

    async fn detach(&self, token: SessionToken, ttl: Duration) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let keys = self.keys(&token);
        let mut invocation = scripts::DETACH.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .key(&keys.gone)
            .arg(&*self.node)
            .arg(millis(ttl));
        let (expires, score): (u64, u64) = self.run(&mut conn, &invocation).await?;
        if expires == 0 {
            return Ok(());
        }
        let mut release = scripts::RELEASE.prepare_invoke();
        release
            .key(self.attached_index())
            .key(self.detached_index())
            .arg(token.to_string())
            .arg(score);
        self.run::<i64>(&mut conn, &release).await?;
        let mut hget = redis::cmd("HMGET");
        hget.arg(&keys.meta).arg("has_client").arg("client");
        let (has_client, client): (Option<String>, Option<String>) =
            self.query(&mut conn, &hget).await?;
        if has_client.as_deref() == Some("1")
            && let Some(client) = client
        {
            self.client_entry(&mut conn, &client, &token, "expire", expires)
                .await?;
        }
        Ok(())
    }

    async fn remove(&self, token: SessionToken) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let keys = self.keys(&token);
        let mut hget = redis::cmd("HMGET");
        hget.arg(&keys.meta).arg("has_client").arg("client");
        let (has_client, client): (Option<String>, Option<String>) =
            self.query(&mut conn, &hget).await?;
        let mut del = redis::cmd("DEL");
        del.arg(&keys.meta).arg(&keys.log).arg(&keys.gone);
        self.query::<i64>(&mut conn, &del).await?;
        self.held_here().remove(&token);
        for index in [self.attached_index(), self.detached_index()] {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(index).arg(token.to_string());
            self.query::<i64>(&mut conn, &zrem).await?;
        }
        if has_client.as_deref() == Some("1")
            && let Some(client) = client
        {
            self.client_entry(&mut conn, &client, &token, "del", 0)
                .await?;
        }
        Ok(())
    }

    async fn expire(&self, ttl: Duration) -> Result<Vec<SessionToken>, SessionStoreError> {
        let mut conn = self.conn().await?;
        let mut due = scripts::DUE.prepare_invoke();
        due.key(self.attached_index())
            .key(self.detached_index())
            .arg(SWEEP_BATCH);
        type Due = Vec<(String, String)>;
        let (detached, lapsed): (Due, Due) = self.run(&mut conn, &due).await?;
        let (attached_index, detached_index) = (self.attached_index(), self.detached_index());
        let mut expired = Vec::new();
        for (name, score) in detached {
            let Ok(token) = name.parse::<SessionToken>() else {
                // Not a token this store wrote: drop it from the index.
                self.rescore(&mut conn, [&detached_index; 2], &name, &score, None)
                    .await?;
                continue;
            };
            let word = self.free(&mut conn, &token, "expire", ttl, "").await?;
            let (to, new_score) = match word.as_str() {
                "freed" | "gone" => (&detached_index, None),
                // Resumed, and the attached index not told (a step failed): its holder renews
                // it from now on.
                "attached" => (&attached_index, Some(unix_us() + micros(self.lease()))),
                // Detached again since: due at its new expiry (ms, in the index as µs).
                later => (
                    &detached_index,
                    later.parse::<u64>().ok().map(|ms| ms.saturating_mul(1000)),
                ),
            };
            // Of several nodes sweeping at once, the one that takes it out reports it.
            let moved = self
                .rescore(&mut conn, [&detached_index, to], &name, &score, new_score)
                .await?;
            if moved && new_score.is_none() {
                expired.push(token);
            }
        }
        for (name, score) in lapsed {
            // Nobody renewed its lease: the node that held it died, or lost track of it (its
            // detach failed). Detached now, as that node would have done.
            let Ok(token) = name.parse::<SessionToken>() else {
                self.rescore(&mut conn, [&attached_index; 2], &name, &score, None)
                    .await?;
                continue;
            };
            let mut node = redis::cmd("HGET");
            node.arg(self.keys(&token).meta).arg("node");
            let node: Option<String> = self.query(&mut conn, &node).await?;
            let word = match &node {
                Some(node) => self.free(&mut conn, &token, "orphan", ttl, node).await?,
                None => "gone".to_owned(),
            };
            let new_score = match word.as_str() {
                "freed" | "gone" => None,
                // Taken by another node meanwhile: that node leases it.
                "attached" => continue,
                exp => exp.parse::<u64>().ok().map(|ms| ms.saturating_mul(1000)),
            };
            let moved = self
                .rescore(
                    &mut conn,
                    [&attached_index, &detached_index],
                    &name,
                    &score,
                    new_score,
                )
                .await?;
            if moved && new_score.is_none() {
                expired.push(token);
            }
        }
        Ok(expired)
    }

    /// Moves `name` from `indexes[0]` to `indexes[1]` with `new_score` (or out), if its score is
    /// still `score`.
    async fn rescore(
        &self,
        conn: &mut Conn,
        indexes: [&String; 2],
        name: &str,
        score: &str,
        new_score: Option<u64>,
    ) -> Result<bool, SessionStoreError> {
        let mut invocation = scripts::RESCORE.prepare_invoke();
        invocation
            .key(indexes[0])
            .key(indexes[1])
            .arg(name)
            .arg(score)
            .arg(new_score.map_or_else(String::new, |s| s.to_string()));
        Ok(self.run::<i64>(conn, &invocation).await? == 1)
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How a session's client is written in its hash and tombstone: `0` without one, `1` and the
/// client with one (so that no client id reads like "none").
fn identity(client: Option<&str>) -> String {
    match client {
        Some(client) => format!("1{client}"),
        None => "0".to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn dropped() -> SessionStoreError {
    SessionStoreError::new("the session store was dropped")
}

/// Renews the leases of the sessions attached here three times per lease, until the store is
/// dropped.
async fn renew_until_dropped(store: Weak<Inner>) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        let period = inner.lease() / 3;
        drop(inner);
        tokio::time::sleep(period).await;
        let Some(inner) = store.upgrade() else { return };
        if let Err(err) = inner.renew().await {
            tracing::warn!(%err, "session leases not renewed; retrying");
        }
    }
}

impl SessionStore for RedisSessionStore {
    fn confirms_marks(&self) -> bool {
        true
    }

    fn create(
        &self,
        token: SessionToken,
        client: Option<&str>,
        _now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Created> {
        self.inner.remember(config);
        let inner = Arc::clone(&self.inner);
        let client = client.map(str::to_owned);
        let config = config.clone();
        StoreFuture::boxed(async move {
            inner.listening().await;
            inner.create(token, client, &config).await
        })
    }

    fn attach(
        &self,
        token: &SessionToken,
        client: Option<&str>,
        after: u64,
        _now: Instant,
        config: &SessionConfig,
    ) -> StoreFuture<Attached> {
        self.inner.remember(config);
        let inner = Arc::clone(&self.inner);
        let (token, client, ttl) = (*token, client.map(str::to_owned), config.ttl);
        StoreFuture::boxed(async move {
            inner.listening().await;
            let handover = Instant::now() + inner.timeout * HANDOVER_TIMEOUTS;
            let mut mode = Handover::Ask;
            loop {
                // Queued: behind the detach of a connection of this session that just ended
                // here.
                let (reply, answer) = oneshot::channel();
                let job = Job::Attach {
                    token,
                    client: client.clone(),
                    after,
                    ttl,
                    mode,
                    deadline: Instant::now() + inner.timeout,
                    reply,
                };
                if inner.queue(job).is_err() {
                    return Err(SessionStoreError::new(
                        "more than max_total_bytes waiting for Redis",
                    ));
                }
                if let Some(attached) = answer.await.unwrap_or_else(|_| Err(dropped()))? {
                    return Ok(attached);
                }
                // Another node holds it: wait until it lets go, or take it when it does not
                // in time.
                mode = if Instant::now() >= handover {
                    Handover::Take
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Handover::Wait
                };
            }
        })
    }

    fn append(
        &self,
        to: Target<'_>,
        payload: MessageData,
        config: &SessionConfig,
    ) -> StoreFuture<Option<Appended>> {
        self.inner.remember(config);
        let (reply, answer) = oneshot::channel();
        let job = Job::Append {
            to: match to {
                Target::Session(token) => OwnedTarget::Session(*token),
                Target::Client(client) => OwnedTarget::Client(client.to_owned()),
            },
            payload,
            max_messages: config.max_messages,
            max_bytes: config.max_bytes,
            deadline: Instant::now() + self.inner.timeout,
            reply,
        };
        if self.inner.queue(job).is_err() {
            return StoreFuture::ready(Err(SessionStoreError::new(
                "more than max_total_bytes waiting for Redis, or no tokio runtime",
            )));
        }
        StoreFuture::boxed(async move { answer.await.unwrap_or_else(|_| Err(dropped())) })
    }

    fn read_after(&self, token: &SessionToken, after: u64, max: usize) -> StoreFuture<Vec<Logged>> {
        let inner = Arc::clone(&self.inner);
        let token = *token;
        StoreFuture::boxed(async move {
            let mut conn = inner.conn().await?;
            let mut xrange = redis::cmd("XRANGE");
            xrange
                .arg(inner.keys(&token).log)
                .arg(format!("{}-0", after.min(MAX_SEQ) + 1))
                .arg("+")
                .arg("COUNT")
                .arg(max.clamp(1, 1 << 20));
            entries(inner.query(&mut conn, &xrange).await?)
        })
    }

    fn trim(&self, token: &SessionToken, seq: u64) -> StoreFuture<()> {
        let inner = Arc::clone(&self.inner);
        let token = *token;
        StoreFuture::boxed(async move {
            let mut conn = inner.conn().await?;
            let keys = inner.keys(&token);
            let mut invocation = scripts::TRIM.prepare_invoke();
            invocation
                .key(&keys.meta)
                .key(&keys.log)
                .arg(seq.min(MAX_SEQ));
            inner.run::<i64>(&mut conn, &invocation).await.map(drop)
        })
    }

    fn record_processed(&self, token: &SessionToken, id: u64) {
        let job = Job::Processed { token: *token, id };
        if self.inner.queue(job).is_err() {
            tracing::warn!("session processed mark not recorded: queue full or no runtime");
        }
    }

    fn detach(&self, token: &SessionToken, _now: Instant) {
        // Not renewed from now on: if the detach below never reaches Redis, the lease lapses
        // and the sweep detaches the session instead.
        self.inner.held_here().remove(token);
        // The TTL in force when the session detaches: the registry's config is not at hand
        // here, so the store keeps the last one it was given.
        let ttl = Duration::from_millis(self.inner.ttl_ms.load(Ordering::Relaxed));
        let job = Job::Detach { token: *token, ttl };
        if let Err(job) = self.inner.queue(job) {
            // Out of order rather than never: a session left attached would never expire.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!("session not detached in Redis: no tokio runtime");
                return;
            };
            let inner = Arc::clone(&self.inner);
            runtime.spawn(async move { inner.serve(job).await });
        }
    }

    fn remove(&self, token: &SessionToken) -> StoreFuture<()> {
        let inner = Arc::clone(&self.inner);
        let token = *token;
        StoreFuture::boxed(async move { inner.remove(token).await })
    }

    fn expire(&self, _now: Instant, config: &SessionConfig) -> StoreFuture<Vec<SessionToken>> {
        self.inner.remember(config);
        let inner = Arc::clone(&self.inner);
        let ttl = config.ttl;
        StoreFuture::boxed(async move { inner.expire(ttl).await })
    }

    fn flush(&self) -> StoreFuture<()> {
        let (done, flushed) = oneshot::channel();
        if self.inner.queue(Job::Flush(done)).is_err() {
            return StoreFuture::ready(Err(SessionStoreError::new(
                "too many steps waiting for Redis, or no tokio runtime",
            )));
        }
        StoreFuture::boxed(async move { flushed.await.map_err(|_| dropped()) })
    }

    fn listen(&self, listener: RemoteListener) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }
}
