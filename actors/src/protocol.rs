//! What nodes say on the gossip topic, inside a hotkey-signed envelope.
//!
//! Messages are small: they name content ids; the bytes travel by request-response and are
//! verified against the id (updates, checkpoints, sync proofs). Encoding is bincode 2 (standard
//! config) with a decode limit.

use apiary_storage::ContentId;
use serde::{Deserialize, Serialize};

/// A miner's update for a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateAnnouncement {
    /// Subnet.
    pub netuid: u16,
    /// Window the update is for.
    pub window: u64,
    /// The miner's uid (must match the signing hotkey on chain).
    pub uid: u16,
    /// Model the update was computed from.
    pub base_model: ContentId,
    /// Content id of the update blob (safetensors).
    pub update: ContentId,
    /// Size of the blob in bytes.
    pub size: u64,
    /// The miner's training loss on its pages (NaN when it has none, e.g. a lazy miner; JSON,
    /// as the store writes it, has no NaN and reads `null` back as NaN).
    #[serde(deserialize_with = "loss_or_nan")]
    pub loss: f32,
    /// Content id of the miner's **sync proof** for this window: the slice of `base_model`
    /// seeded by the hash of the window's first block ([`crate::sync`]); `None` when the miner
    /// could not make one (validators then reject the update as out of sync).
    ///
    /// The slice travels as its own blob rather than inside this message because gossip
    /// messages are capped (`net.max_message_bytes`, 64 KiB by default) while a slice grows
    /// with the model: 0.1 % of a 67 M-parameter model is 268 KB. As a content id it follows
    /// the rule of this protocol (messages name ids, bytes travel by request-response, verified
    /// against the id), and the signed announcement still binds the miner to exactly one slice.
    #[serde(default)]
    pub sync_slice: Option<ContentId>,
}

/// The lead validator's record of a closed window: which updates went into the next model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRecord {
    /// Subnet.
    pub netuid: u16,
    /// The closed window.
    pub window: u64,
    /// Model the window's updates were computed from.
    pub base_model: ContentId,
    /// Accepted updates, sorted by uid: `(uid, update id)`.
    pub accepted: Vec<(u16, ContentId)>,
    /// Content id of the resulting model checkpoint.
    pub model: ContentId,
    /// Content id of the outer optimizer state after this window (its momentum; an empty
    /// state when momentum is off). Followers check it like `model`; late joiners fetch it.
    pub outer_state: ContentId,
    /// Each evaluated uid's score this window.
    pub scores: Vec<(u16, f32)>,
    /// The lead validator's dataset manifest hash (`apiary_data::Manifest::hash`): followers
    /// whose data differs learn it here instead of through near-zero scores.
    pub dataset: ContentId,
}

/// A gossip payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GossipMsg {
    /// A miner announces its update for a window.
    Update(UpdateAnnouncement),
    /// The lead validator announces a closed window's record.
    Record(WindowRecord),
}

/// Decode failure.
#[derive(Debug, thiserror::Error)]
#[error("malformed gossip payload: {0}")]
pub struct DecodeError(pub String);

impl GossipMsg {
    /// Encodes with bincode.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }
    /// Decodes at most `limit` bytes, rejecting trailing bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError(format!(
                "{} bytes > limit {limit}",
                bytes.len()
            )));
        }
        let (msg, used): (GossipMsg, usize) = bincode::serde::decode_from_slice(
            bytes,
            bincode::config::standard().with_limit::<{ 1 << 20 }>(),
        )
        .map_err(|e| DecodeError(e.to_string()))?;
        if used != bytes.len() {
            return Err(DecodeError("trailing bytes".into()));
        }
        Ok(msg)
    }
}

/// Reads a loss: in a human-readable format (the store's JSON) `null` stands for NaN, which
/// JSON cannot write; binary formats (bincode, on the wire) carry the f32 as it is.
fn loss_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    use serde::Deserialize;
    if d.is_human_readable() {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    } else {
        f32::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_loss_survives_the_store_and_the_wire() {
        let ann = UpdateAnnouncement {
            netuid: 1,
            window: 4,
            uid: 2,
            base_model: ContentId::of(b"a"),
            update: ContentId::of(b"u"),
            size: 10,
            loss: f32::NAN,
            sync_slice: None,
        };
        // The store's JSON writes NaN as null and reads it back as NaN.
        let json = serde_json::to_vec(&ann).expect("json");
        let back: UpdateAnnouncement = serde_json::from_slice(&json).expect("reads back");
        assert!(back.loss.is_nan());
        assert_eq!(back.update, ann.update);
        // bincode (gossip) carries the f32 as it is.
        let wire = GossipMsg::Update(ann).encode();
        match GossipMsg::decode(&wire, 4096).expect("decode") {
            GossipMsg::Update(a) => assert!(a.loss.is_nan()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn announcement_with_a_sync_slice_roundtrips() {
        let m = GossipMsg::Update(UpdateAnnouncement {
            netuid: 1,
            window: 4,
            uid: 2,
            base_model: ContentId::of(b"a"),
            update: ContentId::of(b"u"),
            size: 10,
            loss: 2.5,
            sync_slice: Some(ContentId::of(b"s")),
        });
        let b = m.encode();
        assert_eq!(GossipMsg::decode(&b, 4096).expect("decode"), m);
    }

    #[test]
    fn roundtrip_and_garbage() {
        let m = GossipMsg::Record(WindowRecord {
            netuid: 1,
            window: 9,
            base_model: ContentId::of(b"a"),
            accepted: vec![(1, ContentId::of(b"u"))],
            model: ContentId::of(b"b"),
            outer_state: ContentId::of(b"c"),
            scores: vec![(1, 0.9)],
            dataset: ContentId::of(b"d"),
        });
        let b = m.encode();
        assert_eq!(GossipMsg::decode(&b, 4096).expect("decode"), m);
        assert!(GossipMsg::decode(&[0xff, 0xff, 0xff], 4096).is_err());
        assert!(GossipMsg::decode(&b, 4).is_err());
        let mut t = b.clone();
        t.push(0);
        assert!(GossipMsg::decode(&t, 4096).is_err());
    }
}
