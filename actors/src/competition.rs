//! Model competitions (SN9 / AI-factory): the second mechanism behind the seam
//! ([`crate::mechanism`]), cadence per submission.
//!
//! **Miners** enter a model with [`submit`] (`apiary compete submit`): the model directory is
//! checked against the competition's constraints first, stored as content-addressed pieces
//! (pinned, so the node serves them for as long as it runs), and its manifest id with
//! `blake3(model ‖ hotkey)` goes into the hotkey's on-chain commitment.
//!
//! **Validators** run the [`Competitions`] actor: every `eval_every_blocks` it reads the
//! commitments from the metagraph and, per competition:
//! 1. **commitments** → entries: a digest that is not `blake3(model ‖ hotkey)` is refused; a
//!    model is eligible `eval_delay_blocks` after its commitment, so the evaluation pages come
//!    from a block nobody knew at commit time;
//! 2. **copies**: the same model id under two hotkeys belongs to the earlier commit (the
//!    later scores nothing); models are fetched (from any peer that holds them: the miner,
//!    or any validator that fetched them before), checked (refusals counted per reason),
//!    and a model whose logits on this validator's **private probe** are within
//!    `copy_distance` of an earlier commit's is a near-copy and scores nothing;
//! 3. **evaluation** of at most `max_models_per_round` models (new ones first, then the best,
//!    then the longest unevaluated) on `eval_pages` pages drawn from the round's block hash,
//!    the same for every validator;
//! 4. **ranking**: per-page pairwise wins with the earlier commit's loss taken as
//!    `loss × (1 − ε)` (ε decaying with the commitment's age), an EMA of win rates and a
//!    softmax at `temperature` (rule `win_rate`), or king of the hill (a challenger replaces
//!    the leader only if a paired bootstrap's lower bound of its advantage exceeds the margin).
//!
//! The result (each competition's weight distribution and its leaderboard) is published in
//! the handle's shared board, which the weight setter and the admin socket read without
//! waiting on a round in progress.

use crate::context::{Metrics, NodeContext};
use crate::handle::Slot;
use apiary_chain::{keys::HotkeyId, ModelCommit, PeerRecord};
use apiary_compete::{
    check_manifest, check_model_dir, commit_digest, package_dir, rules, LoadedModel, ModelManifest,
};
use apiary_config::{CompetitionConfig, CompetitionRule, Role};
use apiary_storage::{ContentId, Pin};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Pieces of one model fetched at once.
const PARALLEL_PIECES: usize = 8;

/// One model's line on a leaderboard.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// The committing uid.
    pub uid: u16,
    /// Its hotkey (ss58).
    pub hotkey: String,
    /// The model's manifest id (hex).
    pub model: String,
    /// Block of the commitment (the earliest this validator saw for this hotkey and model).
    pub commit_block: u64,
    /// `eligible`, `waiting` (inside the evaluation delay), `copy`, `near_copy`, `refused`, or
    /// `unreachable` (no peer served it this round; tried again next round).
    pub status: String,
    /// Why it is not eligible, in words.
    pub reason: Option<String>,
    /// Mean loss per token on the last round's pages.
    pub loss: Option<f64>,
    /// Win rate in the last round it was evaluated in.
    pub win_rate: Option<f64>,
    /// EMA of its win rates.
    pub ema: f64,
    /// ε in force for it (its commitment's age).
    pub epsilon: f64,
    /// Its share of the competition's weight.
    pub weight: f64,
    /// Rounds it was evaluated in.
    pub rounds: u64,
}

/// A competition's standing after a round.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Leaderboard {
    /// The competition's id.
    pub competition: String,
    /// Its share of the subnet's weight.
    pub share: f64,
    /// Rounds run.
    pub rounds: u64,
    /// Block the last round's pages came from.
    pub round_block: Option<u64>,
    /// Models evaluated in the last round (manifest ids, hex).
    pub evaluated: Vec<String>,
    /// King of the hill: the leading uid.
    pub leader: Option<u16>,
    /// Entries, best weight first.
    pub entries: Vec<Entry>,
    /// Refusals so far, by reason.
    pub refusals: BTreeMap<String, u64>,
}

/// What the actor publishes: every competition's board.
#[derive(Debug, Default)]
pub struct Board {
    boards: RwLock<Vec<Leaderboard>>,
}

impl Board {
    /// Every competition's leaderboard.
    pub fn leaderboards(&self) -> Vec<Leaderboard> {
        self.boards.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Per competition: its share and its weight distribution over uids (summing to 1, or
    /// empty before its first round).
    pub fn weights(&self) -> Vec<(f64, Vec<(u16, f64)>)> {
        self.leaderboards()
            .into_iter()
            .map(|b| {
                let w = b
                    .entries
                    .iter()
                    .filter(|e| e.weight > 0.0)
                    .map(|e| (e.uid, e.weight))
                    .collect();
                (b.share, w)
            })
            .collect()
    }

    fn publish(&self, boards: Vec<Leaderboard>) {
        if let Ok(mut b) = self.boards.write() {
            *b = boards;
        }
    }
}

/// Messages of the competitions actor.
#[derive(Debug)]
pub enum CompetitionMsg {
    /// Time passed: run a round for every competition that is due.
    Tick,
}

/// Typed front of the competitions actor, with its published board.
#[derive(Clone)]
pub struct CompetitionsHandle {
    /// The actor.
    pub slot: Slot<CompetitionMsg>,
    /// What it published last.
    pub board: Arc<Board>,
}

impl CompetitionsHandle {
    /// A handle with an empty board.
    pub fn new() -> Self {
        CompetitionsHandle {
            slot: Slot::new("competitions"),
            board: Arc::new(Board::default()),
        }
    }
}

impl Default for CompetitionsHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Combines weight distributions by share: `Σ share × p(uid)`; parts with no weights add
/// nothing (their share is left out rather than given to anyone).
pub fn merge_shares(parts: &[(f64, Vec<(u16, f64)>)]) -> Vec<(u16, f64)> {
    let mut out: BTreeMap<u16, f64> = BTreeMap::new();
    for (share, dist) in parts {
        let total: f64 = dist
            .iter()
            .map(|(_, w)| if w.is_finite() { w.max(0.0) } else { 0.0 })
            .sum();
        let usable = total > 0.0 && share.is_finite() && *share > 0.0;
        if !usable {
            continue;
        }
        for (uid, w) in dist {
            let w = if w.is_finite() { w.max(0.0) } else { 0.0 };
            *out.entry(*uid).or_default() += share * w / total;
        }
    }
    out.into_iter().collect()
}

/// A model this validator fetched and checked (or refused).
struct Known {
    verdict: Result<Arc<LoadedModel>, String>,
    /// Keeps its manifest and pieces from the sweep: this node serves them to others.
    _pins: Vec<Pin>,
}

/// Per-uid standing in one competition.
#[derive(Debug, Clone, Default)]
struct Standing {
    model: [u8; 32],
    ema: f64,
    rounds: u64,
    last_round: u64,
    win_rate: Option<f64>,
    loss: Option<f64>,
}

/// One competition's state.
struct Comp {
    cfg: CompetitionConfig,
    /// Its evaluation data with mixing weights (validators only).
    data: Vec<(Arc<apiary_data::Dataset>, f64)>,
    next_round: u64,
    rounds: u64,
    models: HashMap<[u8; 32], Known>,
    first_seen: HashMap<(HotkeyId, [u8; 32]), u64>,
    standings: HashMap<u16, Standing>,
    leader: Option<(u16, [u8; 32])>,
    refusals: BTreeMap<String, u64>,
    /// What was counted in `refusals` already: (uid, model, reason).
    refused: std::collections::HashSet<(u16, [u8; 32], String)>,
    board: Leaderboard,
}

/// The actor.
pub struct Competitions;

/// Its state.
pub struct CompetitionsState {
    ctx: Arc<NodeContext>,
    board: Arc<Board>,
    comps: Vec<Comp>,
}

impl Actor for Competitions {
    type Msg = CompetitionMsg;
    type State = CompetitionsState;
    type Arguments = (Arc<NodeContext>, Arc<Board>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, board): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // One tick outstanding at a time: the next is scheduled when one is handled, so a
        // long evaluation round never queues up ticks behind it.
        myself.send_after(tick_every(&ctx), || CompetitionMsg::Tick);
        // After a restart, keep serving the models this hotkey entered.
        let ctx2 = Arc::clone(&ctx);
        tokio::spawn(async move { pin_own_models(&ctx2).await });
        let mut data = Vec::new();
        for c in &ctx.cfg.competitions {
            data.push(if ctx.cfg.node.role == Role::Validator {
                let (ctx2, c2) = (Arc::clone(&ctx), c.clone());
                tokio::task::spawn_blocking(move || eval_data(&ctx2, &c2)).await??
            } else {
                Vec::new()
            });
        }
        let comps = ctx
            .cfg
            .competitions
            .iter()
            .zip(data)
            .map(|(c, data)| Comp {
                data,
                cfg: c.clone(),
                next_round: 0,
                rounds: 0,
                models: HashMap::new(),
                first_seen: HashMap::new(),
                standings: HashMap::new(),
                leader: None,
                refusals: BTreeMap::new(),
                refused: Default::default(),
                board: Leaderboard {
                    competition: c.id.clone(),
                    share: c.share,
                    ..Leaderboard::default()
                },
            })
            .collect();
        Ok(CompetitionsState { ctx, board, comps })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CompetitionMsg::Tick => {
                myself.send_after(tick_every(&st.ctx), || CompetitionMsg::Tick);
                if st.ctx.cfg.node.role != Role::Validator {
                    return Ok(());
                }
                let block = st.ctx.status().block;
                let mut changed = false;
                for i in 0..st.comps.len() {
                    if block >= st.comps[i].next_round {
                        let ctx = Arc::clone(&st.ctx);
                        round(&ctx, &mut st.comps[i], block).await;
                        st.comps[i].next_round = block + st.comps[i].cfg.eval_every_blocks;
                        changed = true;
                    }
                }
                if changed {
                    st.board
                        .publish(st.comps.iter().map(|c| c.board.clone()).collect());
                }
            }
        }
        Ok(())
    }
}

/// The node-wide counter name of a refusal reason.
fn counter_name(reason: &str) -> &'static str {
    match reason {
        "copy" => "competition_copy",
        "near_copy" => "competition_near_copy",
        "unreachable" => "competition_unreachable",
        "digest" => "competition_digest",
        "commitment" => "competition_commitment",
        "manifest" => "competition_manifest",
        "too_large" => "competition_too_large",
        "model_type" => "competition_model_type",
        "params" => "competition_params",
        "tokenizer" => "competition_tokenizer",
        "seq_len" => "competition_seq_len",
        "tensors" => "competition_tensors",
        "unreadable" => "competition_unreadable",
        _ => "competition_other",
    }
}

/// How often the actor looks at the chain head: once per block.
fn tick_every(ctx: &NodeContext) -> Duration {
    Duration::from_millis(ctx.cfg.chain.block_time_ms.max(50))
}

/// A commitment seen in the metagraph.
struct Commit {
    uid: u16,
    model: [u8; 32],
    block: u64,
}

fn parse_id(hex_id: &str) -> Option<[u8; 32]> {
    let v = hex::decode(hex_id).ok()?;
    v.try_into().ok()
}

impl Comp {
    /// Counts a refusal of `model` (committed by `uid`) once, here and in the node's
    /// per-check counters (`apiary admin metrics` → `rejected`, as `competition_<reason>`).
    fn refuse(&mut self, ctx: &NodeContext, uid: u16, model: [u8; 32], reason: &str) {
        if !self.refused.insert((uid, model, reason.to_string())) {
            return;
        }
        *self.refusals.entry(reason.to_string()).or_default() += 1;
        ctx.rejections.count(counter_name(reason));
        Metrics::inc(&ctx.metrics.competition_refused);
    }
}

/// One round of one competition at `block`.
async fn round(ctx: &Arc<NodeContext>, c: &mut Comp, block: u64) {
    // Read afresh: the chain watcher re-reads the metagraph on registrations, not when a
    // commitment changes.
    let mg = match ctx.chain.metagraph(ctx.cfg.chain.netuid).await {
        Ok(mg) => Arc::new(mg),
        Err(e) => match ctx.metagraph() {
            Some(mg) => {
                tracing::debug!(error = %e, "metagraph read failed; using the last one");
                mg
            }
            None => return,
        },
    };
    let cfg = c.cfg.clone();
    let mut entries: Vec<Entry> = Vec::new();
    let mut commits: Vec<Commit> = Vec::new();
    for n in &mg.neurons {
        let Some(mc) = n
            .peer
            .as_ref()
            .and_then(|p| p.models.iter().find(|m| m.competition == cfg.id))
        else {
            continue;
        };
        let mut entry = Entry {
            uid: n.uid,
            hotkey: n.hotkey.ss58(),
            model: mc.model.clone(),
            commit_block: n.commit_block.unwrap_or(mg.block),
            status: "refused".into(),
            reason: None,
            loss: None,
            win_rate: None,
            ema: 0.0,
            epsilon: 0.0,
            weight: 0.0,
            rounds: 0,
        };
        let Some(model) = parse_id(&mc.model) else {
            entry.reason = Some("commitment: the model id is not 64 hex characters".into());
            c.refuse(ctx, n.uid, [0; 32], "commitment");
            entries.push(entry);
            continue;
        };
        if hex::encode(commit_digest(&model, &n.hotkey.0)) != mc.digest {
            entry.reason = Some("digest: not blake3(model ‖ hotkey)".into());
            c.refuse(ctx, n.uid, model, "digest");
            entries.push(entry);
            continue;
        }
        let first = c
            .first_seen
            .entry((n.hotkey, model))
            .or_insert(entry.commit_block);
        *first = (*first).min(entry.commit_block);
        entry.commit_block = *first;
        if block < entry.commit_block.saturating_add(cfg.eval_delay_blocks) {
            entry.status = "waiting".into();
            entry.reason = Some(format!(
                "evaluated from block {}",
                entry.commit_block.saturating_add(cfg.eval_delay_blocks)
            ));
            entries.push(entry);
            continue;
        }
        commits.push(Commit {
            uid: n.uid,
            model,
            block: entry.commit_block,
        });
        entries.push(entry);
    }
    // Forget standings of uids whose model changed or that left.
    c.standings
        .retain(|uid, s| commits.iter().any(|m| m.uid == *uid && m.model == s.model));

    // The same model id under several hotkeys: the earliest commit owns it.
    commits.sort_by_key(|m| (m.block, m.uid));
    let mut owner: HashMap<[u8; 32], (u16, u64)> = HashMap::new();
    let mut candidates: Vec<&Commit> = Vec::new();
    for m in &commits {
        match owner.get(&m.model) {
            Some(&(uid, blk)) => {
                set_status(
                    &mut entries,
                    m.uid,
                    "copy",
                    format!("the same model as uid {uid}, committed earlier (block {blk})"),
                );
                c.refuse(ctx, m.uid, m.model, "copy");
            }
            None => {
                owner.insert(m.model, (m.uid, m.block));
                candidates.push(m);
            }
        }
    }

    // Fetch and check the models not seen before.
    let mut loaded: Vec<(&Commit, Arc<LoadedModel>)> = Vec::new();
    for m in candidates {
        if !c.models.contains_key(&m.model) {
            let known = fetch_and_check(ctx, &cfg, m.model).await;
            if let Err(reason) = &known.verdict {
                if reason.starts_with("unreachable") {
                    // No holder answered: try again next round rather than refuse for good.
                    c.refuse(ctx, m.uid, m.model, "unreachable");
                    set_status(&mut entries, m.uid, "unreachable", reason.clone());
                    continue;
                }
                let r = reason.split(':').next().unwrap_or("refused").to_string();
                c.refuse(ctx, m.uid, m.model, &r);
                tracing::info!(competition = %cfg.id, uid = m.uid, %reason, "model refused");
            }
            c.models.insert(m.model, known);
        }
        match c.models.get(&m.model).map(|k| &k.verdict) {
            Some(Ok(model)) => loaded.push((m, Arc::clone(model))),
            Some(Err(reason)) => set_status(&mut entries, m.uid, "refused", reason.clone()),
            None => {}
        }
    }

    // Near-copies: logits on this validator's private probe too close to an earlier commit's.
    let probe = private_probe(ctx, c, block);
    let mut logits: Vec<Option<Vec<f32>>> = Vec::new();
    for (_, model) in &loaded {
        let (model, probe, window) = (Arc::clone(model), probe.clone(), cfg.seq_len);
        let l = tokio::task::spawn_blocking(move || {
            apiary_compete::probe_logits(&model, &probe, window).ok()
        })
        .await
        .ok()
        .flatten();
        logits.push(l);
    }
    let mut keep = vec![true; loaded.len()];
    for j in 0..loaded.len() {
        for i in 0..j {
            if !keep[i] {
                continue;
            }
            if let (Some(a), Some(b)) = (&logits[i], &logits[j]) {
                let d = rules::logit_distance(a, b);
                if d < cfg.copy_distance {
                    keep[j] = false;
                    set_status(
                        &mut entries,
                        loaded[j].0.uid,
                        "near_copy",
                        format!(
                            "its logits on the probe are within {d:.2e} of uid {}'s (committed earlier)",
                            loaded[i].0.uid
                        ),
                    );
                    let (uid, model) = (loaded[j].0.uid, loaded[j].0.model);
                    c.refuse(ctx, uid, model, "near_copy");
                    break;
                }
            }
        }
    }
    let eligible: Vec<(&Commit, Arc<LoadedModel>)> = loaded
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(m, _)| m)
        .collect();
    c.standings
        .retain(|uid, _| eligible.iter().any(|(m, _)| m.uid == *uid));

    // Which to evaluate: new first, then the best, then the longest unevaluated.
    let mut order: Vec<usize> = (0..eligible.len()).collect();
    order.sort_by(|&a, &b| {
        let sa = c.standings.get(&eligible[a].0.uid);
        let sb = c.standings.get(&eligible[b].0.uid);
        let key = |s: Option<&Standing>| match s {
            None => (0u8, 0.0, 0u64),
            Some(s) => (1, -s.ema, s.last_round),
        };
        let (ka, kb) = (key(sa), key(sb));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.cmp(&kb.2))
    });
    order.truncate(cfg.max_models_per_round);
    // King of the hill compares every challenger with the leader: it is always evaluated.
    if cfg.rule == CompetitionRule::KingOfTheHill {
        if let Some(l) = c.leader {
            let at = eligible.iter().position(|(m, _)| (m.uid, m.model) == l);
            if let Some(at) = at.filter(|at| !order.contains(at)) {
                if order.len() >= cfg.max_models_per_round {
                    order.pop();
                }
                order.push(at);
            }
        }
    }
    order.sort_by_key(|&i| (eligible[i].0.block, eligible[i].0.uid));

    // The round's pages come from the round block's hash: the same for every validator.
    c.rounds += 1;
    let seed = match ctx.chain.block_hash(block).await {
        Ok(Some(h)) => h,
        _ => {
            tracing::debug!(block, "no hash for the round block; round skipped");
            return;
        }
    };
    let pages = round_pages(c, &seed);
    let mut losses: Vec<Vec<f64>> = Vec::new();
    for &i in &order {
        let (model, round_pages) = (Arc::clone(&eligible[i].1), pages.clone());
        let l =
            tokio::task::spawn_blocking(move || apiary_compete::page_losses(&model, &round_pages))
                .await;
        losses.push(match l {
            Ok(Ok(v)) => v,
            _ => vec![f64::INFINITY; pages.len()],
        });
    }
    let blocks: Vec<u64> = order.iter().map(|&i| eligible[i].0.block).collect();
    let eps: Vec<f64> = blocks
        .iter()
        .map(|b| rules::epsilon(&cfg, block.saturating_sub(*b)))
        .collect();
    let rates = rules::win_rates(&losses, &blocks, &eps);
    for (k, &i) in order.iter().enumerate() {
        let m = eligible[i].0;
        let s = c.standings.entry(m.uid).or_insert_with(|| Standing {
            model: m.model,
            ..Standing::default()
        });
        let prev = (s.rounds > 0).then_some(s.ema);
        s.ema = rules::ema(prev, rates[k], cfg.ema_alpha);
        s.rounds += 1;
        s.last_round = c.rounds;
        s.win_rate = Some(rates[k]);
        let mean = losses[k].iter().sum::<f64>() / losses[k].len().max(1) as f64;
        s.loss = Some(mean);
    }
    Metrics::inc(&ctx.metrics.competition_rounds);

    // Weights.
    let uids: Vec<u16> = eligible.iter().map(|(m, _)| m.uid).collect();
    let weights: Vec<f64> = match cfg.rule {
        CompetitionRule::WinRate => {
            let emas: Vec<f64> = uids
                .iter()
                .map(|u| c.standings.get(u).map(|s| s.ema).unwrap_or(0.0))
                .collect();
            rules::softmax(&emas, cfg.temperature)
        }
        CompetitionRule::KingOfTheHill => {
            let keys: Vec<ModelKey> = order
                .iter()
                .map(|&i| (eligible[i].0.uid, eligible[i].0.model))
                .collect();
            let still = c
                .leader
                .is_some_and(|l| eligible.iter().any(|(m, _)| (m.uid, m.model) == l));
            c.leader = next_leader(&cfg, c.leader, still, &keys, &losses, block);
            uids.iter()
                .map(|u| {
                    if c.leader.map(|l| l.0) == Some(*u) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        }
    };
    for (uid, w) in uids.iter().zip(&weights) {
        if let Some(e) = entries.iter_mut().find(|e| e.uid == *uid) {
            e.status = "eligible".into();
            e.weight = *w;
            e.epsilon = rules::epsilon(&cfg, block.saturating_sub(e.commit_block));
            if let Some(s) = c.standings.get(uid) {
                e.ema = s.ema;
                e.rounds = s.rounds;
                e.win_rate = s.win_rate;
                e.loss = s.loss;
            }
        }
    }
    entries.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.uid.cmp(&b.uid)));
    c.board = Leaderboard {
        competition: cfg.id.clone(),
        share: cfg.share,
        rounds: c.rounds,
        round_block: Some(block),
        evaluated: order
            .iter()
            .map(|&i| hex::encode(eligible[i].0.model))
            .collect(),
        leader: c.leader.map(|l| l.0),
        entries,
        refusals: c.refusals.clone(),
    };
    tracing::info!(competition = %cfg.id, block, evaluated = order.len(), "competition round");
}

/// A model: its uid and manifest id.
type ModelKey = (u16, [u8; 32]);

/// King of the hill after one round: `evaluated` are this round's models with their per-page
/// `losses`; `eligible` says whether the current leader is still in the competition. The leader
/// stays unless the best challenger's per-page advantage has a paired-bootstrap lower bound
/// above `koth_margin`; a leader that was not evaluated this round keeps its place; a leader
/// that left (or none yet) is replaced by the round's best.
pub fn next_leader(
    cfg: &CompetitionConfig,
    leader: Option<ModelKey>,
    eligible: bool,
    evaluated: &[ModelKey],
    losses: &[Vec<f64>],
    seed: u64,
) -> Option<ModelKey> {
    let mean = |k: usize| losses[k].iter().sum::<f64>() / losses[k].len().max(1) as f64;
    let best = (0..evaluated.len().min(losses.len())).min_by(|&a, &b| mean(a).total_cmp(&mean(b)));
    let leader = leader.filter(|_| eligible);
    let Some(best) = best else { return leader };
    let Some(current) = leader else {
        return Some(evaluated[best]);
    };
    let Some(l) = evaluated.iter().position(|k| *k == current) else {
        return Some(current);
    };
    if l != best
        && rules::koth_dethrones(
            &losses[l],
            &losses[best],
            cfg.koth_margin,
            cfg.koth_alpha,
            cfg.bootstrap_samples,
            seed,
        )
    {
        Some(evaluated[best])
    } else {
        Some(current)
    }
}

fn set_status(entries: &mut [Entry], uid: u16, status: &str, reason: String) {
    if let Some(e) = entries.iter_mut().find(|e| e.uid == uid) {
        e.status = status.into();
        e.reason = Some(reason);
    }
}

/// Why a competition's evaluation data cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum EvalDataError {
    /// The competition names a tokenizer this node does not have.
    #[error("competition `{0}` evaluates with tokenizer {1}; set train.tokenizer to that tokenizer.json (b3sum must match)")]
    Tokenizer(String, String),
    /// A dataset failed to open.
    #[error("competition `{id}`: cannot open evaluation data {path}: {reason}; check competition.datasets")]
    Data {
        /// The competition.
        id: String,
        /// The dataset.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Opens a competition's evaluation datasets (its `datasets`, or else the node's `train.data`)
/// in pages of the competition's `seq_len`, tokenized with the competition's tokenizer. The
/// node's own dataset is reused when it already is exactly that.
fn eval_data(
    ctx: &NodeContext,
    cfg: &CompetitionConfig,
) -> Result<Vec<(Arc<apiary_data::Dataset>, f64)>, EvalDataError> {
    let node_bytes = ctx.cfg.train.tokenizer.is_none();
    if cfg.datasets.is_empty() && cfg.seq_len == ctx.cfg.model.seq_len {
        let same = if cfg.tokenizer == "bytes" {
            node_bytes
        } else {
            ctx.dataset.manifest().tokenizer_hash == cfg.tokenizer
        };
        if same {
            return Ok(vec![(Arc::clone(&ctx.dataset), 1.0)]);
        }
    }
    let tokenizer = if cfg.tokenizer == "bytes" {
        apiary_data::Tokenizer::bytes()
    } else {
        let t = ctx
            .cfg
            .train
            .tokenizer
            .as_ref()
            .and_then(|p| apiary_data::Tokenizer::from_file(p).ok())
            .filter(|t| hex::encode(t.hash()) == cfg.tokenizer);
        t.ok_or_else(|| EvalDataError::Tokenizer(cfg.id.clone(), cfg.tokenizer.clone()))?
    };
    let sets: Vec<(PathBuf, f64)> = if cfg.datasets.is_empty() {
        vec![(ctx.cfg.train.data.clone(), 1.0)]
    } else {
        cfg.datasets
            .iter()
            .map(|d| (d.path.clone(), d.weight))
            .collect()
    };
    let root = ctx.cfg.node.data_dir.join("competitions").join(&cfg.id);
    sets.into_iter()
        .enumerate()
        .map(|(i, (path, w))| {
            apiary_data::Dataset::open(
                &path,
                &tokenizer,
                cfg.seq_len,
                ctx.cfg.train.held_out_fraction,
                &root.join(format!("data-{i}")),
            )
            .map(|d| (Arc::new(d), w))
            .map_err(|e| EvalDataError::Data {
                id: cfg.id.clone(),
                path,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// `eval_pages` pages of the competition's data (split by mixing weight), drawn from the round
/// block's hash.
fn round_pages(c: &Comp, seed: &[u8; 32]) -> Vec<Vec<u32>> {
    apiary_compete::eval_pages(&c.data, *seed, c.cfg.eval_pages).unwrap_or_default()
}

/// This validator's private probe: `probe_tokens` tokens of the node's data chosen by a hash
/// of the hotkey's signature over the round block, which no one else can compute, so no miner
/// can tune a near-copy to it.
fn private_probe(ctx: &NodeContext, c: &Comp, block: u64) -> Vec<u32> {
    let cfg = &c.cfg;
    let mut msg = b"apiary-competition-probe".to_vec();
    msg.extend_from_slice(cfg.id.as_bytes());
    msg.extend_from_slice(&block.to_le_bytes());
    let seed = *blake3::hash(&ctx.hotkey.sign(&msg)).as_bytes();
    apiary_compete::probe(seed, &c.data, cfg.probe_tokens).unwrap_or_default()
}

/// Fetches a model's manifest and pieces (storing and pinning them), assembles it in the data
/// dir and checks it; the verdict's error is `reason: detail`.
async fn fetch_and_check(ctx: &Arc<NodeContext>, cfg: &CompetitionConfig, id: [u8; 32]) -> Known {
    let mut pins = Vec::new();
    let verdict = async {
        let mbytes = crate::blobs::fetch_blob(ctx, ContentId(id), None, true)
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        pins.push(ctx.store.pin(ContentId(id)));
        let manifest = ModelManifest::from_bytes(&mbytes, cfg.piece_bytes as u64)
            .map_err(|e| format!("manifest: {e}"))?;
        if manifest.id() != id {
            return Err("manifest: its bytes do not hash to the committed id".to_string());
        }
        check_manifest(&manifest, cfg).map_err(|r| r.to_string())?;
        // Pieces come in parallel, each one in verified 1 MiB groups from every peer that
        // holds it (a different peer asked first for each piece), straight into the store.
        let peers = ctx.net.connected_peers().await;
        let fetches = manifest
            .piece_ids()
            .into_iter()
            .enumerate()
            .map(|(i, piece)| {
                let first: Vec<_> = peers
                    .get(i % peers.len().max(1))
                    .copied()
                    .into_iter()
                    .collect();
                async move {
                    crate::blobs::download_blob(ctx, ContentId(piece), &first)
                        .await
                        .map(|_| piece)
                }
            });
        let mut fetched = futures::stream::iter(fetches).buffer_unordered(PARALLEL_PIECES);
        while let Some(piece) = fetched.next().await {
            let piece = piece.map_err(|e| format!("unreachable: {e}"))?;
            pins.push(ctx.store.pin(ContentId(piece)));
        }
        let dir = model_dir(ctx, &cfg.id, &id);
        let store = ctx.store.clone();
        let cfg2 = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
            apiary_compete::assemble(&manifest, &dir, |p: &[u8; 32]| {
                store
                    .get_blob(ContentId(*p))
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "piece missing from the store".to_string())
            })
            .map_err(|e| format!("unreadable: {e}"))?;
            let checked = check_model_dir(&dir, &manifest, &cfg2).map_err(|r| r.to_string());
            // The pieces stay in the store; the assembled copy is only for loading.
            let _ = std::fs::remove_dir_all(&dir);
            checked
        })
        .await
        .map_err(|e| format!("unreadable: {e}"))?
        .map(Arc::new)
    }
    .await;
    Known {
        verdict,
        _pins: pins,
    }
}

fn model_dir(ctx: &NodeContext, competition: &str, id: &[u8; 32]) -> PathBuf {
    ctx.cfg
        .node
        .data_dir
        .join("competitions")
        .join(competition)
        .join(hex::encode(id))
}

/// What [`submit`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// The competition.
    pub competition: String,
    /// The model's manifest id (hex).
    pub model: String,
    /// `blake3(model ‖ hotkey)` (hex).
    pub digest: String,
    /// Parameters.
    pub num_params: u64,
    /// Pieces stored.
    pub pieces: usize,
    /// Bytes stored.
    pub bytes: u64,
    /// Block the commitment was included in.
    pub block: u64,
}

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No `[[competition]]` with that id in the node's config.
    #[error(
        "no competition `{0}` in this node's config; add a [[competition]] section or check the id"
    )]
    UnknownCompetition(String),
    /// The model breaks the competition's rules.
    #[error("the model breaks competition `{competition}`'s rules: {reason}")]
    Refused {
        /// The competition.
        competition: String,
        /// The refusal.
        reason: String,
    },
    /// Reading or storing the model failed.
    #[error("cannot package {path}: {reason}")]
    Package {
        /// The model directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The chain refused the commitment.
    #[error("the model is stored but its commitment failed: {0}; retry the submit")]
    Chain(String),
}

/// Miner side: checks `dir` against competition `id`, stores it as pinned pieces and commits
/// it on chain (replacing this hotkey's earlier entry in that competition).
pub async fn submit(
    ctx: &Arc<NodeContext>,
    competition: &str,
    dir: &Path,
) -> Result<Submitted, SubmitError> {
    let cfg = ctx
        .cfg
        .competitions
        .iter()
        .find(|c| c.id == competition)
        .cloned()
        .ok_or_else(|| SubmitError::UnknownCompetition(competition.to_string()))?;
    let store = ctx.store.clone();
    let (dir2, cfg2) = (dir.to_path_buf(), cfg.clone());
    let packaged = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        let manifest = package_dir(&dir2, &cfg2.id, cfg2.piece_bytes, |id, bytes| {
            ids.push(id);
            store.put_blob_verified(ContentId(id), bytes).map(|_| ())
        })
        .map_err(|e| SubmitError::Package {
            path: dir2.clone(),
            reason: e.to_string(),
        })?;
        check_manifest(&manifest, &cfg2).map_err(|r| SubmitError::Refused {
            competition: cfg2.id.clone(),
            reason: r.to_string(),
        })?;
        check_model_dir(&dir2, &manifest, &cfg2).map_err(|r| SubmitError::Refused {
            competition: cfg2.id.clone(),
            reason: r.to_string(),
        })?;
        let mbytes = manifest.to_bytes();
        let mid = store.put_blob(&mbytes).map_err(|e| SubmitError::Package {
            path: dir2.clone(),
            reason: e.to_string(),
        })?;
        Ok::<_, SubmitError>((manifest, mid, ids))
    })
    .await
    .map_err(|e| SubmitError::Package {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })??;
    let (manifest, mid, ids) = packaged;
    let mut pins = vec![ctx.store.pin(mid)];
    pins.extend(ids.iter().map(|id| ctx.store.pin(ContentId(*id))));
    if let Ok(mut held) = ctx.pinned.lock() {
        held.extend(pins);
    }
    let digest = commit_digest(&mid.0, &ctx.hotkey.id().0);
    let mut record = own_record(ctx).await;
    record.models.retain(|m| m.competition != cfg.id);
    record.models.push(ModelCommit {
        competition: cfg.id.clone(),
        model: hex::encode(mid.0),
        digest: hex::encode(digest),
    });
    let receipt = ctx
        .chain
        .set_commitment(ctx.cfg.chain.netuid, &ctx.hotkey, record.encode())
        .await
        .map_err(|e| SubmitError::Chain(e.to_string()))?;
    tracing::info!(competition = %cfg.id, model = %hex::encode(mid.0), block = receipt.block, "model committed");
    Ok(Submitted {
        competition: cfg.id,
        model: hex::encode(mid.0),
        digest: hex::encode(digest),
        num_params: manifest.num_params,
        pieces: ids.len(),
        bytes: manifest.total_bytes(),
        block: receipt.block,
    })
}

/// This node's peer record as committed (with its models), or a fresh one.
async fn own_record(ctx: &NodeContext) -> PeerRecord {
    let on_chain = ctx
        .chain
        .metagraph(ctx.cfg.chain.netuid)
        .await
        .ok()
        .and_then(|mg| mg.by_hotkey(&ctx.hotkey.id()).and_then(|n| n.peer.clone()));
    match on_chain {
        Some(p) => p,
        None => crate::context::local_peer_record(&ctx.net).await,
    }
}

/// Re-pins the pieces of this node's own committed models (after a restart), so it keeps
/// serving them.
pub async fn pin_own_models(ctx: &Arc<NodeContext>) {
    let record = own_record(ctx).await;
    let mut pins = Vec::new();
    for m in &record.models {
        let Some(id) = parse_id(&m.model) else {
            continue;
        };
        let Some(cfg) = ctx.cfg.competitions.iter().find(|c| c.id == m.competition) else {
            continue;
        };
        if let Ok(Some(bytes)) = ctx.store.get_blob(ContentId(id)) {
            pins.push(ctx.store.pin(ContentId(id)));
            if let Ok(manifest) = ModelManifest::from_bytes(&bytes, cfg.piece_bytes as u64) {
                pins.extend(
                    manifest
                        .piece_ids()
                        .into_iter()
                        .map(|p| ctx.store.pin(ContentId(p))),
                );
            }
        }
    }
    if let Ok(mut held) = ctx.pinned.lock() {
        held.extend(pins);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn koth() -> CompetitionConfig {
        CompetitionConfig {
            id: "k".into(),
            rule: CompetitionRule::KingOfTheHill,
            koth_margin: 0.01,
            koth_alpha: 0.05,
            bootstrap_samples: 500,
            ..CompetitionConfig::default()
        }
    }

    #[test]
    fn the_king_stays_unless_clearly_beaten() {
        let cfg = koth();
        let (a, b) = ((1, [1; 32]), (2, [2; 32]));
        let lose = |x: f64| vec![x; 16];
        // No leader yet: the round's best.
        assert_eq!(
            next_leader(&cfg, None, false, &[a, b], &[lose(3.0), lose(2.9)], 1),
            Some(b)
        );
        // Better by less than the margin: the leader stays.
        assert_eq!(
            next_leader(&cfg, Some(a), true, &[a, b], &[lose(3.0), lose(2.995)], 1),
            Some(a)
        );
        // Better by 0.1 nats on every page: dethroned.
        assert_eq!(
            next_leader(&cfg, Some(a), true, &[a, b], &[lose(3.0), lose(2.9)], 1),
            Some(b)
        );
        // Better on average but only on some pages (noisy): the bootstrap's bound is below
        // the margin, the leader stays.
        let noisy: Vec<f64> = (0..16)
            .map(|i| if i % 2 == 0 { 2.7 } else { 3.25 })
            .collect();
        assert_eq!(
            next_leader(&cfg, Some(a), true, &[a, b], &[lose(3.0), noisy], 1),
            Some(a)
        );
        // A leader not evaluated this round keeps its place; one that left is replaced.
        assert_eq!(
            next_leader(&cfg, Some(a), true, &[b], &[lose(1.0)], 1),
            Some(a)
        );
        assert_eq!(
            next_leader(&cfg, Some(a), false, &[b], &[lose(9.0)], 1),
            Some(b)
        );
        assert_eq!(next_leader(&cfg, Some(a), false, &[], &[], 1), None);
    }

    #[test]
    fn shares_merge_distributions_and_skip_empty_parts() {
        let m = merge_shares(&[
            (0.25, vec![(1, 2.0), (2, 2.0)]),
            (0.75, vec![(2, 1.0), (3, 3.0)]),
            (0.5, vec![]),
        ]);
        let get = |u: u16| {
            m.iter()
                .find(|(x, _)| *x == u)
                .map(|(_, w)| *w)
                .unwrap_or(0.0)
        };
        assert!((get(1) - 0.125).abs() < 1e-12);
        assert!((get(2) - (0.125 + 0.1875)).abs() < 1e-12);
        assert!((get(3) - 0.5625).abs() < 1e-12);
        assert!(merge_shares(&[(1.0, vec![(1, f64::NAN)])]).is_empty());
    }
}
