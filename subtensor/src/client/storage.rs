//! Reading chain storage by name in the live metadata: one value ([`SubtensorChain::fetch`]),
//! a double map under its first key ([`SubtensorChain::iter_under`]), a hotkey's uid, all
//! weights of a subnet, and the metagraph assembled from raw storage (`Keys`, `Uids`,
//! `TotalHotkeyAlpha`, `ValidatorPermit`, `LastUpdate`, `BlockAtRegistration`,
//! `Commitments.CommitmentOf`).

use super::chain::SubtensorChain;
use super::rpc::At;
use crate::values;
use apiary_chain::keys::HotkeyId;
use apiary_chain::{ChainError, Metagraph, Neuron, PeerRecord, Result};
use std::collections::{BTreeMap, HashMap};
use subxt::ext::scale_value::Value;
use subxt::utils::AccountId32;

/// The account id of a hotkey, as storage keys and call arguments take it.
pub(crate) fn account(id: &HotkeyId) -> AccountId32 {
    AccountId32(id.0)
}

fn storage_err(pallet: &str, entry: &str, e: subxt::error::StorageError) -> ChainError {
    let s = e.to_string();
    if s.contains("fetch") || s.contains("iterate") || s.contains("RPC") {
        ChainError::Unavailable(format!("reading {pallet}.{entry}: {s}"))
    } else {
        ChainError::Runtime(format!("reading {pallet}.{entry}: {s}"))
    }
}

impl SubtensorChain {
    /// Fetches one storage value (`None` if absent and without a default).
    pub(crate) async fn fetch<K, V>(
        &self,
        at: &At,
        pallet: &str,
        entry: &str,
        keys: K,
    ) -> Result<Option<V>>
    where
        K: subxt::ext::frame_decode::storage::IntoEncodableValues
            + subxt::ext::frame_decode::storage::IntoDecodableValues,
        V: subxt::ext::scale_decode::DecodeAsType,
    {
        if !values::has_storage(at.metadata_ref(), pallet, entry) {
            return Err(ChainError::MissingCall(format!("storage {pallet}.{entry}")));
        }
        let addr = subxt::dynamic::storage::<K, V>(pallet, entry);
        let v = at
            .storage()
            .try_fetch(addr, keys)
            .await
            .map_err(|e| storage_err(pallet, entry, e))?;
        match v {
            None => Ok(None),
            Some(v) => v
                .decode()
                .map(Some)
                .map_err(|e| ChainError::Runtime(format!("cannot decode {pallet}.{entry}: {e}"))),
        }
    }

    /// Iterates a double map under its first key; returns `(second key, value)` pairs.
    pub(crate) async fn iter_under<K2, V>(
        &self,
        at: &At,
        pallet: &str,
        entry: &str,
        netuid: u16,
    ) -> Result<Vec<(K2, V)>>
    where
        K2: subxt::ext::scale_decode::DecodeAsType + subxt::ext::scale_encode::EncodeAsType + Send,
        V: subxt::ext::scale_decode::DecodeAsType,
    {
        if !values::has_storage(at.metadata_ref(), pallet, entry) {
            return Err(ChainError::MissingCall(format!("storage {pallet}.{entry}")));
        }
        let addr = subxt::dynamic::storage::<(u16, K2), V>(pallet, entry);
        let mut it = at
            .storage()
            .iter(addr, (netuid,))
            .await
            .map_err(|e| storage_err(pallet, entry, e))?;
        let mut out = Vec::new();
        while let Some(kv) = it.next().await {
            let kv = kv.map_err(|e| storage_err(pallet, entry, e))?;
            let key = kv
                .key()
                .map_err(|e| ChainError::Runtime(format!("{pallet}.{entry} key: {e}")))?;
            let Some(part) = key.part(1) else { continue };
            let Ok(Some(k2)) = part.decode_as::<K2>() else {
                continue;
            };
            let v = kv
                .value()
                .decode()
                .map_err(|e| ChainError::Runtime(format!("cannot decode {pallet}.{entry}: {e}")))?;
            out.push((k2, v));
        }
        Ok(out)
    }

    /// The uid of `who` on `netuid`, if registered.
    pub async fn uid_of(&self, at: &At, netuid: u16, who: &HotkeyId) -> Result<Option<u16>> {
        self.fetch::<_, u16>(at, "SubtensorModule", "Uids", (netuid, account(who)))
            .await
    }

    /// All weights on a subnet as `uid -> [(dest, weight)]` (raw storage `Weights`).
    pub async fn all_weights(&self, netuid: u16) -> Result<BTreeMap<u16, Vec<(u16, u16)>>> {
        let at = self.at_latest().await?;
        Ok(self
            .iter_under::<u16, Vec<(u16, u16)>>(&at, "SubtensorModule", "Weights", netuid)
            .await?
            .into_iter()
            .collect())
    }

    /// The metagraph of `netuid` at the latest block, from raw storage.
    pub(crate) async fn read_metagraph(&self, netuid: u16) -> Result<Metagraph> {
        let at = self.at_latest().await?;
        let exists: bool = self
            .fetch(&at, "SubtensorModule", "NetworksAdded", (netuid,))
            .await?
            .unwrap_or(false);
        if !exists {
            return Err(ChainError::UnknownSubnet(netuid));
        }
        let keys: Vec<(u16, AccountId32)> = self
            .iter_under(&at, "SubtensorModule", "Keys", netuid)
            .await?;
        let permits: Vec<bool> = self
            .fetch(&at, "SubtensorModule", "ValidatorPermit", (netuid,))
            .await?
            .unwrap_or_default();
        let last_update: Vec<u64> = self
            .fetch(&at, "SubtensorModule", "LastUpdate", (netuid,))
            .await?
            .unwrap_or_default();
        let registered: BTreeMap<u16, u64> = self
            .iter_under(&at, "SubtensorModule", "BlockAtRegistration", netuid)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let commitments: HashMap<[u8; 32], (Vec<u8>, Option<u64>)> =
            if values::has_storage(at.metadata_ref(), "Commitments", "CommitmentOf") {
                self.iter_under::<AccountId32, Value>(&at, "Commitments", "CommitmentOf", netuid)
                    .await?
                    .into_iter()
                    .filter_map(|(k, v)| {
                        values::commitment_bytes(&v)
                            .map(|b| (k.0, (b, values::commitment_block(&v))))
                    })
                    .collect()
            } else {
                HashMap::new()
            };
        let md = at.metadata_ref();
        let stake_entry = if values::has_storage(md, "SubtensorModule", "TotalHotkeyAlpha") {
            Some(("TotalHotkeyAlpha", true))
        } else if values::has_storage(md, "SubtensorModule", "TotalHotkeyStake") {
            Some(("TotalHotkeyStake", false))
        } else {
            None
        };
        let stakes = futures::future::join_all(keys.iter().map(|(_, acc)| {
            let at = &at;
            async move {
                match stake_entry {
                    Some((e, true)) => self
                        .fetch::<_, u64>(at, "SubtensorModule", e, (*acc, netuid))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0),
                    Some((e, false)) => self
                        .fetch::<_, u64>(at, "SubtensorModule", e, (*acc,))
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(0),
                    None => 0,
                }
            }
        }))
        .await;
        let mut neurons: Vec<Neuron> = keys
            .iter()
            .zip(stakes)
            .map(|((uid, acc), stake)| Neuron {
                uid: *uid,
                hotkey: HotkeyId(acc.0),
                stake,
                validator_permit: permits.get(*uid as usize).copied().unwrap_or(false),
                peer: commitments
                    .get(&acc.0)
                    .and_then(|(b, _)| PeerRecord::decode(b)),
                commit_block: commitments.get(&acc.0).and_then(|(_, blk)| *blk),
                last_update: last_update.get(*uid as usize).copied().unwrap_or(0),
                registered_at: registered.get(uid).copied().unwrap_or(0),
            })
            .collect();
        neurons.sort_by_key(|n| n.uid);
        Ok(Metagraph {
            netuid,
            block: at.block_number(),
            neurons,
        })
    }
}
