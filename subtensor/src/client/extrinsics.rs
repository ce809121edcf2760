//! Signing and submitting extrinsics: the sr25519 [`signer`] of a hotkey, one submission at a
//! time per signer (nonces), waiting until the transaction is in a block and mapping failures
//! to [`ChainError`]s via [`crate::errors`]; and fitting a peer record into the largest
//! commitment apiary writes ([`fit_commitment`]).

use super::chain::SubtensorChain;
use super::rpc::At;
use crate::errors::{self, Ctx};
use crate::values;
use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_chain::{ChainError, PeerRecord, Result, TxReceipt};
use subxt::ext::scale_value::{Composite, Value};
use subxt_signer::sr25519::Keypair;

/// The sr25519 signer of a hotkey (same key: the seed is the mini secret).
pub fn signer(hotkey: &Hotkey) -> Result<Keypair> {
    Keypair::from_secret_key(*hotkey.seed()).map_err(|e| {
        ChainError::BadTransaction(format!("hotkey seed is not a valid sr25519 secret: {e}"))
    })
}

/// Largest commitment apiary writes: three `Raw128` fields.
pub const MAX_COMMITMENT_BYTES: usize = 3 * 128;

/// Fits a peer record into [`MAX_COMMITMENT_BYTES`], dropping addresses from the end if needed.
pub fn fit_commitment(data: Vec<u8>) -> Result<Vec<u8>> {
    if data.len() <= MAX_COMMITMENT_BYTES {
        return Ok(data);
    }
    if let Some(mut rec) = PeerRecord::decode(&data) {
        while rec.addrs.len() > 1 {
            rec.addrs.pop();
            let enc = rec.encode();
            if enc.len() <= MAX_COMMITMENT_BYTES {
                return Ok(enc);
            }
        }
    }
    Err(ChainError::CommitmentTooLarge(
        data.len(),
        MAX_COMMITMENT_BYTES,
    ))
}

impl SubtensorChain {
    /// Waits for `who`'s turn to submit (one submission at a time per signer, for its nonces).
    pub(crate) async fn signer_lock(&self, who: HotkeyId) -> tokio::sync::OwnedMutexGuard<()> {
        self.ledger.signer_lock(who).await
    }

    /// Signs `pallet.call(args)` with `key` and waits until it is in a block; maps failures.
    pub async fn submit(
        &self,
        key: &Hotkey,
        netuid: u16,
        pallet: &str,
        call: &str,
        args: &[(&str, Value)],
    ) -> Result<TxReceipt> {
        let ctx = Ctx {
            who: key.id(),
            netuid,
        };
        let kp = signer(key)?;
        let _guard = self.signer_lock(key.id()).await;
        let at = self.at_latest().await?;
        let fields = values::call_args(at.metadata_ref(), pallet, call, args)?;
        self.submit_payload(at, &kp, ctx, subxt::dynamic::tx(pallet, call, fields))
            .await
    }

    /// Submits a ready payload signed by `kp`.
    pub(crate) async fn submit_payload(
        &self,
        at: At,
        kp: &Keypair,
        ctx: Ctx,
        payload: subxt::tx::DynamicPayload<Composite<()>>,
    ) -> Result<TxReceipt> {
        let opts = &self.connection.opts;
        let url = opts.url.clone();
        let what = format!("{}.{}", payload.pallet_name(), payload.call_name());
        let run = async move {
            let mut txs = at.transactions();
            let mut progress = txs
                .sign_and_submit_then_watch_default(&payload, kp)
                .await
                .map_err(|e| errors::from_message(&e.to_string(), ctx))?;
            let tx_hash = format!("0x{}", hex::encode(progress.extrinsic_hash().0));
            while let Some(st) = progress.next().await {
                use subxt::tx::TransactionStatus as S;
                let st = st.map_err(|e| errors::from_message(&e.to_string(), ctx))?;
                let inb = match st {
                    S::InBestBlock(b) | S::InFinalizedBlock(b) => b,
                    S::Invalid { message } | S::Error { message } | S::Dropped { message } => {
                        return Err(errors::from_message(&message, ctx))
                    }
                    _ => continue,
                };
                if let Err(e) = inb.wait_for_success().await {
                    return Err(match e {
                        subxt::error::TransactionEventsError::ExtrinsicFailed(d) => {
                            errors::from_dispatch(&d, ctx)
                        }
                        other => errors::from_message(&other.to_string(), ctx),
                    });
                }
                let block = match inb.at().await {
                    Ok(a) => a.block_number(),
                    Err(_) => 0,
                };
                return Ok(TxReceipt { block, tx_hash });
            }
            Err(ChainError::Unavailable(format!(
                "{url}: the transaction status stream ended before inclusion"
            )))
        };
        match tokio::time::timeout(opts.call_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(ChainError::Unavailable(format!(
                "{}: {what} was not included within {:?}",
                opts.url, opts.call_timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signer_matches_hotkey_address() {
        for label in ["a", "b", "validator-0"] {
            let hk = Hotkey::from_dev_label(label);
            let kp = signer(&hk).expect("signer");
            assert_eq!(kp.public_key().0, hk.id().0);
            // A signature by one verifies under the other.
            let sig = kp.sign(b"apiary");
            hk.id().verify(b"apiary", &sig.0).expect("verifies");
        }
    }

    #[test]
    fn commitments_fit() {
        let rec = PeerRecord {
            peer_id: "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo".into(),
            addrs: (0..10)
                .map(|i| format!("/ip4/10.0.0.{i}/tcp/40000"))
                .collect(),
            models: Vec::new(),
        };
        let fitted = fit_commitment(rec.encode()).expect("fits");
        assert!(fitted.len() <= MAX_COMMITMENT_BYTES);
        let back = PeerRecord::decode(&fitted).expect("decodes");
        assert!(!back.addrs.is_empty());
        assert!(fit_commitment(vec![b'x'; 1000]).is_err());
    }
}
