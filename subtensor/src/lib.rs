//! # apiary-subtensor
//!
//! The Bittensor chain behind apiary's [`apiary_chain::ChainClient`]: [`SubtensorChain`] talks to
//! a subtensor node (or chopsticks running the subtensor runtime) through subxt's **dynamic**
//! API — no code generated against one runtime, every call and storage entry looked up by name
//! in the live metadata — and [`wallet`] reads and writes the wallets `btcli` keeps in
//! `~/.bittensor/wallets`.
//!
//! - [`client`]: connection with reconnect and backoff, block follower, metagraph from raw
//!   storage (`Keys`, `Uids`, `TotalHotkeyAlpha`, `ValidatorPermit`, `LastUpdate`,
//!   `BlockAtRegistration`, `Commitments.CommitmentOf`), registration, commitments, weights
//!   (rate limit checked locally; commit-reveal when the subnet enables it).
//! - [`dev`]: transfers, subnets, sudo, stake, axons, hyperparameters; dev-chain helpers.
//! - [`errors`]: runtime and pool errors mapped to [`apiary_chain::ChainError`]s that say what to do.
//! - [`wallet`]: btcli key files.

pub mod client;
pub mod dev;
pub mod errors;
pub mod timelock;
pub mod values;
pub mod wallet;

pub use client::{
    choose_weight_call, resolve_endpoint, ChainHealth, RpcBackend, SubtensorChain,
    SubtensorOptions, WeightCall, WeightCalls, FINNEY, LOCAL, TESTNET,
};
pub use wallet::Wallet;
