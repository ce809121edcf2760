//! Hotkeys: sr25519 keys exactly as Substrate/Bittensor use them.
//!
//! A hotkey is a schnorrkel keypair expanded from a 32-byte mini secret (the `secretSeed` of a
//! btcli wallet file) with Ed25519-style expansion, signing under the `substrate` context, so a
//! signature made here verifies on a Substrate chain and vice versa. Addresses are SS58 with the
//! Bittensor prefix 42.

use blake2::{Blake2b512, Digest};
use schnorrkel::{signing_context, ExpansionMode, MiniSecretKey};
use zeroize::Zeroize;

/// Substrate's signing context for sr25519.
const SIGNING_CTX: &[u8] = b"substrate";
/// SS58 address prefix of Bittensor.
pub const SS58_PREFIX: u8 = 42;

/// Errors about keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The seed is not 32 bytes.
    #[error("hotkey seed must be 32 bytes (64 hex characters)")]
    BadSeed,
    /// The public key bytes are not a valid sr25519 point.
    #[error("invalid sr25519 public key")]
    BadPublicKey,
    /// The signature does not verify.
    #[error("bad sr25519 signature")]
    BadSignature,
    /// An SS58 address could not be decoded.
    #[error("invalid SS58 address: {0}")]
    BadAddress(String),
}

/// A 32-byte sr25519 public key: the identity of a hotkey on chain and on gossip.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct HotkeyId(pub [u8; 32]);

impl HotkeyId {
    /// SS58 address (prefix 42), as btcli prints it.
    pub fn ss58(&self) -> String {
        let mut data = Vec::with_capacity(35);
        data.push(SS58_PREFIX);
        data.extend_from_slice(&self.0);
        let sum = ss58_checksum(&data);
        data.extend_from_slice(&sum[..2]);
        bs58::encode(data).into_string()
    }

    /// Parses an SS58 address with any single-byte prefix.
    pub fn from_ss58(s: &str) -> Result<Self, KeyError> {
        let data = bs58::decode(s)
            .into_vec()
            .map_err(|e| KeyError::BadAddress(e.to_string()))?;
        if data.len() != 35 {
            return Err(KeyError::BadAddress(format!("length {} != 35", data.len())));
        }
        let sum = ss58_checksum(&data[..33]);
        if sum[..2] != data[33..] {
            return Err(KeyError::BadAddress("checksum mismatch".into()));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&data[1..33]);
        Ok(HotkeyId(pk))
    }

    /// Verifies `sig` over `msg` by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> Result<(), KeyError> {
        let pk = schnorrkel::PublicKey::from_bytes(&self.0).map_err(|_| KeyError::BadPublicKey)?;
        let sig = schnorrkel::Signature::from_bytes(sig).map_err(|_| KeyError::BadSignature)?;
        pk.verify(signing_context(SIGNING_CTX).bytes(msg), &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

impl std::fmt::Debug for HotkeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HotkeyId({})", self.ss58())
    }
}

impl std::fmt::Display for HotkeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ss58())
    }
}

fn ss58_checksum(data: &[u8]) -> [u8; 64] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(data);
    h.finalize().into()
}

/// An sr25519 hotkey with its secret. Never printed: `Debug` shows only the address.
#[derive(Clone)]
pub struct Hotkey {
    seed: [u8; 32],
    pair: schnorrkel::Keypair,
}

impl Drop for Hotkey {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

impl std::fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hotkey({})", self.id().ss58())
    }
}

impl Hotkey {
    /// From a 32-byte mini secret (btcli's `secretSeed`).
    pub fn from_seed(seed: &[u8]) -> Result<Self, KeyError> {
        let mini = MiniSecretKey::from_bytes(seed).map_err(|_| KeyError::BadSeed)?;
        let mut s = [0u8; 32];
        s.copy_from_slice(seed);
        Ok(Self {
            seed: s,
            pair: mini.expand_to_keypair(ExpansionMode::Ed25519),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut seed[..]);
        let k = Self::from_seed(&seed);
        seed.zeroize();
        match k {
            Ok(k) => k,
            Err(_) => unreachable!("32 bytes is always a valid mini secret"),
        }
    }

    /// A key derived from a label, for tests and devnets only (blake3 of the label).
    pub fn from_dev_label(label: &str) -> Self {
        let seed = blake3::derive_key("apiary dev hotkey v1", label.as_bytes());
        match Self::from_seed(&seed) {
            Ok(k) => k,
            Err(_) => unreachable!("32 bytes is always a valid mini secret"),
        }
    }

    /// The secret seed (to persist it in a 0600 file).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The public identity.
    pub fn id(&self) -> HotkeyId {
        HotkeyId(self.pair.public.to_bytes())
    }

    /// Signs `msg` under the substrate context.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.pair
            .sign(signing_context(SIGNING_CTX).bytes(msg))
            .to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject_tampering() {
        let k = Hotkey::from_dev_label("alice");
        let sig = k.sign(b"hello");
        k.id().verify(b"hello", &sig).expect("valid");
        assert!(k.id().verify(b"hellp", &sig).is_err());
        let other = Hotkey::from_dev_label("bob");
        assert!(other.id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn ss58_roundtrip_and_known_vector() {
        // //Alice's public key and its well-known prefix-42 address.
        let alice = hex::decode("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d")
            .expect("hex");
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&alice);
        let id = HotkeyId(pk);
        assert_eq!(
            id.ss58(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(HotkeyId::from_ss58(&id.ss58()).expect("parse"), id);
        assert!(HotkeyId::from_ss58("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ").is_err());
    }

    #[test]
    fn seed_roundtrip() {
        let k = Hotkey::generate();
        let k2 = Hotkey::from_seed(k.seed()).expect("seed");
        assert_eq!(k.id(), k2.id());
    }
}
