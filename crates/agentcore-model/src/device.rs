//! Where the model runs: `cpu` (every build) or `cuda[:N]` (builds with `--features cuda`,
//! candle's CUDA backend). The fused kernels are CPU code; on a GPU every op falls back to
//! candle's composed, device-generic ops, and decoding uses the dense weights.

use candle_core::Device;

use crate::error::{ModelError, Result};

/// The device the benchmarks run on unless told otherwise.
pub const DEFAULT_DEVICE: &str = "cpu";

/// [`DEFAULT_DEVICE`] as an owned name (a serde default).
pub fn default_device() -> String {
    DEFAULT_DEVICE.into()
}

/// The device named by `spec`: `cpu`, `cuda` (GPU 0) or `cuda:N`.
///
/// # Errors
/// Another name, a bad ordinal, a build without CUDA, or a GPU that does not open.
pub fn parse_device(spec: &str) -> Result<Device> {
    let rule = "must be cpu, cuda or cuda:N";
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, spec),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal, spec),
            _ => Err(ModelError::invalid("device", rule, spec)),
        },
    }
}

/// Whether this build has candle's CUDA backend.
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

fn cuda(ordinal: usize, spec: &str) -> Result<Device> {
    if !cuda_built() {
        return Err(ModelError::invalid(
            "device",
            "needs a build with CUDA (cargo build --release -p agentcore-cli --features cuda)",
            spec,
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| ModelError::invalid("device", e.to_string(), spec))
}

/// Waits for the device's queued work (GPU kernels run asynchronously), so that a timer read
/// after it covers the work.
///
/// # Errors
/// The device's error.
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert!(parse_device("cpu").is_ok_and(|d| d.is_cpu()));
        for bad in ["gpu", "cuda:x", "cuda:", "CPU", ""] {
            let err = parse_device(bad).expect_err(bad).to_string();
            assert!(err.contains("must be cpu, cuda or cuda:N"), "{bad}: {err}");
        }
        if !cuda_built() {
            let err = parse_device("cuda:1").expect_err("no cuda").to_string();
            assert!(err.contains("--features cuda") && err.contains("cuda:1"), "{err}");
        }
    }
}
