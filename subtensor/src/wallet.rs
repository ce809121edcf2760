//! Bittensor wallets as `btcli` keeps them on disk.
//!
//! A wallet is a directory `<wallet_path>/<wallet>/` (default `~/.bittensor/wallets/<wallet>/`):
//!
//! - `hotkeys/<hotkey>`: JSON `{accountId, publicKey, privateKey, secretPhrase, secretSeed,
//!   ss58Address}` — hotkeys are stored unencrypted by btcli; `secretSeed` is the 32-byte sr25519
//!   mini secret (hex, `0x`-prefixed) and `secretPhrase` the BIP-39 mnemonic it came from.
//! - `coldkeypub.txt`: JSON `{accountId, publicKey, ss58Address}` (public only).
//! - `coldkey`: the coldkey secret. btcli encrypts it (NaCl); apiary reads it only when it is
//!   unencrypted JSON, and [`Wallet::create`] writes it unencrypted with mode 0600 — create wallets
//!   that hold real funds with `btcli wallet create` instead.
//!
//! Keys derive exactly as Substrate does (`secretSeed` = first 32 bytes of
//! PBKDF2-HMAC-SHA512(entropy, "mnemonic", 2048)), so a hotkey created here has the same SS58
//! address in btcli and vice versa. Secret material never appears in `Debug` output or logs.

use apiary_chain::keys::{Hotkey, HotkeyId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Wallet problems; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// A key file is missing.
    #[error("key file {0} not found; create it with `apiary wallet new` (or `btcli wallet new_hotkey`), or check chain.wallet / chain.hotkey / chain.wallet_path")]
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
    /// The key file is encrypted (btcli coldkeys are).
    #[error("key file {0} is encrypted; apiary cannot decrypt btcli coldkeys — use btcli for operations that need the coldkey")]
    Encrypted(PathBuf),
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
    #[serde(rename = "secretPhrase", default)]
    secret_phrase: Option<String>,
    #[serde(rename = "secretSeed", default)]
    secret_seed: Option<String>,
    #[serde(rename = "ss58Address", default)]
    ss58_address: Option<String>,
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WalletError::Missing(path.to_path_buf())
        } else {
            WalletError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
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

/// Parses a btcli key file with a secret (hotkey or unencrypted coldkey).
pub fn parse_keyfile(path: &Path, text: &str) -> Result<Hotkey> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        return Err(WalletError::Encrypted(path.to_path_buf()));
    }
    let invalid = |reason: String| WalletError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let json: KeyFileJson =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let mut seed = match (&json.secret_seed, &json.secret_phrase) {
        (Some(s), _) => {
            let bytes =
                hex::decode(strip0x(s)).map_err(|_| invalid("secretSeed is not hex".into()))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| invalid("secretSeed must be 32 bytes".into()))?
        }
        (None, Some(p)) => seed_from_phrase(p, "")
            .map_err(|e| invalid(format!("secretPhrase is not a BIP-39 phrase: {e}")))?,
        (None, None) => {
            return Err(invalid(
                "it has neither secretSeed nor secretPhrase (is it a public-only file?)".into(),
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

fn keyfile_json(key: &Hotkey, phrase: Option<String>) -> Result<Vec<u8>> {
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
    };
    serde_json::to_vec(&json).map_err(|e| WalletError::Invalid {
        path: PathBuf::new(),
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

    /// `coldkeypub.txt`.
    pub fn coldkeypub_path(&self) -> PathBuf {
        self.dir.join("coldkeypub.txt")
    }

    /// `coldkey`.
    pub fn coldkey_path(&self) -> PathBuf {
        self.dir.join("coldkey")
    }

    /// Loads the hotkey.
    pub fn hotkey(&self) -> Result<Hotkey> {
        let p = self.hotkey_path();
        parse_keyfile(&p, &read(&p)?)
    }

    /// Reads the coldkey's public address from `coldkeypub.txt`.
    pub fn coldkey_pub(&self) -> Result<HotkeyId> {
        let p = self.coldkeypub_path();
        let text = read(&p)?;
        let invalid = |reason: String| WalletError::Invalid {
            path: p.clone(),
            reason,
        };
        let json: KeyFileJson =
            serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if let Some(pk) = json.public_key.as_ref().or(json.account_id.as_ref()) {
            let b = hex::decode(strip0x(pk)).map_err(|_| invalid("publicKey is not hex".into()))?;
            let a = <[u8; 32]>::try_from(b.as_slice())
                .map_err(|_| invalid("publicKey must be 32 bytes".into()))?;
            return Ok(HotkeyId(a));
        }
        match &json.ss58_address {
            Some(s) => HotkeyId::from_ss58(s).map_err(|e| invalid(e.to_string())),
            None => Err(invalid("no publicKey or ss58Address".into())),
        }
    }

    /// Loads the coldkey secret, if it is stored unencrypted.
    pub fn coldkey(&self) -> Result<Hotkey> {
        let p = self.coldkey_path();
        parse_keyfile(&p, &read(&p)?)
    }

    /// Writes the hotkey file for `key` (mode 0600; refuses to overwrite).
    pub fn write_hotkey(&self, key: &Hotkey, phrase: Option<String>) -> Result<()> {
        let mut bytes = keyfile_json(key, phrase)?;
        let r = write_private(&self.hotkey_path(), &bytes);
        bytes.zeroize();
        r
    }

    /// Writes `coldkeypub.txt` and an unencrypted `coldkey` for `key` (mode 0600).
    pub fn write_coldkey(&self, key: &Hotkey, phrase: Option<String>) -> Result<()> {
        let id = key.id();
        let public = KeyFileJson {
            account_id: Some(format!("0x{}", hex::encode(id.0))),
            public_key: Some(format!("0x{}", hex::encode(id.0))),
            private_key: None,
            secret_phrase: None,
            secret_seed: None,
            ss58_address: Some(id.ss58()),
        };
        let pub_bytes = serde_json::to_vec(&public).map_err(|e| WalletError::Invalid {
            path: self.coldkeypub_path(),
            reason: e.to_string(),
        })?;
        let mut bytes = keyfile_json(key, phrase)?;
        let r = write_private(&self.coldkey_path(), &bytes);
        bytes.zeroize();
        r?;
        write_private(&self.coldkeypub_path(), &pub_bytes)
    }

    /// Creates the hotkey (and the coldkey when the wallet has none) with fresh random keys.
    pub fn create(&self) -> Result<Created> {
        if self.hotkey_path().exists() {
            return Err(WalletError::Exists(self.hotkey_path()));
        }
        let (coldkey, coldkey_phrase) = if self.coldkeypub_path().exists() {
            (self.coldkey_pub()?, None)
        } else {
            let (ck, phrase) = generate_with_phrase()?;
            self.write_coldkey(&ck, Some(phrase.clone()))?;
            (ck.id(), Some(phrase))
        };
        let (hk, hotkey_phrase) = generate_with_phrase()?;
        self.write_hotkey(&hk, Some(hotkey_phrase.clone()))?;
        Ok(Created {
            coldkey,
            hotkey: hk.id(),
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
    /// `(hotkey name, address)`; the address is `None` when the file is unreadable.
    pub hotkeys: Vec<(String, Option<String>)>,
}

/// Lists wallets under `wallet_path` (public information only).
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
        let coldkey = w.coldkey_pub().ok().map(|c| c.ss58());
        let mut hotkeys = Vec::new();
        if let Ok(rd) = std::fs::read_dir(w.dir.join("hotkeys")) {
            let mut hk: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            hk.sort();
            for h in hk {
                let wh = Wallet {
                    hotkey_name: h.clone(),
                    ..w.clone()
                };
                hotkeys.push((h, wh.hotkey().ok().map(|k| k.id().ss58())));
            }
        }
        out.push(WalletListing {
            name,
            coldkey,
            hotkeys,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_phrase_gives_substrate_address() {
        // Substrate's well-known dev phrase: its root key (no derivation path) has this address.
        let seed = seed_from_phrase(
            "bottom drive obey lake curtain smoke basket hold race lonely fit walk",
            "",
        )
        .expect("phrase");
        let k = Hotkey::from_seed(&seed).expect("seed");
        assert_eq!(
            k.id().ss58(),
            "5DfhGyQdFobKM8NsWvEeAKk5EQQgYe9AydgJ7rMB6E1EqRzV"
        );
    }

    #[test]
    fn create_read_and_list_wallet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Wallet::new(Some(dir.path()), "w1", "h1").expect("names");
        let created = w.create().expect("create");
        let hk = w.hotkey().expect("hotkey");
        assert_eq!(hk.id(), created.hotkey);
        assert_eq!(w.coldkey_pub().expect("coldkeypub"), created.coldkey);
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
        // A second hotkey in the same wallet keeps the coldkey.
        let w2 = Wallet::new(Some(dir.path()), "w1", "h2").expect("names");
        let c2 = w2.create().expect("second hotkey");
        assert_eq!(c2.coldkey, created.coldkey);
        assert!(c2.coldkey_phrase.is_none());
        let list = list_wallets(Some(dir.path())).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].hotkeys.len(), 2);
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
    }
}
