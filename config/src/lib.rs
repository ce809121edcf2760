//! # apiary-config
//!
//! Everything a node needs to know before it starts, in one validated [`NodeConfig`].
//!
//! Load order: built-in defaults → TOML file (`apiary --config FILE`) → CLI flags (applied by the
//! daemon). Every section is `#[serde(default)]` so a file only names what it changes, and
//! `deny_unknown_fields` so a typo is an error rather than a silently ignored setting.
//!
//! One module per section: each section struct ([`NodeSection`], [`ChainConfig`],
//! [`NetConfig`], [`ModelConfig`], [`TrainConfig`], [`ValidatorConfig`],
//! [`CompressionConfig`], [`CheckpointConfig`], [`SupervisorConfig`], [`MetricsConfig`]) has its
//! own `validate()`
//! for the rules within it. [`NodeConfig::validate`] calls each of them, then checks the rules
//! that span sections. Every problem is a [`ConfigError`] whose message names the offending key
//! and what to do about it ([`ConfigError::key`] gives the key alone).

mod chain;
mod checkpoint;
mod competition;
mod compression;
mod error;
mod metrics;
mod model;
mod net;
mod node;
mod node_config;
mod supervisor;
mod train;
mod validator;

pub use chain::{is_loopback_endpoint, ChainBackend, ChainConfig, ChainRpc};
pub use checkpoint::CheckpointConfig;
pub use competition::{CompetitionConfig, CompetitionRule, EvalDataset};
pub use compression::CompressionConfig;
pub use error::ConfigError;
pub use metrics::MetricsConfig;
pub use model::ModelConfig;
pub use net::NetConfig;
pub use node::{NodeSection, Role};
pub use node_config::NodeConfig;
pub use supervisor::SupervisorConfig;
pub use train::{AdversaryKind, TrainConfig, UpdateRule};
pub use validator::ValidatorConfig;
