//! Updates, end to end: what a miner computes, how it travels, and the outer step.
//!
//! - **Compute** ([`compute`]): by `train.rule`, either DiLoCo's pseudo-gradient (`local_steps`
//!   inner AdamW steps, `before - after`) or Boltzmann's single gradient over the window's pages.
//!   Validators call the same function to recompute a miner's work.
//! - **Wire** ([`Encoder`], [`decode`]): dense f32 safetensors, or — with `[compression]` on —
//!   chunked top-k with error feedback (the residual stays in the miner's [`Encoder`]), optional
//!   DCT and quantized values ([`apiary_compress`]). Decoding validates everything and yields a
//!   dense [`Update`] of the model's shapes; anything else is an error, never a panic.
//! - **Outer step** ([`outer_step`]): every node applies the same deterministic
//!   [`apiary_model::outer_step`] (median-norm clipping, mean, SGD with optional Nesterov
//!   momentum) to the same accepted updates in uid order, so all nodes agree on the model hash.

use apiary_compress::{CompressConfig, CompressedUpdate, Compressor};
use apiary_config::{NodeConfig, UpdateRule};
use apiary_model::{OuterConfig, OuterState, Params, Update};

/// The outer optimizer the subnet's config describes.
pub fn outer_config(cfg: &NodeConfig) -> OuterConfig {
    OuterConfig {
        lr: cfg.train.outer_lr,
        momentum: cfg.train.outer_momentum,
        nesterov: cfg.train.outer_nesterov,
    }
}

/// The compression settings of the subnet, if compression is on.
pub fn compress_config(cfg: &NodeConfig) -> Option<CompressConfig> {
    let z = &cfg.compression;
    z.enabled.then(|| CompressConfig {
        chunk: z.chunk,
        topk: z.topk,
        dct: z.dct,
        quant_bits: (z.quant_bits != 0).then_some(z.quant_bits),
    })
}

/// The update a miner owes for `pages` from `params`, by `train.rule`, with the loss of the
/// first batch.
pub fn compute(
    cfg: &NodeConfig,
    params: &Params,
    pages: &[Vec<u32>],
) -> Result<(Update, f32), String> {
    match cfg.train.rule {
        UpdateRule::Diloco => apiary_model::compute_update(&cfg.model, &cfg.train, params, pages),
        UpdateRule::Gradient => {
            apiary_model::compute_gradient(&cfg.model, &cfg.train, params, pages)
        }
    }
    .map_err(|e| e.to_string())
}

/// Element counts of every model tensor, in name order.
fn lengths(cfg: &NodeConfig) -> Result<Vec<usize>, String> {
    Ok(Update::zeros(&cfg.model)
        .map_err(|e| e.to_string())?
        .shapes()
        .iter()
        .map(|s| s.iter().product())
        .collect())
}

/// Turns a miner's updates into wire bytes, keeping the error-feedback residual between
/// windows when compression is on.
///
/// Validators keep one per miner too, fed with their recomputes, so they can check a
/// compressed update bit for bit ([`crate::windowed`]); for that both sides clear the residual
/// at the same windows ([`residual_resets_at`]).
pub struct Encoder {
    compressor: Option<Compressor>,
}

/// Whether every miner clears its error-feedback residual before encoding its update for
/// `window` (`compression.residual_reset_windows`; 0 never).
pub fn residual_resets_at(cfg: &NodeConfig, window: u64) -> bool {
    let every = cfg.compression.residual_reset_windows;
    every != 0 && window.is_multiple_of(every)
}

impl Encoder {
    /// An encoder for the subnet's settings.
    pub fn new(cfg: &NodeConfig) -> Result<Encoder, String> {
        let compressor = match compress_config(cfg) {
            Some(z) => Some(Compressor::new(z, &lengths(cfg)?).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Encoder { compressor })
    }

    /// Encodes a miner's update for `window`: clears the residual first where the subnet's
    /// schedule says so ([`residual_resets_at`]), then [`Encoder::encode`]s.
    pub fn encode_window(
        &mut self,
        cfg: &NodeConfig,
        window: u64,
        update: &Update,
    ) -> Result<Vec<u8>, String> {
        if residual_resets_at(cfg, window) {
            *self = Encoder::new(cfg)?;
        }
        self.encode(update)
    }

    /// Encodes `update`; with compression, `update + residual` is compressed and the residual
    /// keeps what was not sent.
    pub fn encode(&mut self, update: &Update) -> Result<Vec<u8>, String> {
        match &mut self.compressor {
            None => update.to_bytes().map_err(|e| e.to_string()),
            Some(c) => {
                let vecs = update.to_vecs().map_err(|e| e.to_string())?;
                let packed = c.compress(&vecs).map_err(|e| e.to_string())?;
                Ok(packed.to_bytes())
            }
        }
    }
}

/// Decodes wire bytes into a dense update of the model's shapes, validating everything.
pub fn decode(cfg: &NodeConfig, bytes: &[u8]) -> Result<Update, String> {
    match compress_config(cfg) {
        None => Update::from_bytes(&cfg.model, bytes).map_err(|e| format!("invalid update: {e}")),
        Some(z) => {
            let packed = CompressedUpdate::from_bytes(bytes)
                .map_err(|e| format!("invalid compressed update: {e}"))?;
            if packed.config() != &z {
                return Err(format!(
                    "compressed update uses {:?}, the subnet uses {z:?}",
                    packed.config()
                ));
            }
            let dense = apiary_compress::decompress(&packed, &lengths(cfg)?)
                .map_err(|e| format!("invalid compressed update: {e}"))?;
            Update::from_vecs(&cfg.model, dense).map_err(|e| format!("invalid update: {e}"))
        }
    }
}

/// Who an update blob is by: the header [`seal`] writes in front of the wire bytes.
///
/// Why: a miner's pages are public and CPU training is bit-reproducible, so anyone can compute
/// a miner's exact wire bytes. Were the blob only those bytes, its content id would be the same
/// for whoever announced it, and "whose work is this id" could only be answered by who was
/// heard first — an attacker who computes a victim's update and announces it first would have
/// the victim refused as a copy. With the author in the bytes, the victim's blob and any copy
/// of its tensors have different ids, and a blob announced by a uid it does not name is refused
/// whatever the order ([`crate::windowed::Authored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Author {
    /// Subnet.
    pub netuid: u16,
    /// The window the update is for.
    pub window: u64,
    /// The miner's uid.
    pub uid: u16,
}

/// The first bytes of a sealed update ("apiary update, author header v1").
pub const SEAL_MAGIC: [u8; 5] = *b"APU1\0";
/// Length of the author header.
pub const SEAL_LEN: usize = SEAL_MAGIC.len() + 2 + 8 + 2;

/// `author`'s header followed by the wire bytes: what a miner stores and announces.
pub fn seal(author: Author, wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_LEN + wire.len());
    out.extend_from_slice(&SEAL_MAGIC);
    out.extend_from_slice(&author.netuid.to_be_bytes());
    out.extend_from_slice(&author.window.to_be_bytes());
    out.extend_from_slice(&author.uid.to_be_bytes());
    out.extend_from_slice(wire);
    out
}

/// The author and the wire bytes of a sealed update; an error for anything else.
pub fn unseal(bytes: &[u8]) -> Result<(Author, &[u8]), String> {
    let header = bytes.get(..SEAL_LEN).ok_or_else(|| {
        format!(
            "{} bytes cannot hold an update's author header",
            bytes.len()
        )
    })?;
    if header[..SEAL_MAGIC.len()] != SEAL_MAGIC {
        return Err("the blob does not start with an update's author header".into());
    }
    let field =
        |r: std::ops::Range<usize>| &header[SEAL_MAGIC.len() + r.start..SEAL_MAGIC.len() + r.end];
    let mut netuid = [0u8; 2];
    netuid.copy_from_slice(field(0..2));
    let mut window = [0u8; 8];
    window.copy_from_slice(field(2..10));
    let mut uid = [0u8; 2];
    uid.copy_from_slice(field(10..12));
    Ok((
        Author {
            netuid: u16::from_be_bytes(netuid),
            window: u64::from_be_bytes(window),
            uid: u16::from_be_bytes(uid),
        },
        &bytes[SEAL_LEN..],
    ))
}

/// The wire bytes of `blob` when its author header names exactly the announcement's subnet,
/// window and uid; otherwise why not (a copy of another miner's blob, or no header).
pub fn authored<'a>(
    ann: &crate::protocol::UpdateAnnouncement,
    blob: &'a [u8],
) -> Result<&'a [u8], String> {
    let (author, wire) = unseal(blob)?;
    let announced = Author {
        netuid: ann.netuid,
        window: ann.window,
        uid: ann.uid,
    };
    if author != announced {
        return Err(format!(
            "the blob is uid {}'s update of window {} (subnet {}), announced by uid {} for \
             window {}: a copy",
            author.uid, author.window, author.netuid, announced.uid, announced.window
        ));
    }
    Ok(wire)
}

/// Unseals and decodes a stored update blob (the author is not checked: for blobs already
/// accepted, such as the updates a window record names).
pub fn decode_sealed(cfg: &NodeConfig, bytes: &[u8]) -> Result<Update, String> {
    let (_, wire) = unseal(bytes)?;
    decode(cfg, wire)
}

/// The outer step of the subnet's optimizer.
pub fn outer_step(
    cfg: &NodeConfig,
    base: &Params,
    outer: &OuterState,
    updates: &[Update],
) -> Result<(Params, OuterState), String> {
    apiary_model::outer_step(&cfg.model, base, outer, updates, &outer_config(cfg))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod seal_tests {
    use super::*;
    use crate::protocol::UpdateAnnouncement;

    #[test]
    fn a_blob_belongs_to_the_uid_it_names_whoever_announces_it_first() {
        let author = Author {
            netuid: 3,
            window: 41,
            uid: 7,
        };
        let wire = b"the same tensors".to_vec();
        let blob = seal(author, &wire);
        let (back, w) = unseal(&blob).expect("unseal");
        assert_eq!((back, w), (author, &wire[..]));
        let ann = |uid: u16, window: u64| UpdateAnnouncement {
            netuid: 3,
            window,
            uid,
            base_model: apiary_storage::ContentId::of(b"base"),
            update: apiary_storage::ContentId::of(&blob),
            size: blob.len() as u64,
            loss: 1.0,
            sync_slice: None,
        };
        assert_eq!(authored(&ann(7, 41), &blob).expect("own"), &wire[..]);
        // The same id announced by another uid (before or after) is that uid's copy.
        let e = authored(&ann(9, 41), &blob).expect_err("copy");
        assert!(
            e.contains("uid 7's update of window 41") && e.contains("uid 9"),
            "{e}"
        );
        // ... and the same tensors sealed by their computer are another blob, another id.
        let other = seal(Author { uid: 9, ..author }, &wire);
        assert_ne!(
            apiary_storage::ContentId::of(&other),
            apiary_storage::ContentId::of(&blob)
        );
        assert_eq!(authored(&ann(9, 41), &other).expect("its own"), &wire[..]);
        // Another window's blob, a bare wire blob and a short one are refused.
        assert!(authored(&ann(7, 42), &blob).is_err());
        assert!(unseal(&wire).is_err());
        assert!(unseal(&blob[..SEAL_LEN - 1]).is_err());
    }
}
