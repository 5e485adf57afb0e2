//! One `cuMemAlloc` allocation, freed when its last holder lets go.
//!
//! The backend's table holds one reference, and so does every reader handed to a verification
//! and every `execute` view. `free` drops only the table's; the memory goes back to the driver
//! when the last reference drops, after `cuCtxSynchronize` has waited for every kernel and copy
//! queued in the context (ours and any an `execute` closure launched); if that wait fails the
//! memory is leaked (and counted), never freed under work that may still run. That is the
//! reader/free contract on real memory: a release, a shutdown, or an actor that crashed and
//! dropped its backend can never free memory a verification is still hashing. Until then the driver's own
//! free-memory figure (`cuMemGetInfo`, which the capacity check trusts when it is the smaller)
//! still counts the bytes as used.

use std::sync::Arc;

use cudarc::driver::{CudaContext, result, sys};

use super::driver;
use crate::gpu::BackendError;

/// One device allocation, holding one shard `lead` bytes in (the padding that puts a
/// safetensors shard's data section on a 256-byte boundary; 0 for other shards). Everything
/// but the free addresses the shard: [`DeviceBuffer::ptr`] is its first byte and
/// [`DeviceBuffer::len`] its length, so uploads, reads, the leaf kernel and fault injection
/// never see the padding.
pub(crate) struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    /// What `cuMemAlloc` returned (256-byte aligned): freed in `Drop`.
    base: sys::CUdeviceptr,
    /// The shard's first byte: `base + lead`.
    ptr: sys::CUdeviceptr,
    /// The shard's length.
    len: u64,
    /// The allocation's length: `lead + len`.
    allocated: u64,
}

impl DeviceBuffer {
    /// Allocates `lead + len` bytes with `cuMemAlloc` (never managed, mapped or pinned host
    /// memory: VP-001), for a shard of `len` bytes that starts `lead` bytes in.
    pub(crate) fn allocate(
        ctx: &Arc<CudaContext>,
        len: u64,
        lead: u64,
    ) -> Result<Self, BackendError> {
        let too_large =
            || BackendError::Unsupported("allocation larger than the address space".into());
        let allocated = len.checked_add(lead).ok_or_else(too_large)?;
        let bytes = usize::try_from(allocated).map_err(|_| too_large())?;
        ctx.bind_to_thread()
            .map_err(|e| driver("binding the context", e))?;
        // SAFETY: the context is current on this thread (bound above); `malloc_sync` returns a
        // fresh device allocation of `bytes` bytes or an error, and we own the pointer from here
        // on (freed exactly once, in `Drop`).
        let base = unsafe { result::malloc_sync(bytes) }.map_err(|e| match e.0 {
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => BackendError::OutOfMemory {
                needed: allocated,
                available: ctx.mem_get_info().map(|(free, _)| free as u64).unwrap_or(0),
            },
            _ => driver("cuMemAlloc", e),
        })?;
        // Built before the check below, so an impossible address still frees `base` on drop.
        let mut buffer = Self {
            ctx: Arc::clone(ctx),
            base,
            ptr: base,
            len,
            allocated,
        };
        buffer.ptr = base.checked_add(lead).ok_or_else(|| {
            BackendError::Driver("cuMemAlloc returned an allocation that wraps around".into())
        })?;
        Ok(buffer)
    }

    /// The device address of the shard's first byte (past the lead padding).
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// The shard's length (the padding not included).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The allocation's length, lead padding included.
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Checks the VRAM-only policy on this allocation's pointer attributes: memory type device
    /// (VP-002) and not managed (VP-003).
    pub(crate) fn check_policy(&self) -> Result<(), BackendError> {
        let memory_type: u32 =
            self.attribute(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE)?;
        if memory_type != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
            return Err(BackendError::Policy {
                policy: "VP-002",
                violation: format!("allocation is not device memory (memory type {memory_type})"),
            });
        }
        let managed: u32 =
            self.attribute(sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_IS_MANAGED)?;
        if managed != 0 {
            return Err(BackendError::Policy {
                policy: "VP-003",
                violation: "allocation is managed (unified) memory".into(),
            });
        }
        Ok(())
    }

    fn attribute(&self, attribute: sys::CUpointer_attribute) -> Result<u32, BackendError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver("binding the context", e))?;
        let mut value: u32 = 0;
        // SAFETY: both attributes asked here are 32-bit values (`CUmemorytype`, a boolean
        // `unsigned int`), so `value` is a valid, large-enough destination; `self.base` is a
        // live allocation of this context, which is current.
        let rc = unsafe {
            sys::cuPointerGetAttribute(std::ptr::from_mut(&mut value).cast(), attribute, self.base)
        };
        rc.result()
            .map_err(|e| driver("cuPointerGetAttribute", e))?;
        Ok(value)
    }
}

/// Makes `ctx` current on this thread without consuming an error that another thread's
/// operation left pending in cudarc's context (`bind_to_thread` reports and clears it, which
/// would make this unrelated free fail).
pub(crate) fn make_current(ctx: &CudaContext) -> Result<(), cudarc::driver::DriverError> {
    // SAFETY: `cu_ctx()` is the live context `ctx` holds (it outlives this call); making it
    // current only changes this thread's binding.
    unsafe { result::ctx::set_current(ctx.cu_ctx()) }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if make_current(&self.ctx).is_err() {
            // Without our context current the free could hit another device's context; leak
            // the memory instead (the driver reclaims it when the process ends).
            crate::telemetry::record_cuda_leaked_buffer();
            tracing::error!("could not make the device context current to free memory; leaked");
            return;
        }
        // Wait for every kernel and copy queued in this context before the memory goes back:
        // a kernel launched on it (by us or by an `execute` closure) must not run on freed
        // memory.
        // SAFETY: the context is current (above); `cuCtxSynchronize` only waits.
        if unsafe { cudarc::driver::sys::cuCtxSynchronize() }
            .result()
            .is_err()
        {
            // The wait failed (a lost device, a sticky error): whether a kernel or copy still
            // runs on this memory is unknown, so it is never handed back. Leaked; the driver
            // reclaims it with the context.
            crate::telemetry::record_cuda_leaked_buffer();
            tracing::error!(
                "could not wait for the device's queued work before a free; the memory is leaked"
            );
            return;
        }
        // SAFETY: `self.base` came from `cuMemAlloc` in this context (current) and is freed
        // exactly once, here; every holder of this buffer is gone (this is its drop) and the
        // context has finished all work queued on it (the wait above succeeded).
        if unsafe { result::free_sync(self.base) }.is_err() {
            crate::telemetry::record_cuda_free_error();
            tracing::error!("freeing device memory reported a driver error");
        }
    }
}
