//! Shared fixtures of the fuzz targets: a tiny model (so a decode that passes every check still
//! runs in microseconds), the node configs that select dense or compressed updates, and a few
//! fixed dev hotkeys.

use std::sync::OnceLock;

use apiary_chain::keys::Hotkey;
use apiary_config::NodeConfig;
use apiary_model::Params;

/// Gossip messages are capped at this many payload bytes by default (`net.max_message_bytes`).
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// A node config with a tiny model; compression on (the subnet defaults) or off.
pub fn tiny_cfg(compressed: bool) -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.model.vocab_size = 16;
    cfg.model.d_model = 8;
    cfg.model.n_layers = 1;
    cfg.model.n_heads = 2;
    cfg.model.d_ff = 16;
    cfg.model.seq_len = 8;
    cfg.compression.enabled = compressed;
    cfg.compression.chunk = 16;
    cfg.compression.topk = 4;
    cfg
}

/// [`tiny_cfg`]`(false)` and `(true)`, built once.
pub fn cfgs() -> &'static [NodeConfig; 2] {
    static CFGS: OnceLock<[NodeConfig; 2]> = OnceLock::new();
    CFGS.get_or_init(|| [tiny_cfg(false), tiny_cfg(true)])
}

/// The initial parameters of the tiny model.
pub fn tiny_params() -> &'static Params {
    static P: OnceLock<Params> = OnceLock::new();
    P.get_or_init(|| Params::init(&cfgs()[0].model).expect("the tiny model initializes"))
}

/// Four dev hotkeys (sr25519 derivation is slow; done once).
pub fn hotkeys() -> &'static [Hotkey; 4] {
    static K: OnceLock<[Hotkey; 4]> = OnceLock::new();
    K.get_or_init(|| {
        [0, 1, 2, 3].map(|i| Hotkey::from_dev_label(&format!("fuzz-{i}")))
    })
}
