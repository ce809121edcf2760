//! # apiary-daemon
//!
//! The `apiary` binary's library: node assembly ([`node::Node`]), the admin socket
//! ([`admin`]), the local swarm runner ([`devnet`]) and the CLI ([`cli`]).
//!
//! A node is assembled in a fixed order — config validated, store opened, keys loaded, data
//! loaded, libp2p listening, hotkey registered and peer record committed on the chain, actors
//! started under the supervisor, admin socket bound — and torn down in reverse.

pub mod admin;
pub mod cli;
pub mod devnet;
pub mod keys;
pub mod node;

pub use node::{ChainSource, Node};
