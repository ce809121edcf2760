//! Commit-reveal v4 commits checked against Bittensor's own `bittensor-drand` package (2.0.0,
//! pinned, from PyPI; installed by `.ci/setup.sh`), both ways:
//!
//! - **its commits open in apiary**: the package builds a real weights commit
//!   (`get_encrypted_commit_v2`, the call the Bittensor SDK makes) encrypted to drand quicknet's
//!   round 1000, whose signature drand published long ago (so no network is needed); apiary
//!   opens it with that signature and reads back the hotkey, uids, weights and version key, and
//!   its plaintext is byte for byte apiary's encoding of the same payload;
//! - **apiary's commits open in the package**: apiary seals the payload to quicknet round 1000
//!   and to a beacon of its own (whose rounds it signs as drand does); the package's
//!   `decrypt_with_signature` opens both to the same plaintext, and refuses another round's
//!   signature;
//! - **the same reveal round**: for several epoch schedules (mid-epoch, at an epoch's edge, an
//!   owner-triggered epoch pending, a reveal period of 3), the round the package picks at
//!   12 s blocks is the round apiary picks for that schedule at the same time.
//!
//! The package computes the round from its own clock and the block time it is given; a block
//! time that makes "now plus the blocks until the reveal" land in round 1000 makes it encrypt
//! to that round, with everything else as in a real commit.

use apiary_subtensor::timelock::{
    decrypt, reveal_round, round_at, BeaconKey, DevBeacon, EpochSchedule, TimelockedWeights,
    QUICKNET_GENESIS, QUICKNET_PERIOD, SECURITY_BLOCK_OFFSET,
};
use apiary_tests::pyoracle::{field, run_json};
use serde_json::json;

/// The `bittensor-drand` version `.ci/setup.sh` installs.
const DRAND_VERSION: &str = "2.0.0";
/// drand quicknet's round 1000 and its published signature.
const ROUND: u64 = 1000;
const ROUND_SIG: &str = "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39";

/// Builds commits with the package. argv[1]: JSON with the payload, the schedules and, per
/// schedule, the blocks until the reveal is ingested (to aim at round 1000).
const PY_COMMIT: &str = r#"
import json, sys, time, importlib.metadata as m
import bittensor_drand as bd
a = json.loads(sys.argv[1])
G, P, SIG = a["genesis"], a["period_secs"], a["sig"]
def user_data(ct, rnd):
    # bittensor-drand's decrypt functions take (ciphertext, round) SCALE-encoded (its UserData).
    n = len(ct)
    pre = bytes([n << 2]) if n < 64 else ((n << 2) | 1).to_bytes(2, "little") if n < 2**14 else ((n << 2) | 2).to_bytes(4, "little")
    return pre + ct + rnd.to_bytes(8, "little")
out = {"version": m.version("bittensor-drand"), "schedules": []}
for s in a["schedules"]:
    args = (a["uids"], a["weights"], a["version_key"], s["last_epoch_block"], s["pending_epoch_at"],
            s["epoch_index"], s["tempo"], s["blocks_since_last_step"], s["current_block"], s["reveal_period"])
    hotkey = bytes.fromhex(a["hotkey"])
    before = time.time()
    _, r12 = bd.get_encrypted_commit_v2(*args, 12.0, hotkey)
    after = time.time()
    # The block time that puts now + blocks * block_time in the middle of round 1000
    # (the package's round for a time t is floor((t - genesis) / period)).
    bt = (G + a["round"] * P + P / 2 - time.time()) / s["blocks_to_ingest"]
    ct, r = bd.get_encrypted_commit_v2(*args, bt, hotkey)
    try:
        plain = bd.decrypt_with_signature(user_data(ct, r), SIG).hex()
    except Exception as e:
        plain = "refused: " + str(e)
    out["schedules"].append({"round_12s": r12, "before": before, "after": after,
                             "round": r, "commit": ct.hex(), "plain": plain})
print(json.dumps(out))
"#;

/// Opens apiary's commits with the package. argv[1]: JSON list of {commit, round, sig}.
const PY_OPEN: &str = r#"
import json, sys
import bittensor_drand as bd
def user_data(ct, rnd):
    n = len(ct)
    pre = bytes([n << 2]) if n < 64 else ((n << 2) | 1).to_bytes(2, "little") if n < 2**14 else ((n << 2) | 2).to_bytes(4, "little")
    return pre + ct + rnd.to_bytes(8, "little")
out = []
for c in json.loads(sys.argv[1]):
    try:
        out.append(bd.decrypt_with_signature(user_data(bytes.fromhex(c["commit"]), c["round"]), c["sig"]).hex())
    except Exception as e:
        out.append("refused: " + str(e))
print(json.dumps({"plain": out}))
"#;

fn payload() -> TimelockedWeights {
    TimelockedWeights {
        hotkey: (0u8..32)
            .map(|i| i.wrapping_mul(7).wrapping_add(3))
            .collect(),
        uids: vec![0, 3, 9, 250],
        values: vec![65535, 100, 7, 1],
        version_key: 1_004_002,
    }
}

fn sched(last: u64, pending: u64, tempo: u16, current: u64) -> EpochSchedule {
    EpochSchedule {
        last_epoch_block: last,
        pending_epoch_at: pending,
        epoch_index: 41,
        tempo,
        blocks_since_last_step: current - last,
        current_block: current,
    }
}

#[test]
fn timelocked_commits_match_bittensor_drand_both_ways() {
    let w = payload();
    let sig = hex::decode(ROUND_SIG).expect("hex");
    BeaconKey::quicknet()
        .verify(ROUND, &sig)
        .expect("the published signature of round 1000 verifies against quicknet's key");

    // (schedule, reveal period epochs)
    let cases = [
        (sched(100, 0, 50, 120), 1),
        (sched(100, 0, 50, 149), 1),
        (sched(100, 130, 50, 120), 1),
        (sched(7_200, 0, 360, 7_300), 3),
    ];
    let schedules: Vec<_> = cases
        .iter()
        .map(|(s, period)| {
            let reveal = s.first_reveal_block(*period).expect("schedulable");
            json!({
                "last_epoch_block": s.last_epoch_block,
                "pending_epoch_at": s.pending_epoch_at,
                "epoch_index": s.epoch_index,
                "tempo": s.tempo,
                "blocks_since_last_step": s.blocks_since_last_step,
                "current_block": s.current_block,
                "reveal_period": period,
                "blocks_to_ingest": reveal + SECURITY_BLOCK_OFFSET - s.current_block,
            })
        })
        .collect();
    let args = json!({
        "uids": w.uids, "weights": w.values, "version_key": w.version_key,
        "hotkey": hex::encode(&w.hotkey), "schedules": schedules,
        "genesis": QUICKNET_GENESIS, "period_secs": QUICKNET_PERIOD, "round": ROUND, "sig": ROUND_SIG,
    })
    .to_string();
    let py = run_json(PY_COMMIT, &[&args], &[]);
    assert_eq!(
        field(&py, "version"),
        DRAND_VERSION,
        "run `bash .ci/setup.sh` to install the pinned bittensor-drand"
    );
    let out = py["schedules"].as_array().expect("schedules");
    assert_eq!(out.len(), cases.len());
    for ((s, period), o) in cases.iter().zip(out) {
        // The same reveal round at 12 s blocks, for the time the package computed it at.
        let theirs = o["round_12s"].as_u64().expect("round");
        let at = |k: &str| o[k].as_f64().expect("time");
        let (lo, _) = reveal_round(s, *period, 12.0, at("before")).expect("round");
        let (hi, _) = reveal_round(s, *period, 12.0, at("after")).expect("round");
        assert!(
            (lo..=hi).contains(&theirs),
            "schedule {s:?}, period {period}: bittensor-drand picked round {theirs}, apiary {lo}..={hi}"
        );
        assert!(
            theirs > round_at(at("after")),
            "the reveal round is in the future"
        );

        // Its commit, aimed at round 1000, opens in apiary to the payload it was given.
        assert_eq!(o["round"].as_u64(), Some(ROUND), "aimed at round 1000: {o}");
        let commit = hex::decode(field(o, "commit")).expect("hex");
        assert_eq!(TimelockedWeights::open(&commit, &sig), Ok(w.clone()));
        // Its plaintext is apiary's encoding of the same payload, byte for byte.
        assert_eq!(field(o, "plain"), hex::encode(w.encoded()));
    }

    // apiary's commits open in the package: to quicknet's round 1000, and to a beacon of
    // apiary's own, whose signature of another round does not open it.
    let dev = DevBeacon::random();
    let to_quicknet = w.seal(&BeaconKey::quicknet(), ROUND).expect("seal");
    let to_dev = w.seal(&dev.public_key(), 4242).expect("seal");
    assert_eq!(
        decrypt(&to_dev, &dev.sign(4242)).expect("opens"),
        w.encoded()
    );
    let asks = json!([
        {"commit": hex::encode(&to_quicknet), "round": ROUND, "sig": ROUND_SIG},
        {"commit": hex::encode(&to_dev), "round": 4242, "sig": hex::encode(dev.sign(4242))},
        {"commit": hex::encode(&to_dev), "round": 4243, "sig": hex::encode(dev.sign(4243))},
    ])
    .to_string();
    let opened = run_json(PY_OPEN, &[&asks], &[]);
    let plain = opened["plain"].as_array().expect("list");
    let ours = hex::encode(w.encoded());
    assert_eq!(plain[0].as_str(), Some(ours.as_str()), "quicknet commit");
    assert_eq!(plain[1].as_str(), Some(ours.as_str()), "own-beacon commit");
    assert!(
        plain[2].as_str().is_some_and(|p| p.starts_with("refused")),
        "another round's signature must not open it: {}",
        plain[2]
    );
}
