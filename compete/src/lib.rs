//! # apiary-compete
//!
//! Whole-model competitions (Bittensor SN9, AI-factory): see the README's *Competitions*.
