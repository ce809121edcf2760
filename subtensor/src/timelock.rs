//! Commit-reveal v4: weights timelock-encrypted to a future drand round, which the chain
//! decrypts itself once that round's beacon reaches it.
//!
//! A validator on a subnet with commit-reveal submits
//! `commit_timelocked_mechanism_weights(netuid, mecid, commit, reveal_round, version)`. `commit`
//! is the SCALE encoding of [`TimelockedWeights`] (hotkey, uids, values, version key),
//! encrypted with timelock encryption (Boneh–Franklin identity-based encryption of an AES-GCM
//! key to the identity `sha256(reveal_round as big-endian u64)` under drand quicknet's public
//! key; [the `timelock` crate]) and serialized with `ark-serialize` (compressed). When drand
//! publishes round `reveal_round`, its signature *is* the identity's secret key: anyone,
//! the chain included, can decrypt from then on, nobody before.
//!
//! The layout is the one Bittensor's own `bittensor-drand` package produces and the chain
//! decodes; `tests/tests/timelock_oracle.rs` checks it against that package from PyPI, both
//! ways.
//!
//! The reveal round is the drand round at the time the chain will *reveal* the commit: the
//! first block of the epoch `reveal_period_epochs` after the commit's epoch (found by stepping
//! the chain's epoch schedule, [`EpochSchedule::first_reveal_block`]), plus a few blocks so that
//! the chain has ingested the pulse by then ([`reveal_round`]).
//!
//! [the `timelock` crate]: https://docs.rs/timelock

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use sha2::{Digest, Sha256};
use subxt::ext::codec::{Decode, Encode};
use timelock::block_ciphers::AESGCMBlockCipherProvider;
use timelock::engines::drand::TinyBLS381;
use timelock::engines::EngineBLS;
use timelock::ibe::fullident::Identity;
use timelock::tlock::{tld, tle, TLECiphertext};

/// The beacon's public key group (G2 of BLS12-381: drand quicknet's "unchained G1" scheme has
/// 96-byte public keys and 48-byte signatures).
type PublicKeyGroup = <TinyBLS381 as EngineBLS>::PublicKeyGroup;
/// The beacon's signature group (G1).
type SignatureGroup = <TinyBLS381 as EngineBLS>::SignatureGroup;
/// A scalar (a beacon secret key).
type Scalar = <TinyBLS381 as EngineBLS>::Scalar;

/// drand quicknet's public key (`https://api.drand.sh/<chain hash>/info`, `public_key`): the key
/// subtensor's drand pallet verifies pulses against.
pub const QUICKNET_PUBLIC_KEY: &str = "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a6c3ac6a5776a2d1064510d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca73bab4af5a6e9c76a4bc09e76eae8991ef5ece45a";
/// drand quicknet's chain hash.
pub const QUICKNET_CHAIN_HASH: &str =
    "52db9ba70e0cc0f6eaf7803dd07447a1f5477735fd3f661792ba94600c84e971";
/// Unix time of quicknet's round 1.
pub const QUICKNET_GENESIS: u64 = 1_692_803_367;
/// Seconds between quicknet rounds.
pub const QUICKNET_PERIOD: u64 = 3;
/// The `commit_reveal_version` the chain expects when it has no `CommitRevealWeightsVersion`
/// entry (its default).
pub const COMMIT_REVEAL_VERSION: u16 = 4;
/// Blocks added to the predicted reveal block so that the chain has ingested the round's pulse
/// by the time it reveals (what `bittensor-drand` adds).
pub const SECURITY_BLOCK_OFFSET: u64 = 3;
/// The longest tempo a subnet can have (about a week of 12 s blocks); bounds the epoch
/// simulation.
pub const MAX_TEMPO: u64 = 50_400;
/// The runtime's bound on a commit (`MAX_CRV3_COMMIT_SIZE_BYTES`).
pub const MAX_COMMIT_BYTES: usize = 5000;
/// The most reveal-period epochs this node schedules for (a subnet sets a few).
pub const MAX_REVEAL_PERIOD_EPOCHS: u64 = 1000;

/// What timelock encryption refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelockError {
    /// A public key that is not a point of G2 (96 bytes, compressed).
    #[error("not a drand public key (96 compressed bytes of G2 expected): {0}")]
    BadPublicKey(String),
    /// A signature that is not a point of G1 (48 bytes, compressed).
    #[error("not a drand signature (48 compressed bytes of G1 expected): {0}")]
    BadSignature(String),
    /// A signature that is not the beacon's signature of this round.
    #[error("the signature is not the beacon's signature of round {0}")]
    WrongSignature(u64),
    /// Bytes that are not a timelock ciphertext.
    #[error("not a timelock ciphertext: {0}")]
    BadCiphertext(String),
    /// A ciphertext that this signature does not open (another round, or tampered).
    #[error("the ciphertext does not open with this signature (another round, or tampered)")]
    Decrypt,
    /// Encryption failed.
    #[error("timelock encryption failed: {0}")]
    Encrypt(String),
    /// A commit over the runtime's size bound.
    #[error("the encrypted commit is {0} bytes, over the runtime's {MAX_COMMIT_BYTES}; commit fewer uids")]
    TooLarge(usize),
    /// A subnet whose schedule has no reveal (tempo 0) or a reveal period out of range.
    #[error("cannot schedule a timelocked commit: {0}")]
    Schedule(String),
    /// A decrypted payload that is not SCALE-encoded [`TimelockedWeights`].
    #[error("the decrypted payload is not a weights commit: {0}")]
    Payload(String),
}

/// The identity a round's ciphertexts are encrypted to: drand signs `sha256(round)` (the round
/// as a big-endian u64) with its threshold key, so its signature is the identity's secret key.
pub fn round_message(round: u64) -> [u8; 32] {
    Sha256::digest(round.to_be_bytes()).into()
}

fn identity(round: u64) -> Identity {
    Identity::new(b"", &round_message(round))
}

/// A drand beacon's public key.
#[derive(Clone, PartialEq, Eq)]
pub struct BeaconKey(PublicKeyGroup);

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BeaconKey({})", hex::encode(self.to_bytes()))
    }
}

impl BeaconKey {
    /// drand quicknet, whose pulses subtensor ingests.
    pub fn quicknet() -> Self {
        match Self::from_hex(QUICKNET_PUBLIC_KEY) {
            Ok(k) => k,
            // A constant that parses in the unit tests; unreachable.
            Err(e) => unreachable!("quicknet's public key constant does not parse: {e}"),
        }
    }

    /// A key from its 96 compressed bytes (checked to be a point of G2's prime-order subgroup).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TimelockError> {
        PublicKeyGroup::deserialize_compressed(bytes)
            .map(Self)
            .map_err(|e| TimelockError::BadPublicKey(e.to_string()))
    }

    /// A key from hex.
    pub fn from_hex(s: &str) -> Result<Self, TimelockError> {
        let b = hex::decode(s).map_err(|e| TimelockError::BadPublicKey(e.to_string()))?;
        Self::from_bytes(&b)
    }

    /// The 96 compressed bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        // Serializing a curve point into a Vec cannot fail.
        let _ = self.0.serialize_compressed(&mut out);
        out
    }

    /// Checks that `signature` is the beacon's signature of `round`:
    /// `e(signature, g2) == e(H(sha256(round)), key)`.
    pub fn verify(&self, round: u64, signature: &[u8]) -> Result<(), TimelockError> {
        let sig = signature_point(signature)?;
        let g2 = <PublicKeyGroup as ark_ec::PrimeGroup>::generator();
        let h = identity(round).public::<TinyBLS381>();
        if TinyBLS381::pairing(g2, sig) == TinyBLS381::pairing(self.0, h) {
            Ok(())
        } else {
            Err(TimelockError::WrongSignature(round))
        }
    }
}

fn signature_point(signature: &[u8]) -> Result<SignatureGroup, TimelockError> {
    if signature.len() != 48 {
        return Err(TimelockError::BadSignature(format!(
            "{} bytes",
            signature.len()
        )));
    }
    SignatureGroup::deserialize_compressed(signature)
        .map_err(|e| TimelockError::BadSignature(e.to_string()))
}

/// Encrypts `plaintext` so that it opens with `key`'s signature of `round` and nothing earlier.
pub fn encrypt(key: &BeaconKey, round: u64, plaintext: &[u8]) -> Result<Vec<u8>, TimelockError> {
    use rand::RngCore;
    let mut rng = rand::rngs::OsRng;
    let mut ephemeral = [0u8; 32];
    rng.fill_bytes(&mut ephemeral);
    let ct = tle::<TinyBLS381, AESGCMBlockCipherProvider, _>(
        key.0,
        ephemeral,
        plaintext,
        identity(round),
        rng,
    )
    .map_err(|e| TimelockError::Encrypt(format!("{e:?}")))?;
    let mut native = Vec::new();
    ct.serialize_compressed(&mut native)
        .map_err(|e| TimelockError::Encrypt(e.to_string()))?;
    to_wire(&native).ok_or_else(|| TimelockError::Encrypt("short ciphertext".into()))
}

/// Bytes of the IBE header's `U` (a compressed G2 point), and of `V` and `W` each.
const U_LEN: usize = 96;
const VW_LEN: usize = 32;

/// The `timelock` crate serializes the IBE header's `V` and `W` as fixed 32-byte arrays; the
/// chain and `bittensor-drand` (the crate's earlier release, `tle`) as byte vectors, each with
/// its u64 length. Everything else is the same; this inserts the two lengths.
fn to_wire(native: &[u8]) -> Option<Vec<u8>> {
    let (u, rest) = native.split_at_checked(U_LEN)?;
    let (v, rest) = rest.split_at_checked(VW_LEN)?;
    let (w, rest) = rest.split_at_checked(VW_LEN)?;
    let len = (VW_LEN as u64).to_le_bytes();
    Some([u, &len, v, &len, w, rest].concat())
}

/// The inverse of [`to_wire`], for a ciphertext [`check_layout`] accepted.
fn from_wire(wire: &[u8]) -> Option<Vec<u8>> {
    let (u, rest) = wire.split_at_checked(U_LEN)?;
    let (_, rest) = rest.split_at_checked(8)?;
    let (v, rest) = rest.split_at_checked(VW_LEN)?;
    let (_, rest) = rest.split_at_checked(8)?;
    let (w, rest) = rest.split_at_checked(VW_LEN)?;
    Some([u, v, w, rest].concat())
}

/// Opens a ciphertext with a round's signature (the beacon's, or a [`DevBeacon`]'s).
///
/// The ciphertext is checked to be no longer than [`MAX_COMMIT_BYTES`] plus room before it is
/// parsed, so a length prefix inside it cannot ask for a large allocation.
pub fn decrypt(ciphertext: &[u8], signature: &[u8]) -> Result<Vec<u8>, TimelockError> {
    // 1 MiB: far above any commit; ark's Vec decoding reserves by the length it reads.
    const MAX_CIPHERTEXT: usize = 1 << 20;
    if ciphertext.len() > MAX_CIPHERTEXT {
        return Err(TimelockError::BadCiphertext(format!(
            "{} bytes, over {MAX_CIPHERTEXT}",
            ciphertext.len()
        )));
    }
    check_layout(ciphertext).map_err(TimelockError::BadCiphertext)?;
    let sig = signature_point(signature)?;
    let native = from_wire(ciphertext)
        .ok_or_else(|| TimelockError::BadCiphertext("short ciphertext".into()))?;
    let ct = TLECiphertext::<TinyBLS381>::deserialize_compressed(&native[..])
        .map_err(|e| TimelockError::BadCiphertext(e.to_string()))?;
    tld::<TinyBLS381, AESGCMBlockCipherProvider>(ct, sig).map_err(|_| TimelockError::Decrypt)
}

/// Walks a serialized ciphertext's length prefixes before ark parses it: ark's `Vec`
/// decoding reserves the length it reads, so a forged prefix would abort the process.
///
/// Layout (ark-serialize, compressed, little-endian u64 lengths): the IBE header (`U`, a G2
/// point of 96 bytes, then `V` and `W`, byte vectors of 32), the body (a byte vector holding
/// the AES-GCM output: ciphertext vector, nonce vector), the cipher suite (a byte vector).
fn check_layout(ct: &[u8]) -> Result<(), String> {
    fn vec_at<'a>(buf: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
        let (len, rest) = buf
            .split_first_chunk::<8>()
            .ok_or_else(|| format!("{what}: cut before its length"))?;
        let len = u64::from_le_bytes(*len);
        if len > rest.len() as u64 {
            return Err(format!(
                "{what}: {len} bytes announced, {} left",
                rest.len()
            ));
        }
        Ok(rest.split_at(len as usize))
    }
    let rest = ct
        .get(U_LEN..)
        .ok_or_else(|| format!("{} bytes, shorter than the IBE header", ct.len()))?;
    let (v, rest) = vec_at(rest, "V")?;
    let (w, rest) = vec_at(rest, "W")?;
    if v.len() != VW_LEN || w.len() != VW_LEN {
        return Err(format!(
            "V and W of {} and {} bytes, not {VW_LEN}",
            v.len(),
            w.len()
        ));
    }
    let (body, rest) = vec_at(rest, "body")?;
    let (_suite, rest) = vec_at(rest, "cipher suite")?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the cipher suite", rest.len()));
    }
    let (_aes, body_rest) = vec_at(body, "AES ciphertext")?;
    let (_nonce, body_rest) = vec_at(body_rest, "AES nonce")?;
    if !body_rest.is_empty() {
        return Err(format!("{} bytes after the AES nonce", body_rest.len()));
    }
    Ok(())
}

/// A beacon whose secret key this process holds: it signs rounds like drand does, for tests and
/// local chains (never for a real subnet: whoever holds the key opens every commit at once).
pub struct DevBeacon {
    secret: Scalar,
}

impl DevBeacon {
    /// A fresh random beacon.
    pub fn random() -> Self {
        use ark_std::UniformRand;
        Self {
            secret: Scalar::rand(&mut rand::rngs::OsRng),
        }
    }

    /// Its public key.
    pub fn public_key(&self) -> BeaconKey {
        BeaconKey(<PublicKeyGroup as ark_ec::PrimeGroup>::generator() * self.secret)
    }

    /// Its signature of `round` (48 compressed bytes), as drand would publish it.
    pub fn sign(&self, round: u64) -> Vec<u8> {
        let sig = identity(round).extract::<TinyBLS381>(self.secret).0;
        let mut out = Vec::with_capacity(48);
        let _ = sig.serialize_compressed(&mut out);
        out
    }
}

/// The payload of a timelocked weights commit (the chain's `WeightsTlockPayload`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[codec(crate = subxt::ext::codec)]
pub struct TimelockedWeights {
    /// The committing hotkey's public key (32 bytes): the chain checks it against the signer.
    pub hotkey: Vec<u8>,
    /// Uids.
    pub uids: Vec<u16>,
    /// Weights, one per uid.
    pub values: Vec<u16>,
    /// The subnet's weights version key.
    pub version_key: u64,
}

impl TimelockedWeights {
    /// Encrypts the SCALE-encoded payload to `round` of `key`; refuses a commit over the
    /// runtime's size bound.
    pub fn seal(&self, key: &BeaconKey, round: u64) -> Result<Vec<u8>, TimelockError> {
        let ct = encrypt(key, round, &self.encode())?;
        if ct.len() > MAX_COMMIT_BYTES {
            return Err(TimelockError::TooLarge(ct.len()));
        }
        Ok(ct)
    }

    /// The SCALE encoding that is sealed (what the chain decodes after decrypting).
    pub fn encoded(&self) -> Vec<u8> {
        self.encode()
    }

    /// Opens a sealed commit with the round's signature.
    pub fn open(ciphertext: &[u8], signature: &[u8]) -> Result<Self, TimelockError> {
        let bytes = decrypt(ciphertext, signature)?;
        Self::decode(&mut &bytes[..]).map_err(|e| TimelockError::Payload(e.to_string()))
    }
}

/// The chain's epoch schedule for a subnet at a block: what decides when a commit is revealed.
///
/// The fields are the runtime's storage at `current_block` (`LastEpochBlock`,
/// `PendingEpochAt`, `SubnetEpochIndex`, `Tempo`, `BlocksSinceLastStep`); a runtime without the
/// newer entries is described by `last_epoch_block = current_block - blocks_since_last_step`,
/// no pending epoch and index 0 (only differences of the index matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpochSchedule {
    /// The block the subnet's last epoch ran at.
    pub last_epoch_block: u64,
    /// A block at which the owner asked for an epoch (0: none).
    pub pending_epoch_at: u64,
    /// The subnet's epoch counter.
    pub epoch_index: u64,
    /// Blocks per epoch (0: the subnet runs no epochs).
    pub tempo: u16,
    /// Blocks since the subnet's last step.
    pub blocks_since_last_step: u64,
    /// The chain head the state was read at.
    pub current_block: u64,
}

impl EpochSchedule {
    /// The schedule of a runtime without the stateful epoch entries: an epoch every
    /// `tempo + 1` blocks, at the blocks where `(block + netuid + 1) % (tempo + 1) == 0`.
    pub fn modular(
        netuid: u16,
        tempo: u16,
        current_block: u64,
        blocks_since_last_step: u64,
    ) -> Self {
        let period = u64::from(tempo) + 1;
        let shift = u64::from(netuid) + 1;
        // The last epoch block at or before `current_block`.
        let into = (current_block + shift) % period;
        let last = current_block.saturating_sub(into);
        Self {
            last_epoch_block: last,
            pending_epoch_at: 0,
            epoch_index: 0,
            tempo: if tempo == 0 {
                0
            } else {
                tempo.saturating_add(1)
            },
            blocks_since_last_step,
            current_block,
        }
    }

    /// Whether the subnet's epoch runs at `block`, given the state after the previous block.
    fn epoch_due(&self, block: u64) -> bool {
        if self.tempo == 0 {
            return false;
        }
        if self.pending_epoch_at > 0 && block >= self.pending_epoch_at {
            return true;
        }
        if self.blocks_since_last_step > MAX_TEMPO {
            return true;
        }
        block.saturating_sub(self.last_epoch_block) >= u64::from(self.tempo)
    }

    /// The epoch the chain's reveal step sees at `block`: reveals run before the block's epoch
    /// step, so an epoch due at `block` is counted already.
    fn epoch_seen_by_reveal(&self, block: u64) -> u64 {
        self.epoch_index + u64::from(self.epoch_due(block))
    }

    /// The state after the chain's step at `block`.
    fn step(mut self, block: u64) -> Self {
        self.blocks_since_last_step = self.blocks_since_last_step.saturating_add(1);
        self.current_block = block;
        if self.epoch_due(block) {
            self.last_epoch_block = block;
            self.pending_epoch_at = 0;
            self.epoch_index = self.epoch_index.saturating_add(1);
            self.blocks_since_last_step = 0;
        }
        self
    }

    /// The first block at which the chain reveals a commit submitted now (included in the next
    /// block): the first block whose reveal step sees the commit's epoch plus
    /// `reveal_period_epochs`.
    pub fn first_reveal_block(&self, reveal_period_epochs: u64) -> Result<u64, TimelockError> {
        if self.tempo == 0 {
            return Err(TimelockError::Schedule(
                "the subnet's tempo is 0: it runs no epochs, so nothing is revealed".into(),
            ));
        }
        if reveal_period_epochs > MAX_REVEAL_PERIOD_EPOCHS {
            return Err(TimelockError::Schedule(format!(
                "a reveal period of {reveal_period_epochs} epochs is over {MAX_REVEAL_PERIOD_EPOCHS}"
            )));
        }
        let inclusion = self.current_block.saturating_add(1);
        let target = self.epoch_seen_by_reveal(inclusion) + reveal_period_epochs;
        let limit = inclusion.saturating_add((reveal_period_epochs + 1) * MAX_TEMPO);
        let mut state = *self;
        for block in inclusion..=limit {
            if state.epoch_seen_by_reveal(block) == target {
                return Ok(block);
            }
            state = state.step(block);
        }
        Err(TimelockError::Schedule(format!(
            "no reveal found within {} blocks",
            limit - inclusion
        )))
    }
}

/// The drand (quicknet) round current at unix time `secs`.
pub fn round_at(secs: f64) -> u64 {
    let r = ((secs - QUICKNET_GENESIS as f64) / QUICKNET_PERIOD as f64).floor();
    if r < 1.0 {
        1
    } else {
        r as u64
    }
}

/// The round a commit made now is encrypted to, and the block the chain reveals it at:
/// the reveal block plus [`SECURITY_BLOCK_OFFSET`], turned into wall time with the chain's
/// `block_secs`.
pub fn reveal_round(
    schedule: &EpochSchedule,
    reveal_period_epochs: u64,
    block_secs: f64,
    now_secs: f64,
) -> Result<(u64, u64), TimelockError> {
    if !(block_secs.is_finite() && block_secs > 0.0) {
        return Err(TimelockError::Schedule(format!(
            "block time {block_secs} s is not a positive number"
        )));
    }
    let reveal_block = schedule.first_reveal_block(reveal_period_epochs)?;
    let blocks = (reveal_block + SECURITY_BLOCK_OFFSET).saturating_sub(schedule.current_block);
    Ok((
        round_at(now_secs + blocks as f64 * block_secs),
        reveal_block,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// drand quicknet's round 1000, as its HTTP API serves it.
    const ROUND_1000_SIG: &str = "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39";

    fn sig_1000() -> Vec<u8> {
        hex::decode(ROUND_1000_SIG).expect("hex")
    }

    #[test]
    fn quicknet_key_parses_and_verifies_a_published_round() {
        let key = BeaconKey::quicknet();
        assert_eq!(hex::encode(key.to_bytes()), QUICKNET_PUBLIC_KEY);
        key.verify(1000, &sig_1000()).expect("round 1000 verifies");
        assert_eq!(
            key.verify(1001, &sig_1000()),
            Err(TimelockError::WrongSignature(1001))
        );
        assert!(matches!(
            key.verify(1000, &sig_1000()[..47]),
            Err(TimelockError::BadSignature(_))
        ));
        // Another beacon's key does not verify quicknet's signature.
        let other = DevBeacon::random().public_key();
        assert!(other.verify(1000, &sig_1000()).is_err());
    }

    #[test]
    fn a_quicknet_commit_opens_with_the_published_signature_only() {
        let w = TimelockedWeights {
            hotkey: vec![7; 32],
            uids: vec![0, 3, 9],
            values: vec![65535, 100, 7],
            version_key: 42,
        };
        let ct = w.seal(&BeaconKey::quicknet(), 1000).expect("seal");
        assert_eq!(TimelockedWeights::open(&ct, &sig_1000()), Ok(w.clone()));
        // A different round's signature (here: another beacon's) does not open it.
        let dev = DevBeacon::random();
        assert_eq!(
            TimelockedWeights::open(&ct, &dev.sign(1000)),
            Err(TimelockError::Decrypt)
        );
        // Two seals of the same payload differ (fresh randomness each time).
        assert_ne!(ct, w.seal(&BeaconKey::quicknet(), 1000).expect("seal"));
    }

    #[test]
    fn a_dev_beacon_signs_like_drand() {
        let dev = DevBeacon::random();
        let key = dev.public_key();
        key.verify(5, &dev.sign(5)).expect("own signature verifies");
        assert!(key.verify(6, &dev.sign(5)).is_err());
        let ct = encrypt(&key, 5, b"hello").expect("encrypt");
        assert_eq!(decrypt(&ct, &dev.sign(5)).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(decrypt(&ct, &dev.sign(4)), Err(TimelockError::Decrypt));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let dev = DevBeacon::random();
        let ct = encrypt(&dev.public_key(), 5, b"hello").expect("encrypt");
        let sig = dev.sign(5);
        for cut in [0, 1, 10, 96, ct.len() - 1] {
            assert!(decrypt(&ct[..cut], &sig).is_err(), "cut at {cut}");
        }
        // Tampering anywhere but the trailing cipher-suite label (which selects nothing) is
        // caught: the IBE header by its consistency check, the body by AES-GCM's tag.
        let label = b"AES_GCM_".len() + 8;
        for at in [0, 50, 110, 150, 190, ct.len() - label - 1] {
            let mut flipped = ct.clone();
            flipped[at] ^= 1;
            assert!(decrypt(&flipped, &sig).is_err(), "flipped byte {at}");
        }
        assert!(decrypt(&vec![0xff; 2 << 20], &sig).is_err());
        assert!(BeaconKey::from_bytes(&[0u8; 96]).is_err());
        assert!(BeaconKey::from_hex("zz").is_err());
        // An absurd length prefix inside the ciphertext is refused, not allocated.
        let mut huge = ct[..96 + 80].to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decrypt(&huge, &sig).is_err());
    }

    #[test]
    fn random_mutations_never_panic() {
        use rand::{Rng, SeedableRng};
        let dev = DevBeacon::random();
        let ct = encrypt(&dev.public_key(), 9, b"payload").expect("encrypt");
        let sig = dev.sign(9);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let mut m = ct.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..m.len());
                match rng.gen_range(0..3) {
                    0 => m[at] = rng.gen(),
                    1 => m.truncate(at),
                    _ => m.insert(at, rng.gen()),
                }
                if m.is_empty() {
                    break;
                }
            }
            // Either an error or (a mutation the format ignores) the same plaintext.
            if let Ok(p) = decrypt(&m, &sig) {
                assert_eq!(p, b"payload");
            }
            let noise: Vec<u8> = (0..rng.gen_range(0..400)).map(|_| rng.gen()).collect();
            let _ = decrypt(&noise, &sig);
        }
    }

    #[test]
    fn oversized_commits_are_refused() {
        let w = TimelockedWeights {
            hotkey: vec![1; 32],
            uids: (0..2000).collect(),
            values: vec![1; 2000],
            version_key: 0,
        };
        assert!(matches!(
            w.seal(&BeaconKey::quicknet(), 10),
            Err(TimelockError::TooLarge(_))
        ));
    }

    fn schedule(last: u64, tempo: u16, current: u64) -> EpochSchedule {
        EpochSchedule {
            last_epoch_block: last,
            pending_epoch_at: 0,
            epoch_index: 0,
            tempo,
            blocks_since_last_step: current - last,
            current_block: current,
        }
    }

    #[test]
    fn the_reveal_is_the_first_block_of_the_epoch_after_the_period() {
        // Epochs at 100, 150, 200, ... A commit included at 121 belongs to epoch 0 (since 100);
        // with a period of 1 it is revealed when the reveal step first sees epoch 1: block 150.
        let s = schedule(100, 50, 120);
        assert_eq!(s.first_reveal_block(1), Ok(150));
        assert_eq!(s.first_reveal_block(2), Ok(200));
        assert_eq!(s.first_reveal_block(0), Ok(121));
        // Included exactly at an epoch block: the commit's epoch is the new one.
        let at_edge = schedule(100, 50, 149);
        assert_eq!(at_edge.first_reveal_block(1), Ok(200));
        // An owner-triggered epoch pending at 130 moves the next epoch there.
        let pending = EpochSchedule {
            pending_epoch_at: 130,
            ..s
        };
        assert_eq!(pending.first_reveal_block(1), Ok(130));
        assert_eq!(pending.first_reveal_block(2), Ok(180));
        assert!(schedule(100, 0, 120).first_reveal_block(1).is_err());
        assert!(s.first_reveal_block(u64::MAX).is_err());
    }

    #[test]
    fn a_modular_schedule_runs_epochs_where_the_old_runtimes_do() {
        // netuid 1, tempo 9: epochs where (block + 2) % 10 == 0, i.e. 8, 18, 28, ...
        let s = EpochSchedule::modular(1, 9, 20, 2);
        assert_eq!(s.last_epoch_block, 18);
        assert_eq!(s.first_reveal_block(1), Ok(28));
        assert_eq!(s.first_reveal_block(2), Ok(38));
        assert_eq!(EpochSchedule::modular(1, 9, 18, 0).last_epoch_block, 18);
        assert!(EpochSchedule::modular(1, 0, 18, 0)
            .first_reveal_block(1)
            .is_err());
    }

    #[test]
    fn the_reveal_round_adds_the_wait_to_the_clock() {
        let s = schedule(100, 50, 120);
        // Reveal at 150, +3 blocks of 12 s = 396 s after now.
        let now = (QUICKNET_GENESIS + 3 * 1_000_000) as f64;
        assert_eq!(
            reveal_round(&s, 1, 12.0, now),
            Ok((1_000_000 + 396 / 3, 150))
        );
        assert_eq!(round_at(0.0), 1);
        assert!(reveal_round(&s, 1, f64::NAN, now).is_err());
        assert!(reveal_round(&s, 1, 0.0, now).is_err());
    }
}
