//! Inbound exactly-once: which client ids a session has processed.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

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
    pub(crate) local: Arc<Local>,
    pub(crate) done: bool,
}

impl Processing {
    /// The message's client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Marks the message processed; the acknowledgement mark advances over every contiguous
    /// processed id.
    pub fn processed(mut self) {
        self.done = true;
        self.local.processed(self.id);
    }

    /// Marks the message processed here, without telling the store: the new acknowledgement
    /// mark if it moved, which the caller records (with the reply, in one step).
    pub(crate) fn finish(mut self) -> Option<u64> {
        self.done = true;
        self.local.inbound().processed(self.id)
    }
}

impl fmt::Debug for Processing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processing").field("id", &self.id).finish()
    }
}

impl Drop for Processing {
    fn drop(&mut self) {
        if !self.done {
            self.local.abandon(self.id);
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

    #[test]
    fn a_skipped_id_is_out_of_order() {
        let mut ids = InboundIds::new(4);
        assert!(matches!(ids.admit(6), Admit::OutOfOrder { expected: 5 }));
        assert!(is_new(ids.admit(5)));
        assert!(matches!(ids.admit(7), Admit::OutOfOrder { expected: 6 }));
    }
}
