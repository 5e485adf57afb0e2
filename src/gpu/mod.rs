//! Device backends: the one trait every kind of device memory sits behind.
//!
//! A [`DeviceBackend`] is owned by exactly one `GpuActor`, which makes every mutation (allocate,
//! write, free, fault injection) happen in that actor's mailbox order. Reading a large shard for
//! verification must not stall the mailbox, so the backend hands out a [`DeviceReader`] — a
//! shareable, read-only view of one allocation — that a blocking worker can hash while the actor
//! keeps serving. The actor guarantees an allocation is not freed while a reader of it is in use.
//!
//! Backends: [`sim`] (device memory simulated in host memory, with a fixed capacity and fault
//! injection). The CUDA backend (cudarc, dynamically loaded) plugs in behind the same trait.

pub mod sim;

use std::fmt;
use std::sync::Arc;

use rayon::prelude::*;

use crate::seal::merkle::{Hash, chunk_range, leaf_count, leaf_hash};

/// Which kind of backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Device memory simulated in host memory.
    Simulated,
    /// A CUDA device.
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Simulated => "simulated",
            Self::Cuda => "cuda",
        })
    }
}

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceIdentity {
    /// Device index in this system.
    pub index: u32,
    /// Human-readable name.
    pub name: String,
    /// Backend kind.
    pub backend: BackendKind,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// Whether the device shares memory with the host (integrated GPU). The VRAM-only policy
    /// refuses such devices.
    pub integrated: bool,
}

/// Opaque id of one allocation inside one backend. Not a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocationId(pub(crate) u64);

/// A device address. Handed to `execute` closures so they can launch work on the weights; its
/// `Debug` never shows the value, and it has no `Display`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DevicePtr(u64);

impl DevicePtr {
    pub(crate) fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw device address, for passing to a kernel launch. Never log it.
    pub fn as_raw(&self) -> u64 {
        self.0
    }
}

impl fmt::Debug for DevicePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePtr(<redacted>)")
    }
}

/// What went wrong inside a backend; the `GpuActor` maps it to a public error with the device
/// index attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Not enough device memory.
    #[error("out of device memory: needed {needed} bytes, available {available} bytes")]
    OutOfMemory { needed: u64, available: u64 },
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
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The backend cannot do this.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A driver error.
    #[error("driver error: {0}")]
    Driver(String),
}

/// A fault injected into a backend (simulated backend only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendFault {
    /// XOR `mask` into the byte at `offset` of an allocation.
    FlipBits {
        allocation: AllocationId,
        offset: u64,
        mask: u8,
    },
    /// Fail the next allocation.
    FailNextAlloc,
    /// Lose the device: every later operation fails with `DeviceLost`.
    LoseDevice,
    /// Add this many milliseconds to every read operation.
    SlowDevice { millis_per_read: u64 },
}

/// Device memory behind one device, owned by one `GpuActor`.
pub trait DeviceBackend: Send + 'static {
    /// What this device is.
    fn identity(&self) -> DeviceIdentity;
    /// Free device memory in bytes as the device reports it.
    fn free_bytes(&self) -> Result<u64, BackendError>;
    /// Allocates `len` bytes of device memory.
    fn allocate(&mut self, len: u64) -> Result<AllocationId, BackendError>;
    /// Copies `data` into the allocation at `offset`.
    fn write(&mut self, id: AllocationId, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// A shareable read-only view of the allocation.
    fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError>;
    /// A handle that copies into the allocation from a worker thread. The `GpuActor` awaits each
    /// copy inside its seal handler (so the write is still part of that handler, in mailbox
    /// order) but runs it on the hashing pool, where it shares cores with the hashing by work
    /// stealing instead of preempting it. `None`: the actor calls [`DeviceBackend::write`].
    fn uploader(&self, id: AllocationId) -> Option<Arc<dyn DeviceUploader>> {
        let _ = id;
        None
    }
    /// The allocation's device address.
    fn device_ptr(&self, id: AllocationId) -> Result<DevicePtr, BackendError>;
    /// Frees the allocation, returning its size.
    fn free(&mut self, id: AllocationId) -> Result<u64, BackendError>;
    /// Injects a fault. Real hardware backends answer `Unsupported`.
    fn inject_fault(&mut self, fault: BackendFault) -> Result<(), BackendError> {
        let _ = fault;
        Err(BackendError::Unsupported(
            "fault injection needs the simulated backend".into(),
        ))
    }
    /// Clears a lost state if the backend can recover (simulated only).
    fn recover(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Write access to one allocation, handed out only for the duration of a seal's upload.
pub trait DeviceUploader: Send + Sync {
    /// Copies `data` into the allocation at `offset` (host → device).
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError>;
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
    /// hashes it, spread over the rayon pool; a backend that can hash in place (or on the device)
    /// overrides it.
    fn leaf_hashes(&self, chunk_size: u64, indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
        let len = self.len();
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
                self.read(off, &mut buf)?;
                Ok(leaf_hash(&buf))
            })
            .collect()
    }

    /// Leaf hashes of every chunk, in order.
    fn all_leaf_hashes(&self, chunk_size: u64) -> Result<Vec<Hash>, BackendError> {
        let n = leaf_count(self.len(), chunk_size);
        let indices: Vec<u64> = (0..n).collect();
        self.leaf_hashes(chunk_size, &indices)
    }
}
