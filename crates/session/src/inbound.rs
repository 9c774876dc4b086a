//! Inbound exactly-once: which client ids a session has processed.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sessions::Local;

/// The answer of [`Session::accept`](crate::Session::accept).
#[must_use = "a new message is processed only once its `Processing` guard reports it"]
pub enum Accept {
    /// Not seen before: run the handler, then call [`Processing::processed`].
    New(Processing),
    /// Processed, or being processed, already (a resend after a reconnect): skip the handler;
    /// the acknowledgement covers it once it is processed.
    AlreadyProcessed,
    /// The message before it was never received: the client skipped an id, which the protocol
    /// forbids (close the connection with 1002).
    OutOfOrder {
        /// The lowest id the session is waiting for.
        expected: u64,
    },
}

impl fmt::Debug for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::New(p) => f.debug_tuple("New").field(&p.id).finish(),
            Self::AlreadyProcessed => f.write_str("AlreadyProcessed"),
            Self::OutOfOrder { expected } => f
                .debug_struct("OutOfOrder")
                .field("expected", expected)
                .finish(),
        }
    }
}

/// A client message accepted and not yet processed.
///
/// [`processed`](Self::processed) marks it processed (handled, rejected, or dropped: anything
/// after which the client must not resend it). Dropped without that (the handler was
/// cancelled, say because the connection died), it is forgotten, so the client's resend is new.
pub struct Processing {
    pub(crate) id: u64,
    /// Taken when the message is processed; an id dropped with it is abandoned.
    pub(crate) local: Option<Arc<Local>>,
}

impl Processing {
    /// The message's client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks the message processed; the acknowledgement mark advances over every contiguous
    /// processed id.
    pub fn processed(mut self) {
        if let Some(local) = self.local.take() {
            local.processed(self.id);
        }
    }

    /// Marks the message processed here, without telling the store: the new acknowledgement
    /// mark if it moved, which the caller records (with the reply, in one step). Gives back
    /// the session's state it held, for the next message.
    pub(crate) fn finish(mut self) -> (Option<u64>, Option<Arc<Local>>) {
        let local = self.local.take();
        let mark = local.as_ref().and_then(|l| l.inbound().processed(self.id));
        (mark, local)
    }

    /// Whether it is a message of the session `local`.
    pub(crate) fn is_of(&self, local: &Arc<Local>) -> bool {
        self.local.as_ref().is_some_and(|l| Arc::ptr_eq(l, local))
    }
}

impl fmt::Debug for Processing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processing").field("id", &self.id).finish()
    }
}

impl Drop for Processing {
    fn drop(&mut self) {
        if let Some(local) = self.local.take() {
            local.abandon(self.id);
        }
    }
}

/// Per session: every id up to `mark` is processed; above it, the ids in flight or processed
/// out of order, at most `message_concurrency` of them (more only while a client's resend of
/// an abandoned id is awaited).
#[derive(Debug, Default)]
pub(crate) struct InboundIds {
    pub(crate) mark: u64,
    /// The state of ids `mark + 1`, `mark + 2`, ...: a window rather than a map, as they are
    /// admitted in order.
    above: VecDeque<Id>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    /// Not admitted, or abandoned.
    Absent,
    InFlight,
    Processed,
}

pub(crate) enum Admit {
    New,
    AlreadyProcessed,
    OutOfOrder { expected: u64 },
}

impl InboundIds {
    pub(crate) fn new(mark: u64) -> Self {
        Self {
            mark,
            above: VecDeque::new(),
        }
    }

    /// The state of `id`, above the mark.
    fn state(&self, id: u64) -> Id {
        id.checked_sub(self.mark + 1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.above.get(i).copied())
            .unwrap_or(Id::Absent)
    }

    pub(crate) fn admit(&mut self, id: u64) -> Admit {
        if id <= self.mark || self.state(id) != Id::Absent {
            return Admit::AlreadyProcessed;
        }
        if id > self.mark + 1 && self.state(id - 1) == Id::Absent {
            let mut expected = self.mark + 1;
            while self.state(expected) != Id::Absent {
                expected += 1;
            }
            return Admit::OutOfOrder { expected };
        }
        // `id - 1` is the mark or held: `id` is inside the window or just past it.
        let i = (id - self.mark - 1) as usize;
        match self.above.get_mut(i) {
            Some(slot) => *slot = Id::InFlight,
            None => self.above.push_back(Id::InFlight),
        }
        Admit::New
    }

    /// Returns the new mark if it moved.
    pub(crate) fn processed(&mut self, id: u64) -> Option<u64> {
        if self.state(id) != Id::Absent {
            self.above[(id - self.mark - 1) as usize] = Id::Processed;
        }
        let before = self.mark;
        while self.above.front() == Some(&Id::Processed) {
            self.above.pop_front();
            self.mark += 1;
        }
        (self.mark > before).then_some(self.mark)
    }

    /// Raises the mark to `mark` (processed elsewhere, say on another node) and returns it.
    pub(crate) fn raise(&mut self, mark: u64) -> u64 {
        if mark > self.mark {
            let covered = usize::try_from(mark - self.mark).unwrap_or(usize::MAX);
            self.above.drain(..covered.min(self.above.len()));
            self.mark = mark;
            // Ids processed out of order just above the new mark join it.
            self.processed(0);
        }
        self.mark
    }

    pub(crate) fn abandon(&mut self, id: u64) {
        if self.state(id) == Id::InFlight {
            self.above[(id - self.mark - 1) as usize] = Id::Absent;
            // Absent at the end is the same as not held.
            while self.above.back() == Some(&Id::Absent) {
                self.above.pop_back();
            }
        }
    }
}

/// A session's inbound ids on this node, shared by its connections (a superseded one may still
/// finish its calls).
///
/// The common case, ids admitted one at a time and each processed before the next (the
/// default `message_concurrency` of 1), takes one compare-and-swap on one word per step. Any
/// other step (a second id in flight, an abandon with ids above it, a mark raised from the
/// store, ids past 2^62) moves the state into the [`InboundIds`] under a mutex, and the state
/// moves back to the word once it fits again.
#[derive(Debug)]
pub(crate) struct InboundState {
    /// [`IDLE`] | mark: nothing in flight above the mark. [`ONE`] | mark: `mark + 1` in flight
    /// and nothing else above the mark. [`SLOW`]: `slow` holds the state.
    word: AtomicU64,
    /// The state while `word` is [`SLOW`]; stale otherwise. Only written under its lock, and
    /// `word` leaves or enters [`SLOW`] only under it.
    slow: Mutex<InboundIds>,
}

const IDLE: u64 = 0;
const ONE: u64 = 1 << 62;
const SLOW: u64 = 2 << 62;
const MODE: u64 = 3 << 62;
/// The highest mark the word holds: `mark + 1` must fit its 62 bits too.
const MAX_FAST_MARK: u64 = (1 << 62) - 2;

/// What a step makes of the word.
enum Fast<R> {
    /// The answer, the word unchanged.
    Answer(R),
    /// The answer once this word replaces the one read.
    Swap(u64, R),
    /// The step needs the lock.
    Slow,
}

impl InboundState {
    pub(crate) fn new(mark: u64) -> Self {
        let state = Self {
            word: AtomicU64::new(SLOW),
            slow: Mutex::new(InboundIds::new(mark)),
        };
        state.with_slow(|_| ());
        state
    }

    /// Runs `f` on the state under the lock, then leaves it in the word if it fits.
    fn with_slow<R>(&self, f: impl FnOnce(&mut InboundIds) -> R) -> R {
        let mut ids = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        let mut word = self.word.load(Ordering::Acquire);
        while word & MODE != SLOW {
            let mark = word & !MODE;
            let taken = InboundIds {
                mark,
                above: if word & MODE == ONE {
                    VecDeque::from([Id::InFlight])
                } else {
                    VecDeque::new()
                },
            };
            match self
                .word
                .compare_exchange(word, SLOW, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    *ids = taken;
                    break;
                }
                Err(now) => word = now,
            }
        }
        let result = f(&mut ids);
        if ids.mark <= MAX_FAST_MARK {
            let fast = match ids.above.as_slices() {
                ([], []) => Some(IDLE),
                ([Id::InFlight], []) | ([], [Id::InFlight]) => Some(ONE),
                _ => None,
            };
            if let Some(mode) = fast {
                // Nothing else writes the word while it is `SLOW`, and this lock is held.
                self.word.store(mode | ids.mark, Ordering::Release);
            }
        }
        result
    }

    /// One step: `fast` answers from the word's mode and mark, or gives the word to swap in
    /// (retried if the word changed meanwhile); `slow` answers under the lock.
    fn step<R>(
        &self,
        fast: impl Fn(u64, u64) -> Fast<R>,
        slow: impl FnOnce(&mut InboundIds) -> R,
    ) -> R {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (next, result) = match fast(word & MODE, word & !MODE) {
                Fast::Answer(result) => return result,
                Fast::Swap(next, result) => (next, result),
                Fast::Slow => return self.with_slow(slow),
            };
            match self
                .word
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return result,
                Err(now) => word = now,
            }
        }
    }

    /// [`InboundIds::admit`].
    pub(crate) fn admit(&self, id: u64) -> Admit {
        self.step(
            |mode, mark| match mode {
                IDLE if id <= mark => Fast::Answer(Admit::AlreadyProcessed),
                IDLE if id == mark + 1 => Fast::Swap(ONE | mark, Admit::New),
                ONE if id <= mark + 1 => Fast::Answer(Admit::AlreadyProcessed),
                _ => Fast::Slow,
            },
            |ids| ids.admit(id),
        )
    }

    /// [`InboundIds::processed`].
    pub(crate) fn processed(&self, id: u64) -> Option<u64> {
        self.step(
            |mode, mark| match mode {
                // Nothing in flight: no id to mark, and the mark stays.
                IDLE => Fast::Answer(None),
                ONE if id == mark + 1 && id <= MAX_FAST_MARK => Fast::Swap(IDLE | id, Some(id)),
                ONE if id != mark + 1 => Fast::Answer(None),
                _ => Fast::Slow,
            },
            |ids| ids.processed(id),
        )
    }

    /// [`InboundIds::abandon`].
    pub(crate) fn abandon(&self, id: u64) {
        self.step(
            |mode, mark| match mode {
                IDLE => Fast::Answer(()),
                ONE if id == mark + 1 => Fast::Swap(IDLE | mark, ()),
                ONE => Fast::Answer(()),
                _ => Fast::Slow,
            },
            |ids| ids.abandon(id),
        )
    }

    /// [`InboundIds::raise`].
    pub(crate) fn raise(&self, mark: u64) -> u64 {
        self.with_slow(|ids| ids.raise(mark))
    }

    /// The highest id processed with every one before it.
    pub(crate) fn mark(&self) -> u64 {
        let word = self.word.load(Ordering::Acquire);
        if word & MODE == SLOW {
            self.with_slow(|ids| ids.mark)
        } else {
            word & !MODE
        }
    }

    #[cfg(test)]
    fn is_fast(&self) -> bool {
        self.word.load(Ordering::Acquire) & MODE != SLOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_new(a: Admit) -> bool {
        matches!(a, Admit::New)
    }

    #[test]
    fn mark_advances_over_the_contiguous_prefix_only() {
        let mut ids = InboundIds::new(0);
        assert!(is_new(ids.admit(1)));
        assert!(is_new(ids.admit(2)));
        assert!(is_new(ids.admit(3)));
        assert_eq!(ids.processed(2), None);
        assert_eq!(ids.processed(3), None);
        assert_eq!(ids.processed(1), Some(3));
        assert!(matches!(ids.admit(2), Admit::AlreadyProcessed));
    }

    #[test]
    fn an_abandoned_id_is_new_again_but_a_processed_one_after_it_is_not() {
        let mut ids = InboundIds::new(0);
        assert!(is_new(ids.admit(1)));
        assert!(is_new(ids.admit(2)));
        ids.processed(2);
        ids.abandon(1);
        assert!(is_new(ids.admit(1)));
        assert!(matches!(ids.admit(2), Admit::AlreadyProcessed));
        assert_eq!(ids.processed(1), Some(2));
    }

    #[test]
    fn a_mark_raised_from_elsewhere_covers_every_id_up_to_it() {
        let mut ids = InboundIds::new(1);
        assert!(is_new(ids.admit(2)));
        assert!(is_new(ids.admit(3)));
        ids.processed(3);
        assert_eq!(ids.raise(2), 3, "3 was processed here already");
        assert!(matches!(ids.admit(3), Admit::AlreadyProcessed));
        assert_eq!(ids.raise(1), 3, "a lower mark changes nothing");
        assert!(is_new(ids.admit(4)));
    }

    /// The map these ids were kept in before the window: the reference.
    #[derive(Default)]
    struct Model {
        mark: u64,
        above: std::collections::BTreeMap<u64, bool>,
    }

    impl Model {
        fn admit(&mut self, id: u64) -> (u8, u64) {
            if id <= self.mark || self.above.contains_key(&id) {
                return (1, 0);
            }
            if id > self.mark + 1 && !self.above.contains_key(&(id - 1)) {
                let mut expected = self.mark + 1;
                while self.above.contains_key(&expected) {
                    expected += 1;
                }
                return (2, expected);
            }
            self.above.insert(id, false);
            (0, 0)
        }

        fn processed(&mut self, id: u64) -> Option<u64> {
            if let Some(done) = self.above.get_mut(&id) {
                *done = true;
            }
            let before = self.mark;
            while self.above.first_key_value() == Some((&(self.mark + 1), &true)) {
                self.above.pop_first();
                self.mark += 1;
            }
            (self.mark > before).then_some(self.mark)
        }

        fn raise(&mut self, mark: u64) -> u64 {
            if mark > self.mark {
                self.mark = mark;
                self.above = self.above.split_off(&(mark + 1));
                self.processed(0);
            }
            self.mark
        }

        fn abandon(&mut self, id: u64) {
            if self.above.get(&id) == Some(&false) {
                self.above.remove(&id);
            }
        }
    }

    fn code(a: Admit) -> (u8, u64) {
        match a {
            Admit::New => (0, 0),
            Admit::AlreadyProcessed => (1, 0),
            Admit::OutOfOrder { expected } => (2, expected),
        }
    }

    proptest::proptest! {
        #[test]
        fn the_window_answers_as_the_map_did(
            steps in proptest::collection::vec((0u8..4, 0u64..12), 0..200),
            start in 0u64..3,
        ) {
            let mut ids = InboundIds::new(start);
            let mut model = Model { mark: start, ..Model::default() };
            for (op, n) in steps {
                // Ids near the mark, where every rule applies.
                let id = model.mark.saturating_sub(2) + n;
                match op {
                    0 => proptest::prop_assert_eq!(code(ids.admit(id)), model.admit(id)),
                    1 => proptest::prop_assert_eq!(ids.processed(id), model.processed(id)),
                    2 => ids.abandon(id),
                    _ => proptest::prop_assert_eq!(ids.raise(model.mark + n / 4), model.raise(model.mark + n / 4)),
                }
                if op == 2 {
                    model.abandon(id);
                }
                proptest::prop_assert_eq!(ids.mark, model.mark);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_shared_state_answers_as_the_window_does(
            steps in proptest::collection::vec((0u8..5, 0u64..8), 0..200),
            near_the_word_limit in proptest::bool::ANY,
        ) {
            // Marks past what the word holds go through the lock.
            let start = if near_the_word_limit { MAX_FAST_MARK - 6 } else { 0 };
            let state = InboundState::new(start);
            let mut ids = InboundIds::new(start);
            for (op, n) in steps {
                let id = ids.mark.saturating_sub(2) + n;
                match op {
                    0 | 1 => proptest::prop_assert_eq!(code(state.admit(id)), code(ids.admit(id))),
                    2 => proptest::prop_assert_eq!(state.processed(id), ids.processed(id)),
                    3 => {
                        state.abandon(id);
                        ids.abandon(id);
                    }
                    _ => proptest::prop_assert_eq!(state.raise(ids.mark + n / 4), ids.raise(ids.mark + n / 4)),
                }
                proptest::prop_assert_eq!(state.mark(), ids.mark);
                // The word holds the state whenever it fits.
                let fits = ids.mark <= MAX_FAST_MARK
                    && (ids.above.is_empty() || ids.above == [Id::InFlight]);
                proptest::prop_assert_eq!(state.is_fast(), fits);
            }
        }
    }

    #[test]
    fn one_id_at_a_time_stays_in_the_word() {
        let state = InboundState::new(0);
        for id in 1..=100 {
            assert!(is_new(state.admit(id)));
            assert!(matches!(state.admit(id), Admit::AlreadyProcessed));
            assert_eq!(state.processed(id), Some(id));
            assert!(state.is_fast());
        }
        assert!(is_new(state.admit(101)));
        assert!(is_new(state.admit(102)), "a second id in flight");
        assert!(!state.is_fast());
        assert_eq!(state.processed(101), Some(101));
        assert!(state.is_fast(), "back to one in flight");
        state.abandon(102);
        assert!(is_new(state.admit(102)));
        assert_eq!(state.mark(), 101);
    }

    /// Connections of one session (a superseded one finishing its calls, the one that resumed)
    /// race on the same ids, abandoning some, while marks confirmed by the store are raised
    /// (each moving the state under the lock and back): each id is processed exactly once.
    #[test]
    fn racing_connections_process_each_id_once() {
        use std::sync::atomic::{AtomicBool, AtomicU32};
        const IDS: u64 = 20_000;
        let state = InboundState::new(0);
        let runs: Vec<AtomicU32> = (0..=IDS).map(|_| AtomicU32::new(0)).collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (state, done) = (&state, &done);
            scope.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let mark = state.mark();
                    assert!(state.raise(mark) >= mark);
                    std::thread::yield_now();
                }
            });
            let mut connections = Vec::new();
            for seed in [0x9e37_79b9_u64, 0x85eb_ca6b, 0xc2b2_ae35] {
                let runs = &runs;
                connections.push(scope.spawn(move || {
                    let mut random = seed;
                    for id in 1..=IDS {
                        // A lost update leaves an id waiting for one that never comes: a
                        // failure, not a hang.
                        let waiting_since = std::time::Instant::now();
                        loop {
                            match state.admit(id) {
                                Admit::New => {
                                    random ^= random << 13;
                                    random ^= random >> 7;
                                    random ^= random << 17;
                                    if random % 8 == 0 {
                                        // The call was cancelled: the id is new again.
                                        state.abandon(id);
                                        continue;
                                    }
                                    runs[id as usize].fetch_add(1, Ordering::Relaxed);
                                    state.processed(id);
                                    break;
                                }
                                Admit::AlreadyProcessed => break,
                                // The id before was abandoned and not yet admitted again.
                                Admit::OutOfOrder { expected } => {
                                    assert!(
                                        waiting_since.elapsed()
                                            < std::time::Duration::from_secs(20),
                                        "id {id} waited 20 s for id {expected}"
                                    );
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                }));
            }
            let joined: Vec<_> = connections.into_iter().map(|c| c.join()).collect();
            // Before any assertion: the thread raising marks ends only then.
            done.store(true, Ordering::Release);
            assert!(joined.iter().all(Result::is_ok), "a connection panicked");
        });
        assert!(runs[1..].iter().all(|r| r.load(Ordering::Relaxed) == 1));
        assert_eq!(state.mark(), IDS);
        assert!(state.is_fast());
    }

    #[test]
    fn a_skipped_id_is_out_of_order() {
        let mut ids = InboundIds::new(4);
        assert!(matches!(ids.admit(6), Admit::OutOfOrder { expected: 5 }));
        assert!(is_new(ids.admit(5)));
        assert!(matches!(ids.admit(7), Admit::OutOfOrder { expected: 6 }));
    }
}
