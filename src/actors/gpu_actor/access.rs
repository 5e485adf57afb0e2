//! What callers may do with a resident shard besides verifying it: ask whether exactly that
//! record is resident (signature-only verification, a peer's `ShardInfo`), and run a closure
//! against its device memory (`execute`).
//!
//! `execute` runs the closure on this actor, in mailbox order, so no release, fault or seal on
//! the device can interleave with it; a panic in the caller's closure is caught and reported
//! without taking the device down.

use std::panic::AssertUnwindSafe;

use super::GpuState;
use super::verify::quarantined;
use crate::error::VramError;
use crate::gpu::DeviceView;
use crate::messages::gpu::{ExecuteFn, ResidencyQuery, ShardRef};

impl GpuState {
    pub(super) fn residency(&self, query: ResidencyQuery) -> Result<(), VramError> {
        self.live()?;
        let (entry, info) = match &query {
            ResidencyQuery::Handle(r, info) => (self.table.get(r)?, info),
            ResidencyQuery::Info(info) => (
                self.table
                    .by_id(&info.shard_id)
                    .ok_or_else(|| VramError::UnknownShard(info.shard_id.clone()))?,
                info,
            ),
        };
        if entry.info != **info {
            return Err(VramError::UnknownShard(info.shard_id.clone()));
        }
        if let Some(bad) = &entry.quarantine {
            return Err(quarantined(&info.shard_id, bad));
        }
        Ok(())
    }

    pub(super) fn execute(
        &mut self,
        shard: &ShardRef,
        job: ExecuteFn,
    ) -> Result<Box<dyn std::any::Any + Send>, VramError> {
        self.accepting_work()?;
        let entry = self.table.get(shard)?;
        if let Some(bad) = &entry.quarantine {
            return Err(quarantined(&shard.shard_id, bad));
        }
        let allocation = entry.allocation;
        let len = entry.info.vram_bytes;
        let ptr = self.args.backend.device_ptr(allocation);
        let reader = self.args.backend.reader(allocation);
        let (ptr, reader) = match (ptr, reader) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) | (_, Err(e)) => return Err(self.map(e)),
        };
        let view = DeviceView {
            gpu_device: self.device(),
            shard_id: shard.shard_id.clone(),
            len,
            ptr,
            reader,
        };
        // The closure is the caller's code: a panic in it must not take the device down.
        std::panic::catch_unwind(AssertUnwindSafe(|| job(&view))).map_err(|_| {
            VramError::ExecutionPanicked {
                shard_id: shard.shard_id.clone(),
            }
        })
    }
}
