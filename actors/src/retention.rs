//! Retention: which records and blobs a node keeps, and when it sweeps the rest.
//!
//! After every applied window the trainer writes the window's record and, in the same synced
//! batch, expires what is no longer kept ([`expire`]); every `node.gc_every_windows` applied
//! windows (every window while the store is over `node.disk_budget_mb`) it sweeps the blob
//! column ([`sweep`]). The **roots** of the sweep, precisely:
//!
//! * the **kept windows** (`windows` column): the latest `checkpoint.keep_recent` records and
//!   the periodic ones (window a multiple of `checkpoint.every_windows`, the latest
//!   `checkpoint.keep_periodic` of them when that is not 0). Of each kept window its model and
//!   outer state; of the recent ones also the base model and the accepted updates (a follower
//!   one window behind fetches them to aggregate the record itself);
//! * **this node's own recent announcements** (`announcements` column, uid = ours): the update
//!   and the sync proof it published; announcements older than [`announcement_windows`] are
//!   expired, so these are the last few windows' (validators fetch a proof while its window is
//!   open or soon after it closes);
//! * **pins** ([`apiary_storage::Pin`]): the trainer's current model and outer state (which
//!   need no record: the genesis model), the updates the evaluator scored in windows not yet
//!   aggregated, and the blobs of a record being applied;
//! * **young blobs**: written since the previous sweep began (a blob of work still in flight
//!   that no record names yet).
//!
//! Everything else — a rejected or below-`min_score` update, a superseded checkpoint, the
//! accepted updates of a window that left the recent set, an old sync proof — is deleted.
//! Records expire too: windows records that are not kept, announcements of windows before the
//! last [`announcement_windows`], weight submissions of windows more than [`WEIGHTS_KEPT`]
//! back. Scores are one record per uid (bounded by the subnet's size) and are kept.

use crate::context::{Metrics, NodeContext};
use crate::protocol::UpdateAnnouncement;
use crate::trainer::{AppliedWindow, SYNC_PROOFS_KEPT};
use apiary_storage::{u64_key, Batch, Column, ContentId, StoreError, SweepReport};
use std::collections::HashSet;

/// Weight submissions kept: those of the last this many windows.
pub const WEIGHTS_KEPT: u64 = 256;

/// Windows whose announcements are kept (counting back from the latest applied window).
pub fn announcement_windows(ctx: &NodeContext) -> u64 {
    (ctx.cfg.checkpoint.keep_recent as u64).max(SYNC_PROOFS_KEPT)
}

/// Which of `windows` (ascending) are kept, as flags: recent or periodic.
pub fn kept(windows: &[u64], keep_recent: usize, every: u64, keep_periodic: usize) -> Vec<bool> {
    let n = windows.len();
    let mut keep: Vec<bool> = (0..n).map(|i| i + keep_recent >= n).collect();
    let periodic: Vec<usize> = (0..n)
        .filter(|&i| windows[i].is_multiple_of(every.max(1)))
        .collect();
    let skip = if keep_periodic == 0 {
        0
    } else {
        periodic.len().saturating_sub(keep_periodic)
    };
    for &i in &periodic[skip..] {
        keep[i] = true;
    }
    keep
}

/// Adds to `batch` the deletions of the records no longer kept once `latest` is applied (its
/// record is in `batch` already and `records` includes it). Returns the kept records.
pub fn expire(
    ctx: &NodeContext,
    batch: &mut Batch<'_>,
    records: Vec<AppliedWindow>,
    latest: u64,
) -> Result<Vec<(bool, AppliedWindow)>, StoreError> {
    let c = &ctx.cfg.checkpoint;
    let windows: Vec<u64> = records.iter().map(|r| r.window).collect();
    let flags = kept(&windows, c.keep_recent, c.every_windows, c.keep_periodic);
    let n = records.len();
    let mut out = Vec::new();
    for (i, (rec, keep)) in records.into_iter().zip(flags).enumerate() {
        if keep {
            out.push((i + c.keep_recent >= n, rec));
        } else {
            batch.delete(Column::Windows, &u64_key(rec.window));
        }
    }
    let cutoff = (latest + 1).saturating_sub(announcement_windows(ctx));
    for k in ctx.store.keys(Column::Announcements)? {
        if window_of_key(&k).is_some_and(|w| w < cutoff) {
            batch.delete(Column::Announcements, &k);
        }
    }
    let cutoff = (latest + 1).saturating_sub(WEIGHTS_KEPT);
    for k in ctx.store.keys(Column::Weights)? {
        if window_of_key(&k).is_some_and(|w| w < cutoff) {
            batch.delete(Column::Weights, &k);
        }
    }
    Ok(out)
}

fn window_of_key(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The roots named by records: kept windows (`(recent, record)`) and our own announcements.
pub fn roots(
    ctx: &NodeContext,
    kept: &[(bool, AppliedWindow)],
) -> Result<HashSet<ContentId>, StoreError> {
    // Only the fields that name blobs (a lazy miner's announcement carries a NaN loss, which
    // JSON stores as null and the full type does not read back).
    let anns = ctx.store.scan::<AnnouncedBlobs>(Column::Announcements)?;
    Ok(roots_of(kept, anns.into_iter().map(|(_, a)| a), ctx.uid()))
}

/// The blobs an announcement names.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AnnouncedBlobs {
    /// Announcing uid.
    pub uid: u16,
    /// The update.
    pub update: ContentId,
    /// Its sync proof.
    #[serde(default)]
    pub sync_slice: Option<ContentId>,
}

impl From<&UpdateAnnouncement> for AnnouncedBlobs {
    fn from(a: &UpdateAnnouncement) -> Self {
        AnnouncedBlobs {
            uid: a.uid,
            update: a.update,
            sync_slice: a.sync_slice,
        }
    }
}

/// The roots of `kept` windows (`(recent, record)`) and of the announcements of `uid` among
/// `anns`.
pub fn roots_of(
    kept: &[(bool, AppliedWindow)],
    anns: impl Iterator<Item = AnnouncedBlobs>,
    uid: Option<u16>,
) -> HashSet<ContentId> {
    let mut roots = HashSet::new();
    for (recent, w) in kept {
        roots.insert(w.model);
        roots.insert(w.outer_state);
        if *recent {
            roots.insert(w.base_model);
            roots.extend(w.accepted.iter().map(|(_, id)| *id));
        }
    }
    for ann in anns {
        if Some(ann.uid) == uid {
            roots.insert(ann.update);
            roots.extend(ann.sync_slice);
        }
    }
    roots
}

/// Sweeps between two compactions that give the swept space back ([`apiary_storage::Store::reclaim`]).
pub const RECLAIM_EVERY_SWEEPS: u64 = 8;

/// Whether a sweep is due after `applied` windows were applied since start (or the store is
/// over its budget, which is counted and logged here): `Some(reclaim)`, with whether the
/// sweep should also compact to give the space back (every [`RECLAIM_EVERY_SWEEPS`] sweeps,
/// and every sweep while over budget).
pub fn sweep_due(ctx: &NodeContext, applied: u64) -> Option<bool> {
    let n = &ctx.cfg.node;
    let every = n.gc_every_windows;
    let due = every > 0 && applied.is_multiple_of(every);
    let reclaim = due && (applied / every.max(1)).is_multiple_of(RECLAIM_EVERY_SWEEPS);
    if n.disk_budget_mb > 0 {
        let used = ctx.store.disk_bytes();
        let budget = n.disk_budget_mb.saturating_mul(1 << 20);
        if used > budget {
            Metrics::inc(&ctx.metrics.disk_over_budget);
            tracing::error!(
                used_mb = used >> 20,
                budget_mb = n.disk_budget_mb,
                "store is over node.disk_budget_mb; sweeping after every window (raise the \
                 budget, or lower checkpoint.keep_recent / keep_periodic)"
            );
            return Some(true);
        }
    }
    due.then_some(reclaim)
}

/// Sweeps the blob column from the roots of `kept`.
pub fn sweep(
    ctx: &NodeContext,
    kept: &[(bool, AppliedWindow)],
    reclaim: bool,
) -> Result<SweepReport, StoreError> {
    let roots = roots(ctx, kept)?;
    let report = ctx.store.sweep(&roots)?;
    Metrics::inc(&ctx.metrics.gc_sweeps);
    ctx.metrics
        .blobs_swept
        .fetch_add(report.deleted as u64, std::sync::atomic::Ordering::Relaxed);
    let reclaimed = reclaim && ctx.store.reclaim();
    tracing::info!(
        roots = roots.len(),
        deleted = report.deleted,
        kept = report.scanned - report.deleted,
        disk_mb = report.bytes_after >> 20,
        ms = report.duration_ms,
        reclaimed,
        "swept unreferenced blobs"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(window: u64, base: ContentId, model: ContentId, outer: ContentId) -> AppliedWindow {
        AppliedWindow {
            window,
            base_model: base,
            model,
            outer_state: outer,
            accepted: Vec::new(),
            held_out_loss: 0.0,
            caught_up: false,
        }
    }

    /// Every kind of root present at once: no root is swept, everything else is.
    #[test]
    fn a_sweep_never_removes_a_root_of_any_kind() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = apiary_storage::Store::open(dir.path()).expect("open");
        let mut n = 0u32;
        let mut blob = || {
            n += 1;
            let mut b = vec![0u8; 20_000];
            b[..4].copy_from_slice(&n.to_le_bytes());
            store.put_blob(&b).expect("put")
        };
        // Windows 1..=12, keep 3 recent and every 10th.
        let mut records = Vec::new();
        let mut base = blob();
        let genesis = base;
        for w in 1..=12u64 {
            let (model, outer) = (blob(), blob());
            let mut r = applied(w, base, model, outer);
            r.accepted = vec![(1, blob()), (2, blob())];
            records.push(r);
            base = model;
        }
        let lazy_update = blob();
        let (own_update, own_proof, other_update) = (blob(), blob(), blob());
        let pinned = blob();
        let anns = [
            UpdateAnnouncement {
                netuid: 1,
                window: 12,
                uid: 7,
                base_model: base,
                update: own_update,
                size: 1,
                loss: 0.0,
                sync_slice: Some(own_proof),
            },
            UpdateAnnouncement {
                netuid: 1,
                window: 12,
                uid: 8,
                base_model: base,
                update: other_update,
                size: 1,
                loss: 0.0,
                sync_slice: None,
            },
        ];
        let windows: Vec<u64> = records.iter().map(|r| r.window).collect();
        let flags = kept(&windows, 3, 10, 0);
        let kept: Vec<(bool, AppliedWindow)> = records
            .iter()
            .zip(&flags)
            .enumerate()
            .filter(|(_, (_, k))| **k)
            .map(|(i, (r, _))| (i + 3 >= records.len(), r.clone()))
            .collect();
        let roots = roots_of(&kept, anns.iter().map(AnnouncedBlobs::from), Some(7));
        let pin = store.pin(pinned);
        // The first sweep spares everything written since start (young); the second sweeps.
        store.sweep(&roots).expect("sweep");
        // Written between the sweeps: young at the next one.
        let young = blob();
        let report = store.sweep(&roots).expect("sweep");
        let mut must_stay: Vec<ContentId> = vec![own_update, own_proof, pinned, young];
        for (recent, r) in &kept {
            must_stay.extend([r.model, r.outer_state]);
            if *recent {
                must_stay.push(r.base_model);
                must_stay.extend(r.accepted.iter().map(|(_, id)| *id));
            }
        }
        must_stay.sort();
        must_stay.dedup();
        for id in &must_stay {
            assert!(store.has_blob(*id).expect("has"), "root {id:?} was swept");
        }
        // Gone: non-kept windows' checkpoints and updates, periodic windows' updates, the
        // lazy miner's update, another miner's update, the genesis model no record keeps.
        let gone: Vec<ContentId> = [lazy_update, other_update, genesis]
            .into_iter()
            .chain(
                records[..9]
                    .iter()
                    .filter(|r| r.window != 10)
                    .flat_map(|r| [r.model, r.outer_state]),
            )
            .chain(
                records[..9]
                    .iter()
                    .flat_map(|r| r.accepted.iter().map(|(_, id)| *id)),
            )
            .filter(|id| !must_stay.contains(id))
            .collect();
        for id in &gone {
            assert!(!store.has_blob(*id).expect("has"), "{id:?} not swept");
        }
        assert_eq!(report.deleted, gone.len(), "{report:?}");
        assert_eq!(store.blob_count().expect("count"), must_stay.len());
        drop(pin);
    }

    #[test]
    fn recent_and_periodic_windows_are_kept() {
        let w: Vec<u64> = (1..=25).collect();
        let k = kept(&w, 3, 10, 0);
        let kept_w: Vec<u64> = w.iter().zip(&k).filter(|p| *p.1).map(|p| *p.0).collect();
        assert_eq!(kept_w, vec![10, 20, 23, 24, 25]);
        let k = kept(&w, 3, 10, 1);
        let kept_w: Vec<u64> = w.iter().zip(&k).filter(|p| *p.1).map(|p| *p.0).collect();
        assert_eq!(kept_w, vec![20, 23, 24, 25]);
        assert_eq!(kept(&[5], 4, 10, 0), vec![true]);
    }
}
