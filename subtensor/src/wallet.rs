//! Bittensor wallets as `btcli` keeps them on disk.
//!
//! A wallet is a directory `<wallet_path>/<wallet>/` (default `~/.bittensor/wallets/<wallet>/`)
//! holding the files the Bittensor SDK writes (bittensor 11's `bittensor.wallet`, and
//! bittensor-wallet before it):
//!
//! - `coldkey`: the coldkey secret as JSON (the fields below), encrypted with a password in
//!   btcli's `$NACL` format ([`keyfile`]); wallets made with `--no-password` keep it plain JSON.
//!   Older `$ANSIBLE_VAULT` and Fernet (`gAAAAA…`) coldkeys are recognised and refused with a
//!   message saying how to convert them.
//! - `coldkeypub.txt`: JSON `{accountId, publicKey, ss58Address, cryptoType}` (public only).
//! - `hotkeys/<hotkey>`: JSON `{accountId, publicKey, privateKey, secretPhrase, secretSeed,
//!   ss58Address, cryptoType}`, unencrypted as btcli writes hotkeys; `secretSeed` is the 32-byte
//!   sr25519 mini secret (hex, `0x`-prefixed), `secretPhrase` the BIP-39 mnemonic it came from,
//!   `cryptoType` 1 for sr25519 (0 is ed25519, which apiary does not sign with).
//! - `hotkeys/<hotkey>pub.txt`: the hotkey's public half, shaped like `coldkeypub.txt`.
//!
//! apiary writes the same files. [`Wallet::create_with`] encrypts a new coldkey with a password
//! ([`ColdkeyStorage::Encrypted`]) or, for test keys, leaves it plain
//! ([`ColdkeyStorage::Unencrypted`]). An encrypted coldkey is decrypted only when a command
//! signs with it ([`Wallet::coldkey`], e.g. `apiary chain register`), with the password from
//! [`PASSWORD_ENV`] or asked on the terminal ([`read_password`]).
//!
//! Keys derive exactly as Substrate does (`secretSeed` = first 32 bytes of
//! PBKDF2-HMAC-SHA512(entropy, "mnemonic", 2048)), so a key created here has the same SS58
//! address in btcli and vice versa. Secret material never appears in `Debug` output or logs.

pub mod keyfile;

use apiary_chain::keys::{Hotkey, HotkeyId};
use keyfile::Encryption;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable a coldkey password is taken from before asking on the terminal
/// (scripts, CI, tests). apiary only reads it.
pub const PASSWORD_ENV: &str = "APIARY_WALLET_PASSWORD";

/// Key files are small; anything larger than this is not one.
const MAX_KEYFILE_BYTES: u64 = 64 * 1024;

/// Wallet problems; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// A key file is missing.
    #[error("key file {0} not found; create it with `apiary wallet new` (or `btcli wallet new-hotkey`), or check chain.wallet / chain.hotkey / chain.wallet_path")]
    Missing(PathBuf),
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file is not what btcli writes.
    #[error("key file {path} is not a valid btcli key file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file other than the coldkey is encrypted (apiary decrypts only coldkeys).
    #[error("key file {0} is encrypted; apiary decrypts only coldkeys — keep hotkeys unencrypted, as btcli does by default (recreate it with `btcli wallet regen-hotkey` from its mnemonic, without a password)")]
    Encrypted(PathBuf),
    /// The password does not open an encrypted key file.
    #[error("wrong password for {0} (or the file is damaged): give the password the coldkey was encrypted with, on the terminal or in APIARY_WALLET_PASSWORD")]
    WrongPassword(PathBuf),
    /// The key file is encrypted in an old btcli format apiary does not decrypt.
    #[error("key file {path} is encrypted in the old {method} format, which apiary does not read; convert it to btcli's current NaCl format (`btcli wallet regen-coldkey --wallet <name> --overwrite` with the coldkey's mnemonic), then retry")]
    OldEncryption {
        /// The file.
        path: PathBuf,
        /// The format found.
        method: &'static str,
    },
    /// No usable password: none given, no terminal to ask on, or the two entries differ.
    #[error("coldkey password: {0}")]
    Password(String),
    /// Refusing to overwrite an existing key.
    #[error("key file {0} already exists; refusing to overwrite it (delete it first if you really mean to)")]
    Exists(PathBuf),
    /// A wallet or hotkey name is not a plain file name.
    #[error("invalid wallet or hotkey name `{0}`: use letters, digits, `-` and `_` only")]
    BadName(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, WalletError>;

/// The default wallet directory: `~/.bittensor/wallets`.
pub fn default_wallet_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".bittensor")
        .join("wallets")
}

/// Expands a leading `~/` to `$HOME`.
pub fn expand_home(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(rest),
        Err(_) => p.to_path_buf(),
    }
}

/// The shortest password a new coldkey takes.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Why `password` is too weak to encrypt a new coldkey, or `None`. The coldkey file is
/// btcli's NaCl secretbox under an Argon2i key: its strength is the password's, and a short one
/// falls to an offline guess once the file leaks.
pub fn new_password_problem(password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Some(format!(
            "it has {chars} characters; use at least {MIN_PASSWORD_LEN}"
        ));
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Some("it repeats too few characters; mix more of them".into());
    }
    None
}

/// A coldkey password: [`PASSWORD_ENV`] when it is set, else asked on the terminal without echo.
/// With `confirm` (a new key) it must pass [`new_password_problem`] and is asked twice; a weak
/// or mistyped entry is asked again, up to three times. With neither a variable nor a
/// terminal, the error says to set the variable.
pub fn read_password(prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(v) = std::env::var_os(PASSWORD_ENV) {
        let v = Zeroizing::new(v.into_string().map_err(|_| {
            WalletError::Password(format!(
                "{PASSWORD_ENV} is not valid UTF-8; set it to the password as text"
            ))
        })?);
        if v.is_empty() {
            return Err(WalletError::Password(format!(
                "{PASSWORD_ENV} is set but empty; set it to the password, or unset it to be asked on the terminal"
            )));
        }
        if confirm {
            if let Some(p) = new_password_problem(&v) {
                return Err(WalletError::Password(format!(
                    "{PASSWORD_ENV} is too weak for a new coldkey: {p}"
                )));
            }
        }
        return Ok(v);
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(WalletError::Password(format!(
            "there is no terminal to ask for it on; set {PASSWORD_ENV} to the password"
        )));
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                WalletError::Password(format!(
                    "reading it from the terminal failed ({e}); set {PASSWORD_ENV} instead"
                ))
            })
    };
    let mut last = String::new();
    for _ in 0..3 {
        let first = ask(prompt)?;
        if first.is_empty() {
            last = "it must not be empty".into();
            eprintln!("The password must not be empty; try again.");
            continue;
        }
        if !confirm {
            return Ok(first);
        }
        if let Some(p) = new_password_problem(&first) {
            eprintln!("That password is too weak: {p}. Try again.");
            last = p;
            continue;
        }
        if *ask("Retype the password: ")? != *first {
            eprintln!("The two entries differ; try again.");
            last = "the two entries differed".into();
            continue;
        }
        return Ok(first);
    }
    Err(WalletError::Password(format!(
        "three tries failed ({last}); run the command again"
    )))
}

/// The on-disk JSON of a btcli key file.
#[derive(Serialize, Deserialize)]
struct KeyFileJson {
    #[serde(rename = "accountId", default)]
    account_id: Option<String>,
    #[serde(rename = "publicKey", default)]
    public_key: Option<String>,
    #[serde(
        rename = "privateKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    private_key: Option<String>,
    #[serde(
        rename = "secretPhrase",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    secret_phrase: Option<String>,
    #[serde(
        rename = "secretSeed",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    secret_seed: Option<String>,
    #[serde(rename = "ss58Address", default)]
    ss58_address: Option<String>,
    /// 1 = sr25519, 0 = ed25519 (bittensor 11); absent in older files, meaning sr25519. apiary
    /// does not write it, so that every btcli version reads its files.
    #[serde(
        rename = "cryptoType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    crypto_type: Option<u64>,
}

impl KeyFileJson {
    fn has_secret(&self) -> bool {
        self.secret_seed.is_some() || self.secret_phrase.is_some() || self.private_key.is_some()
    }
}

impl Drop for KeyFileJson {
    fn drop(&mut self) {
        for s in [
            &mut self.private_key,
            &mut self.secret_phrase,
            &mut self.secret_seed,
        ]
        .into_iter()
        .flatten()
        {
            s.zeroize();
        }
    }
}

fn strip0x(s: &str) -> &str {
    s.strip_prefix("0x").unwrap_or(s)
}

/// The 32-byte mini secret of a BIP-39 phrase, as Substrate derives it.
pub fn seed_from_phrase(phrase: &str, password: &str) -> std::result::Result<[u8; 32], String> {
    let m = subxt_signer::bip39::Mnemonic::parse(phrase).map_err(|e| e.to_string())?;
    let (entropy, len) = m.to_entropy_array();
    let mut salt = String::from("mnemonic");
    salt.push_str(password);
    let mut big = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(&entropy[..len], salt.as_bytes(), 2048, &mut big);
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&big[..32]);
    big.zeroize();
    Ok(seed)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(WalletError::BadName(name.to_string()));
    }
    Ok(())
}

/// Reads a key file's bytes (wiped from memory when dropped).
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WalletError::Missing(path.to_path_buf())
        } else {
            WalletError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_KEYFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEYFILE_BYTES {
        return Err(WalletError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "it is larger than {MAX_KEYFILE_BYTES} bytes; key files are under 1 KiB"
            ),
        });
    }
    Ok(bytes)
}

/// A plain key file's bytes as text.
fn as_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| WalletError::Invalid {
        path: path.to_path_buf(),
        reason: "it is not UTF-8 text".into(),
    })
}

/// Writes `bytes` to a new file readable only by its owner (0600); never overwrites.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Err(WalletError::Exists(path.to_path_buf()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| WalletError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let io = |source| WalletError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

fn check_crypto_type(path: &Path, json: &KeyFileJson) -> Result<()> {
    match json.crypto_type {
        None | Some(1) => Ok(()),
        Some(0) => Err(WalletError::Invalid {
            path: path.to_path_buf(),
            reason: "it is an ed25519 key (cryptoType 0); apiary signs with sr25519 keys only — create the key with btcli's default `--crypto-type sr25519`".into(),
        }),
        Some(t) => Err(WalletError::Invalid {
            path: path.to_path_buf(),
            reason: format!("unknown cryptoType {t} (1 is sr25519)"),
        }),
    }
}

/// Parses a plain (unencrypted) btcli key file holding a secret: a hotkey, or a coldkey after
/// decryption. Encrypted text gives [`WalletError::Encrypted`].
pub fn parse_keyfile(path: &Path, text: &str) -> Result<Hotkey> {
    let invalid = |reason: String| WalletError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    match Encryption::of(text.as_bytes()) {
        Encryption::None => {}
        Encryption::Unknown => {
            return Err(invalid(
                "it is neither JSON nor a btcli-encrypted file".into(),
            ))
        }
        Encryption::Nacl | Encryption::AnsibleVault | Encryption::Legacy => {
            return Err(WalletError::Encrypted(path.to_path_buf()))
        }
    }
    let json: KeyFileJson =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    check_crypto_type(path, &json)?;
    let mut seed = match (&json.secret_seed, &json.secret_phrase) {
        (Some(s), _) => {
            let bytes =
                hex::decode(strip0x(s)).map_err(|_| invalid("secretSeed is not hex".into()))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| invalid("secretSeed must be 32 bytes".into()))?
        }
        (None, Some(p)) => seed_from_phrase(p, "")
            .map_err(|e| invalid(format!("secretPhrase is not a BIP-39 phrase: {e}")))?,
        (None, None) if json.private_key.is_some() => {
            return Err(invalid(
                "it holds only privateKey, from which apiary cannot rebuild the key; regenerate it from its mnemonic or seed (`btcli wallet regen-hotkey` / `regen-coldkey`)".into(),
            ))
        }
        (None, None) => {
            return Err(invalid(
                "it has neither secretSeed nor secretPhrase (is it a public-only file such as coldkeypub.txt or <hotkey>pub.txt?)".into(),
            ))
        }
    };
    let key = Hotkey::from_seed(&seed).map_err(|e| invalid(e.to_string()));
    seed.zeroize();
    let key = key?;
    if let Some(pk) = &json.public_key {
        if strip0x(pk) != hex::encode(key.id().0) {
            return Err(invalid(
                "publicKey does not match the key derived from secretSeed".into(),
            ));
        }
    }
    Ok(key)
}

/// Parses the public key of a btcli key file: `coldkeypub.txt`, `hotkeys/<name>pub.txt`, or the
/// public fields of a plain secret key file.
pub fn parse_public(path: &Path, bytes: &[u8]) -> Result<HotkeyId> {
    let invalid = |reason: String| WalletError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    if Encryption::of(bytes) != Encryption::None {
        return Err(invalid(format!(
            "a public key file is plain JSON, this one is {}",
            Encryption::of(bytes).name()
        )));
    }
    let json: KeyFileJson = serde_json::from_str(as_text(path, bytes)?)
        .map_err(|e| invalid(format!("not JSON: {e}")))?;
    let from_ss58 = match &json.ss58_address {
        Some(s) => Some(HotkeyId::from_ss58(s).map_err(|e| invalid(e.to_string()))?),
        None => None,
    };
    if let Some(pk) = json.public_key.as_ref().or(json.account_id.as_ref()) {
        let b = hex::decode(strip0x(pk)).map_err(|_| invalid("publicKey is not hex".into()))?;
        let a = <[u8; 32]>::try_from(b.as_slice())
            .map_err(|_| invalid("publicKey must be 32 bytes".into()))?;
        if from_ss58.is_some_and(|s| s.0 != a) {
            return Err(invalid(
                "publicKey and ss58Address name different keys".into(),
            ));
        }
        return Ok(HotkeyId(a));
    }
    from_ss58.ok_or_else(|| invalid("no publicKey or ss58Address".into()))
}

fn keyfile_json(key: &Hotkey, phrase: Option<String>) -> Result<Zeroizing<Vec<u8>>> {
    let id = key.id();
    let secret = schnorrkel::MiniSecretKey::from_bytes(key.seed())
        .map_err(|e| WalletError::Invalid {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .expand(schnorrkel::ExpansionMode::Ed25519);
    let json = KeyFileJson {
        account_id: Some(format!("0x{}", hex::encode(id.0))),
        public_key: Some(format!("0x{}", hex::encode(id.0))),
        private_key: Some(format!("0x{}", hex::encode(secret.to_ed25519_bytes()))),
        secret_phrase: phrase,
        secret_seed: Some(format!("0x{}", hex::encode(key.seed()))),
        ss58_address: Some(id.ss58()),
        crypto_type: None,
    };
    serde_json::to_vec(&json)
        .map(Zeroizing::new)
        .map_err(|e| WalletError::Invalid {
            path: PathBuf::new(),
            reason: e.to_string(),
        })
}

fn public_json(path: &Path, id: &HotkeyId) -> Result<Vec<u8>> {
    let public = KeyFileJson {
        account_id: Some(format!("0x{}", hex::encode(id.0))),
        public_key: Some(format!("0x{}", hex::encode(id.0))),
        private_key: None,
        secret_phrase: None,
        secret_seed: None,
        ss58_address: Some(id.ss58()),
        crypto_type: None,
    };
    serde_json::to_vec(&public).map_err(|e| WalletError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A new random key with its BIP-39 phrase (12 words).
pub fn generate_with_phrase() -> Result<(Hotkey, String)> {
    let mut entropy = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut entropy[..]);
    let m =
        subxt_signer::bip39::Mnemonic::from_entropy(&entropy).map_err(|e| WalletError::Invalid {
            path: PathBuf::new(),
            reason: e.to_string(),
        });
    entropy.zeroize();
    let phrase = m?.to_string();
    let mut seed = seed_from_phrase(&phrase, "").map_err(|e| WalletError::Invalid {
        path: PathBuf::new(),
        reason: e,
    })?;
    let key = Hotkey::from_seed(&seed).map_err(|e| WalletError::Invalid {
        path: PathBuf::new(),
        reason: e.to_string(),
    });
    seed.zeroize();
    Ok((key?, phrase))
}

/// How a new coldkey is stored.
pub enum ColdkeyStorage {
    /// Encrypted with this password in btcli's `$NACL` format (what btcli does by default).
    Encrypted(Zeroizing<String>),
    /// Plain JSON with mode 0600, like btcli's `--no-password`: for test keys only, since anyone
    /// who can read the file can spend from the coldkey.
    Unencrypted,
}

impl ColdkeyStorage {
    /// Encrypted with `password` (copied into memory that is wiped when dropped).
    pub fn encrypted(password: &str) -> Self {
        ColdkeyStorage::Encrypted(Zeroizing::new(password.to_string()))
    }
}

impl std::fmt::Debug for ColdkeyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColdkeyStorage::Encrypted(_) => write!(f, "Encrypted(<password>)"),
            ColdkeyStorage::Unencrypted => write!(f, "Unencrypted"),
        }
    }
}

/// A wallet directory and one of its hotkeys.
#[derive(Clone)]
pub struct Wallet {
    /// `<wallet_path>/<name>`.
    pub dir: PathBuf,
    /// Wallet name.
    pub name: String,
    /// Hotkey name.
    pub hotkey_name: String,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Wallet({} / {} at {})",
            self.name,
            self.hotkey_name,
            self.dir.display()
        )
    }
}

/// What `Wallet::create` produced (public parts only, plus the phrases to show once).
pub struct Created {
    /// Coldkey address.
    pub coldkey: HotkeyId,
    /// Hotkey address.
    pub hotkey: HotkeyId,
    /// How the new coldkey file is stored; `None` when the wallet already had a coldkey.
    pub coldkey_storage: Option<Encryption>,
    /// Coldkey mnemonic (only when a coldkey was created). Show it once, never log it.
    pub coldkey_phrase: Option<String>,
    /// Hotkey mnemonic. Show it once, never log it.
    pub hotkey_phrase: String,
}

impl Drop for Created {
    fn drop(&mut self) {
        if let Some(p) = self.coldkey_phrase.as_mut() {
            p.zeroize();
        }
        self.hotkey_phrase.zeroize();
    }
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Created(coldkey {}, hotkey {})",
            self.coldkey, self.hotkey
        )
    }
}

impl Wallet {
    /// Names a wallet (`name`) and hotkey under `wallet_path` (default `~/.bittensor/wallets`).
    pub fn new(wallet_path: Option<&Path>, name: &str, hotkey: &str) -> Result<Self> {
        check_name(name)?;
        check_name(hotkey)?;
        let base = wallet_path
            .map(expand_home)
            .unwrap_or_else(default_wallet_path);
        Ok(Wallet {
            dir: base.join(name),
            name: name.to_string(),
            hotkey_name: hotkey.to_string(),
        })
    }

    /// `hotkeys/<hotkey>`.
    pub fn hotkey_path(&self) -> PathBuf {
        self.dir.join("hotkeys").join(&self.hotkey_name)
    }

    /// `hotkeys/<hotkey>pub.txt`: the hotkey's public half (written by bittensor 11 and apiary).
    pub fn hotkeypub_path(&self) -> PathBuf {
        self.dir
            .join("hotkeys")
            .join(format!("{}pub.txt", self.hotkey_name))
    }

    /// `coldkeypub.txt`.
    pub fn coldkeypub_path(&self) -> PathBuf {
        self.dir.join("coldkeypub.txt")
    }

    /// `coldkey`.
    pub fn coldkey_path(&self) -> PathBuf {
        self.dir.join("coldkey")
    }

    /// Loads the hotkey (hotkeys are stored unencrypted).
    pub fn hotkey(&self) -> Result<Hotkey> {
        let p = self.hotkey_path();
        let bytes = read(&p)?;
        parse_keyfile(&p, as_text(&p, &bytes)?)
    }

    /// The hotkey's address without its secret: from `hotkeys/<hotkey>pub.txt`, or from the
    /// public fields of `hotkeys/<hotkey>` when there is no public half.
    pub fn hotkey_pub(&self) -> Result<HotkeyId> {
        let p = self.hotkeypub_path();
        match read(&p) {
            Ok(bytes) => parse_public(&p, &bytes),
            Err(WalletError::Missing(_)) => {
                let p = self.hotkey_path();
                parse_public(&p, &read(&p)?)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the coldkey's public address from `coldkeypub.txt`.
    pub fn coldkey_pub(&self) -> Result<HotkeyId> {
        let p = self.coldkeypub_path();
        parse_public(&p, &read(&p)?)
    }

    /// How the `coldkey` file is stored (reads only its first bytes' worth of meaning; asks for
    /// no password).
    pub fn coldkey_encryption(&self) -> Result<Encryption> {
        Ok(Encryption::of(&read(&self.coldkey_path())?))
    }

    /// Loads the coldkey secret. An encrypted coldkey is decrypted with the password from
    /// [`PASSWORD_ENV`] or asked on the terminal ([`read_password`]); a plain one needs none.
    /// Decrypting takes as long as in btcli (argon2i with its parameters: 1–4 s, 512 MiB).
    pub fn coldkey(&self) -> Result<Hotkey> {
        let prompt = format!(
            "Password for the coldkey of wallet `{}` ({}): ",
            self.name,
            self.coldkey_path().display()
        );
        self.unlock_coldkey(|| read_password(&prompt, false))
    }

    /// Loads the coldkey secret, decrypting it with `password` if it is encrypted.
    pub fn coldkey_with_password(&self, password: &str) -> Result<Hotkey> {
        self.unlock_coldkey(|| Ok(Zeroizing::new(password.to_string())))
    }

    fn unlock_coldkey(
        &self,
        password: impl FnOnce() -> Result<Zeroizing<String>>,
    ) -> Result<Hotkey> {
        let p = self.coldkey_path();
        let data = read(&p)?;
        let key = match Encryption::of(&data) {
            Encryption::None => parse_keyfile(&p, as_text(&p, &data)?)?,
            Encryption::Nacl => {
                let plain = keyfile::decrypt(&p, &data, &password()?)?;
                parse_keyfile(&p, as_text(&p, &plain)?)?
            }
            method @ (Encryption::AnsibleVault | Encryption::Legacy) => {
                return Err(WalletError::OldEncryption {
                    path: p,
                    method: method.name(),
                })
            }
            Encryption::Unknown => {
                return Err(WalletError::Invalid {
                    path: p,
                    reason: "it is neither JSON nor a known btcli encryption ($NACL, $ANSIBLE_VAULT, gAAAAA)".into(),
                })
            }
        };
        if let Ok(public) = self.coldkey_pub() {
            if public != key.id() {
                return Err(WalletError::Invalid {
                    path: p,
                    reason: format!(
                        "it holds {} but coldkeypub.txt says {public}; the two files belong to different coldkeys",
                        key.id()
                    ),
                });
            }
        }
        Ok(key)
    }

    /// Writes `hotkeys/<hotkey>` (unencrypted, as btcli does) and its public half
    /// `hotkeys/<hotkey>pub.txt`, both mode 0600; refuses to overwrite either.
    pub fn write_hotkey(&self, key: &Hotkey, phrase: Option<String>) -> Result<()> {
        let (path, pub_path) = (self.hotkey_path(), self.hotkeypub_path());
        for p in [&path, &pub_path] {
            if p.exists() {
                return Err(WalletError::Exists(p.clone()));
            }
        }
        let public = public_json(&pub_path, &key.id())?;
        write_private(&path, &keyfile_json(key, phrase)?)?;
        write_private(&pub_path, &public)
    }

    /// Writes `coldkey` for `key`, encrypted or not as `storage` says, and `coldkeypub.txt`
    /// (mode 0600; refuses to overwrite either).
    pub fn write_coldkey(
        &self,
        key: &Hotkey,
        phrase: Option<String>,
        storage: &ColdkeyStorage,
    ) -> Result<()> {
        let (path, pub_path) = (self.coldkey_path(), self.coldkeypub_path());
        for p in [&path, &pub_path] {
            if p.exists() {
                return Err(WalletError::Exists(p.clone()));
            }
        }
        let public = public_json(&pub_path, &key.id())?;
        let plain = keyfile_json(key, phrase)?;
        let bytes = match storage {
            ColdkeyStorage::Encrypted(password) => {
                Zeroizing::new(keyfile::encrypt(&path, &plain, password)?)
            }
            ColdkeyStorage::Unencrypted => plain,
        };
        write_private(&path, &bytes)?;
        write_private(&pub_path, &public)
    }

    /// Creates the hotkey (and the coldkey when the wallet has none) with fresh random keys and
    /// the coldkey unencrypted: for test wallets. `apiary wallet new` uses
    /// [`Wallet::create_with`], which encrypts the coldkey unless told otherwise.
    pub fn create(&self) -> Result<Created> {
        self.create_with(|| Ok(ColdkeyStorage::Unencrypted))
    }

    /// Creates the hotkey (and the coldkey when the wallet has none) with fresh random keys.
    /// `coldkey` is asked how to store a new coldkey only when one is created, before anything
    /// is written (so a password prompt comes first, and not at all for an existing wallet).
    pub fn create_with(&self, coldkey: impl FnOnce() -> Result<ColdkeyStorage>) -> Result<Created> {
        for p in [self.hotkey_path(), self.hotkeypub_path()] {
            if p.exists() {
                return Err(WalletError::Exists(p));
            }
        }
        let (coldkey, coldkey_phrase, coldkey_storage) = if self.coldkeypub_path().exists() {
            (self.coldkey_pub()?, None, None)
        } else {
            let storage = coldkey()?;
            let (ck, phrase) = generate_with_phrase()?;
            self.write_coldkey(&ck, Some(phrase.clone()), &storage)?;
            let how = match storage {
                ColdkeyStorage::Encrypted(_) => Encryption::Nacl,
                ColdkeyStorage::Unencrypted => Encryption::None,
            };
            (ck.id(), Some(phrase), Some(how))
        };
        let (hk, hotkey_phrase) = generate_with_phrase()?;
        self.write_hotkey(&hk, Some(hotkey_phrase.clone()))?;
        Ok(Created {
            coldkey,
            hotkey: hk.id(),
            coldkey_storage,
            coldkey_phrase,
            hotkey_phrase,
        })
    }
}

/// One wallet found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct WalletListing {
    /// Wallet name.
    pub name: String,
    /// Coldkey address, if `coldkeypub.txt` is readable.
    pub coldkey: Option<String>,
    /// How the `coldkey` file is stored; `None` when there is no readable `coldkey` file (a
    /// public-only wallet).
    pub coldkey_storage: Option<Encryption>,
    /// The hotkeys, by name; a `<name>pub.txt` file is the public half of hotkey `<name>`.
    pub hotkeys: Vec<HotkeyListing>,
}

/// One hotkey of a listed wallet.
#[derive(Debug, Clone, Serialize)]
pub struct HotkeyListing {
    /// Hotkey name (`hotkeys/<name>`).
    pub name: String,
    /// Its address: from the secret key file, else from `<name>pub.txt` or the secret file's
    /// public fields; `None` when neither is readable.
    pub address: Option<String>,
    /// Whether `hotkeys/<name>` holds a secret key apiary can sign with.
    pub usable: bool,
    /// What is missing or wrong (public half only, unreadable secret, halves disagree).
    pub note: Option<String>,
}

/// The hotkeys in a wallet's `hotkeys/` directory, public halves joined to their secret files.
fn list_hotkeys(dir: &Path) -> Vec<HotkeyListing> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let files: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        // Hidden files, and the temp files btcli renames into place.
        .filter(|n| !n.starts_with('.') && !n.ends_with(".tmp"))
        .collect();
    // name -> (secret file present, public half: Some(result) when `<name>pub.txt` is one)
    let mut by_name: BTreeMap<String, (bool, Option<Result<HotkeyId>>)> = BTreeMap::new();
    for f in &files {
        let path = dir.join(f);
        let stem = f.strip_suffix("pub.txt").filter(|s| !s.is_empty());
        // `<name>pub.txt` is a public half unless it holds a secret itself (a hotkey that
        // happens to be named so).
        let public_half = stem.is_some()
            && read(&path).is_ok_and(|b| {
                as_text(&path, &b)
                    .ok()
                    .and_then(|t| serde_json::from_str::<KeyFileJson>(t).ok())
                    .is_none_or(|j| !j.has_secret())
            });
        match stem {
            Some(stem) if public_half => {
                by_name.entry(stem.to_string()).or_default().1 =
                    Some(read(&path).and_then(|b| parse_public(&path, &b)));
            }
            _ => by_name.entry(f.clone()).or_default().0 = true,
        }
    }
    by_name
        .into_iter()
        .map(|(name, (secret_file, public))| {
            let pub_name = format!("{name}pub.txt");
            let secret_path = dir.join(&name);
            let public_addr = public.as_ref().and_then(|r| r.as_ref().ok()).copied();
            if !secret_file {
                let (address, note) = match public {
                    Some(Ok(id)) => (
                        Some(id.ss58()),
                        format!("public key only, from hotkeys/{pub_name}; no secret key file"),
                    ),
                    Some(Err(e)) => (None, format!("public key only, and unreadable: {e}")),
                    None => (None, "no key file".into()),
                };
                return HotkeyListing {
                    name,
                    address,
                    usable: false,
                    note: Some(note),
                };
            }
            let secret = read(&secret_path)
                .and_then(|b| parse_keyfile(&secret_path, as_text(&secret_path, &b)?));
            match secret {
                Ok(k) => {
                    let id = k.id();
                    let note = public_addr
                        .filter(|p| *p != id)
                        .map(|p| format!("hotkeys/{pub_name} names a different key ({p})"));
                    HotkeyListing {
                        name,
                        address: Some(id.ss58()),
                        usable: true,
                        note,
                    }
                }
                Err(e) => {
                    let address = public_addr.or_else(|| {
                        read(&secret_path)
                            .and_then(|b| parse_public(&secret_path, &b))
                            .ok()
                    });
                    HotkeyListing {
                        name,
                        address: address.map(|a| a.ss58()),
                        usable: false,
                        note: Some(format!("unreadable: {e}")),
                    }
                }
            }
        })
        .collect()
}

/// Lists wallets under `wallet_path` (public information only; decrypts nothing).
pub fn list_wallets(wallet_path: Option<&Path>) -> Result<Vec<WalletListing>> {
    let base = wallet_path
        .map(expand_home)
        .unwrap_or_else(default_wallet_path);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(WalletError::Io { path: base, source }),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let w = Wallet {
            dir: base.join(&name),
            name: name.clone(),
            hotkey_name: String::new(),
        };
        out.push(WalletListing {
            name,
            coldkey: w.coldkey_pub().ok().map(|c| c.ss58()),
            coldkey_storage: w.coldkey_encryption().ok(),
            hotkeys: list_hotkeys(&w.dir.join("hotkeys")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Substrate dev phrase's root key (no derivation path).
    const DEV_ADDRESS: &str = "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV";

    #[test]
    fn known_phrase_gives_substrate_address() {
        let seed = seed_from_phrase(
            "bottom drive obey lake curtain smoke basket hold race lonely fit walk",
            "",
        )
        .expect("phrase");
        let k = Hotkey::from_seed(&seed).expect("seed");
        assert_eq!(k.id().ss58(), DEV_ADDRESS);
    }

    #[test]
    fn create_read_and_list_wallet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Wallet::new(Some(dir.path()), "w1", "h1").expect("names");
        let created = w.create().expect("create");
        assert_eq!(created.coldkey_storage, Some(Encryption::None));
        let hk = w.hotkey().expect("hotkey");
        assert_eq!(hk.id(), created.hotkey);
        assert_eq!(w.hotkey_pub().expect("hotkeypub"), created.hotkey);
        assert_eq!(w.coldkey_pub().expect("coldkeypub"), created.coldkey);
        assert_eq!(w.coldkey_encryption().expect("coldkey"), Encryption::None);
        assert_eq!(w.coldkey().expect("coldkey").id(), created.coldkey);
        // The phrase written in the file derives the same key.
        let text = std::fs::read_to_string(w.hotkey_path()).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let phrase = v["secretPhrase"].as_str().expect("phrase");
        assert_eq!(
            Hotkey::from_seed(&seed_from_phrase(phrase, "").expect("seed"))
                .expect("key")
                .id(),
            hk.id()
        );
        assert_eq!(v["ss58Address"].as_str(), Some(hk.id().ss58().as_str()));
        // The public half holds no secret.
        let public = std::fs::read_to_string(w.hotkeypub_path()).expect("read pub");
        assert!(!public.contains("secret") && !public.contains("privateKey"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(w.hotkey_path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(w.create(), Err(WalletError::Exists(_))));
        // A second hotkey in the same wallet keeps the coldkey and asks nothing about it.
        let w2 = Wallet::new(Some(dir.path()), "w1", "h2").expect("names");
        let c2 = w2
            .create_with(|| panic!("no coldkey is created for an existing wallet"))
            .expect("second hotkey");
        assert_eq!(c2.coldkey, created.coldkey);
        assert!(c2.coldkey_phrase.is_none() && c2.coldkey_storage.is_none());
        let list = list_wallets(Some(dir.path())).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].coldkey_storage, Some(Encryption::None));
        assert_eq!(list[0].hotkeys.len(), 2);
        assert!(list[0].hotkeys.iter().all(|h| h.usable && h.note.is_none()));
        assert_eq!(list[0].hotkeys[0].address, Some(hk.id().ss58()));
        // Debug never shows secrets.
        let dbg = format!("{created:?} {hk:?} {w:?}");
        assert!(!dbg.contains(phrase));
        assert!(!dbg.contains(&hex::encode(hk.seed())));
    }

    #[test]
    fn btcli_file_with_seed_only_and_mismatch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = Hotkey::from_dev_label("x");
        let p = dir.path().join("hk");
        let text = format!(
            r#"{{"accountId": "0x{pk}", "publicKey": "0x{pk}", "secretPhrase": null, "secretSeed": "0x{s}", "ss58Address": "{a}"}}"#,
            pk = hex::encode(k.id().0),
            s = hex::encode(k.seed()),
            a = k.id().ss58()
        );
        assert_eq!(parse_keyfile(&p, &text).expect("parse").id(), k.id());
        let bad = text.replace(&hex::encode(k.id().0), &hex::encode([7u8; 32]));
        assert!(matches!(
            parse_keyfile(&p, &bad),
            Err(WalletError::Invalid { .. })
        ));
        assert!(matches!(
            parse_keyfile(&p, "$NACL..."),
            Err(WalletError::Encrypted(_))
        ));
        assert!(matches!(
            Wallet::new(None, "../x", "h"),
            Err(WalletError::BadName(_))
        ));
        // bittensor 11 adds cryptoType: 1 (sr25519) reads, 0 (ed25519) is refused by name.
        let typed = text.replacen('{', r#"{"cryptoType": 1, "#, 1);
        assert_eq!(parse_keyfile(&p, &typed).expect("sr25519").id(), k.id());
        let ed = text.replacen('{', r#"{"cryptoType": 0, "#, 1);
        let err = parse_keyfile(&p, &ed).expect_err("ed25519").to_string();
        assert!(err.contains("ed25519"), "{err}");
        // A file with only privateKey says what to do.
        let pk_only = format!(r#"{{"privateKey": "0x{}"}}"#, hex::encode([1u8; 64]));
        let err = parse_keyfile(&p, &pk_only)
            .expect_err("privateKey only")
            .to_string();
        assert!(err.contains("regen"), "{err}");
    }

    /// A coldkey that bittensor 11.3.0 (`bittensor_core.encrypt_keyfile_data`) encrypted with the
    /// password below: the Substrate dev phrase's key.
    const BITTENSOR11_COLDKEY: &[u8] = include_bytes!("wallet/bittensor11_coldkey.nacl");
    const BITTENSOR11_PASSWORD: &str = "correct horse battery staple";

    fn wallet_with_coldkey(dir: &Path, bytes: &[u8]) -> Wallet {
        let w = Wallet::new(Some(dir), "cold", "default").expect("names");
        write_private(&w.coldkey_path(), bytes).expect("coldkey");
        w
    }

    #[test]
    fn decrypts_a_bittensor11_coldkey_and_refuses_a_wrong_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = wallet_with_coldkey(dir.path(), BITTENSOR11_COLDKEY);
        assert_eq!(w.coldkey_encryption().expect("read"), Encryption::Nacl);
        let k = w
            .coldkey_with_password(BITTENSOR11_PASSWORD)
            .expect("decrypts");
        assert_eq!(k.id().ss58(), DEV_ADDRESS);
        let err = w
            .coldkey_with_password("correct horse battery stapler")
            .expect_err("wrong password");
        assert!(matches!(err, WalletError::WrongPassword(_)), "{err}");
        assert!(err.to_string().contains("wrong password"), "{err}");
        // The hotkey reader does not decrypt.
        let p = dir.path().join("hk");
        let text = String::from_utf8_lossy(BITTENSOR11_COLDKEY).to_string();
        assert!(matches!(
            parse_keyfile(&p, &text),
            Err(WalletError::Encrypted(_))
        ));
    }

    #[test]
    fn nacl_round_trip_through_create_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Wallet::new(Some(dir.path()), "enc", "h").expect("names");
        let created = w
            .create_with(|| Ok(ColdkeyStorage::Encrypted(Zeroizing::new("pw-1".into()))))
            .expect("create");
        assert_eq!(created.coldkey_storage, Some(Encryption::Nacl));
        let bytes = std::fs::read(w.coldkey_path()).expect("read");
        assert!(bytes.starts_with(b"$NACL"));
        let phrase = created.coldkey_phrase.as_deref().expect("phrase");
        assert!(!String::from_utf8_lossy(&bytes).contains(phrase));
        // Decrypted, the file is the same JSON an unencrypted coldkey holds.
        let plain = keyfile::decrypt(&w.coldkey_path(), &bytes, "pw-1").expect("decrypt");
        let v: serde_json::Value = serde_json::from_slice(&plain).expect("json");
        assert_eq!(v["secretPhrase"].as_str(), Some(phrase));
        assert_eq!(
            parse_keyfile(
                &w.coldkey_path(),
                as_text(&w.coldkey_path(), &plain).expect("text")
            )
            .expect("key")
            .id(),
            created.coldkey
        );
        assert_eq!(
            bytes.len(),
            keyfile::NACL_PREFIX.len() + keyfile::NONCE_LEN + keyfile::TAG_LEN + plain.len()
        );
        // The public files need no password.
        assert_eq!(w.coldkey_pub().expect("pub"), created.coldkey);
        let list = list_wallets(Some(dir.path())).expect("list");
        assert_eq!(list[0].coldkey_storage, Some(Encryption::Nacl));
        assert_eq!(list[0].coldkey, Some(created.coldkey.ss58()));
        // An empty password is refused before anything is derived.
        assert!(matches!(
            keyfile::encrypt(&w.coldkey_path(), b"{}", ""),
            Err(WalletError::Password(_))
        ));
    }

    #[test]
    fn truncated_damaged_and_foreign_coldkeys_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("prefix only", b"$NACL".to_vec()),
            ("short", BITTENSOR11_COLDKEY[..5 + 24 + 15].to_vec()),
            ("garbage", vec![0xa5; 300]),
            ("not utf-8 json", b"{\"secretSeed\": \"\xff\xfe\"}".to_vec()),
            ("not json", b"{ this is not json".to_vec()),
            ("ansible", b"$ANSIBLE_VAULT;1.1;AES256\n6162".to_vec()),
            ("fernet", b"gAAAAABkabcdef".to_vec()),
        ];
        for (i, (what, bytes)) in cases.into_iter().enumerate() {
            let w = wallet_with_coldkey(&dir.path().join(i.to_string()), &bytes);
            let err = w
                .coldkey_with_password("whatever")
                .expect_err(what)
                .to_string();
            match what {
                "ansible" | "fernet" => {
                    assert!(err.contains("btcli wallet regen-coldkey"), "{what}: {err}")
                }
                _ => assert!(err.contains("not a valid btcli key file"), "{what}: {err}"),
            }
        }
        // One flipped ciphertext byte fails the tag check: never a panic, never wrong JSON.
        let mut flipped = BITTENSOR11_COLDKEY.to_vec();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        let w = wallet_with_coldkey(&dir.path().join("flipped"), &flipped);
        assert!(matches!(
            w.coldkey_with_password(BITTENSOR11_PASSWORD),
            Err(WalletError::WrongPassword(_))
        ));
        // A file too large to be a key file is refused without reading it all.
        let w = wallet_with_coldkey(&dir.path().join("big"), &vec![b' '; 100_000]);
        assert!(matches!(
            w.coldkey_with_password("x"),
            Err(WalletError::Invalid { .. })
        ));
    }

    #[test]
    fn lists_a_bittensor11_wallet() {
        // The layout bittensor 11.3.0 writes: cryptoType fields, hotkeys/<name>pub.txt beside
        // each hotkey, an encrypted coldkey.
        let dir = tempfile::tempdir().expect("tempdir");
        let wd = dir.path().join("bt11");
        let hk = Hotkey::from_dev_label("hk");
        let pk = hex::encode(hk.id().0);
        let public = format!(
            r#"{{"accountId":"0x{pk}","publicKey":"0x{pk}","ss58Address":"{a}","cryptoType":1}}"#,
            a = hk.id().ss58()
        );
        let secret = format!(
            r#"{{"ss58Address":"{a}","cryptoType":1,"publicKey":"0x{pk}","accountId":"0x{pk}","secretSeed":"0x{s}"}}"#,
            a = hk.id().ss58(),
            s = hex::encode(hk.seed())
        );
        write_private(&wd.join("coldkey"), BITTENSOR11_COLDKEY).expect("write");
        let ck = HotkeyId::from_ss58(DEV_ADDRESS).expect("ss58");
        let ckpub = format!(
            r#"{{"ss58Address":"{DEV_ADDRESS}","cryptoType":1,"accountId":"0x{p}","publicKey":"0x{p}"}}"#,
            p = hex::encode(ck.0)
        );
        write_private(&wd.join("coldkeypub.txt"), ckpub.as_bytes()).expect("write");
        write_private(&wd.join("hotkeys/miner"), secret.as_bytes()).expect("write");
        write_private(&wd.join("hotkeys/minerpub.txt"), public.as_bytes()).expect("write");
        // A public half with no secret (e.g. `btcli wallet regen-hotkeypub`).
        write_private(&wd.join("hotkeys/watchpub.txt"), public.as_bytes()).expect("write");
        // A hotkey that is itself named `...pub.txt` holds a secret: it is a hotkey.
        write_private(&wd.join("hotkeys/oddpub.txt"), secret.as_bytes()).expect("write");
        // btcli's temp file while it writes.
        write_private(&wd.join("hotkeys/miner.tmp"), b"partial").expect("write");
        let list = list_wallets(Some(dir.path())).expect("list");
        assert_eq!(list.len(), 1);
        let l = &list[0];
        assert_eq!(l.coldkey.as_deref(), Some(DEV_ADDRESS));
        assert_eq!(l.coldkey_storage, Some(Encryption::Nacl));
        let names: Vec<&str> = l.hotkeys.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["miner", "oddpub.txt", "watch"]);
        let addr = Some(hk.id().ss58());
        assert!(l.hotkeys[0].usable && l.hotkeys[0].note.is_none());
        assert_eq!(l.hotkeys[0].address, addr);
        assert!(l.hotkeys[1].usable);
        assert!(!l.hotkeys[2].usable);
        assert_eq!(l.hotkeys[2].address, addr);
        let note = l.hotkeys[2].note.as_deref().unwrap_or_default();
        assert!(note.contains("public key only"), "{note}");
        // The wallet reads as a wallet: hotkey, its public half, the coldkey's public key.
        let w = Wallet::new(Some(dir.path()), "bt11", "miner").expect("names");
        assert_eq!(w.hotkey().expect("hotkey").id(), hk.id());
        assert_eq!(w.hotkey_pub().expect("hotkeypub"), hk.id());
        assert_eq!(w.coldkey_pub().expect("coldkeypub"), ck);
        let watch = Wallet::new(Some(dir.path()), "bt11", "watch").expect("names");
        assert_eq!(watch.hotkey_pub().expect("hotkeypub"), hk.id());
        assert!(matches!(watch.hotkey(), Err(WalletError::Missing(_))));
        // A public half naming a different key is noted, not trusted.
        let other = Hotkey::from_dev_label("other");
        let po = hex::encode(other.id().0);
        std::fs::write(
            wd.join("hotkeys/minerpub.txt"),
            format!(
                r#"{{"publicKey":"0x{po}","ss58Address":"{}"}}"#,
                other.id().ss58()
            ),
        )
        .expect("write");
        let list = list_wallets(Some(dir.path())).expect("list");
        let note = list[0].hotkeys[0].note.as_deref().unwrap_or_default();
        assert!(note.contains("different key"), "{note}");
    }

    #[test]
    fn weak_passwords_are_named() {
        assert!(new_password_problem("abc")
            .expect("short")
            .contains("at least 8"));
        assert!(new_password_problem("aaaaaaaaaaaa")
            .expect("one letter")
            .contains("mix"));
        assert_eq!(new_password_problem("correct horse"), None);
    }

    #[test]
    fn password_from_environment() {
        // The only test that touches the variable.
        std::env::set_var(PASSWORD_ENV, "from-env");
        let got = read_password("unused: ", true).map(|p| p.to_string());
        std::env::set_var(PASSWORD_ENV, "abc");
        let weak_new = read_password("unused: ", true);
        let weak_unlock = read_password("unused: ", false).map(|p| p.to_string());
        std::env::set_var(PASSWORD_ENV, "");
        let empty = read_password("unused: ", false);
        std::env::remove_var(PASSWORD_ENV);
        assert_eq!(got.expect("env password"), "from-env");
        // A weak password never encrypts a new coldkey, but still unlocks an old one.
        let err = weak_new.expect_err("too weak").to_string();
        assert!(
            err.contains("too weak") && err.contains("3 characters"),
            "{err}"
        );
        assert_eq!(weak_unlock.expect("unlock"), "abc");
        let err = empty.expect_err("empty").to_string();
        assert!(err.contains(PASSWORD_ENV), "{err}");
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            let err = read_password("unused: ", false)
                .expect_err("no terminal")
                .to_string();
            assert!(err.contains(PASSWORD_ENV), "{err}");
        }
    }
}
