//! The node's queue: steps that must reach Redis in the order they were asked for, served by
//! one task, appends and processed marks pipelined.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use redis::{ErrorKind, ServerErrorKind, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::answer::bad_answer;
use super::connection::{Conn, bounded, timeout_error};
use super::listen::tell;
use super::{Handover, Inner, OwnedTarget, scripts};
use crate::data::MessageData;
use crate::store::{Appended, Attached, RemoteEvent, SessionStoreError};
use crate::token::SessionToken;

/// What a step costs in the queue besides its payload.
const STEP_BYTES: usize = 64;

/// A step that must reach Redis in the order it was asked for on this node: appends (a
/// message's place), and a session's attach after its detach by a connection that just ended.
pub(super) enum Job {
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

/// Sessions remembered as failed, at most (see `step_failed`).
const MAX_FAILED: usize = 100_000;

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
    pub(super) fn pipelines(&self) -> bool {
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
pub(super) fn by_session(batch: Vec<Job>) -> impl Iterator<Item = Vec<Job>> {
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

impl Inner {
    /// Queues a step; starts the task that serves the queue on the first one. Gives the job
    /// back if the queue is full or there is no runtime to serve it on.
    pub(super) fn queue(self: &Arc<Self>, job: Job) -> Result<(), Job> {
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
            if let Some(token) = job.session()
                && self.has_failed(&token)
            {
                // Refused quietly: the registry was told once, and closes the connection.
                if let Job::Append { reply, .. } = job {
                    let _ = reply.send(Err(earlier_failure()));
                }
                continue;
            }
            match job {
                Job::Append {
                    to: OwnedTarget::Session(token),
                    reply,
                    deadline,
                    ..
                } if Instant::now() > deadline => {
                    let _ = reply.send(Err(timeout_error(self.timeout)));
                    self.step_failed(token);
                }
                job => steps.push(job),
            }
        }
        let mut conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => {
                for job in steps {
                    if let Some(token) = job.session() {
                        self.step_failed(token);
                    }
                    job.fail(&err);
                }
                return;
            }
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
                    if appended.is_err() {
                        self.step_failed(token);
                    }
                    let _ = reply.send(appended.map(|a| {
                        a.map(|(seq, dropped)| Appended {
                            session: token,
                            seq,
                            dropped,
                            evicted: Vec::new(),
                        })
                    }));
                }
                Job::Processed { token, id } => match answer {
                    Ok(_) => self.recorded(token, id),
                    Err(err) => {
                        tracing::warn!(%err, "session processed mark not recorded");
                        self.step_failed(token);
                    }
                },
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
    pub(super) async fn serve(&self, job: Job) {
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
                if let OwnedTarget::Session(token) = &to
                    && self.has_failed(token)
                {
                    let _ = reply.send(Err(earlier_failure()));
                    return;
                }
                let result = self
                    .append_now(&to, &payload, max_messages, max_bytes)
                    .await;
                if let (Err(_), OwnedTarget::Session(token)) = (&result, &to) {
                    self.step_failed(*token);
                }
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
                let attached = self.attach(token, client, after, ttl, mode).await;
                if attached.is_ok() {
                    // Attached again: its steps go to Redis again, from the marks Redis holds.
                    self.failed_here().remove(&token);
                }
                let _ = reply.send(attached);
            }
            Job::Detach { token, ttl } => {
                if let Err(err) = self.detach(token, ttl).await {
                    tracing::warn!(%err, "session not detached in Redis (it stays attached)");
                }
                // The connection that saw the failure is gone, and its last steps were refused
                // before this one: this node holds nothing of the session that Redis lacks.
                self.failed_here().remove(&token);
            }
            Job::Processed { token, id } => {
                if self.has_failed(&token) {
                    return;
                }
                match self.processed(token, id).await {
                    Ok(()) => self.recorded(token, id),
                    Err(err) => {
                        tracing::warn!(%err, "session processed mark not recorded");
                        self.step_failed(token);
                    }
                }
            }
            Job::Flush(done) => drop(done.send(())),
        }
    }

    fn failed_here(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<SessionToken>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_failed(&self, token: &SessionToken) -> bool {
        self.failed_here().contains(token)
    }

    /// A step of `token` did not reach Redis (or may not have): its later steps are refused
    /// until it is attached again, and the registry closes its connection.
    fn step_failed(&self, token: SessionToken) {
        let mut failed = self.failed_here();
        // Entries leave when their session is attached or detached here again; a session
        // that never is (its steps came from a sender, not a connection) must not pile up.
        if failed.len() >= MAX_FAILED {
            failed.clear();
        }
        let new = failed.insert(token);
        drop(failed);
        if new {
            tell(&self.listeners, RemoteEvent::Failed { session: token });
        }
    }

    /// The processed mark `id` of `token` is in Redis: acks may cover it.
    fn recorded(&self, token: SessionToken, id: u64) {
        tell(
            &self.listeners,
            RemoteEvent::Recorded { session: token, id },
        );
    }

    async fn processed(&self, token: SessionToken, id: u64) -> Result<(), SessionStoreError> {
        let mut conn = self.conn().await?;
        let mut invocation = scripts::PROCESSED.prepare_invoke();
        invocation.key(self.keys(&token).meta).arg(id);
        self.run::<i64>(&mut conn, &invocation).await.map(drop)
    }
}

/// The answer to a step of a session whose earlier step failed.
fn earlier_failure() -> SessionStoreError {
    SessionStoreError::new("an earlier step of this session did not reach Redis; resume it")
}

#[cfg(test)]
mod tests {
    use super::*;

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
