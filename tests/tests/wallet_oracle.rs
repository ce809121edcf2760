//! btcli wallets checked against the Bittensor SDK itself, both ways: the `bittensor` package
//! from PyPI (11.3.0, pinned) writes a wallet — coldkey encrypted in its `$NACL` format with a
//! known password, hotkey and `hotkeys/<name>pub.txt` — that apiary reads, decrypts and lists;
//! and apiary writes one that the SDK decrypts. Signatures cross over too, so the secret keys
//! (not only the addresses) are the same on both sides.
//!
//! The SDK runs from `<repo>/target/bittensor-venv` (install it with `.ci/setup.sh`), or from
//! the Python named in `APIARY_BITTENSOR_PYTHON`. Without it the tests fail and say how to get
//! it. Each password derivation (argon2i, 512 MiB, 8 passes, as btcli) takes a few seconds.

use apiary_chain::keys::HotkeyId;
use apiary_daemon::wallet_cmd::render_list;
use apiary_subtensor::wallet::keyfile::Encryption;
use apiary_subtensor::wallet::{list_wallets, ColdkeyStorage, Wallet, WalletError, PASSWORD_ENV};
use apiary_tests::pyoracle::{field, run_json};

/// The SDK version `.ci/setup.sh` installs.
const BITTENSOR_VERSION: &str = "11.3.0";
const PASSWORD: &str = "oracle-Pa55word!";
const MESSAGE: &[u8] = b"apiary wallet oracle";

/// Runs `script` in the SDK's Python (the password in the environment) and parses the JSON it
/// prints last.
fn sdk(script: &str, args: &[&str]) -> serde_json::Value {
    run_json(script, args, &[("ORACLE_PASSWORD", PASSWORD)])
}

const SDK_VERSION: &str = r#"
import json, importlib.metadata as m
import bittensor.wallet
print(json.dumps({"version": m.version("bittensor")}))
"#;

/// Creates, with the SDK's own wallet code, `pyw` (coldkey encrypted with the password) and
/// `pyplain` (coldkey unencrypted, btcli's --no-password), each with hotkey `miner`.
const SDK_CREATE: &str = r#"
import json, os, sys
from bittensor.wallet import Wallet
path, pw = sys.argv[1], os.environ["ORACLE_PASSWORD"]
w = Wallet("pyw", "miner", path=path)
w.create_new_coldkey(coldkey_password=pw, suppress=True)
w.create_new_hotkey(suppress=True)
p = Wallet("pyplain", "miner", path=path)
p.create_new_coldkey(use_password=False, suppress=True)
p.create_new_hotkey(suppress=True)
print(json.dumps({
    "coldkey": w.coldkey.ss58_address,
    "coldkey_public": bytes(w.coldkey.public_key).hex(),
    "hotkey": w.hotkey.ss58_address,
    "plain_coldkey": p.coldkey.ss58_address,
    "plain_hotkey": p.hotkey.ss58_address,
}))
"#;

/// Verifies a signature by the coldkey of wallet `argv[2]` (hex in argv[3]) with the SDK.
const SDK_VERIFY: &str = r#"
import json, sys
from bittensor.wallet import Wallet
path, name, sig = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
w = Wallet(name, "miner", path=path)
print(json.dumps({"valid": bool(w.coldkeypub.verify(b"apiary wallet oracle", sig))}))
"#;

/// Reads, with the SDK, the wallets apiary wrote: `apw` (encrypted coldkey) and `applain`.
const SDK_READ: &str = r#"
import json, os, sys
from bittensor.wallet import Wallet
from bittensor.sp_core import WrongPasswordError, keyfile_data_encryption_method
path, pw = sys.argv[1], os.environ["ORACLE_PASSWORD"]
w = Wallet("apw", "hk", path=path)
with open(w.coldkey_file.path, "rb") as f:
    method = keyfile_data_encryption_method(f.read())
ck = w.get_coldkey(password=pw)
try:
    Wallet("apw", "hk", path=path).get_coldkey(password=pw + "x")
    wrong = "accepted"
except WrongPasswordError:
    wrong = "refused"
p = Wallet("applain", "hk", path=path)
print(json.dumps({
    "method": method,
    "encrypted": w.coldkey_file.is_encrypted(),
    "coldkey": ck.ss58_address,
    "coldkey_public": bytes(ck.public_key).hex(),
    "coldkeypub": w.coldkeypub.ss58_address,
    "hotkey": w.hotkey.ss58_address,
    "hotkeypub": w.hotkeypub.ss58_address,
    "wrong_password": wrong,
    "signature": bytes(ck.sign(b"apiary wallet oracle")).hex(),
    "plain_encrypted": p.coldkey_file.is_encrypted(),
    "plain_coldkey": p.coldkey.ss58_address,
    "plain_hotkey": p.hotkey.ss58_address,
    "plain_hotkeypub": p.hotkeypub.ss58_address,
}))
"#;

#[test]
fn the_sdk_is_the_pinned_version() {
    let v = sdk(SDK_VERSION, &[]);
    if std::env::var_os("APIARY_BITTENSOR_PYTHON").is_none() {
        assert_eq!(
            field(&v, "version"),
            BITTENSOR_VERSION,
            "target/bittensor-venv holds another bittensor; rerun `bash .ci/setup.sh`"
        );
    }
}

#[test]
fn apiary_reads_a_wallet_the_sdk_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let py = sdk(SDK_CREATE, &[&base.display().to_string()]);
    let w = Wallet::new(Some(base), "pyw", "miner").expect("names");

    // Every file, public parts first: no password needed.
    assert!(
        w.hotkeypub_path().exists(),
        "the SDK writes hotkeys/<name>pub.txt"
    );
    assert_eq!(w.coldkey_encryption().expect("coldkey"), Encryption::Nacl);
    assert_eq!(
        w.coldkey_pub().expect("coldkeypub").ss58(),
        field(&py, "coldkey")
    );
    assert_eq!(
        w.hotkey().expect("hotkey").id().ss58(),
        field(&py, "hotkey")
    );
    assert_eq!(
        w.hotkey_pub().expect("hotkeypub").ss58(),
        field(&py, "hotkey")
    );

    // The coldkey decrypts with the password, and only with it.
    let ck = w.coldkey_with_password(PASSWORD).expect("coldkey decrypts");
    assert_eq!(ck.id().ss58(), field(&py, "coldkey"));
    assert_eq!(hex(&ck.id().0), field(&py, "coldkey_public"));
    let err = w
        .coldkey_with_password("not the password")
        .expect_err("wrong password");
    assert!(matches!(err, WalletError::WrongPassword(_)), "{err}");

    // The secret is the same key: the SDK verifies apiary's signature with its coldkeypub.
    let sig = hex(&ck.sign(MESSAGE));
    let v = sdk(SDK_VERIFY, &[&base.display().to_string(), "pyw", &sig]);
    assert_eq!(v["valid"], serde_json::Value::Bool(true), "{v}");

    // The unlock commands use: the password from APIARY_WALLET_PASSWORD (the only test here
    // that sets it).
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    let unlocked = w.coldkey();
    std::env::remove_var(PASSWORD_ENV);
    assert_eq!(unlocked.expect("unlock via env").id(), ck.id());

    // An unencrypted (--no-password) coldkey reads without one.
    let p = Wallet::new(Some(base), "pyplain", "miner").expect("names");
    assert_eq!(p.coldkey_encryption().expect("coldkey"), Encryption::None);
    assert_eq!(
        p.coldkey_with_password("")
            .expect("plain coldkey")
            .id()
            .ss58(),
        field(&py, "plain_coldkey")
    );

    // `apiary wallet list`: each hotkey once, with its address; pub.txt is its public half,
    // not an unreadable hotkey.
    let list = list_wallets(Some(base)).expect("list");
    let text = render_list(&list);
    assert_eq!(list.len(), 2, "{text}");
    for l in &list {
        assert_eq!(l.hotkeys.len(), 1, "{text}");
        assert_eq!(l.hotkeys[0].name, "miner", "{text}");
        assert!(l.hotkeys[0].usable && l.hotkeys[0].note.is_none(), "{text}");
    }
    assert!(
        !text.contains("unreadable") && !text.contains("pub.txt"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pyw  coldkey {} (encrypted)",
            field(&py, "coldkey")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pyplain  coldkey {} (unencrypted)",
            field(&py, "plain_coldkey")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  miner  {}\n", field(&py, "hotkey"))),
        "{text}"
    );
    assert!(
        text.contains(&format!("  miner  {}\n", field(&py, "plain_hotkey"))),
        "{text}"
    );
}

#[test]
fn the_sdk_reads_a_wallet_apiary_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path();
    let w = Wallet::new(Some(base), "apw", "hk").expect("names");
    let created = w
        .create_with(|| Ok(ColdkeyStorage::encrypted(PASSWORD)))
        .expect("create encrypted");
    assert_eq!(created.coldkey_storage, Some(Encryption::Nacl));
    let plain = Wallet::new(Some(base), "applain", "hk")
        .expect("names")
        .create_with(|| Ok(ColdkeyStorage::Unencrypted))
        .expect("create unencrypted");

    let py = sdk(SDK_READ, &[&base.display().to_string()]);
    assert_eq!(field(&py, "method"), "NaCl");
    assert_eq!(py["encrypted"], serde_json::Value::Bool(true), "{py}");
    assert_eq!(field(&py, "coldkey"), created.coldkey.ss58());
    assert_eq!(field(&py, "coldkey_public"), hex(&created.coldkey.0));
    assert_eq!(field(&py, "coldkeypub"), created.coldkey.ss58());
    assert_eq!(field(&py, "hotkey"), created.hotkey.ss58());
    assert_eq!(field(&py, "hotkeypub"), created.hotkey.ss58());
    assert_eq!(field(&py, "wrong_password"), "refused");
    // The SDK's decrypted coldkey signs as apiary's coldkey.
    let sig = <[u8; 64]>::try_from(
        ::hex::decode(field(&py, "signature"))
            .expect("hex")
            .as_slice(),
    )
    .expect("64-byte signature");
    HotkeyId(created.coldkey.0)
        .verify(MESSAGE, &sig)
        .expect("the SDK signs with the same coldkey");

    assert_eq!(
        py["plain_encrypted"],
        serde_json::Value::Bool(false),
        "{py}"
    );
    assert_eq!(field(&py, "plain_coldkey"), plain.coldkey.ss58());
    assert_eq!(field(&py, "plain_hotkey"), plain.hotkey.ss58());
    assert_eq!(field(&py, "plain_hotkeypub"), plain.hotkey.ss58());
}

fn hex(b: &[u8]) -> String {
    ::hex::encode(b)
}
