//! Tensor-parallel groups on the facade: `seal_group`, `verify_group`, `verify_group_info`,
//! `attest_group` and `release_group`.
//!
//! Members are ordinary shards: each part is sealed, verified, attested and released through the
//! same paths as a single shard ([`VramResidency::seal`] and friends), one task per part so the
//! parts on different devices run in parallel. What this module adds is the group's all-or-
//! nothing rules, decided here in the handle (no actor knows about groups):
//!
//! * **Seal**: every part is validated before anything is sent to a device (ids, model refs,
//!   devices, digests, sizes, duplicates, tensor-parallel positions): bad input is
//!   `InvalidInput` and allocates nothing. If a part then fails on its device, every part that
//!   did seal is released (and awaited) before the error returns, so each device's accounting
//!   is where it started and the ids are free again. The group record is signed by the
//!   `SealKeeper` (the key never leaves it).
//! * **Verify**: one member failing with an integrity error (or an already quarantined member)
//!   quarantines every member on its device (`GpuMsg::QuarantineForGroup`), so no `execute` or
//!   attestation runs on any part of a partly corrupted model; the failing member's device is
//!   stopped (fail-closed, as for any failed verification), the others keep serving other
//!   shards. The audit log gets `GroupVerificationFailed` next to the member's own
//!   `SealVerificationFailed`, and one `GroupMemberQuarantined` per member quarantined, once:
//!   later refusals of the failed group are counted (`audit::refusals`), not written again.
//! * Errors about one member are [`VramError::GroupMember`] (group, index, shard id and the
//!   member's own error), except bad input, which stays `InvalidInput` with the part named in
//!   its message.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crate::actors::gpu_actor::now_unix_nanos;
use crate::actors::{emit_audit, refuse_audit};
use crate::attestation::{Attestation, GroupAttestation};
use crate::audit::events::{AuditEvent, Severity};
use crate::audit::refusals::RefusalReason;
use crate::error::VramError;
use crate::messages::gpu::GpuMsg;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::seal::group_record::{GROUP_FORMAT, GroupInfo, MAX_GROUP_MEMBERS};
use crate::shard::{SealRequest, SealSource, SealedShard, VerifyMode, VerifyReport};
use crate::tensor_parallel::{GroupRequest, SealedGroup};
use crate::validation;

use super::VramResidency;

impl VramResidency {
    /// Seals a tensor-parallel group: every part on its own device, in parallel, part `i`
    /// tagged `shard_index = i`, `total_shards` = the part count; then signs the group record
    /// (`vram-group-v1`) binding every member's seal and device in order.
    ///
    /// Bad input — group or member ids that are not valid ids, bad model refs, a device that
    /// does not exist, a bad expected digest, an empty or oversized part, two parts with one
    /// id, no parts, a part whose own `.tensor_parallel()` disagrees with its position — is
    /// `InvalidInput` naming the part, and nothing is allocated. If a part fails on its device
    /// (no room, an allocation failure, a digest mismatch, an id already resident), every part
    /// already sealed is released before this returns, the error names the failing part
    /// ([`VramError::GroupMember`], or `InvalidInput` for an id already resident), and every
    /// device's accounting is back where it started.
    #[tracing::instrument(name = "vram.seal_group", level = "info", skip_all, fields(group_id = %crate::actors::spans::Shown(&request.group_id), device = %crate::actors::spans::Devices(request.parts.iter().map(|p| p.device).collect())))]
    pub async fn seal_group(&self, request: GroupRequest) -> Result<SealedGroup, VramError> {
        self.live()?;
        let GroupRequest {
            group_id,
            model_ref,
            parts,
        } = request;
        validation::validate_identifier("group_id", &group_id)?;
        validation::validate_model_ref(&model_ref)
            .map_err(|e| prefixed(&format!("group {group_id}"), e))?;
        if parts.is_empty() {
            return Err(VramError::invalid(format!(
                "group {group_id} has no parts; add them with GroupRequest::part"
            )));
        }
        if parts.len() > MAX_GROUP_MEMBERS {
            return Err(VramError::invalid(format!(
                "group {group_id} has {} parts; the limit is {MAX_GROUP_MEMBERS}",
                parts.len()
            )));
        }
        let total = u32::try_from(parts.len())
            .map_err(|_| VramError::invalid("too many parts in the group"))?;
        let mut seen = HashSet::new();
        let mut checked = Vec::with_capacity(parts.len());
        for (index, part) in (0u32..).zip(parts) {
            checked.push(
                self.check_part(&group_id, index, total, part, &mut seen)
                    .await?,
            );
        }
        let ids: Vec<String> = checked.iter().map(|p| p.shard_id.clone()).collect();

        // One task per part: parts on different devices seal at once. If this future is
        // dropped, the tasks still finish, and the handles they return are dropped, which
        // releases them.
        let handles: Vec<_> = checked
            .into_iter()
            .map(|part| {
                let system = self.clone();
                crate::actors::spans::spawn(async move { system.seal(part).await })
            })
            .collect();
        let mut sealed = Vec::with_capacity(handles.len());
        let mut failure: Option<(u32, VramError)> = None;
        for (index, handle) in (0u32..).zip(handles) {
            let result = handle
                .await
                .unwrap_or_else(|_| Err(VramError::Internal("a group seal task failed".into())));
            match result {
                Ok(shard) => sealed.push(shard),
                Err(e) if failure.is_none() => failure = Some((index, e)),
                Err(_) => {}
            }
        }
        if let Some((index, e)) = failure {
            let failed_id = ids.get(index as usize).cloned().unwrap_or_default();
            let released = self.release_members(sealed).await;
            emit_audit(
                &self.inner.audit,
                AuditEvent::GroupSealAborted {
                    group_id: group_id.clone(),
                    failed_shard_id: failed_id.clone(),
                    reason: e.to_string(),
                    parts_released: released,
                },
            );
            return Err(member_error(&group_id, index, &failed_id, e));
        }

        let mut info = GroupInfo {
            format: GROUP_FORMAT.to_string(),
            worker_id: self.inner.worker_id.clone(),
            group_id,
            model_ref,
            sealed_at_unix_nanos: now_unix_nanos(),
            members: sealed.iter().map(|s| s.info().clone()).collect(),
            signature: String::new(),
        };
        let unsigned = Box::new(info.clone());
        let signed = self
            .ask_service(
                &self.inner.seal_keeper,
                |reply| SealKeeperMsg::SignGroup {
                    info: unsigned,
                    reply,
                },
                "the seal keeper",
            )
            .await
            .and_then(|r| r);
        info.signature = match signed {
            Ok(signature) => signature,
            Err(e) => {
                let released = self.release_members(sealed).await;
                emit_audit(
                    &self.inner.audit,
                    AuditEvent::GroupSealAborted {
                        group_id: info.group_id.clone(),
                        failed_shard_id: String::new(),
                        reason: format!("signing the group record failed: {e}"),
                        parts_released: released,
                    },
                );
                return Err(e);
            }
        };
        emit_audit(
            &self.inner.audit,
            AuditEvent::GroupSealed {
                group_id: info.group_id.clone(),
                model_ref: info.model_ref.clone(),
                total_shards: total,
                members: ids.iter().take(32).cloned().collect(),
                signature: info.signature.clone(),
            },
        );
        tracing::debug!(members = total, "group sealed");
        Ok(SealedGroup::new(info, sealed))
    }

    /// Validates one part of a group (everything `seal` would check before allocating, plus
    /// the group's own rules) and tags it with its position. Errors are `InvalidInput` naming
    /// the group and the part, except a part file that cannot be read: that member's `Io`
    /// error, as a [`VramError::GroupMember`].
    async fn check_part(
        &self,
        group_id: &str,
        index: u32,
        total: u32,
        mut part: SealRequest,
        seen: &mut HashSet<String>,
    ) -> Result<SealRequest, VramError> {
        let at = format!("group {group_id}: part {index}");
        validation::validate_identifier("shard_id", &part.shard_id)
            .map_err(|e| prefixed(&at, e))?;
        let at = format!("{at} ({})", part.shard_id);
        let check = |r: Result<(), VramError>| r.map_err(|e| prefixed(&at, e));
        if !seen.insert(part.shard_id.clone()) {
            return Err(VramError::invalid(format!(
                "{at}: another part of the group has the same shard id"
            )));
        }
        check(validation::validate_model_ref(&part.model_ref))?;
        check(validation::validate_device(
            part.device,
            self.inner.device_count,
        ))?;
        if let Some(hex) = &part.expected_sha256 {
            check(validation::validate_hex_digest("expected_sha256", hex).map(|_| ()))?;
        }
        match part.tensor_parallel {
            None => {}
            Some(tp) if tp == (index, total) => {}
            Some((i, n)) => {
                return Err(VramError::invalid(format!(
                    "{at}: the part says tensor_parallel({i}, {n}) but it is part {index} of {total}"
                )));
            }
        }
        let len = match &part.source {
            SealSource::Bytes(b) => b.len() as u64,
            SealSource::Reader(_, n) => *n,
            SealSource::File(path) => {
                let shown = validation::shown_path(path);
                let meta = tokio::fs::metadata(path).await.map_err(|e| {
                    member_error(
                        group_id,
                        index,
                        &part.shard_id,
                        VramError::io_error(e, format_args!("cannot read model file {shown}")),
                    )
                })?;
                if !meta.is_file() {
                    return Err(VramError::invalid(format!(
                        "{at}: model file {shown} is not a regular file"
                    )));
                }
                meta.len()
            }
        };
        check(validation::validate_model_size(
            len,
            self.inner.max_model_size,
        ))?;
        part.tensor_parallel = Some((index, total));
        Ok(part)
    }

    /// Releases sealed parts (in parallel) and waits for every release; returns how many were
    /// released. Used to roll back a group that did not seal: a part that cannot be released
    /// now (its device crashed, and its memory with it) is logged, not retried.
    async fn release_members(&self, shards: Vec<SealedShard>) -> u32 {
        let handles: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                let system = self.clone();
                crate::actors::spans::spawn(async move {
                    let id = shard.shard_id().to_string();
                    (id, system.release(shard).await)
                })
            })
            .collect();
        let mut released = 0u32;
        for handle in handles {
            match handle.await {
                Ok((_, Ok(_))) => released = released.saturating_add(1),
                Ok((id, Err(e))) => {
                    tracing::warn!(shard_id = %id, error = %e, "rolling back a group: release failed");
                }
                Err(_) => tracing::warn!("rolling back a group: a release task failed"),
            }
        }
        released
    }

    /// Verifies every member of the group in `mode`, in parallel, and the group record's
    /// signature. Returns the members' reports in `shard_index` order.
    ///
    /// Fail-all: if a member fails with an integrity error (its bytes no longer match its
    /// seal, or it was already quarantined), every member is quarantined — `execute` and
    /// attestations are refused on all of them — and the error is [`VramError::GroupMember`]
    /// naming that member (and, through its cause, its bad chunks). The failing member's own
    /// device stops fail-closed as for any failed verification. Other failures (a member
    /// released on its own, a lost device, a timeout) are returned the same way without
    /// quarantining anything: nothing is known to be wrong.
    #[tracing::instrument(name = "vram.verify_group", level = "info", skip_all, fields(group_id = %group.group_id(), device = %crate::actors::spans::Devices(group.shards().iter().map(SealedShard::device).collect()), mode = %mode))]
    pub async fn verify_group(
        &self,
        group: &SealedGroup,
        mode: VerifyMode,
    ) -> Result<Vec<VerifyReport>, VramError> {
        self.live()?;
        if group.inner.released.load(Ordering::Acquire) {
            return Err(VramError::UnknownShard(group.group_id().to_string()));
        }
        let mode = mode.validate()?;
        // The members' verifications and the group's verdict run as one task of their own: a
        // caller that drops this future (or times out) does not cut the group's fail-all rule
        // short. A group verification therefore runs to its end, unlike a single shard's.
        let (system, owned) = (self.clone(), group.clone());
        crate::actors::spans::spawn(async move { system.verify_group_to_end(&owned, mode).await })
            .await
            .unwrap_or_else(|_| Err(VramError::Internal("a group verification failed".into())))
    }

    /// [`VramResidency::verify_group`] after its checks of the request: every member verified,
    /// the group signature checked, and the verdict applied (fail-all).
    async fn verify_group_to_end(
        &self,
        group: &SealedGroup,
        mode: VerifyMode,
    ) -> Result<Vec<VerifyReport>, VramError> {
        let handles: Vec<_> = group
            .shards()
            .iter()
            .map(|member| {
                let (system, member) = (self.clone(), member.clone());
                crate::actors::spans::spawn(async move { system.verify(&member, mode).await })
            })
            .collect();
        let signature = self.check_group_signature(group.info()).await;
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            results.push(handle.await.unwrap_or_else(|_| {
                Err(VramError::Internal(
                    "a group verification task failed".into(),
                ))
            }));
        }
        match signature {
            Ok(true) => {}
            Ok(false) => {
                let failed = group.group_id().to_string();
                let err = VramError::seal_signature_failed(failed.clone());
                self.fail_group(group, &failed, None, &err).await;
                return Err(err);
            }
            Err(e) => return Err(e),
        }
        let reports = self.conclude(group, results).await?;
        tracing::debug!(members = reports.len(), "group verified");
        Ok(reports)
    }

    /// Checks a `GroupInfo` received from elsewhere: its shape and group signature against this
    /// worker's key, and every member as [`VramResidency::verify_info`] does (signature, and
    /// exactly that shard resident here and not quarantined). Nothing is quarantined by a
    /// failure here: the record came from outside.
    #[tracing::instrument(name = "vram.verify_group_info", level = "info", skip_all, fields(group_id = %crate::actors::spans::Shown(&info.group_id), device = %crate::actors::spans::Devices(info.members.iter().map(|m| m.gpu_device).collect()), mode = %VerifyMode::SignatureOnly))]
    pub async fn verify_group_info(
        &self,
        info: &GroupInfo,
    ) -> Result<Vec<VerifyReport>, VramError> {
        self.live()?;
        info.check_structure()?;
        if !self.check_group_signature(info).await? {
            // On record once per window; repeats are counted (a forger chooses how often).
            let record = AuditEvent::GroupVerificationFailed {
                group_id: info.group_id.clone(),
                failed_shard_id: String::new(),
                gpu_device: u32::MAX,
                reason: "a peer's GroupInfo (verify_group_info): the group signature does not \
                         verify (forged or altered record; recorded only: nothing quarantined)"
                    .into(),
                total_shards: u32::try_from(info.members.len()).unwrap_or(u32::MAX),
                severity: Severity::Critical,
            };
            refuse_audit(
                &self.inner.audit,
                RefusalReason::ForgedGroupRecord,
                Some(record),
            );
            return Err(VramError::seal_signature_failed(info.group_id.clone()));
        }
        let mut reports = Vec::with_capacity(info.members.len());
        for (index, member) in (0u32..).zip(&info.members) {
            let report = self
                .verify_info(member)
                .await
                .map_err(|e| member_error(&info.group_id, index, &member.shard_id, e))?;
            reports.push(report);
        }
        tracing::debug!(members = reports.len(), "verified a peer's group record");
        Ok(reports)
    }

    /// Verifies the group (`verify_group` in the mode `Config::execute_verify` sets, with its
    /// fail-all rule), then answers the challenger's `nonce` (16..=1024 bytes, else
    /// `InvalidInput`) for every member at once: one `vram-attest-v2` attestation per member,
    /// all with the same nonce, verification time and durable audit head, bundled with the
    /// group record. Each member's device checks residency and obtains the signature in one
    /// handler, as for [`VramResidency::attest`]. Check the answer with
    /// [`crate::verify_group_attestation`] or [`crate::verify_group_attestation_with`].
    #[tracing::instrument(name = "vram.attest_group", level = "info", skip_all, fields(group_id = %group.group_id(), device = %crate::actors::spans::Devices(group.shards().iter().map(SealedShard::device).collect()), mode = %self.inner.execute_verify))]
    pub async fn attest_group(
        &self,
        group: &SealedGroup,
        nonce: &[u8],
    ) -> Result<GroupAttestation, VramError> {
        let draft = self
            .attest_draft(nonce, |mode| self.verify_group(group, mode))
            .await?;
        let handles: Vec<_> = group
            .shards()
            .iter()
            .map(|member| {
                let (system, member, draft) = (self.clone(), member.clone(), draft.clone());
                crate::actors::spans::spawn(
                    async move { system.sign_attestation(&member, draft).await },
                )
            })
            .collect();
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            results.push(handle.await.unwrap_or_else(|_| {
                Err(VramError::Internal(
                    "a group attestation task failed".into(),
                ))
            }));
        }
        // A member quarantined (by the scrub) between the verification and its signature is
        // refused by its device; that is a group failure like any other.
        let members: Vec<Attestation> = self.conclude(group, results).await?;
        tracing::debug!(members = members.len(), "group attested");
        Ok(GroupAttestation {
            group: group.info().clone(),
            members,
        })
    }

    /// Releases every member of the group still resident, at once; returns the bytes freed.
    /// Members released on their own before (through a clone of their `SealedShard`) are
    /// skipped. The group, its clones and every clone of its members' handles are stale
    /// afterwards. Releasing a group twice is `UnknownShard` (naming the group).
    #[tracing::instrument(name = "vram.release_group", level = "info", skip_all, fields(group_id = %group.group_id(), device = %crate::actors::spans::Devices(group.shards().iter().map(SealedShard::device).collect())))]
    pub async fn release_group(&self, group: SealedGroup) -> Result<u64, VramError> {
        self.live()?;
        if group.inner.released.swap(true, Ordering::AcqRel) {
            return Err(VramError::UnknownShard(group.group_id().to_string()));
        }
        let handles: Vec<_> = group
            .shards()
            .iter()
            .map(|member| {
                let (system, member) = (self.clone(), member.clone());
                crate::actors::spans::spawn(async move { system.release(member).await })
            })
            .collect();
        let mut freed = 0u64;
        let mut first_error = None;
        for ((index, member), handle) in (0u32..).zip(group.shards()).zip(handles) {
            let result = handle
                .await
                .unwrap_or_else(|_| Err(VramError::Internal("a group release task failed".into())));
            match result {
                Ok(bytes) => freed = freed.saturating_add(bytes),
                // Released on its own already: nothing left to free.
                Err(VramError::UnknownShard(_)) => {}
                Err(e) if first_error.is_none() => {
                    first_error = Some(member_error(group.group_id(), index, member.shard_id(), e));
                }
                Err(_) => {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                tracing::debug!(bytes = freed, "group released");
                Ok(freed)
            }
        }
    }

    /// Asks the seal keeper whether the group record's signature is valid.
    async fn check_group_signature(&self, info: &GroupInfo) -> Result<bool, VramError> {
        let info = Box::new(info.clone());
        self.ask_service(
            &self.inner.seal_keeper,
            |reply| SealKeeperMsg::VerifyGroup { info, reply },
            "the seal keeper",
        )
        .await
    }

    /// Turns the members' results into the group's: all `Ok` gives the values in order; an
    /// integrity failure fails the whole group (fail-all) and names the member; any other
    /// failure names the member without quarantining anything.
    async fn conclude<T>(
        &self,
        group: &SealedGroup,
        results: Vec<Result<T, VramError>>,
    ) -> Result<Vec<T>, VramError> {
        // The member found bad itself says more than one refused because of the group.
        let rank = |e: &VramError| match e.innermost() {
            VramError::GroupQuarantined { .. } => 1,
            e if e.is_integrity_failure() => 0,
            _ => 2,
        };
        let worst = (0u32..)
            .zip(&results)
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (rank(e), i)))
            .min();
        let Some((rank, index)) = worst else {
            return Ok(results.into_iter().filter_map(Result::ok).collect());
        };
        let Some(Err(err)) = results.into_iter().nth(index as usize) else {
            return Err(VramError::Internal(
                "a group member's result went missing".into(),
            ));
        };
        let member = group
            .shards()
            .get(index as usize)
            .map(|s| (s.shard_id().to_string(), s.device()));
        let (shard_id, device) = member.unwrap_or_default();
        if rank < 2 {
            // An already group-quarantined member points at the member that failed first.
            let failed = match &err {
                VramError::GroupQuarantined {
                    failed_shard_id, ..
                } => failed_shard_id.clone(),
                _ => shard_id.clone(),
            };
            self.fail_group(group, &failed, Some(device), &err).await;
        }
        Err(member_error(group.group_id(), index, &shard_id, err))
    }

    /// Fail-all: records the group failure and quarantines every member on its device (a
    /// member already quarantined keeps its own finding). Releases and resets must always get
    /// through, and so must this: it bypasses the devices' admission queues.
    async fn fail_group(
        &self,
        group: &SealedGroup,
        failed_shard_id: &str,
        failed_device: Option<u32>,
        err: &VramError,
    ) {
        let group_id = group.group_id().to_string();
        if group.inner.failed.swap(true, Ordering::AcqRel) {
            // Already failed and quarantined (its failure is on record): a refusal, counted.
            refuse_audit(&self.inner.audit, RefusalReason::QuarantinedGroup, None);
            return;
        }
        emit_audit(
            &self.inner.audit,
            AuditEvent::GroupVerificationFailed {
                group_id: group_id.clone(),
                failed_shard_id: failed_shard_id.to_string(),
                gpu_device: failed_device.unwrap_or(u32::MAX),
                reason: err.to_string(),
                total_shards: u32::try_from(group.len()).unwrap_or(u32::MAX),
                severity: Severity::Critical,
            },
        );
        tracing::error!(group_id = %group_id, failed_shard_id = %failed_shard_id,
            "group verification failed; quarantining every member (fail-all)");
        for member in group.shards() {
            let shard = member.inner.shard_ref();
            let (group_id, failed) = (group_id.clone(), failed_shard_id.to_string());
            let r = self
                .ask_gpu_now(member.device(), |reply| GpuMsg::QuarantineForGroup {
                    shard,
                    group_id,
                    failed_shard_id: failed,
                    reply,
                })
                .await;
            match r {
                Ok(Ok(_)) => {}
                // Released, or lost with a crashed device: nothing left to execute.
                Ok(Err(VramError::UnknownShard(_))) => {}
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(shard_id = %member.shard_id(), error = %e,
                        "could not quarantine a member of a failed group");
                }
            }
        }
    }
}

/// A member's error as the group reports it: bad input stays `InvalidInput` (with the group
/// and part named in the message), anything else is wrapped in [`VramError::GroupMember`].
fn member_error(group_id: &str, index: u32, shard_id: &str, err: VramError) -> VramError {
    match err {
        VramError::InvalidInput(m) => {
            VramError::InvalidInput(format!("group {group_id}: part {index} ({shard_id}): {m}"))
        }
        cause => VramError::GroupMember {
            group_id: group_id.to_string(),
            shard_index: index,
            shard_id: shard_id.to_string(),
            cause: Box::new(cause),
        },
    }
}

/// `InvalidInput` with `at` before its message (other errors unchanged).
fn prefixed(at: &str, err: VramError) -> VramError {
    match err {
        VramError::InvalidInput(m) => VramError::InvalidInput(format!("{at}: {m}")),
        other => other,
    }
}
