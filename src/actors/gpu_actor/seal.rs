//! The seal pipeline on the device actor: allocate, upload while hashing, check, sign, record.
//!
//! A blocking thread reads the source in staging pieces of whole chunks and hashes each piece
//! (the plain SHA-256 and the piece's Merkle leaves side by side; see
//! [`crate::actors::gpu_actor::hashing`]). Each piece is handed to this handler *before* it is hashed; the
//! handler lends the allocation's memory (a [`DeviceUpload`]) to a copy job on the rayon pool
//! and takes it back when the copy is done, so the copy of piece k overlaps the hashing of piece
//! k, and the memory is always owned by exactly one party — never shared behind a lock. The
//! upload stays inside this handler, in mailbox order (`.specs/design.md` §2: writes are device-memory
//! mutation). When the source is exhausted the memory goes back to the backend, which freezes
//! it read-only for verifications.
//!
//! Every way out before the shard is recorded frees the allocation and audits it, so a failed
//! seal never changes the device's accounting.

use std::io::Read;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::GpuState;
use crate::actors::ask;
use crate::actors::gpu_actor::hashing::{Staged, hash_in_memory, hash_stream};
use crate::actors::gpu_actor::shard_table::ShardEntry;
use crate::audit::events::AuditEvent;
use crate::error::VramError;
use crate::gpu::{AllocationId, BackendError, DeviceUpload};
use crate::messages::gpu::{SealJob, SealMeta};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::claims::{SEAL_FORMAT, ShardInfo};
use crate::seal::merkle::{Hash, MerkleTree};
use crate::types::{ProgressFn, SealSource};

use super::now_unix_nanos;

impl GpuState {
    /// Seals one shard; on any failure nothing stays allocated.
    pub(super) async fn seal(&mut self, job: SealJob) -> Result<ShardInfo, VramError> {
        let SealJob {
            meta,
            source,
            progress,
            len,
        } = job;
        let allocation = self.allocate_for(&meta, len)?;
        let sealed = match self
            .upload_and_hash(source, progress, allocation, len)
            .await
        {
            Ok((digest, tree)) => {
                self.sign_and_record(&meta, allocation, len, digest, tree)
                    .await
            }
            Err(e) => Err(e),
        };
        if sealed.is_err() {
            self.abort_seal(&meta.shard_id, allocation, len);
        }
        sealed
    }

    /// Checks that the seal may start and allocates its memory (audited either way).
    fn allocate_for(&mut self, meta: &SealMeta, len: u64) -> Result<AllocationId, VramError> {
        self.accepting_work()?;
        let device = self.device();
        if self.table.contains(&meta.shard_id) {
            return Err(VramError::invalid(format!(
                "shard_id {} is already resident on device {device}; release it first",
                meta.shard_id
            )));
        }
        let available = self.available();
        let refused = |reason: String| AuditEvent::VramAllocationFailed {
            shard_id: meta.shard_id.clone(),
            requested_bytes: len,
            available_bytes: available,
            reason,
            gpu_device: device,
        };
        if len > available {
            self.audit(refused("insufficient VRAM".into()));
            return Err(VramError::InsufficientVram {
                needed: len,
                available,
            });
        }
        let allocation = match self.backend.allocate(len) {
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
            allocated_bytes: len,
            available_bytes: available.saturating_sub(len),
            used_bytes: self.table.used_bytes().saturating_add(len),
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
        self.table.insert(ShardEntry {
            info: info.clone(),
            handle_id: meta.handle_id,
            allocation,
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

    /// Frees the allocation of a seal that did not complete, and audits it.
    fn abort_seal(&mut self, shard_id: &str, allocation: AllocationId, len: u64) {
        let _ = self.backend.free(allocation);
        self.audit(AuditEvent::VramDeallocated {
            shard_id: shard_id.to_string(),
            freed_bytes: len,
            remaining_used: self.table.used_bytes(),
            gpu_device: self.device(),
        });
    }

    /// Streams the source into the allocation while a blocking thread hashes it: each piece is
    /// handed over before it is hashed, and copied on the rayon pool while it is hashed.
    async fn upload_and_hash(
        &mut self,
        source: SealSource,
        progress: Option<ProgressFn>,
        allocation: AllocationId,
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
        let upload = self
            .backend
            .begin_upload(allocation)
            .map_err(|e| self.map(e))?;
        let (tx, rx) = mpsc::channel::<Staged>(2);
        let hasher = tokio::task::spawn_blocking(move || {
            let stream: Box<dyn Read + Send> = match source {
                SealSource::Bytes(bytes) => {
                    return hash_in_memory(bytes, chunk, staging, &tx, progress.as_ref());
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
            hash_stream(stream, len, chunk, staging, &tx, progress.as_ref())
        });
        let copied = self.copy_pieces(rx, upload).await;
        // The receiver is gone now, so a hasher still running ends at its next hand-over.
        let hashed = super::joined(
            self.device(),
            "the seal's hashing thread",
            hasher.await,
            || VramError::Internal("the hashing thread was cancelled".into()),
        )?;
        let (upload, offset) = copied?;
        let (digest, leaves) = hashed?;
        if offset != len {
            return Err(VramError::io(
                std::io::ErrorKind::UnexpectedEof,
                format!("source changed size while sealing: expected {len} bytes, read {offset}"),
            ));
        }
        self.backend
            .finish_upload(allocation, upload)
            .map_err(|e| self.map(e))?;
        self.check_landed(allocation, &leaves).await?;
        Ok((digest, MerkleTree::from_leaves(leaves)))
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
        let job = tokio::task::spawn_blocking(move || reader.all_leaf_hashes(chunk)).await;
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

    /// Copies each staged piece into the lent memory, in order, on the rayon pool; returns the
    /// memory and the bytes copied. Consumes the receiver, so an early return stops the hasher.
    async fn copy_pieces(
        &mut self,
        mut rx: mpsc::Receiver<Staged>,
        mut upload: Box<dyn DeviceUpload>,
    ) -> Result<(Box<dyn DeviceUpload>, u64), VramError> {
        // A source that stops delivering (a stalled socket or disk) must not hold this device's
        // mailbox forever: each piece has `seal_stall_timeout` to arrive.
        let idle = self.args.settings.seal_stall_timeout;
        let mut offset = 0u64;
        loop {
            let piece = match tokio::time::timeout(idle, rx.recv()).await {
                Ok(Some(piece)) => piece,
                Ok(None) => return Ok((upload, offset)),
                Err(_) => {
                    return Err(VramError::Timeout(format!(
                        "the seal source (no data for {:.1} s)",
                        idle.as_secs_f64()
                    )));
                }
            };
            let n = piece.bytes().len() as u64;
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let at = offset;
            rayon::spawn(move || {
                // Rayon aborts the process when a spawned job panics: catch it, and re-raise it
                // on the actor below (which crashes and is replaced).
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    upload.write(at, piece.bytes())
                }));
                // Give the staging buffer back (to the reader, for recycling) before answering.
                drop(piece);
                let _ = done_tx.send((upload, written));
            });
            let (back, written) = done_rx.await.map_err(|_| {
                self.map(BackendError::Worker(
                    "the upload task ended without a result".into(),
                ))
            })?;
            upload = back;
            let written = written.unwrap_or_else(|payload| {
                super::worker_panicked(self.device(), "an upload copy", payload)
            });
            written.map_err(|e| self.map(e))?;
            offset = offset.saturating_add(n);
        }
    }
}
