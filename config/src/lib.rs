//! # apiary-config
//!
//! Everything a node needs to know before it starts, in one validated [`NodeConfig`].
//!
//! Load order: built-in defaults → TOML file (`apiary --config FILE`) → CLI flags (applied by the
//! daemon). Every section is `#[serde(default)]` so a file only names what it changes, and
//! `deny_unknown_fields` so a typo is an error rather than a silently ignored setting.
//! [`NodeConfig::validate`] checks cross-field rules and returns a [`ConfigError`] whose message
//! names the offending key and what to do about it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration problem. The message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path passed to --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said (includes line and column).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config value `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `model.n_heads`.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// What a node does in the subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trains on its assigned pages and publishes updates.
    #[default]
    Miner,
    /// Scores miners' updates, publishes the window record and sets weights.
    Validator,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Miner => f.write_str("miner"),
            Role::Validator => f.write_str("validator"),
        }
    }
}

/// Which chain backend the chain watcher talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChainBackend {
    /// The embedded local chain (state in RocksDB, blocks on a timer).
    #[default]
    Local,
    /// A subtensor (Bittensor) node at `chain.endpoint`, signing with the btcli wallet hotkey
    /// `chain.wallet` / `chain.hotkey`.
    Subtensor,
}

/// Which subxt RPC backend talks to a subtensor endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChainRpc {
    /// subxt's default backend: real nodes.
    #[default]
    Default,
    /// The legacy RPC methods: chopsticks (whose new-head subscriptions the default backend
    /// does not see).
    Legacy,
}

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and role.
    pub node: NodeSection,
    /// Chain backend and timing.
    pub chain: ChainConfig,
    /// libp2p networking.
    pub net: NetConfig,
    /// Model architecture.
    pub model: ModelConfig,
    /// Training data and update rule.
    pub train: TrainConfig,
    /// Validator scoring and weights.
    pub validator: ValidatorConfig,
    /// How updates are compressed on the wire.
    pub compression: CompressionConfig,
    /// Which model checkpoints are kept.
    pub checkpoint: CheckpointConfig,
    /// Supervision of the node's actors.
    pub supervisor: SupervisorConfig,
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Human-readable name used in logs.
    pub name: String,
    /// Miner or validator.
    pub role: Role,
    /// Where the node keeps its store, keys and admin socket.
    pub data_dir: PathBuf,
    /// Hex 32-byte seed for the sr25519 hotkey. If unset, a key is generated on first start
    /// and kept in `<data_dir>/hotkey` (mode 0600).
    pub hotkey_seed: Option<String>,
    /// Admin socket path; defaults to `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "apiary".into(),
            role: Role::Miner,
            data_dir: PathBuf::from("./apiary-data"),
            hotkey_seed: None,
            admin_socket: None,
        }
    }
}

/// `[chain]`: the chain clock and subnet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChainConfig {
    /// Backend; `local` is the embedded chain.
    pub backend: ChainBackend,
    /// Subnet id.
    pub netuid: u16,
    /// Blocks per training window (`window = block / blocks_per_window`).
    pub blocks_per_window: u64,
    /// Embedded chain: milliseconds between blocks.
    pub block_time_ms: u64,
    /// Embedded chain: directory of its RocksDB (defaults to `<data_dir>/chain`).
    pub local_path: Option<PathBuf>,
    /// Refresh the metagraph every this many blocks.
    pub metagraph_refresh_blocks: u64,
    /// Register this node's hotkey on start if it is not registered. Embedded chain only: on
    /// subtensor registration burns TAO, so the node only checks and the operator registers
    /// with `apiary chain register`.
    pub auto_register: bool,
    /// Subtensor: `finney`, `test`, `local` (ws://127.0.0.1:9944) or a `ws://` / `wss://` URL.
    pub endpoint: String,
    /// Subtensor: RPC backend, `default` (real nodes) or `legacy` (chopsticks).
    pub rpc: ChainRpc,
    /// Subtensor: btcli wallet name (`~/.bittensor/wallets/<wallet>`).
    pub wallet: String,
    /// Subtensor: hotkey name in the wallet (`hotkeys/<hotkey>`).
    pub hotkey: String,
    /// Subtensor: wallets directory (default `~/.bittensor/wallets`).
    pub wallet_path: Option<PathBuf>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            backend: ChainBackend::Local,
            netuid: 1,
            blocks_per_window: 4,
            block_time_ms: 500,
            local_path: None,
            metagraph_refresh_blocks: 1,
            auto_register: true,
            endpoint: "local".into(),
            rpc: ChainRpc::Default,
            wallet: "default".into(),
            hotkey: "default".into(),
            wallet_path: None,
        }
    }
}

/// `[net]`: libp2p settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Listen multiaddr; port 0 picks a free port.
    pub listen: String,
    /// Multiaddrs (with `/p2p/<peer id>`) dialed at start.
    pub bootstrap: Vec<String>,
    /// Largest gossip message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest blob served or fetched, in bytes.
    pub max_blob_bytes: usize,
    /// Gossipsub heartbeat in milliseconds.
    pub heartbeat_ms: u64,
    /// Timeout of one blob request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Hex 32-byte seed of the libp2p ed25519 key; generated and kept in
    /// `<data_dir>/p2p_key` if unset.
    pub p2p_key_seed: Option<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            bootstrap: Vec::new(),
            max_message_bytes: 64 * 1024,
            max_blob_bytes: 256 * 1024 * 1024,
            heartbeat_ms: 500,
            request_timeout_ms: 30_000,
            p2p_key_seed: None,
        }
    }
}

/// `[model]`: a LLaMA-style decoder. Defaults are tiny so it trains on a 2-core CPU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Vocabulary size (256 for byte-level tokens).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Attention heads; must divide `d_model`, head dim must be even (rotary).
    pub n_heads: usize,
    /// SwiGLU inner size.
    pub d_ff: usize,
    /// Tokens per page (sequence length).
    pub seq_len: usize,
    /// Rotary base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Seed of the deterministic initial parameters shared by the whole subnet.
    pub init_seed: u64,
    /// Start from a Hugging Face LLaMA checkpoint directory (`config.json` +
    /// `model.safetensors`) instead of `init_seed`; its shapes must match this section. Every
    /// node of a subnet must start from the same checkpoint.
    pub init_from: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 256,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            d_ff: 172,
            seq_len: 64,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            init_seed: 42,
            init_from: None,
        }
    }
}

/// `[train]`: data and the per-window update rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The dataset: one shard file, or a directory of `*.txt` (a file is one document),
    /// `*.jsonl` (a string `text` field per line) and `*.parquet` (a UTF-8 `text` column) shards.
    pub data: PathBuf,
    /// A Hugging Face `tokenizer.json`; unset means the byte tokenizer (vocabulary 256).
    /// `model.vocab_size` must be at least the tokenizer's vocabulary.
    pub tokenizer: Option<PathBuf>,
    /// Where the tokenized page cache and its `manifest.json` live (default
    /// `<data_dir>/dataset`); rebuilt when the shards, tokenizer or `seq_len` change.
    pub data_cache: Option<PathBuf>,
    /// Pages a miner trains on per window.
    pub pages_per_window: usize,
    /// Pages per local step (micro-batch); `pages_per_window` is split into batches of this size.
    pub batch_pages: usize,
    /// Local optimizer steps per window; the update is `params_before - params_after`.
    pub local_steps: usize,
    /// Inner AdamW learning rate.
    pub learning_rate: f64,
    /// What a miner shares each window (see [`UpdateRule`]).
    pub rule: UpdateRule,
    /// Outer learning rate applied to the mean of accepted updates.
    pub outer_lr: f64,
    /// Outer momentum `mu` (0 disables it): `v = mu * v + mean; step = mean + mu * v` with
    /// Nesterov, `step = v` without.
    pub outer_momentum: f64,
    /// Nesterov momentum for the outer optimizer (DiLoCo's choice).
    pub outer_nesterov: bool,
    /// Seed mixed into page assignment.
    pub data_seed: u64,
    /// Fraction of pages (at the end of the data) held out for evaluation.
    pub held_out_fraction: f64,
    /// Held-out pages used to report loss.
    pub held_out_pages: usize,
    /// Fraction of every model tensor in a miner's **sync proof**: with each update a miner
    /// publishes the values of its base model at `ceil(len * fraction)` positions per tensor,
    /// drawn from the hash of the window's first block; validators compare them with the same
    /// positions of their own model and reject updates from miners that are out of sync.
    /// Subnet-wide (miners and validators must agree), in `(0, 1]`.
    pub sync_slice_fraction: f64,
    /// Adversary simulation for devnets and tests: publish random noise of the right shape
    /// instead of training (a "lazy" miner that validators must catch).
    pub lazy: bool,
    /// Compute device for local training: `"cpu"` (default), `"cuda"` / `"cuda:N"` (needs a
    /// binary built with the `cuda` feature and a GPU) or `"auto"` (a GPU if there is one).
    pub device: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data/tinyshakespeare.txt"),
            tokenizer: None,
            data_cache: None,
            pages_per_window: 8,
            batch_pages: 8,
            local_steps: 4,
            learning_rate: 3e-3,
            rule: UpdateRule::Diloco,
            outer_lr: 1.0,
            outer_momentum: 0.0,
            outer_nesterov: true,
            data_seed: 7,
            held_out_fraction: 0.05,
            held_out_pages: 16,
            sync_slice_fraction: 0.001,
            lazy: false,
            device: "cpu".into(),
        }
    }
}

/// What a miner computes and shares each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateRule {
    /// DiLoCo-style: `train.local_steps` inner AdamW steps; the pseudo-gradient
    /// `before - after` is shared and the outer optimizer applies the aggregate.
    #[default]
    Diloco,
    /// Boltzmann-style: one gradient (mean over the window's pages) is shared; the outer
    /// optimizer applies the aggregate with `train.outer_lr` as the learning rate.
    Gradient,
}

/// `[compression]`: how updates travel. Chunked top-k with error feedback (the residual stays
/// on the miner), an optional DCT per chunk, and values quantized to `quant_bits`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Off: updates travel dense (f32 safetensors).
    pub enabled: bool,
    /// Elements per chunk.
    pub chunk: usize,
    /// Entries kept per chunk (density `topk / chunk`).
    pub topk: usize,
    /// Transform each chunk with an orthonormal DCT before top-k.
    pub dct: bool,
    /// Bits per kept value (2..=8); 0 keeps f32 values.
    pub quant_bits: u8,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            chunk: 256,
            topk: 4,
            dct: false,
            quant_bits: 8,
        }
    }
}

/// `[checkpoint]`: what a node keeps of past models.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Keep every model checkpoint whose window is a multiple of this (and always the latest
    /// `keep_recent`); others are deleted from the store once superseded.
    pub every_windows: u64,
    /// Most recent window checkpoints always kept (peers that are a few windows behind
    /// catch up from them).
    pub keep_recent: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_windows: 10,
            keep_recent: 4,
        }
    }
}

/// `[validator]`: scoring and weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidatorConfig {
    /// EMA factor for scores: `ema = alpha * new + (1 - alpha) * ema`.
    pub ema_alpha: f64,
    /// Updates whose cosine score is below this are not aggregated.
    pub min_score: f64,
    /// Submit weights every this many windows.
    pub weights_every_windows: u64,
    /// Weights version key sent with `set_weights`.
    pub version_key: u64,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            ema_alpha: 0.3,
            min_score: 0.1,
            weights_every_windows: 1,
            version_key: 0,
        }
    }
}

/// `[supervisor]`: restart budget for the node's actors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Restarts allowed within `restart_window_secs`; one more stops the node.
    pub max_restarts: u32,
    /// Length of the restart budget window in seconds.
    pub restart_window_secs: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_secs: 60,
        }
    }
}

impl NodeConfig {
    /// Parses TOML text (no validation).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_toml_str(&text, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The admin socket path.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.node
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("admin.sock"))
    }

    /// Directory of the tokenized page cache.
    pub fn data_cache_path(&self) -> PathBuf {
        self.train
            .data_cache
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("dataset"))
    }

    /// Directory of the embedded chain's database.
    pub fn local_chain_path(&self) -> PathBuf {
        self.chain
            .local_path
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("chain"))
    }

    /// Checks every rule that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        }
        let m = &self.model;
        if m.vocab_size == 0 || m.vocab_size > 1 << 20 {
            return bad(
                "model.vocab_size",
                "must be between 1 and 1048576 (256 for bytes)",
            );
        }
        if m.vocab_size < 256 {
            return bad("model.vocab_size", "byte-level tokens need at least 256");
        }
        if m.d_model == 0 || m.n_heads == 0 || !m.d_model.is_multiple_of(m.n_heads) {
            return bad(
                "model.n_heads",
                format!("must be > 0 and divide model.d_model ({})", m.d_model),
            );
        }
        if !(m.d_model / m.n_heads).is_multiple_of(2) {
            return bad(
                "model.n_heads",
                "head dimension d_model / n_heads must be even for rotary embeddings",
            );
        }
        if m.n_layers == 0 || m.n_layers > 256 {
            return bad("model.n_layers", "must be between 1 and 256");
        }
        if m.d_ff == 0 {
            return bad("model.d_ff", "must be > 0");
        }
        if m.seq_len < 2 || m.seq_len > 1 << 16 {
            return bad("model.seq_len", "must be between 2 and 65536");
        }
        if !(m.rope_theta.is_finite() && m.rope_theta > 0.0) {
            return bad("model.rope_theta", "must be a positive number");
        }
        let t = &self.train;
        if t.pages_per_window == 0 {
            return bad("train.pages_per_window", "must be at least 1");
        }
        if t.batch_pages == 0 {
            return bad("train.batch_pages", "must be at least 1");
        }
        if t.local_steps == 0 {
            return bad("train.local_steps", "must be at least 1");
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0 && t.learning_rate < 10.0) {
            return bad("train.learning_rate", "must be in (0, 10)");
        }
        if !(t.outer_lr.is_finite() && t.outer_lr > 0.0 && t.outer_lr <= 10.0) {
            return bad("train.outer_lr", "must be in (0, 10]");
        }
        if !(t.outer_momentum.is_finite() && (0.0..1.0).contains(&t.outer_momentum)) {
            return bad(
                "train.outer_momentum",
                "must be in [0, 1) (0.9 is DiLoCo's)",
            );
        }
        let dev = t.device.as_str();
        let cuda_ordinal = dev
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if !(matches!(dev, "cpu" | "cuda" | "auto") || cuda_ordinal) {
            return bad(
                "train.device",
                format!("unknown device `{dev}`; use \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""),
            );
        }
        let z = &self.compression;
        if z.enabled {
            if z.chunk < 2 || z.chunk > 1 << 16 {
                return bad("compression.chunk", "must be between 2 and 65536");
            }
            if z.topk == 0 || z.topk > z.chunk {
                return bad(
                    "compression.topk",
                    format!("must be between 1 and compression.chunk ({})", z.chunk),
                );
            }
            if z.quant_bits != 0 && !(2..=8).contains(&z.quant_bits) {
                return bad(
                    "compression.quant_bits",
                    "must be 0 (f32 values) or between 2 and 8",
                );
            }
        }
        if self.checkpoint.every_windows == 0 {
            return bad("checkpoint.every_windows", "must be at least 1");
        }
        if self.checkpoint.keep_recent == 0 {
            return bad(
                "checkpoint.keep_recent",
                "must be at least 1 (the current model)",
            );
        }
        if !(t.held_out_fraction > 0.0 && t.held_out_fraction < 0.5) {
            return bad("train.held_out_fraction", "must be in (0, 0.5)");
        }
        if t.held_out_pages == 0 {
            return bad("train.held_out_pages", "must be at least 1");
        }
        if !(t.sync_slice_fraction.is_finite()
            && t.sync_slice_fraction > 0.0
            && t.sync_slice_fraction <= 1.0)
        {
            return bad(
                "train.sync_slice_fraction",
                "must be in (0, 1] (0.001 sends 0.1 % of the model as the sync proof)",
            );
        }
        if self.chain.blocks_per_window == 0 {
            return bad("chain.blocks_per_window", "must be at least 1");
        }
        if self.chain.block_time_ms < 10 {
            return bad("chain.block_time_ms", "must be at least 10 ms");
        }
        if self.chain.metagraph_refresh_blocks == 0 {
            return bad("chain.metagraph_refresh_blocks", "must be at least 1");
        }
        if self.chain.backend == ChainBackend::Subtensor {
            let e = self.chain.endpoint.as_str();
            if !(matches!(e, "finney" | "test" | "local")
                || e.starts_with("ws://")
                || e.starts_with("wss://"))
            {
                return bad(
                    "chain.endpoint",
                    format!("`{e}` is not finney, test, local or a ws:// / wss:// URL"),
                );
            }
            for (key, name) in [
                ("chain.wallet", &self.chain.wallet),
                ("chain.hotkey", &self.chain.hotkey),
            ] {
                if name.is_empty()
                    || name.starts_with('.')
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return bad(
                        key,
                        format!(
                            "`{name}` is not a btcli wallet/hotkey name (letters, digits, - and _)"
                        ),
                    );
                }
            }
            if self.node.hotkey_seed.is_some() {
                return bad(
                    "node.hotkey_seed",
                    "the subtensor backend signs with the wallet hotkey (chain.wallet / chain.hotkey); remove node.hotkey_seed",
                );
            }
        }
        let v = &self.validator;
        if !(v.ema_alpha > 0.0 && v.ema_alpha <= 1.0) {
            return bad("validator.ema_alpha", "must be in (0, 1]");
        }
        if !(-1.0..=1.0).contains(&v.min_score) {
            return bad(
                "validator.min_score",
                "a cosine threshold, must be in [-1, 1]",
            );
        }
        if v.weights_every_windows == 0 {
            return bad("validator.weights_every_windows", "must be at least 1");
        }
        let n = &self.net;
        if !n.listen.starts_with('/') {
            return bad(
                "net.listen",
                format!(
                    "`{}` is not a multiaddr; use e.g. /ip4/127.0.0.1/tcp/0",
                    n.listen
                ),
            );
        }
        if let Some(b) = n.bootstrap.iter().find(|b| !b.starts_with('/')) {
            return bad(
                "net.bootstrap",
                format!("`{b}` is not a multiaddr; use /ip4/IP/tcp/PORT/p2p/PEER_ID"),
            );
        }
        if n.max_message_bytes < 1024 || n.max_message_bytes > 16 * 1024 * 1024 {
            return bad("net.max_message_bytes", "must be between 1 KiB and 16 MiB");
        }
        if n.max_blob_bytes < 1024 {
            return bad("net.max_blob_bytes", "must be at least 1 KiB");
        }
        if n.heartbeat_ms < 10 {
            return bad("net.heartbeat_ms", "must be at least 10 ms");
        }
        if n.request_timeout_ms < 100 {
            return bad("net.request_timeout_ms", "must be at least 100 ms");
        }
        for (key, seed) in [
            ("node.hotkey_seed", &self.node.hotkey_seed),
            ("net.p2p_key_seed", &n.p2p_key_seed),
        ] {
            if let Some(s) = seed {
                if hex::decode(s).map(|b| b.len() != 32).unwrap_or(true) {
                    return bad(key, "must be 64 hex characters (a 32-byte seed)");
                }
            }
        }
        if self.supervisor.restart_window_secs == 0 {
            return bad("supervisor.restart_window_secs", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().expect("defaults valid");
    }

    #[test]
    fn subtensor_chain_keys_are_checked() {
        let text = "[chain]\nbackend = \"subtensor\"\nendpoint = \"test\"\nrpc = \"legacy\"\nwallet = \"w\"\nhotkey = \"h\"\n";
        let cfg = NodeConfig::from_toml_str(text, Path::new("x.toml")).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.chain.rpc, ChainRpc::Legacy);
        let mut bad = cfg.clone();
        bad.chain.endpoint = "http://x".into();
        assert!(bad
            .validate()
            .expect_err("bad endpoint")
            .to_string()
            .contains("chain.endpoint"));
        let mut bad = cfg.clone();
        bad.chain.hotkey = "../h".into();
        assert!(bad
            .validate()
            .expect_err("bad name")
            .to_string()
            .contains("chain.hotkey"));
        let mut bad = cfg;
        bad.node.hotkey_seed = Some("00".repeat(32));
        assert!(bad
            .validate()
            .expect_err("seed")
            .to_string()
            .contains("node.hotkey_seed"));
    }

    #[test]
    fn examples_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("examples dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected example configs in {}", dir.display());
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = NodeConfig::from_toml_str("[model]\nd_modle = 3\n", Path::new("x.toml"))
            .expect_err("typo must fail");
        assert!(err.to_string().contains("d_modle"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let mut c = NodeConfig::default();
        c.model.n_heads = 3;
        let err = c.validate().expect_err("3 does not divide 64");
        assert!(err.to_string().contains("model.n_heads"), "{err}");
        let mut c = NodeConfig::default();
        c.node.hotkey_seed = Some("zz".into());
        assert!(c.validate().is_err());
        for f in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let mut c = NodeConfig::default();
            c.train.sync_slice_fraction = f;
            let err = c.validate().expect_err("fraction out of (0, 1]");
            assert!(
                err.to_string().contains("train.sync_slice_fraction"),
                "{err}"
            );
        }
        let mut c = NodeConfig::default();
        c.train.sync_slice_fraction = 1.0;
        c.validate()
            .expect("the whole model is a valid (if large) proof");
        let mut c = NodeConfig::default();
        c.net.listen = "127.0.0.1:4000".into();
        assert!(c
            .validate()
            .expect_err("not multiaddr")
            .to_string()
            .contains("net.listen"));
    }
}
