//! The adversary kit (cargo feature `adversary`; release builds leave it out): miners that
//! cheat on their work, selected per node by `train.adversary` ([`AdversaryKind`]).
//!
//! A cheating miner follows the swarm like an honest one — it applies every record and sends a
//! valid sync proof of the current model — and only cheats on the update it announces:
//!
//! | kind | what it announces |
//! |---|---|
//! | `copier` | another miner's update blob of the same window, byte for byte (same content id) |
//! | `noisy-copier` | another miner's update plus Gaussian noise of 10 % of its norm, re-encoded |
//! | `replay` | its own first honest update, every window |
//! | `stale` | honest work from the model it had 3 windows ago, on the current base |
//! | `wrong-pages` | honest work on the current model, on the pages of its first window |
//! | `partial` | 1 local step instead of `train.local_steps` |
//! | `tiny` | the honest update × 0.01 |
//! | `noise` | random noise of the honest update's norm |
//! | `negated` | −(honest update) |
//! | `never-serve` | the honest update's id, whose blob it never stores nor serves |
//! | `poison-large` | the honest update × 100 |
//! | `poison-nan` | the honest update with a NaN written into its bytes |
//! | `poison-inverted` | the honest update × −10 |
//! | `precomputer` | the lowest other miner's own update, computed from its public pages and sealed with its author header (its exact blob), announced first under its own uid |
//!
//! Sybils are several nodes configured as `copier` / `noisy-copier`: each copies the lowest
//! other uid that announced in the window and whose update it can fetch and decode, so they all
//! copy the same victim.
//!
//! Transformed updates are the honest *wire* update (after the miner's encoder, so a compressing
//! miner's error feedback stays honest) decoded, transformed and encoded again by a fresh
//! encoder (no residual).

use crate::blobs::fetch_blob;
use crate::protocol::UpdateAnnouncement;
use crate::trainer::{Computed, Job};
use crate::updates;
use crate::{join_err, WorkError};
use apiary_config::{AdversaryKind, NodeConfig};
use apiary_model::{Params, Update};
use apiary_storage::{window_uid_key, Column, ContentId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Models a `stale` miner remembers: the current one and the 3 before it.
const MODELS_KEPT: usize = 4;
/// Noise of a `noisy-copier`, relative to the copied update's norm.
const COPY_NOISE: f32 = 0.1;
/// Factor of a `tiny` update.
const TINY: f32 = 0.01;
/// Factor of a `poison-large` update.
const LARGE: f32 = 100.0;
/// Factor of a `poison-inverted` update.
const INVERTED: f32 = -10.0;
/// How long a copier keeps collecting announcements after it saw the first one, so that
/// sybils pick the same victim.
const SETTLE: Duration = Duration::from_millis(150);

/// A cheating miner's memory between windows.
pub(crate) struct Adversary {
    kind: AdversaryKind,
    /// `replay`: the bytes of its first honest update.
    replay: Option<Vec<u8>>,
    /// `stale`: the models it trained from, oldest first.
    models: VecDeque<(ContentId, Arc<Params>)>,
    /// `wrong-pages`: the first window it trained and that window's first block hash.
    first_pages: Option<(u64, [u8; 32])>,
    /// `precomputer`: the miner it targets, once chosen.
    victim: Option<u16>,
}

/// An adversary shared by the trainer actor and its training tasks.
pub(crate) type Shared = Arc<Mutex<Adversary>>;

impl Adversary {
    /// A fresh adversary of `kind`.
    pub(crate) fn shared(kind: AdversaryKind) -> Shared {
        Arc::new(Mutex::new(Adversary {
            kind,
            replay: None,
            models: VecDeque::new(),
            first_pages: None,
            victim: None,
        }))
    }
}

fn lock(a: &Shared) -> std::sync::MutexGuard<'_, Adversary> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remembers the model a window is trained from (`stale` trains from an old one).
pub(crate) fn note_model(a: &Shared, id: ContentId, params: &Arc<Params>) {
    let mut a = lock(a);
    if a.models.back().is_some_and(|(last, _)| *last == id) {
        return;
    }
    a.models.push_back((id, Arc::clone(params)));
    while a.models.len() > MODELS_KEPT {
        a.models.pop_front();
    }
}

/// The cheat's work for the job's window (the trainer's stand-in for honest training).
pub(crate) async fn train(a: Shared, job: Job) -> Result<Computed, WorkError> {
    let kind = lock(&a).kind;
    let victim = match kind {
        AdversaryKind::Copier | AdversaryKind::NoisyCopier => Some(victim(&job).await?),
        _ => None,
    };
    tokio::task::spawn_blocking(move || cheat(&a, job, victim))
        .await
        .unwrap_or_else(|e| Err(join_err(e)))
}

/// Waits for other miners' announcements of the job's window (until the window is over) and
/// copies the lowest uid whose blob it can fetch and that decodes: `(bytes, loss)`.
///
/// A victim that announced but cannot be copied (a `never-serve` blob, a `poison-nan` update)
/// is passed over, as a real copier would, rather than failing the window: a copier that
/// announces nothing is not a copier the swarm has to defend against.
async fn victim(job: &Job) -> Result<(Vec<u8>, f32), WorkError> {
    let ctx = &job.ctx;
    let w = job.window;
    let mut seen_at: Option<tokio::time::Instant> = None;
    // Announcements passed over: fetched once, never again.
    let mut passed: Vec<ContentId> = Vec::new();
    loop {
        if ctx.status().window > w.saturating_add(1) {
            return Err(WorkError::Compute(format!(
                "copier: nobody announced a copiable update in window {w}"
            )));
        }
        let mut found: Vec<UpdateAnnouncement> = Vec::new();
        if let Some(mg) = ctx.metagraph() {
            for n in mg.neurons.iter().filter(|n| n.uid != job.uid) {
                if let Ok(Some(ann)) = ctx
                    .store
                    .get::<UpdateAnnouncement>(Column::Announcements, &window_uid_key(w, n.uid))
                {
                    if !passed.contains(&ann.update) {
                        found.push(ann);
                    }
                }
            }
        }
        if !found.is_empty() {
            let first = *seen_at.get_or_insert_with(tokio::time::Instant::now);
            if first.elapsed() >= SETTLE {
                found.sort_by_key(|a| a.uid);
                for ann in found {
                    match copiable(job, &ann).await {
                        Ok(bytes) => {
                            tracing::info!(
                                window = w,
                                victim = ann.uid,
                                "copier: copying an update"
                            );
                            return Ok((bytes, ann.loss));
                        }
                        Err(e) => {
                            tracing::info!(window = w, victim = ann.uid, error = %e, "copier: cannot copy this update; trying another");
                            passed.push(ann.update);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The announced update's bytes, if they can be fetched and decode.
async fn copiable(job: &Job, ann: &UpdateAnnouncement) -> Result<Vec<u8>, WorkError> {
    let bytes = fetch_blob(&job.ctx, ann.update, None, false).await?;
    let cfg = job.ctx.cfg.clone();
    match tokio::task::spawn_blocking(move || updates::decode_sealed(&cfg, &bytes).map(|_| bytes))
        .await
    {
        Ok(decoded) => decoded.map_err(WorkError::Compute),
        Err(e) => Err(join_err(e)),
    }
}

/// The `precomputer`'s victim: the lowest other uid that announced an update in the current or
/// one of the 8 windows before (a miner, as its announcements show; the metagraph's permits may
/// lag), remembered from then on; until there is one, the lowest other uid without stake.
fn precompute_target(a: &Shared, job: &Job) -> Result<u16, WorkError> {
    if let Some(v) = lock(a).victim {
        return Ok(v);
    }
    let mg = job
        .ctx
        .metagraph()
        .ok_or_else(|| WorkError::Compute("precomputer: no metagraph yet".into()))?;
    let others = || mg.neurons.iter().filter(|n| n.uid != job.uid);
    let announced = (0..=8u64)
        .filter_map(|back| job.window.checked_sub(back))
        .flat_map(|w| {
            others().filter(move |n| {
                matches!(
                    job.ctx.store.get::<UpdateAnnouncement>(
                        Column::Announcements,
                        &window_uid_key(w, n.uid)
                    ),
                    Ok(Some(_))
                )
            })
        })
        .map(|n| n.uid)
        .min();
    if let Some(v) = announced {
        lock(a).victim = Some(v);
        return Ok(v);
    }
    // Not remembered: a validator's stake may not be in this metagraph yet.
    others()
        .filter(|n| n.stake == 0)
        .map(|n| n.uid)
        .min()
        .ok_or_else(|| WorkError::Compute("precomputer: no other miner to target".into()))
}

/// Computes the cheat's update (blocking).
fn cheat(a: &Shared, job: Job, victim: Option<(Vec<u8>, f32)>) -> Result<Computed, WorkError> {
    let kind = lock(a).kind;
    let cfg = &job.ctx.cfg;
    let sync_proof = job.sync_proof();
    let noise_seed = u64::from(job.uid) << 32 ^ job.window ^ 0xad5e_0000_0000_0000;
    let mut author = None;
    let (bytes, loss, serve) = match kind {
        AdversaryKind::Copier => {
            // Byte for byte: the victim's blob, author header included (the same content id).
            let (blob, loss) = victim.ok_or_else(|| "copier: no victim".to_string())?;
            let (victim_author, wire) = updates::unseal(&blob)?;
            author = Some(victim_author);
            (wire.to_vec(), loss, true)
        }
        AdversaryKind::NoisyCopier => {
            let (bytes, loss) = victim.ok_or_else(|| "noisy-copier: no victim".to_string())?;
            let copied = updates::decode_sealed(cfg, &bytes)?
                .to_vecs()
                .map_err(|e| e.to_string())?;
            let noise = noise_vecs(cfg, noise_seed)?;
            (
                fresh_encode(cfg, with_noise(&copied, &noise, COPY_NOISE))?,
                loss,
                true,
            )
        }
        AdversaryKind::Replay => {
            let kept = lock(a).replay.clone();
            match kept {
                Some(bytes) => (bytes, f32::NAN, true),
                None => {
                    let (u, loss) = job.honest_update()?;
                    let bytes = job.encode(&u)?;
                    lock(a).replay = Some(bytes.clone());
                    (bytes, loss, true)
                }
            }
        }
        AdversaryKind::Stale => {
            let old = lock(a)
                .models
                .front()
                .map(|(_, p)| Arc::clone(p))
                .unwrap_or_else(|| Arc::clone(&job.params));
            let pages = job.pages_of(job.window, job.hash()?)?;
            let (u, loss) = updates::compute(cfg, &old, &pages)?;
            (job.encode(&u)?, loss, true)
        }
        AdversaryKind::WrongPages => {
            let hash = *job.hash()?;
            let (w0, h0) = *lock(a).first_pages.get_or_insert((job.window, hash));
            let pages = job.pages_of(w0, &h0)?;
            let (u, loss) = updates::compute(cfg, &job.params, &pages)?;
            (job.encode(&u)?, loss, true)
        }
        AdversaryKind::Partial => {
            let mut one = cfg.clone();
            one.train.local_steps = 1;
            let pages = job.pages_of(job.window, job.hash()?)?;
            let (u, loss) = updates::compute(&one, &job.params, &pages)?;
            (job.encode(&u)?, loss, true)
        }
        AdversaryKind::NeverServe => {
            let (u, loss) = job.honest_update()?;
            (job.encode(&u)?, loss, false)
        }
        AdversaryKind::PoisonNan => {
            let (u, loss) = job.honest_update()?;
            let bytes = job.encode(&u)?;
            (poison_nan(cfg, bytes)?, loss, true)
        }
        AdversaryKind::Precomputer => {
            // The victim's own work, byte for byte: its pages are public, training on CPU is
            // reproducible, and the blob is sealed with the victim's author header.
            let victim = precompute_target(a, &job)?;
            let pages = job.ctx.window_pages(victim, job.window, job.hash()?)?;
            let (u, loss) = updates::compute(cfg, &job.params, &pages)?;
            author = Some(updates::Author {
                netuid: cfg.chain.netuid,
                window: job.window,
                uid: victim,
            });
            tracing::info!(
                window = job.window,
                victim,
                "precomputer: announcing the victim's update"
            );
            (updates::Encoder::new(cfg)?.encode(&u)?, loss, true)
        }
        AdversaryKind::Tiny
        | AdversaryKind::Noise
        | AdversaryKind::Negated
        | AdversaryKind::PoisonLarge
        | AdversaryKind::PoisonInverted => {
            let (u, loss) = job.honest_update()?;
            let wire = updates::decode(cfg, &job.encode(&u)?)?
                .to_vecs()
                .map_err(|e| e.to_string())?;
            let noise = match kind {
                AdversaryKind::Noise => noise_vecs(cfg, noise_seed)?,
                _ => Vec::new(),
            };
            (
                fresh_encode(cfg, transform(kind, wire, &noise))?,
                loss,
                true,
            )
        }
    };
    tracing::info!(window = job.window, adversary = %kind, "cheat computed");
    Ok(Computed {
        base: job.base,
        bytes,
        loss,
        sync_proof,
        serve,
        author,
    })
}

/// Unit-variance noise of the model's shapes, from `seed`.
fn noise_vecs(cfg: &NodeConfig, seed: u64) -> Result<Vec<Vec<f32>>, WorkError> {
    Ok(Update::random_like(&cfg.model, seed, 1.0)
        .and_then(|u| u.to_vecs())
        .map_err(|e| e.to_string())?)
}

/// Encodes dense values with a fresh encoder (no error-feedback residual).
fn fresh_encode(cfg: &NodeConfig, vecs: Vec<Vec<f32>>) -> Result<Vec<u8>, WorkError> {
    let u = Update::from_vecs(&cfg.model, vecs).map_err(|e| e.to_string())?;
    Ok(updates::Encoder::new(cfg)?.encode(&u)?)
}

/// L2 norm over all tensors.
fn norm(v: &[Vec<f32>]) -> f64 {
    v.iter()
        .flatten()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// `v × k`.
fn scaled(mut v: Vec<Vec<f32>>, k: f32) -> Vec<Vec<f32>> {
    v.iter_mut().flatten().for_each(|x| *x *= k);
    v
}

/// `noise` rescaled to norm `target` (all zeros stay zeros).
fn rescaled(noise: &[Vec<f32>], target: f64) -> Vec<Vec<f32>> {
    let n = norm(noise);
    let k = if n > 0.0 { (target / n) as f32 } else { 0.0 };
    scaled(noise.to_vec(), k)
}

/// `v` plus `noise` rescaled to `fraction` of `v`'s norm.
fn with_noise(v: &[Vec<f32>], noise: &[Vec<f32>], fraction: f32) -> Vec<Vec<f32>> {
    let noise = rescaled(noise, norm(v) * f64::from(fraction));
    v.iter()
        .zip(&noise)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
        .collect()
}

/// The value transformations of the kit: `tiny`, `noise` (which uses `noise`), `negated`,
/// `poison-large`, `poison-inverted`; any other kind returns the honest values unchanged.
fn transform(kind: AdversaryKind, honest: Vec<Vec<f32>>, noise: &[Vec<f32>]) -> Vec<Vec<f32>> {
    match kind {
        AdversaryKind::Tiny => scaled(honest, TINY),
        AdversaryKind::Negated => scaled(honest, -1.0),
        AdversaryKind::PoisonLarge => scaled(honest, LARGE),
        AdversaryKind::PoisonInverted => scaled(honest, INVERTED),
        AdversaryKind::Noise => rescaled(noise, norm(&honest)),
        _ => honest,
    }
}

/// Writes a NaN into the first value of encoded update bytes (the encoders refuse NaN, so the
/// bytes are crafted): in a dense safetensors blob the first f32 of the data; in a compressed
/// blob the first value (or, quantized, the first chunk's scale), which follows the header,
/// the tensor lengths and the bit-packed indices.
fn poison_nan(cfg: &NodeConfig, mut bytes: Vec<u8>) -> Result<Vec<u8>, WorkError> {
    let at = if updates::compress_config(cfg).is_some() {
        let packed = apiary_compress::CompressedUpdate::from_bytes(&bytes)
            .map_err(|e| format!("poison-nan: {e}"))?;
        let index_bytes =
            (packed.num_entries() * packed.config().index_bits() as usize).div_ceil(8);
        // Version, chunk, topk, flags, quant bits, tensor count.
        const HEADER: usize = 1 + 4 + 4 + 1 + 1 + 4;
        HEADER + 8 * packed.lengths().len() + index_bytes
    } else {
        let mut n = [0u8; 8];
        n.copy_from_slice(
            bytes
                .get(..8)
                .ok_or_else(|| "poison-nan: update too short".to_string())?,
        );
        let header = usize::try_from(u64::from_le_bytes(n))
            .map_err(|_| "poison-nan: header too long".to_string())?;
        8 + header
    };
    bytes
        .get_mut(at..at + 4)
        .ok_or_else(|| "poison-nan: no value to poison".to_string())?
        .copy_from_slice(&f32::NAN.to_le_bytes());
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(compressed: bool) -> NodeConfig {
        let mut c = NodeConfig::default();
        c.model.d_model = 32;
        c.model.n_layers = 1;
        c.model.n_heads = 2;
        c.model.d_ff = 64;
        c.model.seq_len = 16;
        if compressed {
            c.compression.enabled = true;
            c.compression.chunk = 256;
            c.compression.topk = 4;
            c.compression.quant_bits = 8;
        }
        c
    }

    fn close(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
    }

    #[test]
    fn transformations_scale_negate_and_rescale() {
        let u = vec![vec![3.0, -4.0], vec![0.0, 12.0]]; // norm 13
        let noise = vec![vec![1.0, 1.0], vec![1.0, 1.0]]; // norm 2
        let t = |k| transform(k, u.clone(), &noise);
        assert!(close(
            &t(AdversaryKind::Tiny),
            &[vec![0.03, -0.04], vec![0.0, 0.12]]
        ));
        assert!(close(
            &t(AdversaryKind::Negated),
            &[vec![-3.0, 4.0], vec![0.0, -12.0]]
        ));
        assert!(close(
            &t(AdversaryKind::PoisonLarge),
            &[vec![300.0, -400.0], vec![0.0, 1200.0]]
        ));
        assert!(close(
            &t(AdversaryKind::PoisonInverted),
            &[vec![-30.0, 40.0], vec![0.0, -120.0]]
        ));
        // Noise of the honest norm: 13 / 2 per element.
        assert!(close(
            &t(AdversaryKind::Noise),
            &[vec![6.5, 6.5], vec![6.5, 6.5]]
        ));
        assert!((norm(&t(AdversaryKind::Noise)) - 13.0).abs() < 1e-5);
        // Kinds that are not value transformations leave the update alone.
        assert!(close(&t(AdversaryKind::Copier), &u));
    }

    #[test]
    fn noisy_copy_adds_a_tenth_of_the_norm() {
        let u = vec![vec![3.0, 4.0]]; // norm 5
        let noise = vec![vec![0.0, 2.0]];
        let v = with_noise(&u, &noise, COPY_NOISE);
        assert!(close(&v, &[vec![3.0, 4.5]]));
    }

    #[test]
    fn stale_remembers_the_last_four_models() {
        let c = cfg(false);
        let p = Arc::new(Params::init(&c.model).expect("init"));
        let a = Adversary::shared(AdversaryKind::Stale);
        for i in 0..6u8 {
            note_model(&a, ContentId([i; 32]), &p);
            note_model(&a, ContentId([i; 32]), &p); // a repeat is not a new model
        }
        let ids: Vec<u8> = lock(&a).models.iter().map(|(id, _)| id.0[0]).collect();
        assert_eq!(
            ids,
            vec![2, 3, 4, 5],
            "the oldest is the model of 3 windows ago"
        );
    }

    #[test]
    fn poison_nan_bytes_are_refused_by_decode() {
        for compressed in [false, true] {
            let c = cfg(compressed);
            let honest = Update::random_like(&c.model, 1, 0.01).expect("noise");
            let bytes = updates::Encoder::new(&c)
                .expect("encoder")
                .encode(&honest)
                .expect("encode");
            updates::decode(&c, &bytes).expect("the honest bytes decode");
            let poisoned = poison_nan(&c, bytes.clone()).expect("poison");
            assert_eq!(poisoned.len(), bytes.len());
            let e = updates::decode(&c, &poisoned).expect_err("NaN refused");
            assert!(
                e.contains("NaN") || e.contains("finite") || e.contains("non-finite"),
                "compressed={compressed}: {e}"
            );
        }
    }

    #[test]
    fn fresh_encoding_round_trips_a_dense_transform() {
        let c = cfg(false);
        let honest = Update::random_like(&c.model, 2, 0.01).expect("noise");
        let v = honest.to_vecs().expect("vecs");
        let bytes = fresh_encode(&c, transform(AdversaryKind::Tiny, v.clone(), &[])).expect("enc");
        let back = updates::decode(&c, &bytes)
            .expect("decode")
            .to_vecs()
            .expect("vecs");
        assert!(close(&back, &scaled(v, TINY)));
    }
}
