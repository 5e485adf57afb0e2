//! The crate's one error type.
//!
//! Every public operation returns [`VramError`]. Variants are precise enough for a caller to
//! decide what to do (retry, fail closed, fix its input), and their text never contains a device
//! pointer, a key or the worker token: only ids, sizes, indices and hex digests that are already
//! public parts of a seal.

use std::sync::Arc;

use thiserror::Error;

use crate::types::{ChunkSpan, StopCause};

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

fn describe_bad_chunks(bad: &[ChunkSpan], count: u64) -> String {
    match bad.first() {
        None => String::new(),
        Some(first) => format!(
            ": first bad chunk {} (bytes {}..{}), {count} bad chunk(s) in total",
            first.index,
            first.offset,
            first.offset.saturating_add(first.len),
        ),
    }
}

/// Most bad chunks a [`VramError::SealVerificationFailed`] (and a quarantine) keeps by index and
/// byte range; the rest are counted.
pub const MAX_REPORTED_BAD_CHUNKS: usize = 64;

/// Why an operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VramError {
    /// The request was malformed; the message says what was wrong. Nothing was allocated.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The device does not have room for the shard (after the configured headroom).
    #[error("insufficient VRAM on the device: needed {needed} bytes, available {available} bytes")]
    InsufficientVram {
        /// Bytes the shard needs.
        needed: u64,
        /// Bytes a seal may use on the device now.
        available: u64,
    },

    /// The device could not allocate (driver error or injected fault); capacity was not the cause.
    #[error("allocation failed on device {device}: {reason}")]
    AllocationFailed {
        /// The device.
        device: u32,
        /// What the backend said.
        reason: String,
    },

    /// The bytes did not hash to the digest the caller expected. The allocation was freed.
    #[error("digest mismatch: expected sha256 {expected}, got {actual}")]
    DigestMismatch {
        /// The SHA-256 the caller expected (lowercase hex).
        expected: String,
        /// The SHA-256 of the bytes received (lowercase hex).
        actual: String,
    },

    /// What landed in device memory is not what the host read from the source: re-hashed on the
    /// device right after the upload, the leaves differ from the ones the host computed. The
    /// seal was refused and the allocation freed (a bad copy is caught at the seal, not at the
    /// first verification).
    #[error(
        "upload corrupted on device {device}: {bad_chunk_count} chunk(s) differ from the source, first at chunk {first_bad_chunk}; nothing was sealed"
    )]
    UploadCorrupted {
        /// The device index.
        device: u32,
        /// The first chunk whose device leaf differs.
        first_bad_chunk: u64,
        /// How many chunks differ.
        bad_chunk_count: u64,
    },

    /// The shard in device memory no longer matches its seal, or the seal itself is not valid.
    /// The shard is quarantined and its device stopped (fail-closed).
    /// `first_bad_chunk` and `bad_chunks` name the chunks (index and byte range) found to
    /// differ — the first [`MAX_REPORTED_BAD_CHUNKS`] of them, in index order, while
    /// `bad_chunk_count` counts them all; all are empty/zero when the seal itself (signature,
    /// leaf list) is what failed. Bounded, so a refused call never copies more than that
    /// whatever the size of the shard.
    /// `bad_tensors` names the safetensors tensors overlapping those chunks, when the shard was
    /// sealed from a safetensors file.
    #[error(
        "seal verification failed for shard {shard_id}{}{}",
        describe_bad_chunks(bad_chunks, *bad_chunk_count),
        describe_tensors(bad_tensors)
    )]
    SealVerificationFailed {
        /// The shard.
        shard_id: String,
        /// Index of the first chunk found to differ.
        first_bad_chunk: Option<u64>,
        /// The first chunks found to differ (at most [`MAX_REPORTED_BAD_CHUNKS`]), in index
        /// order.
        bad_chunks: Vec<ChunkSpan>,
        /// How many chunks were found to differ in all.
        bad_chunk_count: u64,
        /// Tensors overlapping them (safetensors shards only).
        bad_tensors: Vec<String>,
    },

    /// The `execute` closure panicked. The device and the shard are unaffected.
    #[error("the execute closure panicked while running on shard {shard_id}")]
    ExecutionPanicked {
        /// The shard the closure ran on.
        shard_id: String,
    },

    /// No resident shard matches this handle or id (released, never sealed, or lost in a crash).
    #[error("unknown shard: {0}")]
    UnknownShard(String),

    /// The device refuses the call; `cause` says why and what to do: after a failed
    /// verification it refuses seals and executions until `reset_device` is called; while its
    /// actor is being restarted after a crash, a retry will succeed; at shutdown, nothing will.
    #[error("device {device} is stopped ({cause})")]
    DeviceStopped {
        /// The device.
        device: u32,
        /// Why it is stopped.
        cause: StopCause,
    },

    /// The device is gone (simulated loss, driver failure).
    #[error("device {device} is lost")]
    DeviceLost {
        /// The device.
        device: u32,
    },

    /// A security policy refused the operation.
    #[error("policy violation: {0}")]
    PolicyViolation(String),

    /// The CUDA driver reported an error during an operation (not at start: a backend that
    /// cannot start is [`VramError::BackendUnavailable`]).
    #[error("CUDA error: {0}")]
    Cuda(String),

    /// The backend could not start, so the system did not start: [`crate::Config::cuda`] with
    /// no CUDA driver library or no device, a driver that fails to initialise, or a device that
    /// could not be opened (`device` says which). Not retriable: a missing driver will not
    /// appear on a retry; fix the machine or choose another backend (`Config::auto`,
    /// `Config::simulated`).
    #[error("backend unavailable{}: {reason}", describe_device(*device))]
    BackendUnavailable {
        /// The device that could not be opened, when one device was the problem (`None` when
        /// the backend as a whole is missing: no driver, no device).
        device: Option<u32>,
        /// Why, in words (what the driver or the loader said).
        reason: String,
    },

    /// The audit sink is down and the configuration says to fail closed.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),

    /// The backend does not support this operation (e.g. fault injection on real hardware).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The system is shutting down or has shut down.
    #[error("the system is shutting down")]
    ShuttingDown,

    /// Reading or writing a file (or another byte source) failed. `kind` is the
    /// [`std::io::ErrorKind`] the operating system reported, for callers that branch on it:
    /// `NotFound` for a model file that does not exist, `PermissionDenied` for one that cannot
    /// be opened, …; a source that delivered more or fewer bytes than it declared is
    /// `UnexpectedEof` or `InvalidData`. (A path that exists but is not a regular file — a
    /// directory, a FIFO, a device — is `InvalidInput`.) The `source` is the underlying
    /// [`std::io::Error`] ([`IoSource::get_ref`], also reached through
    /// [`std::error::Error::source`]), e.g. for its `raw_os_error`.
    #[error("I/O error ({kind}): {message}")]
    Io {
        /// What kind of I/O failure.
        kind: std::io::ErrorKind,
        /// What failed, in words (never file contents); it already ends with what the
        /// operating system said, so the message alone is a complete report.
        message: String,
        /// The underlying I/O error.
        source: IoSource,
    },

    /// A verification could not be completed: the device answered with fewer leaf hashes than
    /// were asked for. Nothing is known to be wrong with the shard, but it was not proven
    /// intact either; the attempt is audited.
    #[error("verification of shard {shard_id} incomplete: {reason}")]
    VerificationIncomplete {
        /// The shard.
        shard_id: String,
        /// What was missing.
        reason: String,
    },

    /// Something inside the crate failed that should not have (a worker thread panicked, a
    /// backend lost track of an allocation). Not the caller's fault; report it.
    #[error("internal error: {0}")]
    Internal(String),

    /// A device call did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),

    /// The caller gave up on the request (dropped its future) and the work stopped at its next
    /// staging piece: a seal freed what it had allocated, a verification stopped hashing.
    /// Callers rarely see it (they are gone); it is what a device answers the waiter that
    /// holds the request's slot, and what `vram_seals_total{result="cancelled"}` counts.
    #[error("cancelled by caller")]
    Cancelled,

    /// The shard's bytes are not the file the signed model release lists: its SHA-256 differs
    /// from the resource's digest in the verified model-signing manifest. An integrity failure,
    /// audited critical; the allocation was freed and nothing was sealed.
    #[error(
        "provenance mismatch for resource {resource}: the signed model lists sha256 {expected}, the bytes hash to {actual}; nothing was sealed"
    )]
    ProvenanceMismatch {
        /// The resource (file name in the signed manifest) the shard was sealed as.
        resource: String,
        /// The SHA-256 the signed manifest lists for it (lowercase hex).
        expected: String,
        /// The SHA-256 of the bytes received (lowercase hex).
        actual: String,
    },

    /// A model-signing bundle was refused: malformed, truncated or oversized, of a kind the
    /// crate does not verify (certificate or keyless, another predicate or serialization), or
    /// its signature does not verify with the given publisher key. The reason says which.
    #[error("model signature refused: {0}")]
    ModelSignatureInvalid(String),

    /// An attestation (v2 or v3), a signed audit head or a group attestation did not pass the
    /// challenger's check: a bad signature, another nonce, a failed policy or a malformed
    /// document. It says nothing about any shard: a document that does not verify is not
    /// evidence about the shard it names.
    #[error("attestation invalid: {0}")]
    AttestationInvalid(String),

    /// The device had no free slot for this request within `Config::admission_timeout`:
    /// it is busy with others. Nothing was done; retry later (load shedding, counted in
    /// `vram_admission_busy_total`, not audited).
    #[error("device {device} is busy: no request slot became free within the admission timeout")]
    Busy {
        /// The device.
        device: u32,
    },

    /// One member of a tensor-parallel group failed (`seal_group`, `verify_group`,
    /// `attest_group`); `cause` is that member's own error. Every part a failed `seal_group`
    /// had already sealed was released before this was returned; a member that failed
    /// verification quarantined every member of its group (fail-all).
    ///
    /// The message already includes the member's error; [`std::error::Error::source`] returns
    /// it too (`cause` itself, a `Box<VramError>`: downcast to that), for code that walks the
    /// chain; [`VramError::innermost`] is the direct way to it.
    #[error("group {group_id}: member {shard_index} ({shard_id}): {cause}")]
    GroupMember {
        /// The group.
        group_id: String,
        /// The member's position in the group.
        shard_index: u32,
        /// The member's shard id.
        shard_id: String,
        /// What went wrong with it.
        #[source]
        cause: Box<VramError>,
    },

    /// The shard is intact as far as is known, but it belongs to a tensor-parallel group one
    /// of whose members failed verification: the whole group is quarantined (fail-all), so
    /// neither this shard nor any other member is executed or attested again. Release the
    /// group.
    #[error(
        "shard {shard_id} is quarantined with its group {group_id}: member {failed_shard_id} failed verification (fail-all); release the group"
    )]
    GroupQuarantined {
        /// The shard refused.
        shard_id: String,
        /// Its group.
        group_id: String,
        /// The member whose failure quarantined the group.
        failed_shard_id: String,
    },
}

impl VramError {
    /// Whether trying again later may succeed: true for capacity and allocation failures
    /// (`InsufficientVram`, `AllocationFailed`), `Timeout`, `Busy`, a failing audit sink
    /// (`AuditUnavailable`) and a device whose actor is restarting (`DeviceStopped` with
    /// [`StopCause::Restarting`]); false for everything else: integrity failures, policy,
    /// input, I/O, stopped or lost devices, driver errors (`Cuda`) and a backend that cannot
    /// start (`BackendUnavailable`: a missing driver will not appear on a retry). A [`VramError::GroupMember`] is retriable when its member's error is
    /// (a group that failed to seal was rolled back, so sealing it again may succeed).
    pub fn is_retriable(&self) -> bool {
        if let Self::GroupMember { cause, .. } = self {
            return cause.is_retriable();
        }
        matches!(
            self,
            Self::InsufficientVram { .. }
                | Self::AllocationFailed { .. }
                | Self::Timeout(_)
                | Self::Busy { .. }
                | Self::AuditUnavailable(_)
                | Self::DeviceStopped {
                    cause: StopCause::Restarting,
                    ..
                }
        )
    }

    /// A seal or record that failed its signature check: no chunk is named.
    pub(crate) fn seal_signature_failed(shard_id: impl Into<String>) -> Self {
        Self::SealVerificationFailed {
            shard_id: shard_id.into(),
            first_bad_chunk: None,
            bad_chunks: Vec::new(),
            bad_chunk_count: 0,
            bad_tensors: Vec::new(),
        }
    }

    /// An I/O error of `kind` with a message, raised by the crate itself (a source that did
    /// not deliver what it declared): its source is an [`std::io::Error`] of that kind and
    /// message.
    pub(crate) fn io(kind: std::io::ErrorKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::Io {
            kind,
            source: IoSource::new(std::io::Error::new(kind, message.clone())),
            message,
        }
    }

    /// The I/O error `e` while doing `what` ("cannot read model file /m.bin"): the message is
    /// `what: e`, the kind and the source are `e`'s.
    pub(crate) fn io_error(e: std::io::Error, what: impl std::fmt::Display) -> Self {
        Self::Io {
            kind: e.kind(),
            message: format!("{what}: {e}"),
            source: IoSource::new(e),
        }
    }

    /// Whether the error means the weights or their seal cannot be trusted (for a group member,
    /// whether the member's error does; a group-quarantined shard always does).
    pub fn is_integrity_failure(&self) -> bool {
        match self {
            Self::GroupMember { cause, .. } => cause.is_integrity_failure(),
            _ => matches!(
                self,
                Self::SealVerificationFailed { .. }
                    | Self::DigestMismatch { .. }
                    | Self::UploadCorrupted { .. }
                    | Self::GroupQuarantined { .. }
                    | Self::ProvenanceMismatch { .. }
                    | Self::ModelSignatureInvalid(_)
            ),
        }
    }

    /// The error itself, or for [`VramError::GroupMember`] the member's own error: what to
    /// branch on when the group it happened in does not matter.
    pub fn innermost(&self) -> &VramError {
        match self {
            Self::GroupMember { cause, .. } => cause.innermost(),
            other => other,
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }
}

impl From<crate::types::InvalidVerifyMode> for VramError {
    fn from(e: crate::types::InvalidVerifyMode) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

impl From<std::io::Error> for VramError {
    fn from(e: std::io::Error) -> Self {
        Self::Io {
            kind: e.kind(),
            message: e.to_string(),
            source: IoSource::new(e),
        }
    }
}

fn describe_device(device: Option<u32>) -> String {
    device.map(|d| format!(" (device {d})")).unwrap_or_default()
}

/// The [`std::io::Error`] behind a [`VramError::Io`], shared so that the error stays `Clone`.
/// Two are equal when their kind, OS error code and message are (an `io::Error` has no
/// equality of its own).
#[derive(Debug, Clone)]
pub struct IoSource(Arc<std::io::Error>);

impl IoSource {
    pub(crate) fn new(e: std::io::Error) -> Self {
        Self(Arc::new(e))
    }

    /// The I/O error itself.
    pub fn get_ref(&self) -> &std::io::Error {
        &self.0
    }

    /// Its kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }

    /// The operating system's error code, when the operating system reported it.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.0.raw_os_error()
    }
}

impl PartialEq for IoSource {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
            && self.raw_os_error() == other.raw_os_error()
            && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoSource {}

impl std::fmt::Display for IoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for IoSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
