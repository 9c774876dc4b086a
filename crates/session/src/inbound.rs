//! Inbound exactly-once: which client ids a session has processed.

use std::collections::BTreeMap;
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

/// Per session: every id up to `mark` is processed; above it, the ids in flight (`false`) or
/// processed out of order (`true`), at most `message_concurrency` of them.
#[derive(Debug, Default)]
pub(crate) struct InboundIds {
    pub(crate) mark: u64,
    above: BTreeMap<u64, bool>,
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
            above: BTreeMap::new(),
        }
    }

    pub(crate) fn admit(&mut self, id: u64) -> Admit {
        if id <= self.mark || self.above.contains_key(&id) {
            return Admit::AlreadyProcessed;
        }
        if id > self.mark + 1 && !self.above.contains_key(&(id - 1)) {
            let mut expected = self.mark + 1;
            while self.above.contains_key(&expected) {
                expected += 1;
            }
            return Admit::OutOfOrder { expected };
        }
        self.above.insert(id, false);
        Admit::New
    }

    /// Returns the new mark if it moved.
    pub(crate) fn processed(&mut self, id: u64) -> Option<u64> {
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

    /// Raises the mark to `mark` (processed elsewhere, say on another node) and returns it.
    pub(crate) fn raise(&mut self, mark: u64) -> u64 {
        if mark > self.mark {
            self.mark = mark;
            self.above = self.above.split_off(&(mark + 1));
            // Ids processed out of order just above the new mark join it.
            self.processed(0);
        }
        self.mark
    }

    pub(crate) fn abandon(&mut self, id: u64) {
        if self.above.get(&id) == Some(&false) {
            self.above.remove(&id);
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

    #[test]
    fn a_skipped_id_is_out_of_order() {
        let mut ids = InboundIds::new(4);
        assert!(matches!(ids.admit(6), Admit::OutOfOrder { expected: 5 }));
        assert!(is_new(ids.admit(5)));
        assert!(matches!(ids.admit(7), Admit::OutOfOrder { expected: 6 }));
    }
}
