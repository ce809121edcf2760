//! Operator and dev-chain helpers: transfers, subnets, sudo, stake, axons, hyperparameters.
//!
//! The dev helpers (`*_from_alice`, [`SubtensorChain::sudo`], [`SubtensorChain::dev_new_blocks`])
//! only work on a dev chain whose sudo key is //Alice and whose //Alice is funded (chopsticks with
//! `dev-storage.json`, a `--dev` node); on a real network they fail with the runtime's error.

use crate::client::{account, signer, SubtensorChain};
use crate::errors::Ctx;
use crate::values;
use apiary_chain::keys::{Hotkey, HotkeyId};
use apiary_chain::{ChainError, Result, TxReceipt};
use std::collections::BTreeMap;
use std::net::IpAddr;
use subxt::ext::scale_value::{Composite, Value};
use subxt_signer::sr25519::{dev, Keypair};

/// One TAO in rao.
pub const TAO: u128 = 1_000_000_000;

/// Subnet parameters worth showing to an operator (`apiary chain info`).
pub const HYPERPARAMETERS: &[&str] = &[
    "Tempo",
    "SubnetworkN",
    "MaxAllowedUids",
    "MaxAllowedValidators",
    "Burn",
    "MinBurn",
    "MaxBurn",
    "ImmunityPeriod",
    "WeightsSetRateLimit",
    "WeightsVersionKey",
    "MinAllowedWeights",
    "CommitRevealWeightsEnabled",
    "RevealPeriodEpochs",
    "NetworkRegistrationAllowed",
    "SubnetOwner",
];

impl SubtensorChain {
    async fn submit_kp(
        &self,
        kp: &Keypair,
        netuid: u16,
        pallet: &str,
        call: &str,
        args: &[(&str, Value)],
    ) -> Result<TxReceipt> {
        let ctx = Ctx {
            who: HotkeyId(kp.public_key().0),
            netuid,
        };
        let _guard = self.signer_lock(ctx.who).await;
        let at = self.at_latest().await?;
        let fields = values::call_args(at.metadata_ref(), pallet, call, args)?;
        self.submit_payload(at, kp, ctx, subxt::dynamic::tx(pallet, call, fields))
            .await
    }

    /// Free balance of an account, in rao.
    pub async fn balance(&self, who: &HotkeyId) -> Result<u128> {
        let at = self.at_latest().await?;
        let v: Option<Value> = self
            .fetch(&at, "System", "Account", (account(who),))
            .await?;
        Ok(v.as_ref()
            .and_then(|v| values::field(v, "data"))
            .and_then(|d| values::field(d, "free"))
            .and_then(values::uint)
            .unwrap_or(0))
    }

    /// Transfers `amount` rao from `from` to `to` (keep-alive).
    pub async fn transfer(&self, from: &Keypair, to: &HotkeyId, amount: u128) -> Result<TxReceipt> {
        let at = self.at_latest().await?;
        let call = if values::has_call(at.metadata_ref(), "Balances", "transfer_keep_alive") {
            "transfer_keep_alive"
        } else {
            "transfer_allow_death"
        };
        drop(at);
        self.submit_kp(
            from,
            0,
            "Balances",
            call,
            &[
                (
                    "dest",
                    Value::unnamed_variant("Id", [Value::from_bytes(to.0)]),
                ),
                ("value", Value::u128(amount)),
            ],
        )
        .await
    }

    /// Dev chains: transfers `amount` rao from //Alice.
    pub async fn fund_from_alice(&self, to: &HotkeyId, amount: u128) -> Result<TxReceipt> {
        self.transfer(&dev::alice(), to, amount).await
    }

    /// Dev chains: runs `pallet.call(args)` as root through `Sudo.sudo`, signed by //Alice.
    pub async fn sudo(
        &self,
        pallet: &str,
        call: &str,
        args: &[(&str, Value)],
    ) -> Result<TxReceipt> {
        let guard = self
            .signer_lock(HotkeyId(dev::alice().public_key().0))
            .await;
        let at = self.at_latest().await?;
        let fields = values::call_args(at.metadata_ref(), pallet, call, args)?;
        let inner = subxt::dynamic::tx(pallet, call, fields).into_value();
        let outer = values::call_args(at.metadata_ref(), "Sudo", "sudo", &[("call", inner)])?;
        let ctx = Ctx {
            who: HotkeyId(dev::alice().public_key().0),
            netuid: 0,
        };
        let receipt = self
            .submit_payload(
                at,
                &dev::alice(),
                ctx,
                subxt::dynamic::tx("Sudo", "sudo", outer),
            )
            .await?;
        drop(guard);
        // Sudo reports the inner call's failure as an event, not as a failed extrinsic.
        self.check_sudid(&receipt).await?;
        Ok(receipt)
    }

    async fn check_sudid(&self, receipt: &TxReceipt) -> Result<()> {
        let at = self.at_latest().await?;
        let at = at
            .online_client()
            .at_block(receipt.block)
            .await
            .map_err(|e| ChainError::Unavailable(e.to_string()))?;
        let events = at
            .events()
            .fetch()
            .await
            .map_err(|e| ChainError::Unavailable(e.to_string()))?;
        for ev in events.iter() {
            let Ok(ev) = ev else { continue };
            if ev.pallet_name() == "Sudo" && ev.event_name() == "Sudid" {
                let v: Value = match ev.decode_fields_unchecked_as::<Value>() {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let s = format!("{v}");
                if s.contains("Err") {
                    return Err(ChainError::Runtime(format!("sudo call failed: {s}")));
                }
            }
        }
        Ok(())
    }

    /// Dev chains: `AdminUtils.sudo_set_weights_set_rate_limit(netuid, limit)`.
    pub async fn sudo_set_weights_rate_limit(&self, netuid: u16, limit: u64) -> Result<TxReceipt> {
        self.sudo(
            "AdminUtils",
            "sudo_set_weights_set_rate_limit",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("weights_set_rate_limit", Value::u128(limit.into())),
            ],
        )
        .await
    }

    /// Dev chains: `AdminUtils.sudo_set_tempo(netuid, tempo)` (epoch length in blocks).
    pub async fn sudo_set_tempo(&self, netuid: u16, tempo: u16) -> Result<TxReceipt> {
        self.sudo(
            "AdminUtils",
            "sudo_set_tempo",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("tempo", Value::u128(tempo.into())),
            ],
        )
        .await
    }

    /// Creates a subnet owned by `owner` (its own coldkey and hotkey); returns its netuid.
    /// Arguments follow the runtime (`register_network(hotkey[, mechid])`).
    pub async fn register_network(&self, owner: &Hotkey) -> Result<u16> {
        let before = self.netuids().await?;
        self.submit(
            owner,
            0,
            "SubtensorModule",
            "register_network",
            &[
                ("hotkey", Value::from_bytes(owner.id().0)),
                ("mechid", Value::u128(1)),
            ],
        )
        .await?;
        let after = self.netuids().await?;
        after
            .into_iter()
            .find(|n| !before.contains(n))
            .ok_or_else(|| ChainError::Runtime("register_network added no subnet".into()))
    }

    /// Starts emissions on a subnet where the runtime has `start_call` (dTAO); a no-op otherwise.
    pub async fn start_call(&self, owner: &Hotkey, netuid: u16) -> Result<()> {
        let at = self.at_latest().await?;
        if !values::has_call(at.metadata_ref(), "SubtensorModule", "start_call") {
            return Ok(());
        }
        drop(at);
        self.submit(
            owner,
            netuid,
            "SubtensorModule",
            "start_call",
            &[("netuid", Value::u128(netuid.into()))],
        )
        .await
        .map(|_| ())
    }

    /// The subnets that exist.
    pub async fn netuids(&self) -> Result<Vec<u16>> {
        let at = self.at_latest().await?;
        let addr = subxt::dynamic::storage::<(u16,), bool>("SubtensorModule", "NetworksAdded");
        let mut it = at
            .storage()
            .iter(addr, ())
            .await
            .map_err(|e| ChainError::Unavailable(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(kv) = it.next().await {
            let kv = kv.map_err(|e| ChainError::Unavailable(e.to_string()))?;
            let Ok(key) = kv.key() else { continue };
            let Some(part) = key.part(0) else { continue };
            if let (Ok(Some(n)), Ok(true)) = (part.decode_as::<u16>(), kv.value().decode()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Burned registration of `hotkey` paid by `coldkey`.
    pub async fn burned_register(
        &self,
        coldkey: &Hotkey,
        netuid: u16,
        hotkey: &HotkeyId,
    ) -> Result<TxReceipt> {
        self.submit(
            coldkey,
            netuid,
            "SubtensorModule",
            "burned_register",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("hotkey", Value::from_bytes(hotkey.0)),
            ],
        )
        .await
    }

    /// Stakes `amount` rao from `coldkey` onto `hotkey` on `netuid`.
    pub async fn add_stake(
        &self,
        coldkey: &Hotkey,
        hotkey: &HotkeyId,
        netuid: u16,
        amount: u128,
    ) -> Result<TxReceipt> {
        self.submit(
            coldkey,
            netuid,
            "SubtensorModule",
            "add_stake",
            &[
                ("hotkey", Value::from_bytes(hotkey.0)),
                ("netuid", Value::u128(netuid.into())),
                ("amount_staked", Value::u128(amount)),
            ],
        )
        .await
    }

    /// Announces `hotkey`'s axon (`ip:port`, protocol 4 = TCP) on `netuid`. The runtime refuses
    /// loopback and private addresses ([`ChainError::InvalidAxon`] says so).
    pub async fn serve_axon(
        &self,
        hotkey: &Hotkey,
        netuid: u16,
        ip: IpAddr,
        port: u16,
    ) -> Result<TxReceipt> {
        let (ip_num, ip_type) = match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 4u8),
            IpAddr::V6(v6) => (u128::from(v6), 6u8),
        };
        self.submit(
            hotkey,
            netuid,
            "SubtensorModule",
            "serve_axon",
            &[
                ("netuid", Value::u128(netuid.into())),
                ("version", Value::u128(1)),
                ("ip", Value::u128(ip_num)),
                ("port", Value::u128(port.into())),
                ("ip_type", Value::u128(ip_type.into())),
                ("protocol", Value::u128(4)),
                ("placeholder1", Value::u128(0)),
                ("placeholder2", Value::u128(0)),
            ],
        )
        .await
    }

    /// Chopsticks: builds `count` blocks now (`dev_newBlock`).
    pub async fn dev_new_blocks(&self, count: u32) -> Result<()> {
        self.rpc_request("dev_newBlock", vec![serde_json::json!({ "count": count })])
            .await
            .map(|_| ())
    }

    /// The subnet's hyperparameters (those of [`HYPERPARAMETERS`] this runtime has), rendered.
    pub async fn hyperparameters(&self, netuid: u16) -> Result<BTreeMap<String, String>> {
        let at = self.at_latest().await?;
        let mut out = BTreeMap::new();
        for name in HYPERPARAMETERS {
            if !values::has_storage(at.metadata_ref(), "SubtensorModule", name) {
                continue;
            }
            let v: Option<Value> = self
                .fetch(&at, "SubtensorModule", name, (netuid,))
                .await
                .unwrap_or(None);
            if let Some(v) = v {
                let s = match values::bytes_of(&v) {
                    Some(b) if b.len() == 32 => {
                        HotkeyId(<[u8; 32]>::try_from(b.as_slice()).unwrap_or([0; 32])).ss58()
                    }
                    _ => match values::uint(&v) {
                        Some(n) => n.to_string(),
                        None => format!("{v}"),
                    },
                };
                out.insert((*name).to_string(), s);
            }
        }
        out.insert("block".into(), at.block_number().to_string());
        out.insert("spec_version".into(), at.spec_version().to_string());
        Ok(out)
    }

    /// Signs with an arbitrary sr25519 key pair (e.g. a dev account) instead of a hotkey.
    pub async fn submit_as(
        &self,
        kp: &Keypair,
        pallet: &str,
        call: &str,
        args: &[(&str, Value)],
    ) -> Result<TxReceipt> {
        self.submit_kp(kp, 0, pallet, call, args).await
    }

    /// Whether the runtime has `pallet.call`.
    pub async fn has_call(&self, pallet: &str, call: &str) -> Result<bool> {
        let at = self.at_latest().await?;
        Ok(values::has_call(at.metadata_ref(), pallet, call))
    }
}

/// A hotkey's signer (re-exported for callers that hold a [`Hotkey`]).
pub fn keypair(hotkey: &Hotkey) -> Result<Keypair> {
    signer(hotkey)
}

/// An empty composite (for calls without arguments).
pub fn no_args() -> Composite<()> {
    Composite::named(Vec::<(String, Value)>::new())
}

impl SubtensorChain {
    /// Dev chains: funds `owner` from //Alice, creates a subnet it owns, sets the weights rate
    /// limit to 0 and the tempo to `tempo` blocks (through sudo), and starts its emissions where
    /// the runtime needs that. Returns the netuid.
    pub async fn dev_subnet(&self, owner: &Hotkey, tempo: u16) -> Result<u16> {
        self.fund_from_alice(&owner.id(), 10_000 * TAO).await?;
        let netuid = match self.register_network(owner).await {
            Err(ChainError::Runtime(m)) if m.contains("NetworkTxRateLimitExceeded") => {
                // Lift the subnet-creation rate limit through sudo and try again.
                if let Err(e) = self
                    .sudo(
                        "AdminUtils",
                        "sudo_set_network_rate_limit",
                        &[("rate_limit", Value::u128(0))],
                    )
                    .await
                {
                    tracing::debug!(error = %e, "cannot lift the network rate limit; building blocks instead");
                    self.dev_new_blocks(10).await?;
                }
                self.register_network(owner).await?
            }
            r => r?,
        };
        self.sudo_set_weights_rate_limit(netuid, 0).await?;
        self.sudo_set_tempo(netuid, tempo).await?;
        // A devnet registers all its nodes at once: lift the per-interval and per-block caps.
        for (call, arg) in [
            (
                "sudo_set_target_registrations_per_interval",
                "target_registrations_per_interval",
            ),
            (
                "sudo_set_max_registrations_per_block",
                "max_registrations_per_block",
            ),
        ] {
            if let Err(e) = self
                .sudo(
                    "AdminUtils",
                    call,
                    &[
                        ("netuid", Value::u128(netuid.into())),
                        (arg, Value::u128(256)),
                    ],
                )
                .await
            {
                tracing::debug!(error = %e, call, "could not lift a registration limit");
            }
        }
        if let Err(e) = self.start_call(owner, netuid).await {
            tracing::debug!(error = %e, netuid, "start_call refused (emissions may already run)");
        }
        Ok(netuid)
    }

    /// Dev chains: funds `hotkey` with `tao` TAO from //Alice and registers it on `netuid`
    /// (burned registration paid by the hotkey itself); returns its uid.
    pub async fn dev_register(&self, netuid: u16, hotkey: &Hotkey, tao: u128) -> Result<u16> {
        use apiary_chain::ChainClient;
        self.fund_from_alice(&hotkey.id(), tao * TAO).await?;
        self.register(netuid, hotkey).await
    }
}
