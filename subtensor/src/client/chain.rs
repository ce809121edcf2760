//! The client type, [`SubtensorChain`]: construction (first connection, follower start) and the
//! calls everything else builds on — connection health, raw JSON-RPC requests and a client at
//! the latest block.

use super::connection::{ChainHealth, Connection};
use super::follower::Follower;
use super::ledger::Ledger;
use super::options::SubtensorOptions;
use super::rpc::{from_rpc, params, parse_number, unavailable, At};
use apiary_chain::{ChainError, Result};
use std::sync::Arc;

/// The subtensor chain client. Cheap to share behind an `Arc`; dropping it stops the follower.
pub struct SubtensorChain {
    /// The connection the follower and every call share.
    pub(crate) connection: Arc<Connection>,
    /// What this client remembers about its own submissions.
    pub(crate) ledger: Ledger,
    _follower: Follower,
}

impl std::fmt::Debug for SubtensorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubtensorChain({})", self.connection.opts.url)
    }
}

impl SubtensorChain {
    /// Connects to `opts.url` and starts following blocks. Fails if the first connection fails
    /// (later drops are survived).
    pub async fn connect(opts: SubtensorOptions) -> Result<Arc<Self>> {
        let connection = Arc::new(Connection::new(opts));
        connection.live().await?;
        let follower = Follower::spawn(Arc::clone(&connection));
        Ok(Arc::new(SubtensorChain {
            connection,
            ledger: Ledger::default(),
            _follower: follower,
        }))
    }

    /// The weight calls the connected runtime's metadata offers.
    pub async fn weight_calls(&self) -> Result<super::calls::WeightCalls> {
        let at = self.at_latest().await?;
        Ok(super::calls::WeightCalls::from_metadata(at.metadata_ref()))
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.connection.opts.url
    }

    /// Connection health: connected, reconnects, latest head and how long ago it came.
    pub fn health(&self) -> ChainHealth {
        self.connection.health()
    }

    /// A raw JSON-RPC request (e.g. chopsticks' `dev_newBlock`).
    pub async fn rpc_request(
        &self,
        method: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = self.connection.opts.url.clone();
        self.connection
            .with_conn(method, |c| async move {
                c.rpc
                    .request::<serde_json::Value>(method, params(args))
                    .await
                    .map_err(|e| from_rpc(&url, e))
            })
            .await
    }

    /// A client at the latest block.
    pub(crate) async fn at_latest(&self) -> Result<At> {
        let url = self.connection.opts.url.clone();
        self.connection
            .with_conn("reading the latest block", |c| async move {
                // The best (not finalized) head: reads and rate limits follow what blocks show.
                let h: serde_json::Value = c
                    .rpc
                    .request("chain_getHeader", params(vec![]))
                    .await
                    .map_err(|e| from_rpc(&url, e))?;
                let n =
                    parse_number(&h).ok_or_else(|| unavailable(&url, "header without a number"))?;
                c.api
                    .at_block(n)
                    .await
                    .map_err(|e| ChainError::Unavailable(format!("{url}: {e}")))
            })
            .await
    }
}
