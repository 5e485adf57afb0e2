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

/// One thing that happened, as it is written to the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum AuditEvent {
    /// The log was opened; `resumed_from_seq` is the last sequence number found (0 for a new log).
    AuditLogOpened {
        resumed_from_seq: u64,
        /// Bytes of an incomplete final line (a crash mid-write) that were cut before resuming.
        #[serde(skip_serializing_if = "Option::is_none")]
        torn_tail_bytes: Option<u64>,
    },
    /// The log was closed cleanly at shutdown.
    AuditLogClosed { records_written: u64 },
    /// Device memory was allocated for a shard.
    VramAllocated {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        requested_bytes: u64,
        allocated_bytes: u64,
        available_bytes: u64,
        used_bytes: u64,
        gpu_device: u32,
    },
    /// An allocation was refused (capacity, injected fault, lost device).
    VramAllocationFailed {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        requested_bytes: u64,
        available_bytes: u64,
        #[serde(serialize_with = "sanitized")]
        reason: String,
        gpu_device: u32,
    },
    /// A shard was sealed.
    VramSealed {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        vram_bytes: u64,
        digest: String,
        merkle_root: String,
        #[serde(serialize_with = "sanitized")]
        model_ref: String,
    },
    /// A verification passed.
    SealVerified {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        #[serde(serialize_with = "sanitized")]
        mode: String,
        chunks_checked: u64,
        /// `request` (a caller asked) or `scrub` (the background scrub).
        #[serde(serialize_with = "sanitized")]
        trigger: String,
    },
    /// A verification failed: the shard is quarantined and its device stopped.
    SealVerificationFailed {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        #[serde(serialize_with = "sanitized")]
        reason: String,
        expected_root: String,
        actual_root: String,
        first_bad_chunk: Option<u64>,
        bad_chunks: u64,
        /// Tensors overlapping the bad chunks (first 32), for safetensors shards.
        #[serde(
            skip_serializing_if = "Vec::is_empty",
            serialize_with = "sanitized_list"
        )]
        bad_tensors: Vec<String>,
        severity: Severity,
    },
    /// A seal was refused after hashing (the bytes did not match the caller's expected digest).
    SealRejected {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        #[serde(serialize_with = "sanitized")]
        reason: String,
        #[serde(serialize_with = "sanitized")]
        expected_digest: String,
        actual_digest: String,
    },
    /// A verification could not be completed (read error, lost device, incomplete answer).
    VerificationError {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        #[serde(serialize_with = "sanitized")]
        mode: String,
        #[serde(serialize_with = "sanitized")]
        error: String,
        #[serde(serialize_with = "sanitized")]
        trigger: String,
    },
    /// Device memory was freed.
    VramDeallocated {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        freed_bytes: u64,
        remaining_used: u64,
        gpu_device: u32,
    },
    /// A security policy was violated.
    PolicyViolation {
        #[serde(serialize_with = "sanitized")]
        policy: String,
        #[serde(serialize_with = "sanitized")]
        violation: String,
        #[serde(serialize_with = "sanitized")]
        details: String,
        severity: Severity,
        #[serde(serialize_with = "sanitized")]
        action_taken: String,
        gpu_device: Option<u32>,
    },
    /// A residency attestation was answered.
    AttestationIssued {
        #[serde(serialize_with = "sanitized")]
        shard_id: String,
        gpu_device: u32,
        nonce_sha256: String,
    },
    /// A device stopped accepting seals and executions (fail-closed, lost device, crash).
    DeviceStopped {
        gpu_device: u32,
        #[serde(serialize_with = "sanitized")]
        reason: String,
    },
    /// An operator reset a stopped device.
    DeviceReset { gpu_device: u32 },
    /// Events were lost (buffer overflow or failing sink); written once the sink works again.
    AuditEventsDropped {
        count: u64,
        #[serde(serialize_with = "sanitized")]
        reason: String,
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
            Self::VerificationError { .. } => "VerificationError",
            Self::VramDeallocated { .. } => "VramDeallocated",
            Self::PolicyViolation { .. } => "PolicyViolation",
            Self::AttestationIssued { .. } => "AttestationIssued",
            Self::DeviceStopped { .. } => "DeviceStopped",
            Self::DeviceReset { .. } => "DeviceReset",
            Self::AuditEventsDropped { .. } => "AuditEventsDropped",
        }
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
    Info,
    Warning,
    Critical,
}

/// Removes what must never reach a log line: control characters (C0, DEL, C1), and ANSI/VT
/// escape sequences (`ESC [ … final`, `ESC ] … BEL/ST`, and two-byte `ESC x`). Each removed
/// sequence is replaced by `\u{FFFD}` so the reader can see that something was there.
pub fn sanitize(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.peek() {
                Some('[') => {
                    chars.next();
                    // CSI: parameters and intermediates until a final byte in 0x40..=0x7E.
                    for n in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    chars.next();
                    // OSC: until BEL or ST (ESC \).
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' {
                            break;
                        }
                        if n == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            }
            out.push('\u{FFFD}');
        } else if c.is_control() || is_invisible_format(c) {
            out.push('\u{FFFD}');
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that are not control characters but still change how a line reads: bidi
/// overrides and isolates, zero-width characters, and the Unicode line/paragraph separators.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
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
    fn sanitize_strips_controls_and_ansi() {
        assert_eq!(sanitize("a\nb"), "a\u{FFFD}b");
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m"), "\u{FFFD}red\u{FFFD}");
        assert_eq!(sanitize("x\u{1b}]0;title\u{7}y"), "x\u{FFFD}y");
        assert_eq!(sanitize("q\"uote"), "q\"uote");
        assert_eq!(sanitize("modèle"), "modèle");
        assert_eq!(sanitize("\u{85}\u{7f}"), "\u{FFFD}\u{FFFD}");
        assert_eq!(
            sanitize("a\u{202E}b\u{2028}c\u{200B}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}"
        );
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
