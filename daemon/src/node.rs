//! Node assembly: from a validated config to running actors, and back down.

use crate::admin;
use anyhow::{Context, Result};
use apiary_actors::context::NodeContext;
use apiary_actors::{spawn_supervisor, Handles, SupervisorHandle};
use apiary_chain::local::{LocalChain, SubnetParams};
use apiary_chain::ChainClient;
use apiary_config::{ChainBackend, NodeConfig};
use apiary_data::{Dataset, Tokenizer};
use apiary_net::{NetParams, StoreBlobs};
use apiary_storage::Store;
use std::sync::Arc;
use std::time::Duration;

/// Where a node's chain comes from.
#[derive(Clone)]
pub enum ChainSource {
    /// Open the backend named in the config: the embedded chain in `chain.local_path`
    /// (producing blocks on `chain.block_time_ms`), or subtensor at `chain.endpoint` signing with
    /// the wallet hotkey `chain.wallet` / `chain.hotkey`.
    FromConfig,
    /// Use a chain shared with other nodes in this process (devnet, tests).
    Shared(Arc<dyn ChainClient>),
}

/// A running node.
pub struct Node {
    ctx: Arc<NodeContext>,
    handles: Handles,
    supervisor: Option<SupervisorHandle>,
    admin: tokio::task::JoinHandle<()>,
    /// The metrics endpoint's task and bound address (`metrics.listen`), when enabled.
    metrics: Option<(tokio::task::JoinHandle<()>, std::net::SocketAddr)>,
    producer: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Assembles and starts a node.
    pub async fn spawn(mut cfg: NodeConfig, chain: ChainSource) -> Result<Node> {
        cfg.validate()?;
        apiary_actors::check_adversary_kit(&cfg)?;
        let span = tracing::info_span!("node", node = %cfg.node.name);
        let _e = span.enter();
        std::fs::create_dir_all(&cfg.node.data_dir).with_context(|| {
            format!(
                "cannot create data dir {}; set node.data_dir to a writable path",
                cfg.node.data_dir.display()
            )
        })?;
        // Bound first: a port already taken stops the node before anything else starts.
        let metrics_listener = match cfg.metrics.listen_addr() {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let store = Store::open(&cfg.node.data_dir.join("db"))?;
        // The allocator's cache (only where the binary installed apiary-alloc). In a process with
        // several nodes (devnet, tests) the last one's setting holds; they share one default.
        let cache =
            usize::try_from(cfg.node.alloc_cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        apiary_alloc::set_cache_limit(cache);
        let use_subtensor = matches!(chain, ChainSource::FromConfig)
            && cfg.chain.backend == ChainBackend::Subtensor;
        let hotkey = if use_subtensor {
            crate::chain_cmd::wallet_of(&cfg)?.hotkey()?
        } else {
            crate::keys::load_hotkey(cfg.node.hotkey_seed.as_deref(), &cfg.node.data_dir)?
        };
        cfg.train.data =
            crate::corpus::resolve(&cfg.train.data, &cfg.node.data_dir).with_context(|| {
                format!(
                    "cannot write the built-in corpus into {}; set node.data_dir to a writable \
                     path or train.data to your data",
                    cfg.node.data_dir.display()
                )
            })?;
        let p2p = crate::keys::load_p2p_key(cfg.net.p2p_key_seed.as_deref(), &cfg.node.data_dir)?;
        let dataset = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || open_dataset(&cfg)).await??
        };
        tracing::info!(
            pages = dataset.train_pages(),
            held_out = dataset.held_out_pages(),
            tokenizer = %dataset.tokenizer().name(),
            manifest = %hex::encode(dataset.hash()),
            reused_cache = dataset.reused_cache(),
            "dataset ready"
        );

        let mut producer = None;
        let chain: Arc<dyn ChainClient> = match chain {
            ChainSource::Shared(c) => c,
            ChainSource::FromConfig if use_subtensor => crate::chain_cmd::connect(&cfg).await?,
            ChainSource::FromConfig => {
                let path = cfg.local_chain_path();
                let local = LocalChain::open(&path).with_context(|| {
                    format!("cannot open the embedded chain at {}", path.display())
                })?;
                local.create_subnet(cfg.chain.netuid, SubnetParams::default())?;
                producer =
                    Some(local.spawn_producer(Duration::from_millis(cfg.chain.block_time_ms)));
                local
            }
        };

        if use_subtensor {
            let netuid = cfg.chain.netuid;
            // Registration on a real network burns TAO: never implicitly. The operator runs
            // `apiary chain register` (with its confirmation) first.
            let mg = chain.metagraph(netuid).await?;
            match mg.by_hotkey(&hotkey.id()) {
                Some(n) => tracing::info!(uid = n.uid, hotkey = %hotkey.id(), "registered"),
                None => {
                    return Err(anyhow::anyhow!(
                        "hotkey {} is not registered on subnet {netuid}; {}",
                        hotkey.id(),
                        crate::hints::register_advice(&cfg.chain)
                    ))
                }
            }
        }

        let listen = cfg
            .net
            .listen
            .parse()
            .with_context(|| format!("net.listen `{}` is not a multiaddr", cfg.net.listen))?;
        let bootstrap = cfg
            .net
            .bootstrap
            .iter()
            .map(|b| {
                b.parse()
                    .with_context(|| format!("net.bootstrap `{b}` is not a multiaddr"))
            })
            .collect::<Result<Vec<_>>>()?;
        let relays = cfg
            .net
            .relays
            .iter()
            .map(|r| {
                r.parse()
                    .with_context(|| format!("net.relays `{r}` is not a multiaddr"))
            })
            .collect::<Result<Vec<_>>>()?;
        // Envelope signatures bind this chain (its genesis hash) and the subnet.
        let genesis = chain
            .block_hash(0)
            .await
            .context("cannot read the chain's genesis hash")?
            .context("the chain has no genesis block")?;
        let gate = apiary_actors::admission::Gate::new();
        let (net, net_events) = apiary_net::spawn_admitting(
            NetParams {
                listen,
                bootstrap,
                keypair: p2p,
                hotkey: hotkey.clone(),
                netuid: cfg.chain.netuid,
                max_message_bytes: cfg.net.max_message_bytes,
                max_blob_bytes: cfg.net.max_blob_bytes,
                heartbeat: Duration::from_millis(cfg.net.heartbeat_ms),
                request_timeout: Duration::from_millis(cfg.net.request_timeout_ms),
                event_buffer: 1024,
                subnet: apiary_net::SubnetTag::new(&genesis, cfg.chain.netuid),
                guard: apiary_net::GuardConfig {
                    scoring: cfg.net.peer_scoring,
                    ban_after: cfg.net.ban_after_strikes,
                    ban_duration: Duration::from_secs(cfg.net.ban_secs),
                    strike_half_life: Duration::from_secs(60),
                    serve_burst: cfg.net.serve_burst,
                    serve_per_sec: cfg.net.serve_requests_per_sec,
                    max_concurrent_serves: cfg.net.max_concurrent_serves,
                    unregistered_share: cfg.net.serve_unregistered_share,
                },
                relays,
                relay_server: cfg.net.relay_server,
                hole_punching: cfg.net.hole_punching,
                autonat: cfg.net.autonat,
                // Private and loopback addresses are what a LAN or a devnet has.
                nat_private_addrs: !cfg.net.listen.contains("/ip4/0.0.0.0")
                    && !cfg.net.listen.contains("/ip6/::"),
            },
            Arc::new(StoreBlobs(store.clone())),
            gate.clone(),
        )
        .await
        .context("cannot start libp2p; check net.listen")?;

        let netuid = cfg.chain.netuid;
        if !use_subtensor && cfg.chain.auto_register {
            let uid = chain.register(netuid, &hotkey).await?;
            tracing::info!(uid, hotkey = %hotkey.id(), "registered");
        }
        let mut record = apiary_actors::context::local_peer_record(&net).await;
        // Models this hotkey entered in competitions stay entered across restarts.
        let mut on_chain = None;
        if let Ok(mg) = chain.metagraph(netuid).await {
            if let Some(p) = mg.by_hotkey(&hotkey.id()).and_then(|n| n.peer.as_ref()) {
                record.models = p.models.clone();
                on_chain = Some(p.clone());
            }
        }
        // A restart with the same keys and addresses has nothing to publish (and the chain's
        // commitment rate limit would refuse it).
        if on_chain.as_ref() == Some(&record) {
            tracing::info!("peer record unchanged on chain");
        } else if let Err(e) = chain.set_commitment(netuid, &hotkey, record.encode()).await {
            tracing::warn!(error = %e, "could not publish the peer record on chain; peers must use bootstrap addresses");
        }

        let admin_path = cfg.admin_socket_path();
        let ctx = NodeContext::new(
            cfg,
            store,
            chain,
            net,
            net_events,
            hotkey,
            Arc::new(dataset),
        );
        gate.bind(&ctx);
        let supervisor = spawn_supervisor(Arc::clone(&ctx)).await?;
        let handles = supervisor.handles().clone();
        let listener = admin::bind(&admin_path)?;
        let admin = tokio::spawn(admin::serve(listener, Arc::clone(&ctx), handles.clone()));
        let metrics = match metrics_listener {
            Some(l) => {
                let addr = l
                    .local_addr()
                    .context("cannot read the metrics endpoint's bound address")?;
                let task =
                    tokio::spawn(crate::metrics::serve(l, Arc::clone(&ctx), handles.clone()));
                let _ = ctx.metrics_addr.set(addr);
                tracing::info!(%addr, "metrics endpoint listening: GET http://{addr}/metrics");
                Some((task, addr))
            }
            None => None,
        };
        tracing::info!(peer_id = %ctx.net.local_peer_id(), admin = %admin_path.display(), "node started");
        Ok(Node {
            ctx,
            handles,
            supervisor: Some(supervisor),
            admin,
            metrics,
            producer,
        })
    }

    /// The shared context (status, store, counters).
    pub fn ctx(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// The address the metrics endpoint is bound to (`metrics.listen`, with the port picked
    /// when it was 0); `None` when the endpoint is off.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    /// The node's actor handles (scores, model, metagraph refresh, fault injection).
    pub fn handles(&self) -> &Handles {
        &self.handles
    }

    /// Waits until the node stops on its own; `Err` if it stopped on a fatal error.
    pub async fn wait(&mut self) -> Result<()> {
        if let Some(s) = self.supervisor.as_mut() {
            s.wait().await.map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Stops actors, networking and the admin socket; flushes the store.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.supervisor.take() {
            s.shutdown().await;
        }
        self.ctx.net.shutdown().await;
        self.admin.abort();
        if let Some((m, _)) = self.metrics.take() {
            m.abort();
        }
        if let Some(p) = self.producer.take() {
            p.abort();
        }
        let _ = std::fs::remove_file(self.ctx.cfg.admin_socket_path());
        if let Err(e) = self.ctx.store.flush() {
            tracing::warn!(error = %e, "store flush failed");
        }
    }
}

/// Opens `train.data` with the configured tokenizer, building or reusing the page cache, and
/// checks that the model's vocabulary covers the tokenizer's.
pub fn open_dataset(cfg: &NodeConfig) -> Result<Dataset> {
    let tokenizer = match &cfg.train.tokenizer {
        None => Tokenizer::bytes(),
        Some(p) => Tokenizer::from_file(p).with_context(|| {
            format!(
                "cannot load train.tokenizer {}; point it at a Hugging Face tokenizer.json",
                p.display()
            )
        })?,
    };
    if tokenizer.vocab_size() > cfg.model.vocab_size {
        anyhow::bail!(
            "model.vocab_size {} is smaller than the tokenizer's vocabulary ({}); set \
             model.vocab_size = {}",
            cfg.model.vocab_size,
            tokenizer.vocab_size(),
            tokenizer.vocab_size()
        );
    }
    Dataset::open(
        &cfg.train.data,
        &tokenizer,
        cfg.model.seq_len,
        cfg.train.held_out_fraction,
        &cfg.data_cache_path(),
    )
    .with_context(|| {
        format!(
            "cannot load training data from {}; set train.data to a shard file or a directory \
             of .txt/.jsonl/.parquet shards",
            cfg.train.data.display()
        )
    })
}
