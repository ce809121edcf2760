//! Blobs over 1 MiB, stored in parts: byte ranges and resumable, verified downloads.
//!
//! A blob of more than `2^PART_LOG` bytes (1 MiB, [`PART_LOG`]) is not one RocksDB value:
//!
//! * [`Column::Parts`]: key `id (32 bytes) ‖ group index (u32 big-endian)` → the bytes of that
//!   aligned 1 MiB group (the last one may be short). Big-endian, so a blob's parts are
//!   adjacent and in order.
//! * [`Column::Outboards`]: key `id` → [`Outboard::encode`] (the blob's length and one blake3
//!   chaining value per group, 32 bytes per MiB).
//!
//! The outboard entry is written after every part (in the same batch when the blob is written
//! whole): its presence is what makes the blob held ([`Store::has_blob`]). Parts without an
//! outboard entry are an unfinished download: [`Store::held_parts`] lists them so the download
//! resumes, and a sweep deletes them once nothing pins them and they are not young
//! (see [`crate::gc`]).
//!
//! Every read checks what it returns: a part against its chaining value, the chaining values
//! against the id. A range reads only the parts that cover it ([`Store::get_range`]).
//!
//! Blobs of at most 1 MiB stay whole in [`Column::Blobs`], as do blobs of any size written
//! before parts existed; every read here handles both.

use crate::outboard::{Outboard, PART_LOG};
use crate::{Column, ContentId, Result, Store, StoreError};
use rocksdb::{ReadOptions, WriteBatch};

/// Bytes of a part key: the id and the group index.
const KEY_LEN: usize = 36;

/// Whether a blob of `len` bytes is stored in parts (more than one group).
pub(crate) fn is_parted(len: u64) -> bool {
    len > 1u64 << PART_LOG
}

/// The outboard of a blob written whole, and its id merged from the group hashes (one pass
/// over the bytes instead of two: hashing the groups is hashing the blob).
pub(crate) fn outboard_of(bytes: &[u8]) -> Result<(ContentId, Outboard)> {
    let ob = Outboard::compute(bytes, PART_LOG).map_err(|source| StoreError::Outboard {
        id: ContentId::of(bytes),
        source,
    })?;
    let id = match ob.merged_root() {
        Some(root) => ContentId(root),
        // One group: its id is the hash of the bytes (callers only part longer blobs).
        None => ContentId::of(bytes),
    };
    Ok((id, ob))
}

/// The key of part `index` of `id`.
fn part_key(id: ContentId, len: u64, index: u64) -> Result<[u8; KEY_LEN]> {
    let index = u32::try_from(index).map_err(|_| StoreError::TooLarge { id, len })?;
    let mut k = [0u8; KEY_LEN];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&index.to_be_bytes());
    Ok(k)
}

/// The first possible part key of `id`.
fn parts_start(id: ContentId) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..32].copy_from_slice(&id.0);
    k
}

/// A key past every part key of `id` and before the part keys of any greater id: `id ‖ ff ff ff
/// ff ff` sorts after `id ‖ ff ff ff ff` (the last index) and, sharing `id`, before `id' ‖ ...`
/// for every `id' > id`. (The id plus one would do too, but has no value for an all-ones id.)
pub(crate) fn parts_end(id: ContentId) -> [u8; KEY_LEN + 1] {
    let mut k = [0xffu8; KEY_LEN + 1];
    k[..32].copy_from_slice(&id.0);
    k
}

/// The id and group index of a part key, or `None` for a key of another shape.
fn split_part_key(k: &[u8]) -> Option<(ContentId, u64)> {
    let (id, index) = k.split_first_chunk::<32>()?;
    let index: [u8; 4] = index.try_into().ok()?;
    Some((ContentId(*id), u64::from(u32::from_be_bytes(index))))
}

/// Part keys found without an outboard entry ([`Store::unfinished_parts`]).
#[derive(Debug, Default)]
pub(crate) struct Unfinished {
    /// Ids with parts but no outboard (unfinished downloads), in key order.
    pub(crate) ids: Vec<ContentId>,
    /// Keys of another shape than `id ‖ index` (nothing can name them).
    pub(crate) stray: Vec<Vec<u8>>,
}

impl Store {
    /// Writes a blob over 1 MiB whole: every part, then the outboard, in one batch.
    pub(crate) fn write_parted(&self, id: ContentId, ob: &Outboard, bytes: &[u8]) -> Result<()> {
        let corrupt = || StoreError::Corrupt(id);
        let mut batch = WriteBatch::default();
        // A copy written whole before parts existed would be counted twice.
        batch.delete_cf(self.cf(Column::Blobs), id.0);
        for index in 0..ob.groups() {
            let (offset, len) = ob.group_range(index).ok_or_else(corrupt)?;
            let part = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(offset + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(corrupt)?;
            batch.put_cf(self.cf(Column::Parts), part_key(id, ob.len, index)?, part);
        }
        // Last: its presence makes the blob held.
        batch.put_cf(self.cf(Column::Outboards), id.0, ob.encode());
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    /// Adds the deletion of a blob in every form (whole, outboard, parts) to `batch`.
    pub(crate) fn delete_blob_in(&self, batch: &mut WriteBatch, id: ContentId) {
        batch.delete_cf(self.cf(Column::Blobs), id.0);
        batch.delete_cf(self.cf(Column::Outboards), id.0);
        batch.delete_range_cf(
            self.cf(Column::Parts),
            &parts_start(id)[..],
            &parts_end(id)[..],
        );
    }

    /// The outboard entry of a parted blob, decoded; with `verify`, also checked against the
    /// id. A malformed or wrong entry is disk corruption.
    fn load_outboard(&self, id: ContentId, verify: bool) -> Result<Option<Outboard>> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(Column::Outboards), id.0)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        let ob = Outboard::decode(&bytes).map_err(|_| StoreError::Corrupt(id))?;
        // Parts are keyed by 1 MiB group: an entry in another size cannot describe them.
        if ob.group_log != PART_LOG || (verify && ob.verify(&id.0).is_err()) {
            return Err(StoreError::Corrupt(id));
        }
        Ok(Some(ob))
    }

    /// The verified outboard entry of a parted blob.
    pub(crate) fn stored_outboard(&self, id: ContentId) -> Result<Option<Outboard>> {
        self.load_outboard(id, true)
    }

    /// Bytes `offset .. offset + len` of a parted blob (within it), reading and verifying only
    /// the parts that cover them. A missing or bad part is corruption: the outboard entry says
    /// every part was written.
    pub(crate) fn read_parts(
        &self,
        id: ContentId,
        ob: &Outboard,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let corrupt = || StoreError::Corrupt(id);
        let cap = usize::try_from(len).map_err(|_| StoreError::TooLarge { id, len: ob.len })?;
        let mut out = Vec::with_capacity(cap);
        if len == 0 {
            return Ok(out);
        }
        let end = offset + len;
        let first = offset >> PART_LOG;
        let last = (end - 1) >> PART_LOG;
        for index in first..=last {
            let (group_offset, group_len) = ob.group_range(index).ok_or_else(corrupt)?;
            let part = self
                .db
                .get_pinned_cf(self.cf(Column::Parts), part_key(id, ob.len, index)?)
                .map_err(|e| self.db_err(e))?
                .ok_or_else(corrupt)?;
            ob.verify_group(&id.0, index, &part)
                .map_err(|_| StoreError::Corrupt(id))?;
            // The part is exactly `group_len` bytes (verified), so both ends lie within it.
            let from = offset.max(group_offset) - group_offset;
            let to = end.min(group_offset + group_len) - group_offset;
            let slice = usize::try_from(from)
                .ok()
                .zip(usize::try_from(to).ok())
                .and_then(|(a, b)| part.get(a..b))
                .ok_or_else(corrupt)?;
            out.extend_from_slice(slice);
        }
        Ok(out)
    }

    /// A blob's length in bytes, or `None` if it is not held. Reads no part of a parted blob.
    pub fn blob_len(&self, id: ContentId) -> Result<Option<u64>> {
        // The length is all that is needed: no check against the id (reads do that).
        if let Some(ob) = self.load_outboard(id, false)? {
            return Ok(Some(ob.len));
        }
        Ok(self
            .db
            .get_pinned_cf(self.cf(Column::Blobs), id.0)
            .map_err(|e| self.db_err(e))?
            .map(|b| b.len() as u64))
    }

    /// A held blob's outboard in 1 MiB groups, checked against the id, to serve to a peer that
    /// downloads it: the stored one for a parted blob; for a blob of at most 1 MiB the one
    /// without group hashes ([`Outboard::small`]); `None` if the blob is not held.
    pub fn outboard(&self, id: ContentId) -> Result<Option<Outboard>> {
        if let Some(ob) = self.stored_outboard(id)? {
            return Ok(Some(ob));
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(Column::Blobs), id.0)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        if !is_parted(bytes.len() as u64) {
            return Ok(Some(Outboard::small(bytes.len() as u64, PART_LOG)));
        }
        // A blob over 1 MiB written whole before parts existed: compute its outboard (and so
        // check it against the id on the way).
        let (actual, ob) = outboard_of(&bytes)?;
        if actual != id {
            return Err(StoreError::Corrupt(id));
        }
        Ok(Some(ob))
    }

    /// Bytes `offset .. offset + len` of a blob, verified; `None` if the blob is not held. A
    /// parted blob reads only the parts that cover the range, each checked against the
    /// outboard; a whole blob is read and checked whole. A range past the end is
    /// [`StoreError::Range`].
    pub fn get_range(&self, id: ContentId, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let check = |blob_len: u64| match offset.checked_add(len) {
            Some(end) if end <= blob_len => Ok(end),
            _ => Err(StoreError::Range {
                id,
                offset,
                len,
                blob_len,
            }),
        };
        // Not checked against the id here (that merges every group hash, per request): a bad
        // group hash fails its part's check just as a bad part does.
        if let Some(ob) = self.load_outboard(id, false)? {
            check(ob.len)?;
            return self.read_parts(id, &ob, offset, len).map(Some);
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(Column::Blobs), id.0)
            .map_err(|e| self.db_err(e))?
        else {
            return Ok(None);
        };
        if ContentId::of(&bytes) != id {
            return Err(StoreError::Corrupt(id));
        }
        let end = check(bytes.len() as u64)?;
        // Within `bytes.len()`, so both ends fit in usize.
        Ok(bytes.get(offset as usize..end as usize).map(<[u8]>::to_vec))
    }

    /// Writes group `index` of a blob being downloaded, after checking `outboard` against the
    /// id and the bytes against the outboard (either failing is [`StoreError::Outboard`]:
    /// fetch from another peer). The blob is not held until [`Store::finish_parts`].
    ///
    /// A blob of one group (at most 1 MiB) has no parts: its bytes, checked whole against the
    /// id, go straight to [`Column::Blobs`], so every blob of at most 1 MiB is stored whole
    /// and is held at once.
    ///
    /// A download should [`Store::pin`] the id: parts left unwritten to for a whole sweep
    /// interval, unpinned, are deleted as a stale download.
    pub fn put_part(
        &self,
        id: ContentId,
        outboard: &Outboard,
        index: u64,
        bytes: &[u8],
    ) -> Result<()> {
        check_part_log(id, outboard)?;
        let refused = |source| StoreError::Outboard { id, source };
        outboard.verify(&id.0).map_err(refused)?;
        outboard
            .verify_group(&id.0, index, bytes)
            .map_err(refused)?;
        self.gc.written(id);
        if !is_parted(outboard.len) {
            return self
                .db
                .put_cf(self.cf(Column::Blobs), id.0, bytes)
                .map_err(|e| self.db_err(e));
        }
        self.db
            .put_cf(
                self.cf(Column::Parts),
                part_key(id, outboard.len, index)?,
                bytes,
            )
            .map_err(|e| self.db_err(e))
    }

    /// Indices of the groups of `id` already written (by [`Store::put_part`] or a whole
    /// write), in order: what a resumed download need not fetch again. A part counts when its
    /// length is the group's. (This reads the parts present: RocksDB has no key-only scan of
    /// blob-file values; it is done once per resumed download.)
    pub fn held_parts(&self, id: ContentId, outboard: &Outboard) -> Result<Vec<u64>> {
        check_part_log(id, outboard)?;
        if !is_parted(outboard.len) {
            let whole = self
                .db
                .get_pinned_cf(self.cf(Column::Blobs), id.0)
                .map_err(|e| self.db_err(e))?;
            return Ok(match whole {
                Some(b) if b.len() as u64 == outboard.len => vec![0],
                _ => Vec::new(),
            });
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(parts_start(id).to_vec());
        opts.set_iterate_upper_bound(parts_end(id).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(Column::Parts), opts);
        it.seek(parts_start(id));
        let mut held = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some((_, index)) = split_part_key(k) {
                if outboard
                    .group_range(index)
                    .is_some_and(|(_, len)| v.len() as u64 == len)
                {
                    held.push(index);
                }
            }
            it.next();
        }
        it.status().map_err(|e| self.db_err(e))?;
        Ok(held)
    }

    /// Completes a download: checks `outboard` against the id and that every part is
    /// present ([`StoreError::MissingParts`] says how many are not), then writes the outboard
    /// entry, and the blob is held. For a blob of one group (stored whole by
    /// [`Store::put_part`]) it only checks that the blob is there.
    pub fn finish_parts(&self, id: ContentId, outboard: &Outboard) -> Result<()> {
        check_part_log(id, outboard)?;
        outboard
            .verify(&id.0)
            .map_err(|source| StoreError::Outboard { id, source })?;
        // Before looking at the parts: a sweep deciding now to delete them as a stale
        // download sees the id young and spares them; one that already did makes the check
        // below fail, never a held blob with parts missing.
        self.gc.written(id);
        let groups = outboard.groups();
        let missing = groups.saturating_sub(self.held_parts(id, outboard)?.len() as u64);
        if missing > 0 {
            return Err(StoreError::MissingParts {
                id,
                missing,
                groups,
            });
        }
        if !is_parted(outboard.len) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Column::Blobs), id.0);
        batch.put_cf(self.cf(Column::Outboards), id.0, outboard.encode());
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    /// Part keys whose id has no outboard entry, given the ids that have one (`held`, in
    /// ascending order). Probes only the gaps between held blobs, each with an iterator bounded
    /// by the next held id: RocksDB stops at the bound before loading a value, so the parts of
    /// held blobs (most of the column, GBs) are never read, and an unfinished download costs
    /// one part read.
    pub(crate) fn unfinished_parts(&self, held: &[ContentId]) -> Result<Unfinished> {
        let mut found = Unfinished::default();
        let mut lower: Vec<u8> = Vec::new();
        for upper in held.iter().map(Some).chain(std::iter::once(None)) {
            let mut opts = ReadOptions::default();
            if let Some(upper) = upper {
                opts.set_iterate_upper_bound(upper.0.to_vec());
            }
            let mut it = self.db.raw_iterator_cf_opt(self.cf(Column::Parts), opts);
            it.seek(&lower);
            while let Some(k) = it.key() {
                match split_part_key(k) {
                    Some((id, _)) => {
                        found.ids.push(id);
                        // Skip the rest of this download's parts.
                        it.seek(parts_end(id));
                    }
                    None => {
                        found.stray.push(k.to_vec());
                        it.next();
                    }
                }
            }
            it.status().map_err(|e| self.db_err(e))?;
            if let Some(upper) = upper {
                lower = parts_end(*upper).to_vec();
            }
        }
        Ok(found)
    }
}

/// Parts are 1 MiB groups: an outboard in another size cannot describe them.
fn check_part_log(id: ContentId, outboard: &Outboard) -> Result<()> {
    if outboard.group_log == PART_LOG {
        Ok(())
    } else {
        Err(StoreError::PartSize {
            id,
            group_log: outboard.group_log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outboard::OutboardError;
    use std::collections::HashSet;

    const M: u64 = 1 << PART_LOG;

    /// Pseudo-random bytes (xorshift), so no two groups are alike.
    fn blob(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// 3.5 MiB + 123 bytes: three whole parts and a short one.
    fn big(seed: u64) -> Vec<u8> {
        blob((3 * M + M / 2 + 123) as usize, seed)
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        (dir, s)
    }

    fn part_keys(s: &Store) -> Vec<(ContentId, u64)> {
        s.keys(Column::Parts)
            .expect("keys")
            .iter()
            .map(|k| split_part_key(k).expect("part key"))
            .collect()
    }

    fn slice(b: &[u8], offset: u64, len: u64) -> Vec<u8> {
        b[offset as usize..(offset + len) as usize].to_vec()
    }

    #[test]
    fn a_big_blob_round_trips_in_parts_and_serves_any_range() {
        let (dir, s) = open();
        let b = big(1);
        let len = b.len() as u64;
        let id = s.put_blob(&b).expect("put");
        assert_eq!(
            id,
            ContentId::of(&b),
            "the id merged from the parts is blake3's"
        );
        // Stored as four parts and an outboard, nothing whole.
        assert!(s.keys(Column::Blobs).expect("keys").is_empty());
        assert_eq!(
            part_keys(&s),
            (0..4).map(|i| (id, i)).collect::<Vec<_>>(),
            "parts in order under the id"
        );
        assert_eq!(
            s.keys(Column::Outboards).expect("keys"),
            vec![id.0.to_vec()]
        );
        assert!(s.has_blob(id).expect("has"));
        assert_eq!(s.blob_count().expect("count"), 1);
        assert_eq!(s.blob_len(id).expect("len"), Some(len));
        let ob = s.outboard(id).expect("outboard").expect("held");
        assert_eq!((ob.len, ob.group_log, ob.cvs.len()), (len, PART_LOG, 4));
        ob.verify(&id.0).expect("outboard checks against the id");
        assert_eq!(s.get_blob(id).expect("get"), Some(b.clone()));
        for (offset, n) in [
            (0, 10),
            (0, M),
            (M - 5, 10),
            (M, M),
            (M - 1, 2 * M + 2),
            (3 * M, M / 2 + 123),
            (3 * M + 7, 100),
            (len - 1, 1),
            (0, len),
            (len, 0),
            (12_345, 0),
        ] {
            assert_eq!(
                s.get_range(id, offset, n).expect("range"),
                Some(slice(&b, offset, n)),
                "{offset}+{n}"
            );
        }
        for (offset, n) in [
            (len, 1),
            (len - 1, 2),
            (len + 10, 0),
            (u64::MAX, 2),
            (1, u64::MAX),
        ] {
            assert!(
                matches!(
                    s.get_range(id, offset, n),
                    Err(StoreError::Range { blob_len, .. }) if blob_len == len
                ),
                "{offset}+{n}"
            );
        }
        // Writing it again (verified) is harmless; a wrong id is refused.
        s.put_blob_verified(id, &b).expect("same bytes");
        let other = ContentId::of(b"other");
        assert!(matches!(
            s.put_blob_verified(other, &b),
            Err(StoreError::HashMismatch { expected, actual }) if expected == other && actual == id
        ));
        let missing = ContentId::of(b"missing");
        assert_eq!(s.get_range(missing, 0, 1).expect("range"), None);
        assert_eq!(s.blob_len(missing).expect("len"), None);
        assert_eq!(s.outboard(missing).expect("outboard"), None);
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.get_blob(id).expect("get"), Some(b));
    }

    #[test]
    fn small_blobs_stay_whole_and_serve_ranges() {
        let (_dir, s) = open();
        for len in [0usize, 1, 1000, M as usize] {
            let b = blob(len, 7);
            let id = s.put_blob(&b).expect("put");
            assert!(s
                .db
                .get_pinned_cf(s.cf(Column::Blobs), id.0)
                .expect("get")
                .is_some());
            assert_eq!(s.blob_len(id).expect("len"), Some(len as u64));
            let ob = s.outboard(id).expect("outboard").expect("held");
            assert_eq!(ob, Outboard::small(len as u64, PART_LOG));
            ob.verify(&id.0).expect("verifies");
            let n = (len as u64).min(10);
            assert_eq!(
                s.get_range(id, len as u64 - n, n).expect("range"),
                Some(slice(&b, len as u64 - n, n))
            );
            assert!(matches!(
                s.get_range(id, len as u64, 1),
                Err(StoreError::Range { .. })
            ));
        }
        assert!(part_keys(&s).is_empty());
        assert!(s.keys(Column::Outboards).expect("keys").is_empty());
        assert_eq!(s.blob_count().expect("count"), 4);
    }

    #[test]
    fn a_big_blob_written_whole_before_parts_stays_readable() {
        let (_dir, s) = open();
        let b = big(2);
        let id = ContentId::of(&b);
        s.db.put_cf(s.cf(Column::Blobs), id.0, &b).expect("raw put");
        assert!(s.has_blob(id).expect("has"));
        assert_eq!(s.blob_len(id).expect("len"), Some(b.len() as u64));
        assert_eq!(s.get_blob(id).expect("get"), Some(b.clone()));
        assert_eq!(
            s.get_range(id, M - 3, 6).expect("range"),
            Some(slice(&b, M - 3, 6))
        );
        let ob = s.outboard(id).expect("outboard").expect("held");
        assert_eq!(ob, Outboard::compute(&b, PART_LOG).expect("compute"));
        // Written again, it moves to parts and is counted once.
        s.put_blob(&b).expect("put");
        assert!(s.keys(Column::Blobs).expect("keys").is_empty());
        assert_eq!(s.blob_count().expect("count"), 1);
        assert_eq!(s.get_blob(id).expect("get"), Some(b));
    }

    #[test]
    fn a_download_writes_verified_parts_and_resumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = big(3);
        let id = ContentId::of(&b);
        let ob = Outboard::compute(&b, PART_LOG).expect("compute");
        let part = |i: u64| {
            let (o, n) = ob.group_range(i).expect("range");
            slice(&b, o, n)
        };
        {
            let s = Store::open(dir.path()).expect("open");
            assert_eq!(s.held_parts(id, &ob).expect("held"), Vec::<u64>::new());
            s.put_part(id, &ob, 0, &part(0)).expect("part 0");
            s.put_part(id, &ob, 2, &part(2)).expect("part 2");
            assert_eq!(s.held_parts(id, &ob).expect("held"), vec![0, 2]);
            // Wrong bytes, a short part, a part past the end: refused, nothing written.
            let mut bad = part(1);
            bad[77] ^= 1;
            assert!(matches!(
                s.put_part(id, &ob, 1, &bad),
                Err(StoreError::Outboard {
                    source: OutboardError::Group { index: 1, .. },
                    ..
                })
            ));
            assert!(s.put_part(id, &ob, 1, &part(0)).is_err());
            assert!(s.put_part(id, &ob, 3, &part(3)[1..]).is_err());
            assert!(s.put_part(id, &ob, 4, &part(3)).is_err());
            // An outboard that does not check against the id, or in another group size.
            let mut swapped = ob.clone();
            swapped.cvs.swap(0, 1);
            assert!(matches!(
                s.put_part(id, &swapped, 1, &part(1)),
                Err(StoreError::Outboard {
                    source: OutboardError::Root,
                    ..
                })
            ));
            let other_size = Outboard::compute(&b, 16).expect("compute");
            assert!(matches!(
                s.put_part(id, &other_size, 0, &b[..1 << 16]),
                Err(StoreError::PartSize { group_log: 16, .. })
            ));
            assert_eq!(s.held_parts(id, &ob).expect("held"), vec![0, 2]);
            // Not held until finished, and not finishable with parts missing.
            assert!(!s.has_blob(id).expect("has"));
            assert_eq!(s.blob_count().expect("count"), 0);
            assert_eq!(s.get_blob(id).expect("get"), None);
            assert_eq!(s.blob_len(id).expect("len"), None);
            assert!(matches!(
                s.finish_parts(id, &ob),
                Err(StoreError::MissingParts {
                    missing: 2,
                    groups: 4,
                    ..
                })
            ));
            assert!(!s.has_blob(id).expect("has"));
        }
        // Interrupted; resumed after a restart.
        let s = Store::open(dir.path()).expect("reopen");
        let held = s.held_parts(id, &ob).expect("held");
        assert_eq!(held, vec![0, 2]);
        for i in (0..ob.groups()).filter(|i| !held.contains(i)) {
            s.put_part(id, &ob, i, &part(i)).expect("part");
        }
        assert!(matches!(
            s.finish_parts(id, &swapped_root(&ob)),
            Err(StoreError::Outboard { .. })
        ));
        s.finish_parts(id, &ob).expect("finish");
        assert!(s.has_blob(id).expect("has"));
        assert_eq!(s.blob_count().expect("count"), 1);
        assert_eq!(s.held_parts(id, &ob).expect("held"), vec![0, 1, 2, 3]);
        assert_eq!(s.get_blob(id).expect("get"), Some(b));
    }

    fn swapped_root(ob: &Outboard) -> Outboard {
        let mut bad = ob.clone();
        bad.cvs.swap(1, 3);
        bad
    }

    #[test]
    fn a_one_group_download_is_stored_whole() {
        let (_dir, s) = open();
        for len in [0usize, 5000, M as usize] {
            let b = blob(len, 4);
            let id = ContentId::of(&b);
            let ob = Outboard::compute(&b, PART_LOG).expect("compute");
            assert!(matches!(
                s.finish_parts(id, &ob),
                Err(StoreError::MissingParts {
                    missing: 1,
                    groups: 1,
                    ..
                })
            ));
            if len > 0 {
                let mut bad = b.clone();
                bad[len / 2] ^= 1;
                assert!(s.put_part(id, &ob, 0, &bad).is_err());
            }
            s.put_part(id, &ob, 0, &b).expect("part");
            assert_eq!(s.held_parts(id, &ob).expect("held"), vec![0]);
            s.finish_parts(id, &ob).expect("finish");
            assert!(s.has_blob(id).expect("has"));
            assert_eq!(s.get_blob(id).expect("get"), Some(b));
        }
        assert!(part_keys(&s).is_empty(), "small blobs are whole");
        assert!(s.keys(Column::Outboards).expect("keys").is_empty());
        assert_eq!(s.blob_count().expect("count"), 3);
    }

    #[test]
    fn a_corrupt_part_is_caught_where_it_is_read() {
        let (_dir, s) = open();
        let b = big(5);
        let id = s.put_blob(&b).expect("put");
        let key = part_key(id, b.len() as u64, 1).expect("key");
        let mut bad = slice(&b, M, M);
        bad[1000] ^= 0x40;
        s.db.put_cf(s.cf(Column::Parts), key, &bad)
            .expect("raw put");
        let corrupt =
            |r: Result<Option<Vec<u8>>>| matches!(r, Err(StoreError::Corrupt(c)) if c == id);
        assert!(corrupt(s.get_range(id, M + 10, 5)));
        assert!(
            corrupt(s.get_range(id, M - 1, 2)),
            "a range that touches it"
        );
        assert!(corrupt(s.get_blob(id)));
        // Ranges in other parts still read.
        assert_eq!(
            s.get_range(id, 5, 10).expect("range"),
            Some(slice(&b, 5, 10))
        );
        assert_eq!(
            s.get_range(id, 2 * M, M + 3).expect("range"),
            Some(slice(&b, 2 * M, M + 3))
        );
        // A missing part of a held blob is corruption too.
        s.db.delete_cf(s.cf(Column::Parts), part_key(id, 0, 3).expect("key"))
            .expect("raw delete");
        assert!(corrupt(s.get_range(id, 3 * M, 1)));
        // So is a garbled outboard entry.
        s.db.put_cf(s.cf(Column::Outboards), id.0, b"garbage")
            .expect("raw put");
        assert!(corrupt(s.get_range(id, 0, 1)));
        assert!(matches!(s.blob_len(id), Err(StoreError::Corrupt(_))));
        assert!(matches!(s.outboard(id), Err(StoreError::Corrupt(_))));
        // An entry that decodes but does not merge to the id.
        let ob = Outboard::compute(&b, PART_LOG).expect("compute");
        s.db.put_cf(s.cf(Column::Outboards), id.0, swapped_root(&ob).encode())
            .expect("raw put");
        assert!(corrupt(s.get_blob(id)));
        assert!(matches!(s.outboard(id), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn deleting_a_parted_blob_removes_its_parts_and_outboard() {
        let (_dir, s) = open();
        let (a, b) = (big(6), big(7));
        let ia = s.put_blob(&a).expect("put");
        let ib = s.put_blob(&b).expect("put");
        // And an unfinished download.
        let c = big(8);
        let ic = ContentId::of(&c);
        let oc = Outboard::compute(&c, PART_LOG).expect("compute");
        s.put_part(ic, &oc, 1, &slice(&c, M, M)).expect("part");
        s.delete_blob(ia).expect("delete");
        s.delete_blob(ic).expect("delete");
        assert!(!s.has_blob(ia).expect("has"));
        assert_eq!(s.get_blob(ia).expect("get"), None);
        assert_eq!(s.held_parts(ic, &oc).expect("held"), Vec::<u64>::new());
        assert!(part_keys(&s).iter().all(|(id, _)| *id == ib));
        assert_eq!(part_keys(&s).len(), 4);
        assert_eq!(
            s.keys(Column::Outboards).expect("keys"),
            vec![ib.0.to_vec()]
        );
        assert_eq!(s.get_blob(ib).expect("get"), Some(b));
        s.delete_blob(ia).expect("absent is fine");
    }

    #[test]
    fn unfinished_downloads_are_found_between_held_blobs() {
        let (_dir, s) = open();
        let mut held = Vec::new();
        let mut unfinished = HashSet::new();
        for seed in 0..12u64 {
            // Small parted blobs keep this quick: 1 MiB + a little.
            let b = blob((M + 1 + seed) as usize, 100 + seed);
            if seed % 3 == 0 {
                held.push(s.put_blob(&b).expect("put"));
            } else {
                let id = ContentId::of(&b);
                let ob = Outboard::compute(&b, PART_LOG).expect("compute");
                s.put_part(
                    id,
                    &ob,
                    seed % 2,
                    &slice(&b, (seed % 2) * M, ob.group_range(seed % 2).expect("r").1),
                )
                .expect("part");
                unfinished.insert(id);
            }
        }
        held.sort();
        let found = s.unfinished_parts(&held).expect("probe");
        assert!(found.stray.is_empty());
        assert_eq!(found.ids.len(), unfinished.len(), "each once");
        assert_eq!(
            found.ids.iter().copied().collect::<HashSet<_>>(),
            unfinished
        );
        assert!(found.ids.windows(2).all(|w| w[0] < w[1]), "in key order");
    }
}
