//! Admission to each device's mailbox: how many requests may be in flight on a device, who
//! waits, and the calls that go through it (or, for releases and resets, around it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::actors::ask;
use crate::error::VramError;
use crate::messages::gpu::GpuMsg;
use crate::types::{DeviceLoad, StopCause};
use crate::validation;

use super::*;

impl VramResidency {
    /// Calls a device actor once it has room for another request (waiting for it if not).
    pub(super) async fn ask_gpu<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
    ) -> Result<T, VramError> {
        validation::validate_device(device, self.inner.device_count)?;
        let admission = usize::try_from(device)
            .ok()
            .and_then(|i| self.inner.admission.get(i))
            .ok_or_else(|| VramError::Internal("no admission for a valid device".into()))?;
        let _permit = admission.enter().await?;
        self.ask_gpu_now(device, build).await
    }

    /// Calls a device actor without waiting for room: for releases and resets, which must
    /// always get through (they are what frees a flooded device).
    pub(super) async fn ask_gpu_now<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
    ) -> Result<T, VramError> {
        let gpu = self.gpu(device)?;
        let inner = Arc::clone(&self.inner);
        ask(
            &gpu,
            build,
            self.inner.call_timeout,
            "the device actor",
            move || {
                if inner.shut_down.load(Ordering::Acquire) {
                    return VramError::ShuttingDown;
                }
                // The actor went away mid-call: it crashed (and is being replaced, or already
                // was) or it stopped for good; the directory says which.
                let cause = inner
                    .directory
                    .gpu(device)
                    .err()
                    .unwrap_or(StopCause::Restarting);
                VramError::DeviceStopped { device, cause }
            },
        )
        .await
    }

    /// How busy a device's admission is: requests in flight, callers waiting for room, and the
    /// limit (`Config::device_queue_limit`).
    pub fn device_load(&self, device: u32) -> Result<DeviceLoad, VramError> {
        validation::validate_device(device, self.inner.device_count)?;
        usize::try_from(device)
            .ok()
            .and_then(|i| self.inner.admission.get(i))
            .map(Admission::load)
            .ok_or_else(|| VramError::Internal("no admission for a valid device".into()))
    }
}

/// Admission to one device's mailbox: at most `limit` requests in flight; callers beyond that
/// wait (in arrival order) for a permit. The permit is held until the reply arrives, so the
/// mailbox never holds more than `limit` caller requests (plus the actor's own internal
/// messages, one per request at most). Each device has its own, so a flood on one never
/// delays another.
pub(super) struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    waiting: Arc<AtomicUsize>,
}

impl Admission {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for room; the permit is given back when dropped.
    async fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, VramError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _still_waiting = DecrementOnDrop(&self.waiting);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| VramError::ShuttingDown)?;
        Ok(permit)
    }

    fn load(&self) -> DeviceLoad {
        DeviceLoad {
            in_flight: self.limit.saturating_sub(self.permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }
}

/// Counts a caller out of the waiting line however its wait ends (admitted, or its future
/// dropped).
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
