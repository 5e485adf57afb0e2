//! Verification on the device actor: start a check, hash off the actor, conclude it here.
//!
//! [`GpuState::start_verify`] takes a read-only [`DeviceReader`](crate::gpu::DeviceReader) for
//! the shard, counts the check as in flight (so a release waits for it) and hands the hashing
//! to the blocking pool; the mailbox keeps answering meanwhile. The result comes back as
//! `GpuMsg::VerifyFinished`, and [`verdict`] — a pure function of the sealed record, the sealed
//! leaf list and what the device returned — decides. Only then does the actor act on it: a
//! report, or fail-closed (quarantine the shard, stop the device, audit it critically).
//!
//! A check whose caller gave up stops between pieces (of [`piece_leaves`] leaves) and is still
//! judged on the leaves it read: a bad one fails closed exactly as a finished check would, so
//! callers that always time out cannot keep a corrupt shard from being quarantined; if all were
//! good it ends as `Cancelled`, audited through the refusal coalescer (reason
//! `cancelled_verification`), so dropped requests cannot flood the log.

use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;
use subtle::ConstantTimeEq;

use super::{GpuState, VerifyReply};
use crate::actors::gpu_actor::hashing::{hash_leaves, sample_indices};
use crate::actors::gpu_actor::shard_table::Quarantine;
use crate::audit::events::{AuditEvent, Severity};
use crate::audit::refusals::RefusalReason;
use crate::error::{MAX_REPORTED_BAD_CHUNKS, VramError};
use crate::gpu::BackendError;
use crate::messages::gpu::{Cancel, GpuMsg, LeafCheck, ShardRef};
use crate::seal::claims::ShardInfo;
use crate::seal::merkle::{Hash, MerkleTree, chunk_range, leaf_count};
use crate::seal::tensors::TensorMap;
use crate::types::{ChunkSpan, ReadPlan, VerifyMode, VerifyReport};

/// What a finished check says about a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every leaf checked matched, the sealed leaf list matches the signed root, and (full
    /// verify) the leaves read back hash to the signed root.
    Intact {
        /// Leaves read back and hashed.
        chunks_checked: u64,
        /// Leaves in the shard.
        total_chunks: u64,
        /// Bytes those leaves cover.
        bytes_checked: u64,
    },
    /// The device answered with fewer (or more) hashes than were asked for: not a pass.
    Incomplete {
        /// Hashes returned.
        returned: u64,
        /// Hashes asked for.
        expected: u64,
    },
    /// The caller gave up and the hashing stopped between pieces, and every leaf hashed until
    /// then matched (as did the sealed leaf list, for a full verify): no finding, and no pass
    /// either. The shard is left as it was.
    Cancelled {
        /// Leaves read back and hashed before it stopped.
        chunks_checked: u64,
    },
    /// The shard does not match its seal. A check cut short by its caller ends here too when
    /// what it read already shows it: its bad leaves are as real as a finished check's.
    Corrupt {
        /// Leaves whose bytes differ, in index order (empty when the leaf list or the root is
        /// what failed).
        bad: Vec<u64>,
        /// Whether the sealed leaf list still hashes to the signed root.
        leaves_match_root: bool,
        /// The root recomputed from device memory (full verify only).
        observed_root: Option<Hash>,
    },
}

/// Judges one check, finished or cut short by its caller ([`LeafCheck::cancelled`]: only the
/// leaves it hashed are judged; any bad one is `Corrupt`, otherwise it is `Cancelled`, never
/// `Intact`). Pure: the same inputs always give the same verdict, and nothing here touches the
/// device or the actor.
pub(crate) fn verdict(
    info: &ShardInfo,
    tree: &MerkleTree,
    mode: VerifyMode,
    check: &LeafCheck,
) -> Verdict {
    let (len, chunk) = (info.vram_bytes, info.chunk_size);
    let total = leaf_count(len, chunk);
    let expected = if mode.reads_every_chunk() && !check.cancelled {
        total
    } else {
        check.indices.len() as u64
    };
    // A backend that returns fewer hashes than asked for must not pass by omission. (A check
    // cut short may have hashed nothing at all: that is no pass either, see below.)
    let returned = check.observed.len() as u64;
    if returned != expected
        || check.indices.len() as u64 != expected
        || (expected == 0 && mode.reads_device_memory() && !check.cancelled)
    {
        return Verdict::Incomplete { returned, expected };
    }
    // A full verify also recomputes the root and compares it with the signed one.
    let root_ok = match (check.observed_root, info.merkle_root_bytes()) {
        (Some(observed), Ok(signed)) => bool::from(observed.ct_eq(&signed)),
        (None, Ok(_)) => true,
        (_, Err(_)) => false,
    };
    let mut bad: Vec<u64> = if check.leaves_match_root {
        check
            .indices
            .iter()
            .zip(&check.observed)
            .filter(|(i, h)| !tree.leaf_matches(**i, h))
            .map(|(i, _)| *i)
            .collect()
    } else {
        Vec::new()
    };
    bad.sort_unstable();
    if bad.is_empty() && check.leaves_match_root && root_ok && check.cancelled {
        Verdict::Cancelled {
            chunks_checked: check.indices.len() as u64,
        }
    } else if bad.is_empty() && check.leaves_match_root && root_ok {
        Verdict::Intact {
            chunks_checked: check.indices.len() as u64,
            total_chunks: total,
            bytes_checked: check
                .indices
                .iter()
                .filter_map(|&i| chunk_range(i, chunk, len))
                .map(|(_, n)| n)
                .fold(0u64, u64::saturating_add),
        }
    } else {
        Verdict::Corrupt {
            bad,
            leaves_match_root: check.leaves_match_root,
            observed_root: check.observed_root,
        }
    }
}

impl GpuState {
    /// A caller's `Verify`: the record it holds must be exactly the resident one.
    pub(super) fn verify_request(
        &mut self,
        myself: &ActorRef<GpuMsg>,
        shard: ShardRef,
        info: &ShardInfo,
        mode: VerifyMode,
        cancel: Cancel,
        reply: VerifyReply,
    ) {
        let r = match self.table.get(&shard).map(|e| e.info == *info) {
            Ok(true) => match self.start_verify(myself, shard, mode, cancel, Some(reply)) {
                Err((e, Some(reply))) => (e, reply),
                _ => return,
            },
            Ok(false) => (VramError::UnknownShard(shard.shard_id), reply),
            Err(e) => (e, reply),
        };
        let (e, reply) = r;
        let _ = reply.send(Err(e));
    }

    /// Starts hashing the shard off the actor; the result arrives as `VerifyFinished`. On a
    /// refusal the reply port comes back with the error. The hashing stops at its next piece
    /// once `cancel` is set (the caller gave up); the check counts as in flight until then.
    pub(super) fn start_verify(
        &mut self,
        myself: &ActorRef<GpuMsg>,
        shard: ShardRef,
        mode: VerifyMode,
        cancel: Cancel,
        reply: Option<VerifyReply>,
    ) -> Result<(), (VramError, Option<VerifyReply>)> {
        if let Err(e) = self.live() {
            return Err((e, reply));
        }
        let chunk = self.args.settings.chunk_size;
        let entry = match self.table.get(&shard) {
            Ok(e) => e,
            Err(e) => return Err((e, reply)),
        };
        if let Some(bad) = &entry.quarantine {
            // Its failure is on record; this refusal (and every later one) is only counted.
            let refused = quarantined(&shard.shard_id, bad);
            crate::actors::refuse_audit(&self.args.audit, RefusalReason::QuarantinedShard, None);
            return Err((refused, reply));
        }
        let n = leaf_count(entry.info.vram_bytes, entry.info.chunk_size);
        // A plan that reads nothing (or a sample of nothing, which the facade refuses) hashes
        // no leaf, and `verdict` passes only a mode that reads no device memory that way.
        let indices: Option<Vec<u64>> = match mode.read_plan(n) {
            ReadPlan::EveryChunk => None,
            ReadPlan::Sample(k) => Some(sample_indices(n, k)),
            ReadPlan::Nothing => Some(Vec::new()),
        };
        let root = match entry.info.merkle_root_bytes() {
            Ok(r) => r,
            Err(e) => return Err((e, reply)),
        };
        let tree = Arc::clone(&entry.tree);
        let reader = match self.backend.reader(entry.allocation) {
            Ok(r) => r,
            Err(e) => return Err((self.map(e), reply)),
        };
        if let Ok(entry) = self.table.get_mut(&shard) {
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        let started = Instant::now();
        let myself = myself.clone();
        let piece_leaves = self.piece_leaves(&*reader);
        crate::actors::spans::spawn(async move {
            let job = crate::actors::spans::spawn_blocking(move || {
                hash_leaves(
                    &*reader,
                    chunk,
                    indices,
                    &tree,
                    &root,
                    piece_leaves,
                    &cancel,
                )
            });
            let outcome = match job.await {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => {
                    // The actor re-raises it and is replaced; the caller's reply port goes
                    // with this task, so the caller hears that the device went away.
                    let _ = myself.cast(GpuMsg::WorkerPanicked {
                        job: "a verification's hashing thread",
                        payload: e.into_panic(),
                    });
                    return;
                }
                Err(_) => Err(BackendError::Worker(
                    "the verification thread was cancelled".into(),
                )),
            };
            // If the actor is gone, the reply port is dropped with the message and the caller
            // sees the system shutting down.
            if myself
                .cast(GpuMsg::VerifyFinished {
                    shard,
                    mode,
                    started,
                    outcome,
                    reply,
                })
                .is_err()
            {
                crate::telemetry::record_internal_send_failure("gpu");
            }
        });
        Ok(())
    }

    /// Leaves per hashing piece, the granularity at which a verification notices that its
    /// caller gave up: a staging piece's worth, or the backend's preferred batch
    /// ([`DeviceReader::preferred_batch_leaves`]: enough leaves to keep every host worker busy,
    /// and on CUDA at least the leaf kernel's threshold) if that is more; at least one leaf.
    ///
    /// [`DeviceReader::preferred_batch_leaves`]: crate::gpu::DeviceReader::preferred_batch_leaves
    fn piece_leaves(&self, reader: &dyn crate::gpu::DeviceReader) -> usize {
        piece_leaves(
            self.args.settings.staging_bytes,
            self.args.settings.chunk_size,
            reader.preferred_batch_leaves(self.args.settings.chunk_size),
        )
    }

    /// Concludes a verification: judges it, acts on the verdict, audits it, and lets a release
    /// that was waiting for it go ahead.
    pub(super) fn finish_verify(
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
        let judged = outcome.map(|check| verdict(&entry.info, &entry.tree, mode, &check));
        let result = match judged {
            Err(e) => Err(e),
            Ok(Verdict::Intact {
                chunks_checked,
                total_chunks,
                bytes_checked,
            }) => Ok(VerifyReport {
                shard_id: shard.shard_id.clone(),
                gpu_device: device,
                mode,
                chunks_checked,
                total_chunks,
                bytes_checked,
                single_chunk_detection: if total_chunks == 0 {
                    0.0
                } else {
                    chunks_checked as f64 / total_chunks as f64
                },
                elapsed: started.elapsed(),
            }),
            // Every leaf it read matched: nothing found, nothing passed, the shard untouched.
            Ok(Verdict::Cancelled { .. }) => Err(VramError::Cancelled),
            Ok(Verdict::Incomplete { returned, expected }) => {
                Err(VramError::VerificationIncomplete {
                    shard_id: shard.shard_id.clone(),
                    reason: format!(
                        "the device returned {returned} leaf hashes for {expected} requested"
                    ),
                })
            }
            Ok(Verdict::Corrupt {
                bad,
                leaves_match_root,
                observed_root,
            }) => Err(self.fail_closed(&shard, &bad, leaves_match_root, observed_root)),
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
            // Integrity failures were recorded by `fail_closed`; anything else (a read error, a
            // lost device, an incomplete answer) means the shard could not be checked: say so.
            Err(VramError::SealVerificationFailed { .. }) => {}
            // A caller can drop as many requests as it likes: the first cancellation per
            // window is written in full, later ones only counted (`audit::refusals`).
            Err(e @ VramError::Cancelled) => crate::actors::refuse_audit(
                &self.args.audit,
                RefusalReason::CancelledVerification,
                Some(AuditEvent::VerificationError {
                    shard_id: shard.shard_id.clone(),
                    gpu_device: device,
                    mode: mode.to_string(),
                    error: e.to_string(),
                    trigger: trigger.into(),
                }),
            ),
            Err(e) => self.audit(AuditEvent::VerificationError {
                shard_id: shard.shard_id.clone(),
                gpu_device: device,
                mode: mode.to_string(),
                error: e.to_string(),
                trigger: trigger.into(),
            }),
        }
        // A release that waited for this verification can go ahead now.
        if let Ok(entry) = self.table.get_mut(&shard)
            && entry.in_flight == 0
            && !entry.pending_release.is_empty()
        {
            let _ = self.release_now(&shard.shard_id);
        }
        result
    }

    /// Fail-closed on a corrupt shard: quarantine it, stop the device for new seals and
    /// executions until `reset_device`, and audit both critically. Returns the caller's error.
    fn fail_closed(
        &mut self,
        shard: &ShardRef,
        bad: &[u64],
        leaves_match_root: bool,
        observed_root: Option<Hash>,
    ) -> VramError {
        let device = self.device();
        let Ok(entry) = self.table.get_mut(shard) else {
            return VramError::UnknownShard(shard.shard_id.clone());
        };
        if let Some(found) = &entry.quarantine {
            // Two checks were in flight when the shard went bad: the first one quarantined it
            // and put it on record; the failure is audited once, at that transition.
            return quarantined(&shard.shard_id, found);
        }
        let (len, chunk) = (entry.info.vram_bytes, entry.info.chunk_size);
        let mut spans: Vec<ChunkSpan> = bad
            .iter()
            .filter_map(|&index| {
                chunk_range(index, chunk, len).map(|(offset, len)| ChunkSpan { index, offset, len })
            })
            .collect();
        // Every bad chunk counts towards naming tensors (the tensors that really hold bad
        // bytes are always named); only the first few are kept by range, so the quarantine,
        // and every error cloned from it, stays small whatever the shard's size.
        let tensors = tensors_of(entry.tensors.as_deref(), &spans);
        spans.truncate(MAX_REPORTED_BAD_CHUNKS);
        let reason = if leaves_match_root {
            "device memory differs from the sealed Merkle leaves"
        } else {
            "the sealed leaf list no longer matches the signed Merkle root"
        };
        let found = Quarantine {
            tensors,
            chunks: spans,
            count: bad.len() as u64,
            group: None,
        };
        let err = quarantined(&shard.shard_id, &found);
        let event = AuditEvent::SealVerificationFailed {
            shard_id: shard.shard_id.clone(),
            gpu_device: device,
            reason: reason.into(),
            expected_root: entry.info.merkle_root.clone(),
            actual_root: observed_root
                .map(hex::encode)
                .unwrap_or_else(|| "not computed (the check read only some chunks)".into()),
            first_bad_chunk: found.chunks.first().map(|s| s.index),
            bad_chunks: found.count,
            bad_tensors: found.tensors.iter().take(32).cloned().collect(),
            severity: Severity::Critical,
        };
        let bad_count = found.count;
        entry.quarantine = Some(found);
        self.set_stopped(Some(format!(
            "seal verification failed for shard {}",
            shard.shard_id
        )));
        self.audit(event);
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
            bad_chunks = bad_count,
            "seal verification failed; shard quarantined, device stopped"
        );
        err
    }
}

/// Leaves per verification piece: `staging` bytes' worth of `chunk`-byte leaves, or the
/// backend's `preferred` batch if that is more; at least one.
fn piece_leaves(staging: usize, chunk: u64, preferred: u64) -> usize {
    let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
    let preferred = usize::try_from(preferred).unwrap_or(usize::MAX);
    staging
        .checked_div(chunk)
        .unwrap_or(1)
        .max(preferred)
        .max(1)
}

/// The error every refused call on a quarantined shard gets.
pub(super) fn quarantined(shard_id: &str, bad: &Quarantine) -> VramError {
    if let Some(group) = &bad.group {
        return super::group_quarantine::group_quarantined(shard_id, group);
    }
    VramError::SealVerificationFailed {
        shard_id: shard_id.to_string(),
        first_bad_chunk: bad.chunks.first().map(|s| s.index),
        bad_chunks: bad.chunks.clone(),
        bad_chunk_count: bad.count,
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
    // Each lookup is O(log n + matches) and names are copied only when new, so a crafted
    // header cannot make this quadratic.
    for s in spans {
        for tensor in map.overlapping_spans(s.offset, s.len) {
            if out.len() >= MAX_BAD_TENSORS {
                return out;
            }
            if seen.insert(tensor.name.as_str()) {
                out.push(tensor.name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::merkle::{leaf_hash, root_from_leaves};

    const CHUNK: u64 = 4096;

    /// A 3-chunk shard (4096 + 4096 + 808 bytes) and its sealed record and tree.
    fn sealed() -> (Vec<u8>, ShardInfo, MerkleTree) {
        let data: Vec<u8> = (0..9_000u32).map(|i| (i % 251) as u8).collect();
        let tree = MerkleTree::build(&data, CHUNK as usize);
        let info = ShardInfo {
            vram_bytes: data.len() as u64,
            merkle_root: hex::encode(tree.root()),
            ..ShardInfo::unsigned_for_tests(0)
        };
        (data, info, tree)
    }

    fn leaves_of(data: &[u8]) -> Vec<Hash> {
        data.chunks(CHUNK as usize).map(leaf_hash).collect()
    }

    fn full_check(data: &[u8]) -> LeafCheck {
        let observed = leaves_of(data);
        LeafCheck {
            indices: (0..observed.len() as u64).collect(),
            observed_root: Some(root_from_leaves(&observed)),
            observed,
            leaves_match_root: true,
            cancelled: false,
        }
    }

    #[test]
    fn intact_full_and_sampled() {
        let (data, info, tree) = sealed();
        let v = verdict(&info, &tree, VerifyMode::Full, &full_check(&data));
        assert_eq!(
            v,
            Verdict::Intact {
                chunks_checked: 3,
                total_chunks: 3,
                bytes_checked: 9_000
            }
        );
        let sampled = LeafCheck {
            indices: vec![2],
            observed: vec![leaves_of(&data)[2]],
            leaves_match_root: true,
            observed_root: None,
            cancelled: false,
        };
        let v = verdict(&info, &tree, VerifyMode::Sampled { chunks: 1 }, &sampled);
        assert_eq!(
            v,
            Verdict::Intact {
                chunks_checked: 1,
                total_chunks: 3,
                bytes_checked: 808
            }
        );
    }

    #[test]
    fn a_flipped_byte_names_its_chunk() {
        let (mut data, info, tree) = sealed();
        data[5_000] ^= 0x10;
        match verdict(&info, &tree, VerifyMode::Full, &full_check(&data)) {
            Verdict::Corrupt {
                bad,
                leaves_match_root: true,
                observed_root: Some(_),
            } => assert_eq!(bad, vec![1]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_hashes_are_incomplete_not_a_pass() {
        let (data, info, tree) = sealed();
        let mut check = full_check(&data);
        check.observed.pop();
        check.indices.pop();
        assert_eq!(
            verdict(&info, &tree, VerifyMode::Full, &check),
            Verdict::Incomplete {
                returned: 2,
                expected: 3
            }
        );
        let empty = LeafCheck {
            indices: Vec::new(),
            observed: Vec::new(),
            leaves_match_root: true,
            observed_root: None,
            cancelled: false,
        };
        assert!(matches!(
            verdict(&info, &tree, VerifyMode::Sampled { chunks: 4 }, &empty),
            Verdict::Incomplete { .. }
        ));
        // Signature-only reads nothing, and that is complete.
        assert!(matches!(
            verdict(&info, &tree, VerifyMode::SignatureOnly, &empty),
            Verdict::Intact { .. }
        ));
    }

    #[test]
    fn a_leaf_list_off_the_signed_root_fails_without_naming_chunks() {
        let (data, info, tree) = sealed();
        let mut check = full_check(&data);
        check.leaves_match_root = false;
        assert_eq!(
            verdict(&info, &tree, VerifyMode::Full, &check),
            Verdict::Corrupt {
                bad: Vec::new(),
                leaves_match_root: false,
                observed_root: check.observed_root
            }
        );
    }

    #[test]
    fn a_root_that_differs_from_the_signed_one_fails() {
        let (data, mut info, tree) = sealed();
        info.merkle_root = "ab".repeat(32);
        assert!(matches!(
            verdict(&info, &tree, VerifyMode::Full, &full_check(&data)),
            Verdict::Corrupt { .. }
        ));
    }

    /// The first `n` leaves of a full check, as a check cut short after them.
    fn cut_short(data: &[u8], n: usize) -> LeafCheck {
        let mut check = full_check(data);
        check.indices.truncate(n);
        check.observed.truncate(n);
        check.observed_root = None;
        check.cancelled = true;
        check
    }

    #[test]
    fn a_check_cut_short_is_judged_on_what_it_read() {
        let (mut data, info, tree) = sealed();
        // Good so far: cancelled, never a pass, whatever the mode.
        for mode in [VerifyMode::Full, VerifyMode::Sampled { chunks: 3 }] {
            for n in 0..3 {
                assert_eq!(
                    verdict(&info, &tree, mode, &cut_short(&data, n)),
                    Verdict::Cancelled {
                        chunks_checked: n as u64
                    }
                );
            }
        }
        // A bad leaf among those read fails the shard, named, as a finished check would.
        data[100] ^= 0x01;
        assert_eq!(
            verdict(&info, &tree, VerifyMode::Full, &cut_short(&data, 2)),
            Verdict::Corrupt {
                bad: vec![0],
                leaves_match_root: true,
                observed_root: None
            }
        );
        // One not read yet is no finding.
        let (mut data, ..) = sealed();
        data[8_500] ^= 0x01;
        assert_eq!(
            verdict(&info, &tree, VerifyMode::Full, &cut_short(&data, 2)),
            Verdict::Cancelled { chunks_checked: 2 }
        );
        // A sealed leaf list off the signed root is known before the first piece.
        let mut off_root = cut_short(&data, 1);
        off_root.leaves_match_root = false;
        assert!(matches!(
            verdict(&info, &tree, VerifyMode::Full, &off_root),
            Verdict::Corrupt {
                leaves_match_root: false,
                ..
            }
        ));
        // Fewer hashes than the pieces asked for is still incomplete, not cancelled.
        let mut short = cut_short(&data, 2);
        short.observed.pop();
        assert_eq!(
            verdict(&info, &tree, VerifyMode::Full, &short),
            Verdict::Incomplete {
                returned: 1,
                expected: 2
            }
        );
    }

    #[test]
    fn pieces_are_a_staging_buffer_or_the_backends_batch_whichever_is_more() {
        // Defaults: 8 MiB staging, 1 MiB chunks; a host of 16 workers, CUDA's kernel threshold.
        assert_eq!(piece_leaves(8 << 20, 1 << 20, 256), 256);
        assert_eq!(piece_leaves(8 << 20, 4096, 256), 2048);
        assert_eq!(piece_leaves(8 << 20, 64 << 20, 0), 1);
        assert_eq!(piece_leaves(0, 1 << 20, 0), 1);
    }
}
