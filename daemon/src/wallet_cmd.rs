//! `apiary wallet new | show | list`: btcli-compatible wallets (see [`apiary_subtensor::wallet`]).
//!
//! Files are written with mode 0600 and never overwritten. `new` encrypts the coldkey with a
//! password as btcli does (asked twice on the terminal, or taken from `APIARY_WALLET_PASSWORD`);
//! `--unencrypted-coldkey` (btcli's `--no-password`) leaves it plain for test keys. `new` prints
//! the mnemonics once so they can be written down; nothing else ever prints or logs secret
//! material, and `show` and `list` decrypt nothing.

use anyhow::{Context, Result};
use apiary_subtensor::wallet::keyfile::Encryption;
use apiary_subtensor::wallet::{
    list_wallets, read_password, ColdkeyStorage, Wallet, WalletListing, PASSWORD_ENV,
};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which wallet and hotkey (as btcli names them).
#[derive(Debug, Args)]
pub struct WalletSel {
    /// Wallet name (`~/.bittensor/wallets/<wallet>`; btcli's `--wallet.name` works too).
    #[arg(long, alias = "wallet.name", default_value = "default")]
    pub wallet: String,
    /// Hotkey name (`hotkeys/<hotkey>`; btcli's `--wallet.hotkey` works too).
    #[arg(long, alias = "wallet.hotkey", default_value = "default")]
    pub hotkey: String,
    /// Wallets directory (default `~/.bittensor/wallets`; btcli's `--wallet.path` works too).
    #[arg(long, alias = "wallet.path")]
    pub wallet_path: Option<PathBuf>,
}

/// `apiary wallet …`.
#[derive(Debug, Subcommand)]
pub enum WalletCmd {
    /// Create a hotkey (and the wallet's coldkey if it has none); prints the mnemonics once.
    New {
        /// Which wallet and hotkey.
        #[command(flatten)]
        sel: WalletSel,
        /// Do not print the mnemonics (e.g. for scripted test wallets).
        #[arg(long)]
        no_mnemonic: bool,
        /// Store a new coldkey unencrypted (plain JSON, mode 0600) instead of encrypting it with
        /// a password: for test keys only, since anyone who can read the file can spend from it
        /// (btcli's `--no-password`).
        #[arg(long, visible_alias = "no-password")]
        unencrypted_coldkey: bool,
    },
    /// Show a wallet's coldkey and hotkey addresses.
    Show {
        /// Which wallet and hotkey.
        #[command(flatten)]
        sel: WalletSel,
    },
    /// List wallets and their hotkeys.
    List {
        /// Wallets directory (default `~/.bittensor/wallets`).
        #[arg(long)]
        wallet_path: Option<PathBuf>,
    },
}

/// Runs a wallet command, printing to stdout.
pub fn run(cmd: WalletCmd) -> Result<()> {
    match cmd {
        WalletCmd::New {
            sel,
            no_mnemonic,
            unencrypted_coldkey,
        } => {
            let w = Wallet::new(sel.wallet_path.as_deref(), &sel.wallet, &sel.hotkey)?;
            let created = w
                .create_with(|| {
                    if unencrypted_coldkey {
                        return Ok(ColdkeyStorage::Unencrypted);
                    }
                    read_password("Password to encrypt the new coldkey: ", true)
                        .map(ColdkeyStorage::Encrypted)
                })
                .with_context(|| {
                    if unencrypted_coldkey {
                        "creating the wallet".to_string()
                    } else {
                        format!("creating the wallet (its coldkey is encrypted with a password from {PASSWORD_ENV} or the terminal; for a test key, --unencrypted-coldkey stores it unencrypted)")
                    }
                })?;
            println!("wallet  {}", w.dir.display());
            println!("coldkey {}", created.coldkey);
            println!("hotkey  {} ({})", created.hotkey, w.hotkey_path().display());
            if !no_mnemonic {
                if let Some(p) = &created.coldkey_phrase {
                    println!("coldkey mnemonic (write it down; it is not shown again): {p}");
                }
                println!(
                    "hotkey mnemonic (write it down; it is not shown again): {}",
                    created.hotkey_phrase
                );
            }
            match created.coldkey_storage {
                Some(Encryption::None) => println!("note: the coldkey file is stored unencrypted (mode 0600): a test key; keep real funds in an encrypted coldkey (`apiary wallet new` without --unencrypted-coldkey)"),
                Some(_) => println!("coldkey encrypted (btcli's NaCl format); `apiary chain register` asks for the password"),
                None => {}
            }
            Ok(())
        }
        WalletCmd::Show { sel } => {
            let w = Wallet::new(sel.wallet_path.as_deref(), &sel.wallet, &sel.hotkey)?;
            match w.coldkey_pub() {
                Ok(c) => println!(
                    "coldkey {c} ({})",
                    coldkey_storage(w.coldkey_encryption().ok())
                ),
                Err(e) => println!("coldkey – ({e})"),
            }
            match w.hotkey() {
                Ok(hk) => println!("hotkey  {} ({})", hk.id(), w.hotkey_path().display()),
                // A public half alone (`<hotkey>pub.txt`) still names the address.
                Err(e) => match w.hotkey_pub() {
                    Ok(id) => println!(
                        "hotkey  {id} (public key only, {}; cannot sign: {e})",
                        w.hotkeypub_path().display()
                    ),
                    Err(_) => return Err(e.into()),
                },
            }
            Ok(())
        }
        WalletCmd::List { wallet_path } => {
            print!("{}", render_list(&list_wallets(wallet_path.as_deref())?));
            Ok(())
        }
    }
}

/// How a coldkey file is stored, for `show` and `list`.
fn coldkey_storage(e: Option<Encryption>) -> &'static str {
    match e {
        Some(Encryption::Nacl) => "encrypted",
        Some(Encryption::None) => "unencrypted",
        Some(Encryption::AnsibleVault) => "encrypted, old Ansible Vault format: convert with btcli",
        Some(Encryption::Legacy) => "encrypted, old Fernet format: convert with btcli",
        Some(Encryption::Unknown) => "unreadable coldkey file",
        None => "no coldkey file",
    }
}

/// The text `apiary wallet list` prints: each wallet with its coldkey (and how it is stored),
/// then its hotkeys; a `<name>pub.txt` file shows as the public key of hotkey `<name>`.
pub fn render_list(list: &[WalletListing]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str(
            "no wallets; create one with `apiary wallet new --wallet NAME --hotkey NAME`\n",
        );
    }
    for w in list {
        let _ = writeln!(
            out,
            "{}  coldkey {} ({})",
            w.name,
            w.coldkey.as_deref().unwrap_or("–"),
            coldkey_storage(w.coldkey_storage)
        );
        for h in &w.hotkeys {
            let addr = h.address.as_deref().unwrap_or("–");
            match &h.note {
                Some(note) => {
                    let _ = writeln!(out, "  {}  {addr}  ({note})", h.name);
                }
                None => {
                    let _ = writeln!(out, "  {}  {addr}", h.name);
                }
            }
        }
    }
    out
}
