//! Uploads through a small ring of pinned host buffers.
//!
//! Pageable host memory cannot be copied to the device asynchronously; pinned memory can, at the
//! bus's full rate. An upload copies each piece of the source into the next pinned slot, queues an
//! asynchronous host-to-device copy from it on the device's upload stream and records an event;
//! the slot is reused only after its event has fired. With three slots the DMA engine copies one
//! piece while the host fills the next, and the seal's SHA-256 (on another thread) runs beside
//! both. The ring belongs to the device: it is lent to each upload with the allocation and comes
//! back when the upload finishes, so pinned memory is allocated once per device, not per seal.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, result};

use super::buffer::DeviceBuffer;
use super::driver;
use crate::gpu::{BackendError, DeviceUpload};

/// Slots in the ring.
const SLOTS: usize = 3;

/// One pinned host buffer (`cuMemHostAlloc`), owned exclusively by its slot.
struct PinnedBuffer {
    ctx: Arc<CudaContext>,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Set when a copy out of this buffer may still be running and could not be waited for:
    /// the buffer is then leaked rather than freed under the DMA engine.
    leak: bool,
}

// SAFETY: the buffer is plain host memory owned by exactly one `PinnedBuffer`; moving the owner
// to another thread moves the only access to it (there is no shared aliasing to race on).
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self, BackendError> {
        ctx.bind_to_thread()
            .map_err(|e| driver("binding the context", e))?;
        // SAFETY: the context is current; `malloc_host` returns `len` bytes of page-locked host
        // memory or an error. Flags 0: plain pinned memory (the device can reach it, as it can
        // any host allocation under unified addressing, but the weights never live here: this
        // is only the staging copy on its way to `cuMemAlloc` memory).
        let raw =
            unsafe { result::malloc_host(len, 0) }.map_err(|e| driver("cuMemHostAlloc", e))?;
        let ptr = std::ptr::NonNull::new(raw.cast::<u8>())
            .ok_or_else(|| BackendError::Driver("cuMemHostAlloc returned null".into()))?;
        Ok(Self {
            ctx: Arc::clone(ctx),
            ptr,
            len,
            leak: false,
        })
    }

    /// The buffer's bytes, to fill.
    ///
    /// # Safety
    ///
    /// No copy out of this buffer may be in flight (its slot's event has been waited on
    /// successfully, or no copy was ever queued from it).
    unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` bytes allocated by `cuMemHostAlloc` and owned only by
        // `self`; the `&mut self` borrow makes this the only live reference on the host, and the
        // caller guarantees no DMA reads it concurrently.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.leak || super::buffer::make_current(&self.ctx).is_err() {
            // A copy may still read it, or the context cannot be made current: leaking a few
            // MiB of pinned memory is safe, freeing it under the DMA engine is not.
            crate::telemetry::record_cuda_leaked_buffer();
            return;
        }
        // SAFETY: `ptr` came from `cuMemHostAlloc` and is freed once, here; its context is
        // current (above). The ring waits for every slot's copy before it drops its buffers,
        // and marks a buffer `leak` when it could not.
        if unsafe { result::free_host(self.ptr.as_ptr().cast()) }.is_err() {
            crate::telemetry::record_cuda_free_error();
        }
    }
}

struct Slot {
    buffer: PinnedBuffer,
    /// Recorded after the copy out of this slot was queued; `None` while the slot is idle.
    /// Cleared only once waiting on it succeeded.
    in_flight: Option<CudaEvent>,
}

impl Slot {
    /// Waits for the copy out of this slot, if any; the slot is idle only if that succeeded.
    fn wait(&mut self) -> Result<(), BackendError> {
        if let Some(event) = &self.in_flight {
            event
                .synchronize()
                .map_err(|e| driver("waiting for a staging copy", e))?;
        }
        self.in_flight = None;
        Ok(())
    }
}

/// The device's pinned staging ring.
pub(crate) struct StagingRing {
    stream: Arc<CudaStream>,
    slots: Vec<Slot>,
    next: usize,
}

impl StagingRing {
    /// `SLOTS` pinned buffers of `slot_bytes` each, copying on `stream`.
    pub(crate) fn new(stream: Arc<CudaStream>, slot_bytes: usize) -> Result<Self, BackendError> {
        let ctx = Arc::clone(stream.context());
        let slots = (0..SLOTS)
            .map(|_| {
                Ok(Slot {
                    buffer: PinnedBuffer::new(&ctx, slot_bytes.max(1))?,
                    in_flight: None,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Self {
            stream,
            slots,
            next: 0,
        })
    }

    /// Waits until every queued copy is done (every slot is tried; the first error is
    /// returned, and slots whose copy could not be waited for stay busy).
    pub(crate) fn drain(&mut self) -> Result<(), BackendError> {
        let mut first_error = None;
        for slot in &mut self.slots {
            if let Err(e) = slot.wait() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Queues a copy of `data` to `dst + offset`, through the ring.
    fn copy(&mut self, dst: &DeviceBuffer, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = self.next.checked_rem(self.slots.len()).unwrap_or(0);
            self.next = index.saturating_add(1);
            let stream = Arc::clone(&self.stream);
            let slot = self
                .slots
                .get_mut(index)
                .ok_or_else(|| BackendError::Worker("staging ring has no slots".into()))?;
            slot.wait()?;
            let room = slot.buffer.len.min(rest.len());
            let (piece, tail) = rest.split_at(room);
            // SAFETY: the slot's previous copy has been waited for successfully (`wait` above
            // returned Ok), so no DMA reads this buffer now.
            let staged = unsafe { slot.buffer.as_mut_slice() }
                .get_mut(..room)
                .ok_or_else(|| BackendError::Worker("staging slot too small".into()))?;
            staged.copy_from_slice(piece);
            let end = at
                .checked_add(room as u64)
                .filter(|&end| end <= dst.len())
                .ok_or(BackendError::OutOfRange {
                    offset: at,
                    len: room as u64,
                    size: dst.len(),
                })?;
            let target = dst
                .ptr()
                .checked_add(at)
                .ok_or_else(|| BackendError::Worker("device address overflow".into()))?;
            stream
                .context()
                .bind_to_thread()
                .map_err(|e| driver("binding the context", e))?;
            // SAFETY: `target .. target + room` lies inside `dst` (checked against its length
            // above), which stays allocated: the upload holds a reference to it until `finish`
            // drains the ring. The source is pinned memory owned by this slot, which is not
            // touched again until the event recorded below has fired.
            unsafe { result::memcpy_htod_async(target, &*staged, stream.cu_stream()) }
                .map_err(|e| driver("cuMemcpyHtoDAsync", e))?;
            let event = match stream.record_event(None) {
                Ok(event) => event,
                Err(e) => {
                    // The copy is queued but has no event: wait for the whole stream before the
                    // slot can be touched again, or give the buffer up if even that fails.
                    if stream.synchronize().is_err() {
                        slot.buffer.leak = true;
                    }
                    return Err(driver("recording an upload event", e));
                }
            };
            slot.in_flight = Some(event);
            at = end;
            rest = tail;
        }
        Ok(())
    }
}

impl Drop for StagingRing {
    fn drop(&mut self) {
        // Pinned buffers must not be freed under a copy still reading them: wait for each slot,
        // then for the stream as a whole; whatever cannot be waited for is leaked.
        let drained = self.drain().is_ok();
        let synced = self.stream.synchronize().is_ok();
        for slot in &mut self.slots {
            if slot.in_flight.is_some() || !(drained || synced) {
                slot.buffer.leak = true;
            }
        }
    }
}

/// Write access to one fresh allocation for the length of its upload.
pub(crate) struct CudaUpload {
    pub(crate) buffer: Arc<DeviceBuffer>,
    pub(crate) ring: StagingRing,
}

impl CudaUpload {
    /// Waits for every copy, and hands back the ring.
    pub(crate) fn finish(mut self) -> Result<StagingRing, BackendError> {
        self.ring.drain()?;
        Ok(self.ring)
    }
}

impl DeviceUpload for CudaUpload {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.ring.copy(&self.buffer, offset, data)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}
