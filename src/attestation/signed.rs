//! `vram-attest-v3`: a residency attestation signed with the worker's identity key (ECDSA
//! P-256), which anyone holding only the public key can check — no worker token needed, so a
//! challenger that checks can no longer forge.
//!
//! The container is a sigstore bundle v0.3 of the shape model-signing writes for key-signed
//! models: `verificationMaterial.publicKey.hint` and the signature's `keyid` are the key id
//! (lowercase hex SHA-256 of the SPKI DER), `tlogEntries` is empty, and the DSSE envelope's
//! payload is an in-toto Statement v1 whose subject is the shard (name = shard id, digest = its
//! SHA-256) and whose predicate (`urn:vram-residency:attestation:v3`) carries everything v2
//! signs, plus the shard's provenance. The signature covers `PAE(payloadType, payload)`,
//! RFC 6979 deterministic, DER-encoded; the payload is compact JSON with members in the order
//! the spec lists. Groups get the same envelope with one subject per member and the predicate
//! `urn:vram-residency:group-attestation:v3`. The same envelope also carries a signed audit
//! head (`urn:vram-residency:audit-head:v1`). Byte layout and vectors:
//! `.specs/attestation-v3.md`.
//!
//! Checking ([`verify_signed_attestation`]) is strict: one signature, by the given key (the
//! hint and key id must name it too), over exactly the payload; the statement's shape, the
//! subject agreeing with the seal in the predicate, the nonce, then the challenger's policy.
//! Every failure is `AttestationInvalid` naming what failed.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{
    AttestationPolicy, MAX_NONCE_BYTES, ResidencyClaims, check_nonce, invalid, now_since_epoch,
    parse_backend, shown,
};
use crate::error::VramError;
use crate::provenance::Provenance;
use crate::provenance::bundle::{
    BUNDLE_MEDIA_TYPE, DsseEnvelope, DsseSignature, PublicKeyHint, SigstoreBundle,
    VerificationMaterial,
};
use crate::provenance::dsse::{IN_TOTO_PAYLOAD_TYPE, base64_encode};
use crate::provenance::manifest::IN_TOTO_STATEMENT_V1;
use crate::provenance::publisher_key::PublicKey;
use crate::seal::claims::{SEAL_FORMAT, ShardInfo};
use crate::seal::group_record::GroupInfo;
use crate::types::AuditHead;

/// Format name of signed attestations (what [`ResidencyClaims::format`] says).
pub const ATTEST_V3_FORMAT: &str = "vram-attest-v3";
/// Predicate type of a single-shard `vram-attest-v3` statement.
pub const ATTEST_V3_PREDICATE: &str = "urn:vram-residency:attestation:v3";
/// Predicate type of a group `vram-attest-v3` statement.
pub const GROUP_ATTEST_V3_PREDICATE: &str = "urn:vram-residency:group-attestation:v3";
/// Predicate type of a signed audit head.
pub const AUDIT_HEAD_PREDICATE: &str = "urn:vram-residency:audit-head:v1";
/// Largest signed document [`verify_signed_attestation`] decodes (payload bytes).
pub const MAX_SIGNED_PAYLOAD_BYTES: usize = 4 << 20;

/// A `vram-attest-v3` attestation (or group attestation, or signed audit head): a sigstore
/// bundle v0.3 holding one DSSE envelope signed by the worker's identity key. Serialize it as
/// JSON to send it; check it with [`verify_signed_attestation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedAttestation {
    /// The bundle.
    pub bundle: SigstoreBundle,
}

/// A signed audit head: the same envelope over an audit head, for a witness holding only the
/// public key.
pub type SignedAuditHead = SignedAttestation;

/// In-toto statement v1 with a typed predicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement<P> {
    /// [`IN_TOTO_STATEMENT_V1`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the statement is about.
    pub subject: Vec<Subject>,
    /// What the predicate is.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// What is said.
    pub predicate: P,
}

/// One in-toto subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// The shard id (or, for an audit head, the worker id).
    pub name: String,
    /// Its digest.
    pub digest: SubjectDigest,
}

/// A subject's digest set (SHA-256 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectDigest {
    /// Lowercase hex.
    pub sha256: String,
}

/// The predicate of a single-shard `vram-attest-v3` statement, members in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyPredicate {
    /// The challenger's nonce, lowercase hex.
    pub nonce: String,
    /// The worker.
    pub worker_id: String,
    /// The shard's seal.
    pub shard: ShardInfo,
    /// `full`, `sampled(k)` or `signature-only`.
    pub verified_mode: String,
    /// RFC 3339 UTC with nine fractional digits and `Z`.
    pub verified_at: String,
    /// `cuda` or `simulated`.
    pub backend: String,
    /// The GPU's UUID on CUDA, the device name on a simulated device.
    pub device_id: String,
    /// The durable audit head at signing.
    pub audit_head: AuditHead,
    /// Provenance, or `null`.
    pub provenance: Option<Provenance>,
}

/// The predicate of a group `vram-attest-v3` statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupResidencyPredicate {
    /// The challenger's nonce, lowercase hex.
    pub nonce: String,
    /// The worker.
    pub worker_id: String,
    /// The group record (`vram-group-v1`), members in `shard_index` order.
    pub group: GroupInfo,
    /// `full`, `sampled(k)` or `signature-only` (every member was verified this way).
    pub verified_mode: String,
    /// RFC 3339 UTC with nine fractional digits and `Z`.
    pub verified_at: String,
    /// The durable audit head at signing.
    pub audit_head: AuditHead,
    /// Per member, in `shard_index` order: where it is resident and where it came from.
    pub members: Vec<GroupMemberResidency>,
}

/// One group member's residency in a group statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMemberResidency {
    /// `cuda` or `simulated`.
    pub backend: String,
    /// The member's device identity.
    pub device_id: String,
    /// The member's provenance, or `null`.
    pub provenance: Option<Provenance>,
}

/// The predicate of a signed audit head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHeadPredicate {
    /// The worker whose log it is.
    pub worker_id: String,
    /// The head.
    pub audit_head: AuditHead,
    /// When it was signed: RFC 3339 UTC with nine fractional digits and `Z`.
    pub signed_at: String,
}

/// Writes nanoseconds since the epoch as RFC 3339 UTC with nine fractional digits and `Z`.
pub fn format_time(unix_nanos: u64) -> String {
    let nanos = i64::try_from(unix_nanos).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Reads what [`format_time`] writes, and nothing else (the text must be in exactly that form).
pub fn parse_time(text: &str) -> Option<u64> {
    let at = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    let nanos = u64::try_from(at.timestamp_nanos_opt()?).ok()?;
    (format_time(nanos) == text).then_some(nanos)
}

/// The statement a single-shard attestation signs, as compact JSON, from what it claims.
pub fn residency_payload(claims: &ResidencyClaims) -> Result<Vec<u8>, VramError> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1.to_string(),
        subject: vec![Subject {
            name: claims.shard.shard_id.clone(),
            digest: SubjectDigest {
                sha256: claims.shard.digest.clone(),
            },
        }],
        predicate_type: ATTEST_V3_PREDICATE.to_string(),
        predicate: ResidencyPredicate {
            nonce: claims.nonce.clone(),
            worker_id: claims.worker_id.clone(),
            shard: claims.shard.clone(),
            verified_mode: claims.verified_mode.to_string(),
            verified_at: format_time(claims.verified_at_unix_nanos),
            backend: claims.backend.to_string(),
            device_id: claims.device_id.clone(),
            audit_head: claims.audit_head.clone(),
            provenance: claims.provenance.clone(),
        },
    };
    to_json(&statement)
}

/// The statement a group attestation signs, as compact JSON: one subject per member, in
/// `shard_index` order. `members` are the members' claims in that order.
pub fn group_payload(group: &GroupInfo, members: &[ResidencyClaims]) -> Result<Vec<u8>, VramError> {
    let first = members
        .first()
        .ok_or_else(|| VramError::invalid("a group attestation needs at least one member"))?;
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1.to_string(),
        subject: members
            .iter()
            .map(|m| Subject {
                name: m.shard.shard_id.clone(),
                digest: SubjectDigest {
                    sha256: m.shard.digest.clone(),
                },
            })
            .collect(),
        predicate_type: GROUP_ATTEST_V3_PREDICATE.to_string(),
        predicate: GroupResidencyPredicate {
            nonce: first.nonce.clone(),
            worker_id: first.worker_id.clone(),
            group: group.clone(),
            verified_mode: first.verified_mode.to_string(),
            verified_at: format_time(first.verified_at_unix_nanos),
            audit_head: first.audit_head.clone(),
            members: members
                .iter()
                .map(|m| GroupMemberResidency {
                    backend: m.backend.to_string(),
                    device_id: m.device_id.clone(),
                    provenance: m.provenance.clone(),
                })
                .collect(),
        },
    };
    to_json(&statement)
}

/// The statement a signed audit head signs, as compact JSON: the subject is the worker, its
/// digest SHA-256 over `seq` (u64 big-endian) and the head's MAC (32 raw bytes).
pub fn audit_head_payload(
    worker_id: &str,
    head: &AuditHead,
    signed_at_unix_nanos: u64,
) -> Result<Vec<u8>, VramError> {
    let statement = Statement {
        statement_type: IN_TOTO_STATEMENT_V1.to_string(),
        subject: vec![Subject {
            name: worker_id.to_string(),
            digest: SubjectDigest {
                sha256: audit_head_digest(head)?,
            },
        }],
        predicate_type: AUDIT_HEAD_PREDICATE.to_string(),
        predicate: AuditHeadPredicate {
            worker_id: worker_id.to_string(),
            audit_head: head.clone(),
            signed_at: format_time(signed_at_unix_nanos),
        },
    };
    to_json(&statement)
}

/// SHA-256 over an audit head's `seq` (u64 big-endian) and MAC (32 raw bytes), lowercase hex.
pub fn audit_head_digest(head: &AuditHead) -> Result<String, VramError> {
    use sha2::{Digest, Sha256};
    let mut mac = [0u8; 32];
    hex::decode_to_slice(&head.mac, &mut mac)
        .map_err(|_| VramError::invalid("an audit head's mac must be 64 hex characters"))?;
    let mut h = Sha256::new();
    h.update(head.seq.to_be_bytes());
    h.update(mac);
    Ok(hex::encode(h.finalize()))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, VramError> {
    serde_json::to_vec(value)
        .map_err(|_| VramError::Internal("serializing a signed statement failed".into()))
}

/// Wraps a payload and its DER signature by the key `key_id` into a bundle.
pub fn assemble(payload: &[u8], der_signature: &[u8], key_id: &str) -> SignedAttestation {
    SignedAttestation {
        bundle: SigstoreBundle {
            media_type: BUNDLE_MEDIA_TYPE.to_string(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyHint {
                    hint: key_id.to_string(),
                }),
                x509_certificate_chain: None,
                certificate: None,
                tlog_entries: Vec::new(),
                timestamp_verification_data: None,
            },
            dsse_envelope: Some(DsseEnvelope {
                payload: base64_encode(payload),
                payload_type: IN_TOTO_PAYLOAD_TYPE.to_string(),
                signatures: vec![DsseSignature {
                    sig: base64_encode(der_signature),
                    keyid: key_id.to_string(),
                }],
            }),
            message_signature: None,
        },
    }
}

/// Checks the envelope: one DSSE in-toto envelope, signed by `public_key_pem` (a P-256 SPKI
/// PEM; another key is `InvalidInput`), whose hint and key id name that key. Returns the
/// payload.
pub fn open_envelope(att: &SignedAttestation, public_key_pem: &[u8]) -> Result<Vec<u8>, VramError> {
    let key = match PublicKey::from_pem("the public key", public_key_pem)? {
        key @ PublicKey::P256(_) => key,
        PublicKey::P384(_) => {
            return Err(VramError::invalid(
                "the public key is a P-384 key; worker identity keys are P-256",
            ));
        }
    };
    let envelope = att.bundle.single_dsse(IN_TOTO_PAYLOAD_TYPE, invalid)?;
    if envelope.payload.len() > MAX_SIGNED_PAYLOAD_BYTES {
        return Err(invalid(format!(
            "the payload is {} bytes, more than the {MAX_SIGNED_PAYLOAD_BYTES}-byte limit",
            envelope.payload.len()
        )));
    }
    if !key.verifies(&envelope.pae(), &envelope.signature) {
        return Err(invalid(
            "the signature does not verify with the given public key (another worker's key, or \
             the attestation was altered)",
        ));
    }
    let key_id = key.key_id()?;
    if envelope.keyid != key_id || envelope.hint != key_id {
        return Err(invalid(format!(
            "the bundle names key {} but was checked with key {key_id}",
            shown(envelope.keyid, 64)
        )));
    }
    Ok(envelope.payload)
}

fn parse_statement<P: serde::de::DeserializeOwned>(
    payload: &[u8],
    predicate_type: &str,
) -> Result<Statement<P>, VramError> {
    // Peek at the predicate type first, so that a document of another kind is named as such
    // rather than as a shape error.
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "predicateType")]
        predicate_type: String,
    }
    let kind: Kind = serde_json::from_slice(payload).map_err(|e| {
        invalid(format!(
            "the signed statement is malformed: {}",
            crate::provenance::bundle::describe_json_error(&e)
        ))
    })?;
    if kind.predicate_type != predicate_type {
        return Err(invalid(format!(
            "the statement's predicate type is {:?}, not {predicate_type}",
            shown(&kind.predicate_type, 80)
        )));
    }
    let statement: Statement<P> = serde_json::from_slice(payload).map_err(|e| {
        invalid(format!(
            "the signed statement is malformed: {}",
            crate::provenance::bundle::describe_json_error(&e)
        ))
    })?;
    if statement.statement_type != IN_TOTO_STATEMENT_V1 {
        return Err(invalid(format!(
            "the statement type is {:?}, not {IN_TOTO_STATEMENT_V1}",
            shown(&statement.statement_type, 80)
        )));
    }
    Ok(statement)
}

/// Checks the nonce a statement carries against the one the challenger sent.
fn check_statement_nonce(written: &str, expected: &[u8]) -> Result<(), VramError> {
    let lower = written
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower || written.len() > MAX_NONCE_BYTES.saturating_mul(2) {
        return Err(invalid("the attestation's nonce is not lowercase hex"));
    }
    let nonce = hex::decode(written).map_err(|_| invalid("the attestation's nonce is not hex"))?;
    if bool::from(nonce.as_slice().ct_eq(expected)) {
        Ok(())
    } else {
        Err(invalid("the attestation answers a different nonce"))
    }
}

/// Checks that a seal inside a signed statement is a well-formed `vram-seal-v1` record (its
/// HMAC cannot be checked without the token; the identity signature covers it).
fn check_seal_shape(shard: &ShardInfo, worker_id: &str) -> Result<(), VramError> {
    if shard.format != SEAL_FORMAT {
        return Err(invalid(format!(
            "the seal's format is {:?}, not {SEAL_FORMAT}",
            shown(&shard.format, 32)
        )));
    }
    if shard.worker_id != worker_id {
        return Err(invalid(format!(
            "the seal names worker {}, the statement worker {}",
            shown(&shard.worker_id, 64),
            shown(worker_id, 64)
        )));
    }
    shard
        .claims()
        .map(|_| ())
        .map_err(|e| invalid(format!("the seal is malformed: {e}")))
}

fn mode_and_time(mode: &str, at: &str) -> Result<(crate::types::VerifyMode, u64), VramError> {
    let mode = mode
        .parse::<crate::types::VerifyMode>()
        .map_err(|_| invalid(format!("unknown verification mode {:?}", shown(mode, 32))))?;
    let at = parse_time(at).ok_or_else(|| {
        invalid(format!(
            "verified_at {:?} is not RFC 3339 UTC with nine fractional digits",
            shown(at, 48)
        ))
    })?;
    Ok((mode, at))
}

/// Checks a `vram-attest-v3` attestation with the worker's public key alone, then the
/// challenger's `policy` against the system clock, and returns what it attests.
///
/// `public_key_pem` is the worker's identity key ([`crate::VramResidency::identity_public_key_pem`]);
/// a PEM that is not a P-256 public key, or a nonce outside `16..=1024` bytes, is
/// `InvalidInput` (the challenger's own input). Everything about the attestation — another
/// signer, any changed byte, another nonce, a failed policy, a malformed document — is
/// `AttestationInvalid`.
pub fn verify_signed_attestation(
    att: &SignedAttestation,
    public_key_pem: impl AsRef<[u8]>,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<ResidencyClaims, VramError> {
    verify_signed_attestation_at(
        att,
        public_key_pem,
        expected_nonce,
        policy,
        now_since_epoch(),
    )
}

/// [`verify_signed_attestation`] against the clock `now` (time since the Unix epoch).
pub fn verify_signed_attestation_at(
    att: &SignedAttestation,
    public_key_pem: impl AsRef<[u8]>,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
    now: Duration,
) -> Result<ResidencyClaims, VramError> {
    check_nonce(expected_nonce)?;
    let payload = open_envelope(att, public_key_pem.as_ref())?;
    let statement: Statement<ResidencyPredicate> = parse_statement(&payload, ATTEST_V3_PREDICATE)?;
    let p = statement.predicate;
    let [subject] = statement.subject.as_slice() else {
        return Err(invalid(format!(
            "the statement has {} subjects; a shard attestation has one",
            statement.subject.len()
        )));
    };
    if subject.name != p.shard.shard_id || subject.digest.sha256 != p.shard.digest {
        return Err(invalid(
            "the statement's subject is not the shard its predicate describes",
        ));
    }
    check_statement_nonce(&p.nonce, expected_nonce)?;
    check_seal_shape(&p.shard, &p.worker_id)?;
    let (verified_mode, verified_at_unix_nanos) = mode_and_time(&p.verified_mode, &p.verified_at)?;
    let claims = ResidencyClaims {
        format: ATTEST_V3_FORMAT.to_string(),
        nonce: p.nonce,
        worker_id: p.worker_id,
        shard: p.shard,
        verified_mode,
        verified_at_unix_nanos,
        backend: parse_backend(&p.backend)
            .ok_or_else(|| invalid(format!("unknown backend {:?}", shown(&p.backend, 32))))?,
        device_id: p.device_id,
        audit_head: p.audit_head,
        provenance: p.provenance,
    };
    policy.check_claims(&claims, now)?;
    Ok(claims)
}

/// What a verified group attestation says: the group record and each member's claims, in
/// `shard_index` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupResidencyClaims {
    /// The group record (its HMAC is not checked: the identity signature covers it).
    pub group: GroupInfo,
    /// Each member's claims.
    pub members: Vec<ResidencyClaims>,
}

/// Checks a group `vram-attest-v3` attestation with the worker's public key alone, then the
/// challenger's `policy` ([`AttestationPolicy::check_group`]). Errors as
/// [`verify_signed_attestation`].
pub fn verify_signed_group_attestation(
    att: &SignedAttestation,
    public_key_pem: impl AsRef<[u8]>,
    expected_nonce: &[u8],
    policy: &AttestationPolicy,
) -> Result<GroupResidencyClaims, VramError> {
    check_nonce(expected_nonce)?;
    let payload = open_envelope(att, public_key_pem.as_ref())?;
    let statement: Statement<GroupResidencyPredicate> =
        parse_statement(&payload, GROUP_ATTEST_V3_PREDICATE)?;
    let p = statement.predicate;
    let n = p.group.members.len();
    if n == 0 || statement.subject.len() != n || p.members.len() != n {
        return Err(invalid(format!(
            "the group statement has {} subject(s), {} seal(s) and {} residency record(s); \
             they must match and not be empty",
            statement.subject.len(),
            n,
            p.members.len()
        )));
    }
    check_statement_nonce(&p.nonce, expected_nonce)?;
    let (verified_mode, verified_at_unix_nanos) = mode_and_time(&p.verified_mode, &p.verified_at)?;
    let mut members = Vec::with_capacity(n);
    for (i, ((subject, seal), residency)) in statement
        .subject
        .iter()
        .zip(&p.group.members)
        .zip(&p.members)
        .enumerate()
    {
        if subject.name != seal.shard_id || subject.digest.sha256 != seal.digest {
            return Err(invalid(format!(
                "subject {i} is not member {i} of the group"
            )));
        }
        if seal.shard_index != u32::try_from(i).ok() || seal.total_shards != u32::try_from(n).ok() {
            return Err(invalid(format!(
                "member {i}'s seal does not say it is part {i} of {n}"
            )));
        }
        check_seal_shape(seal, &p.worker_id)?;
        members.push(ResidencyClaims {
            format: ATTEST_V3_FORMAT.to_string(),
            nonce: p.nonce.clone(),
            worker_id: p.worker_id.clone(),
            shard: seal.clone(),
            verified_mode,
            verified_at_unix_nanos,
            backend: parse_backend(&residency.backend).ok_or_else(|| {
                invalid(format!(
                    "member {i}: unknown backend {:?}",
                    shown(&residency.backend, 32)
                ))
            })?,
            device_id: residency.device_id.clone(),
            audit_head: p.audit_head.clone(),
            provenance: residency.provenance.clone(),
        });
    }
    if p.group.worker_id != p.worker_id {
        return Err(invalid("the group record names another worker"));
    }
    policy.check_group(&p.group.group_id, &members, now_since_epoch())?;
    Ok(GroupResidencyClaims {
        group: p.group,
        members,
    })
}

/// Checks a signed audit head with the worker's public key alone and returns the head. The
/// witness keeps it and later checks a log against it (`audit::verify_log_to_head`, with the
/// token) or checks that a newer head's `seq` is not smaller. Every fault is
/// `AttestationInvalid`.
pub fn verify_signed_audit_head(
    att: &SignedAuditHead,
    public_key_pem: impl AsRef<[u8]>,
) -> Result<AuditHead, VramError> {
    let payload = open_envelope(att, public_key_pem.as_ref())?;
    let statement: Statement<AuditHeadPredicate> = parse_statement(&payload, AUDIT_HEAD_PREDICATE)?;
    let p = statement.predicate;
    let [subject] = statement.subject.as_slice() else {
        return Err(invalid("a signed audit head has exactly one subject"));
    };
    let digest = audit_head_digest(&p.audit_head)
        .map_err(|_| invalid("the audit head's mac is not 64 hex characters"))?;
    if subject.name != p.worker_id || subject.digest.sha256 != digest {
        return Err(invalid(
            "the statement's subject is not the audit head its predicate names",
        ));
    }
    if parse_time(&p.signed_at).is_none() {
        return Err(invalid(
            "signed_at is not RFC 3339 UTC with nine fractional digits",
        ));
    }
    Ok(p.audit_head)
}
