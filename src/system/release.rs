//! Giving device memory back: releasing a shard and resetting a device that stopped after an
//! integrity failure. Both bypass admission, since they are what frees a flooded device.

use std::sync::atomic::Ordering;

use crate::error::VramError;
use crate::messages::gpu::GpuMsg;
use crate::shard::SealedShard;

use super::*;

impl VramResidency {
    /// Frees the shard's device memory now; returns the bytes freed. Other clones of the handle
    /// become stale (`UnknownShard`). If a verification is reading the shard, the release waits
    /// for it.
    #[tracing::instrument(name = "vram.release", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device()))]
    pub async fn release(&self, shard: SealedShard) -> Result<u64, VramError> {
        self.live()?;
        if shard.inner.released.swap(true, Ordering::AcqRel) {
            return Err(VramError::UnknownShard(shard.shard_id().to_string()));
        }
        let shard_ref = shard.inner.shard_ref();
        let freed = self
            .ask_gpu_now(shard.device(), |reply| GpuMsg::Release {
                shard: shard_ref,
                reply: Some(reply),
            })
            .await??;
        tracing::debug!(bytes = freed, "released");
        Ok(freed)
    }

    /// Lets a device that stopped after an integrity failure accept seals and executions
    /// again. Quarantined shards stay quarantined; release them.
    #[tracing::instrument(name = "vram.reset_device", level = "info", skip_all, fields(device = device))]
    pub async fn reset_device(&self, device: u32) -> Result<(), VramError> {
        self.ask_gpu_now(device, |reply| GpuMsg::Reset { reply })
            .await??;
        tracing::debug!("device reset");
        Ok(())
    }
}
