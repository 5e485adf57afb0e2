//! Is CUDA usable here? Asked before any other cudarc call.
//!
//! cudarc loads the driver library on first use and panics if it cannot; a worker on a machine
//! without a GPU must instead fall back (for `Config::auto()`) or fail with a clear error (for
//! `Config::cuda()`). So the probe first asks the loader whether the library can be opened at
//! all, and only then initialises the driver and counts devices.

use cudarc::driver::{result, sys};

/// What the probe found: how many devices, and their names (for the start-up log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaProbe {
    /// CUDA devices visible to this process.
    pub device_count: u32,
    /// Their names, in index order.
    pub names: Vec<String>,
}

/// Whether the CUDA driver library (`libcuda`) can be loaded. Never panics.
pub fn driver_library_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the driver library's usual names and
    // closes what it opened; loading the system's driver library runs its initialisers, which is
    // what any CUDA program does. It touches no other state of ours.
    unsafe { sys::is_culib_present() }
}

/// Probes for a usable CUDA driver and at least one device. `Err` says, in words, why CUDA
/// cannot be used (no library, the driver failed to initialise, no device).
pub fn probe() -> Result<CudaProbe, String> {
    if !driver_library_present() {
        return Err("no CUDA driver library (libcuda) could be loaded".into());
    }
    // From here on the library is loadable, so cudarc's lazy loader will not panic.
    result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e:?}"))?;
    let count = result::device::get_count()
        .map_err(|e| format!("the CUDA driver could not count devices: {e:?}"))?;
    let device_count = u32::try_from(count).unwrap_or(0);
    if device_count == 0 {
        return Err("the CUDA driver reports no device".into());
    }
    let names = (0..count)
        .map(|i| {
            result::device::get(i)
                .and_then(result::device::get_name)
                .unwrap_or_else(|_| format!("CUDA device {i}"))
        })
        .collect();
    Ok(CudaProbe {
        device_count,
        names,
    })
}

/// The CUDA version the driver supports, as `cuDriverGetVersion` reports it (`13.0` for a
/// driver of the 580 series), or `None` if it cannot say. Call after a successful [`probe`].
pub fn driver_version() -> Option<String> {
    let mut version: std::ffi::c_int = 0;
    // SAFETY: `version` is a valid destination for the one integer the call writes; the driver
    // library is loadable (the probe succeeded), so cudarc's loader does not panic.
    let rc = unsafe { sys::cuDriverGetVersion(&mut version) };
    rc.result().ok()?;
    Some(format!("{}.{}", version / 1000, (version % 1000) / 10))
}

/// Whether device `index` is an integrated GPU (VP-001). Call after a successful [`probe`].
pub fn is_integrated(index: u32) -> Result<bool, crate::error::VramError> {
    let ordinal = i32::try_from(index)
        .map_err(|_| crate::error::VramError::invalid(format!("no CUDA device {index}")))?;
    let device = result::device::get(ordinal)
        .map_err(|e| crate::error::VramError::Cuda(format!("device {index}: {e:?}")))?;
    // SAFETY: `device` is a valid handle from `cuDeviceGet` (the driver is initialised: `probe`
    // succeeded); the attribute is a plain integer query.
    let value = unsafe {
        result::device::get_attribute(
            device,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED,
        )
    }
    .map_err(|e| crate::error::VramError::Cuda(format!("device {index} attributes: {e:?}")))?;
    Ok(value != 0)
}
