//! `apiary wallet new | show | list`: btcli-compatible wallets (see [`apiary_subtensor::wallet`]).
//!
//! Files are written with mode 0600 and never overwritten. `new` prints the mnemonics once so
//! they can be written down; nothing else ever prints or logs secret material.

use anyhow::{Context, Result};
use apiary_subtensor::wallet::{list_wallets, Wallet};
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which wallet and hotkey (as btcli names them).
#[derive(Debug, Args)]
pub struct WalletSel {
    /// Wallet name (`~/.bittensor/wallets/<wallet>`).
    #[arg(long, default_value = "default")]
    pub wallet: String,
    /// Hotkey name (`hotkeys/<hotkey>`).
    #[arg(long, default_value = "default")]
    pub hotkey: String,
    /// Wallets directory (default `~/.bittensor/wallets`).
    #[arg(long)]
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
        WalletCmd::New { sel, no_mnemonic } => {
            let w = Wallet::new(sel.wallet_path.as_deref(), &sel.wallet, &sel.hotkey)?;
            let created = w.create().context("creating the wallet")?;
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
            if created.coldkey_phrase.is_some() {
                println!("note: the coldkey file is stored unencrypted (mode 0600); keep real funds in a btcli-encrypted coldkey");
            }
            Ok(())
        }
        WalletCmd::Show { sel } => {
            let w = Wallet::new(sel.wallet_path.as_deref(), &sel.wallet, &sel.hotkey)?;
            match w.coldkey_pub() {
                Ok(c) => println!("coldkey {c}"),
                Err(e) => println!("coldkey – ({e})"),
            }
            let hk = w.hotkey()?;
            println!("hotkey  {} ({})", hk.id(), w.hotkey_path().display());
            Ok(())
        }
        WalletCmd::List { wallet_path } => {
            let list = list_wallets(wallet_path.as_deref())?;
            if list.is_empty() {
                println!(
                    "no wallets; create one with `apiary wallet new --wallet NAME --hotkey NAME`"
                );
            }
            for w in list {
                println!(
                    "{}  coldkey {}",
                    w.name,
                    w.coldkey.as_deref().unwrap_or("–")
                );
                for (name, addr) in w.hotkeys {
                    println!("  {name}  {}", addr.as_deref().unwrap_or("(unreadable)"));
                }
            }
            Ok(())
        }
    }
}
