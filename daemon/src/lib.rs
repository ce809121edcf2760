//! # apiary-daemon
//!
//! The `apiary` binary's library: node assembly ([`node::Node`]), the admin socket
//! ([`admin`]), the opt-in Prometheus endpoint ([`metrics`]), the local swarm runner
//! ([`devnet`]), model evaluation and export ([`model_cmd`]) and the CLI ([`cli`]); the
//! subtensor backend's operator commands ([`chain_cmd`]) and btcli wallets ([`wallet_cmd`]);
//! the commands it prints for the operator ([`hints`]).
//!
//! A node is assembled in a fixed order — config validated, store opened, keys loaded, data
//! loaded, libp2p listening, hotkey registered and peer record committed on the chain, actors
//! started under the supervisor, admin socket (and metrics endpoint) bound — and torn down in
//! reverse.

pub mod admin;
pub mod chain_cmd;
pub mod cli;
pub mod corpus;
pub mod dashboard;
pub mod devnet;
pub mod doctor;
pub mod hints;
pub mod init_cmd;
pub mod keys;
pub mod metrics;
pub mod model_cmd;
pub mod node;
pub mod report;
pub mod wallet_cmd;

pub use node::{ChainSource, Node};
