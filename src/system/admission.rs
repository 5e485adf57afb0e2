//! Admission to each device's mailbox, with a deadline (load shedding): how many requests may be
//! in flight on a device, who waits and for how long, and the calls that go through it (or, for
//! releases, resets and status queries, around it).
//!
//! Each device admits at most `Config::device_queue_limit` requests at once; callers beyond
//! that wait, in arrival order, for a slot, but at most `Config::admission_timeout`: then they
//! get `VramError::Busy { device }` (retriable, counted in `vram_admission_busy_total`, not
//! audited), so a flood of callers gets a quick answer instead of queueing without end. A
//! request holds its slot until the device has answered it, which is after all its work,
//! off-actor hashing included: the wait for the answer runs in a task of its own that owns the
//! slot, so a caller that gives up (a dropped future, an HTTP client gone) does not free a
//! slot while the work it asked for still runs. Each device has its own admission, so a flood
//! on one never delays another.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use crate::actors::ask;
use crate::error::VramError;
use crate::messages::gpu::{Cancel, GpuMsg};
use crate::telemetry::ADMISSION_BUSY_TOTAL;
use crate::types::{DeviceLoad, StopCause};
use crate::validation;

use super::*;

impl VramResidency {
    /// Calls a device actor once it has room for another request: waits for a slot at most
    /// `Config::admission_timeout` (then `Busy`), and holds it until the device has answered.
    pub(super) async fn ask_gpu<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
    ) -> Result<T, VramError> {
        self.ask_gpu_cancellable(device, |port, _| build(port), |_, _| {})
            .await
    }

    /// [`VramResidency::ask_gpu`] for a request that can stop early and whose answer may hold
    /// something that must not be lost when its caller has gone. `build` gets the request's
    /// [`Cancel`] flag, which is set when the caller gives up (drops this future), so the
    /// device stops the work at its next piece. Whatever the device answers after the caller
    /// gave up (or the call timed out) goes to `undo`, with which of the two it was (a seal's
    /// undo releases a shard no handle will ever release, and counts the seal). The slot stays
    /// taken until that answer: the device is busy until its work has really stopped.
    pub(super) async fn ask_gpu_cancellable<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>, Cancel) -> GpuMsg,
        undo: impl FnOnce(Result<T, VramError>, Abandoned) + Send + 'static,
    ) -> Result<T, VramError> {
        validation::validate_device(device, self.inner.device_count)?;
        let admission = usize::try_from(device)
            .ok()
            .and_then(|i| self.inner.admission.get(i))
            .ok_or_else(|| VramError::Internal("no admission for a valid device".into()))?;
        let slot = admission.enter(device).await?;
        let gpu = self.gpu(device)?;
        let (port, answer) = ractor::concurrency::oneshot();
        let inner = Arc::clone(&self.inner);
        let cancel = Cancel::new();
        if gpu.cast(build(port.into(), cancel.clone())).is_err() {
            return Err(device_gone(&inner, device));
        }
        let gone = move || device_gone(&inner, device);
        answer_holding_slot(slot, answer, self.inner.call_timeout, cancel, gone, undo).await
    }

    /// Calls a device actor without waiting for room: for releases, resets and status queries,
    /// which must always get through (releases and resets are what frees a flooded device; the
    /// actor answers status queries between requests, hashing runs off it).
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
            move || device_gone(&inner, device),
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

/// The error for a device actor that went away mid-call: it crashed (and is being replaced,
/// or already was) or it stopped for good, as the directory says; or the system is shutting
/// down.
fn device_gone(inner: &Inner, device: u32) -> VramError {
    if inner.shut_down.load(Ordering::Acquire) {
        return VramError::ShuttingDown;
    }
    let cause = inner
        .directory
        .gpu(device)
        .err()
        .unwrap_or(StopCause::Restarting);
    VramError::DeviceStopped { device, cause }
}

/// Why a request's answer went to its undo instead of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abandoned {
    /// The caller dropped its future: the request was cancelled (its [`Cancel`] set), and
    /// nobody has counted it yet.
    CallerLeft,
    /// The call timeout passed: the caller already got (and counted) `Timeout`; the request
    /// was cancelled too.
    TimedOut,
}

/// Waits for a device's answer while holding its slot. The slot stays taken until the device
/// is done with the request, whoever stops waiting first: a task of its own owns it. When the
/// caller gives up (its future dropped) or the call timeout passes, that task sets the
/// request's `cancel` flag so the device stops the work at its next piece; then it keeps
/// waiting for the device's answer, hands it to `undo` (a seal finished for nobody is
/// released, not leaked), and only then frees the slot, so `device_load` counts the work until
/// it has really stopped. (Closing the reply port instead would free the slot at once: a
/// closed oneshot receiver cannot tell when its sender is done.) An answer that reaches the
/// waiter just as the caller leaves is not lost either: it travels in a [`Delivery`], which
/// hands it to `undo` if the caller never takes it.
async fn answer_holding_slot<T, U>(
    slot: OwnedSemaphorePermit,
    mut answer: ractor::concurrency::OneshotReceiver<T>,
    timeout: Duration,
    cancel: Cancel,
    gone: impl FnOnce() -> VramError + Send + 'static,
    undo: U,
) -> Result<T, VramError>
where
    T: Send + 'static,
    U: FnOnce(Result<T, VramError>, Abandoned) + Send + 'static,
{
    enum Ended<T> {
        Answered(Result<T, tokio::sync::oneshot::error::RecvError>),
        CallerLeft,
        TimedOut,
    }
    let (mut to_caller, from_waiter) = tokio::sync::oneshot::channel::<Delivery<T, U>>();
    crate::actors::spans::spawn(async move {
        let ended = tokio::select! {
            // An answer that is ready wins over a timeout or a leaving caller that are too.
            biased;
            answered = &mut answer => Ended::Answered(answered),
            () = to_caller.closed() => Ended::CallerLeft,
            () = tokio::time::sleep(timeout) => Ended::TimedOut,
        };
        match ended {
            Ended::Answered(answered) => {
                drop(slot);
                // The actor dropped the reply port unanswered: it went away mid-call.
                let delivery = match answered {
                    Ok(value) => Delivery::answer(value, undo),
                    Err(_) => Delivery::failed(gone()),
                };
                // A failed send drops the delivery, which hands the answer to `undo`.
                let _ = to_caller.send(delivery);
            }
            Ended::CallerLeft | Ended::TimedOut => {
                // Either way nobody will take the result: stop the work.
                cancel.cancel();
                let abandoned = if matches!(ended, Ended::CallerLeft) {
                    Abandoned::CallerLeft
                } else {
                    Abandoned::TimedOut
                };
                let _ = to_caller.send(Delivery::failed(VramError::Timeout(
                    "the device actor".to_string(),
                )));
                // Resolves when the device answers or drops the port: its work is over
                // either way, and the undo hears which (a seal is counted even when its
                // device died under it).
                let late = answer.await.map_err(|_| gone());
                undo(late, abandoned);
                drop(slot);
            }
        }
    });
    match from_waiter.await {
        Ok(mut delivery) => delivery.take(),
        Err(_) => Err(VramError::Internal("a device call's waiter failed".into())),
    }
}

/// A device's answer on its way from the waiter to the caller. Dropped untaken (the caller
/// left as it was sent, or after it was sent but before it was polled), it hands the answer to
/// its `undo` as [`Abandoned::CallerLeft`].
struct Delivery<T, U: FnOnce(Result<T, VramError>, Abandoned)> {
    outcome: Option<Result<T, VramError>>,
    undo: Option<U>,
}

impl<T, U: FnOnce(Result<T, VramError>, Abandoned)> Delivery<T, U> {
    fn answer(value: T, undo: U) -> Self {
        Self {
            outcome: Some(Ok(value)),
            undo: Some(undo),
        }
    }

    fn failed(error: VramError) -> Self {
        Self {
            outcome: Some(Err(error)),
            undo: None,
        }
    }

    /// The outcome, for the caller (once).
    fn take(&mut self) -> Result<T, VramError> {
        self.outcome.take().unwrap_or_else(|| {
            Err(VramError::Internal(
                "a device answer was taken twice".into(),
            ))
        })
    }
}

impl<T, U: FnOnce(Result<T, VramError>, Abandoned)> Drop for Delivery<T, U> {
    fn drop(&mut self) {
        if let (Some(Ok(value)), Some(undo)) = (self.outcome.take(), self.undo.take()) {
            undo(Ok(value), Abandoned::CallerLeft);
        }
    }
}

/// Admission to one device's mailbox: at most `limit` requests in flight; callers beyond that
/// wait (in arrival order) for a permit, at most `timeout`. The permit is held until the reply
/// arrives, so the mailbox never holds more than `limit` caller requests (plus the actor's own
/// internal messages, one per request at most).
pub(super) struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    timeout: Duration,
    waiting: Arc<AtomicUsize>,
}

impl Admission {
    pub(super) fn new(limit: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            timeout,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a slot on `device`, at most the admission timeout; the slot is given back when
    /// the permit is dropped.
    async fn enter(&self, device: u32) -> Result<OwnedSemaphorePermit, VramError> {
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

    fn load(&self) -> DeviceLoad {
        DeviceLoad {
            in_flight: self.limit.saturating_sub(self.permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }
}

/// Counts a caller out of the waiting line however its wait ends (admitted, timed out, or its
/// future dropped).
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
