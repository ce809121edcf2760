//! Evaluation on the CPU: per-page losses ([`page_losses`], the numbers `apiary model eval`
//! gives), probe logits for the copy fingerprint ([`probe_logits`]), and the deterministic
//! choice of evaluation pages ([`eval_pages`]) and private probe ([`probe`]).

use crate::constraints::LoadedModel;
use crate::{b3, CompeteError, Result};
use apiary_config::ModelConfig;
use apiary_model::{ModelError, Params};
use candle_core::{Device, Tensor, D};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::HashSet;

/// Anything evaluation pages are drawn from: pages of `seq_len + 1` tokens, numbered
/// `0..num_pages()`.
pub trait PageSource {
    /// Number of pages.
    fn num_pages(&self) -> usize;
    /// Page `idx` (`idx < num_pages()`).
    fn page_at(&self, idx: usize) -> Result<Vec<u32>>;
}

/// Every page of the dataset, training pages then held-out ones: a competition's evaluation
/// data has no training use, so open it with a tiny `held_out_fraction` (as `apiary model
/// eval` does).
impl PageSource for apiary_data::Dataset {
    fn num_pages(&self) -> usize {
        self.train_pages() + self.held_out_pages()
    }

    fn page_at(&self, idx: usize) -> Result<Vec<u32>> {
        let train = self.train_pages();
        if idx < train {
            return Ok(self.page(idx)?);
        }
        self.held_out(idx - train + 1)?
            .pop()
            .filter(|_| idx < self.num_pages())
            .ok_or_else(|| CompeteError::Eval(format!("page {idx} is past the dataset's end")))
    }
}

/// In-memory pages (tests, small data).
impl<S: PageSource + ?Sized> PageSource for std::sync::Arc<S> {
    fn num_pages(&self) -> usize {
        (**self).num_pages()
    }
    fn page_at(&self, idx: usize) -> Result<Vec<u32>> {
        (**self).page_at(idx)
    }
}

impl PageSource for Vec<Vec<u32>> {
    fn num_pages(&self) -> usize {
        self.len()
    }

    fn page_at(&self, idx: usize) -> Result<Vec<u32>> {
        self.get(idx)
            .cloned()
            .ok_or_else(|| CompeteError::Eval(format!("page {idx} is past the end")))
    }
}

/// Splits `n` among `weights` in proportion (largest remainder, ties to the lower index).
/// Non-positive or non-finite weights get nothing; all of them so: all zeros.
pub(crate) fn split_counts(weights: &[f64], n: usize) -> Vec<usize> {
    let w: Vec<f64> = weights
        .iter()
        .map(|&w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
        .collect();
    let total: f64 = w.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![0; w.len()];
    }
    let quotas: Vec<f64> = w.iter().map(|w| w / total * n as f64).collect();
    let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    // Each floor loses less than 1, so at most one extra page per positive weight.
    let left = n.saturating_sub(counts.iter().sum());
    for &i in order.iter().take(left) {
        counts[i] += 1;
    }
    counts
}

/// `count` page indices below `len` from `rng`: distinct while `count ≤ len`, else every page
/// in turn. Uses `next_u64() % len` (fixed arithmetic: every validator draws the same pages
/// whatever its rand version; the bias is below `len / 2^64`).
fn draw_indices(rng: &mut ChaCha20Rng, len: usize, count: usize) -> Vec<usize> {
    if count >= len {
        return (0..count).map(|i| i % len.max(1)).collect();
    }
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let i = (rng.next_u64() % len as u64) as usize;
        if seen.insert(i) {
            out.push(i);
        }
    }
    out
}

/// `n` evaluation pages drawn deterministically from `seed` (e.g. the hash of a block nobody
/// knew at commit time), split across `datasets` by weight: dataset `d`'s share is drawn
/// without replacement with a ChaCha20 stream keyed by `blake3(seed ‖ d)`, in dataset order.
/// Datasets without pages get no share.
pub fn eval_pages<S: PageSource>(
    datasets: &[(S, f64)],
    seed: [u8; 32],
    n: usize,
) -> Result<Vec<Vec<u32>>> {
    let weights: Vec<f64> = datasets
        .iter()
        .map(|(s, w)| if s.num_pages() > 0 { *w } else { 0.0 })
        .collect();
    let counts = split_counts(&weights, n);
    if n > 0 && counts.iter().sum::<usize>() == 0 {
        return Err(CompeteError::Eval(
            "no evaluation pages: every dataset is empty or has a weight ≤ 0".into(),
        ));
    }
    let mut pages = Vec::with_capacity(n);
    for (d, ((source, _), count)) in datasets.iter().zip(counts).enumerate() {
        let mut key = seed.to_vec();
        key.extend_from_slice(&(d as u64).to_le_bytes());
        let mut rng = ChaCha20Rng::from_seed(b3(&key));
        for i in draw_indices(&mut rng, source.num_pages(), count) {
            pages.push(source.page_at(i)?);
        }
    }
    Ok(pages)
}

/// The private probe: `tokens` tokens of evaluation data drawn with a validator-private `seed`
/// (so miners cannot tune a copy to it): whole pages concatenated, then truncated.
pub fn probe<S: PageSource>(
    seed: [u8; 32],
    datasets: &[(S, f64)],
    tokens: usize,
) -> Result<Vec<u32>> {
    if tokens == 0 {
        return Ok(Vec::new());
    }
    // Domain-separated, so a seed also used for evaluation pages gives other pages.
    let mut key = b"apiary-compete probe".to_vec();
    key.extend_from_slice(&seed);
    let seed = b3(&key);
    let page_len = eval_pages(datasets, seed, 1)?
        .first()
        .map_or(0, Vec::len)
        .max(1);
    let mut out: Vec<u32> = eval_pages(datasets, seed, tokens.div_ceil(page_len))?.concat();
    if out.len() < tokens {
        return Err(CompeteError::Eval(format!(
            "the evaluation data gives {} probe tokens, fewer than probe_tokens = {tokens}",
            out.len()
        )));
    }
    out.truncate(tokens);
    Ok(out)
}

/// Mean next-token cross-entropy of `model` on each page (`seq_len + 1` tokens, as
/// [`eval_pages`] gives): the number `apiary model eval` gives for that page. A page whose loss
/// is not finite gets +∞, which loses every comparison.
pub fn page_losses(model: &LoadedModel, pages: &[Vec<u32>]) -> Result<Vec<f64>> {
    pages
        .iter()
        .map(|p| {
            // One page per call, so each page's loss is its own mean (eval_loss averages).
            match apiary_model::eval_loss(&model.cfg, &model.params, std::slice::from_ref(p)) {
                Ok(l) => Ok(f64::from(l)),
                Err(ModelError::NonFinite { .. }) => Ok(f64::INFINITY),
                Err(e) => Err(e.into()),
            }
        })
        .collect()
}

/// The model's logits on `probe`, flattened (`[position][vocab]`): the probe is cut into
/// windows of `window` tokens (the competition's `seq_len`) and each window is run from
/// position 0, so two models are compared on the same contexts whatever their own
/// `max_position_embeddings`.
pub fn probe_logits(model: &LoadedModel, probe: &[u32], window: usize) -> Result<Vec<f32>> {
    if window == 0 {
        return Err(CompeteError::Eval("the probe window must be > 0".into()));
    }
    if let Some(t) = probe.iter().find(|&&t| t as usize >= model.cfg.vocab_size) {
        return Err(CompeteError::Eval(format!(
            "probe token {t} is outside the model's vocabulary ({})",
            model.cfg.vocab_size
        )));
    }
    let mut out = Vec::with_capacity(probe.len() * model.cfg.vocab_size);
    for chunk in probe.chunks(window) {
        out.extend(forward_logits(&model.cfg, &model.params, chunk)?);
    }
    Ok(out)
}

/// Rotary tables as `[t, head_dim]` (halves duplicated), the model crate's layout:
/// `inv_freq[i] = theta^(-2i / head_dim)`, angles in f64 rounded to f32.
fn rope_tables(t: usize, hd: usize, theta: f64) -> apiary_model::Result<(Tensor, Tensor)> {
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
    for pos in 0..t {
        let row: Vec<f64> = (0..half)
            .map(|i| pos as f64 / theta.powf((2 * i) as f64 / hd as f64))
            .collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos() as f32));
            sin.extend(row.iter().map(|a| a.sin() as f32));
        }
    }
    Ok((
        Tensor::from_vec(cos, (t, hd), &Device::Cpu)?,
        Tensor::from_vec(sin, (t, hd), &Device::Cpu)?,
    ))
}

/// The logits `[tokens.len(), vocab]` (flattened) of one sequence from position 0.
///
/// apiary-model exposes losses, not logits, so this re-states its forward pass with plain
/// candle ops (the same composed path its GPU evaluation uses); a test checks the
/// cross-entropy of these logits against `eval_loss`.
fn forward_logits(
    cfg: &ModelConfig,
    params: &Params,
    tokens: &[u32],
) -> apiary_model::Result<Vec<f32>> {
    let t = tokens.len();
    if t == 0 {
        return Ok(Vec::new());
    }
    let get = |name: String| -> apiary_model::Result<&Tensor> {
        params
            .names()
            .binary_search(&name)
            .ok()
            .and_then(|i| params.tensors().get(i))
            .ok_or(ModelError::MissingTensor(name))
    };
    let (d, nh) = (cfg.d_model, cfg.n_heads.max(1));
    let hd = d / nh;
    let eps = cfg.norm_eps;
    let rms = |x: &Tensor, w: &Tensor| -> apiary_model::Result<Tensor> {
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    };
    let lin = |x: &Tensor, w: &Tensor| -> apiary_model::Result<Tensor> { Ok(x.matmul(&w.t()?)?) };
    let (cos, sin) = rope_tables(t, hd, f64::from(cfg.rope_theta))?;
    let rope = |x: &Tensor| -> apiary_model::Result<Tensor> {
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    };
    let heads = |x: Tensor| -> apiary_model::Result<Tensor> {
        Ok(x.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?)
    };
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu)?;
    let scale = 1.0 / (hd as f64).sqrt();

    let ids = Tensor::from_vec(tokens.to_vec(), t, &Device::Cpu)?;
    let mut x = get("model.embed_tokens.weight".into())?.index_select(&ids, 0)?; // [T, D]
    for i in 0..cfg.n_layers {
        let w = |s: &str| get(format!("model.layers.{i}.{s}.weight"));
        let h = rms(&x, w("input_layernorm")?)?;
        let q = rope(&heads(lin(&h, w("self_attn.q_proj")?)?)?)?;
        let k = rope(&heads(lin(&h, w("self_attn.k_proj")?)?)?)?;
        let v = heads(lin(&h, w("self_attn.v_proj")?)?)?;
        let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
        // Softmax over keys; the diagonal is never masked, so the maximum is finite.
        let att = att.broadcast_sub(&att.max_keepdim(D::Minus1)?)?.exp()?;
        let att = att.broadcast_div(&att.sum_keepdim(D::Minus1)?)?;
        let y = att
            .matmul(&v)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, d))?;
        x = (x + lin(&y, w("self_attn.o_proj")?)?)?;
        let h = rms(&x, w("post_attention_layernorm")?)?;
        let gated = (lin(&h, w("mlp.gate_proj")?)?.silu()? * lin(&h, w("mlp.up_proj")?)?)?;
        x = (x + lin(&gated, w("mlp.down_proj")?)?)?;
    }
    let x = rms(&x, get("model.norm.weight".into())?)?;
    Ok(lin(&x, get("lm_head.weight".into())?)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::constraints::check_model_dir;
    use crate::package::{assemble, package_dir};
    use crate::rules::logit_distance;
    use apiary_config::CompetitionConfig;
    use apiary_model::{export_hf_dir, HfDtype};
    use std::collections::HashMap;
    use std::path::Path;

    fn tiny(seed: u64) -> ModelConfig {
        ModelConfig {
            vocab_size: 256,
            d_model: 32,
            n_layers: 2,
            n_heads: 2,
            d_ff: 64,
            seq_len: 16,
            init_seed: seed,
            ..ModelConfig::default()
        }
    }

    fn loaded(cfg: &ModelConfig, params: Params) -> LoadedModel {
        let num_params = params.num_params() as u64;
        LoadedModel {
            cfg: cfg.clone(),
            params,
            num_params,
        }
    }

    /// `params` with every weight scaled by `1 ± rel` (a fixed ± pattern).
    fn perturbed(cfg: &ModelConfig, params: &Params, rel: f32) -> Params {
        let vecs = params.to_vecs().unwrap();
        let vecs = vecs
            .into_iter()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, x)| x * (1.0 + if i % 3 == 0 { rel } else { -rel }))
                    .collect()
            })
            .collect();
        Params::from_vecs(cfg, vecs).unwrap()
    }

    fn text_pages(n: usize, len: usize) -> Vec<Vec<u32>> {
        let text = b"To be, or not to be, that is the question: whether 'tis nobler in the mind";
        (0..n)
            .map(|p| {
                (0..len)
                    .map(|i| u32::from(text[(p * 7 + i) % text.len()]))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn probe_logits_agree_with_eval_loss() {
        let cfg = tiny(42);
        let model = loaded(&cfg, Params::init(&cfg).unwrap());
        let page = &text_pages(1, cfg.seq_len + 1)[0];
        let logits = probe_logits(&model, &page[..cfg.seq_len], cfg.seq_len).unwrap();
        assert_eq!(logits.len(), cfg.seq_len * cfg.vocab_size);
        let mut ce = 0.0f64;
        for (row, &target) in logits.chunks(cfg.vocab_size).zip(&page[1..]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|&v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            ce += lse - f64::from(row[target as usize]);
        }
        ce /= cfg.seq_len as f64;
        let want = page_losses(&model, std::slice::from_ref(page)).unwrap()[0];
        assert!((ce - want).abs() < 1e-4, "{ce} vs eval_loss {want}");
        // Windows: a probe of 2.5 windows gives 40 rows; the first window is the same.
        let long: Vec<u32> = (0..40).map(|i| (i * 11 % 256) as u32).collect();
        let l = probe_logits(&model, &long, 16).unwrap();
        assert_eq!(l.len(), 40 * 256);
        assert_eq!(
            l[..16 * 256],
            probe_logits(&model, &long[..16], 16).unwrap()[..]
        );
        assert!(probe_logits(&model, &[256], 16).is_err());
        assert!(probe_logits(&model, &long, 0).is_err());
    }

    #[test]
    fn copies_are_close_and_different_models_far() {
        let cfg = tiny(42);
        let a = Params::init(&cfg).unwrap();
        let copy = perturbed(&cfg, &a, 1e-4);
        let other = Params::init(&tiny(43)).unwrap();
        let probe: Vec<u32> = text_pages(1, 32).concat();
        let la = probe_logits(&loaded(&cfg, a), &probe, 16).unwrap();
        let lc = probe_logits(&loaded(&cfg, copy), &probe, 16).unwrap();
        let lo = probe_logits(&loaded(&cfg, other), &probe, 16).unwrap();
        let near = logit_distance(&la, &lc);
        let far = logit_distance(&la, &lo);
        assert!(near < 1e-3, "copy distance {near}");
        assert!(far > 0.1, "different models' distance {far}");
    }

    #[test]
    fn page_losses_are_per_page_means() {
        let cfg = tiny(42);
        let model = loaded(&cfg, Params::init(&cfg).unwrap());
        let pages = text_pages(3, cfg.seq_len + 1);
        let losses = page_losses(&model, &pages).unwrap();
        assert_eq!(losses.len(), 3);
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
        // A random byte model is near uniform: ln 256 ≈ 5.55.
        assert!(losses.iter().all(|l| (l - 256f64.ln()).abs() < 0.5));
        let mean = losses.iter().sum::<f64>() / 3.0;
        let all = f64::from(apiary_model::eval_loss(&cfg, &model.params, &pages).unwrap());
        assert!((mean - all).abs() < 1e-5);
        // A token outside the vocabulary is an error, not a loss.
        assert!(page_losses(&model, &[vec![300; cfg.seq_len + 1]]).is_err());
    }

    #[test]
    fn split_counts_by_hand() {
        assert_eq!(split_counts(&[1.0, 1.0], 5), vec![3, 2]);
        assert_eq!(split_counts(&[3.0, 1.0], 8), vec![6, 2]);
        // Quotas 3.33, 3.33, 3.33 → the first index takes the extra page.
        assert_eq!(split_counts(&[1.0, 1.0, 1.0], 10), vec![4, 3, 3]);
        // Quotas 0.6, 2.4 → 1 and 2.
        assert_eq!(split_counts(&[1.0, 4.0], 3), vec![1, 2]);
        assert_eq!(split_counts(&[0.0, f64::NAN, 2.0], 4), vec![0, 0, 4]);
        assert_eq!(split_counts(&[0.0], 4), vec![0]);
        assert_eq!(split_counts(&[], 4), Vec::<usize>::new());
    }

    #[test]
    fn eval_pages_are_deterministic_and_weighted() {
        let a: Vec<Vec<u32>> = (0..20).map(|i| vec![i, i]).collect();
        let b: Vec<Vec<u32>> = (100..110).map(|i| vec![i, i]).collect();
        let sets = vec![(a, 3.0), (b, 1.0)];
        let p1 = eval_pages(&sets, [1; 32], 8).unwrap();
        assert_eq!(p1, eval_pages(&sets, [1; 32], 8).unwrap());
        assert_ne!(p1, eval_pages(&sets, [2; 32], 8).unwrap());
        assert_eq!(p1.iter().filter(|p| p[0] < 100).count(), 6);
        assert!(p1[..6].iter().all(|p| p[0] < 100) && p1[6..].iter().all(|p| p[0] >= 100));
        let distinct: HashSet<_> = p1.iter().collect();
        assert_eq!(distinct.len(), 8);
        // More pages than the data holds: every page in turn.
        let small = vec![(vec![vec![1u32, 2], vec![3, 4]], 1.0)];
        assert_eq!(
            eval_pages(&small, [0; 32], 3).unwrap(),
            vec![vec![1, 2], vec![3, 4], vec![1, 2]]
        );
        let empty: Vec<(Vec<Vec<u32>>, f64)> = vec![(vec![], 1.0)];
        assert!(eval_pages(&empty, [0; 32], 3).is_err());
        assert!(eval_pages(&empty, [0; 32], 0).unwrap().is_empty());
    }

    #[test]
    fn probe_draws_private_tokens() {
        let pages: Vec<Vec<u32>> = (0..50).map(|i| vec![i; 5]).collect();
        let sets = vec![(pages, 1.0)];
        let p = probe([9; 32], &sets, 12).unwrap();
        assert_eq!(p.len(), 12);
        assert_eq!(p, probe([9; 32], &sets, 12).unwrap());
        assert_ne!(p, probe([8; 32], &sets, 12).unwrap());
        // Not the evaluation pages of the same seed.
        assert_ne!(p[..5], eval_pages(&sets, [9; 32], 1).unwrap()[0][..]);
        assert!(probe([9; 32], &sets, 0).unwrap().is_empty());
    }

    #[test]
    fn dataset_pages_include_held_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a.txt");
        std::fs::write(&data, (0..100u8).collect::<Vec<_>>()).unwrap();
        let tok = apiary_data::Tokenizer::bytes();
        let ds =
            apiary_data::Dataset::open(&data, &tok, 9, 1e-9, &dir.path().join("cache")).unwrap();
        // 100 bytes in pages of 10: 10 pages, the last held out.
        assert_eq!(ds.num_pages(), 10);
        assert_eq!(ds.page_at(0).unwrap(), (0..10).collect::<Vec<u32>>());
        assert_eq!(ds.page_at(9).unwrap(), (90..100).collect::<Vec<u32>>());
        assert!(ds.page_at(10).is_err());
        let pages = eval_pages(&[(ds, 1.0)], [3; 32], 10).unwrap();
        let firsts: HashSet<u32> = pages.iter().map(|p| p[0]).collect();
        assert_eq!(firsts.len(), 10);
    }

    fn competition(num_params: u64) -> CompetitionConfig {
        CompetitionConfig {
            id: "tiny".into(),
            min_params: 1,
            max_params: num_params,
            seq_len: 16,
            piece_bytes: 4096,
            ..CompetitionConfig::default()
        }
    }

    /// Exports the tiny model, packages it in 4 KiB pieces into a map.
    fn exported(dir: &Path) -> (crate::ModelManifest, HashMap<[u8; 32], Vec<u8>>, Params) {
        let cfg = tiny(42);
        let params = Params::init(&cfg).unwrap();
        export_hf_dir(&params, &cfg, dir, HfDtype::F32, None).unwrap();
        let mut store = HashMap::new();
        let m = package_dir(dir, "tiny", 4096, |id, piece| {
            store.insert(id, piece.to_vec());
            Ok::<(), String>(())
        })
        .unwrap();
        (m, store, params)
    }

    #[test]
    fn exported_model_round_trips_through_pieces() {
        let src = tempfile::tempdir().unwrap();
        let (m, store, params) = exported(src.path());
        assert_eq!(m.num_params, params.num_params() as u64);
        assert_eq!(m.model_type, "llama");
        assert!(m.files[1].pieces.len() > 5, "several pieces per file");
        let out = tempfile::tempdir().unwrap();
        assemble(&m, out.path(), |id| store.get(id).cloned().ok_or("missing")).unwrap();
        for f in &m.files {
            assert_eq!(
                std::fs::read(out.path().join(&f.name)).unwrap(),
                std::fs::read(src.path().join(&f.name)).unwrap()
            );
        }
        let again = package_dir(out.path(), "tiny", 4096, |_, _| Ok::<(), String>(())).unwrap();
        assert_eq!(again.id(), m.id());

        let comp = competition(m.num_params);
        crate::check_manifest(&m, &comp).unwrap();
        let model = check_model_dir(out.path(), &m, &comp).unwrap();
        assert_eq!(model.params.hash(), params.hash());
        assert_eq!(model.cfg.seq_len, 16);

        // A corrupted piece is caught at that piece.
        let mut bad = [0u8; 32];
        hex::decode_to_slice(&m.files[1].pieces[3], &mut bad).unwrap();
        let out2 = tempfile::tempdir().unwrap();
        let err = assemble(&m, out2.path(), |id| {
            let mut v = store.get(id).cloned().ok_or("missing")?;
            if *id == bad {
                v[100] ^= 0x40;
            }
            Ok::<_, &str>(v)
        })
        .unwrap_err();
        assert!(
            matches!(&err, CompeteError::BadPiece { file, piece: 3, .. } if file == "model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn model_dir_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _, params) = exported(dir.path());
        let n = params.num_params() as u64;
        let reason = |m: &crate::ModelManifest, c: &CompetitionConfig| {
            check_model_dir(dir.path(), m, c).err().map(|r| r.reason)
        };
        assert_eq!(reason(&m, &competition(n)), None);
        assert_eq!(reason(&m, &competition(n - 1)), Some("params"));
        let mut lying = m.clone();
        lying.num_params = n - 1;
        assert_eq!(reason(&lying, &competition(n)), Some("params"));
        let hashed = CompetitionConfig {
            tokenizer: "ab".repeat(32),
            ..competition(n)
        };
        assert_eq!(reason(&m, &hashed), Some("tokenizer"));
        let longer = CompetitionConfig {
            seq_len: 17,
            ..competition(n)
        };
        assert_eq!(reason(&m, &longer), Some("seq_len"));
        let other_type = CompetitionConfig {
            model_types: vec!["mistral".into()],
            ..competition(n)
        };
        assert_eq!(reason(&m, &other_type), Some("model_type"));
        // A tokenizer.json where the competition wants bytes.
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        assert_eq!(reason(&m, &competition(n)), Some("tokenizer"));
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        // Broken weights.
        std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
        assert_eq!(reason(&m, &competition(n)), Some("tensors"));
        std::fs::write(dir.path().join("config.json"), b"{").unwrap();
        assert_eq!(reason(&m, &competition(n)), Some("unreadable"));
    }
}
