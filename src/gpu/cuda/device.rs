//! [`CudaDevice`]: the [`DeviceBackend`] for one CUDA GPU.
//!
//! Created by the device's `GpuActor` when it starts (and again by a replacement after a crash),
//! so the actor owns the context, the upload stream, the staging ring and every allocation.
//! Allocation is `cuMemAlloc` only, each checked against the VRAM-only policy; memory figures
//! come from `cuMemGetInfo`, so other processes' use of the GPU is respected.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, result};

use super::buffer::DeviceBuffer;
use super::driver;
use super::kernels::Kernels;
use super::staging::{CudaUpload, StagingRing};
use crate::gpu::{
    AllocationId, BackendError, BackendKind, DeviceAddress, DeviceBackend, DeviceIdentity,
    DeviceReader, DeviceUpload, host_leaf_hashes,
};
use crate::seal::merkle::{Hash, leaf_count};
use crate::types::Fault;

/// How a CUDA device is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaOptions {
    /// Accept an integrated GPU (memory shared with the host). Off by default: VP-001.
    pub allow_integrated: bool,
    /// Accept injected faults (`FlipBits` as a device-side XOR, `FailNextAlloc`). Off by
    /// default: a production worker refuses them.
    pub fault_injection: bool,
    /// Size of one pinned staging buffer (the ring holds three).
    pub staging_bytes: usize,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            allow_integrated: false,
            fault_injection: false,
            staging_bytes: 8 << 20,
        }
    }
}

/// Where one allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Lent,
    Sealed,
}

struct Allocation {
    buffer: Arc<DeviceBuffer>,
    state: State,
}

/// Frees this device's memory on a thread of its own, in order: a free waits for the context's
/// queued work (`DeviceBuffer::drop`), which must not hold the actor's thread nor a rayon worker
/// (the upload copies run there). Joined when the device is dropped, so by the time a device
/// actor has stopped — cleanly or after a crash — every allocation its table held has gone back
/// to the driver (memory a reader still holds follows when that reader lets go).
struct Reaper {
    tx: Option<std::sync::mpsc::Sender<Allocation>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn new(index: u32) -> Result<Self, BackendError> {
        let (tx, rx) = std::sync::mpsc::channel::<Allocation>();
        let thread = std::thread::Builder::new()
            .name(format!("vram-free-{index}"))
            .spawn(move || {
                for allocation in rx {
                    drop(allocation);
                }
            })
            .map_err(|e| BackendError::Worker(format!("starting the free thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn free(&self, allocation: Allocation) {
        match &self.tx {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(allocation)) = tx.send(allocation) {
                    drop(allocation); // the thread is gone: free here
                }
            }
            None => drop(allocation),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the device memory free thread panicked");
        }
    }
}

/// One CUDA GPU.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    identity: DeviceIdentity,
    options: CudaOptions,
    kernels: Option<Arc<Kernels>>,
    /// Why there are no kernels (the PTX did not load, or the self-test failed).
    kernels_missing: Option<String>,
    driver_version: Option<String>,
    allocations: HashMap<AllocationId, Allocation>,
    next_id: u64,
    ring: Option<StagingRing>,
    fail_next_alloc: bool,
    reaper: Reaper,
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // A device dropped with shards still in its table (an actor that crashed): free them
        // through the reaper, which the field drop after this joins.
        for (_, allocation) in self.allocations.drain() {
            self.reaper.free(allocation);
        }
    }
}

impl CudaDevice {
    /// Opens device `index`: creates (retains) its context and an upload stream, reads its
    /// identity from the driver, checks the integrated-GPU policy, and loads the leaf kernel and
    /// checks it against the host (falling back to host hashing, with one log line, if it does
    /// not load or hashes wrong). Call [`super::probe()`] first: without a driver library
    /// cudarc panics.
    pub fn open(index: u32, options: CudaOptions) -> Result<Self, BackendError> {
        let ordinal = usize::try_from(index)
            .map_err(|_| BackendError::Unsupported("device index out of range".into()))?;
        // VP-001 before the context exists (a context costs memory and time).
        let integrated =
            super::probe::is_integrated(index).map_err(|e| BackendError::Driver(e.to_string()))?;
        if integrated && !options.allow_integrated {
            return Err(BackendError::Policy {
                policy: "VP-001",
                violation: format!(
                    "device {index} is an integrated GPU: its memory is host memory"
                ),
            });
        }
        let reaper = Reaper::new(index)?;
        let ctx = CudaContext::new(ordinal).map_err(|e| driver("creating the context", e))?;
        let name = ctx.name().map_err(|e| driver("device name", e))?;
        let uuid = ctx.uuid().map_err(|e| driver("device UUID", e))?;
        let total_bytes = ctx
            .total_mem()
            .map_err(|e| driver("device memory size", e))? as u64;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver("creating a stream", e))?;
        let (kernels, kernels_missing) =
            match Kernels::load(&ctx, index).and_then(|k| k.self_test(&ctx).map(|()| k)) {
                Ok(k) => (Some(Arc::new(k)), None),
                Err(why) => {
                    crate::telemetry::record_leaf_kernel_off(index);
                    tracing::warn!(
                        gpu_device = index,
                        "the leaf kernel is off ({why}); verification on this device copies chunks \
                     back to the host"
                    );
                    (None, Some(why))
                }
            };
        Ok(Self {
            identity: DeviceIdentity {
                index,
                name,
                uuid: Some(format_uuid(&uuid.bytes)),
                backend: BackendKind::Cuda,
                total_bytes,
                integrated,
            },
            ctx,
            stream,
            options,
            kernels,
            kernels_missing,
            driver_version: super::probe::driver_version(),
            allocations: HashMap::new(),
            next_id: 1,
            ring: None,
            fail_next_alloc: false,
            reaper,
        })
    }

    /// Whether the leaf kernel is in use (it loaded, passed its self-test, and has not been
    /// switched off since).
    pub fn has_leaf_kernel(&self) -> bool {
        self.kernels.as_ref().is_some_and(|k| k.is_on())
    }

    /// `on (embedded PTX)` or `off (<why>)`.
    pub fn leaf_kernel_status(&self) -> String {
        match (&self.kernels, &self.kernels_missing) {
            (Some(k), _) => k.status(),
            (None, Some(why)) => format!("off ({why})"),
            (None, None) => "off (not loaded)".to_string(),
        }
    }

    fn allocation(&self, id: AllocationId) -> Result<&Allocation, BackendError> {
        self.allocations
            .get(&id)
            .ok_or(BackendError::UnknownAllocation)
    }
}

/// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as `nvidia-smi -L` prints it.
fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let hex: String = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    let part = |r: std::ops::Range<usize>| hex.get(r).unwrap_or_default().to_string();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32)
    )
}

impl DeviceBackend for CudaDevice {
    fn identity(&self) -> DeviceIdentity {
        self.identity.clone()
    }

    fn leaf_kernel(&self) -> Option<String> {
        Some(self.leaf_kernel_status())
    }

    fn driver_version(&self) -> Option<String> {
        self.driver_version.clone()
    }

    fn free_bytes(&self) -> Result<u64, BackendError> {
        self.ctx
            .mem_get_info()
            .map(|(free, _total)| free as u64)
            .map_err(|e| driver("cuMemGetInfo", e))
    }

    fn allocate(&mut self, len: u64, lead: u64) -> Result<AllocationId, BackendError> {
        if std::mem::take(&mut self.fail_next_alloc) {
            return Err(BackendError::AllocationFailed(
                "injected fault: FailNextAlloc".into(),
            ));
        }
        let buffer = DeviceBuffer::allocate(&self.ctx, len, lead)?;
        // VP-002/VP-003: the weights must be in dedicated device memory. A failed check frees
        // the allocation (dropping `buffer`) before the error goes back.
        buffer.check_policy()?;
        let id = AllocationId(self.next_id);
        self.next_id = self.next_id.saturating_add(1);
        self.allocations.insert(
            id,
            Allocation {
                buffer: Arc::new(buffer),
                state: State::Fresh,
            },
        );
        Ok(id)
    }

    fn begin_upload(&mut self, id: AllocationId) -> Result<Box<dyn DeviceUpload>, BackendError> {
        let state = self.allocation(id)?.state;
        if state != State::Fresh {
            return Err(BackendError::Unsupported(
                "an allocation is uploaded once, before it is sealed".into(),
            ));
        }
        let ring = match self.ring.take() {
            Some(ring) => ring,
            None => StagingRing::new(Arc::clone(&self.stream), self.options.staging_bytes)?,
        };
        let entry = self
            .allocations
            .get_mut(&id)
            .ok_or(BackendError::UnknownAllocation)?;
        entry.state = State::Lent;
        Ok(Box::new(CudaUpload {
            buffer: Arc::clone(&entry.buffer),
            ring,
        }))
    }

    fn finish_upload(
        &mut self,
        id: AllocationId,
        upload: Box<dyn DeviceUpload>,
    ) -> Result<(), BackendError> {
        let upload = upload
            .into_any()
            .downcast::<CudaUpload>()
            .map_err(|_| BackendError::Worker("an upload from another backend came back".into()))?;
        let entry = self
            .allocations
            .get_mut(&id)
            .ok_or(BackendError::UnknownAllocation)?;
        if !Arc::ptr_eq(&entry.buffer, &upload.buffer) || entry.state != State::Lent {
            return Err(BackendError::Worker(
                "the upload came back for another allocation".into(),
            ));
        }
        let ring = upload.finish()?;
        self.ring = Some(ring);
        entry.state = State::Sealed;
        Ok(())
    }

    fn abandon_upload(&mut self, upload: Box<dyn DeviceUpload>) {
        // Keep the pinned staging ring for the next seal once its copies are done (a ring
        // whose copies cannot be waited for is dropped, which leaks what it must).
        if let Ok(upload) = upload.into_any().downcast::<CudaUpload>()
            && self.ring.is_none()
            && let Ok(ring) = upload.finish()
        {
            self.ring = Some(ring);
        }
    }

    fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError> {
        let entry = self.allocation(id)?;
        if entry.state != State::Sealed {
            return Err(BackendError::Unsupported(
                "only sealed memory can be read".into(),
            ));
        }
        Ok(Arc::new(CudaReader {
            buffer: Arc::clone(&entry.buffer),
            kernels: self.kernels.clone(),
        }))
    }

    fn device_address(&self, id: AllocationId) -> Result<DeviceAddress, BackendError> {
        Ok(DeviceAddress::new(self.allocation(id)?.buffer.ptr()))
    }

    fn free(&mut self, id: AllocationId) -> Result<u64, BackendError> {
        let entry = self
            .allocations
            .remove(&id)
            .ok_or(BackendError::UnknownAllocation)?;
        let len = entry.buffer.allocated();
        // Drops the table's reference on the free thread; the memory goes back to the driver
        // when the last reader (if one is still hashing) lets go — see `buffer`.
        self.reaper.free(entry);
        Ok(len)
    }

    fn inject_fault(
        &mut self,
        fault: &Fault,
        target: Option<AllocationId>,
    ) -> Result<(), BackendError> {
        if !self.options.fault_injection {
            return Err(BackendError::Unsupported(
                "fault injection on a CUDA device needs Config::cuda_fault_injection(true)".into(),
            ));
        }
        match *fault {
            Fault::FailNextAlloc => {
                self.fail_next_alloc = true;
                Ok(())
            }
            Fault::FlipBits { offset, mask, .. } => {
                let allocation = target.ok_or(BackendError::UnknownAllocation)?;
                let buffer = Arc::clone(&self.allocation(allocation)?.buffer);
                match &self.kernels {
                    Some(k) if k.is_on() => k.xor_byte(&self.stream, &buffer, offset, mask),
                    _ => xor_byte_by_copy(&buffer, offset, mask),
                }
            }
            Fault::LoseDevice | Fault::SlowDevice { .. } | Fault::CrashActor => {
                Err(BackendError::Unsupported(
                    "a CUDA device cannot be lost, slowed or crashed on purpose".into(),
                ))
            }
        }
    }
}

/// Fault injection without the kernel: read the byte back, flip it, write it again.
fn xor_byte_by_copy(buffer: &DeviceBuffer, offset: u64, mask: u8) -> Result<(), BackendError> {
    let mut byte = [0u8; 1];
    read_into(buffer, offset, &mut byte)?;
    byte[0] ^= mask;
    let target = buffer
        .ptr()
        .checked_add(offset)
        .ok_or_else(|| BackendError::Worker("device address overflow".into()))?;
    // SAFETY: `offset` is inside the live allocation (`read_into` checked it); the context is
    // current (bound by `read_into`); the source is a one-byte host array.
    unsafe { result::memcpy_htod_sync(target, &byte[..]) }.map_err(|e| driver("cuMemcpyHtoD", e))
}

/// Copies `out.len()` bytes at `offset` of `buffer` to the host.
fn read_into(buffer: &DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
    let n = out.len() as u64;
    if offset.checked_add(n).is_none_or(|end| end > buffer.len()) {
        return Err(BackendError::OutOfRange {
            offset,
            len: n,
            size: buffer.len(),
        });
    }
    if out.is_empty() {
        return Ok(());
    }
    let source = buffer
        .ptr()
        .checked_add(offset)
        .ok_or_else(|| BackendError::Worker("device address overflow".into()))?;
    buffer
        .context()
        .bind_to_thread()
        .map_err(|e| driver("binding the context", e))?;
    // SAFETY: `source .. source + out.len()` is inside the live allocation (checked above; the
    // caller holds a reference to the buffer), the context is current, and `out` is a valid
    // host slice of that length.
    unsafe { result::memcpy_dtoh_sync(out, source) }.map_err(|e| driver("cuMemcpyDtoH", e))
}

/// Below this many leaves a hash request copies the chunks back instead of launching the
/// kernel. One kernel thread hashes one leaf (SHA-256 is sequential within a leaf) at about
/// 50 MB/s, so a launch takes as long as one leaf: 21 ms for a 1 MiB leaf, 1.3 s for a 64 MiB
/// one. A few leaves (a sampled verify, a small shard of large chunks) are faster copied back
/// and hashed on the host's cores; the kernel pays off once the leaves fill the device.
const KERNEL_MIN_LEAVES: usize = 256;

/// The kernel's answer, or — if the launch itself failed (no memory left for its small output
/// buffer, a launch error) — the host's, with the kernel switched off for the device from then
/// on. Never used to second-guess a hash: a kernel that ran answers, and any mismatch is the
/// verification's to judge. A lost device is no kernel failure: it is reported as it is.
fn on_device_or_host(
    kernels: &Kernels,
    device: Result<Vec<Hash>, BackendError>,
    host: impl FnOnce() -> Result<Vec<Hash>, BackendError>,
) -> Result<Vec<Hash>, BackendError> {
    match device {
        Ok(hashes) => Ok(hashes),
        Err(e @ (BackendError::OutOfRange { .. } | BackendError::DeviceLost)) => Err(e),
        Err(e) => {
            crate::telemetry::record_cuda_kernel_fallback();
            kernels.switch_off(format!("a launch failed: {e}"));
            host()
        }
    }
}

/// Read access to one sealed allocation; holds it alive (see `buffer`).
struct CudaReader {
    buffer: Arc<DeviceBuffer>,
    kernels: Option<Arc<Kernels>>,
}

impl DeviceReader for CudaReader {
    fn len(&self) -> u64 {
        self.buffer.len()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        read_into(&self.buffer, offset, buf)
    }

    fn leaf_hashes(&self, chunk_size: u64, indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
        match &self.kernels {
            Some(k) if k.is_on() && indices.len() >= KERNEL_MIN_LEAVES => on_device_or_host(
                k,
                k.leaf_hashes(&self.buffer, chunk_size, Some(indices)),
                || host_leaf_hashes(self, chunk_size, indices),
            ),
            _ => host_leaf_hashes(self, chunk_size, indices),
        }
    }

    fn all_leaf_hashes(&self, chunk_size: u64) -> Result<Vec<Hash>, BackendError> {
        let host = || {
            let n = leaf_count(self.len(), chunk_size);
            let indices: Vec<u64> = (0..n).collect();
            host_leaf_hashes(self, chunk_size, &indices)
        };
        match &self.kernels {
            Some(k) if self.hashes_on_device(chunk_size) => {
                on_device_or_host(k, k.leaf_hashes(&self.buffer, chunk_size, None), host)
            }
            _ => host(),
        }
    }

    fn hashes_on_device(&self, chunk_size: u64) -> bool {
        self.kernels.as_ref().is_some_and(|k| k.is_on())
            && usize::try_from(leaf_count(self.len(), chunk_size))
                .is_ok_and(|n| n >= KERNEL_MIN_LEAVES)
    }

    /// With the leaf kernel on, at least [`KERNEL_MIN_LEAVES`]: a smaller request is hashed on
    /// the host, so a verification read in smaller pieces would never launch it.
    fn preferred_batch_leaves(&self, chunk_size: u64) -> u64 {
        let _ = chunk_size;
        let host = crate::gpu::host_batch_leaves();
        match &self.kernels {
            Some(k) if k.is_on() => host.max(KERNEL_MIN_LEAVES as u64),
            _ => host,
        }
    }
}
