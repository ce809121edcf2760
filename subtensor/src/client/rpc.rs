//! JSON-RPC plumbing shared by the connection, the follower and the calls: the subxt client
//! types, request parameters, header fields, transport error mapping, and reading a block's
//! number and hash.

use apiary_chain::{BlockInfo, ChainError};
use subxt::client::OnlineClientAtBlock;
use subxt::rpcs::client::RpcParams;
use subxt::rpcs::RpcClient;
use subxt::{OnlineClient, PolkadotConfig};

/// The subxt client of one connection.
pub(crate) type Api = OnlineClient<PolkadotConfig>;
/// A subxt client pinned to one block.
pub(crate) type At = OnlineClientAtBlock<PolkadotConfig>;

/// The node at `url` cannot be reached (or stopped answering).
pub(crate) fn unavailable(url: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Unavailable(format!("{url}: {e}"))
}

/// Positional JSON-RPC parameters.
pub(crate) fn params(values: Vec<serde_json::Value>) -> RpcParams {
    let mut p = RpcParams::new();
    for v in values {
        // Pushing a serde_json::Value cannot fail to serialize.
        let _ = p.push(v);
    }
    p
}

/// The block number of a JSON header (hex string or number).
pub(crate) fn parse_number(header: &serde_json::Value) -> Option<u64> {
    match &header["number"] {
        serde_json::Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// A `0x`-hex block hash; all zeros if it is not 32 bytes of hex.
pub(crate) fn parse_hash(v: &serde_json::Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(s) = v.as_str() {
        if let Ok(b) = hex::decode(s.trim_start_matches("0x")) {
            if b.len() == 32 {
                out.copy_from_slice(&b);
            }
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The best head.
pub(crate) async fn head(rpc: &RpcClient) -> std::result::Result<BlockInfo, String> {
    let h: serde_json::Value = rpc
        .request("chain_getHeader", params(vec![]))
        .await
        .map_err(|e| e.to_string())?;
    let number = parse_number(&h).ok_or("header without a number")?;
    block_info(rpc, number).await
}

/// Block `number` with its hash, stamped with the time it was read.
pub(crate) async fn block_info(
    rpc: &RpcClient,
    number: u64,
) -> std::result::Result<BlockInfo, String> {
    let hash: serde_json::Value = rpc
        .request("chain_getBlockHash", params(vec![number.into()]))
        .await
        .map_err(|e| e.to_string())?;
    Ok(BlockInfo {
        number,
        hash: parse_hash(&hash),
        timestamp_ms: now_ms(),
    })
}

/// Transport failures become [`ChainError::Unavailable`] (the connection is dropped); anything
/// else is the node's answer, a [`ChainError::Runtime`].
pub(crate) fn from_rpc(url: &str, e: subxt::rpcs::Error) -> ChainError {
    match e {
        subxt::rpcs::Error::Client(_) | subxt::rpcs::Error::DisconnectedWillReconnect(_) => {
            unavailable(url, e)
        }
        other => ChainError::Runtime(other.to_string()),
    }
}
