//! Turning subxt and runtime errors into [`ChainError`]s that say what to do.
//!
//! Two kinds of refusal come back from subtensor: **dispatch errors** (the extrinsic was
//! included but failed; `SubtensorModule::NotRegistered`, `Balances::InsufficientBalance`, …,
//! matched here by pallet error name) and **validity errors** (the transaction pool refused it
//! before inclusion: "Inability to pay some fees", or subtensor's
//! `InvalidTransaction::Custom(code)`, matched here by message and code).

use apiary_chain::keys::HotkeyId;
use apiary_chain::ChainError;

/// Who and where a failing call was about, to fill in error messages.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The signing (hot)key.
    pub who: HotkeyId,
    /// The subnet, if the call names one.
    pub netuid: u16,
}

/// Maps a runtime error name (`Pallet::Variant` or just the variant) to a [`ChainError`].
pub fn from_runtime_name(name: &str, ctx: Ctx) -> ChainError {
    let variant = name.rsplit("::").next().unwrap_or(name);
    match variant {
        "HotKeyNotRegisteredInSubNet"
        | "HotKeyNotRegisteredInNetwork"
        | "NotRegistered"
        | "HotKeyAccountNotExists"
        | "UidNotFound" => ChainError::NotRegistered(ctx.who, ctx.netuid),
        "NeuronNoValidatorPermit" | "NoValidatorPermit" | "ValidatorWithoutPermission" => {
            ChainError::NoValidatorPermit(ctx.who, ctx.netuid)
        }
        "SettingWeightsTooFast" | "CommittingWeightsTooFast" => ChainError::Runtime(format!(
            "{name}: weights were set too recently for subnet {}; wait for its WeightsSetRateLimit (see `apiary chain info`)",
            ctx.netuid
        )),
        "InvalidIpAddress" => ChainError::InvalidAxon(format!(
            "{name}: the runtime refuses loopback, private and unspecified addresses (e.g. 127.0.0.1, 0.0.0.0); serve a public IP address"
        )),
        "InvalidIpType" | "InvalidPort" => ChainError::InvalidAxon(format!(
            "{name}: use an IPv4/IPv6 address and a non-zero port"
        )),
        "SubNetworkDoesNotExist" | "SubnetNotExists" | "SubnetDoesntExist" | "NetworkDoesNotExist" => {
            ChainError::UnknownSubnet(ctx.netuid)
        }
        "NotEnoughBalanceToStake"
        | "NotEnoughBalance"
        | "BalanceTooLow"
        | "InsufficientBalance"
        | "NotEnoughBalanceToPaySwapHotKey"
        | "BalanceWithdrawalError"
        | "CannotAffordLockCost"
        | "NotEnoughBalanceToPayRegistrationFee"
        | "FundsUnavailable"
        | "BelowMinimum" => ChainError::InsufficientBalance(format!(
            "account {} cannot pay ({name})",
            ctx.who
        )),
        "TooManyUids" | "MaxAllowedUIdsReached" | "SubnetFull" => {
            ChainError::SubnetFull(ctx.netuid, 0)
        }
        _ => ChainError::Runtime(name.to_string()),
    }
}

/// Subtensor's `InvalidTransaction::Custom(code)` values (stable prefix of the enum).
fn custom_code(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "StakeAmountTooLow",
        2 => "BalanceTooLow",
        3 => "SubnetNotExists",
        4 => "HotkeyAccountDoesntExist",
        6 => "RateLimitExceeded",
        10 => "HotKeyNotRegisteredInNetwork",
        11 => "InvalidIpAddress",
        12 => "ServingRateLimitExceeded",
        13 => "InvalidPort",
        _ => return None,
    })
}

/// Maps the text of a subxt error (submission, validity, dispatch) to a [`ChainError`].
pub fn from_message(msg: &str, ctx: Ctx) -> ChainError {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("inability to pay")
        || lower.contains("balance too low")
        || lower.contains("payment")
        || lower.contains("funds unavailable")
    {
        return ChainError::InsufficientBalance(format!(
            "account {} cannot pay the transaction fee or deposit ({msg}); a new hotkey must be funded before it can transact",
            ctx.who
        ));
    }
    let custom = lower
        .find("custom error: ")
        .map(|i| i + 14)
        .or_else(|| lower.find("\"custom\":").map(|i| i + 9));
    if let Some(i) = custom {
        let code: String = lower[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Some(name) = code.parse::<u8>().ok().and_then(custom_code) {
            return from_runtime_name(name, ctx);
        }
        return ChainError::Runtime(format!(
            "the transaction pool refused it with subtensor's custom code {code} (a runtime rule such as a registration or rate limit): {msg}"
        ));
    }
    // "Pallet error: SubtensorModule::NotRegistered" and friends.
    if let Some(i) = msg.find("::") {
        let start = msg[..i]
            .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map(|s| s + 1)
            .unwrap_or(0);
        let end = msg[i + 2..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map(|e| i + 2 + e)
            .unwrap_or(msg.len());
        let name = &msg[start..end];
        let mapped = from_runtime_name(name, ctx);
        if !matches!(mapped, ChainError::Runtime(_)) {
            return mapped;
        }
        return ChainError::Runtime(msg.to_string());
    }
    if lower.contains("stale") || lower.contains("outdated") || lower.contains("bad signature") {
        return ChainError::BadTransaction(msg.to_string());
    }
    if lower.contains("connection")
        || lower.contains("restart")
        || lower.contains("closed")
        || lower.contains("transport")
        || lower.contains("networking")
    {
        return ChainError::Unavailable(msg.to_string());
    }
    ChainError::Runtime(msg.to_string())
}

/// Maps a subxt dispatch error.
pub fn from_dispatch(e: &subxt::error::DispatchError, ctx: Ctx) -> ChainError {
    use subxt::error::DispatchError as D;
    match e {
        D::Module(m) => match m.details() {
            Ok(d) => from_runtime_name(&format!("{}::{}", d.pallet.name(), d.variant.name), ctx),
            Err(_) => ChainError::Runtime(m.to_string()),
        },
        D::Token(t) => {
            let s = format!("{t:?}");
            if s.contains("FundsUnavailable") || s.contains("BelowMinimum") {
                from_runtime_name(&s, ctx)
            } else {
                ChainError::Runtime(format!("token error: {t}"))
            }
        }
        other => ChainError::Runtime(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_messages_map() {
        let ctx = Ctx {
            who: HotkeyId([1; 32]),
            netuid: 3,
        };
        assert!(matches!(
            from_runtime_name("SubtensorModule::HotKeyNotRegisteredInSubNet", ctx),
            ChainError::NotRegistered(_, 3)
        ));
        assert!(matches!(
            from_message("Pallet error: SubtensorModule::InvalidIpAddress", ctx),
            ChainError::InvalidAxon(_)
        ));
        assert!(matches!(
            from_message(
                "Cannot submit extrinsic: RPC error: 1010: Invalid Transaction: Inability to pay some fees (e.g. account balance too low)",
                ctx
            ),
            ChainError::InsufficientBalance(_)
        ));
        assert!(matches!(
            from_message("Invalid Transaction: Custom error: 10", ctx),
            ChainError::NotRegistered(_, 3)
        ));
        let msg = from_runtime_name("SubtensorModule::InvalidIpAddress", ctx).to_string();
        assert!(msg.contains("127.0.0.1"), "{msg}");
    }
}
