//! The audit event schema: what the log records.
//!
//! Each variant becomes the `event` object of one `vram-audit-v1` record; `type` is always the
//! first member, the variant's fields follow in declaration order. The record itself carries the
//! timestamp and the worker id, so events do not repeat them.
//!
//! Every string field is passed through [`sanitize`] when serialized, so a shard id, model ref or
//! error text can never inject control characters or ANSI escapes into the log (JSON escaping
//! already prevents a line break from splitting a record; sanitising keeps terminals safe too).

use serde::{Serialize, Serializer};

use crate::provenance::Provenance;
pub use crate::text::sanitize;

/// One thing that happened, as it is written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum AuditEvent {
    /// The log was opened; `resumed_from_seq` is the last sequence number found (0 for a new log).
    AuditLogOpened {
        /// The last sequence number found in the log (0 for a new log).
        resumed_from_seq: u64,
        /// Bytes of an incomplete final line (a crash mid-write) that were cut before resuming.
        #[serde(skip_serializing_if = "Option::is_none")]
        torn_tail_bytes: Option<u64>,
        /// SHA-256 (lowercase hex) of the bytes that were cut, so what a reopening removed
        /// stays on record.
        #[serde(skip_serializing_if = "Option::is_none")]
        torn_tail_sha256: Option<String>,
    },
    /// The log was closed cleanly at shutdown.
    AuditLogClosed {
        /// Records this writer appended since it opened the log.
        records_written: u64,
    },
    /// Device memory was allocated for a shard.
    VramAllocated {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes allocated.
        allocated_bytes: u64,
        /// Bytes a seal could still use on the device at that moment.
        available_bytes: u64,
        /// Bytes held by sealed shards on the device afterwards.
        used_bytes: u64,
        /// The device index.
        gpu_device: u32,
    },
    /// An allocation was refused (capacity, injected fault, lost device).
    VramAllocationFailed {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// Bytes asked for.
        requested_bytes: u64,
        /// Bytes a seal could still use on the device at that moment.
        available_bytes: u64,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// The device index.
        gpu_device: u32,
    },
    /// A shard was sealed.
    VramSealed {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// Size of the shard in device memory.
        vram_bytes: u64,
        /// SHA-256 of the shard bytes (lowercase hex).
        digest: String,
        /// RFC 6962 Merkle root of the shard (lowercase hex).
        merkle_root: String,
        /// The model reference the shard was sealed under.
        #[serde(serialize_with = "sanitized")]
        model_ref: String,
        /// Which file of which signed model the bytes are, when the seal was asked to check
        /// (`SealRequest::provenance`); absent otherwise.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "sanitized_provenance"
        )]
        provenance: Option<Provenance>,
    },
    /// A verification passed.
    SealVerified {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// The verification mode (`full`, `sampled(k)`, `signature-only`).
        #[serde(serialize_with = "sanitized")]
        mode: String,
        /// Chunks read back and hashed.
        chunks_checked: u64,
        /// `request` (a caller asked) or `scrub` (the background scrub).
        #[serde(serialize_with = "sanitized")]
        trigger: String,
    },
    /// A verification failed: the shard is quarantined and its device stopped.
    SealVerificationFailed {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// The signed Merkle root.
        expected_root: String,
        /// The root recomputed from device memory (full verify only).
        actual_root: String,
        /// Index of the first chunk found to differ, if any.
        first_bad_chunk: Option<u64>,
        /// How many chunks were found to differ.
        bad_chunks: u64,
        /// Tensors overlapping the bad chunks (first 32), for safetensors shards.
        #[serde(
            skip_serializing_if = "Vec::is_empty",
            serialize_with = "sanitized_list"
        )]
        bad_tensors: Vec<String>,
        /// How serious the event is.
        severity: Severity,
    },
    /// A seal was refused after hashing (the bytes did not match the caller's expected digest),
    /// or stopped because its caller gave up (reason `cancelled by caller`; `actual_digest`
    /// empty, since the bytes were not all hashed). Nothing was sealed; the allocation's own
    /// `VramDeallocated` follows.
    SealRejected {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// The digest the caller expected.
        #[serde(serialize_with = "sanitized")]
        expected_digest: String,
        /// The digest of the bytes received.
        actual_digest: String,
    },
    /// A seal was refused after hashing because the bytes are not the file the signed model
    /// lists (`SealRequest::provenance`): integrity failure, critical. Nothing was sealed.
    ProvenanceMismatch {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// The file's name in the signed manifest.
        #[serde(serialize_with = "sanitized")]
        resource: String,
        /// The SHA-256 the signed manifest lists for it.
        expected_digest: String,
        /// The SHA-256 of the bytes received.
        actual_digest: String,
        /// The signed model's subject digest.
        model_subject_sha256: String,
        /// The id of the publisher key that verified the manifest.
        publisher_keyid: String,
        /// How serious the event is (critical).
        severity: Severity,
    },
    /// A verification could not be completed (read error, lost device, incomplete answer).
    VerificationError {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// The verification mode (`full`, `sampled(k)`, `signature-only`).
        #[serde(serialize_with = "sanitized")]
        mode: String,
        /// The error that stopped the verification.
        #[serde(serialize_with = "sanitized")]
        error: String,
        /// `request` (a caller asked) or `scrub` (the background scrub).
        #[serde(serialize_with = "sanitized")]
        trigger: String,
    },
    /// Device memory was freed.
    VramDeallocated {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// Bytes freed.
        freed_bytes: u64,
        /// Bytes still held by sealed shards on the device.
        remaining_used: u64,
        /// The device index.
        gpu_device: u32,
    },
    /// A security policy was violated.
    PolicyViolation {
        /// The policy (for example `VP-003`).
        #[serde(serialize_with = "sanitized")]
        policy: String,
        /// What was violated.
        #[serde(serialize_with = "sanitized")]
        violation: String,
        /// Details, in words.
        #[serde(serialize_with = "sanitized")]
        details: String,
        /// How serious the event is.
        severity: Severity,
        /// What the crate did about it.
        #[serde(serialize_with = "sanitized")]
        action_taken: String,
        /// The device index.
        gpu_device: Option<u32>,
    },
    /// A residency attestation was answered.
    AttestationIssued {
        /// The shard concerned.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// The device index.
        gpu_device: u32,
        /// SHA-256 of the challenger's nonce (lowercase hex).
        nonce_sha256: String,
    },
    /// A device stopped accepting seals and executions (fail-closed, lost device, crash).
    DeviceStopped {
        /// The device index.
        gpu_device: u32,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
    },
    /// An operator reset a stopped device.
    DeviceReset {
        /// The device index.
        gpu_device: u32,
    },
    /// Events were lost (buffer overflow or failing sink); written once the sink works again.
    AuditEventsDropped {
        /// How many events were lost.
        count: u64,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
    },
    /// A tensor-parallel group was sealed: every member sealed (each has its own `VramSealed`)
    /// and the group record signed.
    GroupSealed {
        /// The group.
        #[serde(serialize_with = "sanitized")]
        group_id: String,
        /// The model the group holds.
        #[serde(serialize_with = "sanitized")]
        model_ref: String,
        /// How many members.
        total_shards: u32,
        /// The members' shard ids in `shard_index` order (the first 32).
        #[serde(serialize_with = "sanitized_list")]
        members: Vec<String>,
        /// The group signature (lowercase hex).
        signature: String,
    },
    /// Sealing a group failed on one part; every part already sealed was released (each has its
    /// own `VramDeallocated`).
    GroupSealAborted {
        /// The group.
        #[serde(serialize_with = "sanitized")]
        group_id: String,
        /// The part that failed.
        #[serde(serialize_with = "sanitized")]
        failed_shard_id: String,
        /// Why, in words.
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// How many sealed parts were released.
        parts_released: u32,
    },
    /// A member of a group failed verification (its own `SealVerificationFailed` is on record):
    /// every member of the group is quarantined (fail-all).
    GroupVerificationFailed {
        /// The group.
        #[serde(serialize_with = "sanitized")]
        group_id: String,
        /// The member that failed.
        #[serde(serialize_with = "sanitized")]
        failed_shard_id: String,
        /// Its device.
        gpu_device: u32,
        /// Why, in words (the member's error).
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// How many members the group has (all quarantined).
        total_shards: u32,
        /// How serious the event is.
        severity: Severity,
    },
    /// A shard was quarantined, without being found bad itself, because another member of its
    /// group failed verification.
    GroupMemberQuarantined {
        /// The shard quarantined.
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        /// Its device.
        gpu_device: u32,
        /// Its group.
        #[serde(serialize_with = "sanitized")]
        group_id: String,
        /// The member that failed.
        #[serde(serialize_with = "sanitized")]
        failed_shard_id: String,
    },
    /// Refusals of one reason that were counted instead of written one record each (the first
    /// of them, where it had a record, was written in full): at most one such summary per
    /// reason per window (a minute), so repeated calls cannot grow the log
    /// (`audit::refusals`).
    RefusalsSuppressed {
        /// The reason (`forged_shard_record`, `residency_mismatch`, `forged_group_record`,
        /// `quarantined_shard`, `quarantined_group`, `cancelled_verification`).
        #[serde(serialize_with = "sanitized")]
        reason: String,
        /// How many refusals were counted.
        count: u64,
        /// When the first of them happened (RFC 3339 UTC, nanoseconds).
        #[serde(serialize_with = "sanitized")]
        since: String,
    },
}

impl AuditEvent {
    /// The event's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::AuditLogOpened { .. } => "AuditLogOpened",
            Self::AuditLogClosed { .. } => "AuditLogClosed",
            Self::VramAllocated { .. } => "VramAllocated",
            Self::VramAllocationFailed { .. } => "VramAllocationFailed",
            Self::VramSealed { .. } => "VramSealed",
            Self::SealVerified { .. } => "SealVerified",
            Self::SealVerificationFailed { .. } => "SealVerificationFailed",
            Self::SealRejected { .. } => "SealRejected",
            Self::ProvenanceMismatch { .. } => "ProvenanceMismatch",
            Self::VerificationError { .. } => "VerificationError",
            Self::VramDeallocated { .. } => "VramDeallocated",
            Self::PolicyViolation { .. } => "PolicyViolation",
            Self::AttestationIssued { .. } => "AttestationIssued",
            Self::DeviceStopped { .. } => "DeviceStopped",
            Self::DeviceReset { .. } => "DeviceReset",
            Self::AuditEventsDropped { .. } => "AuditEventsDropped",
            Self::GroupSealed { .. } => "GroupSealed",
            Self::GroupSealAborted { .. } => "GroupSealAborted",
            Self::GroupVerificationFailed { .. } => "GroupVerificationFailed",
            Self::GroupMemberQuarantined { .. } => "GroupMemberQuarantined",
            Self::RefusalsSuppressed { .. } => "RefusalsSuppressed",
        }
    }

    /// Whether the event is a critical finding: the evidence an in-memory sink keeps apart
    /// from ordinary records, so that later noise can never evict it.
    pub fn is_critical(&self) -> bool {
        matches!(
            self,
            Self::SealVerificationFailed {
                severity: Severity::Critical,
                ..
            } | Self::PolicyViolation {
                severity: Severity::Critical,
                ..
            } | Self::GroupVerificationFailed {
                severity: Severity::Critical,
                ..
            }
        )
    }

    /// The event as one compact JSON object, `type` first.
    pub fn to_json(&self) -> String {
        // Serializing this enum cannot fail: every field is a string, integer or option of one.
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from("{\"type\":\"Unserializable\"}"))
    }
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine.
    Info,
    /// Worth an operator's look.
    Warning,
    /// Integrity or policy failure: act on it.
    Critical,
}

fn sanitized_list<S: Serializer>(values: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().take(32).map(|v| capped(v)))
}

/// Longest string field written to the log, in characters; longer values are cut and marked
/// with `…`. Keeps every record far below the format's line limit whatever a model file's
/// header or a caller's string contains.
pub const MAX_FIELD_CHARS: usize = 512;

fn capped(value: &str) -> String {
    let clean = sanitize(value);
    if clean.chars().count() <= MAX_FIELD_CHARS {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_FIELD_CHARS).collect();
    cut.push('…');
    cut
}

fn sanitized<S: Serializer>(value: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&capped(value))
}

/// A provenance record with every member sanitised and capped (a resource name comes from a
/// publisher's manifest).
fn sanitized_provenance<S: Serializer>(
    value: &Option<Provenance>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let Some(p) = value else {
        return serializer.serialize_none();
    };
    let mut s = serializer.serialize_struct("Provenance", 3)?;
    s.serialize_field("resource", &capped(&p.resource))?;
    s.serialize_field("model_subject_sha256", &capped(&p.model_subject_sha256))?;
    s.serialize_field("publisher_keyid", &capped(&p.publisher_keyid))?;
    s.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_is_first_member() {
        let e = AuditEvent::VramDeallocated {
            shard_id: "s".into(),
            freed_bytes: 3,
            remaining_used: 0,
            gpu_device: 1,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"VramDeallocated","shard_id":"s","freed_bytes":3,"remaining_used":0,"gpu_device":1}"#
        );
        assert_eq!(e.type_name(), "VramDeallocated");
    }

    #[test]
    fn long_strings_are_capped() {
        let e = AuditEvent::DeviceStopped {
            gpu_device: 0,
            reason: "x".repeat(100_000),
        };
        let j = e.to_json();
        assert!(j.len() < 700, "{}", j.len());
        assert!(j.contains('…'));
    }

    #[test]
    fn event_json_cannot_break_a_line() {
        let e = AuditEvent::DeviceStopped {
            gpu_device: 0,
            reason: "x\n{\"seq\":99}\r\u{1b}[2K".into(),
        };
        let j = e.to_json();
        assert!(!j.contains('\n') && !j.contains('\r') && !j.contains('\u{1b}'));
    }
}
