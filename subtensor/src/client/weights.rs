//! Setting weights: the subnet's rules checked locally before paying for a transaction
//! (registration, `WeightsSetRateLimit` against `LastUpdate` and our own last submission,
//! `ValidatorPermit`, `WeightsVersionKey`), plain `set_weights` or — when
//! `CommitRevealWeightsEnabled` — a commit: on runtimes with commit-reveal v4, the weights
//! timelock-encrypted to the drand round of their reveal ([`crate::timelock`]), which the chain
//! reveals itself; on older runtimes a commit of [`commit_hash`] whose reveal
//! ([`SubtensorChain::reveal_pending`]) follows on later calls.

use super::chain::SubtensorChain;
use super::ledger::PendingCommit;
use super::rpc::At;
use crate::timelock::{self, BeaconKey, EpochSchedule, TimelockedWeights};
use crate::values;
use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_chain::{ChainError, Result, TxReceipt};
use subxt::ext::scale_value::Value;

/// The commit hash pallet-subtensor checks on reveal:
/// `blake2_256(SCALE(hotkey, netuid, uids, values, salt, version_key))`.
pub fn commit_hash(
    hotkey: &HotkeyId,
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> [u8; 32] {
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Digest};
    use subxt::ext::codec::Encode;
    let enc = (
        hotkey.0,
        netuid,
        uids.to_vec(),
        values.to_vec(),
        salt.to_vec(),
        version_key,
    )
        .encode();
    let mut h = Blake2b::<U32>::new();
    h.update(&enc);
    h.finalize().into()
}

fn u16s(v: &[u16]) -> Value {
    Value::unnamed_composite(v.iter().map(|x| Value::u128((*x).into())))
}

impl SubtensorChain {
    /// Reveals this hotkey's pending commit-reveal commits whose reveal the chain accepts now;
    /// returns how many were revealed. Commits the chain says are too early stay pending.
    pub async fn reveal_pending(&self, hotkey: &Hotkey) -> Result<usize> {
        let pending = self.ledger.pending(&hotkey.id());
        let mut revealed = 0;
        let mut keep = Vec::new();
        for p in pending {
            let r = self
                .submit(
                    hotkey,
                    p.netuid,
                    "SubtensorModule",
                    "reveal_weights",
                    &[
                        ("netuid", Value::u128(p.netuid.into())),
                        ("uids", u16s(&p.uids)),
                        ("values", u16s(&p.values)),
                        ("salt", u16s(&p.salt)),
                        ("version_key", Value::u128(p.version_key.into())),
                    ],
                )
                .await;
            match r {
                Ok(_) => revealed += 1,
                Err(ChainError::Runtime(m)) if m.contains("RevealTooEarly") => keep.push(p),
                Err(ChainError::Runtime(m))
                    if m.contains("Expired") || m.contains("NoWeightsCommitFound") =>
                {
                    tracing::warn!(reason = %m, "dropping a weights commit the chain will not reveal");
                }
                Err(e) => {
                    keep.push(p);
                    self.ledger.set_pending(hotkey.id(), keep);
                    return Err(e);
                }
            }
        }
        self.ledger.set_pending(hotkey.id(), keep);
        Ok(revealed)
    }

    /// Reads the subnet's weight rules for `hotkey` and refuses locally what the runtime would.
    /// Returns the hotkey's uid, the chain's version key and whether commit-reveal is on.
    async fn check_weights(
        &self,
        at: &At,
        netuid: u16,
        hotkey: &HotkeyId,
        uids: &[u16],
    ) -> Result<(u16, u64, bool)> {
        let uid = self
            .uid_of(at, netuid, hotkey)
            .await?
            .ok_or(ChainError::NotRegistered(*hotkey, netuid))?;
        let limit: u64 = self
            .fetch(at, "SubtensorModule", "WeightsSetRateLimit", (netuid,))
            .await?
            .unwrap_or(0);
        let last_updates: Vec<u64> = self
            .fetch(at, "SubtensorModule", "LastUpdate", (netuid,))
            .await?
            .unwrap_or_default();
        let on_chain = last_updates.get(uid as usize).copied().unwrap_or(0);
        let ours = self.ledger.last_weights(netuid, hotkey);
        let last = on_chain.max(ours);
        // The extrinsic lands in the next block; the runtime allows it once
        // `block - last >= limit`.
        let next = at.block_number() + 1;
        if limit > 0 && last > 0 {
            let since = next.saturating_sub(last);
            if since < limit {
                return Err(ChainError::RateLimited {
                    blocks_left: limit - since,
                    limit,
                });
            }
        }
        let permits: Vec<bool> = self
            .fetch(at, "SubtensorModule", "ValidatorPermit", (netuid,))
            .await?
            .unwrap_or_default();
        let self_only = uids.iter().all(|u| *u == uid);
        if !self_only && !permits.get(uid as usize).copied().unwrap_or(false) {
            return Err(ChainError::NoValidatorPermit(*hotkey, netuid));
        }
        let chain_key: u64 = self
            .fetch(at, "SubtensorModule", "WeightsVersionKey", (netuid,))
            .await?
            .unwrap_or(0);
        let cr: bool = if values::has_storage(
            at.metadata_ref(),
            "SubtensorModule",
            "CommitRevealWeightsEnabled",
        ) {
            self.fetch(
                at,
                "SubtensorModule",
                "CommitRevealWeightsEnabled",
                (netuid,),
            )
            .await?
            .unwrap_or(false)
        } else {
            false
        };
        Ok((uid, chain_key, cr))
    }

    /// Sets `hotkey`'s weights on `netuid` (the body of [`apiary_chain::ChainClient::set_weights`]):
    /// reveals due commits first, checks the subnet's rules, then submits the call the runtime's
    /// metadata offers for the subnet's setting and `chain.mechanism` ([`super::calls`]):
    /// `set_weights`, `set_mechanism_weights`, or, with commit-reveal on, `commit_weights`,
    /// remembering the commit for its reveal.
    pub(crate) async fn submit_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        if uids.len() != weights.len() {
            return Err(ChainError::InvalidWeights(format!(
                "{} uids but {} weights",
                uids.len(),
                weights.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if !uids.iter().all(|u| seen.insert(*u)) {
            return Err(ChainError::InvalidWeights("duplicate uids".into()));
        }
        if self.ledger.pending_count(&hotkey.id()) > 0 {
            if let Err(e) = self.reveal_pending(hotkey).await {
                tracing::warn!(error = %e, "revealing pending weight commits failed");
            }
        }
        let at = self.at_latest().await?;
        let (_uid, chain_key, commit_reveal) =
            self.check_weights(&at, netuid, &hotkey.id(), uids).await?;
        let version_key = version_key.max(chain_key);
        let call = super::calls::choose_weight_call(
            &super::calls::WeightCalls::from_metadata(at.metadata_ref()),
            commit_reveal,
            self.connection.opts.mechanism,
        )?;
        drop(at);
        let receipt = if let super::calls::WeightCall::SetMechanism(mecid) = call {
            self.submit(
                hotkey,
                netuid,
                "SubtensorModule",
                "set_mechanism_weights",
                &[
                    ("netuid", Value::u128(netuid.into())),
                    ("mecid", Value::u128(mecid.into())),
                    ("dests", u16s(uids)),
                    ("weights", u16s(weights)),
                    ("version_key", Value::u128(version_key.into())),
                ],
            )
            .await?
        } else if let super::calls::WeightCall::CommitTimelocked(mecid) = call {
            self.commit_timelocked(netuid, mecid, hotkey, uids, weights, version_key)
                .await?
        } else if call == super::calls::WeightCall::Commit {
            let salt: Vec<u16> = (0..8).map(|_| rand::random::<u16>()).collect();
            let hash = commit_hash(&hotkey.id(), netuid, uids, weights, &salt, version_key);
            let r = self
                .submit(
                    hotkey,
                    netuid,
                    "SubtensorModule",
                    "commit_weights",
                    &[
                        ("netuid", Value::u128(netuid.into())),
                        ("commit_hash", Value::from_bytes(hash)),
                    ],
                )
                .await?;
            self.ledger.push_pending(
                hotkey.id(),
                PendingCommit {
                    netuid,
                    uids: uids.to_vec(),
                    values: weights.to_vec(),
                    salt,
                    version_key,
                },
            );
            r
        } else {
            self.submit(
                hotkey,
                netuid,
                "SubtensorModule",
                "set_weights",
                &[
                    ("netuid", Value::u128(netuid.into())),
                    ("dests", u16s(uids)),
                    ("weights", u16s(weights)),
                    ("version_key", Value::u128(version_key.into())),
                ],
            )
            .await?
        };
        self.ledger
            .set_last_weights(netuid, hotkey.id(), receipt.block);
        Ok(receipt)
    }
}

impl SubtensorChain {
    /// A `SubtensorModule` value for `netuid`, or `default` where the runtime lacks the entry
    /// (older runtimes) or holds none.
    async fn subnet_value_or<V>(&self, at: &At, entry: &str, netuid: u16, default: V) -> Result<V>
    where
        V: subxt::ext::scale_decode::DecodeAsType,
    {
        if !values::has_storage(at.metadata_ref(), "SubtensorModule", entry) {
            return Ok(default);
        }
        Ok(self
            .fetch(at, "SubtensorModule", entry, (netuid,))
            .await?
            .unwrap_or(default))
    }

    /// The subnet's epoch schedule at `at` ([`EpochSchedule`]). Runtimes without the stateful
    /// schedule (`LastEpochBlock`) run an epoch every `tempo + 1` blocks where
    /// `(block + netuid + 1) % (tempo + 1) == 0`; that is described as the last such block and
    /// a period of `tempo + 1`.
    pub async fn epoch_schedule(&self, at: &At, netuid: u16) -> Result<EpochSchedule> {
        let current = at.block_number();
        let tempo: u16 = self.subnet_value_or(at, "Tempo", netuid, 0).await?;
        let since: u64 = self
            .subnet_value_or(at, "BlocksSinceLastStep", netuid, 0)
            .await?;
        if values::has_storage(at.metadata_ref(), "SubtensorModule", "LastEpochBlock") {
            return Ok(EpochSchedule {
                last_epoch_block: self
                    .subnet_value_or(at, "LastEpochBlock", netuid, 0)
                    .await?,
                pending_epoch_at: self
                    .subnet_value_or(at, "PendingEpochAt", netuid, 0)
                    .await?,
                epoch_index: self
                    .subnet_value_or(at, "SubnetEpochIndex", netuid, 0)
                    .await?,
                tempo,
                blocks_since_last_step: since,
                current_block: current,
            });
        }
        Ok(EpochSchedule::modular(netuid, tempo, current, since))
    }

    /// Commit-reveal v4: seals the weights to the drand round of their reveal and submits
    /// `commit_timelocked_mechanism_weights` (or `commit_timelocked_weights` without a
    /// mechanism id). The chain reveals them itself; nothing is left to reveal here.
    async fn commit_timelocked(
        &self,
        netuid: u16,
        mecid: Option<u8>,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        let at = self.at_latest().await?;
        let schedule = self.epoch_schedule(&at, netuid).await?;
        let period: u64 = self
            .subnet_value_or(&at, "RevealPeriodEpochs", netuid, 1)
            .await?;
        let version: u16 = if values::has_storage(
            at.metadata_ref(),
            "SubtensorModule",
            "CommitRevealWeightsVersion",
        ) {
            self.fetch(&at, "SubtensorModule", "CommitRevealWeightsVersion", ())
                .await?
                .unwrap_or(timelock::COMMIT_REVEAL_VERSION)
        } else {
            timelock::COMMIT_REVEAL_VERSION
        };
        drop(at);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| ChainError::Runtime(format!("the system clock is before 1970: {e}")))?
            .as_secs_f64();
        let block_secs = self.connection.opts.block_time.as_secs_f64();
        let tl = |e: timelock::TimelockError| ChainError::InvalidWeights(e.to_string());
        let (round, reveal_block) =
            timelock::reveal_round(&schedule, period, block_secs, now).map_err(tl)?;
        let payload = TimelockedWeights {
            hotkey: hotkey.id().0.to_vec(),
            uids: uids.to_vec(),
            values: weights.to_vec(),
            version_key,
        };
        let commit = payload.seal(&BeaconKey::quicknet(), round).map_err(tl)?;
        tracing::info!(
            netuid,
            mecid = ?mecid,
            reveal_round = round,
            reveal_block,
            bytes = commit.len(),
            "committing timelocked weights"
        );
        let mut args = vec![("netuid", Value::u128(netuid.into()))];
        if let Some(m) = mecid {
            args.push(("mecid", Value::u128(m.into())));
        }
        args.push(("commit", Value::from_bytes(commit)));
        args.push(("reveal_round", Value::u128(round.into())));
        args.push(("commit_reveal_version", Value::u128(version.into())));
        let call = if mecid.is_some() {
            "commit_timelocked_mechanism_weights"
        } else {
            "commit_timelocked_weights"
        };
        self.submit(hotkey, netuid, "SubtensorModule", call, &args)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_hash_is_scale_of_the_tuple() {
        let h = commit_hash(&HotkeyId([1; 32]), 1, &[0, 1], &[10, 10], &[1, 2], 0);
        assert_ne!(h, [0u8; 32]);
        assert_ne!(
            h,
            commit_hash(&HotkeyId([1; 32]), 1, &[0, 1], &[10, 10], &[1, 3], 0)
        );
    }
}
