//! Tensor-parallel groups as a caller holds them: the request to seal one ([`GroupRequest`])
//! and the handle to a sealed one ([`SealedGroup`]).
//!
//! A model too large for one GPU is split into parts, each sealed on its own device; a group
//! makes them one thing: the parts seal together (or not at all), each tagged with its
//! `shard_index` / `total_shards`, the group record ([`GroupInfo`], `vram-group-v1`) binds
//! every member's seal and device in order under the seal key, and one bad member quarantines
//! them all. `VramResidency::seal_group`, `verify_group`, `attest_group` and `release_group`
//! do the work; this module holds only the values, above the shard handles it is made of
//! (layer `shard`) and below the facade that drives it (layer `system`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::seal::group_record::GroupInfo;
use crate::shard::{SealRequest, SealedShard};

/// A request to seal a tensor-parallel group: one [`SealRequest`] per part, in `shard_index`
/// order. Each part is sealed on its own request's device and tagged `(position, part count)`;
/// a part that already carries `.tensor_parallel(i, n)` must agree with its position.
pub struct GroupRequest {
    pub(crate) group_id: String,
    pub(crate) model_ref: String,
    pub(crate) parts: Vec<SealRequest>,
}

impl GroupRequest {
    /// A group `group_id` (validated like a shard id) of the model `model_ref` (validated like
    /// a shard's model ref), with no parts yet.
    pub fn new(group_id: impl Into<String>, model_ref: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            model_ref: model_ref.into(),
            parts: Vec::new(),
        }
    }

    /// Adds the next part (its `shard_index` is the number of parts added before it).
    pub fn part(mut self, part: SealRequest) -> Self {
        self.parts.push(part);
        self
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// How many parts have been added.
    pub fn part_count(&self) -> usize {
        self.parts.len()
    }
}

impl fmt::Debug for GroupRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupRequest")
            .field("group_id", &self.group_id)
            .field("model_ref", &self.model_ref)
            .field("parts", &self.parts)
            .finish()
    }
}

/// A sealed, resident tensor-parallel group. Cheap to clone (all clones are one group).
///
/// It holds a [`SealedShard`] per member: without `release_group`, a member is released when
/// every clone of the group and every clone of that member's `SealedShard` are gone.
#[derive(Clone)]
pub struct SealedGroup {
    pub(crate) inner: Arc<GroupHandle>,
}

pub(crate) struct GroupHandle {
    pub(crate) info: GroupInfo,
    pub(crate) shards: Vec<SealedShard>,
    /// Set by `release_group`: the group (not necessarily every member clone) is gone.
    pub(crate) released: AtomicBool,
    /// Set by the first group failure (fail-all): that one is audited critically; later
    /// refusals of the failed group are only counted.
    pub(crate) failed: AtomicBool,
}

impl SealedGroup {
    pub(crate) fn new(info: GroupInfo, shards: Vec<SealedShard>) -> Self {
        Self {
            inner: Arc::new(GroupHandle {
                info,
                shards,
                released: AtomicBool::new(false),
                failed: AtomicBool::new(false),
            }),
        }
    }

    /// The group's public, signed record (`vram-group-v1`).
    pub fn info(&self) -> &GroupInfo {
        &self.inner.info
    }

    /// The members, in `shard_index` order.
    pub fn shards(&self) -> &[SealedShard] {
        &self.inner.shards
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.inner.info.group_id
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.inner.shards.len()
    }

    /// Whether the group has no members (never true for a sealed group).
    pub fn is_empty(&self) -> bool {
        self.inner.shards.is_empty()
    }
}

impl fmt::Debug for SealedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedGroup")
            .field("group_id", &self.inner.info.group_id)
            .field("model_ref", &self.inner.info.model_ref)
            .field("members", &self.inner.shards)
            .finish_non_exhaustive()
    }
}
