//! Device choice: `auto`, `cpu` or `cuda:N`, resolved to a Candle [`Device`].

use candle_core::Device;

/// A device string that cannot be used on this build or machine.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The string is not `auto`, `cpu` or `cuda:N`.
    #[error("unknown device `{0}`: expected `auto`, `cpu` or `cuda:N`")]
    Unknown(String),
    /// CUDA was asked for, but this binary was built without the `cuda` feature.
    #[error(
        "device `{0}` needs CUDA, but this build has no CUDA support (build with --features cuda)"
    )]
    NotCompiled(String),
    /// CUDA was asked for and the device could not be opened.
    #[error("cannot open CUDA device {ordinal}")]
    Unavailable {
        /// The CUDA ordinal asked for.
        ordinal: usize,
        /// Candle's error.
        #[source]
        source: candle_core::Error,
    },
}

/// A parsed device string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build and machine have one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

/// Parses `auto`, `cpu` or `cuda:N` (`cuda` alone means `cuda:0`).
///
/// # Errors
/// [`DeviceError::Unknown`] for anything else.
pub fn parse_device(text: &str) -> Result<DeviceChoice, DeviceError> {
    match text {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| DeviceError::Unknown(text.to_string())),
    }
}

/// Opens the device named by `text`.
///
/// # Errors
/// A [`DeviceError`] when the string is unknown or CUDA is asked for and absent.
pub fn open_device(text: &str) -> Result<Device, DeviceError> {
    match parse_device(text)? {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Cuda(ordinal) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(DeviceError::NotCompiled(text.to_string()));
            }
            Device::new_cuda(ordinal).map_err(|source| DeviceError::Unavailable { ordinal, source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_devices_and_rejects_others() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceChoice::Cuda(1));
        assert_eq!(parse_device("cpu").unwrap(), DeviceChoice::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_fails_clearly() {
        let err = open_device("cuda:0").unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
        assert!(matches!(open_device("auto").unwrap(), Device::Cpu));
    }
}
