//! The embedded local chain: a real, single-authority chain kept in RocksDB.
//!
//! It is what `apiary devnet` and the swarm tests run on, and a backend in its own right, not a
//! mock: it holds subnets, registrations, stake, validator permits, commitments and weights in
//! the `local_state` column; every state change is a **signed extrinsic** (sr25519 over the
//! encoded call and the signer's nonce) that is verified, applied, and included in the next
//! block, whose hash chains to its parent. Blocks come from a timer ([`LocalChain::spawn_producer`])
//! or from a test calling [`LocalChain::produce_block`]; several nodes in one process share one
//! `Arc<LocalChain>`. Reopening the database resumes at the stored head with all state.
//!
//! Runtime rules mirror subtensor's: registration is idempotent per hotkey, a full subnet refuses
//! new uids, only the `max_validators` hotkeys with the most stake hold a validator permit, weights
//! are rate-limited per uid by `weights_rate_limit` blocks since its last update, commitments are
//! limited in size.

use crate::keys::{Hotkey, HotkeyId};
use crate::{BlockInfo, ChainClient, ChainError, Metagraph, Neuron, PeerRecord, Result, TxReceipt};
use apiary_storage::{u64_key, Column, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

/// Per-subnet rules of the embedded chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetParams {
    /// Most uids the subnet holds.
    pub max_uids: u16,
    /// How many top-stake hotkeys get a validator permit.
    pub max_validators: u16,
    /// Blocks a uid waits between weight submissions.
    pub weights_rate_limit: u64,
    /// Largest commitment in bytes.
    pub max_commitment_bytes: usize,
}

impl Default for SubnetParams {
    fn default() -> Self {
        Self {
            max_uids: 256,
            max_validators: 64,
            weights_rate_limit: 0,
            max_commitment_bytes: 3100,
        }
    }
}

/// A state transition, signed by a hotkey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Call {
    /// Register the signer on a subnet.
    Register {
        /// Subnet.
        netuid: u16,
    },
    /// Set the signer's commitment.
    SetCommitment {
        /// Subnet.
        netuid: u16,
        /// Raw bytes.
        data: Vec<u8>,
    },
    /// Set the signer's weights.
    SetWeights {
        /// Subnet.
        netuid: u16,
        /// Destination uids.
        uids: Vec<u16>,
        /// u16 weights.
        weights: Vec<u16>,
        /// Version key.
        version_key: u64,
    },
}

/// A signed call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extrinsic {
    /// Who signs.
    pub signer: HotkeyId,
    /// The signer's next nonce.
    pub nonce: u64,
    /// What to do.
    pub call: Call,
    /// sr25519 over [`Extrinsic::signing_payload`].
    pub signature: Vec<u8>,
}

impl Extrinsic {
    /// Bytes that are signed: a domain tag, the nonce and the JSON-encoded call.
    pub fn signing_payload(nonce: u64, call: &Call) -> Vec<u8> {
        let mut v = b"apiary-local-chain-v1".to_vec();
        v.extend_from_slice(&nonce.to_le_bytes());
        v.extend_from_slice(&serde_json::to_vec(call).unwrap_or_default());
        v
    }
    /// Signs a call.
    pub fn sign(hotkey: &Hotkey, nonce: u64, call: Call) -> Self {
        let sig = hotkey.sign(&Self::signing_payload(nonce, &call));
        Extrinsic {
            signer: hotkey.id(),
            nonce,
            call,
            signature: sig.to_vec(),
        }
    }
    /// blake3 of the signed payload and signature.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&Self::signing_payload(self.nonce, &self.call));
        h.update(&self.signature);
        *h.finalize().as_bytes()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NeuronState {
    uid: u16,
    hotkey: HotkeyId,
    stake: u64,
    commitment: Option<Vec<u8>>,
    /// Block the commitment was set at.
    #[serde(default)]
    commitment_block: Option<u64>,
    last_update: u64,
    registered_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Subnet {
    netuid: u16,
    params: SubnetParams,
    neurons: Vec<NeuronState>,
    weights: BTreeMap<u16, Vec<(u16, u16)>>,
}

impl Subnet {
    fn permits(&self) -> Vec<u16> {
        let mut staked: Vec<&NeuronState> = self.neurons.iter().filter(|n| n.stake > 0).collect();
        staked.sort_by(|a, b| b.stake.cmp(&a.stake).then(a.uid.cmp(&b.uid)));
        staked
            .iter()
            .take(self.params.max_validators as usize)
            .map(|n| n.uid)
            .collect()
    }
}

/// A block as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredBlock {
    info: BlockInfo,
    parent: [u8; 32],
    extrinsics: Vec<[u8; 32]>,
}

struct State {
    head: BlockInfo,
    subnets: BTreeMap<u16, Subnet>,
    nonces: BTreeMap<HotkeyId, u64>,
    pending: Vec<[u8; 32]>,
}

/// The embedded chain. Share it as `Arc<LocalChain>`.
pub struct LocalChain {
    store: Store,
    state: Mutex<State>,
    blocks_tx: broadcast::Sender<BlockInfo>,
}

impl std::fmt::Debug for LocalChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalChain({})", self.store.path().display())
    }
}

const HEAD_KEY: &[u8] = b"head";
const NONCES_KEY: &[u8] = b"nonces";

fn subnet_key(netuid: u16) -> Vec<u8> {
    let mut k = b"subnet/".to_vec();
    k.extend_from_slice(&netuid.to_be_bytes());
    k
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LocalChain {
    /// Opens (or creates, with a genesis block) the chain stored at `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let store = Store::open(path)?;
        let head = match store.get::<BlockInfo>(Column::LocalState, HEAD_KEY)? {
            Some(h) => h,
            None => {
                let genesis = BlockInfo {
                    number: 0,
                    hash: *blake3::hash(b"apiary local chain genesis").as_bytes(),
                    timestamp_ms: now_ms(),
                };
                store.put(
                    Column::LocalBlocks,
                    &u64_key(0),
                    &StoredBlock {
                        info: genesis,
                        parent: [0; 32],
                        extrinsics: vec![],
                    },
                )?;
                store.put(Column::LocalState, HEAD_KEY, &genesis)?;
                genesis
            }
        };
        let mut subnets = BTreeMap::new();
        for key in store.keys(Column::LocalState)? {
            if key.starts_with(b"subnet/") {
                if let Some(subnet) = store.get::<Subnet>(Column::LocalState, &key)? {
                    subnets.insert(subnet.netuid, subnet);
                }
            }
        }
        let nonces = store
            .get::<Vec<(HotkeyId, u64)>>(Column::LocalState, NONCES_KEY)?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let (blocks_tx, _) = broadcast::channel(1024);
        Ok(Arc::new(LocalChain {
            store,
            state: Mutex::new(State {
                head,
                subnets,
                nonces,
                pending: Vec::new(),
            }),
            blocks_tx,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every write is applied before
        // it is persisted), so a poisoned lock is recovered rather than propagated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a subnet (no-op if it exists).
    pub fn create_subnet(&self, netuid: u16, params: SubnetParams) -> Result<()> {
        let mut st = self.lock();
        if st.subnets.contains_key(&netuid) {
            return Ok(());
        }
        let subnet = Subnet {
            netuid,
            params,
            neurons: Vec::new(),
            weights: BTreeMap::new(),
        };
        self.store
            .put(Column::LocalState, &subnet_key(netuid), &subnet)?;
        st.subnets.insert(netuid, subnet);
        Ok(())
    }

    /// Changes a subnet's rules (sudo).
    pub fn set_subnet_params(&self, netuid: u16, params: SubnetParams) -> Result<()> {
        let mut st = self.lock();
        let subnet = st
            .subnets
            .get_mut(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        subnet.params = params;
        let snapshot = subnet.clone();
        self.store
            .put(Column::LocalState, &subnet_key(netuid), &snapshot)?;
        Ok(())
    }

    /// Dev faucet: adds stake to a registered hotkey.
    pub fn add_stake(&self, netuid: u16, hotkey: &HotkeyId, amount: u64) -> Result<()> {
        let mut st = self.lock();
        let subnet = st
            .subnets
            .get_mut(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        let n = subnet
            .neurons
            .iter_mut()
            .find(|n| &n.hotkey == hotkey)
            .ok_or(ChainError::NotRegistered(*hotkey, netuid))?;
        n.stake = n.stake.saturating_add(amount);
        let snapshot = subnet.clone();
        self.store
            .put(Column::LocalState, &subnet_key(netuid), &snapshot)?;
        Ok(())
    }

    /// The current head.
    pub fn head(&self) -> BlockInfo {
        self.lock().head
    }

    /// Produces the next block, including the extrinsics applied since the last one.
    pub fn produce_block(&self) -> Result<BlockInfo> {
        let info = {
            let mut st = self.lock();
            let parent = st.head;
            let extrinsics = std::mem::take(&mut st.pending);
            let timestamp_ms = now_ms().max(parent.timestamp_ms);
            let mut h = blake3::Hasher::new();
            h.update(&parent.hash);
            h.update(&(parent.number + 1).to_le_bytes());
            h.update(&timestamp_ms.to_le_bytes());
            for x in &extrinsics {
                h.update(x);
            }
            let info = BlockInfo {
                number: parent.number + 1,
                hash: *h.finalize().as_bytes(),
                timestamp_ms,
            };
            self.store.put(
                Column::LocalBlocks,
                &u64_key(info.number),
                &StoredBlock {
                    info,
                    parent: parent.hash,
                    extrinsics,
                },
            )?;
            self.store.put(Column::LocalState, HEAD_KEY, &info)?;
            st.head = info;
            info
        };
        // No receivers is fine (nobody listening yet).
        let _ = self.blocks_tx.send(info);
        Ok(info)
    }

    /// Produces a block every `interval` until the returned handle is aborted.
    pub fn spawn_producer(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let chain = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = chain.produce_block() {
                    tracing::error!(error = %e, "local chain failed to produce a block");
                }
            }
        })
    }

    /// The next nonce of a signer.
    pub fn nonce(&self, who: &HotkeyId) -> u64 {
        self.lock().nonces.get(who).copied().unwrap_or(0)
    }

    /// Verifies and applies a signed extrinsic; it is included in the next block.
    pub fn submit(&self, ext: Extrinsic) -> Result<TxReceipt> {
        let sig: [u8; 64] = ext
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ChainError::BadTransaction("signature must be 64 bytes".into()))?;
        ext.signer
            .verify(&Extrinsic::signing_payload(ext.nonce, &ext.call), &sig)
            .map_err(|_| ChainError::BadTransaction("bad signature".into()))?;
        let mut st = self.lock();
        let expected = st.nonces.get(&ext.signer).copied().unwrap_or(0);
        if ext.nonce != expected {
            return Err(ChainError::BadTransaction(format!(
                "stale nonce {} (expected {expected})",
                ext.nonce
            )));
        }
        let block = st.head.number + 1;
        let netuid = match &ext.call {
            Call::Register { netuid }
            | Call::SetCommitment { netuid, .. }
            | Call::SetWeights { netuid, .. } => *netuid,
        };
        let subnet = st
            .subnets
            .get_mut(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        apply(subnet, &ext.signer, &ext.call, block)?;
        let snapshot = subnet.clone();
        st.nonces.insert(ext.signer, expected + 1);
        let tx = ext.hash();
        st.pending.push(tx);
        let nonces: Vec<(HotkeyId, u64)> = st.nonces.iter().map(|(k, v)| (*k, *v)).collect();
        self.store
            .put(Column::LocalState, &subnet_key(netuid), &snapshot)?;
        self.store.put(Column::LocalState, NONCES_KEY, &nonces)?;
        Ok(TxReceipt {
            block,
            tx_hash: hex::encode(tx),
        })
    }

    fn sign_and_submit(&self, hotkey: &Hotkey, call: Call) -> Result<TxReceipt> {
        let nonce = self.nonce(&hotkey.id());
        self.submit(Extrinsic::sign(hotkey, nonce, call))
    }

    fn read_metagraph(&self, netuid: u16) -> Result<Metagraph> {
        let st = self.lock();
        let subnet = st
            .subnets
            .get(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        let permits = subnet.permits();
        Ok(Metagraph {
            netuid,
            block: st.head.number,
            neurons: subnet
                .neurons
                .iter()
                .map(|n| Neuron {
                    uid: n.uid,
                    hotkey: n.hotkey,
                    stake: n.stake,
                    validator_permit: permits.contains(&n.uid),
                    peer: n.commitment.as_deref().and_then(PeerRecord::decode),
                    commit_block: n.commitment.as_ref().and(n.commitment_block),
                    last_update: n.last_update,
                    registered_at: n.registered_at,
                })
                .collect(),
        })
    }
}

fn apply(subnet: &mut Subnet, signer: &HotkeyId, call: &Call, block: u64) -> Result<u16> {
    let netuid = subnet.netuid;
    match call {
        Call::Register { .. } => {
            if let Some(n) = subnet.neurons.iter().find(|n| &n.hotkey == signer) {
                return Ok(n.uid);
            }
            if subnet.neurons.len() >= subnet.params.max_uids as usize {
                return Err(ChainError::SubnetFull(netuid, subnet.params.max_uids));
            }
            let uid = subnet.neurons.len() as u16;
            subnet.neurons.push(NeuronState {
                uid,
                hotkey: *signer,
                stake: 0,
                commitment: None,
                commitment_block: None,
                last_update: block,
                registered_at: block,
            });
            Ok(uid)
        }
        Call::SetCommitment { data, .. } => {
            if data.len() > subnet.params.max_commitment_bytes {
                return Err(ChainError::CommitmentTooLarge(
                    data.len(),
                    subnet.params.max_commitment_bytes,
                ));
            }
            let n = subnet
                .neurons
                .iter_mut()
                .find(|n| &n.hotkey == signer)
                .ok_or(ChainError::NotRegistered(*signer, netuid))?;
            if n.commitment.as_ref() != Some(data) {
                n.commitment = Some(data.clone());
                n.commitment_block = Some(block);
            }
            Ok(n.uid)
        }
        Call::SetWeights { uids, weights, .. } => {
            let permits = subnet.permits();
            let limit = subnet.params.weights_rate_limit;
            let n_uids = subnet.neurons.len();
            let n = subnet
                .neurons
                .iter_mut()
                .find(|n| &n.hotkey == signer)
                .ok_or(ChainError::NotRegistered(*signer, netuid))?;
            if !permits.contains(&n.uid) {
                return Err(ChainError::NoValidatorPermit(*signer, netuid));
            }
            let since = block.saturating_sub(n.last_update);
            if limit > 0 && since < limit {
                return Err(ChainError::RateLimited {
                    blocks_left: limit - since,
                    limit,
                });
            }
            if uids.len() != weights.len() {
                return Err(ChainError::InvalidWeights(format!(
                    "{} uids but {} weights",
                    uids.len(),
                    weights.len()
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for u in uids {
                if *u as usize >= n_uids {
                    return Err(ChainError::InvalidWeights(format!(
                        "uid {u} does not exist"
                    )));
                }
                if !seen.insert(*u) {
                    return Err(ChainError::InvalidWeights(format!("uid {u} listed twice")));
                }
            }
            n.last_update = block;
            let uid = n.uid;
            subnet.weights.insert(
                uid,
                uids.iter().copied().zip(weights.iter().copied()).collect(),
            );
            Ok(uid)
        }
    }
}

#[async_trait::async_trait]
impl ChainClient for LocalChain {
    fn backend_name(&self) -> &'static str {
        "local"
    }

    async fn best_block(&self) -> Result<BlockInfo> {
        Ok(self.head())
    }

    fn subscribe_blocks(&self) -> broadcast::Receiver<BlockInfo> {
        self.blocks_tx.subscribe()
    }

    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>> {
        Ok(self
            .store
            .get::<StoredBlock>(Column::LocalBlocks, &u64_key(number))?
            .map(|b| b.info.hash))
    }

    async fn metagraph(&self, netuid: u16) -> Result<Metagraph> {
        self.read_metagraph(netuid)
    }

    async fn neuron_count(&self, netuid: u16) -> Result<u16> {
        let st = self.lock();
        let subnet = st
            .subnets
            .get(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        Ok(subnet.neurons.len() as u16)
    }

    async fn register(&self, netuid: u16, hotkey: &Hotkey) -> Result<u16> {
        if let Some(n) = self.read_metagraph(netuid)?.by_hotkey(&hotkey.id()) {
            return Ok(n.uid);
        }
        self.sign_and_submit(hotkey, Call::Register { netuid })?;
        self.read_metagraph(netuid)?
            .by_hotkey(&hotkey.id())
            .map(|n| n.uid)
            .ok_or(ChainError::NotRegistered(hotkey.id(), netuid))
    }

    async fn set_commitment(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        data: Vec<u8>,
    ) -> Result<TxReceipt> {
        self.sign_and_submit(hotkey, Call::SetCommitment { netuid, data })
    }

    async fn set_weights(
        &self,
        netuid: u16,
        hotkey: &Hotkey,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<TxReceipt> {
        self.sign_and_submit(
            hotkey,
            Call::SetWeights {
                netuid,
                uids: uids.to_vec(),
                weights: weights.to_vec(),
                version_key,
            },
        )
    }

    async fn weights(&self, netuid: u16, uid: u16) -> Result<Vec<(u16, u16)>> {
        let st = self.lock();
        let subnet = st
            .subnets
            .get(&netuid)
            .ok_or(ChainError::UnknownSubnet(netuid))?;
        Ok(subnet.weights.get(&uid).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registration_weights_and_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let v = Hotkey::from_dev_label("v");
        let m = Hotkey::from_dev_label("m");
        {
            let chain = LocalChain::open(dir.path()).expect("open");
            chain
                .create_subnet(1, SubnetParams::default())
                .expect("subnet");
            let mut blocks = chain.subscribe_blocks();
            assert_eq!(chain.register(1, &v).await.expect("reg"), 0);
            assert_eq!(chain.register(1, &m).await.expect("reg"), 1);
            assert_eq!(chain.register(1, &m).await.expect("idempotent"), 1);
            // No stake, no permit.
            let err = chain
                .set_weights(1, &v, &[1], &[65535], 0)
                .await
                .expect_err("no permit");
            assert!(matches!(err, ChainError::NoValidatorPermit(..)), "{err}");
            chain.add_stake(1, &v.id(), 1000).expect("stake");
            chain.produce_block().expect("block");
            let b1 = blocks.recv().await.expect("block");
            assert_eq!(b1.number, 1);
            assert_eq!(chain.block_hash(1).await.expect("hash"), Some(b1.hash));
            assert_eq!(
                chain.block_hash(2).await.expect("hash"),
                None,
                "not produced yet"
            );
            chain
                .set_weights(1, &v, &[1], &[65535], 0)
                .await
                .expect("weights");
            chain
                .set_subnet_params(
                    1,
                    SubnetParams {
                        weights_rate_limit: 5,
                        ..Default::default()
                    },
                )
                .expect("sudo");
            chain.produce_block().expect("block");
            let err = chain
                .set_weights(1, &v, &[1], &[1], 0)
                .await
                .expect_err("rate limit");
            assert!(
                matches!(err, ChainError::RateLimited { blocks_left: 4, .. }),
                "{err}"
            );
            let err = chain.set_weights(1, &v, &[9], &[1], 0).await;
            assert!(err.is_err());
            let rec = PeerRecord {
                peer_id: "12D3Koo".into(),
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                models: Vec::new(),
            };
            chain
                .set_commitment(1, &m, rec.encode())
                .await
                .expect("commit");
            // A validator without a peer record runs no apiary node: it cannot lead.
            let mg = chain.metagraph(1).await.expect("mg");
            assert!(
                mg.lead_validator().is_none(),
                "no lead without a peer record"
            );
            let vrec = PeerRecord {
                peer_id: "12D3KooV".into(),
                addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
                models: Vec::new(),
            };
            chain
                .set_commitment(1, &v, vrec.encode())
                .await
                .expect("commit");
            let big = vec![0u8; 4000];
            assert!(chain.set_commitment(1, &m, big).await.is_err());
            // A forged extrinsic (signed by m, claiming v) is rejected.
            let mut ext = Extrinsic::sign(&m, chain.nonce(&v.id()), Call::Register { netuid: 1 });
            ext.signer = v.id();
            assert!(matches!(
                chain.submit(ext),
                Err(ChainError::BadTransaction(_))
            ));
            chain.produce_block().expect("block");
        }
        let chain = LocalChain::open(dir.path()).expect("reopen");
        assert_eq!(chain.head().number, 3);
        let mg = chain.metagraph(1).await.expect("mg");
        assert_eq!(mg.neurons.len(), 2);
        assert!(mg.by_uid(0).expect("v").validator_permit);
        assert!(!mg.by_uid(1).expect("m").validator_permit);
        assert_eq!(
            mg.by_uid(1)
                .expect("m")
                .peer
                .as_ref()
                .expect("peer")
                .peer_id,
            "12D3Koo"
        );
        assert_eq!(mg.lead_validator().expect("lead").uid, 0);
        assert_eq!(chain.weights(1, 0).await.expect("w"), vec![(1, 65535)]);
    }
}
