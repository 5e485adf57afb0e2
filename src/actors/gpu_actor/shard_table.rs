//! `ShardTable`: the shards resident on one device, owned by that device's `GpuActor`.
//!
//! It is the single source of truth for capacity accounting: `used_bytes` is the sum of the
//! entries' allocated sizes (a shard's bytes plus the lead padding that aligns a safetensors
//! shard's data section), changed only by [`ShardTable::insert`] and [`ShardTable::remove`],
//! so it returns exactly to its starting value when every shard is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use ractor::RpcReplyPort;

use crate::error::VramError;
use crate::gpu::AllocationId;
use crate::messages::gpu::ShardRef;
use crate::seal::claims::ShardInfo;
use crate::seal::merkle::MerkleTree;
use crate::seal::tensors::TensorMap;
use crate::types::ChunkSpan;

/// A reply owed to a `release` that had to wait for in-flight verifications.
pub type PendingRelease = Option<RpcReplyPort<Result<u64, VramError>>>;

/// What a failed verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The first bad chunks (at most `MAX_REPORTED_BAD_CHUNKS`), in index order.
    pub chunks: Vec<ChunkSpan>,
    /// How many chunks were bad in all.
    pub count: u64,
    /// Tensors overlapping them (safetensors shards only).
    pub tensors: Vec<String>,
    /// Set when the shard itself was not found bad but another member of its tensor-parallel
    /// group was (fail-all); `chunks` is then empty.
    pub group: Option<GroupFailure>,
}

/// Why a shard was quarantined with its group: which group, and which member failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFailure {
    /// The group.
    pub group_id: String,
    /// The member whose verification failed.
    pub failed_shard_id: String,
}

/// One resident shard.
pub struct ShardEntry {
    /// The signed description.
    pub info: ShardInfo,
    /// The handle that sealed it.
    pub handle_id: u64,
    /// Its device memory.
    pub allocation: AllocationId,
    /// Bytes that memory takes on the device: the shard's length plus its lead padding.
    pub allocated_bytes: u64,
    /// Leaf hashes and root, as sealed.
    pub tree: Arc<MerkleTree>,
    /// Tensor layout, for shards sealed from safetensors bytes.
    pub tensors: Option<Arc<TensorMap>>,
    /// Set when a verification failed: what was found bad. A quarantined shard is never
    /// executed or attested again; it can only be released.
    pub quarantine: Option<Quarantine>,
    /// Verifications currently hashing this shard off the actor.
    pub in_flight: u32,
    /// Releases waiting for those verifications to finish.
    pub pending_release: Vec<PendingRelease>,
    /// Cloned into every lease of the shard: while a clone lives after the shard's release,
    /// its memory is still held (and counted as used).
    pub lease_marker: Arc<()>,
}

/// The shards on one device.
#[derive(Default)]
pub struct ShardTable {
    entries: BTreeMap<String, ShardEntry>,
    used_bytes: u64,
    /// Shards released while leased: their memory stays held until the last lease drops.
    held_by_leases: Vec<(Weak<()>, u64)>,
}

impl ShardTable {
    /// Bytes held by resident shards.
    pub fn used_bytes(&self) -> u64 {
        self.held_by_leases
            .iter()
            .filter(|(lease, _)| lease.strong_count() > 0)
            .fold(self.used_bytes, |sum, (_, bytes)| {
                sum.saturating_add(*bytes)
            })
    }

    /// Number of resident shards.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a shard with this id is resident.
    pub fn contains(&self, shard_id: &str) -> bool {
        self.entries.contains_key(shard_id)
    }

    /// Adds a shard and counts its bytes.
    pub fn insert(&mut self, entry: ShardEntry) {
        self.used_bytes = self.used_bytes.saturating_add(entry.allocated_bytes);
        if let Some(old) = self.entries.insert(entry.info.shard_id.clone(), entry) {
            // Callers check `contains` first; keep the books right even if one did not.
            self.used_bytes = self.used_bytes.saturating_sub(old.allocated_bytes);
        }
    }

    /// Removes a shard and uncounts its bytes.
    pub fn remove(&mut self, shard_id: &str) -> Option<ShardEntry> {
        let e = self.entries.remove(shard_id)?;
        self.used_bytes = self.used_bytes.saturating_sub(e.allocated_bytes);
        self.held_by_leases
            .retain(|(lease, _)| lease.strong_count() > 0);
        // One reference is the entry's own; any other is a lease that keeps the memory.
        if Arc::strong_count(&e.lease_marker) > 1 {
            self.held_by_leases
                .push((Arc::downgrade(&e.lease_marker), e.allocated_bytes));
        }
        Some(e)
    }

    /// The shard this handle sealed, or `UnknownShard` — also once its release was requested
    /// (it only waits for in-flight verifications to finish before its memory is freed).
    pub fn get(&self, r: &ShardRef) -> Result<&ShardEntry, VramError> {
        self.entries
            .get(&r.shard_id)
            .filter(|e| e.handle_id == r.handle_id && e.pending_release.is_empty())
            .ok_or_else(|| VramError::UnknownShard(r.shard_id.clone()))
    }

    /// Mutable access to the shard this handle sealed, or `UnknownShard`.
    pub fn get_mut(&mut self, r: &ShardRef) -> Result<&mut ShardEntry, VramError> {
        self.entries
            .get_mut(&r.shard_id)
            .filter(|e| e.handle_id == r.handle_id)
            .ok_or_else(|| VramError::UnknownShard(r.shard_id.clone()))
    }

    /// The shard with this id, whoever sealed it (unless its release is pending).
    pub fn by_id(&self, shard_id: &str) -> Option<&ShardEntry> {
        self.entries
            .get(shard_id)
            .filter(|e| e.pending_release.is_empty())
    }

    /// Shard ids in order.
    pub fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}
