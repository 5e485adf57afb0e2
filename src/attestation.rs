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
//! [`verify_attestation_with`] (also freshness, minimum mode, real device memory).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::Mac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::VramError;
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

/// What a challenger demands of an attestation beyond its signature and nonce. The default
/// demands nothing more; each builder method adds one requirement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationPolicy {
    max_age: Option<Duration>,
    min_mode: Option<VerifyMode>,
    device_memory: bool,
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

    /// Checks an attestation whose signature has already been verified, against the clock
    /// `now` (as time since the Unix epoch).
    pub fn check(&self, att: &Attestation, now: Duration) -> Result<(), VramError> {
        let refuse = |why: String| Err(VramError::PolicyViolation(why));
        if let Some(max_age) = self.max_age {
            let at = Duration::from_nanos(att.verified_at_unix_nanos);
            if at > now.saturating_add(MAX_CLOCK_SKEW) {
                return refuse(format!(
                    "attestation is dated {} ms in the future (more than the {} s clock-skew allowance)",
                    at.saturating_sub(now).as_millis(),
                    MAX_CLOCK_SKEW.as_secs()
                ));
            }
            let age = now.saturating_sub(at);
            if age > max_age {
                return refuse(format!(
                    "attestation is stale: verified {} ms ago, at most {} ms allowed",
                    age.as_millis(),
                    max_age.as_millis()
                ));
            }
        }
        if let Some(required) = self.min_mode {
            let Ok(ran) = att.verified_mode.parse::<VerifyMode>() else {
                return refuse("attestation names an unknown verification mode".into());
            };
            if !ran.satisfies(required) {
                return refuse(format!(
                    "attestation's verification ({ran}) is weaker than required ({required})"
                ));
            }
        }
        if self.device_memory && att.backend != BackendKind::Cuda.to_string() {
            return refuse(format!(
                "attestation is from a {} device, not from device memory",
                crate::text::sanitize(&att.backend.chars().take(32).collect::<String>())
            ));
        }
        Ok(())
    }
}

/// Checks an attestation's format, nonce and signature against the worker token and the nonce
/// the challenger sent. A `vram-attest-v1` (or any other) format tag is refused.
pub fn verify_attestation(
    att: &Attestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
) -> Result<(), VramError> {
    let fail = || {
        VramError::seal_signature_failed(crate::text::sanitize(
            &att.shard.shard_id.chars().take(256).collect::<String>(),
        ))
    };
    if att.format != ATTEST_FORMAT {
        return Err(VramError::invalid(format!(
            "attestation format must be {ATTEST_FORMAT}"
        )));
    }
    check_nonce(expected_nonce)?;
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower(&att.nonce) || !lower(&att.signature) {
        return Err(VramError::invalid(
            "attestation nonce and signature must be lowercase hex",
        ));
    }
    let nonce = hex::decode(&att.nonce).map_err(|_| VramError::invalid("nonce must be hex"))?;
    if !bool::from(nonce.as_slice().ct_eq(expected_nonce)) {
        return Err(VramError::invalid("attestation answers a different nonce"));
    }
    if !crate::seal::claims::verify(&crate::seal::keys::SealKey::derive(token), &att.shard) {
        return Err(fail());
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
    .map_err(|_| fail())?;
    let mut given = [0u8; 32];
    if hex::decode_to_slice(&att.signature, &mut given).is_err() {
        return Err(fail());
    }
    let mut mac = AttestKey::derive(token).mac();
    mac.update(&stmt);
    if bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(fail())
    }
}

/// [`verify_attestation`], then the challenger's `policy` (freshness, minimum mode, device
/// memory) against the system clock. A policy failure is `PolicyViolation` naming what failed.
pub fn verify_attestation_with(
    att: &Attestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<(), VramError> {
    verify_attestation(att, token, expected_nonce)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    policy.check(att, now)
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
    att.group.verify(token)?;
    if att.members.len() != att.group.members.len() {
        return Err(VramError::invalid(format!(
            "the group has {} member(s) but {} attestation(s) came with it",
            att.group.members.len(),
            att.members.len()
        )));
    }
    for (i, (member, seal)) in att.members.iter().zip(&att.group.members).enumerate() {
        if member.shard != *seal {
            return Err(VramError::invalid(format!(
                "attestation {i} is not for member {i} ({}) of the group",
                crate::text::sanitize(&seal.shard_id.chars().take(64).collect::<String>())
            )));
        }
        verify_attestation(member, token, expected_nonce)?;
    }
    Ok(())
}

/// [`verify_group_attestation`], then the challenger's `policy` on every member's attestation
/// (freshness, minimum mode, device memory). A policy failure is `PolicyViolation`.
pub fn verify_group_attestation_with(
    att: &GroupAttestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<(), VramError> {
    verify_group_attestation(att, token, expected_nonce)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    att.members.iter().try_for_each(|m| policy.check(m, now))
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
            Err(VramError::PolicyViolation(_))
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
