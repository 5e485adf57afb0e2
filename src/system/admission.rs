//! Admission to a device's mailbox, with a deadline (load shedding).
//!
//! Each device admits at most `Config::device_queue_limit` requests at once; callers beyond
//! that wait, in arrival order, for a slot, but at most `Config::admission_timeout`: then they
//! get `VramError::Busy { device }` (retriable, counted in `vram_admission_busy_total`, not
//! audited), so a flood of callers gets a quick answer instead of queueing without end. A
//! request holds its slot until the device has answered it, which is after all its work,
//! off-actor hashing included: the wait for the answer runs in a task of its own that owns the
//! slot, so a caller that gives up (a dropped future, an HTTP client gone) does not free a
//! slot while the work it asked for still runs. Each device has its own admission, so a flood
//! on one never delays another; releases, resets and status queries bypass it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use crate::error::VramError;
use crate::telemetry::ADMISSION_BUSY_TOTAL;
use crate::types::DeviceLoad;

/// Admission to one device's mailbox (see the module docs).
pub(crate) struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    timeout: Duration,
    waiting: Arc<AtomicUsize>,
}

impl Admission {
    pub(crate) fn new(limit: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            timeout,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a slot on `device`, at most the admission timeout; the slot is given back when
    /// the permit is dropped.
    pub(crate) async fn enter(&self, device: u32) -> Result<OwnedSemaphorePermit, VramError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _still_waiting = DecrementOnDrop(&self.waiting);
        let acquire = Arc::clone(&self.permits).acquire_owned();
        match tokio::time::timeout(self.timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(VramError::ShuttingDown),
            Err(_) => {
                metrics::counter!(ADMISSION_BUSY_TOTAL, "gpu_device" => device.to_string())
                    .increment(1);
                Err(VramError::Busy { device })
            }
        }
    }

    pub(crate) fn load(&self) -> DeviceLoad {
        DeviceLoad {
            in_flight: self.limit.saturating_sub(self.permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }
}

/// Waits for a device's answer while holding its slot, in a task of its own, so the slot stays
/// taken until the device has finished the work even if the caller stops waiting.
pub(crate) async fn answer_holding_slot<T: Send + 'static>(
    slot: OwnedSemaphorePermit,
    answer: ractor::concurrency::OneshotReceiver<T>,
    timeout: Duration,
    gone: impl FnOnce() -> VramError + Send + 'static,
) -> Result<T, VramError> {
    let waiter = tokio::spawn(async move {
        let answered = tokio::time::timeout(timeout, answer).await;
        drop(slot);
        match answered {
            Ok(Ok(value)) => Ok(value),
            // The actor dropped the reply port: it went away mid-call.
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(VramError::Timeout("the device actor".to_string())),
        }
    });
    waiter
        .await
        .unwrap_or_else(|_| Err(VramError::Internal("a device call's waiter failed".into())))
}

/// Counts a caller out of the waiting line however its wait ends (admitted, timed out, or its
/// future dropped).
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
