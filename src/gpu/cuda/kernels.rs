//! The device kernels: the SHA-256 leaf kernel and the fault-injection XOR, from
//! `sha256_leaf.cu`, embedded as PTX generated once with an old NVRTC (`sha256_leaf.ptx`: PTX ISA
//! 8.0 for `compute_80`, made by `scripts/gen-ptx.sh`), so no NVRTC is needed at run time and any
//! driver from R525 (CUDA 12.0) up JITs it for its GPU. The host test builds the same `.cu` with
//! the system C compiler (`tests/it/leaf_kernel_host.rs`), and the fake CUDA driver runs that
//! build for launches (`.specs/fake-cuda.md`).
//!
//! Leaves are independent (RFC 6962: leaf = SHA-256(0x00 ‖ chunk)), so the kernel runs one thread
//! per leaf over the shard where it already is, and only 32 bytes per leaf cross the bus.
//! "Where it already is" is the shard's first byte (`DeviceBuffer::ptr`), past the lead padding
//! that aligns a safetensors shard's data section: a chunk is 16-byte aligned, and read with
//! wide loads, only when that padding leaves the shard's start so (8 + N a multiple of 16);
//! otherwise the kernel takes its byte-load path.
//!
//! A kernel that is wrong on some device must turn itself off, never the seal: when a device
//! opens, the kernel hashes known chunks and is compared with the host ([`Kernels::self_test`]);
//! on a mismatch, or a later launch failure, it is switched off for the device (logged once,
//! counted in [`crate::telemetry::CUDA_LEAF_KERNEL_OFF_TOTAL`]) and every leaf is hashed on the
//! host from then on.

use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg, sys::CUdeviceptr,
};
use cudarc::nvrtc::Ptx;

use super::buffer::DeviceBuffer;
use super::driver;
use crate::gpu::BackendError;
use crate::seal::merkle::{Hash, leaf_count, leaf_hash};

/// The kernel as PTX, generated from `sha256_leaf.cu` by `scripts/gen-ptx.sh`; its header
/// records the SHA-256 of the source it came from (`tests/cuda.rs` compares them).
const LEAF_KERNEL_PTX: &str = include_str!("sha256_leaf.ptx");

/// Threads per block for the leaf kernel: one thread per leaf, and few leaves per shard (a 16 GiB
/// shard of 1 MiB chunks has 16 384), so small blocks spread them over every SM.
const LEAF_BLOCK: u32 = 64;

/// What `devices` says when the kernel is in use.
const KERNEL_ON: &str = "on (embedded PTX)";

/// The loaded kernels of one context, and whether the leaf kernel is still trusted.
pub(crate) struct Kernels {
    leaves: CudaFunction,
    xor_byte: CudaFunction,
    device: u32,
    /// Why the leaf kernel was switched off; unset while it is on. Set once.
    off: OnceLock<String>,
}

impl Kernels {
    /// Loads the embedded PTX into the context (the driver JITs it for the device). `Err` says
    /// why it could not; the caller then hashes on the host.
    pub(crate) fn load(ctx: &Arc<CudaContext>, device: u32) -> Result<Self, String> {
        let module = ctx
            .load_module(Ptx::from_src(LEAF_KERNEL_PTX))
            .map_err(|e| format!("the driver did not load the embedded PTX: {e:?}"))?;
        let leaves = module
            .load_function("vr_sha256_leaves")
            .map_err(|e| format!("vr_sha256_leaves: {e:?}"))?;
        let xor_byte = module
            .load_function("vr_xor_byte")
            .map_err(|e| format!("vr_xor_byte: {e:?}"))?;
        Ok(Self {
            leaves,
            xor_byte,
            device,
            off: OnceLock::new(),
        })
    }

    /// Hashes known chunks on the device, through both the every-leaf and the index-list path,
    /// at a chunk size that is a multiple of 16 (the wide loads) and one that is not (the byte
    /// loads), each with a short last chunk, and compares every leaf with the host's. `Err`
    /// names the first leaf that differs, or why the kernel could not run.
    pub(crate) fn self_test(&self, ctx: &Arc<CudaContext>) -> Result<(), String> {
        let data: Vec<u8> = (0..3 * 4096 + 1000u32)
            .map(|i| (i.wrapping_mul(131).wrapping_add(i >> 7) & 0xff) as u8)
            .collect();
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("self-test stream: {e:?}"))?;
        let on_device = stream
            .clone_htod(&data)
            .map_err(|e| format!("self-test upload: {e:?}"))?;
        // The kernel runs on a stream of its own: the copy must have landed first.
        stream
            .synchronize()
            .map_err(|e| format!("self-test upload: {e:?}"))?;
        let len = data.len() as u64;
        let (ptr, _read) = cudarc::driver::DevicePtr::device_ptr(&on_device, &stream);
        for chunk_size in [4096u64, 1000] {
            let expected: Vec<Hash> = data
                .chunks(usize::try_from(chunk_size).map_err(|e| e.to_string())?)
                .map(leaf_hash)
                .collect();
            let all = self
                .hashes_at(ctx, ptr, len, chunk_size, None)
                .map_err(|e| format!("the leaf kernel did not run: {e}"))?;
            let reversed: Vec<u64> = (0..expected.len() as u64).rev().collect();
            let mut listed = self
                .hashes_at(ctx, ptr, len, chunk_size, Some(&reversed))
                .map_err(|e| format!("the leaf kernel did not run: {e}"))?;
            listed.reverse();
            for (path, got) in [("every-leaf", &all), ("index-list", &listed)] {
                if got.len() != expected.len() {
                    return Err(format!(
                        "the leaf kernel returned {} leaves for {} ({path} path)",
                        got.len(),
                        expected.len()
                    ));
                }
                if let Some(bad) = got.iter().zip(&expected).position(|(g, e)| g != e) {
                    return Err(format!(
                        "the leaf kernel's hash of known leaf {bad} ({chunk_size}-byte chunks, \
                         {path} path) differs from the host's"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the leaf kernel is still trusted on this device.
    pub(crate) fn is_on(&self) -> bool {
        self.off.get().is_none()
    }

    /// What `devices` prints: `on (embedded PTX)` or `off (<why>)`.
    pub(crate) fn status(&self) -> String {
        match self.off.get() {
            None => KERNEL_ON.to_string(),
            Some(why) => format!("off ({why})"),
        }
    }

    /// Switches the leaf kernel off for this device: logged and counted the first time only.
    pub(crate) fn switch_off(&self, why: String) {
        if self.off.set(why).is_ok() {
            let why = self.off.get().map(String::as_str).unwrap_or_default();
            crate::telemetry::record_leaf_kernel_off(self.device);
            tracing::warn!(
                gpu_device = self.device,
                "the leaf kernel is switched off ({why}); leaves are hashed on the host from now on"
            );
        }
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
        self.hashes_at(
            buffer.context(),
            buffer.ptr(),
            buffer.len(),
            chunk_size,
            indices,
        )
    }

    /// [`Kernels::leaf_hashes`] over the `len` bytes at device address `data` (which the caller
    /// keeps allocated until this returns).
    fn hashes_at(
        &self,
        ctx: &Arc<CudaContext>,
        data: CUdeviceptr,
        len: u64,
        chunk_size: u64,
        indices: Option<&[u64]>,
    ) -> Result<Vec<Hash>, BackendError> {
        let total = leaf_count(len, chunk_size);
        let n = match indices {
            Some(list) => {
                if let Some(&bad) = list.iter().find(|&&i| i >= total) {
                    return Err(BackendError::OutOfRange {
                        offset: bad.saturating_mul(chunk_size),
                        len: chunk_size,
                        size: len,
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
        // device allocation of `len` bytes (the caller holds it until this returns), `indices`
        // is either null or `n` in-range leaf indices (checked above) in device memory, and
        // `out` holds `n * 32` bytes. The kernel only reads `data`.
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
