//! Choosing the compute device: `cpu` (default), `cuda` / `cuda:N` (needs the crate's `cuda`
//! feature and a GPU) or `auto` (the first GPU when there is one, else the CPU).
//!
//! [`Params`](crate::Params) and [`Update`](crate::Update) always live on the CPU (hashing and
//! serialization need host memory); training and evaluation copy them to the chosen device.

use crate::error::{ModelError, Result};
use candle_core::Device;

/// A parsed device choice (the `train.device` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU (the default, and what CI uses).
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` means `cuda:0`).
    Cuda(usize),
    /// The first CUDA GPU when this build supports CUDA and one is present, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<DeviceChoice> {
        match s.trim() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "auto" => Ok(DeviceChoice::Auto),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    ModelError::Device(format!(
                        "unknown device `{other}`; use \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""
                    ))
                }),
        }
    }
}

/// Whether this build was compiled with CUDA support (the `cuda` cargo feature).
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Resolves a device setting (`"cpu"`, `"cuda"`, `"cuda:N"`, `"auto"`) to a candle device.
///
/// Errors clearly when CUDA is asked for in a build without the `cuda` feature, or when the
/// GPU cannot be opened. CUDA devices are opened once per ordinal and reused.
pub fn select_device(choice: &str) -> Result<Device> {
    match choice.parse::<DeviceChoice>()? {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => cuda_device(ordinal),
        DeviceChoice::Auto => {
            if cuda_compiled() {
                match cuda_device(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => {
                        tracing::info!("device = \"auto\": no usable GPU ({e}); using the CPU")
                    }
                }
            }
            Ok(Device::Cpu)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    Err(ModelError::Device(
        "this binary was built without CUDA support; rebuild with `--features cuda` \
         (e.g. `cargo build --release -p apiary-model --features cuda`, which needs the CUDA \
         toolkit and nvcc), or set train.device = \"cpu\""
            .into(),
    ))
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let open = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
    let mut open = open
        .lock()
        .map_err(|_| ModelError::Device("CUDA device cache poisoned".into()))?;
    if let Some(d) = open.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ordinal).map_err(|e| {
        ModelError::Device(format!(
            "cannot open CUDA device {ordinal} ({e}); check that a GPU and its driver are \
             present (nvidia-smi), or set train.device = \"cpu\" or \"auto\""
        ))
    })?;
    open.insert(ordinal, d.clone());
    Ok(d)
}
