//! # apiary-storage
//!
//! The node's durable state in one RocksDB database.
//!
//! * **Blobs** (model updates, checkpoints) are content-addressed: the key is the blake3 hash of
//!   the bytes ([`ContentId`]). A blob is verified against its id when it is written from the
//!   network ([`Store::put_blob_verified`]) and again every time it is read ([`Store::get_blob`]),
//!   so a corrupted disk or a lying peer can never feed bad bytes to the trainer.
//!   A blob of more than 1 MiB ([`outboard::PART_LOG`]) is stored in 1 MiB **parts** with its
//!   [`outboard::Outboard`] (the group hashes): a byte range is served by reading only the parts
//!   that cover it ([`Store::get_range`]), and a download writes verified parts one at a time and
//!   resumes after an interruption ([`Store::put_part`], [`Store::held_parts`],
//!   [`Store::finish_parts`]). See the [`parts`] module.
//! * **Records** (window records, announcements, scores, weight submissions, the node's view of
//!   the chain, the embedded chain's own state) are small JSON values in their own column family,
//!   one per [`Column`], like lighthouse's `DBColumn`.
//!
//! The API is synchronous: RocksDB calls block, so async callers run large reads and writes in
//! `spawn_blocking`. [`Store`] is a cheap clone (an `Arc` around the database).
//!
//! * **Retention** ([`gc`]): blobs are swept by mark-and-sweep ([`Store::sweep`]) from roots the
//!   caller names, plus the blobs pinned in memory ([`Store::pin`]) and the blobs written since
//!   the previous sweep began (in-flight work that no record names yet). RocksDB's blob-file
//!   garbage collection is on, and [`Store::reclaim`] compacts the swept columns so the space
//!   goes back to the file system.
//! * **Durability**: several records of one logical event are written together in a
//!   [`Batch`] ([`Store::write`]), synced to the WAL: after a crash either all of them are there or
//!   none. Blobs are written before the records that name them; the WAL keeps that order.

pub mod gc;
pub mod outboard;
pub mod parts;

pub use gc::{Pin, StoreUsage, SweepReport};

// The archive `rocksdb` links is built by this crate's build script (see its docs).
use apiary_rocksdb_unity as _;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed (disk full, permissions, another process holding the lock).
    #[error("rocksdb error at {path}: {source}; is another apiary using this data dir?")]
    Db {
        /// Database path.
        path: PathBuf,
        /// The RocksDB error.
        source: rocksdb::Error,
    },
    /// Bytes offered for an id do not hash to it.
    #[error("blob bytes hash to {actual}, not to the announced id {expected}")]
    HashMismatch {
        /// The id the bytes were supposed to have.
        expected: ContentId,
        /// What they hash to.
        actual: ContentId,
    },
    /// A stored blob no longer matches its id (disk corruption).
    #[error(
        "stored blob {0} is corrupt (hash mismatch on read); delete the data dir's db to resync"
    )]
    Corrupt(ContentId),
    /// An outboard or a part offered for a blob does not check out against its id.
    #[error("refused data for blob {id}: {source}")]
    Outboard {
        /// The blob.
        id: ContentId,
        /// What did not check out.
        source: outboard::OutboardError,
    },
    /// An outboard in another group size than the store's parts.
    #[error(
        "blob {id}: parts are stored in groups of 2^{} bytes, not 2^{group_log}; \
         fetch the outboard in 2^{} groups",
        outboard::PART_LOG,
        outboard::PART_LOG
    )]
    PartSize {
        /// The blob.
        id: ContentId,
        /// The outboard's group size (log2).
        group_log: u8,
    },
    /// [`Store::finish_parts`] before every part is written.
    #[error(
        "blob {id}: {missing} of {groups} parts are missing; write them with put_part \
         (held_parts lists those present) before finishing"
    )]
    MissingParts {
        /// The blob.
        id: ContentId,
        /// Parts not present.
        missing: u64,
        /// Parts the blob has.
        groups: u64,
    },
    /// A byte range that does not lie within the blob.
    #[error(
        "range of {len} bytes at {offset} is past the end of blob {id} ({blob_len} bytes); \
         ask for a range within the blob"
    )]
    Range {
        /// The blob.
        id: ContentId,
        /// Start of the range asked for.
        offset: u64,
        /// Its length.
        len: u64,
        /// The blob's length.
        blob_len: u64,
    },
    /// A blob of more parts than a part key can number (2^32 parts of 1 MiB: 4 PiB).
    #[error("blob {id} of {len} bytes has more parts than the store can number (2^32)")]
    TooLarge {
        /// The blob.
        id: ContentId,
        /// Its length.
        len: u64,
    },
    /// A record could not be (de)serialized.
    #[error("record codec error in column {column}: {message}")]
    Codec {
        /// The column.
        column: &'static str,
        /// The serde error.
        message: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A blake3 content id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentId(*blake3::hash(bytes).as_bytes())
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        let arr: [u8; 32] = v.try_into().ok()?;
        Some(ContentId(arr))
    }
    /// First 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentId({})", self.short())
    }
}

impl Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            ContentId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad content id hex"))
        } else {
            Ok(ContentId(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// Windows of [`Column::ScoreHistory`] a validator keeps.
pub const SCORE_HISTORY_KEPT: u64 = 1000;

/// Column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// blake3 id → bytes, for blobs of at most 1 MiB (and blobs of any size written before
    /// parts existed).
    Blobs,
    /// Parts of the blobs over 1 MiB: id (32 bytes) ‖ group index (u32 big-endian) → the bytes
    /// of that 1 MiB group ([`outboard::PART_LOG`]).
    Parts,
    /// id → [`outboard::Outboard::encode`] of a blob stored in parts. Written after every
    /// part: its presence is what makes a parted blob held.
    Outboards,
    /// window (u64 BE) → the window record the node applied (model hash, accepted updates, loss).
    Windows,
    /// (window, uid) → a received update announcement.
    Announcements,
    /// uid → the validator's smoothed score.
    Scores,
    /// window (u64 BE) → every miner's `(uid, score, smoothed score)` when the validator closed
    /// it: the history the dashboard draws (the newest [`SCORE_HISTORY_KEPT`] windows).
    ScoreHistory,
    /// submission id → a weight submission (block, outcome).
    Weights,
    /// The node's view of the chain (last block, last metagraph).
    ChainView,
    /// Miscellaneous node metadata (keys, counters).
    Meta,
    /// Embedded chain: block number (u64 BE) → block.
    LocalBlocks,
    /// Embedded chain: state (registrations, weights, commitments).
    LocalState,
}

impl Column {
    /// Every column, in creation order.
    pub const ALL: [Column; 12] = [
        Column::Blobs,
        Column::Parts,
        Column::Outboards,
        Column::Windows,
        Column::Announcements,
        Column::Scores,
        Column::Weights,
        Column::ChainView,
        Column::Meta,
        Column::LocalBlocks,
        Column::LocalState,
        Column::ScoreHistory,
    ];

    /// RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Column::Blobs => "blobs",
            Column::Parts => "blob_parts",
            Column::Outboards => "blob_outboards",
            Column::Windows => "windows",
            Column::Announcements => "announcements",
            Column::Scores => "scores",
            Column::Weights => "weights",
            Column::ChainView => "chain_view",
            Column::Meta => "meta",
            Column::LocalBlocks => "local_blocks",
            Column::LocalState => "local_state",
            Column::ScoreHistory => "score_history",
        }
    }
}

/// The node's RocksDB store. Cloning shares the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
    gc: Arc<gc::GcState>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // Old WAL files are dropped once every column that has writes in them is flushed; bound
        // them (a column written rarely would otherwise keep every WAL since its last flush).
        opts.set_max_total_wal_size(32 << 20);
        // RocksDB's own info log: at most 3 files of 4 MiB.
        opts.set_max_log_file_size(4 << 20);
        opts.set_keep_log_file_num(3);
        let cfs = Column::ALL.iter().map(|c| {
            let mut o = Options::default();
            if matches!(*c, Column::Blobs | Column::Parts) {
                // Large values go to blob files: cheaper compaction for multi-MB updates, and
                // for the 1 MiB parts of GB checkpoints (compaction moves only their keys).
                o.set_enable_blob_files(true);
                o.set_min_blob_size(16 * 1024);
                // Blob files whose blobs were deleted are rewritten (their live blobs moved) or
                // dropped when compaction reaches them: the oldest quarter of the blob files,
                // and any of them that is at least half garbage.
                o.set_enable_blob_gc(true);
                o.set_blob_gc_age_cutoff(0.25);
                o.set_blob_gc_force_threshold(0.5);
            }
            ColumnFamilyDescriptor::new(c.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Db {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Store {
            db: Arc::new(db),
            path: path.to_path_buf(),
            gc: Arc::default(),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, c: Column) -> &rocksdb::ColumnFamily {
        match self.db.cf_handle(c.name()) {
            Some(cf) => cf,
            // Every column is created in `open`; a missing handle is a programming error.
            None => unreachable!("column family {} created at open", c.name()),
        }
    }

    fn db_err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores bytes under their own hash and returns it. A blob over 1 MiB is stored in parts
    /// with its outboard (one write batch).
    pub fn put_blob(&self, bytes: &[u8]) -> Result<ContentId> {
        if parts::is_parted(bytes.len() as u64) {
            let (id, ob) = parts::outboard_of(bytes)?;
            self.gc.written(id);
            self.write_parted(id, &ob, bytes)?;
            return Ok(id);
        }
        let id = ContentId::of(bytes);
        self.gc.written(id);
        self.db
            .put_cf(self.cf(Column::Blobs), id.0, bytes)
            .map_err(|e| self.db_err(e))?;
        Ok(id)
    }

    /// Stores bytes received for `expected`, refusing them unless they hash to it.
    pub fn put_blob_verified(&self, expected: ContentId, bytes: &[u8]) -> Result<()> {
        if parts::is_parted(bytes.len() as u64) {
            let (actual, ob) = parts::outboard_of(bytes)?;
            if actual != expected {
                return Err(StoreError::HashMismatch { expected, actual });
            }
            self.gc.written(expected);
            return self.write_parted(expected, &ob, bytes);
        }
        let actual = ContentId::of(bytes);
        if actual != expected {
            return Err(StoreError::HashMismatch { expected, actual });
        }
        self.gc.written(expected);
        self.db
            .put_cf(self.cf(Column::Blobs), expected.0, bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Reads a blob, verifying it against its id (a parted blob part by part against its
    /// outboard, which is checked against the id).
    pub fn get_blob(&self, id: ContentId) -> Result<Option<Vec<u8>>> {
        if let Some(ob) = self.stored_outboard(id)? {
            return self.read_parts(id, &ob, 0, ob.len).map(Some);
        }
        let Some(bytes) = self
            .db
            .get_cf(self.cf(Column::Blobs), id.0)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        if ContentId::of(&bytes) != id {
            return Err(StoreError::Corrupt(id));
        }
        Ok(Some(bytes))
    }

    /// Whether a blob is present (no verification): whole, or in parts with its outboard.
    pub fn has_blob(&self, id: ContentId) -> Result<bool> {
        // The outboard is small; look there before loading a whole small blob.
        if self
            .db
            .get_pinned_cf(self.cf(Column::Outboards), id.0)
            .map_err(|e| self.db_err(e))?
            .is_some()
        {
            return Ok(true);
        }
        Ok(self
            .db
            .get_pinned_cf(self.cf(Column::Blobs), id.0)
            .map_err(|e| self.db_err(e))?
            .is_some())
    }

    /// Deletes a blob (no error if absent): whole, or its outboard and every part (a finished
    /// or an unfinished download). Callers decide what is safe to drop: the store does not
    /// count references.
    pub fn delete_blob(&self, id: ContentId) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.delete_blob_in(&mut batch, id);
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    /// Number of blobs stored: whole ones and parted ones (unfinished downloads not counted).
    pub fn blob_count(&self) -> Result<usize> {
        Ok(self.count_keys(Column::Blobs)? + self.count_keys(Column::Outboards)?)
    }

    /// Keys in a column, without copying the values out.
    fn count_keys(&self, col: Column) -> Result<usize> {
        let mut it = self.db.raw_iterator_cf(self.cf(col));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status().map_err(|e| self.db_err(e))?;
        Ok(n)
    }

    /// Writes a JSON record.
    pub fn put<T: Serialize>(&self, col: Column, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Codec {
            column: col.name(),
            message: e.to_string(),
        })?;
        self.db
            .put_cf(self.cf(col), key, bytes)
            .map_err(|e| self.db_err(e))
    }

    /// Reads a JSON record.
    pub fn get<T: DeserializeOwned>(&self, col: Column, key: &[u8]) -> Result<Option<T>> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(col), key)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Codec {
                column: col.name(),
                message: e.to_string(),
            })
    }

    /// Deletes a record or blob.
    pub fn delete(&self, col: Column, key: &[u8]) -> Result<()> {
        self.db
            .delete_cf(self.cf(col), key)
            .map_err(|e| self.db_err(e))
    }

    /// All records of a column in key order.
    pub fn scan<T: DeserializeOwned>(&self, col: Column) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(col), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let value = serde_json::from_slice(&v).map_err(|e| StoreError::Codec {
                column: col.name(),
                message: e.to_string(),
            })?;
            out.push((k.to_vec(), value));
        }
        Ok(out)
    }

    /// The last record of a column in key order (e.g. the latest window).
    pub fn last<T: DeserializeOwned>(&self, col: Column) -> Result<Option<(Vec<u8>, T)>> {
        let mut it = self
            .db
            .iterator_cf(self.cf(col), rocksdb::IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                let value = serde_json::from_slice(&v).map_err(|e| StoreError::Codec {
                    column: col.name(),
                    message: e.to_string(),
                })?;
                Ok(Some((k.to_vec(), value)))
            }
        }
    }

    /// Keys of a column.
    pub fn keys(&self, col: Column) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(col), rocksdb::IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// A new, empty write batch.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
        }
    }

    /// Writes a batch atomically and syncs the WAL: after a crash either every write of the
    /// batch is there or none is, and a batch that returned is on disk.
    pub fn write(&self, batch: Batch<'_>) -> Result<()> {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        self.db
            .write_opt(batch.inner, &o)
            .map_err(|e| self.db_err(e))
    }

    /// Flushes memtables and the WAL to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| self.db_err(e))?;
        for c in Column::ALL {
            self.db.flush_cf(self.cf(c)).map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }
}

/// Writes collected for [`Store::write`]: records put or deleted together.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    /// Adds a JSON record.
    pub fn put<T: Serialize>(&mut self, col: Column, key: &[u8], value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Codec {
            column: col.name(),
            message: e.to_string(),
        })?;
        self.inner.put_cf(self.store.cf(col), key, bytes);
        Ok(())
    }

    /// Adds a deletion of a record.
    pub fn delete(&mut self, col: Column, key: &[u8]) {
        self.inner.delete_cf(self.store.cf(col), key);
    }

    /// Writes collected so far.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// Big-endian key for a u64 (so iteration order is numeric order).
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Key for (window, uid).
pub fn window_uid_key(window: u64, uid: u16) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..8].copy_from_slice(&window.to_be_bytes());
    k[8..].copy_from_slice(&uid.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let id;
        {
            let s = Store::open(dir.path()).expect("open");
            id = s.put_blob(b"hello world").expect("put");
            assert_eq!(id, ContentId::of(b"hello world"));
            let err = s
                .put_blob_verified(id, b"hello w0rld")
                .expect_err("mismatch must fail");
            assert!(matches!(err, StoreError::HashMismatch { .. }));
            s.put(Column::Scores, &7u16.to_be_bytes(), &0.5f64)
                .expect("put");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.get_blob(id).expect("get").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(
            s.get::<f64>(Column::Scores, &7u16.to_be_bytes())
                .expect("get"),
            Some(0.5)
        );
        assert_eq!(s.blob_count().expect("count"), 1);
        assert!(s.get_blob(ContentId::of(b"nope")).expect("get").is_none());
    }

    #[test]
    fn corrupt_blob_is_detected_on_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let id = ContentId::of(b"abc");
        // Write bytes under the wrong key, bypassing verification, as disk corruption would.
        s.db.put_cf(s.cf(Column::Blobs), id.0, b"abd")
            .expect("raw put");
        assert!(matches!(s.get_blob(id), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn last_and_scan_follow_key_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        for w in [3u64, 1, 2, 300] {
            s.put(Column::Windows, &u64_key(w), &w).expect("put");
        }
        let all: Vec<(Vec<u8>, u64)> = s.scan(Column::Windows).expect("scan");
        assert_eq!(
            all.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![1, 2, 3, 300]
        );
        assert_eq!(
            s.last::<u64>(Column::Windows).expect("last").map(|x| x.1),
            Some(300)
        );
    }
}
