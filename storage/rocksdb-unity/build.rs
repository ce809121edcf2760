//! Compiles librocksdb-sys's bundled RocksDB as a few unity translation units (see src/lib.rs).
//!
//! It only acts when `ROCKSDB_LIB_DIR` names this crate's directory, which is how
//! `.cargo/config.toml` tells librocksdb-sys to link a prebuilt `librocksdb` instead of compiling
//! one. With `ROCKSDB_LIB_DIR` unset (librocksdb-sys compiles RocksDB itself, as upstream does) or
//! pointing at a system RocksDB, this script does nothing.
//!
//! The defines and flags are librocksdb-sys 0.19's `build_rocksdb()` for Linux and macOS, so the
//! objects are those of the per-file build, only compiled together.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// Translation units RocksDB is split into: enough for the jobserver to keep a few cores busy,
/// few enough that each header set is parsed a handful of times instead of 343 times.
const UNITS: usize = 8;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ROCKSDB_STATIC");
    println!("cargo:rerun-if-env-changed=ROCKSDB_CXX_STD");

    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let Some(lib_dir) = env::var_os("ROCKSDB_LIB_DIR") else {
        return; // librocksdb-sys compiled RocksDB itself
    };
    if !same_dir(Path::new(&lib_dir), &manifest) {
        return; // a RocksDB built elsewhere
    }
    if env::var_os("ROCKSDB_STATIC").is_some() {
        panic!(
            "ROCKSDB_STATIC is set while ROCKSDB_LIB_DIR names {}: librocksdb-sys would look for \
             the archive before this crate builds it. Unset ROCKSDB_STATIC (the archive is linked \
             statically anyway), or unset ROCKSDB_LIB_DIR to let librocksdb-sys compile RocksDB.",
            manifest.display()
        );
    }

    let sys = PathBuf::from(env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR").expect(
        "librocksdb-sys publishes its source directory (cargo:cargo_manifest_dir); a version \
         without it cannot be used with ROCKSDB_LIB_DIR pointing here",
    ));
    let list = sys.join("rocksdb_lib_sources.txt");
    let sources =
        fs::read_to_string(&list).unwrap_or_else(|e| panic!("cannot read {}: {e}", list.display()));
    let mut files: Vec<PathBuf> = sources
        .lines()
        .map(str::trim)
        // librocksdb-sys ships a pre-generated build_version.cc at its root instead.
        .filter(|f| !f.is_empty() && *f != "util/build_version.cc")
        .map(|f| sys.join("rocksdb").join(f))
        .collect();
    files.push(sys.join("build_version.cc"));

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let per_unit = files.len().div_ceil(UNITS);
    let mut build = cc::Build::new();
    for (i, chunk) in files.chunks(per_unit).enumerate() {
        let unit = out.join(format!("rocksdb_unity_{i}.cc"));
        let body: String = chunk
            .iter()
            .map(|f| format!("#include \"{}\"\n", f.display()))
            .collect();
        // Written only when changed, so an unchanged unit keeps its timestamp.
        if fs::read_to_string(&unit).ok().as_deref() != Some(body.as_str()) {
            fs::write(&unit, body)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", unit.display()));
        }
        build.file(unit);
    }

    configure(&mut build, &sys);
    // No cargo metadata from cc: librocksdb-sys already emits `-l rocksdb` (and the C++ runtime);
    // this crate only adds the directory where that archive is found.
    build.cargo_metadata(false);
    build.compile("rocksdb");
    println!("cargo:rustc-link-search=native={}", out.display());
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// librocksdb-sys 0.19's `build_rocksdb()` settings, for the targets apiary builds on.
fn configure(build: &mut cc::Build, sys: &Path) {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let features_env = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let features: Vec<&str> = features_env.split(',').collect();

    build.cpp(true).warnings(false);
    build.include(sys.join("rocksdb/include"));
    build.include(sys.join("rocksdb"));
    build.include(sys.join("rocksdb/third-party/gtest-1.8.1/fused-src"));
    build.include(sys);
    build.define("NDEBUG", Some("1"));
    build.define("HAVE_ALIGNED_NEW", None);
    build.define("HAVE_UINT128_EXTENSION", None);

    if let Some(cpu) = rust_target_cpu() {
        match arch.as_str() {
            "x86_64" => {
                build.flag_if_supported(format!("-march={cpu}"));
            }
            "aarch64" => {
                build.flag_if_supported(format!("-mcpu={cpu}"));
            }
            _ => {}
        }
    }
    if arch == "x86_64" {
        for (feature, flag) in [
            ("sse2", "-msse2"),
            ("sse4.1", "-msse4.1"),
            ("sse4.2", "-msse4.2"),
            ("avx2", "-mavx2"),
            ("bmi1", "-mbmi"),
            ("lzcnt", "-mlzcnt"),
            ("pclmulqdq", "-mpclmul"),
        ] {
            if features.contains(&feature) {
                build.flag_if_supported(flag);
            }
        }
    } else if arch == "aarch64"
        && features.contains(&"crc")
        && features.contains(&"aes")
        && rust_target_cpu().is_none()
    {
        build.flag_if_supported("-march=armv8-a+crc+aes+crypto");
    }

    if target.contains("linux") && !target.contains("android") {
        for d in [
            "OS_LINUX",
            "ROCKSDB_PLATFORM_POSIX",
            "ROCKSDB_LIB_IO_POSIX",
            "ROCKSDB_SCHED_GETCPU_PRESENT",
            "ROCKSDB_AUXV_GETAUXVAL_PRESENT",
            "ROCKSDB_FALLOCATE_PRESENT",
            "ROCKSDB_RANGESYNC_PRESENT",
        ] {
            build.define(d, None);
        }
    } else if target.contains("darwin") {
        for d in [
            "OS_MACOSX",
            "ROCKSDB_PLATFORM_POSIX",
            "ROCKSDB_LIB_IO_POSIX",
        ] {
            build.define(d, None);
        }
    } else {
        panic!(
            "the unity RocksDB build covers Linux and macOS, not {target}: remove ROCKSDB_LIB_DIR \
             from .cargo/config.toml so that librocksdb-sys compiles RocksDB for this target"
        );
    }

    let std = env::var("ROCKSDB_CXX_STD").map_or("-std=c++20".to_owned(), |s| {
        if s.starts_with("-std=") {
            s
        } else {
            format!("-std={s}")
        }
    });
    build.flag(std);
    build.flag("-include").flag("cstdint");
}

/// `-C target-cpu=…` from the Rust flags, passed on as librocksdb-sys does.
fn rust_target_cpu() -> Option<String> {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let mut it = flags.split('\x1f');
    while let Some(flag) = it.next() {
        let value = if flag == "-C" {
            it.next().unwrap_or_default()
        } else if let Some(v) = flag.strip_prefix("-C") {
            v
        } else {
            continue;
        };
        if let Some(cpu) = value.strip_prefix("target-cpu=") {
            return Some(cpu.to_owned());
        }
    }
    None
}
