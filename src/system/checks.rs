//! Verification and attestation of single shards: the seal's signature through the seal keeper,
//! the bytes through the device, peers' records (`verify_info`), `execute`, and `attest`.

use std::sync::atomic::Ordering;

use crate::actors::gpu_actor::now_unix_nanos;
use crate::actors::refuse_audit;
use crate::attestation::{Attestation, check_nonce};
use crate::audit::events::{AuditEvent, Severity};
use crate::audit::refusals::RefusalReason;
use crate::error::VramError;
use crate::messages::gpu::{AttestDraft, GpuMsg, ResidencyQuery};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::claims::ShardInfo;
use crate::shard::{SealedShard, VerifyMode, VerifyReport};
use crate::telemetry::{self, Outcome, Trigger};
use crate::validation;

use super::*;

impl VramResidency {
    pub(super) async fn check_signature(&self, info: &ShardInfo) -> Result<(), VramError> {
        let ok = self
            .ask_service(
                &self.inner.seal_keeper,
                |reply| SealKeeperMsg::Verify {
                    info: Box::new(info.clone()),
                    reply,
                },
                "the seal keeper",
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(VramError::seal_signature_failed(info.shard_id.clone()))
        }
    }

    /// Puts a failed signature or residency check on record as `SealVerificationFailed` with a
    /// reason naming what failed: the first of each kind in full, repeats counted into one
    /// `RefusalsSuppressed` per minute (`audit::refusals`); a check of a shard already
    /// quarantined is only counted. Recorded only: nothing is quarantined and no device stopped
    /// (nothing resident is known to be wrong). Failures that are not a verdict (shutdown,
    /// timeouts, a stopped or lost device) are not recorded here. Passing checks are counted in
    /// `vram_signature_checks_total{result="pass"}`, not written one line each.
    fn record_check(
        &self,
        info: &ShardInfo,
        what: &str,
        signature: &Result<(), VramError>,
        residency: &Result<Result<(), VramError>, VramError>,
    ) {
        let (failed, reason) = match (signature, residency) {
            (Err(VramError::SealVerificationFailed { .. }), _) => (
                "the seal signature does not verify (forged or altered record)",
                RefusalReason::ForgedShardRecord,
            ),
            (_, Ok(Err(VramError::UnknownShard(_)))) => (
                "residency mismatch: no shard resident here carries exactly this record",
                RefusalReason::ResidencyMismatch,
            ),
            (
                _,
                Ok(Err(
                    VramError::SealVerificationFailed { .. } | VramError::GroupQuarantined { .. },
                )),
            ) => {
                // The quarantine is on record already: this refusal is only counted.
                telemetry::record_signature_check(false);
                refuse_audit(&self.inner.audit, RefusalReason::QuarantinedShard, None);
                return;
            }
            (Ok(()), Ok(Ok(()))) => {
                telemetry::record_signature_check(true);
                return;
            }
            _ => return,
        };
        telemetry::record_signature_check(false);
        let root_ok = info.merkle_root.len() == 64
            && info
                .merkle_root
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        // Forgeries and mismatches repeat as often as a peer sends them: the first of each
        // reason is written in full, the rest are counted (`audit::refusals`).
        refuse_audit(
            &self.inner.audit,
            reason,
            Some(AuditEvent::SealVerificationFailed {
                shard_id: info.shard_id.clone(),
                gpu_device: info.gpu_device,
                reason: format!("{what}: {failed} (recorded only: nothing quarantined)"),
                expected_root: if root_ok {
                    info.merkle_root.clone()
                } else {
                    String::new()
                },
                actual_root: String::new(),
                first_bad_chunk: None,
                bad_chunks: 0,
                bad_tensors: Vec::new(),
                severity: Severity::Critical,
            }),
        );
    }

    /// Proves the shard still matches its seal: the signature always; the bytes in device
    /// memory for `Full` (every chunk) and `Sampled` (random chunks). A mismatch quarantines the
    /// shard and stops its device (fail-closed).
    #[tracing::instrument(name = "vram.verify", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device(), mode = %mode))]
    pub async fn verify(
        &self,
        shard: &SealedShard,
        mode: VerifyMode,
    ) -> Result<VerifyReport, VramError> {
        let started = std::time::Instant::now();
        let verified = self.verify_uncounted(shard, mode).await;
        if let Some(outcome) = Outcome::counted(&verified) {
            telemetry::record_verification(mode, Trigger::Request, outcome, started.elapsed());
        }
        if let Ok(report) = &verified {
            tracing::debug!(chunks_checked = report.chunks_checked, bytes_checked = report.bytes_checked,
                elapsed = ?started.elapsed(), "verified");
        }
        verified
    }

    /// `verify` without the `vram_verifications_total` count and duration (which `verify`
    /// adds for every outcome).
    async fn verify_uncounted(
        &self,
        shard: &SealedShard,
        mode: VerifyMode,
    ) -> Result<VerifyReport, VramError> {
        self.live()?;
        if shard.inner.released.load(Ordering::Acquire) {
            return Err(VramError::UnknownShard(shard.shard_id().to_string()));
        }
        let mode = mode.validate()?;
        let started = std::time::Instant::now();
        let info = &shard.inner.info;
        let device = info.gpu_device;
        if !mode.reads_device_memory() {
            {
                // The two checks are independent: ask both actors at once.
                let query = ResidencyQuery::Handle(shard.inner.shard_ref(), Box::new(info.clone()));
                let (signature, residency) = tokio::join!(
                    self.check_signature(info),
                    self.ask_gpu(device, |reply| GpuMsg::Residency { query, reply })
                );
                self.record_check(info, "a signature-only check", &signature, &residency);
                signature?;
                residency??;
                Ok(VerifyReport {
                    shard_id: info.shard_id.clone(),
                    gpu_device: device,
                    mode,
                    chunks_checked: 0,
                    total_chunks: crate::seal::merkle::leaf_count(info.vram_bytes, info.chunk_size),
                    bytes_checked: 0,
                    single_chunk_detection: 0.0,
                    elapsed: started.elapsed(),
                })
            }
        } else {
            {
                self.check_signature(info).await?;
                let shard_ref = shard.inner.shard_ref();
                // A caller that gives up stops the hashing at its next piece. What the device
                // found before it stopped is counted here, since `verify` is no longer there to
                // count it (a timed-out caller already counted its `Timeout`).
                let asked = std::time::Instant::now();
                self.ask_gpu_cancellable(
                    device,
                    |reply, cancel| GpuMsg::Verify {
                        shard: shard_ref,
                        info: Box::new(info.clone()),
                        mode,
                        cancel,
                        reply,
                    },
                    move |late: Result<Result<VerifyReport, VramError>, VramError>, abandoned| {
                        let late = late.and_then(|answer| answer);
                        // A verification that stopped unjudged is counted in the refusals.
                        if abandoned == super::admission::Abandoned::CallerLeft
                            && !matches!(late, Err(VramError::Cancelled))
                            && let Some(outcome) = Outcome::counted(&late)
                        {
                            telemetry::record_verification(
                                mode,
                                Trigger::Request,
                                outcome,
                                asked.elapsed(),
                            );
                        }
                    },
                )
                .await?
            }
        }
    }

    /// Checks a `ShardInfo` received from elsewhere: its signature against this worker's key,
    /// and that exactly that shard is resident here and not quarantined.
    #[tracing::instrument(name = "vram.verify_info", level = "info", skip_all, fields(shard_id = %crate::actors::spans::Shown(&info.shard_id), device = info.gpu_device, mode = %VerifyMode::SignatureOnly))]
    pub async fn verify_info(&self, info: &ShardInfo) -> Result<VerifyReport, VramError> {
        let started = std::time::Instant::now();
        let verified = self.verify_info_uncounted(info, started).await;
        if verified.is_ok() {
            tracing::debug!(elapsed = ?started.elapsed(), "verified a peer's record");
        }
        // A peer's record that no resident shard carries is a failed check, not a missing
        // answer (it is audited as a failure too).
        let outcome = match &verified {
            Err(VramError::UnknownShard(_)) => Some(Outcome::Fail),
            other => Outcome::counted(other),
        };
        if let Some(outcome) = outcome {
            let mode = VerifyMode::SignatureOnly;
            telemetry::record_verification(mode, Trigger::Request, outcome, started.elapsed());
        }
        verified
    }

    /// `verify_info` without the `vram_verifications_total` count and duration.
    async fn verify_info_uncounted(
        &self,
        info: &ShardInfo,
        started: std::time::Instant,
    ) -> Result<VerifyReport, VramError> {
        self.live()?;
        validation::validate_identifier("shard_id", &info.shard_id)?;
        validation::validate_device(info.gpu_device, self.inner.device_count)?;
        let query = ResidencyQuery::Info(Box::new(info.clone()));
        let (signature, residency) = tokio::join!(
            self.check_signature(info),
            self.ask_gpu(info.gpu_device, |reply| GpuMsg::Residency { query, reply })
        );
        self.record_check(
            info,
            "a peer's ShardInfo (verify_info)",
            &signature,
            &residency,
        );
        // A bad signature is the more important answer: report it first.
        signature?;
        residency??;
        Ok(VerifyReport {
            shard_id: info.shard_id.clone(),
            gpu_device: info.gpu_device,
            mode: VerifyMode::SignatureOnly,
            chunks_checked: 0,
            total_chunks: crate::seal::merkle::leaf_count(info.vram_bytes, info.chunk_size),
            bytes_checked: 0,
            single_chunk_detection: 0.0,
            elapsed: started.elapsed(),
        })
    }

    /// Verifies the shard (per `Config::execute_verify`) and signs a `vram-attest-v2` statement
    /// binding the challenger's `nonce` (16..=1024 bytes, else `InvalidInput`) to its seal, the
    /// mode that ran, the backend and device, and the durable audit head (flushed first). The
    /// device actor checks that the shard is still resident and not quarantined in the same
    /// handler that obtains the signature. Check it with [`crate::verify_attestation`] or
    /// [`crate::verify_attestation_with`].
    #[tracing::instrument(name = "vram.attest", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device(), mode = %self.inner.execute_verify))]
    pub async fn attest(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<Attestation, VramError> {
        let started = std::time::Instant::now();
        let draft = self
            .attest_draft(nonce, |mode| self.verify(shard, mode))
            .await?;
        let attested = self.sign_attestation(shard, draft).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "attested");
        Ok(attested)
    }

    /// The steps every attestation shares, in order: check the nonce, verify in the mode
    /// `Config::execute_verify` sets (through `verify`, a shard's or a group's), take the time,
    /// then flush and read the audit head. The draft is what each device signs.
    pub(super) async fn attest_draft<T, F>(
        &self,
        nonce: &[u8],
        verify: impl FnOnce(VerifyMode) -> F,
    ) -> Result<Box<AttestDraft>, VramError>
    where
        F: std::future::Future<Output = Result<T, VramError>>,
    {
        check_nonce(nonce)?;
        let mode = self.inner.execute_verify;
        verify(mode).await?;
        let verified_at_unix_nanos = now_unix_nanos();
        let audit_head = self.audit_head().await?;
        Ok(Box::new(AttestDraft {
            nonce: nonce.to_vec(),
            verified_mode: mode,
            verified_at_unix_nanos,
            audit_head,
        }))
    }

    /// Asks the shard's device to sign `draft` for it: the device checks, in the same handler,
    /// that the shard is still resident and not quarantined.
    pub(super) async fn sign_attestation(
        &self,
        shard: &SealedShard,
        draft: Box<AttestDraft>,
    ) -> Result<Attestation, VramError> {
        let shard_ref = shard.inner.shard_ref();
        let info = Box::new(shard.info().clone());
        self.ask_gpu(shard.device(), |reply| GpuMsg::Attest {
            shard: shard_ref,
            info,
            draft,
            reply,
        })
        .await?
    }
}
