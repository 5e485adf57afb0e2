//! Where each device's current `GpuActor` can be found.
//!
//! A device's actor can be replaced (the supervisor restarts a crashed one), so handles do not
//! keep an `ActorRef` of their own: they look the device up here. Each slot is a `watch`
//! channel written only by the supervisor; readers take a cheap clone of the current ref.
//! `None` means the device has no actor right now (shutting down, or between crash and restart).

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::watch;

use crate::messages::gpu::GpuMsg;

type Slot = Option<ActorRef<GpuMsg>>;

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
    let (tx, rx): (Vec<_>, Vec<_>) = (0..count).map(|_| watch::channel(None)).unzip();
    (
        DirectoryWriter { slots: tx },
        DeviceDirectory { slots: rx.into() },
    )
}

impl DeviceDirectory {
    /// The current actor of `device`, if any.
    pub fn gpu(&self, device: u32) -> Option<ActorRef<GpuMsg>> {
        let i = usize::try_from(device).ok()?;
        self.slots.get(i)?.borrow().clone()
    }
}

impl DirectoryWriter {
    /// Publishes (or clears) the actor of `device`.
    pub fn set(&self, device: u32, actor: Option<ActorRef<GpuMsg>>) {
        if let Some(slot) = usize::try_from(device).ok().and_then(|i| self.slots.get(i)) {
            slot.send_replace(actor);
        }
    }
}
