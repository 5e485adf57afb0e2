//! The seal pipeline on the device actor: allocate, upload while hashing, check, sign, record.
//!
//! A blocking thread reads the source in staging pieces of whole chunks and hashes each piece
//! (the plain SHA-256 and the piece's Merkle leaves side by side; see
//! [`crate::actors::gpu_actor::hashing`]). Each piece is handed over *before* it is hashed to
//! the seal's pump, a small task that forwards it to this actor as one `GpuMsg::SealPiece` and
//! waits until the actor has copied it. The piece handler lends the allocation's memory (a
//! [`DeviceUpload`]) to a copy job on the rayon pool and takes it back when the copy is done, so
//! the copy of piece k overlaps the hashing of piece k, the memory is always owned by exactly
//! one party — never shared behind a lock — and every write still happens in this actor's
//! handlers, in mailbox order (`.specs/design.md` §2). Between two pieces the mailbox answers
//! everything else (capacity, verifications of other shards, releases, other seals): a seal
//! holds it for one piece's copy at a time, never for the whole upload. When the source is
//! exhausted the pump sends `GpuMsg::SealEnded` with the hashes; the memory goes back to the
//! backend, which freezes it read-only for verifications, and the shard is signed and recorded.
//!
//! A seal whose caller gave up (its [`Cancel`] flag) stops at the next piece, wherever it
//! notices first: the hashing thread before reading a piece, the pump before forwarding one,
//! the piece handler before copying one, and the end handler before signing. Every way out
//! before the shard is recorded frees the allocation and audits it (a cancellation also as a
//! `SealRejected` with reason `cancelled by caller`), so a failed seal never changes the
//! device's accounting. Memory of a seal in progress counts as used until it is freed.

use std::io::Read;
use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::mpsc;

use super::GpuState;
use crate::actors::ask;
use crate::actors::gpu_actor::hashing::{hash_in_memory, hash_stream};
use crate::actors::gpu_actor::shard_table::ShardEntry;
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::gpu::{AllocationId, BackendError, DeviceUpload};
use crate::messages::gpu::{Cancel, GpuMsg, SealJob, SealMeta, Staged};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::claims::{SEAL_FORMAT, ShardInfo};
use crate::seal::merkle::{Hash, MerkleTree};
use crate::types::SealSource;

use super::now_unix_nanos;

/// Where a seal's result goes.
pub(super) type SealReply = ractor::RpcReplyPort<Result<ShardInfo, VramError>>;

/// A seal between its `Seal` message and its end: the allocation it writes, the memory lent
/// for the upload (here between two pieces), and who is waiting for it.
pub(super) struct Sealing {
    meta: SealMeta,
    allocation: AllocationId,
    len: u64,
    /// Back here after each piece's copy; `None` only while a copy runs.
    upload: Option<Box<dyn DeviceUpload>>,
    /// Bytes copied so far.
    offset: u64,
    cancel: Cancel,
    reply: SealReply,
}

/// A seal whose every piece was copied: its allocation and the memory lent for the upload.
struct Copied {
    allocation: AllocationId,
    len: u64,
    offset: u64,
    upload: Box<dyn DeviceUpload>,
    cancel: Cancel,
}

impl Sealing {
    /// Device memory it holds: the shard's bytes and the lead padding that aligns a
    /// safetensors shard's data section.
    pub(super) fn allocated_bytes(&self) -> u64 {
        self.len.saturating_add(self.meta.lead_padding)
    }

    /// The shard it will be.
    pub(super) fn shard_id(&self) -> &str {
        &self.meta.shard_id
    }
}

impl GpuState {
    /// Starts a seal: allocates its memory (audited), starts its hashing thread and its pump,
    /// and returns; the pieces and the end arrive as messages. Any refusal is answered at once,
    /// with nothing left allocated; a caller already gone gets nothing allocated at all.
    pub(super) fn start_seal(&mut self, myself: &ActorRef<GpuMsg>, job: SealJob, reply: SealReply) {
        if !self.sealing.is_empty() {
            self.seal_queue.push_back((job, reply));
            return;
        }
        let SealJob {
            meta,
            source,
            progress,
            len,
            cancel,
        } = job;
        if reply.is_closed() || cancel.is_cancelled() {
            let _ = reply.send(Err(VramError::Cancelled));
            return;
        }
        let staging = match self.staging_piece() {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let allocation = match self.allocate_for(&meta, len) {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let upload = match self.backend.begin_upload(allocation) {
            Ok(u) => u,
            Err(e) => {
                let e = self.map(e);
                self.abort_seal(&meta, allocation, len, &e);
                let _ = reply.send(Err(e));
                return;
            }
        };
        let seal = self.next_seal;
        self.next_seal = self.next_seal.wrapping_add(1);
        let (tx, rx) = mpsc::channel::<Staged>(2);
        let (chunk, hasher_cancel) = (staging.0, cancel.clone());
        let piece = staging.1;
        let hasher = crate::actors::spans::spawn_blocking(move || {
            let stream: Box<dyn Read + Send> = match source {
                SealSource::Bytes(bytes) => {
                    return hash_in_memory(
                        bytes,
                        chunk,
                        piece,
                        &tx,
                        progress.as_ref(),
                        &hasher_cancel,
                    );
                }
                SealSource::File(path) => Box::new(std::fs::File::open(&path).map_err(|e| {
                    VramError::io_error(
                        e,
                        format_args!(
                            "cannot read model file {}",
                            crate::validation::shown_path(&path)
                        ),
                    )
                })?),
                SealSource::Reader(reader, _) => reader,
            };
            hash_stream(
                stream,
                len,
                chunk,
                piece,
                &tx,
                progress.as_ref(),
                &hasher_cancel,
            )
        });
        crate::actors::spans::spawn(pump(Pump {
            actor: myself.clone(),
            seal,
            rx,
            hasher,
            cancel: cancel.clone(),
            idle: self.args.settings.seal_stall_timeout,
        }));
        self.sealing.insert(
            seal,
            Sealing {
                meta,
                allocation,
                len,
                upload: Some(upload),
                offset: 0,
                cancel,
                reply,
            },
        );
    }

    /// Starts the next queued seal when none is in progress, after answering every queued seal
    /// whose caller has left (nothing was allocated for them).
    pub(super) fn start_queued_seals(&mut self, myself: &ActorRef<GpuMsg>) {
        // Called after every message: nothing to do in the common case.
        if self.seal_queue.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.seal_queue);
        for (job, reply) in queued {
            if reply.is_closed() || job.cancel.is_cancelled() {
                let _ = reply.send(Err(VramError::Cancelled));
            } else {
                self.seal_queue.push_back((job, reply));
            }
        }
        // A draining actor starts nothing new: `on_stop` answers what is queued.
        if myself.get_status() >= ractor::ActorStatus::Draining {
            return;
        }
        // One that is refused at once (no room, a duplicate id) lets the next one start.
        let mut started = false;
        while self.sealing.is_empty()
            && let Some((job, reply)) = self.seal_queue.pop_front()
        {
            self.start_seal(myself, job, reply);
            started = true;
        }
        // Its allocation changes the capacity gauges, whatever message let it start.
        if started {
            self.publish_capacity();
        }
    }

    /// The chunk size and the staging piece (whole chunks, so leaves never straddle pieces).
    fn staging_piece(&self) -> Result<(usize, usize), VramError> {
        let chunk = usize::try_from(self.args.settings.chunk_size)
            .map_err(|_| VramError::invalid("chunk_size does not fit this platform"))?;
        let staging = self
            .args
            .settings
            .staging_bytes
            .div_ceil(chunk)
            .max(1)
            .saturating_mul(chunk);
        Ok((chunk, staging))
    }

    /// Copies one piece of seal `seal` into its allocation, on the rayon pool, and answers
    /// `done` (the pump then forwards the next). A seal already ended drops the piece; a
    /// cancelled one ends here instead of copying.
    pub(super) async fn seal_piece(
        &mut self,
        seal: u64,
        piece: Staged,
        done: tokio::sync::oneshot::Sender<()>,
    ) {
        let Some(entry) = self.sealing.get_mut(&seal) else {
            return; // it ended already (failed or cancelled); `done` dropped stops the pump
        };
        if entry.cancel.is_cancelled() {
            self.end_seal(seal, VramError::Cancelled);
            return;
        }
        // The device may have stopped fail-closed (or been lost) since the seal started.
        if let Err(e) = self.accepting_work() {
            self.end_seal(seal, e);
            return;
        }
        let Some(entry) = self.sealing.get_mut(&seal) else {
            return;
        };
        let Some(mut upload) = entry.upload.take() else {
            self.end_seal(
                seal,
                VramError::Internal("a seal's upload was not returned".into()),
            );
            return;
        };
        let at = entry.offset;
        let n = piece.bytes().len() as u64;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        crate::actors::spans::rayon_spawn(move || {
            // Rayon aborts the process when a spawned job panics: catch it, and re-raise it
            // on the actor below (which crashes and is replaced).
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                upload.write(at, piece.bytes())
            }));
            // Give the staging buffer back (to the reader, for recycling) before answering.
            drop(piece);
            let _ = done_tx.send((upload, written));
        });
        let copied = match done_rx.await {
            Ok((upload, written)) => {
                let written = written.unwrap_or_else(|payload| {
                    super::worker_panicked(self.device(), "an upload copy", payload)
                });
                written.map(|()| upload).map_err(|e| self.map(e))
            }
            Err(_) => Err(self.map(BackendError::Worker(
                "the upload task ended without a result".into(),
            ))),
        };
        match copied {
            Ok(upload) => {
                if let Some(entry) = self.sealing.get_mut(&seal) {
                    entry.upload = Some(upload);
                    entry.offset = entry.offset.saturating_add(n);
                }
                let _ = done.send(());
            }
            Err(e) => self.end_seal(seal, e),
        }
    }

    /// Concludes seal `seal` once its source is exhausted and hashed (or its pump stopped it):
    /// takes the memory back, checks it, signs and records the shard, and answers the caller.
    pub(super) async fn seal_ended(
        &mut self,
        seal: u64,
        hashed: Result<(Hash, Vec<Hash>), VramError>,
    ) {
        let Some(entry) = self.sealing.remove(&seal) else {
            return;
        };
        // Nothing is recorded yet: a caller who left before this point cancels the seal.
        // Nor is a seal signed on a device that stopped fail-closed (or was lost) meanwhile.
        let hashed = if entry.cancel.is_cancelled() {
            Err(VramError::Cancelled)
        } else if let Err(e) = self.accepting_work() {
            Err(e)
        } else {
            hashed
        };
        let Sealing {
            meta,
            allocation,
            len,
            upload,
            offset,
            cancel,
            reply,
        } = entry;
        let sealed = match (hashed, upload) {
            (Err(e), Some(upload)) => {
                self.backend.abandon_upload(upload);
                Err(e)
            }
            (Err(e), None) => Err(e),
            (Ok(_), None) => Err(VramError::Internal(
                "a seal's upload was not returned".into(),
            )),
            (Ok(hashed), Some(upload)) => {
                let copied = Copied {
                    allocation,
                    len,
                    offset,
                    upload,
                    cancel,
                };
                self.land(&meta, copied, hashed).await
            }
        };
        match sealed {
            Ok(info) => {
                if let Err(ractor::MessagingErr::SendErr(Ok(info))) = reply.send(Ok(info)) {
                    // The caller is gone (and so is the waiter that would have released it):
                    // no handle will ever release this shard, so release it now rather than
                    // leak the capacity.
                    tracing::warn!(gpu_device = self.device(), shard_id = %info.shard_id,
                        "seal finished after its caller left; releasing it");
                    let _ = self.release_now(&info.shard_id);
                }
            }
            Err(e) => {
                self.abort_seal(&meta, allocation, len, &e);
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Ends seal `seal` early with `error`: its memory is freed (audited) and the caller
    /// answered. Its pump stops at its next piece (the piece's `done` is dropped).
    pub(super) fn end_seal(&mut self, seal: u64, error: VramError) {
        let Some(entry) = self.sealing.remove(&seal) else {
            return;
        };
        let Sealing {
            meta,
            allocation,
            len,
            upload,
            reply,
            ..
        } = entry;
        // The lent memory comes back before its allocation is freed.
        if let Some(upload) = upload {
            self.backend.abandon_upload(upload);
        }
        self.abort_seal(&meta, allocation, len, &error);
        self.publish_capacity();
        let _ = reply.send(Err(error));
    }

    /// The end of a seal whose every piece was copied: the memory goes back to the backend
    /// (read-only from here on), the device's copy is checked where that is cheap, and the
    /// shard is signed and recorded.
    async fn land(
        &mut self,
        meta: &SealMeta,
        copied: Copied,
        (digest, leaves): (Hash, Vec<Hash>),
    ) -> Result<ShardInfo, VramError> {
        let Copied {
            allocation,
            len,
            offset,
            upload,
            cancel,
        } = copied;
        if offset != len {
            // The lent memory goes back (CUDA keeps its pinned staging ring for the next seal).
            self.backend.abandon_upload(upload);
            return Err(VramError::io(
                std::io::ErrorKind::UnexpectedEof,
                format!("source changed size while sealing: expected {len} bytes, read {offset}"),
            ));
        }
        self.backend
            .finish_upload(allocation, upload)
            .map_err(|e| self.map(e))?;
        self.check_landed(allocation, &leaves).await?;
        self.check_header(meta, allocation).await?;
        let tree = MerkleTree::from_leaves(leaves);
        self.sign_and_record(meta, allocation, len, digest, tree, &cancel)
            .await
    }

    /// Checks that the seal may start and allocates its memory (audited either way): the
    /// shard's `len` bytes plus the lead padding that aligns a safetensors shard's data
    /// section, which is real device memory and counts as used.
    fn allocate_for(&mut self, meta: &SealMeta, len: u64) -> Result<AllocationId, VramError> {
        self.accepting_work()?;
        let device = self.device();
        if self.table.contains(&meta.shard_id)
            || self.sealing.values().any(|s| s.shard_id() == meta.shard_id)
        {
            return Err(VramError::invalid(format!(
                "shard_id {} is already resident on device {device}; release it first",
                meta.shard_id
            )));
        }
        let available = self.available();
        let lead = meta.lead_padding;
        let needed = len.saturating_add(lead);
        // What was asked of the device: the shard and its lead padding, as the check counts it.
        let refused = |reason: String| AuditEvent::VramAllocationFailed {
            shard_id: meta.shard_id.clone(),
            requested_bytes: needed,
            available_bytes: available,
            reason,
            gpu_device: device,
        };
        if needed > available {
            self.audit(refused("insufficient VRAM".into()));
            return Err(VramError::InsufficientVram { needed, available });
        }
        let allocation = match self.backend.allocate(len, lead) {
            Ok(a) => a,
            Err(e) => {
                if let BackendError::Policy { policy, violation } = &e {
                    self.audit(AuditEvent::PolicyViolation {
                        policy: (*policy).to_string(),
                        violation: violation.clone(),
                        details: format!(
                            "allocation for shard {} on device {device} refused",
                            meta.shard_id
                        ),
                        severity: crate::audit::events::Severity::Critical,
                        action_taken: "allocation freed; seal refused".into(),
                        gpu_device: Some(device),
                    });
                }
                let err = self.map(e);
                self.audit(refused(err.to_string()));
                return Err(err);
            }
        };
        self.audit(AuditEvent::VramAllocated {
            shard_id: meta.shard_id.clone(),
            requested_bytes: len,
            allocated_bytes: needed,
            available_bytes: available.saturating_sub(needed),
            used_bytes: self.used_bytes().saturating_add(needed),
            gpu_device: device,
        });
        Ok(allocation)
    }

    /// Checks the digest the caller expected, has the seal keeper sign the claims, and records
    /// the shard in the table.
    async fn sign_and_record(
        &mut self,
        meta: &SealMeta,
        allocation: AllocationId,
        len: u64,
        digest: Hash,
        tree: MerkleTree,
        cancel: &Cancel,
    ) -> Result<ShardInfo, VramError> {
        let device = self.device();
        let digest_hex = hex::encode(digest);
        if let Some(expected) = &meta.expected_sha256
            && *expected != digest_hex
        {
            self.audit(AuditEvent::SealRejected {
                shard_id: meta.shard_id.clone(),
                gpu_device: device,
                reason: "the bytes do not match the expected SHA-256".into(),
                expected_digest: expected.clone(),
                actual_digest: digest_hex.clone(),
            });
            return Err(VramError::DigestMismatch {
                expected: expected.clone(),
                actual: digest_hex,
            });
        }
        if let Some(signed) = &meta.provenance
            && signed.sha256 != digest_hex
        {
            self.audit(AuditEvent::ProvenanceMismatch {
                shard_id: meta.shard_id.clone(),
                gpu_device: device,
                resource: signed.provenance.resource.clone(),
                expected_digest: signed.sha256.clone(),
                actual_digest: digest_hex.clone(),
                model_subject_sha256: signed.provenance.model_subject_sha256.clone(),
                publisher_keyid: signed.provenance.publisher_keyid.clone(),
                severity: crate::audit::events::Severity::Critical,
            });
            return Err(VramError::ProvenanceMismatch {
                resource: crate::text::sanitize(&signed.provenance.resource),
                expected: signed.sha256.clone(),
                actual: digest_hex,
            });
        }
        let (shard_index, total_shards) = meta.tensor_parallel.unzip();
        let mut info = ShardInfo {
            format: SEAL_FORMAT.to_string(),
            worker_id: self.args.settings.worker_id.clone(),
            shard_id: meta.shard_id.clone(),
            model_ref: meta.model_ref.clone(),
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
        let unsigned = Box::new(info.clone());
        info.signature = ask(
            &self.args.seal_keeper,
            |reply| SealKeeperMsg::Sign {
                info: unsigned,
                reply,
            },
            self.args.settings.call_timeout,
            "the seal keeper",
            || VramError::ShuttingDown,
        )
        .await??;
        // The checks and the signature were awaited: a caller who left (or timed out) meanwhile
        // still cancels the seal, which is recorded from here on without another await.
        if cancel.is_cancelled() {
            return Err(VramError::Cancelled);
        }
        self.table.insert(ShardEntry {
            info: info.clone(),
            handle_id: meta.handle_id,
            allocation,
            allocated_bytes: len.saturating_add(meta.lead_padding),
            tree: Arc::new(tree),
            tensors: meta.tensors.clone(),
            quarantine: None,
            in_flight: 0,
            pending_release: Vec::new(),
            lease_marker: Arc::new(()),
        });
        self.audit(AuditEvent::VramSealed {
            shard_id: info.shard_id.clone(),
            gpu_device: device,
            vram_bytes: len,
            digest: info.digest.clone(),
            merkle_root: info.merkle_root.clone(),
            model_ref: info.model_ref.clone(),
            provenance: meta.provenance.as_ref().map(|s| s.provenance.clone()),
        });
        Ok(info)
    }

    /// Frees the allocation (the shard's `len` bytes and its lead padding) of a seal that did
    /// not complete, and audits it: a cancelled seal also as `SealRejected` with reason
    /// `cancelled by caller` (nothing was sealed).
    fn abort_seal(&mut self, meta: &SealMeta, allocation: AllocationId, len: u64, why: &VramError) {
        let _ = self.backend.free(allocation);
        if matches!(why, VramError::Cancelled) {
            self.audit(AuditEvent::SealRejected {
                shard_id: meta.shard_id.clone(),
                gpu_device: self.device(),
                reason: why.to_string(),
                expected_digest: meta.expected_sha256.clone().unwrap_or_default(),
                actual_digest: String::new(),
            });
        }
        self.audit(AuditEvent::VramDeallocated {
            shard_id: meta.shard_id.clone(),
            freed_bytes: len.saturating_add(meta.lead_padding),
            remaining_used: self.used_bytes(),
            gpu_device: self.device(),
        });
    }

    /// The seal covers what landed on the device: where the backend hashes in device memory
    /// (CUDA with the leaf kernel), every leaf is re-hashed there and compared with the leaf the
    /// host computed from the source. A bad copy fails the seal here (the caller frees the
    /// allocation) instead of surfacing at the first verification. Where hashing would mean
    /// copying everything back (simulated memory, CUDA without NVRTC), the upload's own
    /// checks stand and this costs nothing.
    async fn check_landed(
        &mut self,
        allocation: AllocationId,
        host_leaves: &[Hash],
    ) -> Result<(), VramError> {
        let reader = self.backend.reader(allocation).map_err(|e| self.map(e))?;
        let chunk = self.args.settings.chunk_size;
        if !reader.hashes_on_device(chunk) {
            return Ok(());
        }
        let job = crate::actors::spans::spawn_blocking(move || reader.all_leaf_hashes(chunk)).await;
        let on_device = super::joined(self.device(), "the seal's device leaf check", job, || {
            VramError::Internal("the device leaf check was cancelled".into())
        })?
        .map_err(|e| self.map(e))?;
        let mut bad = host_leaves
            .iter()
            .zip(on_device.iter())
            .enumerate()
            .filter(|(_, (host, device))| host != device)
            .map(|(i, _)| i as u64);
        let first = bad.next();
        let extra = bad.count() as u64;
        let missing = (host_leaves.len() as u64).abs_diff(on_device.len() as u64);
        match first {
            None if missing == 0 => Ok(()),
            first => Err(VramError::UploadCorrupted {
                device: self.device(),
                first_bad_chunk: first.unwrap_or(on_device.len() as u64),
                bad_chunk_count: u64::from(first.is_some())
                    .saturating_add(extra)
                    .saturating_add(missing),
            }),
        }
    }
}

/// What a seal's pump needs.
struct Pump {
    actor: ActorRef<GpuMsg>,
    seal: u64,
    rx: mpsc::Receiver<Staged>,
    hasher: tokio::task::JoinHandle<Result<(Hash, Vec<Hash>), VramError>>,
    cancel: Cancel,
    idle: std::time::Duration,
}

/// A seal's pump: forwards each staged piece from the hashing thread to the device actor (one
/// `SealPiece` at a time, waiting until it is copied), and ends the seal with `SealEnded` when
/// the source is exhausted (with the hashes), when a piece takes longer than
/// `seal_stall_timeout` to arrive (`Timeout`), or when the caller gives up (`Cancelled`). When it
/// stops, the hashing thread's channel closes, so the thread ends at its next hand-over.
async fn pump(p: Pump) {
    let Pump {
        actor,
        seal,
        mut rx,
        hasher,
        cancel,
        idle,
    } = p;
    let stopped = loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => break Some(VramError::Cancelled),
            next = tokio::time::timeout(idle, rx.recv()) => next,
        };
        let piece = match next {
            Ok(Some(piece)) => piece,
            Ok(None) => break None,
            Err(_) => {
                break Some(VramError::Timeout(format!(
                    "the seal source (no data for {:.1} s)",
                    idle.as_secs_f64()
                )));
            }
        };
        let (done, copied) = tokio::sync::oneshot::channel();
        if actor.cast(GpuMsg::SealPiece { seal, piece, done }).is_err() {
            return; // the actor is gone, and the seal with it
        }
        if copied.await.is_err() {
            return; // the seal ended on the actor (a failed copy, a cancellation), answered
        }
    };
    drop(rx);
    let hashed = match stopped {
        Some(e) => Err(e),
        None => match hasher.await {
            Ok(hashed) => hashed,
            Err(e) if e.is_panic() => {
                // The actor re-raises it and is replaced; the seal's memory goes with it.
                let _ = actor.cast(GpuMsg::WorkerPanicked {
                    job: "the seal's hashing thread",
                    payload: e.into_panic(),
                });
                return;
            }
            Err(_) => Err(VramError::Internal(
                "the hashing thread was cancelled".into(),
            )),
        },
    };
    if actor.cast(GpuMsg::SealEnded { seal, hashed }).is_err() {
        // The actor is gone (its seals were ended and freed when it stopped).
        crate::telemetry::record_internal_send_failure("gpu");
    }
}
