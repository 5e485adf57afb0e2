//! Messages for a device's `GpuActor`: everything that touches that device's memory.

use std::time::Instant;

use ractor::RpcReplyPort;

use crate::error::VramError;
use crate::gpu::{BackendError, DeviceView};
use crate::seal::claims::ShardInfo;
use crate::seal::merkle::Hash;
use crate::types::{Fault, ProgressFn, SealSource, VerifyMode, VerifyReport, VramCapacity};

/// Names one resident shard as a particular handle saw it: a stale handle (released, or from
/// before a crash) never matches a newer shard that reuses the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRef {
    /// The shard id.
    pub shard_id: String,
    /// The handle's unique number, assigned at seal time.
    pub handle_id: u64,
}

/// A validated seal request, ready for the device.
pub struct SealJob {
    /// What the seal will say, and how it will be recorded.
    pub meta: SealMeta,
    /// Where the bytes come from.
    pub source: SealSource,
    /// Called as pieces are hashed.
    pub progress: Option<ProgressFn>,
    /// The length validated by the handle (against `max_model_size`); the source must deliver
    /// exactly this many bytes.
    pub len: u64,
}

/// The parts of a seal job that stay with the device actor once the source has been handed to
/// the hasher.
pub struct SealMeta {
    /// The shard id (validated).
    pub shard_id: String,
    /// The model reference (validated).
    pub model_ref: String,
    /// Refuse the seal unless the bytes hash to this (lowercase hex).
    pub expected_sha256: Option<String>,
    /// `(index, total)` in a tensor-parallel group.
    pub tensor_parallel: Option<(u32, u32)>,
    /// The handle's unique number.
    pub handle_id: u64,
    /// Tensor layout, when the source is a safetensors file.
    pub tensors: Option<std::sync::Arc<crate::seal::tensors::TensorMap>>,
    /// Padding to allocate in front of the shard so that its data section is 256-byte
    /// aligned in device memory (a safetensors source); 0 otherwise.
    pub lead_padding: u64,
    /// The signed-model file the bytes must be, when the caller asked.
    pub provenance: Option<SignedSource>,
}

/// The file of a verified model signature a seal's bytes must be.
#[derive(Debug, Clone)]
pub struct SignedSource {
    /// What the seal records on success.
    pub provenance: crate::provenance::Provenance,
    /// The SHA-256 the manifest lists for the file (lowercase hex).
    pub sha256: String,
}

/// What a device hands out for a lease: a view of the shard's memory (which keeps that memory
/// alive) and the shard's lease marker (which keeps it counted as used after a release).
pub struct LeaseGrant {
    /// The shard's memory.
    pub view: DeviceView,
    /// A clone of the shard table entry's marker.
    pub marker: std::sync::Arc<()>,
}

/// What a residency check compares against.
pub enum ResidencyQuery {
    /// A local handle: the shard must be resident under this handle and match `info`.
    Handle(ShardRef, Box<ShardInfo>),
    /// A `ShardInfo` from elsewhere: a resident shard with the same id must carry exactly it.
    Info(Box<ShardInfo>),
}

/// Result of hashing leaves off the actor, sent back to the actor to conclude a verification.
pub struct LeafCheck {
    /// Leaf indices checked, in the order hashed.
    pub indices: Vec<u64>,
    /// Their hashes as read from device memory now.
    pub observed: Vec<Hash>,
    /// Whether the stored leaf list still hashes to the signed root.
    pub leaves_match_root: bool,
    /// The root recomputed from the observed leaves (full verify only).
    pub observed_root: Option<Hash>,
}

/// What the handle fills in before asking a device actor to sign an attestation; the actor adds
/// the backend and device identity and checks residency in the same handler as the signature.
#[derive(Clone)]
pub struct AttestDraft {
    /// The challenger's nonce (length checked).
    pub nonce: Vec<u8>,
    /// The mode the shard was just verified in.
    pub verified_mode: crate::types::VerifyMode,
    /// When that verification passed.
    pub verified_at_unix_nanos: u64,
    /// The durable audit head, taken after the verification.
    pub audit_head: crate::types::AuditHead,
}

/// Messages handled by `GpuActor`.
pub enum GpuMsg {
    /// Allocate, upload, hash and sign a shard.
    Seal {
        job: Box<SealJob>,
        reply: RpcReplyPort<Result<ShardInfo, VramError>>,
    },
    /// Re-read a shard (or part of it) from device memory and check it against its seal.
    Verify {
        shard: ShardRef,
        info: Box<ShardInfo>,
        mode: VerifyMode,
        reply: RpcReplyPort<Result<VerifyReport, VramError>>,
    },
    /// Internal: the off-actor hashing of a `Verify` finished.
    VerifyFinished {
        shard: ShardRef,
        mode: VerifyMode,
        started: Instant,
        outcome: Result<LeafCheck, BackendError>,
        reply: Option<RpcReplyPort<Result<VerifyReport, VramError>>>,
    },
    /// A hashing job run for this actor off its mailbox (a verification's) panicked: the
    /// actor re-raises the panic and crashes, and its supervisor replaces it.
    WorkerPanicked {
        /// Which job.
        job: &'static str,
        /// The job's panic, as caught.
        payload: Box<dyn std::any::Any + Send>,
    },
    /// Is this shard resident, unquarantined and described by this info?
    Residency {
        query: ResidencyQuery,
        reply: RpcReplyPort<Result<(), VramError>>,
    },
    /// Sign an attestation for a shard just verified: residency (resident under this handle,
    /// exactly this record, not quarantined, device accepting work) is checked and the seal
    /// keeper asked for the signature within this one handler, so no quarantine can come
    /// between the check and the signature.
    Attest {
        shard: ShardRef,
        info: Box<ShardInfo>,
        draft: Box<AttestDraft>,
        reply: RpcReplyPort<Result<crate::attestation::Attestation, VramError>>,
    },
    /// Hand out a view of a resident, unquarantined shard for a lease (the facade verified it
    /// just before). The caller's code then runs on the caller's own task, never here.
    Lease {
        shard: ShardRef,
        reply: RpcReplyPort<Result<LeaseGrant, VramError>>,
    },
    /// Free a shard. `reply` is `None` when the last handle was dropped.
    Release {
        shard: ShardRef,
        reply: Option<RpcReplyPort<Result<u64, VramError>>>,
    },
    /// Memory figures.
    Capacity {
        reply: RpcReplyPort<Result<VramCapacity, VramError>>,
    },
    /// Inject a fault (simulated backend).
    InjectFault {
        fault: Fault,
        reply: RpcReplyPort<Result<(), VramError>>,
    },
    /// Accept seals and executions again after a fail-closed stop.
    Reset {
        reply: RpcReplyPort<Result<(), VramError>>,
    },
    /// Describe the device.
    Status {
        reply: RpcReplyPort<crate::types::DeviceStatus>,
    },
    /// Internal: time for the background scrub to look at the next shard.
    ScrubTick,
    /// Quarantine a member of a tensor-parallel group because another member failed
    /// verification (fail-all). A shard already quarantined keeps its own finding. Replies
    /// whether this call quarantined it.
    QuarantineForGroup {
        shard: ShardRef,
        group_id: String,
        failed_shard_id: String,
        reply: RpcReplyPort<Result<bool, VramError>>,
    },
}
