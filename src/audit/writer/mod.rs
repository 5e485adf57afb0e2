//! The `vram-audit-v1` file writer: appends HMAC-chained records to a log file synchronously
//! (plain `std::fs`), crash-safely, and continues an existing log's chain when reopened.
//!
//! * [`AuditLogWriter::open`] opens the file without following a symlink and creates it with mode
//!   `0o600` (Unix); an existing file must be a regular file owned by this user that group and
//!   others cannot write (the token file's rules, `validation::owner_only`). It then walks its
//!   whole chain with the key first. A log that does not verify is refused — we never append to a
//!   log we cannot vouch for — except for a *torn tail* (an incomplete final line left by a crash),
//!   which is cut off and reported in [`OpenReport::torn_tail_bytes`] with the SHA-256 of the
//!   bytes cut ([`OpenReport::torn_tail_sha256`]). No complete record is ever removed or
//!   rewritten. The caller then records
//!   `AuditLogOpened { resumed_from_seq, torn_tail_bytes, torn_tail_sha256 }` as the first new
//!   record ([`OpenReport::opened_event`]), so what was cut stays on record: an edit dressed up
//!   as a crash is evident from it, and a head kept elsewhere catches it.
//! * [`AuditLogWriter::append_batch`] encodes a batch and writes it with one `write_all`. If the
//!   write fails, the file is truncated back to its length before the batch and the chain state is
//!   left as it was, so a failed batch leaves no partial line; if even that truncation fails the
//!   writer is *poisoned* and refuses every later call until the log is reopened (reopening cuts
//!   the partial line as a torn tail).
//! * [`AuditLogWriter::sync`] makes written records durable (`fdatasync`).
//!
//! Only one writer may have a log open at a time (the audit actor owns it); nothing here locks
//! the file.
//!
//! [`MemoryChain`] applies the same encoding and chain to lines kept in memory.
//!
//! Layout: this file holds the file-backed writer and its open/reopen logic; `error` holds
//! [`AuditLogError`]; `batch` encodes and checks a batch of records for both the file writer and
//! the in-memory chain (`memory`); `tests` exercises them all against the offline verifier.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::audit::events::AuditEvent;
use crate::audit::format::ChainState;
use crate::audit::verify::{ProblemKind, scan};
use crate::seal::keys::AuditKey;
use crate::validation::owner_only;

mod batch;
mod error;
mod memory;
#[cfg(test)]
mod tests;

use batch::{check_worker_id, encode_batch};
pub use error::AuditLogError;
pub use memory::{DEFAULT_MEMORY_LINES, MemoryChain};

/// What [`AuditLogWriter::open`] found in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The last sequence number in the log (0 for a new or empty log).
    pub resumed_from_seq: u64,
    /// Bytes of an incomplete final line that were cut before resuming, if there was one.
    pub torn_tail_bytes: Option<u64>,
    /// SHA-256 of those bytes.
    pub torn_tail_sha256: Option<[u8; 32]>,
}

impl OpenReport {
    /// The `AuditLogOpened` event the caller should write first.
    pub fn opened_event(&self) -> AuditEvent {
        AuditEvent::AuditLogOpened {
            resumed_from_seq: self.resumed_from_seq,
            torn_tail_bytes: self.torn_tail_bytes,
            torn_tail_sha256: self.torn_tail_sha256.map(hex::encode),
        }
    }
}

/// The file operations the writer needs; a seam so tests can inject write failures.
trait LogFile: Send + Sync {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
}

impl LogFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Appends chained records to a `vram-audit-v1` log file. See the module docs.
pub struct AuditLogWriter {
    file: Box<dyn LogFile>,
    path: PathBuf,
    key: AuditKey,
    worker_id: String,
    chain: ChainState,
    /// Length of the file: everything written so far is complete lines.
    len: u64,
    records_written: u64,
    poisoned: Option<String>,
}

impl fmt::Debug for AuditLogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLogWriter")
            .field("path", &self.path)
            .field("worker_id", &self.worker_id)
            .field("next_seq", &self.chain.next_seq)
            .field("len", &self.len)
            .field("records_written", &self.records_written)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl AuditLogWriter {
    /// Opens (or creates) the log at `path` for appending records as `worker_id`.
    ///
    /// An existing log is verified end to end with `key`; a log that does not verify is refused
    /// with [`AuditLogError::ChainBroken`]. An incomplete final line is cut (and reported); a
    /// complete final record missing its `\n` gets one.
    pub fn open(
        path: &Path,
        key: AuditKey,
        worker_id: &str,
    ) -> Result<(Self, OpenReport), AuditLogError> {
        check_worker_id(worker_id)?;
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source: io::Error| AuditLogError::Io { path, op, source }
        };
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        // Not through a symlink, and not a file someone else owns or may write: the log is
        // evidence, and an existing one is adopted only if nobody else can rewrite it.
        let (mut file, _) = owner_only::open(path, &owner_only::AUDIT_LOG, &mut opts)
            .map_err(AuditLogError::Refused)?;
        let scanned = scan(BufReader::new(&file), &key).map_err(io_err("read"))?;
        let mut len = scanned.verified_len;
        let mut torn_tail_bytes = None;
        let mut torn_tail_sha256 = None;
        match scanned.report.first_problem {
            None => {}
            Some(problem) => match problem.kind {
                ProblemKind::TornTail { bytes } => {
                    torn_tail_sha256 =
                        Some(hash_from(&mut file, len).map_err(io_err("read torn tail"))?);
                    file.set_len(len).map_err(io_err("truncate torn tail"))?;
                    file.sync_data().map_err(io_err("sync"))?;
                    torn_tail_bytes = Some(bytes);
                }
                kind => {
                    return Err(AuditLogError::ChainBroken {
                        path: path.to_path_buf(),
                        line: problem.line,
                        kind,
                    });
                }
            },
        }
        if scanned.final_line_unterminated {
            Write::write_all(&mut file, b"\n").map_err(io_err("write"))?;
            file.sync_data().map_err(io_err("sync"))?;
            len = len.saturating_add(1);
        }
        if len == 0 {
            sync_parent_dir(path).map_err(io_err("sync directory"))?;
        }
        let report = OpenReport {
            resumed_from_seq: scanned.chain.last_seq(),
            torn_tail_bytes,
            torn_tail_sha256,
        };
        let writer = Self {
            file: Box::new(file),
            path: path.to_path_buf(),
            key,
            worker_id: worker_id.to_owned(),
            chain: scanned.chain,
            len,
            records_written: 0,
            poisoned: None,
        };
        Ok((writer, report))
    }

    /// Encodes `records` (`(ts, event_json)` pairs; `ts` from
    /// [`format_ts`](crate::audit::format::format_ts), `event_json` from `AuditEvent::to_json`)
    /// and appends them with a single write. Returns the last sequence number written (the
    /// current last one for an empty batch).
    ///
    /// Every line is checked before anything is written; on a write error the batch is rolled
    /// back (see the module docs). Call [`sync`](Self::sync) to make the batch durable.
    pub fn append_batch(&mut self, records: &[(String, String)]) -> Result<u64, AuditLogError> {
        self.check_poisoned()?;
        let (buf, chain, last_seq) =
            encode_batch(&self.key, &self.chain, &self.worker_id, records)?;
        if buf.is_empty() {
            return Ok(last_seq);
        }
        if let Err(source) = self.file.write_all(buf.as_bytes()) {
            return Err(match self.file.set_len(self.len) {
                Ok(()) => AuditLogError::WriteFailed {
                    path: self.path.clone(),
                    source,
                },
                Err(truncate_error) => {
                    self.poisoned = Some(format!(
                        "write failed: {source}; truncating back failed: {truncate_error}"
                    ));
                    AuditLogError::RollbackFailed {
                        path: self.path.clone(),
                        source,
                        truncate_error,
                    }
                }
            });
        }
        self.chain = chain;
        self.len = self
            .len
            .saturating_add(u64::try_from(buf.len()).unwrap_or(u64::MAX));
        self.records_written = self
            .records_written
            .saturating_add(u64::try_from(records.len()).unwrap_or(u64::MAX));
        Ok(last_seq)
    }

    /// Flushes written records to stable storage (`sync_data`).
    pub fn sync(&mut self) -> Result<(), AuditLogError> {
        self.check_poisoned()?;
        self.file.sync_data().map_err(|source| AuditLogError::Io {
            path: self.path.clone(),
            op: "sync",
            source,
        })
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq
    }

    /// The sequence number of the last record in the log (0 if empty).
    pub fn last_seq(&self) -> u64 {
        self.chain.last_seq()
    }

    /// The last record written: its seq and MAC (durable once [`sync`](Self::sync) returned).
    pub fn head(&self) -> crate::types::AuditHead {
        crate::types::AuditHead::new(self.chain.last_seq(), &self.chain.prev_mac)
    }

    /// Records appended by this writer since it was opened.
    pub fn records_written(&self) -> u64 {
        self.records_written
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an unrecoverable write failure has disabled this writer.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check_poisoned(&self) -> Result<(), AuditLogError> {
        match &self.poisoned {
            Some(cause) => Err(AuditLogError::Poisoned {
                path: self.path.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// SHA-256 of the file's bytes from `offset` to its end (a torn tail: at most one line).
fn hash_from(file: &mut File, offset: u64) -> io::Result<[u8; 32]> {
    use sha2::Digest;
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher.finalize().into())
}

/// Makes a newly created file's directory entry durable.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}
