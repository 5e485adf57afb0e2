//! The crate's one error type.
//!
//! Every public operation returns [`VramError`]. Variants are precise enough for a caller to
//! decide what to do (retry, fail closed, fix its input), and their text never contains a device
//! pointer, a key or the worker token: only ids, sizes, indices and hex digests that are already
//! public parts of a seal.

use thiserror::Error;

use crate::shard::ChunkSpan;

fn describe_tensors(names: &[String]) -> String {
    const SHOWN: usize = 8;
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    let more = names.len().saturating_sub(SHOWN);
    format!(
        "; tensors affected: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

fn describe_bad_chunks(bad: &[ChunkSpan]) -> String {
    match bad.first() {
        None => String::new(),
        Some(first) => format!(
            ": first bad chunk {} (bytes {}..{}), {} bad chunk(s) in total",
            first.index,
            first.offset,
            first.offset.saturating_add(first.len),
            bad.len()
        ),
    }
}

/// Why an operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VramError {
    /// The request was malformed; the message says what was wrong. Nothing was allocated.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The device does not have room for the shard (after the configured headroom).
    #[error("insufficient VRAM on the device: needed {needed} bytes, available {available} bytes")]
    InsufficientVram { needed: u64, available: u64 },

    /// The device could not allocate (driver error or injected fault); capacity was not the cause.
    #[error("allocation failed on device {device}: {reason}")]
    AllocationFailed { device: u32, reason: String },

    /// The bytes did not hash to the digest the caller expected. The allocation was freed.
    #[error("digest mismatch: expected sha256 {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },

    /// The shard in device memory no longer matches its seal, or the seal itself is not valid.
    /// The shard is quarantined and its device stopped (fail-closed).
    /// `first_bad_chunk` and `bad_chunks` name the chunks (index and byte range) found to
    /// differ; both are empty when the seal itself (signature, leaf list) is what failed.
    /// `bad_tensors` names the safetensors tensors overlapping those chunks, when the shard was
    /// sealed from a safetensors file.
    #[error(
        "seal verification failed for shard {shard_id}{}{}",
        describe_bad_chunks(bad_chunks),
        describe_tensors(bad_tensors)
    )]
    SealVerificationFailed {
        shard_id: String,
        first_bad_chunk: Option<u64>,
        bad_chunks: Vec<ChunkSpan>,
        bad_tensors: Vec<String>,
    },

    /// The `execute` closure panicked. The device and the shard are unaffected.
    #[error("the execute closure panicked while running on shard {shard_id}")]
    ExecutionPanicked { shard_id: String },

    /// No resident shard matches this handle or id (released, never sealed, or lost in a crash).
    #[error("unknown shard: {0}")]
    UnknownShard(String),

    /// The device refuses new seals and executions after a failed verification until
    /// `reset_device` is called.
    #[error(
        "device {device} is stopped (fail-closed after an integrity failure); call reset_device after investigating"
    )]
    DeviceStopped { device: u32 },

    /// The device is gone (simulated loss, driver failure).
    #[error("device {device} is lost")]
    DeviceLost { device: u32 },

    /// A security policy refused the operation.
    #[error("policy violation: {0}")]
    PolicyViolation(String),

    /// The CUDA driver reported an error.
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// The audit sink is down and the configuration says to fail closed.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),

    /// The backend does not support this operation (e.g. fault injection on real hardware).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The system is shutting down or has shut down.
    #[error("the system is shutting down")]
    ShuttingDown,

    /// Reading a source file failed.
    #[error("I/O error: {0}")]
    Io(String),

    /// A device call did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl VramError {
    /// Whether trying again later may succeed: true for capacity and allocation failures and
    /// timeouts; false for integrity, policy, input and stopped-device errors.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::InsufficientVram { .. }
                | Self::AllocationFailed { .. }
                | Self::Cuda(_)
                | Self::Timeout(_)
                | Self::AuditUnavailable(_)
        )
    }

    /// Whether the error means the weights or their seal cannot be trusted.
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Self::SealVerificationFailed { .. } | Self::DigestMismatch { .. }
        )
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }
}

impl From<std::io::Error> for VramError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(format!("{}: {e}", e.kind()))
    }
}
