//! # apiary-data
//!
//! Tokenizers and sharded datasets cut into fixed-length pages, with a manifest every peer can
//! check. (Being written.)
