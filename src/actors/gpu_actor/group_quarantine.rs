//! Tensor-parallel groups on the device actor: quarantining a member because another member of
//! its group failed verification (fail-all).
//!
//! The device actor knows nothing else about groups: members are ordinary shards, sealed and
//! verified like any other; `VramResidency::verify_group` decides that a group failed and asks
//! each member's device to quarantine it. The quarantine is the same one a failed verification
//! sets, so every path that refuses a quarantined shard (`execute`, `attest`, residency checks,
//! verification) refuses a group-quarantined member too, with [`group_quarantined`] as the
//! error. The member's device is not stopped: nothing on it is known to be wrong (the failed
//! member's own device was stopped when that member failed).

use super::GpuState;
use crate::actors::gpu_actor::shard_table::{GroupFailure, Quarantine};
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::messages::gpu::ShardRef;

impl GpuState {
    /// Quarantines `shard` because member `failed_shard_id` of group `group_id` failed. A
    /// shard already quarantined (by its own failed verification, or by an earlier group
    /// failure) keeps its first finding. Returns whether this call quarantined it.
    pub(super) fn quarantine_for_group(
        &mut self,
        shard: &ShardRef,
        group_id: String,
        failed_shard_id: String,
    ) -> Result<bool, VramError> {
        let device = self.device();
        let entry = self.table.get_mut(shard)?;
        if entry.quarantine.is_some() {
            return Ok(false);
        }
        entry.quarantine = Some(Quarantine {
            chunks: Vec::new(),
            count: 0,
            tensors: Vec::new(),
            group: Some(GroupFailure {
                group_id: group_id.clone(),
                failed_shard_id: failed_shard_id.clone(),
            }),
        });
        tracing::error!(
            gpu_device = device,
            shard_id = %shard.shard_id,
            group_id = %group_id,
            failed_shard_id = %failed_shard_id,
            "shard quarantined with its group after another member failed verification"
        );
        self.audit(AuditEvent::GroupMemberQuarantined {
            shard_id: shard.shard_id.clone(),
            gpu_device: device,
            group_id,
            failed_shard_id,
        });
        Ok(true)
    }
}

/// The error every refused call on a group-quarantined shard gets.
pub(super) fn group_quarantined(shard_id: &str, group: &GroupFailure) -> VramError {
    VramError::GroupQuarantined {
        shard_id: shard_id.to_string(),
        group_id: group.group_id.clone(),
        failed_shard_id: group.failed_shard_id.clone(),
    }
}
