//! Why the audit log could not be opened or written: [`AuditLogError`], shared by the file
//! writer (`super`) and the in-memory chain ([`super::MemoryChain`]). The messages name the log
//! and the failed operation but never key or token bytes.

use std::io;
use std::path::PathBuf;

use crate::audit::verify::ProblemKind;

/// Why the audit log could not be opened or written. Never contains key or token bytes; I/O
/// errors are kept as the source (kind and message intact, see [`AuditLogError::io_kind`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditLogError {
    /// An I/O operation on the log failed (nothing was half-written).
    #[error("audit log {}: {op} failed: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The existing log does not verify with this key, so nothing is appended to it.
    #[error(
        "audit log {} does not verify at line {line}: {kind}; refusing to append to a log whose chain cannot be vouched for",
        path.display()
    )]
    ChainBroken {
        /// The log file.
        path: PathBuf,
        /// 1-based line of the first problem.
        line: u64,
        /// What is wrong there.
        kind: ProblemKind,
    },
    /// Writing a batch failed; the file was truncated back and the chain is unchanged, so the
    /// batch can be retried.
    #[error("audit log {}: write failed, batch rolled back: {source}", path.display())]
    WriteFailed {
        /// The log file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: io::Error,
    },
    /// Writing a batch failed and truncating the partial batch away failed too. The writer is
    /// poisoned; reopen the log (which cuts the partial line as a torn tail).
    #[error(
        "audit log {}: write failed ({source}) and rolling back failed ({truncate_error}); writer poisoned, reopen the log",
        path.display()
    )]
    RollbackFailed {
        /// The log file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: io::Error,
        /// The truncation error.
        truncate_error: io::Error,
    },
    /// An earlier failure could not be rolled back; the writer refuses all calls.
    #[error("audit log {}: writer poisoned by an earlier failure ({cause}); reopen the log", path.display())]
    Poisoned {
        /// The log file.
        path: PathBuf,
        /// The earlier failure, as text.
        cause: String,
    },
    /// A record in the batch would not form a valid line; nothing of the batch was written.
    #[error("audit record {index} of the batch is invalid: {reason}")]
    InvalidRecord {
        /// 0-based index in the batch.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The log file is not one this worker may adopt: a symlink, not a regular file, owned
    /// by another user, or writable by group or others. The message says which, like the token
    /// file's refusals.
    #[error("{0}")]
    Refused(String),
    /// The worker id cannot be used in records.
    #[error("invalid audit worker id: {0}")]
    InvalidWorkerId(String),
}

impl AuditLogError {
    /// The kind of the underlying I/O error, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io { source, .. }
            | Self::WriteFailed { source, .. }
            | Self::RollbackFailed { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}
