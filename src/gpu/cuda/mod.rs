//! The CUDA backend: device memory on a real GPU through the CUDA driver API (cudarc, loaded at
//! run time, so the crate builds and runs on machines without CUDA).
//!
//! One [`CudaDevice`] per GPU, created by (and owned by) that device's `GpuActor`: it holds the
//! device's context, its upload stream, the pinned staging ring and every allocation. Nothing
//! else allocates, writes or frees device memory.
//!
//! * [`probe`](mod@probe) — is there a driver library and a device? Asked before any other cudarc call,
//!   because cudarc panics when it cannot load the library.
//! * `buffer` — one `cuMemAlloc` allocation. It is freed when the last holder lets go (the
//!   backend's table, a reader hashing it, an `execute` view), after the context has finished
//!   every kernel and copy queued on it — so a release, a shutdown or a crashed actor never frees
//!   memory that a verification is still reading.
//! * `staging` — uploads through a small ring of pinned host buffers: while the DMA engine
//!   copies one piece, the host fills the next (and the seal's SHA-256 runs beside both).
//! * `kernels` — the SHA-256 leaf kernel (`sha256_leaf.cu`, embedded as PTX generated once by
//!   `scripts/gen-ptx.sh`), checked against the host when the device opens, and the device-side
//!   XOR used for fault injection. A kernel that fails its check or a launch is switched off and
//!   leaves are hashed on the host.
//! * `device` — the [`DeviceBackend`](super::DeviceBackend) implementation, with the
//!   VRAM-only policy checks (VP-001..006): dedicated (not integrated) GPUs only unless allowed,
//!   and every allocation's pointer attributes checked (device memory, not managed).
//!
//! This is the only module where `unsafe` is allowed (FFI); every block says why it is sound.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod buffer;
mod device;
mod kernels;
pub mod probe;
mod staging;

pub use device::{CudaDevice, CudaOptions};
pub use probe::{CudaProbe, driver_library_present, probe};

use cudarc::driver::DriverError;

use super::BackendError;

/// A driver error as a backend error: the driver's own name for it, never an address. The
/// errors after which the context is unusable (an uncorrectable ECC error, a faulting kernel,
/// a device that fell off the bus) are `DeviceLost`: every later call on the device fails too,
/// so the device must stop rather than be retried.
pub(crate) fn driver(what: &str, e: DriverError) -> BackendError {
    use cudarc::driver::sys::CUresult as R;
    match e.0 {
        R::CUDA_ERROR_ECC_UNCORRECTABLE
        | R::CUDA_ERROR_ILLEGAL_ADDRESS
        | R::CUDA_ERROR_LAUNCH_FAILED
        | R::CUDA_ERROR_HARDWARE_STACK_ERROR
        | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | R::CUDA_ERROR_MISALIGNED_ADDRESS
        | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
        | R::CUDA_ERROR_INVALID_PC
        | R::CUDA_ERROR_DEVICE_UNAVAILABLE
        | R::CUDA_ERROR_CONTEXT_IS_DESTROYED => {
            tracing::error!("{what}: {e:?}; the device is lost");
            BackendError::DeviceLost
        }
        _ => BackendError::Driver(format!("{what}: {e:?}")),
    }
}
