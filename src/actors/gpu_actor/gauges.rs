//! The device's memory gauges (`vram_device_{total,used,available}_bytes{gpu_device}`, see
//! [`crate::telemetry`]). The actor owns the books, so it is the one that publishes them: after
//! every message that can change them, and when it starts and stops.

use super::GpuState;
use crate::messages::gpu::GpuMsg;

impl GpuState {
    /// Publishes the device's current memory figures.
    pub(super) fn publish_capacity(&self) {
        crate::telemetry::publish_capacity(&self.capacity());
    }
}

/// Whether handling `message` can change the device's memory figures: seals (a piece that
/// ends its seal early publishes them itself), releases (also
/// the ones a finished verification lets go ahead), faults, and the scrub tick, which refreshes
/// the gauges now and then so a real device's free memory, shared with other processes, stays
/// current. Residency checks, executions and status queries change nothing, and skipping them
/// keeps the device's free-memory query off the hot signature-only path.
pub(super) fn may_change_capacity(message: &GpuMsg) -> bool {
    matches!(
        message,
        GpuMsg::Seal { .. }
            | GpuMsg::SealEnded { .. }
            | GpuMsg::VerifyFinished { .. }
            | GpuMsg::Release { .. }
            | GpuMsg::InjectFault { .. }
            | GpuMsg::Capacity { .. }
            | GpuMsg::ScrubTick
    )
}
