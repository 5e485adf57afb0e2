//! `GpuActor`: one per device; owns the backend, the [`ShardTable`] and the capacity books.
//!
//! Every mutation of the device's memory — allocate, upload, free, fault — happens in this
//! actor's handlers, in mailbox order. Hashing is the expensive part, and it runs elsewhere
//! (see [`crate::actors::hashing`]):
//!
//! * **seal** streams the source through bounded staging buffers on a blocking thread that
//!   hashes each buffer (plain SHA-256 and Merkle leaves side by side on the rayon pool) and
//!   hands it over a small channel to this actor, which uploads it. Host memory stays
//!   O(staging), and hashing overlaps the upload.
//! * **verify** takes a [`DeviceReader`](crate::gpu::DeviceReader) for the shard, counts the verification as in flight,
//!   and hashes on the blocking pool; the actor keeps serving its mailbox and concludes the
//!   verification when the result comes back as [`GpuMsg::VerifyFinished`]. A release that
//!   arrives meanwhile waits until no verification is reading the shard.
//!
//! Fail-closed: a verification that finds a bad chunk quarantines the shard, stops the device for
//! new seals and executions until `reset_device`, and emits a critical audit event.

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::actors::ask;
use crate::actors::hashing::{Staged, hash_in_memory, hash_leaves, hash_stream, sample_indices};
use crate::actors::shard_table::{Quarantine, ShardEntry, ShardTable};
use crate::audit::events::{AuditEvent, Severity};
use crate::error::VramError;
use crate::gpu::{BackendError, BackendFault, DeviceBackend, DeviceIdentity};
use crate::messages::audit::AuditMsg;
use crate::messages::gpu::{ExecuteFn, GpuMsg, LeafCheck, ResidencyQuery, SealJob, ShardRef};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::claims::{SEAL_FORMAT, ShardInfo};
use crate::seal::merkle::{Hash, MerkleTree, chunk_range, leaf_count};
use crate::seal::tensors::TensorMap;
use crate::shard::{
    ChunkSpan, DeviceView, Fault, ProgressFn, SealSource, VerifyMode, VerifyReport, VramCapacity,
};

/// The actor.
pub struct GpuActor;

/// Where a verification's result goes (`None` for background scrubs).
type VerifyReply = ractor::RpcReplyPort<Result<VerifyReport, VramError>>;

/// What a `GpuActor` needs to start.
pub struct GpuArgs {
    pub device: u32,
    pub backend: Box<dyn DeviceBackend>,
    pub settings: DeviceSettings,
    pub seal_keeper: ActorRef<SealKeeperMsg>,
    pub audit: ActorRef<AuditMsg>,
}

/// Settings every device actor is started with (the same for all devices; the supervisor keeps
/// one copy to start replacements from).
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub worker_id: String,
    pub chunk_size: u64,
    pub headroom_bytes: u64,
    pub staging_bytes: usize,
    pub call_timeout: Duration,
    pub seal_stall_timeout: Duration,
    pub scrub_interval: Option<Duration>,
    pub scrub_bytes_per_sec: Option<u64>,
}

/// The actor's state.
pub struct GpuState {
    args: GpuArgs,
    identity: DeviceIdentity,
    table: ShardTable,
    stopped: Option<String>,
    lost: bool,
    scrub_cursor: usize,
    scrub_not_before: Instant,
}

/// What `devices` reports about one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    /// Identity and memory size.
    pub identity: DeviceIdentity,
    /// Why the device is stopped, if it is.
    pub stopped: Option<String>,
    /// Whether the device is lost.
    pub lost: bool,
    /// Resident shards.
    pub shards: usize,
    /// Bytes held by resident shards.
    pub used_bytes: u64,
    /// VRAM-only policy status.
    pub policy: String,
}

impl GpuState {
    fn device(&self) -> u32 {
        self.args.device
    }

    fn audit(&self, event: AuditEvent) {
        metrics::counter!("vram_events_total", "type" => event.type_name(), "gpu_device" => self.args.device.to_string()).increment(1);
        // Emission never waits: a cast only queues the event.
        let _ = self.args.audit.cast(AuditMsg::Emit(Utc::now(), event));
    }

    fn map(&mut self, e: BackendError) -> VramError {
        let device = self.device();
        match e {
            BackendError::OutOfMemory { needed, available } => {
                VramError::InsufficientVram { needed, available }
            }
            BackendError::AllocationFailed(reason) => {
                VramError::AllocationFailed { device, reason }
            }
            BackendError::DeviceLost => {
                self.mark_lost("the backend reported the device lost");
                VramError::DeviceLost { device }
            }
            BackendError::UnknownAllocation => {
                VramError::Unsupported("the backend lost track of an allocation".into())
            }
            BackendError::OutOfRange { .. } => VramError::invalid(e.to_string()),
            BackendError::Unsupported(m) => VramError::Unsupported(m),
            BackendError::Driver(m) => VramError::Cuda(m),
        }
    }

    fn mark_lost(&mut self, why: &str) {
        if !self.lost {
            self.lost = true;
            self.audit(AuditEvent::DeviceStopped {
                gpu_device: self.device(),
                reason: format!("device lost: {why}"),
            });
        }
    }

    fn available(&self) -> u64 {
        let total = self.identity.total_bytes;
        let books = total
            .saturating_sub(self.table.used_bytes())
            .saturating_sub(self.args.settings.headroom_bytes);
        // A real device may have less free than our books say (other processes); trust the
        // smaller figure.
        match self.args.backend.free_bytes() {
            Ok(free) => books.min(free.saturating_sub(self.args.settings.headroom_bytes)),
            Err(_) => books,
        }
    }

    fn capacity(&self) -> VramCapacity {
        VramCapacity {
            gpu_device: self.device(),
            total_bytes: self.identity.total_bytes,
            used_bytes: self.table.used_bytes(),
            available_bytes: self.available(),
            headroom_bytes: self.args.settings.headroom_bytes,
        }
    }

    fn accepting_work(&self) -> Result<(), VramError> {
        let device = self.device();
        if self.lost {
            return Err(VramError::DeviceLost { device });
        }
        if self.stopped.is_some() {
            return Err(VramError::DeviceStopped { device });
        }
        Ok(())
    }

    /// Frees a shard's memory, drops it from the table and audits it; answers waiting releases.
    fn release_now(&mut self, shard_id: &str) -> Result<u64, VramError> {
        let Some(entry) = self.table.remove(shard_id) else {
            return Err(VramError::UnknownShard(shard_id.to_string()));
        };
        // Free even when the device is lost: the memory is gone either way and the books must
        // come back to their starting value.
        let _ = self.args.backend.free(entry.allocation);
        let freed = entry.info.vram_bytes;
        self.audit(AuditEvent::VramDeallocated {
            shard_id: shard_id.to_string(),
            freed_bytes: freed,
            remaining_used: self.table.used_bytes(),
            gpu_device: self.device(),
        });
        for reply in entry.pending_release.into_iter().flatten() {
            let _ = reply.send(Ok(freed));
        }
        Ok(freed)
    }

    fn abort_seal(&mut self, shard_id: &str, allocation: crate::gpu::AllocationId, len: u64) {
        let _ = self.args.backend.free(allocation);
        self.audit(AuditEvent::VramDeallocated {
            shard_id: shard_id.to_string(),
            freed_bytes: len,
            remaining_used: self.table.used_bytes(),
            gpu_device: self.device(),
        });
    }

    async fn seal(&mut self, job: SealJob) -> Result<ShardInfo, VramError> {
        self.accepting_work()?;
        let device = self.device();
        if self.table.contains(&job.shard_id) {
            return Err(VramError::invalid(format!(
                "shard_id {} is already resident on device {device}; release it first",
                job.shard_id
            )));
        }
        let len = job.len;
        let available = self.available();
        if len > available {
            self.audit(AuditEvent::VramAllocationFailed {
                shard_id: job.shard_id.clone(),
                requested_bytes: len,
                available_bytes: available,
                reason: "insufficient VRAM".into(),
                gpu_device: device,
            });
            return Err(VramError::InsufficientVram {
                needed: len,
                available,
            });
        }
        let allocation = match self.args.backend.allocate(len) {
            Ok(a) => a,
            Err(e) => {
                let err = self.map(e);
                self.audit(AuditEvent::VramAllocationFailed {
                    shard_id: job.shard_id.clone(),
                    requested_bytes: len,
                    available_bytes: available,
                    reason: err.to_string(),
                    gpu_device: device,
                });
                return Err(err);
            }
        };
        self.audit(AuditEvent::VramAllocated {
            shard_id: job.shard_id.clone(),
            requested_bytes: len,
            allocated_bytes: len,
            available_bytes: available.saturating_sub(len),
            used_bytes: self.table.used_bytes().saturating_add(len),
            gpu_device: device,
        });

        let SealJob {
            shard_id,
            model_ref,
            source,
            expected_sha256,
            tensor_parallel,
            progress,
            handle_id,
            tensors,
            len: _,
        } = job;
        let job = SealMeta {
            shard_id,
            model_ref,
            expected_sha256,
            tensor_parallel,
            handle_id,
            tensors,
        };
        match self
            .upload_and_hash(source, progress, allocation, len)
            .await
        {
            Ok((digest, tree)) => {
                let digest_hex = hex::encode(digest);
                if let Some(expected) = &job.expected_sha256 {
                    if *expected != digest_hex {
                        self.audit(AuditEvent::SealRejected {
                            shard_id: job.shard_id.clone(),
                            gpu_device: device,
                            reason: "the bytes do not match the expected SHA-256".into(),
                            expected_digest: expected.clone(),
                            actual_digest: digest_hex.clone(),
                        });
                        self.abort_seal(&job.shard_id, allocation, len);
                        return Err(VramError::DigestMismatch {
                            expected: expected.clone(),
                            actual: digest_hex,
                        });
                    }
                }
                let (shard_index, total_shards) = match job.tensor_parallel {
                    Some((i, t)) => (Some(i), Some(t)),
                    None => (None, None),
                };
                let mut info = ShardInfo {
                    format: SEAL_FORMAT.to_string(),
                    worker_id: self.args.settings.worker_id.clone(),
                    shard_id: job.shard_id.clone(),
                    model_ref: job.model_ref.clone(),
                    gpu_device: device,
                    vram_bytes: len,
                    digest: digest_hex,
                    merkle_root: hex::encode(tree.root()),
                    chunk_size: self.args.settings.chunk_size,
                    sealed_at_unix_nanos: now_unix_nanos(),
                    shard_index,
                    total_shards,
                    signature: String::new(),
                };
                let signed = ask(
                    &self.args.seal_keeper,
                    |reply| SealKeeperMsg::Sign {
                        info: Box::new(info.clone()),
                        reply,
                    },
                    self.args.settings.call_timeout,
                    "the seal keeper",
                    || VramError::ShuttingDown,
                )
                .await
                .and_then(|r| r);
                match signed {
                    Ok(sig) => info.signature = sig,
                    Err(e) => {
                        self.abort_seal(&job.shard_id, allocation, len);
                        return Err(e);
                    }
                }
                self.table.insert(ShardEntry {
                    info: info.clone(),
                    handle_id: job.handle_id,
                    allocation,
                    tree: Arc::new(tree),
                    tensors: job.tensors.clone(),
                    quarantine: None,
                    in_flight: 0,
                    pending_release: Vec::new(),
                });
                self.audit(AuditEvent::VramSealed {
                    shard_id: info.shard_id.clone(),
                    gpu_device: device,
                    vram_bytes: len,
                    digest: info.digest.clone(),
                    merkle_root: info.merkle_root.clone(),
                    model_ref: info.model_ref.clone(),
                });
                Ok(info)
            }
            Err(e) => {
                self.abort_seal(&job.shard_id, allocation, len);
                Err(e)
            }
        }
    }

    /// Streams the source to the device while a blocking thread hashes it: the hasher works on
    /// staging piece k+1 while this actor uploads piece k.
    async fn upload_and_hash(
        &mut self,
        source: SealSource,
        progress: Option<ProgressFn>,
        allocation: crate::gpu::AllocationId,
        len: u64,
    ) -> Result<(Hash, MerkleTree), VramError> {
        let chunk = usize::try_from(self.args.settings.chunk_size)
            .map_err(|_| VramError::invalid("chunk_size does not fit this platform"))?;
        // Staging pieces hold whole chunks so leaves never straddle two pieces.
        let staging = self
            .args
            .settings
            .staging_bytes
            .div_ceil(chunk)
            .max(1)
            .saturating_mul(chunk);
        let (tx, mut rx) = mpsc::channel::<Staged>(2);
        let hasher = tokio::task::spawn_blocking(move || {
            let stream: Box<dyn Read + Send> = match source {
                SealSource::Bytes(bytes) => {
                    return hash_in_memory(bytes, chunk, staging, &tx, progress.as_ref());
                }
                SealSource::File(path) => Box::new(std::fs::File::open(&path).map_err(|e| {
                    VramError::invalid(format!(
                        "cannot read model file {}: {e}",
                        crate::validation::shown_path(&path)
                    ))
                })?),
                SealSource::Reader(reader, _) => reader,
            };
            hash_stream(stream, len, chunk, staging, &tx, progress.as_ref())
        });
        let uploader = self.args.backend.uploader(allocation);
        let mut offset = 0u64;
        let mut upload_err = None;
        // A source that stops delivering (a stalled socket or disk) must not hold this device's
        // mailbox forever: each piece has `seal_stall_timeout` to arrive.
        let idle = self.args.settings.seal_stall_timeout;
        loop {
            let piece = match tokio::time::timeout(idle, rx.recv()).await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(_) => {
                    // Dropping the receiver ends the hasher at its next hand-over; we do not
                    // wait for it (it may be stuck in a read).
                    return Err(VramError::Timeout(format!(
                        "the seal source (no data for {:.1} s)",
                        idle.as_secs_f64()
                    )));
                }
            };
            let n = piece.bytes().len() as u64;
            let written = match &uploader {
                Some(up) => {
                    // The copy runs on the hashing pool while this handler waits for it.
                    let up = Arc::clone(up);
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let at = offset;
                    rayon::spawn(move || {
                        let _ = done_tx.send(up.write(at, piece.bytes()));
                    });
                    done_rx.await.unwrap_or_else(|_| {
                        Err(BackendError::Driver(
                            "the upload task ended without a result".into(),
                        ))
                    })
                }
                None => self.args.backend.write(allocation, offset, piece.bytes()),
            };
            match written {
                Ok(()) => offset = offset.saturating_add(n),
                Err(e) => {
                    upload_err = Some(self.map(e));
                    break; // dropping the receiver stops the hasher
                }
            }
        }
        drop(rx);
        let hashed = hasher
            .await
            .map_err(|_| VramError::Io("the hashing thread failed".into()))?;
        if let Some(e) = upload_err {
            return Err(e);
        }
        let (digest, leaves) = hashed?;
        if offset != len {
            return Err(VramError::Io(format!(
                "source changed size while sealing: expected {len} bytes, read {offset}"
            )));
        }
        Ok((digest, MerkleTree::from_leaves(leaves)))
    }

    fn start_verify(
        &mut self,
        myself: &ActorRef<GpuMsg>,
        shard: ShardRef,
        mode: VerifyMode,
        reply: Option<VerifyReply>,
    ) -> Result<(), (VramError, Option<VerifyReply>)> {
        let device = self.device();
        if self.lost {
            return Err((VramError::DeviceLost { device }, reply));
        }
        let chunk = self.args.settings.chunk_size;
        let entry = match self.table.get(&shard) {
            Ok(e) => e,
            Err(e) => return Err((e, reply)),
        };
        if let Some(bad) = &entry.quarantine {
            return Err((quarantined(&shard.shard_id, bad), reply));
        }
        let n = leaf_count(entry.info.vram_bytes, entry.info.chunk_size);
        let indices: Option<Vec<u64>> = match mode {
            VerifyMode::Full => None,
            VerifyMode::Sampled { chunks } => {
                if chunks == 0 {
                    return Err((
                        VramError::invalid("Sampled verification needs at least 1 chunk"),
                        reply,
                    ));
                }
                let k = u64::from(chunks).min(n);
                Some(sample_indices(n, k))
            }
            VerifyMode::SignatureOnly => Some(Vec::new()),
        };
        let root = match entry.info.merkle_root_bytes() {
            Ok(r) => r,
            Err(e) => return Err((e, reply)),
        };
        let tree = Arc::clone(&entry.tree);
        let allocation = entry.allocation;
        let reader = match self.args.backend.reader(allocation) {
            Ok(r) => r,
            Err(e) => return Err((self.map(e), reply)),
        };
        if let Ok(entry) = self.table.get_mut(&shard) {
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        let started = Instant::now();
        let myself = myself.clone();
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || {
                hash_leaves(&*reader, chunk, indices, &tree, &root)
            });
            let outcome = match job.await {
                Ok(r) => r,
                Err(_) => Err(VramError::Io("the verification thread failed".into())),
            };
            // If the actor is gone, the reply port is dropped with the message and the caller
            // sees the system shutting down.
            let _ = myself.cast(GpuMsg::VerifyFinished {
                shard,
                mode,
                started,
                outcome,
                reply,
            });
        });
        Ok(())
    }

    fn finish_verify(
        &mut self,
        shard: ShardRef,
        mode: VerifyMode,
        started: Instant,
        outcome: Result<LeafCheck, VramError>,
        scrub: bool,
    ) -> Result<VerifyReport, VramError> {
        let device = self.device();
        let entry = self.table.get_mut(&shard)?;
        entry.in_flight = entry.in_flight.saturating_sub(1);
        let result = match outcome {
            Err(e) => Err(e),
            Ok(check) => {
                let len = entry.info.vram_bytes;
                let chunk = entry.info.chunk_size;
                let expected_count = match mode {
                    VerifyMode::Full => leaf_count(len, chunk),
                    _ => check.indices.len() as u64,
                };
                // A backend that returns fewer hashes than asked for must not pass by omission,
                // and a full verify also recomputes the root and compares it with the signed one.
                let complete = check.observed.len() as u64 == expected_count
                    && check.indices.len() as u64 == expected_count
                    && (expected_count > 0 || matches!(mode, VerifyMode::SignatureOnly));
                let root_ok = match (check.observed_root, entry.info.merkle_root_bytes()) {
                    (Some(observed), Ok(signed)) => bool::from(observed.ct_eq(&signed)),
                    (None, Ok(_)) => true,
                    (_, Err(_)) => false,
                };
                let mut bad: Vec<u64> = if check.leaves_match_root {
                    check
                        .indices
                        .iter()
                        .zip(&check.observed)
                        .filter(|(i, h)| !entry.tree.leaf_matches(**i, h))
                        .map(|(i, _)| *i)
                        .collect()
                } else {
                    Vec::new()
                };
                bad.sort_unstable();
                let bytes_checked = check
                    .indices
                    .iter()
                    .filter_map(|&i| chunk_range(i, chunk, len))
                    .map(|(_, n)| n)
                    .fold(0u64, u64::saturating_add);
                if !complete {
                    Err(VramError::Io(format!(
                        "the device returned {} leaf hashes for {} requested; verification incomplete",
                        check.observed.len(),
                        expected_count
                    )))
                } else if bad.is_empty() && check.leaves_match_root && root_ok {
                    let total = leaf_count(len, chunk);
                    let checked = check.indices.len() as u64;
                    Ok(VerifyReport {
                        shard_id: shard.shard_id.clone(),
                        gpu_device: device,
                        mode,
                        chunks_checked: checked,
                        total_chunks: total,
                        bytes_checked,
                        single_chunk_detection: if total == 0 {
                            0.0
                        } else {
                            checked as f64 / total as f64
                        },
                        elapsed: started.elapsed(),
                    })
                } else {
                    let spans: Vec<ChunkSpan> = bad
                        .iter()
                        .filter_map(|&i| {
                            chunk_range(i, chunk, len).map(|(offset, len)| ChunkSpan {
                                index: i,
                                offset,
                                len,
                            })
                        })
                        .collect();
                    let reason = if check.leaves_match_root {
                        "device memory differs from the sealed Merkle leaves".to_string()
                    } else {
                        "the sealed leaf list no longer matches the signed Merkle root".to_string()
                    };
                    let actual_root = check
                        .observed_root
                        .map(hex::encode)
                        .unwrap_or_else(|| "not computed (sampled)".into());
                    let bad = Quarantine {
                        tensors: tensors_of(entry.tensors.as_deref(), &spans),
                        chunks: spans,
                    };
                    let err = quarantined(&shard.shard_id, &bad);
                    let spans = bad.chunks.clone();
                    let bad_tensors = bad.tensors.clone();
                    entry.quarantine = Some(bad);
                    let expected_root = entry.info.merkle_root.clone();
                    self.stopped = Some(format!(
                        "seal verification failed for shard {}",
                        shard.shard_id
                    ));
                    self.audit(AuditEvent::SealVerificationFailed {
                        shard_id: shard.shard_id.clone(),
                        gpu_device: device,
                        reason,
                        expected_root,
                        actual_root,
                        first_bad_chunk: spans.first().map(|s| s.index),
                        bad_chunks: spans.len() as u64,
                        bad_tensors: bad_tensors.into_iter().take(32).collect(),
                        severity: Severity::Critical,
                    });
                    self.audit(AuditEvent::DeviceStopped {
                        gpu_device: device,
                        reason: format!(
                            "fail-closed after shard {} failed verification; reset_device to resume",
                            shard.shard_id
                        ),
                    });
                    tracing::error!(
                        gpu_device = device,
                        shard_id = %shard.shard_id,
                        bad_chunks = spans.len(),
                        "seal verification failed; shard quarantined, device stopped"
                    );
                    Err(err)
                }
            }
        };
        let trigger = if scrub { "scrub" } else { "request" };
        match &result {
            Ok(r) => self.audit(AuditEvent::SealVerified {
                shard_id: shard.shard_id.clone(),
                gpu_device: device,
                mode: mode.to_string(),
                chunks_checked: r.chunks_checked,
                trigger: trigger.into(),
            }),
            // Integrity failures were recorded above; anything else (a read error, a lost
            // device, an incomplete answer) means the shard could not be checked: say so too.
            Err(VramError::SealVerificationFailed { .. }) => {}
            Err(e) => self.audit(AuditEvent::VerificationError {
                shard_id: shard.shard_id.clone(),
                gpu_device: device,
                mode: mode.to_string(),
                error: e.to_string(),
                trigger: trigger.into(),
            }),
        }
        // A release that waited for this verification can go ahead now.
        if let Ok(entry) = self.table.get_mut(&shard) {
            if entry.in_flight == 0 && !entry.pending_release.is_empty() {
                let _ = self.release_now(&shard.shard_id);
            }
        }
        result
    }

    fn residency(&self, query: ResidencyQuery) -> Result<(), VramError> {
        if self.lost {
            return Err(VramError::DeviceLost {
                device: self.device(),
            });
        }
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

    fn execute(
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

    fn inject(&mut self, fault: Fault) -> Result<(), VramError> {
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
            Fault::CrashActor if self.identity.backend != crate::gpu::BackendKind::Simulated => {
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
        self.args
            .backend
            .inject_fault(backend_fault)
            .map_err(|e| self.map(e))?;
        if lose {
            self.mark_lost("injected LoseDevice fault");
        }
        Ok(())
    }

    fn status(&self) -> DeviceStatus {
        DeviceStatus {
            identity: self.identity.clone(),
            stopped: self.stopped.clone(),
            lost: self.lost,
            shards: self.table.len(),
            used_bytes: self.table.used_bytes(),
            policy: match self.identity.backend {
                crate::gpu::BackendKind::Simulated => {
                    "simulated device memory (VRAM-only policy not applicable)".into()
                }
                crate::gpu::BackendKind::Cuda if self.identity.integrated => {
                    "violation: integrated GPU".into()
                }
                crate::gpu::BackendKind::Cuda => "ok: dedicated device memory".into(),
            },
        }
    }

    fn scrub_next(&mut self, myself: &ActorRef<GpuMsg>) {
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
        let _ = self.start_verify(myself, shard, VerifyMode::Full, None);
    }
}

/// The parts of a seal job still needed once the source has been handed to the hasher.
struct SealMeta {
    shard_id: String,
    model_ref: String,
    expected_sha256: Option<String>,
    tensor_parallel: Option<(u32, u32)>,
    handle_id: u64,
    tensors: Option<Arc<TensorMap>>,
}

fn quarantined(shard_id: &str, bad: &Quarantine) -> VramError {
    VramError::SealVerificationFailed {
        shard_id: shard_id.to_string(),
        first_bad_chunk: bad.chunks.first().map(|s| s.index),
        bad_chunks: bad.chunks.clone(),
        bad_tensors: bad.tensors.clone(),
    }
}

/// Most tensor names kept for one failure (errors and audit records stay small whatever the
/// model's header holds).
const MAX_BAD_TENSORS: usize = 64;

/// Names of the tensors overlapping any of `spans`, each once, in offset order, at most
/// [`MAX_BAD_TENSORS`].
fn tensors_of(map: Option<&TensorMap>, spans: &[ChunkSpan]) -> Vec<String> {
    let Some(map) = map else { return Vec::new() };
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for s in spans {
        for name in map.overlapping(s.offset, s.len) {
            if out.len() >= MAX_BAD_TENSORS {
                return out;
            }
            if seen.insert(name.clone()) {
                out.push(name);
            }
        }
    }
    out
}

/// Nanoseconds since the Unix epoch, saturating.
pub(crate) fn now_unix_nanos() -> u64 {
    Utc::now()
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

impl Actor for GpuActor {
    type Msg = GpuMsg;
    type State = GpuState;
    type Arguments = GpuArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: GpuArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let identity = args.backend.identity();
        if let Some(interval) = args.settings.scrub_interval {
            myself.send_interval(interval, || GpuMsg::ScrubTick);
        }
        Ok(GpuState {
            args,
            identity,
            table: ShardTable::default(),
            stopped: None,
            lost: false,
            scrub_cursor: 0,
            scrub_not_before: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GpuMsg::Seal { job, reply } => {
                if reply.is_closed() {
                    return Ok(()); // the caller gave up before we started: allocate nothing
                }
                let r = state.seal(*job).await;
                if let Err(ractor::MessagingErr::SendErr(Ok(info))) = reply.send(r) {
                    // The caller is gone (timed out, dropped its future): no handle will ever
                    // release this shard, so release it now rather than leak the capacity.
                    tracing::warn!(gpu_device = state.device(), shard_id = %info.shard_id,
                        "seal finished after its caller left; releasing it");
                    let _ = state.release_now(&info.shard_id);
                }
            }
            GpuMsg::Verify {
                shard,
                info,
                mode,
                reply,
            } => {
                let same = state.table.get(&shard).map(|e| e.info == *info);
                match same {
                    Ok(true) => {
                        if let Err((e, Some(reply))) =
                            state.start_verify(&myself, shard, mode, Some(reply))
                        {
                            let _ = reply.send(Err(e));
                        }
                    }
                    Ok(false) => {
                        let _ = reply.send(Err(VramError::UnknownShard(shard.shard_id)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            GpuMsg::VerifyFinished {
                shard,
                mode,
                started,
                outcome,
                reply,
            } => {
                let outcome = outcome.map_err(|e| match e {
                    VramError::DeviceLost { .. } => VramError::DeviceLost {
                        device: state.device(),
                    },
                    other => other,
                });
                if matches!(outcome, Err(VramError::DeviceLost { .. })) {
                    state.mark_lost("a read failed during verification");
                }
                let scrub = reply.is_none();
                let r = state.finish_verify(shard, mode, started, outcome, scrub);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            GpuMsg::Residency { query, reply } => {
                let _ = reply.send(state.residency(query));
            }
            GpuMsg::Execute { shard, job, reply } => {
                let _ = reply.send(state.execute(&shard, job));
            }
            GpuMsg::Release { shard, reply } => match state.table.get_mut(&shard) {
                Err(e) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(e));
                    }
                }
                Ok(entry) if entry.in_flight > 0 => entry.pending_release.push(reply),
                Ok(_) => {
                    let r = state.release_now(&shard.shard_id);
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
            },
            GpuMsg::Capacity { reply } => {
                let r = if state.lost {
                    Err(VramError::DeviceLost {
                        device: state.device(),
                    })
                } else {
                    Ok(state.capacity())
                };
                let _ = reply.send(r);
            }
            GpuMsg::InjectFault { fault, reply } => {
                let r = state.inject(fault);
                let _ = reply.send(r);
            }
            GpuMsg::Reset { reply } => {
                let r = if state.lost {
                    Err(VramError::DeviceLost {
                        device: state.device(),
                    })
                } else {
                    if state.stopped.take().is_some() {
                        state.audit(AuditEvent::DeviceReset {
                            gpu_device: state.device(),
                        });
                    }
                    Ok(())
                };
                let _ = reply.send(r);
            }
            GpuMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
            GpuMsg::ScrubTick => state.scrub_next(&myself),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Shutdown frees everything the device holds, and says so in the audit log.
        for id in state.table.ids() {
            let _ = state.release_now(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::actors::audit_actor::{AuditActor, AuditArgs};
    use crate::actors::seal_keeper::SealKeeper;
    use crate::config::AuditSinkConfig;
    use crate::gpu::sim::SimDevice;
    use crate::seal::keys::WorkerToken;

    fn token() -> WorkerToken {
        WorkerToken::new(b"gpu-actor-test-token".to_vec()).unwrap()
    }

    async fn spawn_gpu(capacity: u64) -> (ActorRef<GpuMsg>, ActorRef<AuditMsg>) {
        let (audit, _) = Actor::spawn(
            None,
            AuditActor,
            AuditArgs {
                sink: AuditSinkConfig::Memory,
                token: token(),
                worker_id: "w".into(),
                batch_size: 1,
                flush_interval: Duration::from_millis(5),
                buffer_limit: 1000,
                healthy: Arc::new(AtomicBool::new(true)),
            },
        )
        .await
        .unwrap();
        let (keeper, _) = Actor::spawn(None, SealKeeper, token()).await.unwrap();
        let (gpu, _) = Actor::spawn(
            None,
            GpuActor,
            GpuArgs {
                device: 0,
                backend: Box::new(SimDevice::new(0, capacity)),
                settings: DeviceSettings {
                    worker_id: "w".into(),
                    chunk_size: 4096,
                    headroom_bytes: 0,
                    staging_bytes: 8192,
                    call_timeout: Duration::from_secs(10),
                    seal_stall_timeout: Duration::from_secs(10),
                    scrub_interval: None,
                    scrub_bytes_per_sec: None,
                },
                seal_keeper: keeper,
                audit: audit.clone(),
            },
        )
        .await
        .unwrap();
        (gpu, audit)
    }

    fn job(id: &str, len: usize, handle_id: u64) -> Box<SealJob> {
        Box::new(SealJob {
            shard_id: id.into(),
            model_ref: "m".into(),
            source: SealSource::Bytes((0..len).map(|i| (i % 251) as u8).collect()),
            expected_sha256: None,
            tensor_parallel: None,
            progress: None,
            handle_id,
            tensors: None,
            len: len as u64,
        })
    }

    #[test]
    fn seal_verify_release_through_the_mailbox() {
        tokio_test::block_on(async {
            let (gpu, audit) = spawn_gpu(100_000).await;
            let info = gpu
                .call(
                    |reply| GpuMsg::Seal {
                        job: job("a", 10_000, 7),
                        reply,
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(info.vram_bytes, 10_000);
            let shard = ShardRef {
                shard_id: "a".into(),
                handle_id: 7,
            };
            let report = gpu
                .call(
                    |reply| GpuMsg::Verify {
                        shard: shard.clone(),
                        info: Box::new(info.clone()),
                        mode: VerifyMode::Full,
                        reply,
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(report.chunks_checked, 3);
            // wrong handle id: unknown, nothing changes
            let wrong = ShardRef {
                shard_id: "a".into(),
                handle_id: 8,
            };
            let r = gpu
                .call(
                    |reply| GpuMsg::Release {
                        shard: wrong,
                        reply: Some(reply),
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(r, Err(VramError::UnknownShard(_))));
            let cap = gpu
                .call(|reply| GpuMsg::Capacity { reply }, None)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(cap.used_bytes, 10_000);
            let freed = gpu
                .call(
                    |reply| GpuMsg::Release {
                        shard,
                        reply: Some(reply),
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(freed, 10_000);
            let cap = gpu
                .call(|reply| GpuMsg::Capacity { reply }, None)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(cap.used_bytes, 0);
            let status = gpu
                .call(|reply| GpuMsg::Status { reply }, None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status.shards, 0);
            assert!(status.stopped.is_none());
            gpu.stop(None);
            let _ = audit.call(AuditMsg::Flush, None).await;
        });
    }

    #[test]
    fn a_failed_verify_quarantines_and_stops_until_reset() {
        tokio_test::block_on(async {
            let (gpu, _audit) = spawn_gpu(100_000).await;
            let info = gpu
                .call(
                    |reply| GpuMsg::Seal {
                        job: job("a", 9_000, 1),
                        reply,
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let fault = Fault::FlipBits {
                shard_id: "a".into(),
                offset: 8_999,
                mask: 1,
            };
            gpu.call(|reply| GpuMsg::InjectFault { fault, reply }, None)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let shard = ShardRef {
                shard_id: "a".into(),
                handle_id: 1,
            };
            let r = gpu
                .call(
                    |reply| GpuMsg::Verify {
                        shard: shard.clone(),
                        info: Box::new(info.clone()),
                        mode: VerifyMode::Full,
                        reply,
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap();
            match r {
                Err(VramError::SealVerificationFailed {
                    first_bad_chunk,
                    bad_chunks,
                    ..
                }) => {
                    assert_eq!(first_bad_chunk, Some(2));
                    assert_eq!(
                        bad_chunks,
                        vec![ChunkSpan {
                            index: 2,
                            offset: 8192,
                            len: 808
                        }]
                    );
                }
                other => panic!("{other:?}"),
            }
            let r = gpu
                .call(
                    |reply| GpuMsg::Seal {
                        job: job("b", 10, 2),
                        reply,
                    },
                    None,
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r, Err(VramError::DeviceStopped { device: 0 }));
            gpu.call(|reply| GpuMsg::Reset { reply }, None)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            gpu.call(
                |reply| GpuMsg::Seal {
                    job: job("b", 10, 2),
                    reply,
                },
                None,
            )
            .await
            .unwrap()
            .unwrap()
            .unwrap();
            let query = ResidencyQuery::Handle(shard, Box::new(info));
            let r = gpu
                .call(|reply| GpuMsg::Residency { query, reply }, None)
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(r, Err(VramError::SealVerificationFailed { .. })));
            gpu.stop(None);
        });
    }
}
