//! The RocksDB library behind `apiary-storage`, compiled as unity translation units.
//!
//! `librocksdb-sys` compiles RocksDB's 343 C++ sources one translation unit each. At the dev
//! profile's `-O0` almost all of that time is spent parsing the same standard and RocksDB headers
//! 343 times: it was ~780 s of a 943 s cold build on a 2-core machine, the build's critical path.
//! RocksDB's own Makefile has a `unity.cc` target (every library source `#include`d into one file),
//! so the sources are kept unity-clean upstream. `build.rs` here compiles the same sources, with
//! the same defines and flags, as eight such files, and `.cargo/config.toml` sets
//! `ROCKSDB_LIB_DIR` so that `librocksdb-sys` links the result instead of compiling its own.
//!
//! Nothing in this crate is called; depending on it (as `apiary-storage` does) is what puts the
//! archive on the link line. See the README's "Build time" section for the measured effect.
