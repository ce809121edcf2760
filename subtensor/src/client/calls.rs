//! Which weight calls the connected runtime offers (read from its metadata), and which one a
//! weight submission uses.
//!
//! Runtimes differ: spec 218 (what chopsticks runs) has `set_weights` and the hash
//! commit-reveal pair `commit_weights` / `reveal_weights`; later runtimes add calls per
//! incentive mechanism (`set_mechanism_weights`, with a mechanism id) and commit-reveal v4,
//! where the commit is timelock-encrypted to a drand round (`commit_timelocked_*`,
//! [`crate::timelock`]). The node
//! reads the metadata of the runtime it is connected to and picks the call that fits the
//! subnet's settings and its own `chain.mechanism`.

use apiary_chain::ChainError;
use serde::Serialize;

/// The weight calls of `SubtensorModule` that a runtime has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct WeightCalls {
    /// `set_weights(netuid, dests, weights, version_key)`.
    pub set_weights: bool,
    /// `commit_weights(netuid, commit_hash)`.
    pub commit_weights: bool,
    /// `reveal_weights(netuid, uids, values, salt, version_key)`.
    pub reveal_weights: bool,
    /// `set_mechanism_weights(netuid, mecid, dests, weights, version_key)`.
    pub set_mechanism_weights: bool,
    /// `commit_mechanism_weights(netuid, mecid, commit_hash)`.
    pub commit_mechanism_weights: bool,
    /// `commit_timelocked_weights(..)`: commit-reveal v4 (drand timelock).
    pub commit_timelocked_weights: bool,
    /// `commit_timelocked_mechanism_weights(..)`: commit-reveal v4 per mechanism.
    pub commit_timelocked_mechanism_weights: bool,
}

/// The call names [`WeightCalls`] looks for, in its field order.
pub const WEIGHT_CALL_NAMES: [&str; 7] = [
    "set_weights",
    "commit_weights",
    "reveal_weights",
    "set_mechanism_weights",
    "commit_mechanism_weights",
    "commit_timelocked_weights",
    "commit_timelocked_mechanism_weights",
];

impl WeightCalls {
    /// The calls for which `has(name)` is true.
    pub fn from_names(has: impl Fn(&str) -> bool) -> Self {
        WeightCalls {
            set_weights: has("set_weights"),
            commit_weights: has("commit_weights"),
            reveal_weights: has("reveal_weights"),
            set_mechanism_weights: has("set_mechanism_weights"),
            commit_mechanism_weights: has("commit_mechanism_weights"),
            commit_timelocked_weights: has("commit_timelocked_weights"),
            commit_timelocked_mechanism_weights: has("commit_timelocked_mechanism_weights"),
        }
    }

    /// The calls a runtime's metadata has.
    pub fn from_metadata(md: &subxt::Metadata) -> Self {
        Self::from_names(|c| crate::values::has_call(md, "SubtensorModule", c))
    }

    /// The names of the calls present.
    pub fn names(&self) -> Vec<&'static str> {
        let have = [
            self.set_weights,
            self.commit_weights,
            self.reveal_weights,
            self.set_mechanism_weights,
            self.commit_mechanism_weights,
            self.commit_timelocked_weights,
            self.commit_timelocked_mechanism_weights,
        ];
        WEIGHT_CALL_NAMES
            .iter()
            .zip(have)
            .filter(|(_, h)| *h)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// The call one weight submission is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightCall {
    /// `set_weights` (mechanism 0 of a runtime without mechanisms, or where it is kept).
    Set,
    /// `set_mechanism_weights` for the mechanism.
    SetMechanism(u8),
    /// `commit_weights` now, `reveal_weights` once the reveal period comes.
    Commit,
    /// Commit-reveal v4: the weights timelock-encrypted to the drand round of their reveal
    /// ([`crate::timelock`]); the chain decrypts and applies them itself. With a mechanism id:
    /// `commit_timelocked_mechanism_weights`; without: `commit_timelocked_weights`.
    CommitTimelocked(Option<u8>),
}

impl std::fmt::Display for WeightCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightCall::Set => write!(f, "set_weights"),
            WeightCall::SetMechanism(m) => write!(f, "set_mechanism_weights (mechanism {m})"),
            WeightCall::Commit => write!(f, "commit_weights + reveal_weights"),
            WeightCall::CommitTimelocked(Some(m)) => write!(
                f,
                "commit_timelocked_mechanism_weights (mechanism {m}, drand timelock)"
            ),
            WeightCall::CommitTimelocked(None) => {
                write!(f, "commit_timelocked_weights (drand timelock)")
            }
        }
    }
}

/// The call for a submission on a runtime offering `calls`, with the subnet's commit-reveal
/// setting, for mechanism `mecid` (`chain.mechanism`; 0 is the subnet's main mechanism).
pub fn choose_weight_call(
    calls: &WeightCalls,
    commit_reveal: bool,
    mecid: u8,
) -> Result<WeightCall, ChainError> {
    if commit_reveal {
        // A runtime with timelocked commits expects them (its commit-reveal version is 4): the
        // newest call it has wins, the hash pair is for runtimes before them.
        if calls.commit_timelocked_mechanism_weights {
            return Ok(WeightCall::CommitTimelocked(Some(mecid)));
        }
        if mecid == 0 && calls.commit_timelocked_weights {
            return Ok(WeightCall::CommitTimelocked(None));
        }
        if mecid == 0 && calls.commit_weights && calls.reveal_weights {
            return Ok(WeightCall::Commit);
        }
        return Err(ChainError::MissingCall(
            "commit-reveal call for mechanism > 0 on a runtime without \
             commit_timelocked_mechanism_weights; set chain.mechanism = 0"
                .into(),
        ));
    }
    if mecid == 0 && calls.set_weights {
        return Ok(WeightCall::Set);
    }
    if calls.set_mechanism_weights {
        return Ok(WeightCall::SetMechanism(mecid));
    }
    Err(ChainError::MissingCall(if mecid == 0 {
        "SubtensorModule.set_weights or set_mechanism_weights".into()
    } else {
        format!(
            "mechanism-aware weight call (set_mechanism_weights) for chain.mechanism = {mecid}; \
             this runtime has one mechanism per subnet: set chain.mechanism = 0"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec 218: what `tests/tests/subtensor.rs` reads from the real runtime's metadata.
    fn spec_218() -> WeightCalls {
        WeightCalls::from_names(|c| {
            ["set_weights", "commit_weights", "reveal_weights"].contains(&c)
        })
    }

    /// A hand-made runtime with mechanisms and commit-reveal v4 (as the live chain in the 400s).
    fn mechanisms_and_timelock() -> WeightCalls {
        WeightCalls::from_names(|c| {
            [
                "set_weights",
                "set_mechanism_weights",
                "commit_mechanism_weights",
                "commit_timelocked_weights",
                "commit_timelocked_mechanism_weights",
            ]
            .contains(&c)
        })
    }

    #[test]
    fn spec_218_sets_or_commits_on_mechanism_zero_only() {
        let c = spec_218();
        assert_eq!(
            c.names(),
            vec!["set_weights", "commit_weights", "reveal_weights"]
        );
        assert_eq!(choose_weight_call(&c, false, 0).ok(), Some(WeightCall::Set));
        assert_eq!(
            choose_weight_call(&c, true, 0).ok(),
            Some(WeightCall::Commit)
        );
        let err = choose_weight_call(&c, false, 1).expect_err("no mechanisms");
        assert!(err.to_string().contains("set chain.mechanism = 0"), "{err}");
    }

    #[test]
    fn a_runtime_with_mechanisms_uses_them_and_refuses_what_it_cannot_do() {
        let c = mechanisms_and_timelock();
        assert_eq!(choose_weight_call(&c, false, 0).ok(), Some(WeightCall::Set));
        assert_eq!(
            choose_weight_call(&c, false, 2).ok(),
            Some(WeightCall::SetMechanism(2))
        );
        // Without plain set_weights, mechanism 0 goes through the mechanism-aware call.
        let no_plain = WeightCalls {
            set_weights: false,
            ..c
        };
        assert_eq!(
            choose_weight_call(&no_plain, false, 0).ok(),
            Some(WeightCall::SetMechanism(0))
        );
        // Commit-reveal v4: timelocked commits, per mechanism where the runtime has them.
        assert_eq!(
            choose_weight_call(&c, true, 0).ok(),
            Some(WeightCall::CommitTimelocked(Some(0)))
        );
        assert_eq!(
            choose_weight_call(&c, true, 3).ok(),
            Some(WeightCall::CommitTimelocked(Some(3)))
        );
        // A runtime with timelocked commits but no mechanisms: mechanism 0 only.
        let no_mech = WeightCalls {
            commit_timelocked_mechanism_weights: false,
            ..c
        };
        assert_eq!(
            choose_weight_call(&no_mech, true, 0).ok(),
            Some(WeightCall::CommitTimelocked(None))
        );
        let err = choose_weight_call(&no_mech, true, 1).expect_err("no mechanism commits");
        assert!(err.to_string().contains("set chain.mechanism = 0"), "{err}");
        // Timelocked commits win over the hash pair when a runtime has both.
        let both = WeightCalls {
            commit_weights: true,
            reveal_weights: true,
            ..c
        };
        assert_eq!(
            choose_weight_call(&both, true, 0).ok(),
            Some(WeightCall::CommitTimelocked(Some(0)))
        );
        assert!(choose_weight_call(&WeightCalls::default(), false, 0).is_err());
        assert!(choose_weight_call(&WeightCalls::default(), true, 0).is_err());
    }
}
