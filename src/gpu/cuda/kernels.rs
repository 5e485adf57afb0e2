//! The device kernels: the SHA-256 leaf kernel and the fault-injection XOR, compiled at run time
//! with NVRTC from `sha256_leaf.cu` (the same source the host test builds with the system C
//! compiler; see `tests/it/leaf_kernel_host.rs`).
//!
//! Leaves are independent (RFC 6962: leaf = SHA-256(0x00 ‖ chunk)), so the kernel runs one thread
//! per leaf over the shard where it already is, and only 32 bytes per leaf cross the bus. Without
//! NVRTC the device still works: verification copies chunks back and hashes them on the host.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use super::buffer::DeviceBuffer;
use super::driver;
use crate::gpu::BackendError;
use crate::seal::merkle::{Hash, leaf_count};

/// The kernel source (CUDA C, no includes; see its header for the launch contract).
pub(crate) const LEAF_KERNEL_SOURCE: &str = include_str!("sha256_leaf.cu");

/// Threads per block for the leaf kernel: one thread per leaf, and few leaves per shard (a 16 GiB
/// shard of 1 MiB chunks has 16 384), so small blocks spread them over every SM.
const LEAF_BLOCK: u32 = 64;

/// The compiled kernels of one context.
pub(crate) struct Kernels {
    leaves: CudaFunction,
    xor_byte: CudaFunction,
}

impl Kernels {
    /// Compiles the kernel source for this device with NVRTC and loads it. `Err` says why (no
    /// NVRTC library, a compile error, a load error); the caller falls back to host hashing.
    pub(crate) fn compile(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        if !nvrtc_present() {
            return Err("the NVRTC library could not be loaded".into());
        }
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("compute capability: {e:?}"))?;
        let ptx = compile_ptx(&format!("compute_{major}{minor}"))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| format!("loading the leaf kernel: {e:?}"))?;
        let leaves = module
            .load_function("vr_sha256_leaves")
            .map_err(|e| format!("vr_sha256_leaves: {e:?}"))?;
        let xor_byte = module
            .load_function("vr_xor_byte")
            .map_err(|e| format!("vr_xor_byte: {e:?}"))?;
        Ok(Self { leaves, xor_byte })
    }

    /// Leaf hashes of `indices` (every leaf when `None`) of `buffer`, hashed on the device; only
    /// the hashes are copied back. Blocks the calling thread until the kernel is done (callers
    /// run on a blocking worker, never on the actor).
    pub(crate) fn leaf_hashes(
        &self,
        buffer: &DeviceBuffer,
        chunk_size: u64,
        indices: Option<&[u64]>,
    ) -> Result<Vec<Hash>, BackendError> {
        let ctx = buffer.context();
        let total = leaf_count(buffer.len(), chunk_size);
        let n = match indices {
            Some(list) => {
                if let Some(&bad) = list.iter().find(|&&i| i >= total) {
                    return Err(BackendError::OutOfRange {
                        offset: bad.saturating_mul(chunk_size),
                        len: chunk_size,
                        size: buffer.len(),
                    });
                }
                list.len() as u64
            }
            None => total,
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let out_len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(32))
            .ok_or_else(|| BackendError::Unsupported("too many leaves".into()))?;
        let stream: Arc<CudaStream> = ctx.new_stream().map_err(|e| driver("new stream", e))?;
        let mut out = stream
            .alloc_zeros::<u8>(out_len)
            .map_err(|e| driver("allocating the leaf output", e))?;
        let list = match indices {
            Some(list) => Some(
                stream
                    .clone_htod(list)
                    .map_err(|e| driver("copying the leaf indices", e))?,
            ),
            None => None,
        };
        let data = buffer.ptr();
        let len = buffer.len();
        let null: u64 = 0;
        let blocks = u32::try_from(n.div_ceil(u64::from(LEAF_BLOCK)))
            .map_err(|_| BackendError::Unsupported("too many leaves for one launch".into()))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (LEAF_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&self.leaves);
        launch.arg(&data).arg(&len).arg(&chunk_size);
        match &list {
            Some(list) => launch.arg(list),
            None => launch.arg(&null),
        };
        launch.arg(&n).arg(&mut out);
        // SAFETY: the arguments match the kernel's contract in `sha256_leaf.cu`: `data` is a live
        // device allocation of `len` bytes (the caller holds the buffer until this returns),
        // `indices` is either null or `n` in-range leaf indices (checked above) in device
        // memory, and `out` holds `n * 32` bytes. The kernel only reads `data`.
        unsafe { launch.launch(cfg) }.map_err(|e| driver("launching the leaf kernel", e))?;
        let bytes = stream
            .clone_dtoh(&out)
            .map_err(|e| driver("copying the leaf hashes back", e))?;
        stream
            .synchronize()
            .map_err(|e| driver("waiting for the leaf kernel", e))?;
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }

    /// XORs `mask` into the byte at `offset` of `buffer`, on the device (fault injection).
    pub(crate) fn xor_byte(
        &self,
        stream: &Arc<CudaStream>,
        buffer: &DeviceBuffer,
        offset: u64,
        mask: u8,
    ) -> Result<(), BackendError> {
        if offset >= buffer.len() {
            return Err(BackendError::OutOfRange {
                offset,
                len: 1,
                size: buffer.len(),
            });
        }
        let data = buffer.ptr();
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = stream.launch_builder(&self.xor_byte);
        launch.arg(&data).arg(&offset).arg(&mask);
        // SAFETY: `offset` is inside the live allocation (checked above); the kernel writes that
        // one byte only.
        unsafe { launch.launch(cfg) }.map_err(|e| driver("launching the XOR kernel", e))?;
        stream
            .synchronize()
            .map_err(|e| driver("waiting for the XOR kernel", e))
    }
}

/// Compiles the kernel source to PTX for `arch` (`compute_90`, …) with NVRTC.
fn compile_ptx(arch: &str) -> Result<cudarc::nvrtc::Ptx, String> {
    let options = CompileOptions {
        // PTX for the device's own architecture (the driver JITs it once at load): `compute_XY`
        // rather than `sm_XY`, because cudarc reads PTX back from NVRTC.
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some("sha256_leaf.cu".into()),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(LEAF_KERNEL_SOURCE, options)
        .map_err(|e| format!("NVRTC failed to compile the leaf kernel: {e:?}"))
}

/// Whether the NVRTC library can be loaded. Never panics.
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: only tries `dlopen` on NVRTC's usual names (see `probe::driver_library_present`).
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

#[cfg(test)]
mod tests {
    /// The kernel source compiles with the NVRTC this crate loads, for Hopper, with both entry
    /// points present in the PTX. Skips (saying so) where no NVRTC library can be loaded.
    #[test]
    fn the_leaf_kernel_compiles_with_nvrtc_where_present() {
        if !super::nvrtc_present() {
            eprintln!("skipping: no NVRTC library here");
            return;
        }
        let ptx = super::compile_ptx("compute_90").unwrap().to_src();
        assert!(ptx.contains(".entry vr_sha256_leaves"), "{ptx}");
        assert!(ptx.contains(".entry vr_xor_byte"), "{ptx}");
    }
}
