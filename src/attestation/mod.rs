//! `vram-attest-v2`: a signed answer to a challenger's nonce, saying that a shard was verified
//! resident and intact at a given moment, on which backend and device, and how far the audit log
//! reached when it was signed.
//!
//! The statement the HMAC covers (exact layout and vectors in `.specs/attestation-v2.md`):
//! ASCII `vram-attest-v2`; the nonce as u32 BE length + bytes; the shard's `vram-seal-v1` claims
//! as u32 BE length + bytes; the shard's seal signature (32 raw bytes); `verified_at_unix_nanos`
//! u64 BE; the verification mode as u32 BE length + ASCII (`full`, `sampled(k)`,
//! `signature-only`); the backend kind as u32 BE length + ASCII (`cuda`, `simulated`); the device
//! identity as u32 BE length + UTF-8 (the GPU's UUID on CUDA, the device name on a simulated
//! device); the audit head's seq u64 BE and MAC (32 raw bytes).
//!
//! The key is HKDF-SHA256(token, info = "llorch-attest-key-v1"), distinct from the seal key, so
//! an attestation can never be replayed as a seal or the other way round; the format tag keeps
//! v2 statements apart from v1 ones, which are refused by tag. A challenger holding the worker
//! token checks an attestation with [`verify_attestation`] (signature and nonce) or
//! [`verify_attestation_with`] (also the challenger's [`AttestationPolicy`]). Every fault of an
//! attestation is `AttestationInvalid`, never an error about the shard it names.
//!
//! [`signed`] holds `vram-attest-v3`, the same facts signed with the worker's identity key
//! (ECDSA P-256), which a challenger checks with the public key alone; both formats are checked
//! against one policy, through [`ResidencyClaims`].

pub mod signed;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::Mac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::VramError;
use crate::provenance::Provenance;
use crate::seal::claims::ShardInfo;
use crate::seal::group_record::GroupInfo;
use crate::seal::keys::{AttestKey, WorkerToken};
use crate::types::{AuditHead, BackendKind, DeviceIdentity, VerifyMode};

/// Format tag of attestations.
pub const ATTEST_FORMAT: &str = "vram-attest-v2";

/// Shortest nonce accepted, in bytes.
pub const MIN_NONCE_BYTES: usize = 16;
/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 1024;
/// How far in the future `verified_at` may lie (clock skew between worker and challenger)
/// before [`AttestationPolicy::max_age`] refuses it.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// A signed residency statement. The JSON keeps v1's member names and adds `backend`,
/// `device_id` and `audit_head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Always `"vram-attest-v2"`.
    pub format: String,
    /// The challenger's nonce, lowercase hex.
    pub nonce: String,
    /// The shard's seal.
    pub shard: ShardInfo,
    /// How the shard was verified just before signing (`full`, `sampled(k)`, `signature-only`).
    pub verified_mode: String,
    /// When.
    pub verified_at_unix_nanos: u64,
    /// The backend the shard is resident on: `cuda` or `simulated`.
    pub backend: String,
    /// The device: the GPU's UUID on CUDA, the device name on a simulated device.
    pub device_id: String,
    /// The newest durable audit record when the attestation was signed. Keep it: checked with
    /// `audit::verify_log_to_head`, it shows the worker's log was not cut before it.
    pub audit_head: AuditHead,
    /// HMAC-SHA256 with the attestation key over the statement, lowercase hex.
    pub signature: String,
}

/// The fields of an attestation other than its signature: what the statement is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFields<'a> {
    /// The challenger's nonce (raw bytes).
    pub nonce: &'a [u8],
    /// The shard's seal.
    pub shard: &'a ShardInfo,
    /// The verification mode, as written in the attestation.
    pub verified_mode: &'a str,
    /// When it was verified.
    pub verified_at_unix_nanos: u64,
    /// `cuda` or `simulated`.
    pub backend: &'a str,
    /// The device identity string.
    pub device_id: &'a str,
    /// The audit head at signing.
    pub audit_head: &'a AuditHead,
}

/// The device identity an attestation names: the GPU's UUID on CUDA, the device name (which
/// includes the index) on a simulated device.
pub fn device_id(identity: &DeviceIdentity) -> String {
    identity
        .uuid
        .clone()
        .unwrap_or_else(|| identity.name.clone())
}

/// Checks a nonce's length (`16..=1024` bytes).
pub fn check_nonce(nonce: &[u8]) -> Result<(), VramError> {
    if (MIN_NONCE_BYTES..=MAX_NONCE_BYTES).contains(&nonce.len()) {
        Ok(())
    } else {
        Err(VramError::invalid(format!(
            "nonce must be {MIN_NONCE_BYTES}..={MAX_NONCE_BYTES} bytes, got {}",
            nonce.len()
        )))
    }
}

fn put(out: &mut Vec<u8>, field: &str, bytes: &[u8]) -> Result<(), VramError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| VramError::invalid(format!("{field} is too long to attest")))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn raw32(field: &str, hex_text: &str) -> Result<[u8; 32], VramError> {
    let mut out = [0u8; 32];
    let lower = hex_text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower || hex::decode_to_slice(hex_text, &mut out).is_err() {
        return Err(VramError::invalid(format!(
            "{field} must be 64 lowercase hex characters"
        )));
    }
    Ok(out)
}

/// The bytes an attestation's signature covers (layout in the module docs and
/// `.specs/attestation-v2.md`).
pub fn statement(f: &StatementFields<'_>) -> Result<Vec<u8>, VramError> {
    let claims = f.shard.claims()?;
    let sig = raw32("shard signature", &f.shard.signature)?;
    let head_mac = raw32("audit head mac", &f.audit_head.mac)?;
    let mut out = Vec::with_capacity(
        claims
            .len()
            .saturating_add(f.nonce.len())
            .saturating_add(f.device_id.len())
            .saturating_add(160),
    );
    out.extend_from_slice(ATTEST_FORMAT.as_bytes());
    put(&mut out, "nonce", f.nonce)?;
    put(&mut out, "claims", &claims)?;
    out.extend_from_slice(&sig);
    out.extend_from_slice(&f.verified_at_unix_nanos.to_be_bytes());
    put(&mut out, "verified_mode", f.verified_mode.as_bytes())?;
    put(&mut out, "backend", f.backend.as_bytes())?;
    put(&mut out, "device_id", f.device_id.as_bytes())?;
    out.extend_from_slice(&f.audit_head.seq.to_be_bytes());
    out.extend_from_slice(&head_mac);
    Ok(out)
}

/// What a verified attestation (v2 or v3) says, in one shape: what a challenger's
/// [`AttestationPolicy`] is checked against, and what [`signed::verify_signed_attestation`]
/// returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResidencyClaims {
    /// `vram-attest-v2` or `vram-attest-v3`.
    pub format: String,
    /// The challenger's nonce, lowercase hex.
    pub nonce: String,
    /// The worker that signed.
    pub worker_id: String,
    /// The shard's seal.
    pub shard: ShardInfo,
    /// How the shard was verified just before signing.
    pub verified_mode: VerifyMode,
    /// When, in nanoseconds since the Unix epoch.
    pub verified_at_unix_nanos: u64,
    /// The backend the shard is resident on.
    pub backend: BackendKind,
    /// The device: the GPU's UUID on CUDA, the device name on a simulated device.
    pub device_id: String,
    /// The newest durable audit record when the attestation was signed.
    pub audit_head: AuditHead,
    /// Which file of which signed model the shard was sealed from (v3, when the seal checked
    /// it; never in v2).
    pub provenance: Option<Provenance>,
}

/// An `AttestationInvalid` error with a reason.
pub(crate) fn invalid(reason: impl Into<String>) -> VramError {
    VramError::AttestationInvalid(reason.into())
}

/// A value from a document, fit for an error message: sanitised and cut to `max` characters.
pub(crate) fn shown(value: &str, max: usize) -> String {
    crate::text::sanitize(&value.chars().take(max).collect::<String>())
}

/// Parses a backend name as attestations write it (`cuda`, `simulated`).
pub fn parse_backend(text: &str) -> Option<BackendKind> {
    match text {
        "cuda" => Some(BackendKind::Cuda),
        "simulated" => Some(BackendKind::Simulated),
        _ => None,
    }
}

impl ResidencyClaims {
    /// What a `vram-attest-v2` attestation says (its signature is not checked here). A mode or
    /// backend the format does not define is `AttestationInvalid`.
    pub fn from_v2(att: &Attestation) -> Result<Self, VramError> {
        Ok(Self {
            format: att.format.clone(),
            nonce: att.nonce.clone(),
            worker_id: att.shard.worker_id.clone(),
            shard: att.shard.clone(),
            verified_mode: att.verified_mode.parse::<VerifyMode>().map_err(|_| {
                invalid(format!(
                    "unknown verification mode {:?}",
                    shown(&att.verified_mode, 32)
                ))
            })?,
            verified_at_unix_nanos: att.verified_at_unix_nanos,
            backend: parse_backend(&att.backend)
                .ok_or_else(|| invalid(format!("unknown backend {:?}", shown(&att.backend, 32))))?,
            device_id: att.device_id.clone(),
            audit_head: att.audit_head.clone(),
            provenance: None,
        })
    }
}

/// What a challenger demands of an attestation beyond its signature and nonce. The default
/// demands nothing more; each builder method adds one requirement. The same policy checks
/// `vram-attest-v2` and `vram-attest-v3`; every failure is `AttestationInvalid` naming what
/// failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationPolicy {
    max_age: Option<Duration>,
    min_mode: Option<VerifyMode>,
    device_memory: bool,
    shard_id: Option<String>,
    digest: Option<String>,
    device_id: Option<String>,
    min_audit_seq: Option<u64>,
    model_subject: Option<String>,
}

impl AttestationPolicy {
    /// The shard must have been verified no longer than `age` ago, and not more than
    /// [`MAX_CLOCK_SKEW`] in the future.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The verification must be at least as strong as `mode` (see [`VerifyMode::satisfies`]).
    pub fn require_mode(mut self, mode: VerifyMode) -> Self {
        self.min_mode = Some(mode);
        self
    }

    /// `true`: the shard must be in real device memory (`backend` = `cuda`); an attestation
    /// from a simulated device fails.
    pub fn require_device_memory(mut self, required: bool) -> Self {
        self.device_memory = required;
        self
    }

    /// The attestation must be about the shard the challenger asked about: an attestation for
    /// any other shard fails, however valid. For a group attestation, `id` is the group's id.
    pub fn expect_shard_id(mut self, id: impl Into<String>) -> Self {
        self.shard_id = Some(id.into());
        self
    }

    /// The attested shard's SHA-256 must be `hex` (case-insensitive). For a group attestation,
    /// one member's must be.
    pub fn expect_digest(mut self, hex: impl Into<String>) -> Self {
        self.digest = Some(hex.into().to_ascii_lowercase());
        self
    }

    /// The shard must be resident on the device named `id` (the GPU's UUID on CUDA). For a
    /// group attestation, one member must be.
    pub fn expect_device_id(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// The audit head must be at `seq` or later: a challenger that has seen the worker's log
    /// reach `seq` refuses an attestation whose head moved backwards (a rolled-back log).
    pub fn min_audit_seq(mut self, seq: u64) -> Self {
        self.min_audit_seq = Some(seq);
        self
    }

    /// The shard must have been sealed with provenance from the signed model whose subject
    /// digest is `model_subject_sha256` (case-insensitive). Only `vram-attest-v3` carries
    /// provenance, so a v2 attestation always fails this.
    pub fn require_provenance(mut self, model_subject_sha256: impl Into<String>) -> Self {
        self.model_subject = Some(model_subject_sha256.into().to_ascii_lowercase());
        self
    }

    /// Checks a `vram-attest-v2` attestation whose signature has already been verified,
    /// against the clock `now` (as time since the Unix epoch).
    pub fn check(&self, att: &Attestation, now: Duration) -> Result<(), VramError> {
        self.check_claims(&ResidencyClaims::from_v2(att)?, now)
    }

    /// Checks what a verified attestation says against the clock `now` (as time since the
    /// Unix epoch). The first requirement not met is `AttestationInvalid` naming it.
    pub fn check_claims(&self, claims: &ResidencyClaims, now: Duration) -> Result<(), VramError> {
        self.check_common(claims, now)?;
        if let Some(id) = &self.shard_id
            && claims.shard.shard_id != *id
        {
            return Err(invalid(format!(
                "the attestation is for shard {}, not for {}",
                shown(&claims.shard.shard_id, 64),
                shown(id, 64)
            )));
        }
        if let Some(digest) = &self.digest
            && claims.shard.digest != *digest
        {
            return Err(invalid(format!(
                "the attested shard's sha256 is {}, not the expected {}",
                shown(&claims.shard.digest, 64),
                shown(digest, 64)
            )));
        }
        if let Some(device) = &self.device_id
            && claims.device_id != *device
        {
            return Err(invalid(format!(
                "the shard is on device {}, not on the expected {}",
                shown(&claims.device_id, 64),
                shown(device, 64)
            )));
        }
        Ok(())
    }

    /// Checks the members of a verified group attestation: freshness, mode, device memory,
    /// audit head and provenance for every member; `expect_shard_id` against the group id;
    /// `expect_digest` and `expect_device_id` against some member.
    pub fn check_group(
        &self,
        group_id: &str,
        members: &[ResidencyClaims],
        now: Duration,
    ) -> Result<(), VramError> {
        for m in members {
            self.check_common(m, now)?;
        }
        if let Some(id) = &self.shard_id
            && group_id != id
        {
            return Err(invalid(format!(
                "the attestation is for group {}, not for {}",
                shown(group_id, 64),
                shown(id, 64)
            )));
        }
        if let Some(digest) = &self.digest
            && !members.iter().any(|m| m.shard.digest == *digest)
        {
            return Err(invalid(format!(
                "no member of the group has the expected sha256 {}",
                shown(digest, 64)
            )));
        }
        if let Some(device) = &self.device_id
            && !members.iter().any(|m| m.device_id == *device)
        {
            return Err(invalid(format!(
                "no member of the group is on the expected device {}",
                shown(device, 64)
            )));
        }
        Ok(())
    }

    /// The requirements that apply to each attested shard alike.
    fn check_common(&self, claims: &ResidencyClaims, now: Duration) -> Result<(), VramError> {
        if let Some(max_age) = self.max_age {
            let at = Duration::from_nanos(claims.verified_at_unix_nanos);
            if at > now.saturating_add(MAX_CLOCK_SKEW) {
                return Err(invalid(format!(
                    "the attestation is dated {} ms in the future (more than the {} s clock-skew allowance)",
                    at.saturating_sub(now).as_millis(),
                    MAX_CLOCK_SKEW.as_secs()
                )));
            }
            let age = now.saturating_sub(at);
            if age > max_age {
                return Err(invalid(format!(
                    "the attestation is stale: verified {} ms ago, at most {} ms allowed",
                    age.as_millis(),
                    max_age.as_millis()
                )));
            }
        }
        if let Some(required) = self.min_mode
            && !claims.verified_mode.satisfies(required)
        {
            return Err(invalid(format!(
                "the attestation's verification ({}) is weaker than required ({required})",
                claims.verified_mode
            )));
        }
        if self.device_memory && claims.backend != BackendKind::Cuda {
            return Err(invalid(format!(
                "the attestation is from a {} device, not from device memory",
                claims.backend
            )));
        }
        if let Some(min) = self.min_audit_seq
            && claims.audit_head.seq < min
        {
            return Err(invalid(format!(
                "the audit head moved backwards: seq {} is before seq {min}, already seen",
                claims.audit_head.seq
            )));
        }
        if let Some(subject) = &self.model_subject {
            match &claims.provenance {
                None => {
                    return Err(invalid(format!(
                        "the shard {} carries no provenance (required: model {})",
                        shown(&claims.shard.shard_id, 64),
                        shown(subject, 64)
                    )));
                }
                Some(p) if p.model_subject_sha256 != *subject => {
                    return Err(invalid(format!(
                        "the shard {} comes from model {}, not from the required {}",
                        shown(&claims.shard.shard_id, 64),
                        shown(&p.model_subject_sha256, 64),
                        shown(subject, 64)
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The system clock as time since the Unix epoch (zero before it).
pub(crate) fn now_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Checks an attestation's format, nonce and signature against the worker token and the nonce
/// the challenger sent. A `vram-attest-v1` (or any other) format tag is refused. A nonce the
/// challenger gives outside `16..=1024` bytes is `InvalidInput` (its own input); every fault of
/// the attestation — format, another nonce, a seal or statement signature that does not verify,
/// a malformed field — is `AttestationInvalid`, never an error about the shard it names (a
/// document that does not verify is no evidence about any shard).
pub fn verify_attestation(
    att: &Attestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
) -> Result<(), VramError> {
    check_nonce(expected_nonce)?;
    if att.format != ATTEST_FORMAT {
        return Err(invalid(format!(
            "the attestation's format is {:?}, not {ATTEST_FORMAT}",
            shown(&att.format, 32)
        )));
    }
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower(&att.nonce) || !lower(&att.signature) {
        return Err(invalid(
            "the attestation's nonce and signature must be lowercase hex",
        ));
    }
    let nonce =
        hex::decode(&att.nonce).map_err(|_| invalid("the attestation's nonce is not hex"))?;
    if !bool::from(nonce.as_slice().ct_eq(expected_nonce)) {
        return Err(invalid("the attestation answers a different nonce"));
    }
    if !crate::seal::claims::verify(&crate::seal::keys::SealKey::derive(token), &att.shard) {
        return Err(invalid(
            "the seal inside the attestation does not verify with this worker's token",
        ));
    }
    let stmt = statement(&StatementFields {
        nonce: &nonce,
        shard: &att.shard,
        verified_mode: &att.verified_mode,
        verified_at_unix_nanos: att.verified_at_unix_nanos,
        backend: &att.backend,
        device_id: &att.device_id,
        audit_head: &att.audit_head,
    })
    .map_err(|e| invalid(format!("the attestation is malformed: {e}")))?;
    let mut given = [0u8; 32];
    if hex::decode_to_slice(&att.signature, &mut given).is_err() {
        return Err(invalid(
            "the attestation's signature is not 64 hex characters",
        ));
    }
    let mut mac = AttestKey::derive(token).mac();
    mac.update(&stmt);
    if bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(invalid(
            "the attestation's signature does not verify with this worker's token (altered or forged)",
        ))
    }
}

/// [`verify_attestation`], then the challenger's `policy` (freshness, minimum mode, device
/// memory, the shard, digest and device asked about, audit head, provenance) against the system
/// clock. Every failure is `AttestationInvalid` naming what failed.
pub fn verify_attestation_with(
    att: &Attestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<(), VramError> {
    verify_attestation(att, token, expected_nonce)?;
    policy.check(att, now_since_epoch())
}

/// The answer to one challenge for a whole tensor-parallel group: the group's signed record
/// and one `vram-attest-v2` attestation per member, in `shard_index` order, all under the
/// challenger's nonce. Nothing new is signed: the group signature binds the member seals in
/// order, and each attestation binds its member's seal to the nonce (layout and checks in
/// `.specs/groups-v1.md`). Check it with [`verify_group_attestation`] or
/// [`verify_group_attestation_with`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAttestation {
    /// The group's record (`vram-group-v1`).
    pub group: GroupInfo,
    /// One attestation per member: `members[i].shard` is `group.members[i]`.
    pub members: Vec<Attestation>,
}

/// Checks a group attestation against the worker token and the nonce the challenger sent: the
/// group record offline ([`GroupInfo::verify`]: shape, every member seal, the group signature),
/// one attestation per member, attestation `i` for exactly member `i`'s seal, and every
/// attestation with [`verify_attestation`]. The first failure is returned; a failing
/// attestation's error names the member's shard id.
pub fn verify_group_attestation(
    att: &GroupAttestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
) -> Result<(), VramError> {
    check_nonce(expected_nonce)?;
    att.group.verify(token).map_err(|e| match e {
        VramError::AttestationInvalid(_) => e,
        other => invalid(format!("the group record does not verify: {other}")),
    })?;
    if att.members.len() != att.group.members.len() {
        return Err(invalid(format!(
            "the group has {} member(s) but {} attestation(s) came with it",
            att.group.members.len(),
            att.members.len()
        )));
    }
    for (i, (member, seal)) in att.members.iter().zip(&att.group.members).enumerate() {
        if member.shard != *seal {
            return Err(invalid(format!(
                "attestation {i} is not for member {i} ({}) of the group",
                shown(&seal.shard_id, 64)
            )));
        }
        verify_attestation(member, token, expected_nonce).map_err(|e| match e {
            VramError::AttestationInvalid(why) => invalid(format!("member {i}: {why}")),
            other => other,
        })?;
    }
    Ok(())
}

/// [`verify_group_attestation`], then the challenger's `policy` ([`AttestationPolicy::check_group`]:
/// every member's freshness, mode, device memory, audit head and provenance; the group id; some
/// member's digest and device). Every failure is `AttestationInvalid`.
pub fn verify_group_attestation_with(
    att: &GroupAttestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<(), VramError> {
    verify_group_attestation(att, token, expected_nonce)?;
    let claims = att
        .members
        .iter()
        .map(ResidencyClaims::from_v2)
        .collect::<Result<Vec<_>, _>>()?;
    policy.check_group(&att.group.group_id, &claims, now_since_epoch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_bounds() {
        assert!(check_nonce(&[0; 15]).is_err());
        assert!(check_nonce(&[0; 16]).is_ok());
        assert!(check_nonce(&[0; 1024]).is_ok());
        assert!(matches!(
            check_nonce(&[0; 1025]),
            Err(VramError::InvalidInput(_))
        ));
    }

    fn att_at(nanos: u64, mode: &str, backend: &str) -> Attestation {
        Attestation {
            format: ATTEST_FORMAT.into(),
            nonce: String::new(),
            shard: ShardInfo::unsigned_for_tests(1),
            verified_mode: mode.into(),
            verified_at_unix_nanos: nanos,
            backend: backend.into(),
            device_id: "d".into(),
            audit_head: AuditHead::new(1, &[0; 32]),
            signature: String::new(),
        }
    }

    #[test]
    fn policy_freshness_skew_mode_and_device() {
        let now = Duration::from_secs(1_000_000);
        let at = |d: Duration| u64::try_from(d.as_nanos()).unwrap();
        let p = AttestationPolicy::default().max_age(Duration::from_secs(60));
        let ok = att_at(at(now - Duration::from_secs(59)), "full", "simulated");
        assert!(p.check(&ok, now).is_ok());
        let stale = att_at(at(now - Duration::from_secs(61)), "full", "simulated");
        assert!(matches!(
            p.check(&stale, now),
            Err(VramError::AttestationInvalid(_))
        ));
        let skewed = att_at(at(now + Duration::from_secs(4)), "full", "simulated");
        assert!(p.check(&skewed, now).is_ok());
        let future = att_at(at(now + Duration::from_secs(6)), "full", "simulated");
        assert!(p.check(&future, now).is_err());
        // No policy: anything goes.
        assert!(AttestationPolicy::default().check(&stale, now).is_ok());

        let full = AttestationPolicy::default().require_mode(VerifyMode::Full);
        assert!(full.check(&ok, now).is_ok());
        for weak in ["sampled(16)", "signature-only", "bogus"] {
            assert!(full.check(&att_at(0, weak, "cuda"), now).is_err(), "{weak}");
        }
        let sampled = AttestationPolicy::default().require_mode(VerifyMode::Sampled { chunks: 8 });
        assert!(sampled.check(&att_at(0, "sampled(8)", "cuda"), now).is_ok());
        assert!(
            sampled
                .check(&att_at(0, "sampled(7)", "cuda"), now)
                .is_err()
        );

        let device = AttestationPolicy::default().require_device_memory(true);
        assert!(device.check(&att_at(0, "full", "cuda"), now).is_ok());
        assert!(device.check(&att_at(0, "full", "simulated"), now).is_err());
        assert!(
            AttestationPolicy::default()
                .require_device_memory(false)
                .check(&att_at(0, "full", "simulated"), now)
                .is_ok()
        );
    }
}
