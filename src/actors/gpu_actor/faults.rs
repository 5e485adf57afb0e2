//! Fault injection on the device actor: flip bits in a shard, fail the next allocation, lose
//! the device, slow its reads, or crash the actor. Faults go through the mailbox like every
//! other mutation, so they land in a well-defined place among seals and verifications.
//! Backends decide which faults they accept (see [`Fault`]).

use super::GpuState;
use crate::error::VramError;
use crate::gpu::{AllocationId, BackendKind};
use crate::types::Fault;

impl GpuState {
    pub(super) fn inject(&mut self, fault: Fault) -> Result<(), VramError> {
        if matches!(fault, Fault::CrashActor) {
            if self.identity.backend != BackendKind::Simulated {
                return Err(VramError::Unsupported(
                    "an actor crash can only be injected with the simulated backend".into(),
                ));
            }
            // Deliberate: this fault exists to exercise the supervisor's crash handling.
            #[allow(clippy::panic)]
            {
                panic!("injected GpuActor crash on device {}", self.device());
            }
        }
        let target = self.fault_target(&fault)?;
        self.backend
            .inject_fault(&fault, target)
            .map_err(|e| self.map(e))?;
        if matches!(fault, Fault::LoseDevice) {
            self.mark_lost("injected LoseDevice fault");
        }
        Ok(())
    }

    /// The one place a fault's shard is resolved: the id must name a shard resident here, the
    /// offset must fall inside it, and the answer is the allocation behind it.
    fn fault_target(&self, fault: &Fault) -> Result<Option<AllocationId>, VramError> {
        let Some((shard_id, offset)) = fault.target() else {
            return Ok(None);
        };
        let entry = self
            .table
            .by_id(shard_id)
            .ok_or_else(|| VramError::UnknownShard(shard_id.to_string()))?;
        if offset >= entry.info.vram_bytes {
            return Err(VramError::invalid(format!(
                "offset {offset} is past the end of shard {shard_id} ({} bytes)",
                entry.info.vram_bytes
            )));
        }
        Ok(Some(entry.allocation))
    }
}
