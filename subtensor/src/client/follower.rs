//! The block follower: a background task that subscribes to new heads, forwards each as a
//! [`BlockInfo`] on the connection's broadcast channel, pings the node, reconnects with backoff
//! when the socket dies, and replays the blocks it missed (up to [`MAX_REPLAY`]).

use super::connection::Connection;
use super::rpc::{block_info, head, params, parse_number};
use apiary_chain::BlockInfo;
use std::sync::Arc;
use std::time::Duration;
use subxt::rpcs::RpcClient;

/// The most missed blocks the follower replays after a gap (about 2 hours of 12 s blocks).
pub const MAX_REPLAY: u64 = 600;

/// The running follower task; dropping it stops the task.
pub(crate) struct Follower(tokio::task::JoinHandle<()>);

impl Follower {
    /// Starts following blocks on `connection`.
    pub(crate) fn spawn(connection: Arc<Connection>) -> Self {
        Follower(tokio::spawn(follow(connection)))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards head `b`, first replaying the blocks between the last forwarded one and `b` (at
/// most [`MAX_REPLAY`]). A repeat of the last head is dropped; a lower number is forwarded.
async fn forward(
    connection: &Connection,
    rpc: &RpcClient,
    last: &mut Option<u64>,
    b: BlockInfo,
) -> std::result::Result<(), String> {
    if let Some(l) = *last {
        if b.number == l {
            return Ok(());
        }
        if b.number > l + 1 {
            let missed = b.number - l - 1;
            let from = b.number - missed.min(MAX_REPLAY);
            if from > l + 1 {
                let skipped = from - l - 1;
                tracing::warn!(
                    last = l,
                    head = b.number,
                    skipped,
                    "too many blocks missed to replay them all; windows in the gap are lost"
                );
                connection.note_skipped(skipped);
            }
            for n in from..b.number {
                let missed = block_info(rpc, n)
                    .await
                    .map_err(|e| format!("replaying block {n}: {e}"))?;
                connection.note_replayed();
                connection.emit(missed);
                *last = Some(n);
            }
            tracing::info!(from, to = b.number - 1, "replayed missed blocks");
        }
    }
    *last = Some(b.number);
    connection.emit(b);
    Ok(())
}

/// The follower: subscribe, forward heads, ping, reconnect with backoff. Never returns.
async fn follow(connection: Arc<Connection>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let conn = match connection.live().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "chain reconnect failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        let sub = conn
            .rpc
            .subscribe::<serde_json::Value>(
                "chain_subscribeNewHeads",
                params(vec![]),
                "chain_unsubscribeNewHeads",
            )
            .await;
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                connection.invalidate(conn.generation, &format!("subscribe failed: {e}"));
                continue;
            }
        };
        // The head now, so a reconnect resumes at once (after replaying what it missed).
        let mut last = connection.last_block();
        if let Ok(b) = head(&conn.rpc).await {
            if let Err(e) = forward(&connection, &conn.rpc, &mut last, b).await {
                connection.invalidate(conn.generation, &e);
                continue;
            }
        }
        let ping_every = connection.opts.ping_every;
        let why = loop {
            tokio::select! {
                item = sub.next() => match item {
                    Some(Ok(h)) => {
                        let Some(n) = parse_number(&h) else { continue };
                        let b = match block_info(&conn.rpc, n).await {
                            Ok(b) => b,
                            Err(e) => break format!("reading block {n}: {e}"),
                        };
                        if let Err(e) = forward(&connection, &conn.rpc, &mut last, b).await {
                            break e;
                        }
                    }
                    Some(Err(e)) => break format!("head subscription failed: {e}"),
                    None => break "head subscription ended".to_string(),
                },
                _ = tokio::time::sleep(ping_every) => {
                    match tokio::time::timeout(ping_every * 3, head(&conn.rpc)).await {
                        // A head the subscription did not deliver (or a restarted chain).
                        Ok(Ok(b)) => if let Err(e) = forward(&connection, &conn.rpc, &mut last, b).await {
                            break e;
                        },
                        Ok(Err(e)) => break format!("ping failed: {e}"),
                        Err(_) => break "ping timed out".to_string(),
                    }
                }
            }
        };
        connection.invalidate(conn.generation, &why);
    }
}
