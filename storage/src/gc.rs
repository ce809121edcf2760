//! Mark-and-sweep of the blobs, pins, and the store's disk usage.
//!
//! A sweep ([`Store::sweep`]) deletes every blob (whole, or in parts with its outboard: see
//! [`crate::parts`]) that is not
//! * in the **roots** the caller passes (what its kept records name: see the actors crate's
//!   `retention` module for the node's roots),
//! * **pinned** in memory ([`Store::pin`]: e.g. a model a task is working on),
//! * or **young**: written (or rewritten) since the previous sweep began. Work in flight (an
//!   update scored but not yet in a record, a checkpoint aggregated but not yet applied) is
//!   named by a record before the next sweep, or it is garbage.
//!
//! The same rules apply to an unfinished download (parts without an outboard entry): one that
//! is pinned, or wrote a part since the previous sweep began, is kept; one left alone for a
//! whole sweep interval is stale and its parts are deleted.
//!
//! The check and the delete happen under the lock that every blob write takes first, so a
//! blob rewritten while a sweep runs is never lost (nor a download finished while it runs:
//! [`Store::finish_parts`] takes the lock before checking its parts).

use crate::{parts, Column, ContentId, Result, Store};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// In-memory state of the sweeps, shared by the store's clones.
#[derive(Default)]
pub(crate) struct GcState {
    /// Blobs written since the current generation began.
    young: Mutex<HashSet<ContentId>>,
    /// Blobs written in the previous generation (spared by the running or next sweep).
    previous: Mutex<HashSet<ContentId>>,
    /// Pinned blobs and their pin counts.
    pins: Mutex<HashMap<ContentId, usize>>,
    /// One sweep at a time.
    sweeping: Mutex<()>,
    /// The last sweep, and totals.
    history: Mutex<History>,
}

#[derive(Default, Clone)]
struct History {
    last: Option<SweepReport>,
    sweeps: u64,
    deleted: u64,
    /// Blobs deleted since the last [`Store::reclaim`].
    unreclaimed: u64,
}

/// What a sweep found to delete.
enum Doomed {
    /// A blob stored whole.
    Whole(ContentId),
    /// A blob stored in parts, with its outboard entry.
    Parted(ContentId),
    /// Parts without an outboard entry: an unfinished download.
    Unfinished(ContentId),
    /// A key that is not an id (or a part key): nothing can name it.
    Stray(Column, Vec<u8>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GcState {
    /// Notes a blob write (before the write itself).
    pub(crate) fn written(&self, id: ContentId) {
        lock(&self.young).insert(id);
    }
}

/// Keeps a blob from being swept while it lives (clones share the pin).
pub struct Pin {
    gc: Arc<GcState>,
    id: ContentId,
}

impl Pin {
    /// The pinned blob.
    pub fn id(&self) -> ContentId {
        self.id
    }
}

impl Clone for Pin {
    fn clone(&self) -> Self {
        *lock(&self.gc.pins).entry(self.id).or_insert(0) += 1;
        Pin {
            gc: Arc::clone(&self.gc),
            id: self.id,
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = lock(&self.gc.pins);
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({})", self.id.short())
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// When it ended (ms since the Unix epoch).
    pub at_unix_ms: u64,
    /// Blobs looked at.
    pub scanned: usize,
    /// Kept because a root names them.
    pub rooted: usize,
    /// Kept because they are pinned.
    pub pinned: usize,
    /// Kept because they were written since the previous sweep began.
    pub young: usize,
    /// Deleted.
    pub deleted: usize,
    /// Of those, unfinished downloads (parts without an outboard entry).
    pub unfinished_deleted: usize,
    /// Store size on disk before and after (bytes; the space of deleted blobs comes back at
    /// the next [`Store::reclaim`] or when RocksDB compacts on its own).
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
    /// Time taken (ms).
    pub duration_ms: u64,
}

/// One column's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ColumnUsage {
    /// SST files (keys, small values, blob references).
    pub sst_bytes: u64,
    /// Blob files (large values), live and garbage.
    pub blob_file_bytes: u64,
    /// Of those, the bytes of live blobs.
    pub live_blob_bytes: u64,
    /// Memtables not yet flushed.
    pub memtable_bytes: u64,
    /// Estimated number of keys.
    pub keys_estimate: u64,
}

/// The store's disk usage ([`Store::usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreUsage {
    /// Bytes of every file under the database directory (SSTs, blob files, WAL, manifest).
    pub disk_bytes: u64,
    /// Blobs stored (exact).
    pub blob_count: usize,
    /// Blobs pinned in memory now.
    pub pinned: usize,
    /// Per column.
    pub columns: BTreeMap<&'static str, ColumnUsage>,
    /// Sweeps run since start.
    pub sweeps: u64,
    /// Blobs deleted by them.
    pub blobs_swept: u64,
    /// The last sweep.
    pub last_sweep: Option<SweepReport>,
}

/// Bytes of the files under `dir` (recursively).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Store {
    /// Pins a blob: no sweep deletes it while the pin (or a clone of it) lives. The blob need
    /// not exist yet.
    pub fn pin(&self, id: ContentId) -> Pin {
        *lock(&self.gc.pins).entry(id).or_insert(0) += 1;
        Pin {
            gc: Arc::clone(&self.gc),
            id,
        }
    }

    /// Deletes every blob that is not in `roots`, pinned, or written since the previous sweep
    /// began.
    pub fn sweep(&self, roots: &HashSet<ContentId>) -> Result<SweepReport> {
        let _one = lock(&self.gc.sweeping);
        let started = std::time::Instant::now();
        let bytes_before = dir_bytes(&self.path);
        // A new generation: what was written since the last sweep began is spared this time.
        {
            let mut young = lock(&self.gc.young);
            let mut previous = lock(&self.gc.previous);
            *previous = std::mem::take(&mut *young);
        }
        let mut report = SweepReport {
            bytes_before,
            ..SweepReport::default()
        };
        let mut candidates = Vec::new();
        let whole = self.id_keys(Column::Blobs, &mut report, &mut candidates)?;
        // In key order, as the probe for unfinished downloads needs.
        let held = self.id_keys(Column::Outboards, &mut report, &mut candidates)?;
        let unfinished = self.unfinished_parts(&held)?;
        {
            let previous = lock(&self.gc.previous);
            let pins = lock(&self.gc.pins);
            let mut classify = |id: ContentId, doomed: Doomed| {
                report.scanned += 1;
                if roots.contains(&id) {
                    report.rooted += 1;
                } else if pins.contains_key(&id) {
                    report.pinned += 1;
                } else if previous.contains(&id) {
                    report.young += 1;
                } else {
                    candidates.push(doomed);
                }
            };
            for id in whole {
                classify(id, Doomed::Whole(id));
            }
            for id in held {
                classify(id, Doomed::Parted(id));
            }
            for id in unfinished.ids {
                classify(id, Doomed::Unfinished(id));
            }
        }
        for key in unfinished.stray {
            report.scanned += 1;
            candidates.push(Doomed::Stray(Column::Parts, key));
        }
        // Check again under the write lock (a blob rewritten or pinned since the scan stays),
        // and delete while holding it.
        {
            let young = lock(&self.gc.young);
            let pins = lock(&self.gc.pins);
            let mut batch = rocksdb::WriteBatch::default();
            for doomed in &candidates {
                let spared = |id: &ContentId| young.contains(id) || pins.contains_key(id);
                match doomed {
                    Doomed::Whole(id) | Doomed::Parted(id) | Doomed::Unfinished(id)
                        if spared(id) =>
                    {
                        report.young += 1;
                        continue;
                    }
                    Doomed::Whole(id) => batch.delete_cf(self.cf(Column::Blobs), id.0),
                    Doomed::Parted(id) => self.delete_blob_in(&mut batch, *id),
                    Doomed::Unfinished(id) => {
                        // Only the parts: an outboard entry written since the scan made the id
                        // young (spared above).
                        batch.delete_range_cf(
                            self.cf(Column::Parts),
                            &id.0[..],
                            &parts::parts_end(*id)[..],
                        );
                        report.unfinished_deleted += 1;
                    }
                    Doomed::Stray(col, key) => batch.delete_cf(self.cf(*col), key),
                }
                report.deleted += 1;
            }
            if !batch.is_empty() {
                self.db.write(batch).map_err(|e| self.db_err(e))?;
            }
        }
        report.bytes_after = dir_bytes(&self.path);
        report.duration_ms = started.elapsed().as_millis() as u64;
        report.at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut h = lock(&self.gc.history);
        h.sweeps += 1;
        h.deleted += report.deleted as u64;
        h.unreclaimed += report.deleted as u64;
        h.last = Some(report.clone());
        tracing::debug!(
            scanned = report.scanned,
            rooted = report.rooted,
            pinned = report.pinned,
            young = report.young,
            deleted = report.deleted,
            unfinished_deleted = report.unfinished_deleted,
            bytes_before = report.bytes_before,
            bytes_after = report.bytes_after,
            "blob sweep"
        );
        Ok(report)
    }

    /// Gives the space of the blobs deleted by sweeps (and of expired records) back to the
    /// file system: compacts the blob, part, outboard, announcement and windows columns (RocksDB's blob
    /// garbage collection drops or rewrites the blob files that held them) and flushes the
    /// rest so old write-ahead log files are deleted. Does nothing when
    /// no sweep deleted anything since the last call; returns whether it compacted.
    pub fn reclaim(&self) -> bool {
        {
            let mut h = lock(&self.gc.history);
            if h.unreclaimed == 0 {
                return false;
            }
            h.unreclaimed = 0;
        }
        for col in [
            Column::Blobs,
            Column::Parts,
            Column::Outboards,
            Column::Announcements,
            Column::Windows,
        ] {
            self.db
                .compact_range_cf(self.cf(col), None::<&[u8]>, None::<&[u8]>);
        }
        // Flush the other columns too: a write-ahead log file is deleted only once every
        // column with writes in it is flushed.
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flush after reclaiming failed");
        }
        true
    }

    /// The keys of a column that are ids, in key order; the others are counted as scanned
    /// and doomed (nothing can name them).
    fn id_keys(
        &self,
        col: Column,
        report: &mut SweepReport,
        doomed: &mut Vec<Doomed>,
    ) -> Result<Vec<ContentId>> {
        let mut ids = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(col));
        it.seek_to_first();
        while let Some(k) = it.key() {
            match <[u8; 32]>::try_from(k) {
                Ok(arr) => ids.push(ContentId(arr)),
                Err(_) => {
                    report.scanned += 1;
                    doomed.push(Doomed::Stray(col, k.to_vec()));
                }
            }
            it.next();
        }
        it.status().map_err(|e| self.db_err(e))?;
        Ok(ids)
    }

    /// Size on disk of the database directory.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.path)
    }

    /// Disk usage per column, blob count and the sweeps so far.
    pub fn usage(&self) -> Result<StoreUsage> {
        let mut columns = BTreeMap::new();
        for c in Column::ALL {
            let cf = self.cf(c);
            let prop = |name: &str| -> Result<u64> {
                Ok(self
                    .db
                    .property_int_value_cf(cf, name)
                    .map_err(|e| self.db_err(e))?
                    .unwrap_or(0))
            };
            columns.insert(
                c.name(),
                ColumnUsage {
                    sst_bytes: prop("rocksdb.total-sst-files-size")?,
                    blob_file_bytes: prop("rocksdb.total-blob-file-size")?,
                    live_blob_bytes: prop("rocksdb.live-blob-file-size")?,
                    memtable_bytes: prop("rocksdb.cur-size-all-mem-tables")?,
                    keys_estimate: prop("rocksdb.estimate-num-keys")?,
                },
            );
        }
        let h = lock(&self.gc.history).clone();
        Ok(StoreUsage {
            disk_bytes: dir_bytes(&self.path),
            blob_count: self.blob_count()?,
            pinned: lock(&self.gc.pins).len(),
            columns,
            sweeps: h.sweeps,
            blobs_swept: h.deleted,
            last_sweep: h.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[ContentId]) -> HashSet<ContentId> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_sweep_keeps_roots_pins_and_young_blobs_and_deletes_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let big = |tag: u8| vec![tag; 40 * 1024];
        let root = s.put_blob(&big(1)).expect("put");
        let pinned = s.put_blob(&big(2)).expect("put");
        let garbage = s.put_blob(&big(3)).expect("put");
        let _pin = s.pin(pinned);
        // Everything is young at the first sweep.
        let r = s.sweep(&ids(&[root])).expect("sweep");
        assert_eq!((r.scanned, r.deleted), (3, 0), "{r:?}");
        // Second sweep: the unreferenced, unpinned blob goes.
        let r = s.sweep(&ids(&[root])).expect("sweep");
        assert_eq!((r.rooted, r.pinned, r.deleted), (1, 1, 1), "{r:?}");
        assert!(s.has_blob(root).expect("has"));
        assert!(s.has_blob(pinned).expect("has"));
        assert!(!s.has_blob(garbage).expect("has"));
        // A blob written between sweeps survives the next one.
        let fresh = s.put_blob(&big(4)).expect("put");
        let r = s.sweep(&ids(&[root])).expect("sweep");
        assert_eq!(r.deleted, 0, "{r:?}");
        assert!(s.has_blob(fresh).expect("has"));
        // Unpinned and old: gone; the root stays readable.
        drop(_pin);
        let r = s.sweep(&ids(&[root])).expect("sweep");
        assert_eq!(r.deleted, 2, "{r:?}");
        assert_eq!(s.get_blob(root).expect("get"), Some(big(1)));
        assert!(s.reclaim(), "deleted blobs to reclaim");
        assert!(!s.reclaim(), "nothing left to reclaim");
        assert_eq!(s.get_blob(root).expect("get"), Some(big(1)));
        let u = s.usage().expect("usage");
        assert_eq!(u.blob_count, 1);
        assert_eq!(u.sweeps, 4);
        assert_eq!(u.blobs_swept, 3);
        assert!(u.columns.contains_key("blobs"));
    }

    #[test]
    fn pins_count_clones() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let id = s.put_blob(b"x").expect("put");
        let a = s.pin(id);
        let b = a.clone();
        drop(a);
        s.sweep(&HashSet::new()).expect("sweep");
        s.sweep(&HashSet::new()).expect("sweep");
        assert!(s.has_blob(id).expect("has"), "still pinned by the clone");
        drop(b);
        s.sweep(&HashSet::new()).expect("sweep");
        assert!(!s.has_blob(id).expect("has"));
        assert_eq!(s.usage().expect("usage").pinned, 0);
    }

    #[test]
    fn a_batch_writes_all_or_nothing_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let s = Store::open(dir.path()).expect("open");
            s.put(Column::Windows, &crate::u64_key(1), &1u64)
                .expect("put");
            let mut b = s.batch();
            b.put(Column::Windows, &crate::u64_key(2), &2u64)
                .expect("put");
            b.put(Column::Scores, &7u16.to_be_bytes(), &0.5f64)
                .expect("put");
            b.delete(Column::Windows, &crate::u64_key(1));
            assert_eq!(b.len(), 3);
            s.write(b).expect("write");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.keys(Column::Windows).expect("keys").len(), 1);
        assert_eq!(
            s.get::<f64>(Column::Scores, &7u16.to_be_bytes())
                .expect("get"),
            Some(0.5)
        );
    }

    #[test]
    fn a_sweep_treats_parted_blobs_and_stale_downloads_like_blobs() {
        use crate::outboard::{Outboard, PART_LOG};
        let m = 1usize << PART_LOG;
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        // Two parts each (1 MiB and a little): parted, and quick.
        let bytes = |tag: u8| -> Vec<u8> {
            (0..m + 1000)
                .map(|i| (i as u8) ^ tag ^ (i >> 11) as u8)
                .collect()
        };
        let download = |tag: u8, index: u64| {
            let b = bytes(tag);
            let id = ContentId::of(&b);
            let ob = Outboard::compute(&b, PART_LOG).expect("compute");
            let (o, n) = ob.group_range(index).expect("range");
            s.put_part(id, &ob, index, &b[o as usize..(o + n) as usize])
                .expect("part");
            (id, ob)
        };
        let rooted = s.put_blob(&bytes(1)).expect("put");
        let garbage = s.put_blob(&bytes(2)).expect("put");
        let (pinned, pinned_ob) = download(3, 0);
        let pin = s.pin(pinned);
        let (stale, stale_ob) = download(4, 1);
        // A key in the blob column that is no id: nothing names it.
        s.db.put_cf(s.cf(Column::Blobs), b"junk", b"x")
            .expect("raw put");
        let roots = ids(&[rooted]);
        let r = s.sweep(&roots).expect("sweep");
        assert_eq!((r.scanned, r.young, r.deleted), (5, 2, 1), "{r:?}");
        let r = s.sweep(&roots).expect("sweep");
        assert_eq!(
            (
                r.scanned,
                r.rooted,
                r.pinned,
                r.deleted,
                r.unfinished_deleted
            ),
            (4, 1, 1, 2, 1),
            "{r:?}"
        );
        assert_eq!(s.get_blob(rooted).expect("get"), Some(bytes(1)));
        assert!(!s.has_blob(garbage).expect("has"));
        assert!(s.held_parts(stale, &stale_ob).expect("held").is_empty());
        assert_eq!(s.held_parts(pinned, &pinned_ob).expect("held"), vec![0]);
        assert!(s
            .keys(Column::Parts)
            .expect("keys")
            .iter()
            .all(|k| k[..32] == rooted.0 || k[..32] == pinned.0));
        assert_eq!(
            s.keys(Column::Outboards).expect("keys"),
            vec![rooted.0.to_vec()]
        );
        // A download that wrote a part since the last sweep began survives the next one.
        let (fresh, fresh_ob) = download(5, 0);
        drop(pin);
        let r = s.sweep(&roots).expect("sweep");
        assert_eq!((r.young, r.unfinished_deleted), (1, 1), "{r:?}");
        assert_eq!(s.held_parts(fresh, &fresh_ob).expect("held"), vec![0]);
        assert!(s.held_parts(pinned, &pinned_ob).expect("held").is_empty());
        // Finished, it is a blob like any other: kept while rooted.
        download(5, 1);
        s.finish_parts(fresh, &fresh_ob).expect("finish");
        let both = ids(&[rooted, fresh]);
        s.sweep(&both).expect("sweep");
        let r = s.sweep(&both).expect("sweep");
        assert_eq!((r.scanned, r.rooted, r.deleted), (2, 2, 0), "{r:?}");
        assert_eq!(s.get_blob(fresh).expect("get"), Some(bytes(5)));
        assert!(s.reclaim());
        let u = s.usage().expect("usage");
        assert_eq!(u.blob_count, 2);
        assert!(u.columns.contains_key("blob_parts"));
        assert!(u.columns.contains_key("blob_outboards"));
    }
}
