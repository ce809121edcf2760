//! # apiary-bench
//!
//! Benchmarks: each prints its measurements and ratios against a baseline measured in the same
//! run (never a timing assertion). Run with `cargo bench -p apiary-bench --bench <name>`.
