//! Serving from sealed weights: a [`ShardLease`] is a verified, owned hold on one shard's device
//! memory that an inference worker keeps for as long as a request (or a batch) needs it, and
//! `execute` is a convenience built on one.
//!
//! The device actor only hands out a view of the memory (a reader that keeps it alive, and the
//! shard's lease marker that keeps it counted as used); the caller's code runs on the caller's
//! side, never on an actor, so a long forward pass never holds up another request to the same
//! device. A release while leases live returns at once: the memory is freed, and its bytes stop
//! counting in `capacity`, when the last lease drops. A quarantine or a failed scrub after the
//! lease was taken does not pull the memory from under it; [`ShardLease::check`] re-verifies on
//! demand.
//!
//! A shard sealed from a safetensors file is also served tensor by tensor: a [`TensorView`]
//! ([`ShardLease::tensor`]) reads within one tensor's bytes only and gives its device address.
//! Every backend places such a shard so that its data section — and so every tensor whose
//! data offset is a multiple of 256 — starts on a 256-byte boundary of device memory.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::VramError;
use crate::gpu::{DevicePtr, DeviceView};
use crate::messages::gpu::GpuMsg;
use crate::seal::tensors::TensorInfo;
use crate::shard::{SealedShard, VerifyMode, VerifyReport};

use super::VramResidency;

/// A verified hold on one shard's device memory (see [`VramResidency::lease`]). `'static`,
/// `Send` and `Sync`: move it into a task or share it behind an `Arc`.
pub struct ShardLease {
    system: VramResidency,
    shard: SealedShard,
    view: DeviceView,
    /// Keeps the bytes counted as used after a release, until the last lease drops.
    _marker: Arc<()>,
}

impl ShardLease {
    /// The shard id.
    pub fn shard_id(&self) -> &str {
        self.view.shard_id()
    }

    /// The device the shard is on.
    pub fn gpu_device(&self) -> u32 {
        self.view.gpu_device()
    }

    /// The shard's length in bytes.
    pub fn len(&self) -> u64 {
        self.view.len()
    }

    /// Whether the shard is empty (never, for a sealed shard).
    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// The sealed shard this lease holds.
    pub fn shard(&self) -> &SealedShard {
        &self.shard
    }

    /// Copies `buf.len()` bytes at `offset` (from the shard's first byte) into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VramError> {
        self.view.read(offset, buf)
    }

    /// The weights' device address, for kernel launches, borrow-bound to this lease: the memory
    /// stays allocated while the lease lives. Never log it. Work launched on it must finish
    /// before the lease drops.
    pub fn device_ptr(&self) -> DevicePtr<'_> {
        self.view.device_ptr()
    }

    /// The lease's memory as a [`DeviceView`] (what an `execute` closure gets).
    pub fn view(&self) -> &DeviceView {
        &self.view
    }

    /// The shard's tensors, for a shard sealed from safetensors bytes
    /// ([`SealedShard::tensors`]).
    pub fn tensors(&self) -> Option<&[TensorInfo]> {
        self.shard.tensors()
    }

    /// A view of the tensor called `name` (exactly as the safetensors header spells it);
    /// `None` for a name the header does not list, or a shard that is not safetensors.
    /// O(log n) in the number of tensors.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let info = self.shard.tensor(name)?;
        Some(TensorView { lease: self, info })
    }

    /// Verifies the shard again, now, in `mode` (a failure quarantines it, as any
    /// verification does; the lease's memory stays held either way).
    pub async fn check(&self, mode: VerifyMode) -> Result<VerifyReport, VramError> {
        self.system.verify(&self.shard, mode).await
    }
}

impl fmt::Debug for ShardLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardLease")
            .field("shard_id", &self.shard_id())
            .field("gpu_device", &self.gpu_device())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// One tensor of a leased safetensors shard (see [`ShardLease::tensor`]): reads confined to
/// the tensor's bytes, and its device address. It borrows the lease, so neither it nor the
/// pointer it hands out can outlive the memory.
#[derive(Clone, Copy)]
pub struct TensorView<'lease> {
    lease: &'lease ShardLease,
    info: &'lease TensorInfo,
}

impl<'lease> TensorView<'lease> {
    /// The tensor's name, dtype, shape and byte range within the shard.
    pub fn info(&self) -> &'lease TensorInfo {
        self.info
    }

    /// The tensor's length in bytes.
    pub fn len(&self) -> u64 {
        self.info.len()
    }

    /// Whether the tensor holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    /// Copies `buf.len()` bytes at `offset` from the tensor's first byte into `buf`. A read
    /// that would run past the tensor's end is `InvalidInput` (it never reads the next
    /// tensor's bytes).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VramError> {
        let len = self.info.len();
        let n = buf.len() as u64;
        let at = offset
            .checked_add(n)
            .filter(|&end| end <= len)
            .and_then(|_| self.info.start.checked_add(offset))
            .ok_or_else(|| {
                VramError::InvalidInput(format!(
                    "a read of {n} bytes at offset {offset} runs past the end of the tensor \
                     ({len} bytes)"
                ))
            })?;
        self.lease.read(at, buf)
    }

    /// The device address of the tensor's first byte, for kernel launches, borrow-bound to
    /// the lease. Never log it. A tensor whose offset in the data section is a multiple of
    /// 256 is 256-byte aligned. A zero-size tensor's address is where it sits (the next
    /// tensor's first byte, or one past the shard's end): do not read through it.
    pub fn device_ptr(&self) -> DevicePtr<'lease> {
        DevicePtr::new(self.lease.view.address.offset(self.info.start))
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("shard_id", &self.lease.shard_id())
            .field("info", self.info)
            .finish_non_exhaustive()
    }
}

/// Set when the caller's future is dropped, so that queued caller code does not start.
struct CallerGone(Arc<AtomicBool>);

impl Drop for CallerGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl VramResidency {
    /// Verifies the shard in `mode`, then leases its device memory: the lease keeps the memory
    /// alive and counted as used until it drops, even after `release` (see [`ShardLease`]).
    /// Refused like `execute` on a quarantined shard or a stopped or lost device.
    #[tracing::instrument(name = "vram.lease", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device(), mode = %mode))]
    pub async fn lease(
        &self,
        shard: &SealedShard,
        mode: VerifyMode,
    ) -> Result<ShardLease, VramError> {
        self.verify(shard, mode).await?;
        let shard_ref = shard.inner.shard_ref();
        let grant = self
            .ask_gpu(shard.device(), |reply| GpuMsg::Lease {
                shard: shard_ref,
                reply,
            })
            .await??;
        tracing::debug!(bytes = grant.view.len(), "leased");
        Ok(ShardLease {
            system: self.clone(),
            shard: shard.clone(),
            view: grant.view,
            _marker: grant.marker,
        })
    }

    /// Verifies the shard (per `Config::execute_verify`), leases it, and runs `f` with a view of
    /// its device memory on the blocking thread pool, never on an actor: a long closure holds
    /// up neither the device's other requests nor the caller's runtime. What it costs: one
    /// verification (a full re-hash by default; choose `Config::execute_verify`), one device
    /// round trip for the lease and one hop to the blocking pool. If the caller's future is
    /// dropped before `f` starts, `f` never runs. A worker serving many requests from one
    /// shard should take a [`ShardLease`] once and use it directly instead.
    #[tracing::instrument(name = "vram.execute", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device(), mode = %self.inner.execute_verify))]
    pub async fn execute<R, F>(&self, shard: &SealedShard, f: F) -> Result<R, VramError>
    where
        F: FnOnce(&DeviceView) -> R + Send + 'static,
        R: Send + 'static,
    {
        let lease = self.lease(shard, self.inner.execute_verify).await?;
        let gone = Arc::new(AtomicBool::new(false));
        let _guard = CallerGone(Arc::clone(&gone));
        let shard_id = lease.shard_id().to_string();
        let job = crate::actors::spans::spawn_blocking(move || {
            if gone.load(Ordering::Acquire) {
                return None;
            }
            // The closure is the caller's code: a panic in it is its error, not ours.
            Some(std::panic::catch_unwind(AssertUnwindSafe(|| {
                f(lease.view())
            })))
        });
        match job.await {
            Ok(Some(Ok(out))) => {
                tracing::debug!("executed");
                Ok(out)
            }
            Ok(Some(Err(_))) | Err(_) => Err(VramError::ExecutionPanicked { shard_id }),
            Ok(None) => Err(VramError::Internal(
                "execute's closure was skipped although its caller is still waiting".into(),
            )),
        }
    }
}
