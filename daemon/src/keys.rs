//! Key files in the data dir: the sr25519 hotkey and the libp2p ed25519 key.
//!
//! Each is a 32-byte seed in hex, created on first start with mode 0600. A seed given in the
//! config wins over the file. Secrets are never logged.

use anyhow::{bail, Context, Result};
use apiary_chain::keys::Hotkey;
use std::path::Path;

fn read_or_create_seed(path: &Path) -> Result<[u8; 32]> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        let bytes = hex::decode(text.trim()).with_context(|| {
            format!(
                "key file {} is not hex; delete it to create a new key",
                path.display()
            )
        })?;
        let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("key file {} must hold 32 bytes of hex", path.display());
        };
        return Ok(seed);
    }
    let mut seed = [0u8; 32];
    rand_fill(&mut seed);
    write_secret(path, hex::encode(seed).as_bytes())?;
    Ok(seed)
}

fn rand_fill(buf: &mut [u8]) {
    // The hotkey generator draws from the OS RNG; reuse it for seeds.
    let k = Hotkey::generate();
    buf.copy_from_slice(&k.seed()[..buf.len()]);
}

/// Writes a file readable only by its owner.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn seed_from_hex(s: &str) -> Result<[u8; 32]> {
    let b = hex::decode(s).context("seed is not hex")?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| anyhow::anyhow!("seed must be 32 bytes"))
}

/// The node's hotkey: config seed, else `<data_dir>/hotkey`, else a new one saved there.
pub fn load_hotkey(cfg_seed: Option<&str>, data_dir: &Path) -> Result<Hotkey> {
    let seed = match cfg_seed {
        Some(s) => seed_from_hex(s)?,
        None => read_or_create_seed(&data_dir.join("hotkey"))?,
    };
    Ok(Hotkey::from_seed(&seed)?)
}

/// The node's libp2p key: config seed, else `<data_dir>/p2p_key`, else a new one saved there.
pub fn load_p2p_key(cfg_seed: Option<&str>, data_dir: &Path) -> Result<apiary_net::Keypair> {
    let mut seed = match cfg_seed {
        Some(s) => seed_from_hex(s)?,
        None => read_or_create_seed(&data_dir.join("p2p_key"))?,
    };
    apiary_net::Keypair::ed25519_from_bytes(&mut seed).context("invalid libp2p key seed")
}
