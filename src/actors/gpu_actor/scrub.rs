//! The background scrub: on each tick, re-verify the next resident shard in full, round robin,
//! between requests. It runs through the same verification path as a caller's `Full` verify
//! (and the same fail-closed on a mismatch); a rate limit spaces the checks so a scrub never
//! reads more than its budget of device memory per second.

use std::time::{Duration, Instant};

use ractor::ActorRef;

use super::GpuState;
use crate::messages::gpu::{Cancel, GpuMsg, ShardRef};
use crate::types::VerifyMode;

impl GpuState {
    pub(super) fn scrub_next(&mut self, myself: &ActorRef<GpuMsg>) {
        if self.lost || Instant::now() < self.scrub_not_before {
            return;
        }
        let ids = self.table.ids();
        if ids.is_empty() {
            return;
        }
        let i = self.scrub_cursor.checked_rem(ids.len()).unwrap_or(0);
        self.scrub_cursor = self.scrub_cursor.wrapping_add(1);
        let Some(id) = ids.get(i) else { return };
        let Some(entry) = self.table.by_id(id) else {
            return;
        };
        if entry.quarantine.is_some() || entry.in_flight > 0 {
            return;
        }
        let shard = ShardRef {
            shard_id: id.clone(),
            handle_id: entry.handle_id,
        };
        if let Some(rate) = self.args.settings.scrub_bytes_per_sec.filter(|r| *r > 0) {
            let secs = entry.info.vram_bytes as f64 / rate as f64;
            let wait = Duration::from_secs_f64(secs.clamp(0.0, 86_400.0));
            self.scrub_not_before = Instant::now()
                .checked_add(wait)
                .unwrap_or_else(Instant::now);
        }
        tracing::debug!(gpu_device = self.device(), shard_id = %shard.shard_id, "scrubbing");
        let _ = self.start_verify(myself, shard, VerifyMode::Full, Cancel::new(), None);
    }
}
