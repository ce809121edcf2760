//! A model as content-addressed pieces.
//!
//! A model directory is described by a [`ModelManifest`]: per allowed file its size and the
//! blake3 of each `piece_bytes`-sized piece (the last piece of a file may be shorter). The
//! manifest's canonical JSON ([`ModelManifest::to_bytes`]) hashes to the model id
//! ([`ModelManifest::id`]); a miner commits [`commit_digest`] of that id and its hotkey, so a
//! copied manifest cannot be claimed by another hotkey with the same commitment.
//!
//! Manifests arrive from the network: [`ModelManifest::from_bytes`] validates everything
//! (and never panics) before a single piece is fetched.

use crate::{b3, CompeteError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// The manifest format this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Largest encoded manifest accepted. 8 MiB holds ~120 000 pieces, e.g. a 64 GiB model in
/// 1 MiB pieces; anything larger is not a model this network evaluates.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;

/// Largest single file a manifest may declare (1 TiB); a guard against absurd sizes that would
/// overflow piece arithmetic, not a policy (the policy is `max_model_bytes`).
const MAX_FILE_BYTES: u64 = 1 << 40;

/// Largest safetensors header read when counting parameters (the format's own limit is 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Largest `config.json` read while packaging.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";

/// One file of a model: its name, size and piece hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Plain file name (`config.json`, `model.safetensors`, `model-00001-of-00002.safetensors`,
    /// `model.safetensors.index.json`, `tokenizer.json`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 (lowercase hex) of each piece, in file order.
    pub pieces: Vec<String>,
}

/// What a miner publishes: the model's files as pieces plus its declared properties, which
/// validators check cheaply before fetching anything ([`crate::check_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The competition id.
    pub competition: String,
    /// `config.json`'s `model_type`.
    pub model_type: String,
    /// Parameter count as the model loads (tied embeddings count twice: apiary evaluates an
    /// untied copy).
    pub num_params: u64,
    /// `bytes` (no `tokenizer.json`) or the lowercase hex blake3 of `tokenizer.json`.
    pub tokenizer: String,
    /// Size of every piece but the last of each file. Recorded so a fetcher knows each piece's
    /// exact length before asking for it.
    pub piece_bytes: u64,
    /// The files, sorted by name.
    pub files: Vec<FileEntry>,
}

impl ModelManifest {
    /// Canonical encoding: compact JSON with the fields in declaration order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing strings, integers and vectors of them cannot fail; an empty encoding
        // would in any case be refused by `from_bytes`.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates a manifest received from the network: at most
    /// [`MAX_MANIFEST_BYTES`], canonical encoding (so the id is the hash of the bytes received),
    /// known version, sane ids, allowed file names forming one loadable model, piece size in
    /// `1..=max_piece_bytes` and piece counts matching the sizes. The total size is checked
    /// separately ([`ModelManifest::check_size`]). Never panics.
    pub fn from_bytes(bytes: &[u8], max_piece_bytes: u64) -> Result<ModelManifest> {
        let bad = |m: String| Err(CompeteError::Manifest(m));
        if bytes.len() > MAX_MANIFEST_BYTES {
            return bad(format!(
                "it is {} bytes, more than {MAX_MANIFEST_BYTES}",
                bytes.len()
            ));
        }
        let m: ModelManifest = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(e) => return bad(format!("not a manifest: {e}")),
        };
        m.validate(max_piece_bytes)?;
        if m.to_bytes() != bytes {
            return bad("not in canonical form (compact JSON, fields in order)".into());
        }
        Ok(m)
    }

    /// Checks every field but the total size (see [`ModelManifest::from_bytes`]).
    fn validate(&self, max_piece_bytes: u64) -> Result<()> {
        let bad = |m: String| Err(CompeteError::Manifest(m));
        if self.version != MANIFEST_VERSION {
            return bad(format!(
                "version {} (this node reads version {MANIFEST_VERSION}; upgrade apiary)",
                self.version
            ));
        }
        if !is_id(&self.competition, 32) {
            return bad(format!("competition id {:?}", self.competition));
        }
        if !is_id(&self.model_type, 64) {
            return bad(format!("model_type {:?}", self.model_type));
        }
        if self.tokenizer != "bytes" && !is_hex32(&self.tokenizer) {
            return bad(format!(
                "tokenizer {:?} is neither `bytes` nor a lowercase hex blake3",
                self.tokenizer
            ));
        }
        if self.piece_bytes == 0 || self.piece_bytes > max_piece_bytes {
            return bad(format!(
                "piece_bytes = {} is outside 1..={max_piece_bytes}",
                self.piece_bytes
            ));
        }
        if let Some(w) = self.files.windows(2).find(|w| w[0].name >= w[1].name) {
            return bad(format!(
                "files are not sorted and unique ({:?} then {:?})",
                w[0].name, w[1].name
            ));
        }
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        check_file_set(&names).or_else(bad)?;
        for f in &self.files {
            if f.size > MAX_FILE_BYTES {
                return bad(format!("{} declares {} bytes", f.name, f.size));
            }
            let want = f.size.div_ceil(self.piece_bytes);
            if f.pieces.len() as u64 != want {
                return bad(format!(
                    "{} has {} pieces but {} bytes in pieces of {} need {want}",
                    f.name,
                    f.pieces.len(),
                    f.size,
                    self.piece_bytes
                ));
            }
            if let Some(i) = f.pieces.iter().position(|p| !is_hex32(p)) {
                return bad(format!(
                    "piece {i} of {} is not a lowercase hex blake3",
                    f.name
                ));
            }
        }
        Ok(())
    }

    /// The model id: `blake3(self.to_bytes())`.
    pub fn id(&self) -> [u8; 32] {
        b3(&self.to_bytes())
    }

    /// Sum of the file sizes (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |acc, f| acc.saturating_add(f.size))
    }

    /// Every piece id, file by file in order. Entries that are not valid hex (only possible in
    /// a manifest that was never validated) are skipped.
    pub fn piece_ids(&self) -> Vec<[u8; 32]> {
        self.files
            .iter()
            .flat_map(|f| f.pieces.iter().filter_map(|p| decode_hex32(p)))
            .collect()
    }

    /// [`CompeteError::TooLarge`] when the files add up to more than `max_model_bytes`.
    pub fn check_size(&self, max_model_bytes: u64) -> Result<()> {
        let total = self.total_bytes();
        if total > max_model_bytes {
            return Err(CompeteError::TooLarge {
                total,
                max: max_model_bytes,
            });
        }
        Ok(())
    }
}

/// What a miner commits on chain: `blake3(model_id ‖ hotkey)`.
pub fn commit_digest(model_id: &[u8; 32], hotkey: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(model_id);
    h.update(hotkey);
    *h.finalize().as_bytes()
}

/// Letters, digits, `-`, `_`; 1 to `max` characters.
fn is_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// 64 lowercase hex digits.
fn is_hex32(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// `model-<digits>-of-<digits>.safetensors`, as transformers names shards.
fn is_shard(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .and_then(|r| r.split_once("-of-"))
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Whether `name` is a file a model package may hold. Only fixed plain names, so no path
/// separator or `..` can ever reach a file system call.
pub(crate) fn allowed_name(name: &str) -> bool {
    matches!(name, CONFIG | SINGLE | INDEX | TOKENIZER) || is_shard(name)
}

/// The files make one loadable model: allowed names, `config.json`, and either
/// `model.safetensors` alone or an index with at least one shard (what `load_hf_dir` reads).
fn check_file_set(names: &[&str]) -> std::result::Result<(), String> {
    if let Some(n) = names.iter().find(|n| !allowed_name(n)) {
        return Err(format!(
            "file {n:?} is not allowed (only config.json, model.safetensors, \
             model-NNNNN-of-NNNNN.safetensors, model.safetensors.index.json, tokenizer.json)"
        ));
    }
    let has = |n: &str| names.contains(&n);
    let shards = names.iter().filter(|n| is_shard(n)).count();
    if !has(CONFIG) {
        return Err("config.json is missing".into());
    }
    match (has(SINGLE), has(INDEX), shards) {
        (true, false, 0) | (false, true, 1..) => Ok(()),
        (false, false, 0) => Err("no model.safetensors (or index and shards)".into()),
        _ => Err(
            "give either model.safetensors alone or model.safetensors.index.json with its \
             model-NNNNN-of-NNNNN.safetensors shards"
                .into(),
        ),
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> CompeteError {
    CompeteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads until `buf` is full or the reader is exhausted; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Element count per tensor in a safetensors header (the JSON after the 8-byte length),
/// skipping `__metadata__` and the rotary caches `load_hf_dir` ignores.
pub(crate) fn header_elements(header: &[u8]) -> std::result::Result<BTreeMap<String, u64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("bad safetensors header: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("the safetensors header is not a JSON object")?;
    let mut out = BTreeMap::new();
    for (name, t) in obj {
        if name == "__metadata__" || name.ends_with("rotary_emb.inv_freq") {
            continue;
        }
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| format!("tensor {name} has no shape"))?;
        let mut n = 1u64;
        for d in shape {
            n = d
                .as_u64()
                .and_then(|d| n.checked_mul(d))
                .ok_or_else(|| format!("tensor {name} has a bad shape"))?;
        }
        out.insert(name.clone(), n);
    }
    Ok(out)
}

/// Parameters as `load_hf_dir` loads them: every tensor, plus a copy of the embedding when
/// `lm_head.weight` is absent (tied embeddings become an untied copy).
pub(crate) fn loaded_param_count(tensors: &BTreeMap<String, u64>) -> u64 {
    let sum = tensors.values().fold(0u64, |a, &n| a.saturating_add(n));
    match (
        tensors.get("lm_head.weight"),
        tensors.get("model.embed_tokens.weight"),
    ) {
        (None, Some(&e)) => sum.saturating_add(e),
        _ => sum,
    }
}

/// Reads the header of the safetensors file at `path` (never the tensor data).
fn read_header_elements(path: &Path, name: &str) -> Result<BTreeMap<String, u64>> {
    let err = |message: String| CompeteError::Package {
        file: name.into(),
        message,
    };
    let mut f = File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SAFETENSORS_HEADER {
        return Err(err(format!("a {len}-byte safetensors header is too large")));
    }
    let mut header = Vec::new();
    f.take(len)
        .read_to_end(&mut header)
        .map_err(|e| io("cannot read", path, e))?;
    if header.len() as u64 != len {
        return Err(err("the safetensors header is truncated".into()));
    }
    header_elements(&header).map_err(err)
}

/// `model_type` of the `config.json` at `path`.
fn read_model_type(path: &Path) -> Result<String> {
    let err = |message: String| CompeteError::Package {
        file: CONFIG.into(),
        message,
    };
    let mut text = Vec::new();
    File::open(path)
        .map_err(|e| io("cannot open", path, e))?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| io("cannot read", path, e))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    v.get("model_type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| err("has no string `model_type` (e.g. \"llama\")".into()))
}

/// Cuts the model directory `dir` into pieces of `piece_bytes` and returns its manifest for
/// `competition`. Only the allowed files are read (other files are ignored), in name order and
/// piece by piece (a file is never held in memory whole); `put(blake3(piece), piece)` is
/// called for every piece. `num_params` comes from the safetensors headers, `model_type` from
/// `config.json`, `tokenizer` from `tokenizer.json` (or `bytes` without one).
pub fn package_dir<E: Display>(
    dir: &Path,
    competition: &str,
    piece_bytes: usize,
    mut put: impl FnMut([u8; 32], &[u8]) -> std::result::Result<(), E>,
) -> Result<ModelManifest> {
    if piece_bytes == 0 {
        return Err(CompeteError::Manifest("piece_bytes must be > 0".into()));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))? {
        let entry = entry.map_err(|e| io("cannot list", dir, e))?;
        let is_file = entry
            .file_type()
            .map_err(|e| io("cannot stat", &entry.path(), e))?
            .is_file();
        match entry.file_name().into_string() {
            Ok(name) if is_file && allowed_name(&name) => names.push(name),
            _ => tracing::debug!(file = ?entry.path(), "not part of a model package; skipped"),
        }
    }
    names.sort();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    check_file_set(&refs).map_err(|message| CompeteError::Package {
        file: dir.display().to_string(),
        message,
    })?;

    let model_type = read_model_type(&dir.join(CONFIG))?;
    let mut tensors = BTreeMap::new();
    for name in names.iter().filter(|n| n.ends_with(".safetensors")) {
        for (t, n) in read_header_elements(&dir.join(name), name)? {
            if tensors.insert(t.clone(), n).is_some() {
                return Err(CompeteError::Package {
                    file: name.clone(),
                    message: format!("tensor {t} also appears in another shard"),
                });
            }
        }
    }

    let mut buf = vec![0u8; piece_bytes];
    let mut files = Vec::with_capacity(names.len());
    let mut tokenizer = "bytes".to_string();
    for name in names {
        let path = dir.join(&name);
        let mut f = File::open(&path).map_err(|e| io("cannot open", &path, e))?;
        let mut whole = blake3::Hasher::new();
        let (mut size, mut pieces) = (0u64, Vec::new());
        loop {
            let n = read_full(&mut f, &mut buf).map_err(|e| io("cannot read", &path, e))?;
            if n == 0 {
                break;
            }
            let piece = &buf[..n];
            whole.update(piece);
            let id = b3(piece);
            put(id, piece).map_err(|e| CompeteError::Store {
                file: name.clone(),
                piece: pieces.len(),
                message: e.to_string(),
            })?;
            pieces.push(hex::encode(id));
            size += n as u64;
        }
        if name == TOKENIZER {
            tokenizer = whole.finalize().to_hex().to_string();
        }
        files.push(FileEntry { name, size, pieces });
    }
    let m = ModelManifest {
        version: MANIFEST_VERSION,
        competition: competition.into(),
        model_type,
        num_params: loaded_param_count(&tensors),
        tokenizer,
        piece_bytes: piece_bytes as u64,
        files,
    };
    // What we publish must pass what every validator checks.
    m.validate(m.piece_bytes)?;
    Ok(m)
}

/// Writes every file of `m` into `out_dir` (created if needed), fetching pieces with `get`.
/// Each piece must have the expected length and blake3, else [`CompeteError::BadPiece`] names
/// the file and piece. A file is written under a temporary name and renamed once complete, so
/// a failure never leaves a partial file under its final name.
pub fn assemble<E: Display>(
    m: &ModelManifest,
    out_dir: &Path,
    mut get: impl FnMut(&[u8; 32]) -> std::result::Result<Vec<u8>, E>,
) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| io("cannot create", out_dir, e))?;
    for f in &m.files {
        if !allowed_name(&f.name) {
            return Err(CompeteError::Manifest(format!(
                "file {:?} is not allowed",
                f.name
            )));
        }
        let tmp = out_dir.join(format!(".{}.part", f.name));
        let result = write_file(m, f, &tmp, &mut get);
        let result = result.and_then(|()| {
            let dst = out_dir.join(&f.name);
            std::fs::rename(&tmp, &dst).map_err(|e| io("cannot rename into", &dst, e))
        });
        if let Err(e) = result {
            // Best effort: the error that matters is `e`.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    Ok(())
}

/// Writes file `f` of `m` to `path`, verifying every piece.
fn write_file<E: Display>(
    m: &ModelManifest,
    f: &FileEntry,
    path: &Path,
    get: &mut impl FnMut(&[u8; 32]) -> std::result::Result<Vec<u8>, E>,
) -> Result<()> {
    let bad = |piece: usize, message: String| CompeteError::BadPiece {
        file: f.name.clone(),
        piece,
        message,
    };
    let mut out = File::create(path).map_err(|e| io("cannot create", path, e))?;
    let mut written = 0u64;
    for (i, hex_id) in f.pieces.iter().enumerate() {
        let id = decode_hex32(hex_id)
            .ok_or_else(|| CompeteError::Manifest(format!("piece {i} of {} is not hex", f.name)))?;
        let data = get(&id).map_err(|e| CompeteError::Fetch {
            file: f.name.clone(),
            piece: i,
            message: e.to_string(),
        })?;
        let want = m.piece_bytes.min(f.size.saturating_sub(written));
        if data.len() as u64 != want {
            return Err(bad(
                i,
                format!("{} bytes where {want} were expected", data.len()),
            ));
        }
        let got = b3(&data);
        if got != id {
            return Err(bad(
                i,
                format!("blake3 {} instead of {hex_id}", hex::encode(got)),
            ));
        }
        out.write_all(&data)
            .map_err(|e| io("cannot write", path, e))?;
        written += want;
    }
    if written != f.size {
        return Err(CompeteError::Manifest(format!(
            "{} declares {} bytes but its pieces hold {written}",
            f.name, f.size
        )));
    }
    out.sync_all().map_err(|e| io("cannot sync", path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn manifest() -> ModelManifest {
        let p = |c: char| c.to_string().repeat(64);
        ModelManifest {
            version: MANIFEST_VERSION,
            competition: "tiny".into(),
            model_type: "llama".into(),
            num_params: 1000,
            tokenizer: "bytes".into(),
            piece_bytes: 10,
            files: vec![
                FileEntry {
                    name: "config.json".into(),
                    size: 5,
                    pieces: vec![p('a')],
                },
                FileEntry {
                    name: "model.safetensors".into(),
                    size: 25,
                    pieces: vec![p('b'), p('c'), p('d')],
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_and_hashes_its_bytes() {
        let m = manifest();
        let bytes = m.to_bytes();
        assert_eq!(ModelManifest::from_bytes(&bytes, 10).unwrap(), m);
        assert_eq!(m.id(), *blake3::hash(&bytes).as_bytes());
        assert_eq!(m.total_bytes(), 30);
        let ids = m.piece_ids();
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[0], [0xaa; 32]);
        assert_eq!(ids[3], [0xdd; 32]);
        assert!(m.check_size(30).is_ok());
        assert!(matches!(
            m.check_size(29),
            Err(CompeteError::TooLarge { total: 30, max: 29 })
        ));
    }

    #[test]
    fn manifest_refuses_bad_fields() {
        let refused = |f: &dyn Fn(&mut ModelManifest)| {
            let mut m = manifest();
            f(&mut m);
            matches!(
                ModelManifest::from_bytes(&m.to_bytes(), 10),
                Err(CompeteError::Manifest(_))
            )
        };
        assert!(!refused(&|_| {}));
        assert!(refused(&|m| m.version = 2));
        assert!(refused(&|m| m.competition = "a/b".into()));
        assert!(refused(&|m| m.tokenizer = "A".repeat(64)));
        assert!(refused(&|m| m.piece_bytes = 11)); // above the limit given
        assert!(refused(&|m| m.piece_bytes = 0));
        assert!(refused(&|m| m.files[1].size = 31)); // needs 4 pieces
        assert!(refused(&|m| m.files[1].size = 20)); // needs 2 pieces
        assert!(refused(&|m| m.files[1].pieces[0] = "zz".into()));
        assert!(refused(&|m| m.files[1].name = "../model.safetensors".into()));
        assert!(refused(
            &|m| m.files[1].name = "sub/model.safetensors".into()
        ));
        assert!(refused(&|m| m.files.swap(0, 1))); // unsorted
        assert!(refused(&|m| {
            m.files.remove(0); // no config.json
        }));
        assert!(refused(&|m| m.files[1].size = MAX_FILE_BYTES + 1));
    }

    #[test]
    fn manifest_refuses_non_canonical_or_garbage_bytes() {
        let m = manifest();
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert!(ModelManifest::from_bytes(&pretty, 10).is_err());
        let mut extra: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        extra["more"] = 1.into();
        assert!(ModelManifest::from_bytes(&serde_json::to_vec(&extra).unwrap(), 10).is_err());
        for bytes in [&b""[..], b"{", b"null", b"[]", &[0xff, 0xfe, 0x00]] {
            assert!(ModelManifest::from_bytes(bytes, 10).is_err());
        }
        // Every truncation of a valid manifest is refused without panicking.
        let bytes = m.to_bytes();
        for n in 0..bytes.len() {
            assert!(ModelManifest::from_bytes(&bytes[..n], 10).is_err());
        }
        assert!(ModelManifest::from_bytes(&vec![b' '; MAX_MANIFEST_BYTES + 1], 10).is_err());
        // Any single-byte change is refused or decodes to a manifest that re-encodes to it.
        for i in 0..bytes.len() {
            for b in [b'"', b'0', b'9', b'a', b'/', b'.', b'}', 0x80] {
                let mut v = bytes.clone();
                v[i] = b;
                if let Ok(m2) = ModelManifest::from_bytes(&v, 10) {
                    assert_eq!(m2.to_bytes(), v);
                }
            }
        }
    }

    #[test]
    fn file_sets() {
        assert!(check_file_set(&["config.json", "model.safetensors"]).is_ok());
        assert!(check_file_set(&["config.json", "model.safetensors", "tokenizer.json"]).is_ok());
        let sharded = [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ];
        assert!(check_file_set(&sharded).is_ok());
        assert!(check_file_set(&sharded[..3]).is_err()); // shards without index
        assert!(check_file_set(&["config.json"]).is_err());
        assert!(check_file_set(&["model.safetensors"]).is_err());
        assert!(check_file_set(&["config.json", "model.safetensors", "README.md"]).is_err());
        assert!(check_file_set(&[
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json"
        ])
        .is_err());
        assert!(!allowed_name("model-1-of-2.safetensors.."));
        assert!(!allowed_name("model--of-2.safetensors"));
        assert!(!allowed_name(".."));
        assert!(allowed_name("model-1-of-2.safetensors"));
    }

    #[test]
    fn commit_digest_binds_the_hotkey() {
        let id = [1u8; 32];
        let mut cat = [1u8; 64];
        cat[32..].fill(2);
        assert_eq!(commit_digest(&id, &[2; 32]), *blake3::hash(&cat).as_bytes());
        assert_ne!(commit_digest(&id, &[2; 32]), commit_digest(&id, &[3; 32]));
    }

    #[test]
    fn header_counts() {
        let h = br#"{"__metadata__":{"format":"pt"},
            "model.embed_tokens.weight":{"dtype":"F32","shape":[10,4],"data_offsets":[0,160]},
            "model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[160,176]},
            "model.layers.0.self_attn.rotary_emb.inv_freq":{"dtype":"F32","shape":[2],"data_offsets":[176,184]}}"#;
        let t = header_elements(h).unwrap();
        assert_eq!(t.len(), 2);
        // Tied: lm_head loads as a copy of the 40-element embedding.
        assert_eq!(loaded_param_count(&t), 40 + 4 + 40);
        let mut untied = t.clone();
        untied.insert("lm_head.weight".into(), 40);
        assert_eq!(loaded_param_count(&untied), 84);
        assert!(header_elements(br#"{"x":{"shape":[4294967296,4294967296]}}"#).is_err());
        assert!(header_elements(br#"{"x":{"dtype":"F32"}}"#).is_err());
        assert!(header_elements(b"[1]").is_err());
        assert_eq!(header_elements(br#"{"x":{"shape":[]}}"#).unwrap()["x"], 1);
    }

    /// A fake model directory: config.json, a safetensors file with a 3x5 tensor, junk.
    fn fake_dir(dir: &Path, data_len: usize) {
        std::fs::write(dir.join("config.json"), br#"{"model_type":"llama"}"#).unwrap();
        let header = br#"{"w":{"dtype":"U8","shape":[3,5],"data_offsets":[0,15]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend((0..data_len).map(|i| i as u8));
        std::fs::write(dir.join("model.safetensors"), st).unwrap();
        std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
    }

    #[test]
    fn package_and_assemble_round_trip() {
        let src = tempfile::tempdir().unwrap();
        fake_dir(src.path(), 15);
        let mut store: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        let mut calls = 0;
        let m = package_dir(src.path(), "tiny", 7, |id, piece| {
            calls += 1;
            assert!(piece.len() <= 7);
            store.insert(id, piece.to_vec());
            Ok::<(), String>(())
        })
        .unwrap();
        assert_eq!(m.model_type, "llama");
        assert_eq!(m.num_params, 15);
        assert_eq!(m.tokenizer, "bytes");
        let names: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        // config.json is 22 bytes (4 pieces of 7), model.safetensors 8 + 56 + 15 = 79 (12).
        assert_eq!(m.files[0].size, 22);
        assert_eq!(m.files[1].size, 79);
        assert_eq!(calls, 4 + 12);
        let back = ModelManifest::from_bytes(&m.to_bytes(), 7).unwrap();
        assert_eq!(back.id(), m.id());

        let out = tempfile::tempdir().unwrap();
        assemble(&m, out.path(), |id| store.get(id).cloned().ok_or("missing")).unwrap();
        for name in names {
            assert_eq!(
                std::fs::read(out.path().join(name)).unwrap(),
                std::fs::read(src.path().join(name)).unwrap()
            );
        }
        assert!(!out.path().join("notes.txt").exists());

        // A tokenizer.json changes the declared tokenizer to its blake3.
        std::fs::write(src.path().join("tokenizer.json"), b"{}").unwrap();
        let m2 = package_dir(src.path(), "tiny", 7, |_, _| Ok::<(), String>(())).unwrap();
        assert_eq!(m2.tokenizer, blake3::hash(b"{}").to_hex().to_string());
    }

    #[test]
    fn assemble_catches_a_bad_piece_and_leaves_no_file() {
        let src = tempfile::tempdir().unwrap();
        fake_dir(src.path(), 15);
        let mut store: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
        let m = package_dir(src.path(), "tiny", 7, |id, piece| {
            store.insert(id, piece.to_vec());
            Ok::<(), String>(())
        })
        .unwrap();
        let target = decode_hex32(&m.files[1].pieces[5]).unwrap();
        let out = tempfile::tempdir().unwrap();
        let flip = |id: &[u8; 32]| {
            let mut v = store.get(id).cloned().ok_or("missing")?;
            if *id == target {
                v[0] ^= 1;
            }
            Ok::<_, &str>(v)
        };
        match assemble(&m, out.path(), flip) {
            Err(CompeteError::BadPiece { file, piece, .. }) => {
                assert_eq!((file.as_str(), piece), ("model.safetensors", 5));
            }
            other => panic!("expected a bad piece, got {other:?}"),
        }
        assert!(!out.path().join("model.safetensors").exists());
        assert!(!out.path().join(".model.safetensors.part").exists());
        assert!(out.path().join("config.json").exists());

        // A short piece (right hash of its content, wrong length) and a fetch error.
        let short = |id: &[u8; 32]| {
            let v = store.get(id).cloned().ok_or("missing")?;
            Ok::<_, &str>(if *id == target { v[..3].to_vec() } else { v })
        };
        assert!(matches!(
            assemble(&m, out.path(), short),
            Err(CompeteError::BadPiece { piece: 5, .. })
        ));
        assert!(matches!(
            assemble(&m, out.path(), |_| Err::<Vec<u8>, _>("offline")),
            Err(CompeteError::Fetch { piece: 0, .. })
        ));
    }

    #[test]
    fn package_errors_name_the_file() {
        let src = tempfile::tempdir().unwrap();
        fake_dir(src.path(), 15);
        std::fs::write(src.path().join("config.json"), b"{}").unwrap();
        let e = package_dir(src.path(), "tiny", 7, |_, _| Ok::<(), String>(())).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        std::fs::write(src.path().join("config.json"), br#"{"model_type":"llama"}"#).unwrap();
        std::fs::write(src.path().join("model.safetensors"), [1, 2, 3]).unwrap();
        let e = package_dir(src.path(), "tiny", 7, |_, _| Ok::<(), String>(())).unwrap_err();
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        std::fs::remove_file(src.path().join("model.safetensors")).unwrap();
        assert!(package_dir(src.path(), "tiny", 7, |_, _| Ok::<(), String>(())).is_err());
        // The store's refusal names file and piece.
        let src = tempfile::tempdir().unwrap();
        fake_dir(src.path(), 15);
        let e = package_dir(src.path(), "tiny", 7, |_, _| Err("disk full")).unwrap_err();
        assert!(matches!(e, CompeteError::Store { piece: 0, .. }), "{e}");
    }
}
