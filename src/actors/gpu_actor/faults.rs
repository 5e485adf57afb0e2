//! Fault injection on the device actor: flip bits in a shard, fail the next allocation, lose
//! the device, slow its reads, or crash the actor. Faults go through the mailbox like every
//! other mutation, so they land in a well-defined place among seals and verifications.
//! Backends decide which faults they accept (the simulated device accepts all of them).

use super::GpuState;
use crate::error::VramError;
use crate::gpu::{BackendFault, BackendKind};
use crate::types::Fault;

impl GpuState {
    pub(super) fn inject(&mut self, fault: Fault) -> Result<(), VramError> {
        let backend_fault = match fault {
            Fault::FlipBits {
                shard_id,
                offset,
                mask,
            } => {
                let entry = self
                    .table
                    .by_id(&shard_id)
                    .ok_or_else(|| VramError::UnknownShard(shard_id.clone()))?;
                if offset >= entry.info.vram_bytes {
                    return Err(VramError::invalid(format!(
                        "offset {offset} is past the end of shard {shard_id} ({} bytes)",
                        entry.info.vram_bytes
                    )));
                }
                BackendFault::FlipBits {
                    allocation: entry.allocation,
                    offset,
                    mask,
                }
            }
            Fault::FailNextAlloc => BackendFault::FailNextAlloc,
            Fault::LoseDevice => BackendFault::LoseDevice,
            Fault::SlowDevice { millis_per_read } => BackendFault::SlowDevice { millis_per_read },
            Fault::CrashActor if self.identity.backend != BackendKind::Simulated => {
                return Err(VramError::Unsupported(
                    "fault injection needs the simulated backend".into(),
                ));
            }
            Fault::CrashActor => {
                // Deliberate: this fault exists to exercise the supervisor's crash handling.
                #[allow(clippy::panic)]
                {
                    panic!("injected GpuActor crash on device {}", self.device());
                }
            }
        };
        let lose = matches!(backend_fault, BackendFault::LoseDevice);
        self.backend
            .inject_fault(backend_fault)
            .map_err(|e| self.map(e))?;
        if lose {
            self.mark_lost("injected LoseDevice fault");
        }
        Ok(())
    }
}
