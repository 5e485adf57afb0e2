//! What the worker signs with its identity key (ECDSA P-256): `vram-attest-v3` attestations
//! and signed audit heads, which anyone holding only the public key can check.
//!
//! Nothing here re-implements the attestation path: `attest_signed` runs
//! [`VramResidency::attest`] (verify per policy, the verification time, the durable audit head,
//! then the device actor's residency check and the `AttestationIssued` record in one handler),
//! and re-states what that attestation says as an in-toto statement, which the seal keeper signs
//! with the identity key. Formats: `.specs/attestation-v3.md`.

use super::VramResidency;
use crate::actors::gpu_actor::now_unix_nanos;
use crate::attestation::ResidencyClaims;
use crate::attestation::signed::{self, ATTEST_V3_FORMAT, SignedAttestation, SignedAuditHead};
use crate::error::VramError;
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::provenance::dsse::IN_TOTO_PAYLOAD_TYPE;
use crate::shard::SealedShard;
use crate::tensor_parallel::SealedGroup;

impl VramResidency {
    /// The worker's identity public key, PEM SubjectPublicKeyInfo (P-256). Give it to
    /// challengers: it is all they need to check `vram-attest-v3` attestations and signed
    /// audit heads.
    pub fn identity_public_key_pem(&self) -> String {
        self.inner.identity_public.pem.clone()
    }

    /// The identity key's id: lowercase hex SHA-256 of its SubjectPublicKeyInfo DER (the
    /// `keyid` and `hint` of every bundle this worker signs).
    pub fn identity_key_id(&self) -> &str {
        &self.inner.identity_public.key_id
    }
}

impl VramResidency {
    /// Verifies the shard and signs a `vram-attest-v3` attestation with the identity key: a
    /// sigstore bundle v0.3 whose in-toto statement names the shard (id and SHA-256) and says
    /// everything a `vram-attest-v2` attestation says (nonce, seal, mode, time, backend, device,
    /// durable audit head, worker) plus the shard's provenance. The nonce must be 16..=1024
    /// bytes (else `InvalidInput`). Check it with [`crate::verify_signed_attestation`] and
    /// [`VramResidency::identity_public_key_pem`] alone.
    #[tracing::instrument(name = "vram.attest_signed", level = "info", skip_all, fields(shard_id = %shard.shard_id(), device = shard.device(), mode = %self.inner.execute_verify))]
    pub async fn attest_signed(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<SignedAttestation, VramError> {
        let attested = self.attest(shard, nonce).await?;
        let mut claims = ResidencyClaims::from_v2(&attested).map_err(internal)?;
        claims.format = ATTEST_V3_FORMAT.to_string();
        claims.provenance = shard.provenance().cloned();
        self.sign_statement(signed::residency_payload(&claims)?)
            .await
    }

    /// [`VramResidency::attest_group`], signed with the identity key as one `vram-attest-v3`
    /// envelope with one subject per member (in `shard_index` order) and the group record in
    /// the predicate. Check it with [`crate::attestation::signed::verify_signed_group_attestation`].
    #[tracing::instrument(name = "vram.attest_group_signed", level = "info", skip_all, fields(group_id = %group.group_id(), device = %crate::actors::spans::Devices(group.shards().iter().map(SealedShard::device).collect()), mode = %self.inner.execute_verify))]
    pub async fn attest_group_signed(
        &self,
        group: &SealedGroup,
        nonce: &[u8],
    ) -> Result<SignedAttestation, VramError> {
        let attested = self.attest_group(group, nonce).await?;
        let mut members = Vec::with_capacity(attested.members.len());
        for (member, shard) in attested.members.iter().zip(group.shards()) {
            let mut claims = ResidencyClaims::from_v2(member).map_err(internal)?;
            claims.format = ATTEST_V3_FORMAT.to_string();
            claims.provenance = shard.provenance().cloned();
            members.push(claims);
        }
        self.sign_statement(signed::group_payload(&attested.group, &members)?)
            .await
    }

    /// Flushes the audit log and signs its head with the identity key: a DSSE envelope (in the
    /// same bundle as an attestation) that a witness holding only the public key can keep and
    /// check ([`crate::attestation::signed::verify_signed_audit_head`]), and later hold a log
    /// against. Fails with `AuditUnavailable` while the sink fails.
    #[tracing::instrument(name = "vram.audit_head_signed", level = "info", skip_all)]
    pub async fn audit_head_signed(&self) -> Result<SignedAuditHead, VramError> {
        let head = self.audit_head().await?;
        let payload = signed::audit_head_payload(&self.inner.worker_id, &head, now_unix_nanos())?;
        self.sign_statement(payload).await
    }

    /// Has the seal keeper sign an in-toto statement with the identity key, and wraps it.
    async fn sign_statement(&self, payload: Vec<u8>) -> Result<SignedAttestation, VramError> {
        let to_sign = payload.clone();
        let signature = self
            .ask_service(
                &self.inner.seal_keeper,
                |reply| SealKeeperMsg::SignDsse {
                    payload_type: IN_TOTO_PAYLOAD_TYPE,
                    payload: to_sign,
                    reply,
                },
                "the seal keeper",
            )
            .await?;
        tracing::debug!("signed with the identity key");
        Ok(signed::assemble(
            &payload,
            &signature,
            &self.inner.identity_public.key_id,
        ))
    }
}

/// A v2 attestation this worker just signed that does not restate as claims: a bug, not the
/// caller's fault.
fn internal(e: VramError) -> VramError {
    VramError::Internal(format!("restating an attestation failed: {e}"))
}
