//! The mechanism seam: what an incentive mechanism is, so a node can run more than one.
//!
//! A mechanism answers five questions, and nothing else in the node needs to know which
//! mechanism it runs:
//! 1. **What a miner produces and when** ([`Mechanism::cadence`]): an update per window, or a
//!    submission whenever the miner has one.
//! 2. **How a validator admits it**: an ordered list of [`Check`]s ([`Mechanism::checks`]), each
//!    returning a typed [`Rejection`]; the first refusal wins, and refusals are counted per
//!    check on the admin socket (`apiary admin metrics` → `rejected`). A new check is one item
//!    in the list plus its test.
//! 3. **How it is scored** ([`Mechanism::score`]): one number per admitted submission.
//! 4. **How scores become weights** ([`Mechanism::weights`]): smoothed scores → u16 weights.
//! 5. **What is aggregated into shared state**, if anything (windowed training: the accepted
//!    updates become the next model, [`crate::updates::outer_step`]).
//!
//! Windowed training ([`crate::windowed::Windowed`]) is the first implementation: per window,
//! checks `size` → `decodes` → `in_sync` → `recomputes` → `norm`, scored against the
//! validator's recompute on the miner's pages and on control pages
//! ([`crate::windowed::score_parts`]), weights by shaped, normalized EMA, accepted updates
//! aggregated. The others plug in as:
//! - **Model competitions** (SN9 / AI-factory; [`crate::competition`], built): cadence per
//!   submission (a model committed on chain); checks, each a named refusal counted per reason:
//!   `digest`, `copy` (content id of an earlier commit), `unreachable`, the constraints
//!   (`manifest`, `model_type`, `params`, `tokenizer`, `seq_len`, `tensors`), `near_copy`
//!   (private-probe logits); score: per-page pairwise wins against every other model with the
//!   earlier commit's loss taken as `loss × (1 − ε)`, so a score depends on the round's other
//!   models (a round, not one submission, is the unit); weights: softmax of EMA win rates (or
//!   king of the hill), merged with training's by share in the weight setter; nothing
//!   aggregated (the best model is the output).
//! - **Loss-function search** (Hivetrain AutoML): cadence per submission (a loss program);
//!   checks: `parses`, `bounded` (op count, no NaN on probe batches); score: held-out loss of a
//!   small model trained with it; weights: win rate; nothing aggregated.
//! - **Research memory** (autoresearch@home): cadence per submission (a hypothesis, claim or
//!   result naming its parent); checks: `signed_claim`, `reproducible` (a validator re-runs the
//!   claimed experiment at a sample rate); score: improvement over the best run it cites;
//!   aggregated into the shared content-addressed experiment log.
//! - **Pools**: not a mechanism but a miner shape: many machines behind one hotkey agree on a
//!   pool topic who trains which pages; the pool's combined update meets the same checks.
//!
//! On chain a subnet may run several mechanisms, each with its own weight vector (`mechid` in
//! the current runtime's weight calls): a node serving several keeps one [`Mechanism`] and one
//! score table per mechanism id and submits one weight vector for each.

use std::fmt;

/// When a mechanism's miners produce work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// One piece of work per window, scored when the window closes (windowed training).
    PerWindow,
    /// Work whenever the miner has it, committed on chain (competitions, loss search).
    PerSubmission,
}

/// Why a check refused a submission: the check's name (the counter it is counted under) and
/// what was wrong, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{check}: {reason}")]
pub struct Rejection {
    /// The refusing check's [`Check::name`].
    pub check: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl Rejection {
    /// A refusal by `check`.
    pub fn new(check: &'static str, reason: impl fmt::Display) -> Self {
        Rejection {
            check,
            reason: reason.to_string(),
        }
    }
}

/// One admission check over a submission `S` (which it may fill in for later checks, e.g. the
/// decoded update).
pub trait Check<S>: Send + Sync {
    /// Short, stable name: the counter refusals are counted under.
    fn name(&self) -> &'static str;
    /// Refuses the submission, or lets it on to the next check.
    fn check(&self, sub: &mut S) -> Result<(), Rejection>;
}

/// An incentive mechanism (see the module docs).
pub trait Mechanism: Send + Sync + 'static {
    /// What a validator holds of one miner's work while checking and scoring it.
    type Submission;

    /// The mechanism's name (logs, admin socket).
    fn name(&self) -> &'static str;

    /// When miners produce work.
    fn cadence(&self) -> Cadence;

    /// The admission checks, in the order they run (cheap before costly).
    fn checks(&self) -> &[Box<dyn Check<Self::Submission>>];

    /// The score of an admitted submission.
    fn score(&self, sub: &mut Self::Submission) -> Result<f32, Rejection>;

    /// Smoothed scores → `(uids, u16 weights)` for the chain. By default Bittensor's
    /// normalization (the largest weight is `u16::MAX`).
    fn weights(&self, smoothed: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
        apiary_chain::normalize_weights(smoothed)
    }

    /// Runs the checks in order and then scores: the first refusal wins.
    fn evaluate(&self, sub: &mut Self::Submission) -> Result<f32, Rejection> {
        for c in self.checks() {
            c.check(sub)?;
        }
        self.score(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Positive;
    impl Check<i32> for Positive {
        fn name(&self) -> &'static str {
            "positive"
        }
        fn check(&self, s: &mut i32) -> Result<(), Rejection> {
            (*s > 0)
                .then_some(())
                .ok_or_else(|| Rejection::new("positive", format!("{s} is not positive")))
        }
    }
    struct Small;
    impl Check<i32> for Small {
        fn name(&self) -> &'static str {
            "small"
        }
        fn check(&self, s: &mut i32) -> Result<(), Rejection> {
            (*s < 10)
                .then_some(())
                .ok_or_else(|| Rejection::new("small", "too big"))
        }
    }
    struct Toy(Vec<Box<dyn Check<i32>>>);
    impl Mechanism for Toy {
        type Submission = i32;
        fn name(&self) -> &'static str {
            "toy"
        }
        fn cadence(&self) -> Cadence {
            Cadence::PerSubmission
        }
        fn checks(&self) -> &[Box<dyn Check<i32>>] {
            &self.0
        }
        fn score(&self, s: &mut i32) -> Result<f32, Rejection> {
            Ok(*s as f32 / 10.0)
        }
    }

    #[test]
    fn checks_run_in_order_and_the_first_refusal_wins() {
        let m = Toy(vec![Box::new(Positive), Box::new(Small)]);
        assert_eq!(m.evaluate(&mut 5), Ok(0.5));
        assert_eq!(m.evaluate(&mut -50).map_err(|r| r.check), Err("positive"));
        assert_eq!(m.evaluate(&mut 50).map_err(|r| r.check), Err("small"));
        let (uids, w) = m.weights(&[(1, 0.5), (2, 1.0)]);
        assert_eq!(uids, vec![1, 2]);
        assert_eq!(w[1], u16::MAX);
    }
}
