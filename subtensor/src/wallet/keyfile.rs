//! The encryption btcli puts around key files, byte for byte.
//!
//! A NaCl-encrypted key file (what btcli and the Bittensor SDK write for coldkeys since
//! bittensor-wallet 2; `bittensor_core` in Bittensor 11) is
//!
//! ```text
//! b"$NACL" ‖ nonce (24 bytes) ‖ secretbox(key JSON)   // secretbox = Poly1305 tag (16) ‖ XSalsa20 ciphertext
//! ```
//!
//! with the secretbox key derived from the password by libsodium's `crypto_pwhash_argon2i`
//! (Argon2i v1.3, `OPSLIMIT_SENSITIVE` = 8 passes, `MEMLIMIT_SENSITIVE` = 512 MiB, one lane,
//! 32-byte output) over the fixed 16-byte salt [`NACL_SALT`]. See `derive_key`, `nacl_decrypt`
//! and `encrypt_keyfile_data` in `bittensor-core/src/keyfile.rs` (RaoFoundation/subtensor) and
//! `src/keyfile.rs` of opentensor/btwallet: both use sodiumoxide's `argon2i13::derive_key` and
//! `secretbox::seal`, and the same constants.
//!
//! Older formats (`$ANSIBLE_VAULT…` and the Fernet "legacy" format starting `gAAAAA`) are
//! recognised so that they can be reported, not decrypted.

use super::{Result, WalletError};
use std::path::Path;
use zeroize::Zeroizing;

/// The prefix of a NaCl-encrypted key file.
pub const NACL_PREFIX: &[u8] = b"$NACL";
/// The salt btcli uses for every NaCl key file (`NACL_SALT` in bittensor-wallet).
pub const NACL_SALT: [u8; 16] = *b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1";
/// libsodium `crypto_pwhash_argon2i_OPSLIMIT_SENSITIVE`: Argon2 passes.
pub const OPSLIMIT_SENSITIVE: u32 = 8;
/// libsodium `crypto_pwhash_argon2i_MEMLIMIT_SENSITIVE` (512 MiB), in bytes.
pub const MEMLIMIT_SENSITIVE: u32 = 536_870_912;
/// XSalsa20 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// How a key file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Encryption {
    /// Plain JSON.
    None,
    /// `$NACL`: argon2i + XSalsa20-Poly1305, the current btcli format.
    Nacl,
    /// `$ANSIBLE_VAULT`: an old btcli format apiary does not decrypt.
    AnsibleVault,
    /// Fernet (`gAAAAA…`): the oldest btcli format, not decrypted either.
    Legacy,
    /// Neither JSON nor a known encryption.
    Unknown,
}

impl Encryption {
    /// Recognises the format from the file's first bytes (as bittensor-wallet does).
    pub fn of(data: &[u8]) -> Encryption {
        if data.starts_with(NACL_PREFIX) {
            Encryption::Nacl
        } else if data.starts_with(b"$ANSIBLE_VAULT") {
            Encryption::AnsibleVault
        } else if data.starts_with(b"gAAAAA") {
            Encryption::Legacy
        } else if data.trim_ascii_start().starts_with(b"{") {
            Encryption::None
        } else {
            Encryption::Unknown
        }
    }

    /// A short human name ("unencrypted", "NaCl", ...).
    pub fn name(self) -> &'static str {
        match self {
            Encryption::None => "unencrypted",
            Encryption::Nacl => "NaCl",
            Encryption::AnsibleVault => "Ansible Vault",
            Encryption::Legacy => "legacy (Fernet)",
            Encryption::Unknown => "unknown format",
        }
    }
}

/// One key derivation at a time in this process: each one holds 512 MiB.
static KDF: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The secretbox key for `password`, exactly as libsodium's `crypto_pwhash_argon2i` with the
/// SENSITIVE limits and [`NACL_SALT`] derives it: as long as btcli takes (1–4 s), 512 MiB while
/// it runs.
fn derive_key(password: &str) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
    let params = argon2::Params::new(MEMLIMIT_SENSITIVE / 1024, OPSLIMIT_SENSITIVE, 1, Some(32))
        .map_err(|e| e.to_string())?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    // A poisoned lock only means another derivation panicked; the guard protects no data.
    let _one = KDF.lock().unwrap_or_else(|p| p.into_inner());
    kdf.hash_password_into(password.as_bytes(), &NACL_SALT, &mut key[..])
        .map_err(|e| e.to_string())?;
    Ok(key)
}

fn cipher(key: &[u8; 32]) -> crypto_secretbox::XSalsa20Poly1305 {
    use crypto_secretbox::aead::KeyInit;
    crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key))
}

/// Encrypts key file JSON as btcli does: `$NACL ‖ nonce ‖ tag ‖ ciphertext`. The password must
/// not be empty (Bittensor 11 refuses empty passwords too).
pub fn encrypt(path: &Path, plaintext: &[u8], password: &str) -> Result<Vec<u8>> {
    use crypto_secretbox::aead::Aead;
    if password.is_empty() {
        return Err(WalletError::Password(
            "the coldkey password must not be empty".into(),
        ));
    }
    let key = derive_key(password).map_err(|reason| WalletError::Invalid {
        path: path.to_path_buf(),
        reason: format!("key derivation failed: {reason}"),
    })?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::Rng::fill(&mut rand::thread_rng(), &mut nonce[..]);
    let sealed = cipher(&key)
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| WalletError::Invalid {
            path: path.to_path_buf(),
            reason: "encryption failed".into(),
        })?;
    let mut out = Vec::with_capacity(NACL_PREFIX.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(NACL_PREFIX);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts a `$NACL` key file. A wrong password and a damaged file both fail the Poly1305
/// check and give [`WalletError::WrongPassword`]; a file too short to hold a nonce and a tag is
/// [`WalletError::Invalid`]. Other formats are refused with a message saying how to convert.
pub fn decrypt(path: &Path, data: &[u8], password: &str) -> Result<Zeroizing<Vec<u8>>> {
    use crypto_secretbox::aead::Aead;
    match Encryption::of(data) {
        Encryption::Nacl => {}
        Encryption::None => {
            return Ok(Zeroizing::new(data.to_vec()));
        }
        Encryption::AnsibleVault | Encryption::Legacy => {
            return Err(WalletError::OldEncryption {
                path: path.to_path_buf(),
                method: Encryption::of(data).name(),
            })
        }
        Encryption::Unknown => return Err(WalletError::Invalid {
            path: path.to_path_buf(),
            reason:
                "it is neither JSON nor a known btcli encryption ($NACL, $ANSIBLE_VAULT, gAAAAA)"
                    .into(),
        }),
    }
    let body = &data[NACL_PREFIX.len()..];
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(WalletError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "a $NACL file holds at least {} bytes after the prefix (nonce and tag), this one {}; it is truncated — restore it from a backup or regenerate the coldkey from its mnemonic",
                NONCE_LEN + TAG_LEN,
                body.len()
            ),
        });
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let key = derive_key(password).map_err(|reason| WalletError::Invalid {
        path: path.to_path_buf(),
        reason: format!("key derivation failed: {reason}"),
    })?;
    cipher(&key)
        .decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed)
        .map(Zeroizing::new)
        .map_err(|_| WalletError::WrongPassword(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_detection() {
        assert_eq!(Encryption::of(b"$NACLxxxx"), Encryption::Nacl);
        assert_eq!(
            Encryption::of(b"$ANSIBLE_VAULT;1.1;AES256\n"),
            Encryption::AnsibleVault
        );
        assert_eq!(Encryption::of(b"gAAAAABk"), Encryption::Legacy);
        assert_eq!(Encryption::of(b"  {\"a\":1}"), Encryption::None);
        assert_eq!(Encryption::of(b"\x00\x01"), Encryption::Unknown);
        assert_eq!(Encryption::of(b""), Encryption::Unknown);
    }

    #[test]
    fn salt_is_btcli_salt() {
        // b"\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1" as bytes.
        assert_eq!(hex::encode(NACL_SALT), "137183dff15a09bc9c90b5518739e9b1");
    }
}
