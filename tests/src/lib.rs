//! # apiary-tests: whole swarms in one process
//!
//! [`TestNet`] starts real nodes — each with its own data dir, RocksDB, keys, libp2p socket on
//! 127.0.0.1 port 0 and admin socket — on one shared embedded chain whose blocks the test
//! advances by hand, so every step is driven and awaited rather than slept through.
//! [`wait_until`] polls a condition with a deadline; it is the only way tests wait.

pub mod chopsticks;
pub mod pyoracle;

use apiary_chain::local::{LocalChain, SubnetParams};
use apiary_chain::ChainClient;
use apiary_config::{NodeConfig, Role};
use apiary_daemon::{ChainSource, Node};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The corpus shipped with the repository.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt")
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A tiny, fast node config for tests: data and sockets inside `dir`, key derived from `name`.
pub fn test_config(dir: &Path, name: &str, role: Role) -> NodeConfig {
    let mut c = NodeConfig::default();
    c.node.name = name.to_string();
    c.node.role = role;
    c.node.data_dir = dir.join(name);
    c.node.hotkey_seed = Some(hex::encode(blake3_seed(&format!("hotkey/{name}"))));
    c.net.p2p_key_seed = Some(hex::encode(blake3_seed(&format!("p2p/{name}"))));
    c.net.listen = "/ip4/127.0.0.1/tcp/0".into();
    c.net.heartbeat_ms = 100;
    c.net.request_timeout_ms = 10_000;
    c.chain.blocks_per_window = 2;
    c.chain.block_time_ms = 100;
    c.model.d_model = 32;
    c.model.n_layers = 2;
    c.model.n_heads = 2;
    c.model.d_ff = 64;
    c.model.seq_len = 32;
    c.train.data = corpus();
    c.train.pages_per_window = 4;
    c.train.batch_pages = 4;
    c.train.local_steps = 3;
    c.train.learning_rate = 5e-3;
    c.train.held_out_pages = 8;
    c
}

fn blake3_seed(label: &str) -> [u8; 32] {
    let mut h = [0u8; 32];
    let d = apiary_storage::ContentId::of(format!("apiary test seed {label}").as_bytes());
    h.copy_from_slice(&d.0);
    h
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives `events` until `pick` returns `Some` (skipping what it lags over), within
/// `timeout`; panics naming `what` otherwise.
pub async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<apiary_actors::NodeEvent>,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(apiary_actors::NodeEvent) -> Option<T>,
) -> T {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out after {timeout:?} waiting for: {what}"),
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("event bus closed while waiting for {what}: {e}"),
            Ok(Ok(ev)) => {
                if let Some(t) = pick(ev) {
                    return t;
                }
            }
        }
    }
}

/// A swarm on one shared embedded chain.
pub struct TestNet {
    /// Temp dir holding every node's data.
    pub dir: tempfile::TempDir,
    /// The shared chain.
    pub chain: Arc<LocalChain>,
    /// Running nodes, in start order.
    pub nodes: Vec<Node>,
}

impl TestNet {
    /// A chain with subnet 1 and no nodes.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = LocalChain::open(&dir.path().join("chain")).expect("chain");
        chain
            .create_subnet(1, SubnetParams::default())
            .expect("subnet");
        TestNet {
            dir,
            chain,
            nodes: Vec::new(),
        }
    }

    /// Starts a node with `cfg` on the shared chain; validators get stake (and a permit).
    pub async fn spawn(&mut self, cfg: NodeConfig) -> usize {
        let chain: Arc<dyn ChainClient> = self.chain.clone();
        self.spawn_on(cfg, chain).await
    }

    /// Starts a node whose chain client is `chain` (the shared chain seen through a wrapper
    /// that injects faults); validators get stake on the shared chain.
    pub async fn spawn_on(&mut self, cfg: NodeConfig, chain: Arc<dyn ChainClient>) -> usize {
        let role = cfg.node.role;
        let node = Node::spawn(cfg, ChainSource::Shared(chain))
            .await
            .expect("node starts");
        if role == Role::Validator {
            self.chain
                .add_stake(1, &node.ctx().hotkey.id(), 1_000_000)
                .expect("stake");
        }
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Produces one block.
    pub fn block(&self) -> u64 {
        self.chain.produce_block().expect("block").number
    }

    /// Produces blocks until the head is `n`.
    pub fn advance_to(&self, n: u64) {
        while self.chain.head().number < n {
            self.block();
        }
    }

    /// Waits until every node is connected to every other node.
    pub async fn wait_connected(&self, timeout: Duration) {
        let n = self.nodes.len();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for node in &self.nodes {
                let _ = node.handles().chain_watcher.refresh();
            }
            let mut ok = true;
            for node in &self.nodes {
                if node.ctx().net.connected_peers().await.len() + 1 < n {
                    ok = false;
                }
                if node.ctx().net.gossip_peers().await + 1 < n {
                    ok = false;
                }
            }
            if ok {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "swarm did not connect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

/// One HTTP/1.1 GET to `addr` (`Connection: close`, answered within a minute); returns the
/// status line, the header block and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read the answer");
    let raw = String::from_utf8(raw).expect("the answer is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}
