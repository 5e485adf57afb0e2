//! Where each device's current `GpuActor` can be found.
//!
//! A device's actor can be replaced (the supervisor restarts a crashed one), so handles do not
//! keep an `ActorRef` of their own: they look the device up here. Each slot is a `watch`
//! channel written only by the supervisor; readers take a cheap clone of the current ref.
//! A device without an actor says why ([`StopCause`]): restarting after a crash, crashed for
//! good (restart budget spent or restart failed), or shutting down.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::watch;

use crate::messages::gpu::GpuMsg;
use crate::types::StopCause;

/// One device's entry: its current actor, or why it has none.
pub type Slot = Result<ActorRef<GpuMsg>, StopCause>;

/// Read side, held by every public handle and `SealedShard`.
#[derive(Clone)]
pub struct DeviceDirectory {
    slots: Arc<[watch::Receiver<Slot>]>,
}

/// Write side, held by the supervisor.
pub struct DirectoryWriter {
    slots: Vec<watch::Sender<Slot>>,
}

/// A directory of `count` empty slots.
pub fn directory(count: u32) -> (DirectoryWriter, DeviceDirectory) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..count)
        .map(|_| watch::channel(Err(StopCause::Restarting)))
        .unzip();
    (
        DirectoryWriter { slots: tx },
        DeviceDirectory { slots: rx.into() },
    )
}

impl DeviceDirectory {
    /// The current actor of `device`, or why it has none.
    pub fn gpu(&self, device: u32) -> Slot {
        usize::try_from(device)
            .ok()
            .and_then(|i| self.slots.get(i))
            .map_or(Err(StopCause::ShuttingDown), |slot| slot.borrow().clone())
    }
}

impl DirectoryWriter {
    /// Publishes the actor of `device`, or why it has none.
    pub fn set(&self, device: u32, actor: Slot) {
        if let Some(slot) = usize::try_from(device).ok().and_then(|i| self.slots.get(i)) {
            // The old value (the previous actor, or why there was none) is not needed.
            let _previous = slot.send_replace(actor);
        }
    }
}
