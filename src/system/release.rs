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
    pub async fn release(&self, shard: SealedShard) -> Result<u64, VramError> {
        self.live()?;
        if shard.inner.released.swap(true, Ordering::AcqRel) {
            return Err(VramError::UnknownShard(shard.shard_id().to_string()));
        }
        let shard_ref = shard.inner.shard_ref();
        self.ask_gpu_now(shard.device(), |reply| GpuMsg::Release {
            shard: shard_ref,
            reply: Some(reply),
        })
        .await?
    }

    /// Lets a device that stopped after an integrity failure accept seals and executions
    /// again. Quarantined shards stay quarantined; release them.
    pub async fn reset_device(&self, device: u32) -> Result<(), VramError> {
        self.ask_gpu_now(device, |reply| GpuMsg::Reset { reply })
            .await?
    }
}
