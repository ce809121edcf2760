//! `impl ChainClient for SubtensorChain`: apiary's chain interface on top of the connection,
//! the storage reads and the extrinsics of the sibling modules.

use super::chain::SubtensorChain;
use super::extrinsics::fit_commitment;
use super::rpc::{from_rpc, head, params, parse_hash, unavailable};
use crate::values;
use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_chain::{BlockInfo, ChainClient, ChainError, Metagraph, Result, TxReceipt};
use subxt::ext::scale_value::Value;
use tokio::sync::broadcast;

#[async_trait::async_trait]
impl ChainClient for SubtensorChain {
    fn backend_name(&self) -> &'static str {
        "subtensor"
    }

    async fn best_block(&self) -> Result<BlockInfo> {
        let url = self.connection.opts.url.clone();
        self.connection
            .with_conn("reading the best block", |c| async move {
                head(&c.rpc).await.map_err(|e| unavailable(&url, e))
            })
            .await
    }

    fn connection_health(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.health()).ok()
    }

    fn subscribe_blocks(&self) -> broadcast::Receiver<BlockInfo> {
        self.connection.subscribe()
    }

    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>> {
        let url = self.connection.opts.url.clone();
        self.connection
            .with_conn("reading a block hash", |c| async move {
                let hash: serde_json::Value = c
                    .rpc
                    .request("chain_getBlockHash", params(vec![number.into()]))
                    .await
                    .map_err(|e| from_rpc(&url, e))?;
                // `null` for a block the chain does not have yet.
                Ok((!hash.is_null()).then(|| parse_hash(&hash)))
            })
            .await
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph> {
        self.read_metagraph(netuid).await
    }

    async fn register(&self, netuid: u16, hotkey: &Hotkey) -> Result<u16> {
        let at = self.at_latest().await?;
        if let Some(uid) = self.uid_of(&at, netuid, &hotkey.id()).await? {
            return Ok(uid);
        }
        let exists: bool = self
            .fetch(&at, "SubtensorModule", "NetworksAdded", (netuid,))
            .await?
            .unwrap_or(false);
        if !exists {
            return Err(ChainError::UnknownSubnet(netuid));
        }
        drop(at);
        // Burned registration paid by the hotkey itself (it is its own coldkey here); an
        // operator with a separate coldkey registers with `apiary chain register`.
        self.submit(
            hotkey,
            netuid,
            "SubtensorModule",
            "burned_register",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("hotkey", Value::from_bytes(hotkey.id().0)),
            ],
        )
        .await?;
        let at = self.at_latest().await?;
        self.uid_of(&at, netuid, &hotkey.id())
            .await?
            .ok_or(ChainError::NotRegistered(hotkey.id(), netuid))
    }

    async fn set_commitment(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        data: Vec<u8>,
    ) -> Result<TxReceipt> {
        let data = fit_commitment(data)?;
        self.submit(
            hotkey,
            netuid,
            "Commitments",
            "set_commitment",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("info", values::commitment_info(&data, 128)),
            ],
        )
        .await
    }

    async fn set_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        self.submit_weights(netuid, hotkey, uids, weights, version_key)
            .await
    }

    async fn reveal_pending(&self, hotkey: &Hotkey) -> Result<usize> {
        SubtensorChain::reveal_pending(self, hotkey).await
    }

    async fn neuron_count(&self, netuid: u16) -> Result<u16> {
        let at = self.at_latest().await?;
        Ok(self
            .fetch(&at, "SubtensorModule", "SubnetworkN", (netuid,))
            .await?
            .unwrap_or(0))
    }

    fn pending_reveals(&self, hotkey: &HotkeyId) -> usize {
        self.ledger.pending_count(hotkey)
    }

    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>> {
        let at = self.at_latest().await?;
        Ok(self
            .fetch(&at, "SubtensorModule", "Weights", (netuid, uid))
            .await?
            .unwrap_or_default())
    }
}
