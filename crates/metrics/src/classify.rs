//! How a finished call is counted: the shared [`Outcome`] of `wsguard-policy`, one counter each.
//!
//! The metrics layer takes any [`Classify`](wsguard_policy::Classify) policy through
//! [`MetricsLayer::classifier`](crate::MetricsLayer::classifier), as every wsguard layer does, and
//! counts each outcome under its own label of `wsguard_calls_total`.

use wsguard_policy::Outcome;

/// Every outcome, in the order of the per-outcome counters.
pub(crate) const ALL: [Outcome; 4] = [
    Outcome::Success,
    Outcome::Failure,
    Outcome::Rejected,
    Outcome::Duplicate,
];

/// The outcome's counter.
#[inline]
pub(crate) const fn index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Rejected => 2,
        Outcome::Duplicate => 3,
    }
}

/// The outcome's `outcome` label: `ok`, `error`, `rejected` or `duplicate`.
pub(crate) const fn label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "ok",
        Outcome::Failure => "error",
        Outcome::Rejected => "rejected",
        Outcome::Duplicate => "duplicate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter_and_label() {
        for (i, outcome) in ALL.into_iter().enumerate() {
            assert_eq!(index(outcome), i);
        }
        let labels: Vec<_> = ALL.map(label).to_vec();
        assert_eq!(labels, ["ok", "error", "rejected", "duplicate"]);
    }
}
