//! The signed gossip envelope: every announcement on the topic is wrapped in one.
//!
//! The libp2p layer already signs gossipsub messages with the node's ed25519 peer key; the
//! envelope adds the *hotkey* signature so the application learns which registered sr25519
//! identity (uid on chain) spoke, independently of which peer forwarded the bytes.

use apiary_chain::keys::{Hotkey, HotkeyId, KeyError};
use serde::{Deserialize, Serialize};

use crate::NetError;

/// Domain tag prepended to the payload before signing, so a gossip signature can never be
/// replayed as a signature over some other apiary message (extrinsics, records, ...).
pub const GOSSIP_DOMAIN: &[u8] = b"apiary-gossip-v2";

/// Upper bound on the bytes an encoded envelope adds around its payload: 32 bytes of hotkey,
/// a length-prefixed 64-byte signature and the payload's varint length prefix (at most 9 bytes),
/// rounded up.
pub const ENVELOPE_OVERHEAD: usize = 128;

/// The largest envelope [`SignedEnvelope::decode`] accepts whatever `limit` it is given
/// (16 MiB); gossip payloads are far smaller than this.
pub const MAX_ENVELOPE_BYTES: usize = 16 << 20;

/// What a gossip signature binds besides the payload: the chain (its genesis block hash) and
/// the subnet, so an envelope signed for one subnet never verifies on another (or on another
/// chain with the same netuid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubnetTag(pub [u8; 32]);

impl SubnetTag {
    /// The tag of subnet `netuid` on the chain whose genesis block hash is `genesis`.
    pub fn new(genesis: &[u8; 32], netuid: u16) -> SubnetTag {
        let mut h = blake3::Hasher::new();
        h.update(GOSSIP_DOMAIN);
        h.update(genesis);
        h.update(&netuid.to_le_bytes());
        SubnetTag(*h.finalize().as_bytes())
    }
}

/// A gossip payload signed by a hotkey. Encoded with bincode 2 (standard config, via serde).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedEnvelope {
    /// The sr25519 hotkey that signed the payload.
    pub hotkey: HotkeyId,
    /// sr25519 signature over `GOSSIP_DOMAIN || payload`.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// Application bytes (the actors crate's announcement encoding).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The bytes a gossip signature covers: the subnet tag (which includes the domain tag)
/// followed by the payload.
fn signing_bytes(tag: &SubnetTag, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(tag.0.len() + payload.len());
    msg.extend_from_slice(&tag.0);
    msg.extend_from_slice(payload);
    msg
}

impl SignedEnvelope {
    /// Signs `payload` with `hotkey` for the subnet `tag`.
    pub fn sign(hotkey: &Hotkey, tag: &SubnetTag, payload: Vec<u8>) -> Self {
        let signature = hotkey.sign(&signing_bytes(tag, &payload));
        Self {
            hotkey: hotkey.id(),
            signature,
            payload,
        }
    }

    /// Checks the hotkey's signature over the payload for the subnet `tag`.
    pub fn verify(&self, tag: &SubnetTag) -> Result<(), KeyError> {
        self.hotkey
            .verify(&signing_bytes(tag, &self.payload), &self.signature)
    }

    /// Encodes the envelope (bincode 2, standard config).
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain bytes and arrays into a Vec cannot fail; an empty result would be
        // rejected by every receiver as malformed, which is the safest fallback.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decodes an envelope whose payload may be at most `limit` bytes.
    ///
    /// Returns [`NetError::Oversize`] when the input or the payload exceeds the limit and
    /// [`NetError::Malformed`] when the bytes are not exactly one envelope.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, NetError> {
        let limit = limit.min(MAX_ENVELOPE_BYTES);
        let max_input = limit.saturating_add(ENVELOPE_OVERHEAD);
        if bytes.len() > max_input {
            return Err(NetError::Oversize {
                size: bytes.len(),
                limit,
            });
        }
        // bincode's limit is a const generic; pick the smallest tier that fits so a forged
        // length prefix can never make the decoder allocate much more than the input allows.
        let decoded = if max_input <= 64 << 10 {
            decode_limited::<{ 64 << 10 }>(bytes)
        } else if max_input <= 1 << 20 {
            decode_limited::<{ 1 << 20 }>(bytes)
        } else {
            decode_limited::<{ MAX_ENVELOPE_BYTES + ENVELOPE_OVERHEAD }>(bytes)
        };
        let (env, used) = decoded.map_err(|e| match e {
            bincode::error::DecodeError::LimitExceeded => NetError::Oversize {
                size: bytes.len(),
                limit,
            },
            other => NetError::Malformed(other.to_string()),
        })?;
        if used != bytes.len() {
            return Err(NetError::Malformed(format!(
                "{} trailing bytes after the envelope",
                bytes.len() - used
            )));
        }
        if env.payload.len() > limit {
            return Err(NetError::Oversize {
                size: env.payload.len(),
                limit,
            });
        }
        Ok(env)
    }
}

fn decode_limited<const N: usize>(
    bytes: &[u8],
) -> Result<(SignedEnvelope, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<N>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: SubnetTag = SubnetTag([9; 32]);

    #[test]
    fn a_signature_binds_the_chain_and_the_subnet() {
        let k = Hotkey::from_dev_label("env-erin");
        let here = SubnetTag::new(&[1; 32], 3);
        let env = SignedEnvelope::sign(&k, &here, b"announce".to_vec());
        env.verify(&here).expect("verifies on its subnet");
        assert!(
            env.verify(&SubnetTag::new(&[1; 32], 4)).is_err(),
            "other netuid"
        );
        assert!(
            env.verify(&SubnetTag::new(&[2; 32], 3)).is_err(),
            "other chain"
        );
    }

    #[test]
    fn sign_encode_decode_verify() {
        let k = Hotkey::from_dev_label("env-alice");
        let env = SignedEnvelope::sign(&k, &TAG, b"hello world".to_vec());
        env.verify(&TAG).expect("fresh envelope verifies");
        let bytes = env.encode();
        assert!(bytes.len() <= env.payload.len() + ENVELOPE_OVERHEAD);
        let back = SignedEnvelope::decode(&bytes, 1024).expect("decodes");
        assert_eq!(back, env);
        back.verify(&TAG).expect("decoded envelope verifies");
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let k = Hotkey::from_dev_label("env-bob");
        let mut env = SignedEnvelope::sign(&k, &TAG, b"payload".to_vec());
        env.payload[0] ^= 1;
        assert!(env.verify(&TAG).is_err());
        let mut env = SignedEnvelope::sign(&k, &TAG, b"payload".to_vec());
        env.hotkey = Hotkey::from_dev_label("env-carol").id();
        assert!(env.verify(&TAG).is_err());
        // The domain tag matters: a raw signature over the payload alone does not verify.
        let raw = SignedEnvelope {
            hotkey: k.id(),
            signature: k.sign(b"payload"),
            payload: b"payload".to_vec(),
        };
        assert!(raw.verify(&TAG).is_err());
    }

    #[test]
    fn limits_and_garbage() {
        let k = Hotkey::from_dev_label("env-dave");
        let env = SignedEnvelope::sign(&k, &TAG, vec![7u8; 200]);
        let bytes = env.encode();
        assert!(matches!(
            SignedEnvelope::decode(&bytes, 100),
            Err(NetError::Oversize { .. })
        ));
        assert!(SignedEnvelope::decode(&bytes, 200).is_ok());
        assert!(matches!(
            SignedEnvelope::decode(b"definitely not an envelope", 1024),
            Err(NetError::Malformed(_))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            SignedEnvelope::decode(&trailing, 1024),
            Err(NetError::Malformed(_))
        ));
        // A forged huge length prefix is refused without allocating it.
        let mut forged = bytes[..32 + 1 + 64].to_vec();
        forged.extend_from_slice(&[0xFD]); // u64 varint marker
        forged.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(SignedEnvelope::decode(&forged, 1024).is_err());
    }
}
