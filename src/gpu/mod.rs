//! Device backends: the one trait every kind of device memory sits behind.
//!
//! A [`DeviceBackend`] is owned by exactly one `GpuActor`, which makes every mutation (allocate,
//! write, free, fault injection) happen in that actor's mailbox order. Memory moves by
//! ownership, never behind a shared lock:
//!
//! * a fresh allocation is written through a [`DeviceUpload`] that the backend lends out
//!   ([`DeviceBackend::begin_upload`]) and takes back ([`DeviceBackend::finish_upload`]); while
//!   it is lent, only its holder can write it;
//! * once the upload is finished the allocation is sealed: read-only, shared by the
//!   [`DeviceReader`]s handed to verifications (which hash on a blocking worker while the actor
//!   keeps serving) and to `execute` closures. The actor guarantees an allocation is not freed
//!   while a reader of it is in use.
//!
//! Backends: [`cuda`] (real GPUs through the CUDA driver API, loaded at run time) and [`sim`]
//! (device memory simulated in host memory, with a fixed capacity and fault injection).

pub mod cuda;
pub mod sim;
mod view;

pub use crate::types::{BackendKind, DeviceIdentity};
pub use view::DeviceView;

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::VramError;
use crate::seal::merkle::{Hash, chunk_range, leaf_count, leaf_hash};
use crate::types::Fault;

/// Opaque id of one allocation inside one backend. Not a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocationId(pub(crate) u64);

/// Where an allocation lives in the device's address space, as a backend reports it to its actor.
/// Opaque outside the crate: it has no accessor and its `Debug` never shows the value. Callers
/// reach an address only through [`DeviceView::device_ptr`], borrowed for one `execute` call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceAddress(u64);

impl DeviceAddress {
    pub(crate) fn new(raw: u64) -> Self {
        Self(raw)
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// The address `by` bytes further on (within the same allocation, so it cannot overflow;
    /// it saturates rather than wrap if it ever did).
    pub(crate) fn offset(self, by: u64) -> Self {
        Self(self.0.saturating_add(by))
    }
}

impl fmt::Debug for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceAddress(<redacted>)")
    }
}

/// The weights' device address, lent to an `execute` closure for the length of the call.
///
/// It borrows the [`DeviceView`] it came from, and is neither `Copy` nor `Clone`, so it cannot
/// be returned from the closure or kept past it (the shard may be released or quarantined as
/// soon as the closure returns):
///
/// ```compile_fail
/// # async fn f(system: vram_residency::VramResidency, shard: vram_residency::SealedShard) {
/// // Does not compile: the pointer borrows the view, which lives only for the call.
/// let escaped = system.execute(&shard, |view| view.device_ptr()).await;
/// # }
/// ```
///
/// Kernel launches take the address by reference ([`DevicePtr::as_kernel_arg`], the shape
/// cudarc's launch builder wants). Its `Debug` never shows the value and it has no `Display`.
pub struct DevicePtr<'view> {
    raw: u64,
    _view: std::marker::PhantomData<&'view ()>,
}

impl<'view> DevicePtr<'view> {
    pub(crate) fn new(address: DeviceAddress) -> Self {
        Self {
            raw: address.raw(),
            _view: std::marker::PhantomData,
        }
    }

    /// The raw device address, by reference, to push as a kernel argument (for example
    /// `launch.arg(ptr.as_kernel_arg())` with cudarc). Never log it, and do not copy it out of
    /// the closure: after the call the memory may be gone.
    pub fn as_kernel_arg(&self) -> &u64 {
        &self.raw
    }
}

impl fmt::Debug for DevicePtr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePtr(<redacted>)")
    }
}

/// What went wrong inside a backend; the `GpuActor` maps it to a public error with the device
/// index attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Not enough device memory.
    #[error("out of device memory: needed {needed} bytes, available {available} bytes")]
    OutOfMemory {
        /// Bytes asked for.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The allocation failed for another reason (injected fault, driver).
    #[error("allocation failed: {0}")]
    AllocationFailed(String),
    /// The device is gone.
    #[error("device lost")]
    DeviceLost,
    /// No such allocation.
    #[error("unknown allocation")]
    UnknownAllocation,
    /// A read or write past the end of an allocation.
    #[error(
        "access out of range: offset {offset} + {len} bytes exceeds allocation of {size} bytes"
    )]
    OutOfRange {
        /// Where the access started.
        offset: u64,
        /// How many bytes it covered.
        len: u64,
        /// Size of the allocation.
        size: u64,
    },
    /// The backend cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A driver error.
    #[error("driver error: {0}")]
    Driver(String),
    /// A worker thread doing device work for the actor failed.
    #[error("device worker failed: {0}")]
    Worker(String),
    /// The caller gave up and the work stopped at a piece boundary.
    #[error("cancelled by caller")]
    Cancelled,
    /// The VRAM-only policy (`.specs/design.md` §6, VP-001..006) refused the memory: it is not dedicated
    /// device memory (managed, host-mapped or on an integrated GPU). Nothing stays allocated.
    #[error("{policy}: {violation}")]
    Policy {
        /// The rule broken (`VP-002`, …).
        policy: &'static str,
        /// What was found, in words (never an address).
        violation: String,
    },
}

impl BackendError {
    /// The public error for this backend failure on `device`. A lost device is `DeviceLost`;
    /// an access out of range is the caller's `InvalidInput`; a driver failure is `Cuda`.
    pub(crate) fn into_vram(self, device: u32) -> VramError {
        match self {
            Self::OutOfMemory { needed, available } => {
                VramError::InsufficientVram { needed, available }
            }
            Self::AllocationFailed(reason) => VramError::AllocationFailed { device, reason },
            Self::DeviceLost => VramError::DeviceLost { device },
            Self::UnknownAllocation => {
                VramError::Internal("the backend lost track of an allocation".into())
            }
            e @ Self::OutOfRange { .. } => VramError::InvalidInput(e.to_string()),
            Self::Unsupported(m) => VramError::Unsupported(m),
            Self::Driver(m) => VramError::Cuda(m),
            Self::Worker(m) => VramError::Internal(m),
            Self::Cancelled => VramError::Cancelled,
            e @ Self::Policy { .. } => VramError::PolicyViolation(e.to_string()),
        }
    }
}

/// Device memory behind one device, owned by one `GpuActor`.
pub trait DeviceBackend: Send + 'static {
    /// What this device is.
    fn identity(&self) -> DeviceIdentity;
    /// Where this device hashes leaves, for `devices`: `on (embedded PTX)` or `off (<why>)` for
    /// a CUDA device's leaf kernel; `None` where the question does not arise.
    fn leaf_kernel(&self) -> Option<String> {
        None
    }
    /// The driver's CUDA version (`13.0`), where there is a driver.
    fn driver_version(&self) -> Option<String> {
        None
    }
    /// Free device memory in bytes as the device reports it.
    fn free_bytes(&self) -> Result<u64, BackendError>;
    /// Allocates device memory for a shard of `len` bytes placed `lead` bytes into the
    /// allocation (`lead + len` bytes in all, counted against the device's memory). The
    /// allocation itself starts on a 256-byte boundary, so a safetensors shard given
    /// `lead = (256 - (8 + N) % 256) % 256` has its data section 256-byte aligned.
    ///
    /// The padding is invisible: every other method — upload and read offsets, leaf hashing,
    /// [`DeviceBackend::device_address`], fault offsets — addresses the shard from its own
    /// first byte, and never reads, writes or hashes the padding.
    fn allocate(&mut self, len: u64, lead: u64) -> Result<AllocationId, BackendError>;
    /// Lends the memory of a fresh allocation to its uploader: until it comes back through
    /// [`DeviceBackend::finish_upload`], only the holder of the returned handle can write it,
    /// and it cannot be read. The actor moves the handle to a copy job and back, so the copy
    /// runs off the actor while the upload stays part of the seal handler.
    fn begin_upload(&mut self, id: AllocationId) -> Result<Box<dyn DeviceUpload>, BackendError>;
    /// Takes the memory back after its upload and seals it: from here on it is read-only and
    /// can be shared with readers.
    fn finish_upload(
        &mut self,
        id: AllocationId,
        upload: Box<dyn DeviceUpload>,
    ) -> Result<(), BackendError>;
    /// Takes back the memory of an upload that will not finish (its seal failed or was
    /// cancelled); the allocation is freed next. The default drops the handle; a backend that
    /// lends more than the memory (CUDA's pinned staging ring) keeps what it can reuse.
    fn abandon_upload(&mut self, upload: Box<dyn DeviceUpload>) {
        drop(upload);
    }
    /// A shareable read-only view of a sealed allocation.
    fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError>;
    /// The device address of the shard's first byte (after the allocation's lead padding).
    fn device_address(&self, id: AllocationId) -> Result<DeviceAddress, BackendError>;
    /// Frees the allocation, returning its size (lead padding included).
    fn free(&mut self, id: AllocationId) -> Result<u64, BackendError>;
    /// Injects a fault (see [`Fault`] for which backend accepts which). `target` is the
    /// allocation of the shard the fault names, resolved once by the device actor; `None` for a
    /// fault that names no shard. The default refuses every fault.
    fn inject_fault(
        &mut self,
        fault: &Fault,
        target: Option<AllocationId>,
    ) -> Result<(), BackendError> {
        let _ = (fault, target);
        Err(BackendError::Unsupported(
            "fault injection needs the simulated backend".into(),
        ))
    }
    /// Clears a lost state if the backend can recover (simulated only).
    fn recover(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Write access to one allocation, lent out only for the duration of a seal's upload. It is
/// owned, not shared: whoever holds it is the only writer.
pub trait DeviceUpload: Send {
    /// Copies `data` into the allocation at `offset` (host → device).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Lets the backend that lent the handle take its memory back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Read access to one allocation, usable from any thread.
pub trait DeviceReader: Send + Sync {
    /// Size of the allocation.
    fn len(&self) -> u64;

    /// Whether the allocation is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf` (device → host).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError>;

    /// Merkle leaf hashes of the given chunks. The default copies each chunk back to the host and
    /// hashes it, spread over the rayon pool ([`host_leaf_hashes`]); a backend that can hash in
    /// place (or on the device) overrides it.
    fn leaf_hashes(&self, chunk_size: u64, indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
        host_leaf_hashes(self, chunk_size, indices)
    }

    /// Whether [`DeviceReader::all_leaf_hashes`] at `chunk_size` runs on the device itself,
    /// without copying the shard back (so a seal can cheaply re-hash what landed there and
    /// compare it with what the host hashed from the source).
    fn hashes_on_device(&self, chunk_size: u64) -> bool {
        let _ = chunk_size;
        false
    }

    /// Leaf hashes of every chunk, in order.
    fn all_leaf_hashes(&self, chunk_size: u64) -> Result<Vec<Hash>, BackendError> {
        let n = leaf_count(self.len(), chunk_size);
        let indices: Vec<u64> = (0..n).collect();
        self.leaf_hashes(chunk_size, &indices)
    }

    /// The fewest leaves one [`DeviceReader::leaf_hashes`] call should be given for the backend
    /// to hash at full speed. A verification reads a piece of leaves at a time (and may stop
    /// between pieces once its caller gives up), and never hands a backend pieces smaller than
    /// this. The default, [`host_batch_leaves`], keeps every worker of the rayon pool busy; a
    /// backend with a batch threshold of its own (CUDA's leaf kernel) raises it.
    fn preferred_batch_leaves(&self, chunk_size: u64) -> u64 {
        let _ = chunk_size;
        host_batch_leaves()
    }
}

/// Leaves per worker of the rayon pool in a host-hashed piece: one leaf is hashed by one
/// worker (SHA-256 is sequential within a leaf), and a piece ends with a barrier, so each worker
/// gets several leaves and the idle tail at the barrier stays a small part of the piece.
pub const HOST_LEAVES_PER_WORKER: u64 = 16;

/// The default [`DeviceReader::preferred_batch_leaves`]: [`HOST_LEAVES_PER_WORKER`] leaves for
/// each worker of the rayon pool.
pub fn host_batch_leaves() -> u64 {
    (rayon::current_num_threads() as u64)
        .max(1)
        .saturating_mul(HOST_LEAVES_PER_WORKER)
}

/// Leaf hashes computed on the host: each chunk is copied back with [`DeviceReader::read`] and
/// hashed, spread over the rayon pool. The fallback of every backend that cannot hash in place.
pub fn host_leaf_hashes<R: DeviceReader + ?Sized>(
    reader: &R,
    chunk_size: u64,
    indices: &[u64],
) -> Result<Vec<Hash>, BackendError> {
    let len = reader.len();
    indices
        .par_iter()
        .map(|&i| {
            let (off, n) = chunk_range(i, chunk_size, len).ok_or(BackendError::OutOfRange {
                offset: i.saturating_mul(chunk_size),
                len: chunk_size,
                size: len,
            })?;
            let n = usize::try_from(n)
                .map_err(|_| BackendError::Unsupported("chunk too large".into()))?;
            let mut buf = vec![0u8; n];
            reader.read(off, &mut buf)?;
            Ok(leaf_hash(&buf))
        })
        .collect()
}
