//! Messages for a device's `GpuActor`: everything that touches that device's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// One staging piece on its way from the hasher to the uploader: a range of a shared buffer
/// (the caller's whole `Vec` for in-memory seals, one read buffer for streams).
///
/// Fresh host memory is expensive to touch (every page faults on first write) and to give back,
/// so buffers are not thrown away: when the uploader drops the last reference to a stream's
/// buffer it goes back to the reader for the next piece, and a large in-memory source is freed
/// on a background thread rather than on the seal's critical path.
pub struct Staged {
    pub(crate) buf: Option<Arc<Vec<u8>>>,
    pub(crate) range: std::ops::Range<usize>,
    pub(crate) recycle: Option<std::sync::mpsc::Sender<Vec<u8>>>,
}

impl Staged {
    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf
            .as_ref()
            .and_then(|b| b.get(self.range.clone()))
            .unwrap_or_default()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        let Ok(bytes) = Arc::try_unwrap(buf) else {
            return; // someone else still holds it and will do this
        };
        match &self.recycle {
            // If the reader has finished, the buffer comes back to us and is freed here.
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(bytes)) = tx.send(bytes) {
                    free_elsewhere(bytes);
                }
            }
            None => free_elsewhere(bytes),
        }
    }
}

/// Frees a large buffer on a short-lived background thread: unmapping hundreds of MiB takes
/// tens of milliseconds that a seal should not wait for.
pub(crate) fn free_elsewhere(bytes: Vec<u8>) {
    if bytes.capacity() >= 1 << 20 {
        let _ = std::thread::Builder::new()
            .name("vram-free".into())
            .spawn(move || drop(bytes));
    }
}

/// A caller's "stop": the facade sets it when the caller of a seal or a verification gives up
/// (drops its future), and the work checks it at every staging piece — the seal's hashing
/// thread, its pump and the device actor's piece handler, a verification's hashing — so the
/// work stops soon and frees what it holds. Cheap to clone; all clones are one flag.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Default)]
struct CancelInner {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    /// A flag not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag and wakes whoever waits in [`Cancel::cancelled`].
    pub fn cancel(&self) {
        self.0.flag.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether the caller gave up.
    pub fn is_cancelled(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }

    /// Resolves once the caller gives up (at once if it already has).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
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
    /// Set when the caller gives up: the seal stops at its next staging piece.
    pub cancel: Cancel,
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
    /// The safetensors header `tensors` (and the caller's tensor list) were parsed from, when
    /// the source had one: the bytes sealed must start with it, checked before signing.
    pub header: Option<crate::seal::tensors::HeaderDigest>,
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
    /// The root recomputed from the observed leaves (a full verify that read every leaf).
    pub observed_root: Option<Hash>,
    /// The caller gave up and the hashing stopped between pieces: `indices` and `observed` hold
    /// only the leaves hashed until then (the first pieces of the plan), and `observed_root` is
    /// `None`. They are still judged: a bad leaf among them fails the shard closed.
    pub cancelled: bool,
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
    /// Internal: the next staging piece of seal `seal` (numbered by the actor), from the
    /// seal's pump; `done` is answered once it is copied into the seal's allocation (dropped
    /// when the seal has ended), so at most one piece per seal waits in the mailbox.
    SealPiece {
        seal: u64,
        piece: Staged,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Internal: seal `seal`'s source is exhausted and hashed (`Ok`: its SHA-256 and leaves),
    /// or the seal stopped (hashing failed, the source stalled, the caller cancelled).
    SealEnded {
        seal: u64,
        hashed: Result<(Hash, Vec<Hash>), VramError>,
    },
    /// Re-read a shard (or part of it) from device memory and check it against its seal.
    Verify {
        shard: ShardRef,
        info: Box<ShardInfo>,
        mode: VerifyMode,
        /// Set when the caller gives up: hashing stops at its next piece.
        cancel: Cancel,
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
