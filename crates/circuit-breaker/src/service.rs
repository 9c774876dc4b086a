use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::breaker::{Core, NOT_POLLED, ProbeSlot, REJECTING, is_disabled, is_timed};
use crate::error::CircuitOpen;
use crate::future::{Call, ResponseFuture};
use crate::handle::Handle;
use crate::shard::{MAX_SHARDS, shard_hint};
use wsguard_policy::{Classify, DefaultClassifier, Reject, ReturnError};

/// Where an admitted call records its outcome: the breaker, held by the response future until
/// the call finishes.
///
/// Closed calls share one per thread: futures clone the `Arc` of their thread's recorder, so two
/// cores never bounce one reference count, and timed calls recycle it through the thread's spare
/// slot. A half-open probe gets a recorder of its own, holding its probe slot: the slot is given
/// back when the future lets go of the recorder.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Recorder {
    pub(crate) core: Arc<Core>,
    /// The shard of the per-thread counters (0 for probes).
    pub(crate) index: usize,
    pub(crate) probe: Option<ProbeSlot>,
}

/// State shared by a layer, every service it makes and every clone of them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    /// Indexed by the thread's shard hint modulo 64; the `shard_count()` distinct recorders repeat
    /// across it, so a thread's recorder is `hint % shard_count()` with no bounds check.
    recorders: Box<[Arc<Recorder>; MAX_SHARDS]>,
}

impl Shared {
    pub(crate) fn new(core: Core) -> Self {
        let core = Arc::new(core);
        let distinct: Vec<Arc<Recorder>> = (0..crate::shard::shard_count())
            .map(|index| {
                Arc::new(Recorder {
                    core: Arc::clone(&core),
                    index,
                    probe: None,
                })
            })
            .collect();
        let recorders = Box::new(std::array::from_fn(|i| {
            Arc::clone(&distinct[i % distinct.len()])
        }));
        Self { core, recorders }
    }

    /// A strong reference for the response future of a call admitted at `start`.
    ///
    /// Untimed calls (consecutive mode) clone their thread's recorder: their path makes no other
    /// atomic read-modify-write, so one clone is the cheapest way. Timed calls already make
    /// several: they take the thread's spare reference when it belongs to this breaker. `core` is
    /// this breaker's, passed by the caller that already holds it.
    #[inline]
    fn recorder(&self, core: &Arc<Core>, start: u64) -> Arc<Recorder> {
        if !is_timed(start) {
            return self.own_recorder();
        }
        SPARE.with(|spare| match spare.take() {
            Some(recorder) if Arc::ptr_eq(&recorder.core, core) => recorder,
            other => {
                spare.set(other);
                self.own_recorder()
            }
        })
    }

    /// A clone of the calling thread's recorder.
    #[inline]
    fn own_recorder(&self) -> Arc<Recorder> {
        Arc::clone(&self.recorders[shard_hint() % MAX_SHARDS])
    }
}

thread_local! {
    // One reference kept back per thread from the last finished timed call, handed to the next
    // one: a request/response loop in a rate mode then never touches a reference count. It keeps
    // at most one breaker per thread alive a little longer.
    static SPARE: Cell<Option<Arc<Recorder>>> = const { Cell::new(None) };
}

/// Hands the reference of a finished future back for the next call on this thread.
#[inline(always)]
pub(crate) fn recycle(recorder: Arc<Recorder>) {
    let mut recorder = Some(recorder);
    let _ = SPARE.try_with(|spare| {
        if let Some(previous) = spare.replace(recorder.take()) {
            drop(previous);
        }
    });
}

/// A circuit breaker around a service: rejects calls at once while open, lets a few probes
/// through when the open wait has passed, and closes again when they succeed.
///
/// Made by [`CircuitBreakerLayer`](crate::CircuitBreakerLayer); every clone, and every service
/// the same layer makes, shares one state. Whether a call goes through is decided when
/// `poll_ready` answers for it: an open breaker reports ready and rejects the call.
pub struct CircuitBreaker<S, C = DefaultClassifier, R = ReturnError> {
    inner: S,
    // Also reachable through `shared`; held directly to save a pointer hop per call.
    core: Arc<Core>,
    shared: Arc<Shared>,
    classifier: C,
    reject: R,
    // What `poll_ready` saw for the next call: the state word, or `REJECTING` when the breaker
    // would reject (the inner service was not polled, so `call` must not reach it); `NOT_POLLED`
    // before that and after a call that did not take the closed path.
    ready: u64,
}

impl<S, C, R> CircuitBreaker<S, C, R> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, classifier: C, reject: R) -> Self {
        Self {
            inner,
            core: Arc::clone(&shared.core),
            shared,
            classifier,
            reject,
            ready: NOT_POLLED,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the shared state.
    pub fn handle(&self) -> Handle {
        Handle {
            core: Arc::clone(&self.core),
        }
    }
}

impl<S, C, R, Req> Service<Req> for CircuitBreaker<S, C, R>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    R: Reject<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An open breaker is not an error of readiness: report ready, reject in `call`, and
        // leave the inner service alone meanwhile.
        self.ready = self.core.readiness();
        if self.ready == REJECTING {
            return Poll::Ready(Ok(()));
        }
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.reject.map_error(e))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Closed when `poll_ready` looked: two words in registers, nothing else to decide. (A
        // transition since then is no reason to reject: the call is simply not recorded.)
        // Disabled: the call goes through unrecorded, just as cheaply. Every admitted call
        // builds its future at this one place.
        let word = self.ready;
        let call = if let Some(start) = self.core.admit_closed(word) {
            Some(Call::new(
                self.shared.recorder(&self.core, start),
                word,
                start,
            ))
        } else if is_disabled(word) {
            None
        } else {
            match self.decide() {
                Ok(call) => call,
                Err(open) => {
                    return ResponseFuture::rejected(
                        open,
                        self.classifier.clone(),
                        self.reject.clone(),
                    );
                }
            }
        };
        ResponseFuture::called(
            self.inner.call(req),
            call,
            self.classifier.clone(),
            self.reject.clone(),
        )
    }
}

impl<S, C, R> CircuitBreaker<S, C, R> {
    /// Admission in every state but closed: the call record of an admitted call (`None` when it
    /// records nothing), or the rejection.
    #[inline(never)]
    fn decide(&mut self) -> Result<Option<Call>, CircuitOpen> {
        if std::mem::replace(&mut self.ready, NOT_POLLED) == REJECTING {
            return Err(self.core.rejection());
        }
        let Some(admitted) = self.core.admit()? else {
            return Ok(None);
        };
        let recorder = match admitted.probe {
            None => self.shared.recorder(&self.core, admitted.start),
            Some(slot) => Arc::new(Recorder {
                core: Arc::clone(&self.core),
                index: 0,
                probe: Some(slot),
            }),
        };
        Ok(Some(Call::new(recorder, admitted.word, admitted.start)))
    }
}

impl<S: Clone, C: Clone, R: Clone> Clone for CircuitBreaker<S, C, R> {
    fn clone(&self) -> Self {
        // A clone does not inherit readiness.
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.shared),
            self.classifier.clone(),
            self.reject.clone(),
        )
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for CircuitBreaker<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.core.state())
            .finish_non_exhaustive()
    }
}
