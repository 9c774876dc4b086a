mod scripts;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, ServerErrorKind, Value,
};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use wsguard_config::{SessionConfig, SessionRedisConfig};

use super::{
    Appended, Attached, Created, Logged, RemoteEvent, RemoteListener, SessionState, SessionStore,
    SessionStoreError, StoreFuture, Target,
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
/// | `P{T}:meta` | hash | client, `last` seq, `acked`, `dropped`, `processed`, payload `bytes`, the `node` it is attached to, `exp` (unix ms when a detached session expires; 0 while attached) |
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
/// under `max_sessions` like any other. **Bounds**: `max_messages`
/// and `max_bytes` hold per session exactly as in memory; `max_total_bytes` bounds what waits
/// on this node to reach Redis, not what Redis holds (Redis's own `maxmemory` is the bound of a
/// shared server; `max_sessions` times `max_bytes` is the most the store holds).
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
/// parallel), so that a message sent without waiting keeps its place. The queue holds at most `max_total_bytes` of payloads: past it an append fails at
/// once (`max_total_bytes` bounds what this node holds, as it does in memory).
///
/// **Failures**: every command is bounded by `operation_timeout`; an error or a timeout is a
/// [`SessionStoreError`], and a hello or resume is then answered `unavailable`. The connection
/// is a multiplexed `ConnectionManager` (or a cluster connection) that reconnects by itself. A
/// message sent without waiting (`SessionSender::send_now`, which a connection's `Sender`
/// uses) that Redis then fails to log is lost with a WARN: its sender was already told it was
/// queued, and it never got a `seq`, so no client sees a gap for it.
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

/// One server's connection manager, or a cluster's connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where to connect.
#[derive(Clone)]
enum Endpoint {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The connection, made in the background until it succeeds (by one task, started on the
/// first command: building the store needs no runtime).
struct Pending {
    endpoint: Endpoint,
    timeout: Duration,
    made: watch::Sender<Option<Conn>>,
    started: AtomicBool,
    failures: AtomicU64,
}

/// What a step costs in the queue besides its payload.
const STEP_BYTES: usize = 64;

/// Client numbers past this are clamped: the scripts format seqs into stream ids as Lua
/// numbers, exact and without an exponent below 10^14.
const MAX_SEQ: u64 = 99_999_999_999_999;

/// A lease lasts `ttl`, and at least this many operation timeouts.
const LEASE_TIMEOUTS: u32 = 20;

/// Sessions whose leases one command renews.
const RENEW_BATCH: usize = 512;

/// How many due sessions one sweep looks at.
const SWEEP_BATCH: usize = 256;

/// A step that must reach Redis in the order it was asked for on this node: appends (a
/// message's place), and a session's attach after its detach by a connection that just ended.
enum Job {
    Append {
        to: OwnedTarget,
        payload: MessageData,
        max_messages: usize,
        max_bytes: usize,
        /// Not started after this: the caller has been told it timed out.
        deadline: Instant,
        reply: oneshot::Sender<Result<Option<Appended>, SessionStoreError>>,
    },
    Attach {
        token: SessionToken,
        client: Option<String>,
        after: u64,
        ttl: Duration,
        mode: Handover,
        deadline: Instant,
        reply: oneshot::Sender<Result<Option<Attached>, SessionStoreError>>,
    },
    Detach {
        token: SessionToken,
        ttl: Duration,
    },
    Processed {
        token: SessionToken,
        id: u64,
    },
    Flush(oneshot::Sender<()>),
}

/// Steps sent in one pipeline, at most.
const PIPELINE: usize = 256;

impl Job {
    /// What it takes in the queue.
    fn size(&self) -> usize {
        match self {
            Self::Append { payload, .. } => STEP_BYTES + payload.len(),
            _ => STEP_BYTES,
        }
    }

    /// Whether it can share a pipeline: an append to a session (not a client: that needs a
    /// lookup first) or a processed mark.
    fn pipelines(&self) -> bool {
        matches!(
            self,
            Self::Append {
                to: OwnedTarget::Session(_),
                ..
            } | Self::Processed { .. }
        )
    }

    /// The session of a step that pipelines.
    fn session(&self) -> Option<SessionToken> {
        match self {
            Self::Append {
                to: OwnedTarget::Session(token),
                ..
            }
            | Self::Processed { token, .. } => Some(*token),
            _ => None,
        }
    }

    /// The same step without its reply (to send it again; the reply stays with the original).
    fn step_copy(&self) -> Job {
        match self {
            Self::Append {
                to: OwnedTarget::Session(token),
                payload,
                max_messages,
                max_bytes,
                deadline,
                ..
            } => Self::Append {
                to: OwnedTarget::Session(*token),
                payload: payload.clone(),
                max_messages: *max_messages,
                max_bytes: *max_bytes,
                deadline: *deadline,
                reply: oneshot::channel().0,
            },
            Self::Processed { token, id } => Self::Processed {
                token: *token,
                id: *id,
            },
            _ => Self::Flush(oneshot::channel().0),
        }
    }

    /// Answers the step with `err`.
    fn fail(self, err: &SessionStoreError) {
        match self {
            Self::Append { reply, .. } => drop(reply.send(Err(err.clone()))),
            Self::Attach { reply, .. } => drop(reply.send(Err(err.clone()))),
            Self::Processed { .. } => tracing::warn!(%err, "session processed mark not recorded"),
            Self::Detach { .. } => {
                tracing::warn!(%err, "session not detached in Redis (it stays attached)")
            }
            Self::Flush(done) => drop(done.send(())),
        }
    }
}

/// Steps grouped by session, each group in its order.
fn by_session(batch: Vec<Job>) -> impl Iterator<Item = Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    let mut index: HashMap<Option<SessionToken>, usize> = HashMap::new();
    for job in batch {
        let slot = *index.entry(job.session()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(job);
    }
    groups.into_iter()
}

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
                conn: Pending {
                    endpoint,
                    timeout,
                    made: watch::Sender::new(None),
                    started: AtomicBool::new(false),
                    failures: AtomicU64::new(0),
                },
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

    /// Queues a step; starts the task that serves the queue on the first one. Gives the job
    /// back if the queue is full or there is no runtime to serve it on.
    fn queue(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(job);
        }
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut queue) = queue {
            let store = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut carried = None;
                loop {
                    let job = match carried.take() {
                        Some(job) => job,
                        None => match queue.recv().await {
                            Some(job) => job,
                            None => return,
                        },
                    };
                    let Some(inner) = store.upgrade() else { return };
                    inner.dequeued(&job);
                    if !job.pipelines() {
                        inner.serve(job).await;
                        continue;
                    }
                    // What waits behind it goes in the same round trip, in order, up to the
                    // first step that cannot.
                    let mut batch = vec![job];
                    while batch.len() < PIPELINE {
                        match queue.try_recv() {
                            Ok(next) if next.pipelines() => {
                                inner.dequeued(&next);
                                batch.push(next);
                            }
                            Ok(next) => {
                                // Counted out at the top of the loop, like any other.
                                carried = Some(next);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if inner.is_single() {
                        inner.serve_pipelined(batch).await;
                    } else {
                        // A cluster pipeline stays on one slot: one per session, in parallel,
                        // each in order.
                        join_all(by_session(batch).map(|steps| inner.serve_pipelined(steps))).await;
                    }
                }
            });
        }
        let size = job.size();
        let limit = self.max_queued.load(Ordering::Relaxed);
        let queued = self.queued.fetch_add(size, Ordering::AcqRel);
        // Appends and attaches can be refused; detaches and marks must reach Redis.
        if queued + size > limit && matches!(job, Job::Append { .. } | Job::Attach { .. }) {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return Err(job);
        }
        self.jobs.send(job).map_err(|e| {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            e.0
        })
    }

    fn dequeued(&self, job: &Job) {
        self.queued.fetch_sub(job.size(), Ordering::AcqRel);
    }

    fn is_single(&self) -> bool {
        matches!(&*self.conn.made.borrow(), Some(Conn::Single(_)))
    }

    /// Appends to a session and processed marks, in one pipeline: one round trip for all of
    /// them, run by Redis in order. A script Redis does not hold (after a restart) is loaded,
    /// and the steps it failed are sent again, in order.
    async fn serve_pipelined(&self, batch: Vec<Job>) {
        let mut steps = Vec::with_capacity(batch.len());
        for job in batch {
            match job {
                Job::Append {
                    reply, deadline, ..
                } if Instant::now() > deadline => {
                    let _ = reply.send(Err(timeout_error(self.timeout)));
                }
                job => steps.push(job),
            }
        }
        let mut conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => return steps.into_iter().for_each(|job| job.fail(&err)),
        };
        let mut answers = self.pipeline(&mut conn, &steps).await;
        let missing = |a: &Result<redis::RedisResult<Value>, SessionStoreError>| matches!(a, Ok(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript));
        if answers.iter().any(missing) {
            let loaded = async {
                scripts::APPEND.load_async(&mut conn).await?;
                scripts::PROCESSED.load_async(&mut conn).await
            };
            match bounded(self.timeout, loaded).await {
                Ok(_) => {
                    let again: Vec<usize> =
                        (0..steps.len()).filter(|&i| missing(&answers[i])).collect();
                    let retried: Vec<Job> = again.iter().map(|&i| steps[i].step_copy()).collect();
                    let second = self.pipeline(&mut conn, &retried).await;
                    for (i, answer) in again.into_iter().zip(second) {
                        answers[i] = answer;
                    }
                }
                Err(err) => answers = steps.iter().map(|_| Err(err.clone())).collect(),
            }
        }
        for (job, answer) in steps.into_iter().zip(answers) {
            let answer =
                answer.and_then(|a| a.map_err(|e| SessionStoreError::new(format!("Redis: {e}"))));
            match job {
                Job::Append {
                    to: OwnedTarget::Session(token),
                    reply,
                    ..
                } => {
                    let appended = answer.and_then(|value| {
                        redis::from_redis_value::<Option<(u64, u64)>>(value)
                            .map_err(|_| bad_answer("append"))
                    });
                    let _ = reply.send(appended.map(|a| {
                        a.map(|(seq, dropped)| Appended {
                            session: token,
                            seq,
                            dropped,
                            evicted: Vec::new(),
                        })
                    }));
                }
                Job::Processed { .. } => {
                    if let Err(err) = answer {
                        tracing::warn!(%err, "session processed mark not recorded");
                    }
                }
                job => job.fail(&bad_answer("a step that is not pipelined")),
            }
        }
    }

    /// Sends `steps` (appends to a session and processed marks) as one pipeline; one answer
    /// per step.
    async fn pipeline(
        &self,
        conn: &mut Conn,
        steps: &[Job],
    ) -> Vec<Result<redis::RedisResult<Value>, SessionStoreError>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for step in steps {
            match step {
                Job::Append {
                    to: OwnedTarget::Session(token),
                    payload,
                    max_messages,
                    max_bytes,
                    ..
                } => {
                    let keys = self.keys(token);
                    let (kind, data): (&str, &[u8]) = match payload {
                        MessageData::Json(json) => ("j", json.get().as_bytes()),
                        MessageData::Binary(bytes) => ("b", bytes),
                    };
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(scripts::APPEND.get_hash())
                        .arg(2)
                        .arg(&keys.meta)
                        .arg(&keys.log)
                        .arg(kind)
                        .arg(data)
                        .arg((*max_messages).max(1))
                        .arg(*max_bytes)
                        .arg(&*self.node)
                        .arg(&*self.prefix)
                        .arg(token.to_string());
                    pipe.add_command(cmd);
                }
                Job::Processed { token, id } => {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(scripts::PROCESSED.get_hash())
                        .arg(1)
                        .arg(self.keys(token).meta)
                        .arg(*id);
                    pipe.add_command(cmd);
                }
                // Never batched; answered as an error by the caller.
                _ => {
                    pipe.cmd("PING");
                }
            }
        }
        match bounded(
            self.timeout,
            pipe.query_async::<Vec<redis::RedisResult<Value>>>(conn),
        )
        .await
        {
            Ok(answers) if answers.len() == steps.len() => answers.into_iter().map(Ok).collect(),
            Ok(_) => steps
                .iter()
                .map(|_| Err(bad_answer("pipeline length")))
                .collect(),
            Err(err) => steps.iter().map(|_| Err(err.clone())).collect(),
        }
    }

    /// Runs one queued step, one after another in the order they were queued.
    async fn serve(&self, job: Job) {
        let late = |deadline: Instant| Instant::now() > deadline;
        match job {
            Job::Append {
                reply, deadline, ..
            } if late(deadline) => drop(reply.send(Err(timeout_error(self.timeout)))),
            Job::Attach {
                reply, deadline, ..
            } if late(deadline) => drop(reply.send(Err(timeout_error(self.timeout)))),
            Job::Append {
                to,
                payload,
                max_messages,
                max_bytes,
                reply,
                ..
            } => {
                let result = self
                    .append_now(&to, &payload, max_messages, max_bytes)
                    .await;
                let _ = reply.send(result);
            }
            Job::Attach {
                token,
                client,
                after,
                ttl,
                mode,
                reply,
                ..
            } => {
                let _ = reply.send(self.attach(token, client, after, ttl, mode).await);
            }
            Job::Detach { token, ttl } => {
                if let Err(err) = self.detach(token, ttl).await {
                    tracing::warn!(%err, "session not detached in Redis (it stays attached)");
                }
            }
            Job::Processed { token, id } => {
                if let Err(err) = self.processed(token, id).await {
                    tracing::warn!(%err, "session processed mark not recorded");
                }
            }
            Job::Flush(done) => drop(done.send(())),
        }
    }

    async fn processed(&self, token: SessionToken, id: u64) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let mut invocation = scripts::PROCESSED.prepare_invoke();
        invocation.key(self.keys(&token).meta).arg(id);
        self.run::<i64>(&mut conn, &invocation).await.map(drop)
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
            .arg(token.to_string());
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

fn timeout_error(timeout: Duration) -> SessionStoreError {
    SessionStoreError::new(format!("Redis did not answer within {timeout:?}"))
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, SessionStoreError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(timeout_error(timeout)),
        Ok(Err(e)) => Err(SessionStoreError::new(format!("Redis: {e}"))),
        Ok(Ok(value)) => Ok(value),
    }
}

fn bad_answer(what: &str) -> SessionStoreError {
    SessionStoreError::new(format!("unexpected answer from Redis: {what}"))
}

fn number(value: &Value) -> Result<u64, SessionStoreError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad_answer("a negative number")),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_answer("not a number")),
        Value::SimpleString(s) => s.parse().map_err(|_| bad_answer("not a number")),
        _ => Err(bad_answer("not a number")),
    }
}

/// The seq of a stream entry id `seq-0`.
fn entry_seq(id: &Value) -> Result<u64, SessionStoreError> {
    let Value::BulkString(id) = id else {
        return Err(bad_answer("a stream id"));
    };
    std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.split('-').next())
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(|| bad_answer("a stream id"))
}

/// Stream entries (`XRANGE`'s answer) as logged messages.
fn entries(value: Value) -> Result<Vec<Logged>, SessionStoreError> {
    let Value::Array(entries) = value else {
        return Err(bad_answer("stream entries"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                return Err(bad_answer("a stream entry"));
            };
            if parts.len() != 2 {
                return Err(bad_answer("a stream entry"));
            }
            let fields = parts.pop().unwrap_or_default();
            let seq = entry_seq(&parts[0])?;
            let Value::Array(fields) = fields else {
                return Err(bad_answer("stream fields"));
            };
            let (mut kind, mut data) = (None, None);
            for pair in fields.chunks(2) {
                if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                    match name.as_slice() {
                        b"k" => kind = Some(value.clone()),
                        b"d" => data = Some(value.clone()),
                        _ => {}
                    }
                }
            }
            let payload = match (kind.as_deref(), data) {
                (Some(b"b"), Some(data)) => MessageData::Binary(Bytes::from(data)),
                (Some(b"j"), Some(data)) => {
                    let json = String::from_utf8(data)
                        .ok()
                        .and_then(|text| RawValue::from_string(text).ok())
                        .ok_or_else(|| bad_answer("a logged message that is not JSON"))?;
                    MessageData::Json(Arc::from(json))
                }
                _ => return Err(bad_answer("a stream entry without kind or data")),
            };
            Ok(Logged { seq, payload })
        })
        .collect()
}

/// The `ATTACH` script's answer; `None` for `busy`.
fn read_attached(
    answer: Vec<Value>,
    client: Option<String>,
) -> Result<Option<Attached>, SessionStoreError> {
    let word = match answer.first() {
        Some(Value::BulkString(word)) => word.as_slice(),
        _ => return Err(bad_answer("attach")),
    };
    match word {
        b"unknown" => return Ok(Some(Attached::Unknown)),
        b"expired" => return Ok(Some(Attached::Expired)),
        b"busy" => return Ok(None),
        b"held" => {}
        _ => return Err(bad_answer("attach")),
    }
    let mut answer = answer.into_iter().skip(1);
    let mut next = || answer.next().ok_or_else(|| bad_answer("attach"));
    let last_seq = number(&next()?)?;
    let acked = number(&next()?)?;
    let dropped = number(&next()?)?;
    let processed = number(&next()?)?;
    let first = entries(next()?)?;
    let messages = entries(next()?)?;
    Ok(Some(Attached::Held {
        state: SessionState {
            client,
            last_seq,
            acked,
            dropped,
            first_held: first.first().map_or(last_seq + 1, |m| m.seq),
            processed,
        },
        messages,
    }))
}

impl Pending {
    async fn get_within(&self, wait: Duration) -> Result<Conn, SessionStoreError> {
        if let Some(conn) = &*self.made.borrow() {
            return Ok(conn.clone());
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(connect_until_made(
                self.endpoint.clone(),
                self.timeout,
                self.made.clone(),
            ));
        }
        let mut made = self.made.subscribe();
        match tokio::time::timeout(wait, made.wait_for(Option::is_some)).await {
            Ok(Ok(conn)) => conn.clone().ok_or_else(|| timeout_error(wait)),
            _ => Err(SessionStoreError::new(format!(
                "no connection to Redis within {wait:?} ({} failed attempts)",
                self.failures.load(Ordering::Relaxed)
            ))),
        }
    }
}

async fn open(endpoint: &Endpoint, timeout: Duration) -> Result<Conn, SessionStoreError> {
    let handshake = timeout * 10;
    match endpoint {
        Endpoint::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(handshake))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            let manager = ConnectionManager::new_with_config(client.clone(), config);
            bounded(handshake, manager).await.map(Conn::Single)
        }
        Endpoint::Cluster(client) => bounded(handshake, client.get_async_connection())
            .await
            .map(Conn::Cluster),
    }
}

/// Connects until it succeeds or nobody waits for the connection any more.
async fn connect_until_made(
    endpoint: Endpoint,
    timeout: Duration,
    made: watch::Sender<Option<Conn>>,
) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        match open(&endpoint, timeout).await {
            Ok(conn) => {
                made.send_replace(Some(conn));
                tracing::info!("session store connected to Redis");
                return;
            }
            Err(error) => {
                failures += 1;
                // Every power of two: a Redis that stays down must not flood the log.
                if failures.is_power_of_two() {
                    tracing::warn!(attempts = failures, %error, "session store cannot reach Redis; retrying");
                }
            }
        }
        // This task's clone is the last: the store is gone.
        if made.sender_count() == 1 {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn tell(listeners: &Mutex<Vec<RemoteListener>>, event: RemoteEvent) {
    let listeners = listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for listener in listeners {
        listener(event);
    }
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

/// A message on this node's channel.
fn parse_event(payload: &str) -> Option<RemoteEvent> {
    let mut words = payload.split(' ');
    let event = match (words.next(), words.next(), words.next()) {
        (Some("logged"), Some(token), Some(seq)) => RemoteEvent::Logged {
            session: token.parse().ok()?,
            seq: seq.parse().ok()?,
        },
        (Some("superseded"), Some(token), None) => RemoteEvent::Superseded {
            session: token.parse().ok()?,
        },
        _ => return None,
    };
    words.next().is_none().then_some(event)
}

/// Subscribes to this node's channel and hands what arrives to the listeners; subscribes again
/// (backing off to 5 s) whenever the connection drops, until the store is dropped.
async fn subscribe_until_dropped(store: Weak<Inner>, mut alive: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let url = inner.pubsub_urls[attempt % inner.pubsub_urls.len().max(1)].clone();
        let channel = inner.channel();
        let listeners = Arc::clone(&inner.listeners);
        let subscribed = inner.subscribed.clone();
        let ever_subscribed = Arc::clone(&inner.ever_subscribed);
        let timeout = inner.timeout * 10;
        drop(inner);
        attempt += 1;
        let pubsub = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, pubsub).await {
            Ok(Ok(mut pubsub)) => {
                delay = Duration::from_millis(100);
                subscribed.send_replace(true);
                ever_subscribed.store(true, Ordering::Release);
                // Whatever was published while not subscribed is lost: read every log again.
                tell(&listeners, RemoteEvent::Missed);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload = String::from_utf8_lossy(message.get_payload_bytes());
                                if let Some(event) = parse_event(&payload) {
                                    tell(&listeners, event);
                                }
                            }
                            None => break,
                        },
                        closed = alive.changed() => if closed.is_err() { return },
                    }
                }
                subscribed.send_replace(false);
                tracing::warn!("session store's subscription to Redis dropped; subscribing again");
            }
            Ok(Err(error)) => tracing::debug!(%error, "session store cannot subscribe yet"),
            Err(_) => tracing::debug!("session store's subscription timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            closed = alive.changed() => if closed.is_err() { return },
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl SessionStore for RedisSessionStore {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn stream_entries_become_logged_messages() {
        let read = entries(Value::Array(vec![
            entry("3-0", &["k", "j", "d", r#"{"a":1}"#]),
            entry("4-0", &["k", "b", "d", "\u{1}\u{2}"]),
        ]))
        .unwrap();
        assert_eq!(read[0].seq, 3);
        assert_eq!(read[0].payload, MessageData::from(r#"{"a":1}"#));
        assert_eq!(read[1].payload, MessageData::Binary(vec![1u8, 2].into()));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let bad = [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![])]),
            Value::Array(vec![entry("x-0", &["k", "j", "d", "1"])]),
            Value::Array(vec![entry("1-0", &["k", "j"])]),
            Value::Array(vec![entry("1-0", &["k", "j", "d", "not json"])]),
            Value::Array(vec![entry("1-0", &["k", "?", "d", "1"])]),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Int(3)])]),
        ];
        for value in bad {
            assert!(entries(value.clone()).is_err(), "{value:?}");
        }
        for answer in [
            vec![],
            vec![Value::Int(1)],
            vec![bulk("what")],
            vec![bulk("held"), bulk("1")],
            vec![bulk("held"), bulk("-1"), bulk("0"), bulk("0"), bulk("0")],
            vec![
                bulk("held"),
                Value::Int(-3),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                Value::Array(vec![]),
                Value::Array(vec![]),
            ],
        ] {
            assert!(read_attached(answer.clone(), None).is_err(), "{answer:?}");
        }
    }

    #[test]
    fn an_attach_answer_reads_as_its_state() {
        let answer = vec![
            bulk("held"),
            Value::Int(5),
            bulk("2"),
            bulk("1"),
            bulk("4"),
            Value::Array(vec![entry("3-0", &["k", "j", "d", "3"])]),
            Value::Array(vec![
                entry("4-0", &["k", "j", "d", "4"]),
                entry("5-0", &["k", "j", "d", "5"]),
            ]),
        ];
        let Some(Attached::Held { state, messages }) =
            read_attached(answer, Some("c".into())).unwrap()
        else {
            panic!("held");
        };
        assert_eq!(
            (state.last_seq, state.acked, state.dropped, state.processed),
            (5, 2, 1, 4)
        );
        assert_eq!(state.first_held, 3);
        assert_eq!(state.client.as_deref(), Some("c"));
        assert_eq!(messages.len(), 2);
        assert!(matches!(read_attached(vec![bulk("busy")], None), Ok(None)));
        assert!(matches!(
            read_attached(vec![bulk("expired")], None),
            Ok(Some(Attached::Expired))
        ));
    }

    #[test]
    fn only_well_formed_channel_messages_are_events() {
        let token = SessionToken::generate();
        assert_eq!(
            parse_event(&format!("logged {token} 7")),
            Some(RemoteEvent::Logged {
                session: token,
                seq: 7
            })
        );
        assert_eq!(
            parse_event(&format!("superseded {token}")),
            Some(RemoteEvent::Superseded { session: token })
        );
        for junk in [
            "",
            "logged",
            "logged xyz 1",
            &format!("logged {token} -1"),
            &format!("logged {token} 1 2"),
            &format!("superseded {token} extra"),
            "superseded 00",
        ] {
            assert_eq!(parse_event(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn steps_are_grouped_by_session_in_order() {
        let (a, b) = (SessionToken::generate(), SessionToken::generate());
        let step = |token, id| Job::Processed { token, id };
        let groups: Vec<Vec<u64>> = by_session(vec![step(a, 1), step(b, 2), step(a, 3)])
            .map(|group| {
                group
                    .iter()
                    .map(|job| match job {
                        Job::Processed { id, .. } => *id,
                        _ => 0,
                    })
                    .collect()
            })
            .collect();
        assert_eq!(groups, [vec![1, 3], vec![2]]);
    }
}
