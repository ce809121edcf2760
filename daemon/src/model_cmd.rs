//! `apiary model`: evaluate a Hugging Face LLaMA directory on text, and export a stopped node's
//! current model as one.
//!
//! Both work on the same files `transformers` reads and writes (`config.json`,
//! `model.safetensors`, optional `tokenizer.json`), so a model trained by an apiary subnet can be
//! checked or used elsewhere with no conversion. A running node exports through its admin
//! socket instead (`apiary admin export --path DIR`), since it holds its store's lock.

use anyhow::{Context, Result};
use apiary_actors::trainer::AppliedWindow;
use apiary_data::{Dataset, Tokenizer};
use apiary_model::{HfDtype, Params};
use apiary_storage::{Column, Store};
use clap::Subcommand;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `apiary model …`.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Print the mean loss per token of a model directory on a text dataset.
    Eval {
        /// A Hugging Face LLaMA directory (`config.json`, `model.safetensors`).
        #[arg(long)]
        model: PathBuf,
        /// A shard file or a directory of `.txt` / `.jsonl` / `.parquet` shards.
        #[arg(long)]
        data: PathBuf,
        /// A `tokenizer.json` (default: the model directory's, else the byte tokenizer).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Sequence length of the evaluated pages (default: the model's).
        #[arg(long)]
        seq_len: Option<usize>,
        /// Evaluate at most this many pages (spread evenly over the data; default all).
        #[arg(long)]
        max_pages: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Export the current model of a stopped node as a Hugging Face LLaMA directory.
    Export {
        /// The node's data dir.
        #[arg(long, default_value = "./apiary-data")]
        data_dir: PathBuf,
        /// The node's config file (for the model shape and tokenizer; default settings otherwise).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// f32 (bit-exact) or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
}

/// What `apiary model eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Mean cross-entropy per predicted token (nats).
    pub loss: f32,
    /// `exp(loss)`.
    pub perplexity: f32,
    /// Pages evaluated.
    pub pages: usize,
    /// Tokens predicted.
    pub tokens: usize,
    /// The tokenizer used.
    pub tokenizer: String,
    /// The model's parameter count.
    pub params: usize,
}

/// Runs a model subcommand.
pub async fn run(cmd: ModelCmd) -> Result<()> {
    match cmd {
        ModelCmd::Eval {
            model,
            data,
            tokenizer,
            seq_len,
            max_pages,
            json,
        } => {
            let r = tokio::task::spawn_blocking(move || {
                eval(&model, &data, tokenizer.as_deref(), seq_len, max_pages)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "loss {:.4} nats/token (perplexity {:.2}) over {} tokens in {} pages; \
                     tokenizer {}, {} parameters",
                    r.loss, r.perplexity, r.tokens, r.pages, r.tokenizer, r.params
                );
            }
            Ok(())
        }
        ModelCmd::Export {
            data_dir,
            config,
            out,
            dtype,
        } => {
            let window = export_offline(&data_dir, config.as_deref(), &out, &dtype)?;
            println!(
                "exported the model of window {} to {}",
                window.map_or("genesis".to_string(), |w| w.to_string()),
                out.display()
            );
            Ok(())
        }
    }
}

/// Evaluates the model in `model_dir` on every page (or `max_pages` evenly spread pages) of
/// `data`, tokenized with `tokenizer` (or the model directory's `tokenizer.json`, or bytes).
pub fn eval(
    model_dir: &Path,
    data: &Path,
    tokenizer: Option<&Path>,
    seq_len: Option<usize>,
    max_pages: Option<usize>,
) -> Result<EvalReport> {
    let (mut cfg, params) = apiary_model::load_hf_dir(model_dir)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    if let Some(s) = seq_len {
        cfg.seq_len = s;
    }
    let tok_path = tokenizer
        .map(Path::to_path_buf)
        .or_else(|| Some(model_dir.join("tokenizer.json")).filter(|p| p.is_file()));
    let tok = match &tok_path {
        Some(p) => Tokenizer::from_file(p)
            .with_context(|| format!("cannot load tokenizer {}", p.display()))?,
        None => Tokenizer::bytes(),
    };
    if tok.vocab_size() > cfg.vocab_size {
        anyhow::bail!(
            "the tokenizer has {} tokens but the model only {}; pass the model's own tokenizer \
             with --tokenizer",
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    let cache = tempfile::tempdir().context("creating a temporary page cache")?;
    // All pages count: the split is irrelevant here, so hold out as little as allowed.
    let ds = Dataset::open(data, &tok, cfg.seq_len, 1e-9, cache.path())
        .with_context(|| format!("cannot read {}", data.display()))?;
    let total = ds.train_pages() + ds.held_out_pages();
    let n = max_pages.unwrap_or(total).clamp(1, total);
    let mut pages = Vec::with_capacity(n);
    let train = ds.train_pages();
    for k in 0..n {
        let i = k * total / n;
        pages.push(if i < train {
            ds.page(i)?
        } else {
            ds.held_out(i - train + 1)?
                .pop()
                .context("held-out page missing")?
        });
    }
    let loss = apiary_model::eval_loss(&cfg, &params, &pages)?;
    Ok(EvalReport {
        loss,
        perplexity: loss.exp(),
        pages: pages.len(),
        tokens: pages.len() * cfg.seq_len,
        tokenizer: tok.name(),
        params: params.num_params(),
    })
}

/// Exports the latest applied model in a stopped node's store; returns its window.
pub fn export_offline(
    data_dir: &Path,
    config: Option<&Path>,
    out: &Path,
    dtype: &str,
) -> Result<Option<u64>> {
    let mut cfg = match config {
        Some(p) => apiary_config::NodeConfig::load(p)?,
        None => apiary_config::NodeConfig::default(),
    };
    cfg.node.data_dir = data_dir.to_path_buf();
    let dtype = match dtype {
        "f32" | "float32" => HfDtype::F32,
        "bf16" | "bfloat16" => HfDtype::BF16,
        other => anyhow::bail!("unknown --dtype `{other}`; use f32 or bf16"),
    };
    let db = data_dir.join("db");
    if !db.is_dir() {
        anyhow::bail!(
            "{} has no store (db/); pass the node's --data-dir",
            data_dir.display()
        );
    }
    let store = Store::open(&db).with_context(|| {
        format!(
            "cannot open the store in {}; if the node is running, export through its admin \
             socket: `apiary admin export --path DIR`",
            db.display()
        )
    })?;
    let last = store.last::<AppliedWindow>(Column::Windows)?;
    let (params, window) = match last {
        Some((_, w)) => {
            let bytes = store.get_blob(w.model)?.with_context(|| {
                format!("the store lacks the checkpoint of window {}", w.window)
            })?;
            (Params::from_bytes(&cfg.model, &bytes)?, Some(w.window))
        }
        None => anyhow::bail!(
            "the node in {} has not applied any window yet; nothing to export",
            data_dir.display()
        ),
    };
    apiary_model::export_hf_dir(
        &params,
        &cfg.model,
        out,
        dtype,
        cfg.train.tokenizer.as_deref(),
    )?;
    Ok(window)
}
