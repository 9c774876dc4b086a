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

/// What this node still records of a session one of whose steps failed. Its appends are
/// refused either way (the registry closes its connection, and the client resumes from what
/// Redis holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failed {
    /// Every append of the session before now was sent, and the last one, this node's append
    /// number `after`, may not have run yet (no answer came: Redis is slow, frozen, or the
    /// connection broke); 0 if none is in doubt. A later processed mark is sent and recorded
    /// only if that append ran before it: the reply of a call then never stays in Redis without
    /// the mark that says the call was processed (a resend would run it twice), and a mark
    /// never covers a reply Redis does not hold (the call would be lost).
    MarksAfter(u64),
    /// An append of the session was not sent (refused, late, or without a connection), or
    /// Redis answered it with an error: later marks are refused.
    Refused,
}

impl Failed {
    /// The two failures of one session together.
    fn and(self, other: Failed) -> Failed {
        match (self, other) {
            (Self::MarksAfter(a), Self::MarksAfter(b)) => Self::MarksAfter(a.max(b)),
            _ => Self::Refused,
        }
    }
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
    ///
    /// Each append carries this node's number for it, and each mark the number of the last
    /// append of its session sent before it (from this pipeline, or the one in doubt when the
    /// session failed): Redis records the mark only if that append ran, so that a call's reply
    /// and its processed mark are in Redis together or the mark is not.
    async fn serve_pipelined(&self, batch: Vec<Job>) {
        let mut steps = Vec::with_capacity(batch.len());
        // Per step: an append's number, or the append a mark waits for (0: none).
        let mut numbers = Vec::with_capacity(batch.len());
        // The last append of each session in this pipeline.
        let mut last_append: HashMap<SessionToken, u64> = HashMap::new();
        for job in batch {
            let Some(token) = job.session() else {
                job.fail(&bad_answer("a step that is not pipelined"));
                continue;
            };
            let failed = self.failed_state(&token);
            match job {
                Job::Append {
                    reply, deadline, ..
                } if failed.is_some() || Instant::now() > deadline => {
                    // Refused quietly after a failure: the registry was told once, and closes
                    // the connection.
                    let err = if failed.is_some() {
                        earlier_failure()
                    } else {
                        timeout_error(self.timeout)
                    };
                    let _ = reply.send(Err(err));
                    self.step_failed(token, Failed::Refused);
                }
                Job::Processed { .. } if failed == Some(Failed::Refused) => {}
                job @ Job::Append { .. } => {
                    let number = self.next_append();
                    last_append.insert(token, number);
                    steps.push(job);
                    numbers.push(number);
                }
                job => {
                    let after = match (last_append.get(&token), failed) {
                        (Some(&number), _) => number,
                        (None, Some(Failed::MarksAfter(number))) => number,
                        (None, _) => 0,
                    };
                    steps.push(job);
                    numbers.push(after);
                }
            }
        }
        if steps.is_empty() {
            return;
        }
        let mut conn = match self.conn().await {
            Ok(conn) => conn,
            Err(err) => {
                for job in steps {
                    if let Some(token) = job.session() {
                        self.step_failed(token, Failed::Refused);
                    }
                    job.fail(&err);
                }
                return;
            }
        };
        let mut answers = self.pipeline(&mut conn, &steps, &numbers).await;
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
                    let retried_numbers: Vec<u64> = again.iter().map(|&i| numbers[i]).collect();
                    let second = self.pipeline(&mut conn, &retried, &retried_numbers).await;
                    for (i, answer) in again.into_iter().zip(second) {
                        answers[i] = answer;
                    }
                }
                Err(err) => answers = steps.iter().map(|_| Err(err.clone())).collect(),
            }
        }
        for ((job, number), answer) in steps.into_iter().zip(numbers).zip(answers) {
            // No answer (a timeout, a broken connection): the step may still run, in order
            // behind the ones before it. An error answer: it did not.
            let in_doubt = answer.is_err();
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
                        self.step_failed(
                            token,
                            if in_doubt {
                                Failed::MarksAfter(number)
                            } else {
                                Failed::Refused
                            },
                        );
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
                Job::Processed { token, id } => {
                    match answer.and_then(|value| {
                        redis::from_redis_value::<i64>(value).map_err(|_| bad_answer("processed"))
                    }) {
                        Ok(1) => self.recorded(token, id),
                        Ok(_) => {
                            // The append it waited for is not in Redis: nor is the call's reply.
                            tracing::warn!(
                                "session processed mark not recorded: a reply before it did not reach Redis"
                            );
                            self.step_failed(token, Failed::Refused);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "session processed mark not recorded");
                            // A later mark covers this one; the appends before it are
                            // accounted for on their own.
                            self.step_failed(token, Failed::MarksAfter(0));
                        }
                    }
                }
                job => job.fail(&bad_answer("a step that is not pipelined")),
            }
        }
    }

    /// Sends `steps` (appends to a session and processed marks) as one pipeline, with their
    /// `numbers` (see [`serve_pipelined`](Self::serve_pipelined)); one answer per step.
    async fn pipeline(
        &self,
        conn: &mut Conn,
        steps: &[Job],
        numbers: &[u64],
    ) -> Vec<Result<redis::RedisResult<Value>, SessionStoreError>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (step, number) in steps.iter().zip(numbers) {
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
                        .arg(token.to_string())
                        .arg(*number);
                    pipe.add_command(cmd);
                }
                Job::Processed { token, id } => {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(scripts::PROCESSED.get_hash())
                        .arg(1)
                        .arg(self.keys(token).meta)
                        .arg(*id)
                        .arg(&*self.node)
                        .arg(*number);
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
            // A session's appends and marks, alone: as in a pipeline, with their numbers.
            job if job.pipelines() => self.serve_pipelined(vec![job]).await,
            Job::Append {
                reply, deadline, ..
            } if late(deadline) => drop(reply.send(Err(timeout_error(self.timeout)))),
            Job::Attach {
                reply, deadline, ..
            } if late(deadline) => drop(reply.send(Err(timeout_error(self.timeout)))),
            // To a client's newest session: looked up first.
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
                // The connection that saw the failure is gone, and its last steps went before
                // this one (refused, or marks recorded only behind their replies): this node
                // holds nothing of the session that Redis lacks.
                self.failed_here().remove(&token);
            }
            // Pipelined above.
            Job::Processed { .. } => {}
            Job::Flush(done) => drop(done.send(())),
        }
    }

    /// This node's number for its next append.
    pub(super) fn next_append(&self) -> u64 {
        self.appends.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn failed_here(&self) -> std::sync::MutexGuard<'_, HashMap<SessionToken, Failed>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed_state(&self, token: &SessionToken) -> Option<Failed> {
        self.failed_here().get(token).copied()
    }

    /// A step of `token` did not reach Redis (or may not have): its later appends are refused,
    /// and its later marks refused or recorded only behind the append in doubt (`how`), until
    /// it is attached again; the registry closes its connection.
    fn step_failed(&self, token: SessionToken, how: Failed) {
        let mut failed = self.failed_here();
        // Entries leave when their session is attached or detached here again; a session
        // that never is (its steps came from a sender, not a connection) must not pile up.
        if failed.len() >= MAX_FAILED && !failed.contains_key(&token) {
            failed.clear();
        }
        let new = match failed.get_mut(&token) {
            Some(before) => {
                *before = before.and(how);
                false
            }
            None => {
                failed.insert(token, how);
                true
            }
        };
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
