//! The `vram-audit-v1` file writer: appends HMAC-chained records to a log file synchronously
//! (plain `std::fs`), crash-safely, and continues an existing log's chain when reopened.
//!
//! * [`AuditLogWriter::open`] creates the file (mode `0o600` on Unix) or, if it exists, walks its
//!   whole chain with the key first. A log that does not verify is refused — we never append to a
//!   log we cannot vouch for — except for a *torn tail* (an incomplete final line left by a crash),
//!   which is cut off and reported in [`OpenReport::torn_tail_bytes`]. No complete record is ever
//!   removed or rewritten. The caller then records
//!   `AuditLogOpened { resumed_from_seq, torn_tail_bytes }` as the first new record
//!   ([`OpenReport::opened_event`]).
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

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::audit::events::AuditEvent;
use crate::audit::format::{
    ChainState, MAC_SEPARATOR, MAX_LINE_BYTES, encode_record, parse_record,
};
use crate::audit::verify::{ProblemKind, scan};
use crate::seal::keys::AuditKey;

/// What [`AuditLogWriter::open`] found in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The last sequence number in the log (0 for a new or empty log).
    pub resumed_from_seq: u64,
    /// Bytes of an incomplete final line that were cut before resuming, if there was one.
    pub torn_tail_bytes: Option<u64>,
}

impl OpenReport {
    /// The `AuditLogOpened` event the caller should write first.
    pub fn opened_event(&self) -> AuditEvent {
        AuditEvent::AuditLogOpened {
            resumed_from_seq: self.resumed_from_seq,
            torn_tail_bytes: self.torn_tail_bytes,
        }
    }
}

/// Why the audit log could not be opened or written. Never contains key or token bytes; I/O
/// errors are kept as the source (kind and message intact, see [`AuditLogError::io_kind`]).
#[derive(Debug, thiserror::Error)]
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
        let mut file = opts.open(path).map_err(io_err("open"))?;
        let scanned = scan(BufReader::new(&file), &key).map_err(io_err("read"))?;
        let mut len = scanned.verified_len;
        let mut torn_tail_bytes = None;
        match scanned.report.first_problem {
            None => {}
            Some(problem) => match problem.kind {
                ProblemKind::TornTail { bytes } => {
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

/// The same encoding and chain as [`AuditLogWriter`], into lines kept in memory (for an
/// in-memory audit sink and tests). Lines have no trailing `\n`; check them with
/// [`verify_lines`](crate::audit::verify::verify_lines).
pub struct MemoryChain {
    key: AuditKey,
    worker_id: String,
    chain: ChainState,
    lines: Vec<String>,
}

impl fmt::Debug for MemoryChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryChain")
            .field("worker_id", &self.worker_id)
            .field("next_seq", &self.chain.next_seq)
            .field("lines", &self.lines.len())
            .finish_non_exhaustive()
    }
}

impl MemoryChain {
    /// An empty chain for `worker_id`.
    pub fn new(key: AuditKey, worker_id: &str) -> Result<Self, AuditLogError> {
        check_worker_id(worker_id)?;
        Ok(Self {
            key,
            worker_id: worker_id.to_owned(),
            chain: ChainState::genesis(),
            lines: Vec::new(),
        })
    }

    /// Encodes and keeps `records` (`(ts, event_json)` pairs); all or nothing. Returns the last
    /// sequence number.
    pub fn append_batch(&mut self, records: &[(String, String)]) -> Result<u64, AuditLogError> {
        let (buf, chain, last_seq) =
            encode_batch(&self.key, &self.chain, &self.worker_id, records)?;
        self.lines.extend(buf.lines().map(str::to_owned));
        self.chain = chain;
        Ok(last_seq)
    }

    /// The lines so far, oldest first.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.chain.next_seq
    }

    /// Records kept so far.
    pub fn records_written(&self) -> u64 {
        self.chain.last_seq()
    }
}

/// Encodes a batch onto a copy of `chain`, checking every line with the verifier's parser.
/// Returns the text to append (lines each ending in `\n`), the chain after it, and the last seq.
fn encode_batch(
    key: &AuditKey,
    chain: &ChainState,
    worker_id: &str,
    records: &[(String, String)],
) -> Result<(String, ChainState, u64), AuditLogError> {
    let mut next = *chain;
    let mut buf = String::new();
    for (index, (ts, event_json)) in records.iter().enumerate() {
        let invalid = |reason: String| AuditLogError::InvalidRecord { index, reason };
        if event_json.contains(MAC_SEPARATOR) {
            // A nested `"mac"` member would make "the bytes before `,"mac":"`" ambiguous for a
            // verifier that searches from the start of the line; never write such a line.
            return Err(invalid(String::from(
                "event JSON must not contain a \"mac\" member",
            )));
        }
        let seq = next.next_seq;
        let line = encode_record(key, &mut next, ts, worker_id, event_json);
        if line.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "encoded line is longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        let parsed = parse_record(&line).map_err(|e| invalid(e.0))?;
        if parsed.seq != seq || parsed.ts != *ts || parsed.worker_id != worker_id {
            return Err(invalid(String::from(
                "event JSON is not a single object (it changes the record's members)",
            )));
        }
        buf.push_str(&line);
        buf.push('\n');
    }
    Ok((buf, next, next.last_seq()))
}

fn check_worker_id(worker_id: &str) -> Result<(), AuditLogError> {
    if worker_id.is_empty() {
        return Err(AuditLogError::InvalidWorkerId(String::from(
            "must not be empty",
        )));
    }
    if worker_id.chars().any(char::is_control) {
        return Err(AuditLogError::InvalidWorkerId(String::from(
            "must not contain control characters",
        )));
    }
    if worker_id.len() > 256 {
        return Err(AuditLogError::InvalidWorkerId(String::from(
            "must be at most 256 bytes",
        )));
    }
    Ok(())
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::audit::format::format_ts;
    use crate::audit::verify::{AuditProblem, verify_lines, verify_log};
    use crate::seal::keys::WorkerToken;

    const TOKEN: &[u8] = b"writer-test-token-0123456789abcdef";

    fn token() -> WorkerToken {
        WorkerToken::new(TOKEN.to_vec()).unwrap()
    }

    fn key() -> AuditKey {
        AuditKey::derive(&token())
    }

    fn rec(ev: &AuditEvent) -> (String, String) {
        (format_ts(chrono::Utc::now()), ev.to_json())
    }

    fn alloc(i: u64) -> AuditEvent {
        AuditEvent::VramAllocated {
            shard_id: format!("shard-{i}"),
            requested_bytes: i,
            allocated_bytes: i,
            available_bytes: 1000 - i,
            used_bytes: i,
            gpu_device: 0,
        }
    }

    fn dealloc(i: u64) -> AuditEvent {
        AuditEvent::VramDeallocated {
            shard_id: format!("shard-{i}"),
            freed_bytes: i,
            remaining_used: 0,
            gpu_device: 0,
        }
    }

    /// A log with one open record and three batches (1 + 3 + 2 + 4 = 10 records).
    fn write_log(path: &Path) -> AuditLogWriter {
        let (mut w, report) = AuditLogWriter::open(path, key(), "worker-1").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 0,
                torn_tail_bytes: None
            }
        );
        assert_eq!(w.append_batch(&[rec(&report.opened_event())]).unwrap(), 1);
        assert_eq!(
            w.append_batch(&[rec(&alloc(1)), rec(&alloc(2)), rec(&alloc(3))])
                .unwrap(),
            4
        );
        assert_eq!(
            w.append_batch(&[rec(&dealloc(1)), rec(&dealloc(2))])
                .unwrap(),
            6
        );
        let batch: Vec<_> = (10..14).map(|i| rec(&alloc(i))).collect();
        assert_eq!(w.append_batch(&batch).unwrap(), 10);
        w.sync().unwrap();
        w
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn problem_of(path: &Path) -> AuditProblem {
        verify_log(path, &token()).unwrap().first_problem.unwrap()
    }

    #[test]
    fn written_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = write_log(&path);
        assert_eq!(w.next_seq(), 11);
        assert_eq!(w.last_seq(), 10);
        assert_eq!(w.records_written(), 10);
        drop(w);
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!((r.records, r.last_seq, r.resumptions), (10, 10, 0));
        assert_eq!(r.counts_by_type["AuditLogOpened"], 1);
        assert_eq!(r.counts_by_type["VramAllocated"], 7);
        assert_eq!(r.counts_by_type["VramDeallocated"], 2);
        // Records are in order and carry the worker id.
        for (i, line) in read_lines(&path).iter().enumerate() {
            let p = parse_record(line).unwrap();
            assert_eq!(p.seq, i as u64 + 1);
            assert_eq!(p.worker_id, "worker-1");
        }
    }

    #[cfg(unix)]
    #[test]
    fn new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let _w = AuditLogWriter::open(&path, key(), "w").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tampering_in_a_written_log_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(write_log(&path));
        let lines = read_lines(&path);

        // One byte edited in a middle line.
        let mut l = lines.clone();
        l[4] = l[4].replacen("shard-", "shard_", 1);
        write_lines(&path, &l);
        assert_eq!(
            problem_of(&path),
            AuditProblem {
                line: 5,
                kind: ProblemKind::MacMismatch
            }
        );

        // A line deleted.
        let mut l = lines.clone();
        l.remove(6);
        write_lines(&path, &l);
        assert_eq!(
            problem_of(&path),
            AuditProblem {
                line: 7,
                kind: ProblemKind::SeqGap {
                    expected: 7,
                    found: 8
                }
            }
        );

        // A copied line inserted.
        let mut l = lines.clone();
        let copy = l[2].clone();
        l.insert(8, copy);
        write_lines(&path, &l);
        assert_eq!(
            problem_of(&path),
            AuditProblem {
                line: 9,
                kind: ProblemKind::SeqGap {
                    expected: 9,
                    found: 3
                }
            }
        );

        // Two lines swapped.
        let mut l = lines.clone();
        l.swap(3, 7);
        write_lines(&path, &l);
        assert_eq!(
            problem_of(&path),
            AuditProblem {
                line: 4,
                kind: ProblemKind::SeqGap {
                    expected: 4,
                    found: 8
                }
            }
        );

        // Truncated mid-line.
        let text = lines.join("\n") + "\n";
        let cut = text.len() - lines[9].len() / 2;
        std::fs::write(&path, &text[..cut]).unwrap();
        let p = problem_of(&path);
        assert_eq!(p.line, 10);
        assert!(matches!(p.kind, ProblemKind::TornTail { .. }), "{p:?}");

        // A forged line appended with a wrong key, chained onto the real last MAC.
        let last = parse_record(&lines[9]).unwrap();
        let mut chain = ChainState {
            next_seq: 11,
            prev_mac: last.mac,
        };
        let wrong =
            AuditKey::derive(&WorkerToken::new(b"not-the-worker-token!!".to_vec()).unwrap());
        let mut l = lines.clone();
        l.push(encode_record(
            &wrong,
            &mut chain,
            &format_ts(chrono::Utc::now()),
            "worker-1",
            &AuditEvent::DeviceReset { gpu_device: 0 }.to_json(),
        ));
        write_lines(&path, &l);
        assert_eq!(
            problem_of(&path),
            AuditProblem {
                line: 11,
                kind: ProblemKind::MacMismatch
            }
        );
    }

    #[test]
    fn reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(write_log(&path));
        let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 10,
                torn_tail_bytes: None
            }
        );
        assert_eq!(w.next_seq(), 11);
        assert_eq!(w.records_written(), 0);
        assert_eq!(
            w.append_batch(&[rec(&report.opened_event()), rec(&alloc(99))])
                .unwrap(),
            12
        );
        w.append_batch(&[rec(&AuditEvent::AuditLogClosed { records_written: 2 })])
            .unwrap();
        w.sync().unwrap();
        assert_eq!(w.records_written(), 3);
        drop(w);
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!((r.records, r.last_seq, r.resumptions), (13, 13, 1));
        let lines = read_lines(&path);
        let resumed = parse_record(&lines[10]).unwrap();
        assert_eq!(
            resumed.event_json,
            r#"{"type":"AuditLogOpened","resumed_from_seq":10}"#
        );
    }

    #[test]
    fn reopen_cuts_a_torn_tail_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(write_log(&path));
        let full = std::fs::read(&path).unwrap();
        let torn = b"{\"seq\":11,\"ts\":\"2026-11-29T09:00:00.0";
        let mut bytes = full.clone();
        bytes.extend_from_slice(torn);
        std::fs::write(&path, &bytes).unwrap();

        let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 10,
                torn_tail_bytes: Some(torn.len() as u64)
            }
        );
        // Exactly the torn bytes were cut: every complete record is still there, byte for byte.
        assert_eq!(std::fs::read(&path).unwrap(), full);
        w.append_batch(&[rec(&report.opened_event())]).unwrap();
        drop(w);
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!((r.records, r.resumptions), (11, 1));
        let lines = read_lines(&path);
        let opened = parse_record(lines.last().unwrap()).unwrap();
        assert_eq!(
            opened.event_json,
            format!(
                r#"{{"type":"AuditLogOpened","resumed_from_seq":10,"torn_tail_bytes":{}}}"#,
                torn.len()
            )
        );
    }

    #[test]
    fn reopen_of_a_torn_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"{\"seq\":1,\"ts").unwrap();
        let (mut w, report) = AuditLogWriter::open(&path, key(), "w").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 0,
                torn_tail_bytes: Some(12)
            }
        );
        w.append_batch(&[rec(&report.opened_event())]).unwrap();
        drop(w);
        assert!(verify_log(&path, &token()).unwrap().is_intact());
    }

    #[test]
    fn reopen_terminates_a_complete_unterminated_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(write_log(&path));
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.pop(), Some(b'\n'));
        std::fs::write(&path, &bytes).unwrap();
        let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 10,
                torn_tail_bytes: None
            }
        );
        w.append_batch(&[rec(&report.opened_event())]).unwrap();
        drop(w);
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!(r.records, 11);
    }

    #[test]
    fn reopen_of_a_tampered_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        drop(write_log(&path));
        let mut l = read_lines(&path);
        l[2] = l[2].replacen("shard-", "shard_", 1);
        write_lines(&path, &l);
        let before = std::fs::read(&path).unwrap();
        let err = AuditLogWriter::open(&path, key(), "worker-1").unwrap_err();
        match &err {
            AuditLogError::ChainBroken { line, kind, .. } => {
                assert_eq!((*line, kind), (3, &ProblemKind::MacMismatch));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("line 3"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "refused log left untouched"
        );

        // A malformed complete line in the middle is refused too, not cut as a torn tail.
        let mut l = read_lines(&path);
        l[2] = String::from("{\"seq\":3,");
        write_lines(&path, &l);
        let err = AuditLogWriter::open(&path, key(), "worker-1").unwrap_err();
        assert!(matches!(
            err,
            AuditLogError::ChainBroken {
                line: 3,
                kind: ProblemKind::Malformed(_),
                ..
            }
        ));

        // The wrong key is refused at line 1.
        drop(write_log(&dir.path().join("b.log")));
        let other =
            AuditKey::derive(&WorkerToken::new(b"a-different-token-000000".to_vec()).unwrap());
        let err = AuditLogWriter::open(&dir.path().join("b.log"), other, "worker-1").unwrap_err();
        assert!(matches!(
            err,
            AuditLogError::ChainBroken {
                line: 1,
                kind: ProblemKind::MacMismatch,
                ..
            }
        ));
    }

    /// Writes the first `fail_after` bytes of each write for real, then fails.
    struct FailingFile {
        inner: File,
        fail_after: usize,
        truncate_fails: bool,
    }

    impl LogFile for FailingFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let n = self.fail_after.min(buf.len());
            Write::write_all(&mut self.inner, &buf[..n])?;
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left",
            ))
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.truncate_fails {
                Err(io::Error::other("injected: truncate failed"))
            } else {
                self.inner.set_len(len)
            }
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.inner.sync_data()
        }
    }

    #[test]
    fn failed_write_leaves_no_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = write_log(&path);
        let before = std::fs::read(&path).unwrap();
        let real = std::mem::replace(
            &mut w.file,
            Box::new(FailingFile {
                inner: OpenOptions::new().append(true).open(&path).unwrap(),
                fail_after: 57,
                truncate_fails: false,
            }),
        );
        let err = w
            .append_batch(&[rec(&alloc(50)), rec(&alloc(51))])
            .unwrap_err();
        assert!(matches!(err, AuditLogError::WriteFailed { .. }), "{err:?}");
        assert_eq!(err.io_kind(), Some(io::ErrorKind::StorageFull));
        assert!(err.to_string().contains("no space left"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "partial batch rolled back"
        );
        assert_eq!(w.next_seq(), 11, "chain unchanged");
        assert_eq!(w.records_written(), 10);
        assert!(!w.is_poisoned());

        // The storage recovers: the retried batch continues the chain.
        w.file = real;
        assert_eq!(
            w.append_batch(&[rec(&alloc(50)), rec(&alloc(51))]).unwrap(),
            12
        );
        drop(w);
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!(r.records, 12);
    }

    #[test]
    fn failed_rollback_poisons_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = write_log(&path);
        w.file = Box::new(FailingFile {
            inner: OpenOptions::new().append(true).open(&path).unwrap(),
            fail_after: 40,
            truncate_fails: true,
        });
        let err = w.append_batch(&[rec(&alloc(50))]).unwrap_err();
        assert!(
            matches!(err, AuditLogError::RollbackFailed { .. }),
            "{err:?}"
        );
        assert!(w.is_poisoned());
        for e in [
            w.append_batch(&[rec(&alloc(51))]).unwrap_err(),
            w.append_batch(&[]).unwrap_err(),
            w.sync().unwrap_err(),
        ] {
            assert!(matches!(e, AuditLogError::Poisoned { .. }), "{e:?}");
        }
        drop(w);
        // The 40 partial bytes are on disk as a torn tail; reopening cuts them.
        let p = problem_of(&path);
        assert_eq!(
            p,
            AuditProblem {
                line: 11,
                kind: ProblemKind::TornTail { bytes: 40 }
            }
        );
        let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
        assert_eq!(
            report,
            OpenReport {
                resumed_from_seq: 10,
                torn_tail_bytes: Some(40)
            }
        );
        w.append_batch(&[rec(&report.opened_event())]).unwrap();
        drop(w);
        assert!(verify_log(&path, &token()).unwrap().is_intact());
    }

    #[cfg(unix)]
    #[test]
    fn real_io_failure_on_a_read_only_handle() {
        // A real OS error: writing through a read-only descriptor fails (EBADF), and so does
        // truncating through it, so the writer must poison itself.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = write_log(&path);
        let before = std::fs::read(&path).unwrap();
        w.file = Box::new(File::open(&path).unwrap());
        let err = w.append_batch(&[rec(&alloc(1))]).unwrap_err();
        assert!(
            matches!(err, AuditLogError::RollbackFailed { .. }),
            "{err:?}"
        );
        assert!(err.io_kind().is_some());
        assert!(w.is_poisoned());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn invalid_records_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = write_log(&path);
        let before = std::fs::read(&path).unwrap();
        let ts = format_ts(chrono::Utc::now());
        let bad = [
            (ts.clone(), String::from("[1,2]")),
            (ts.clone(), String::from("{\"gpu_device\":0}")),
            (ts.clone(), String::from("{\"type\":\"X\"},\"extra\":1")),
            (ts.clone(), String::from("{\"type\":\"X\",\"mac\":\"00\"}")),
            (
                ts.clone(),
                String::from("{\"type\":\"X\"}\n{\"type\":\"Y\"}"),
            ),
            (
                String::from("yesterday"),
                AuditEvent::DeviceReset { gpu_device: 0 }.to_json(),
            ),
            (
                ts.clone(),
                format!(
                    "{{\"type\":\"X\",\"pad\":\"{}\"}}",
                    "a".repeat(MAX_LINE_BYTES)
                ),
            ),
        ];
        for b in bad {
            let batch = [rec(&alloc(1)), b];
            let err = w.append_batch(&batch).unwrap_err();
            assert!(
                matches!(err, AuditLogError::InvalidRecord { index: 1, .. }),
                "{err:?}"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(w.next_seq(), 11);
        assert!(!w.is_poisoned());
        assert_eq!(w.append_batch(&[]).unwrap(), 10);
    }

    #[test]
    fn bad_worker_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["", "w\n1", "w\u{1b}[2K", &"x".repeat(300)] {
            let err = AuditLogWriter::open(&dir.path().join("x.log"), key(), id).unwrap_err();
            assert!(matches!(err, AuditLogError::InvalidWorkerId(_)));
        }
        // Quotes and non-ASCII are fine: they are JSON-escaped.
        let path = dir.path().join("y.log");
        let (mut w, _) = AuditLogWriter::open(&path, key(), "wörker \"1\"").unwrap();
        w.append_batch(&[rec(&alloc(1))]).unwrap();
        drop(w);
        assert!(verify_log(&path, &token()).unwrap().is_intact());
    }

    #[test]
    fn writer_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AuditLogWriter>();
        assert_send_sync::<MemoryChain>();
        assert_send_sync::<AuditLogError>();
    }

    #[test]
    fn memory_chain_matches_the_file_format() {
        let mut m = MemoryChain::new(key(), "worker-1").unwrap();
        let batch1 = vec![
            rec(&OpenReport {
                resumed_from_seq: 0,
                torn_tail_bytes: None,
            }
            .opened_event()),
            rec(&alloc(1)),
        ];
        let batch2 = vec![rec(&dealloc(1))];
        assert_eq!(m.append_batch(&batch1).unwrap(), 2);
        assert_eq!(m.append_batch(&batch2).unwrap(), 3);
        assert!(
            m.append_batch(&[(String::from("x"), String::from("{}"))])
                .is_err()
        );
        assert_eq!(m.lines().len(), 3);
        assert_eq!((m.next_seq(), m.records_written()), (4, 3));
        let r = verify_lines(m.lines().iter().map(String::as_str), &key(), true);
        assert!(r.is_intact());
        assert_eq!(r.records, 3);

        // The file writer produces the same bytes for the same input.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut w, _) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
        w.append_batch(&batch1).unwrap();
        w.append_batch(&batch2).unwrap();
        drop(w);
        assert_eq!(read_lines(&path), m.lines());
    }

    #[test]
    fn no_key_bytes_in_errors_or_debug() {
        let key_hex = hex::encode(&*key().expose_for_vectors());
        let token_text = String::from_utf8(TOKEN.to_vec()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut w = write_log(&path);
        let mut texts = vec![format!("{w:?}")];
        let mut errors = vec![
            AuditLogWriter::open(dir.path(), key(), "w").unwrap_err(),
            AuditLogWriter::open(&path, key(), "").unwrap_err(),
            w.append_batch(&[(String::from("x"), String::from("{}"))])
                .unwrap_err(),
        ];
        w.file = Box::new(FailingFile {
            inner: OpenOptions::new().append(true).open(&path).unwrap(),
            fail_after: 3,
            truncate_fails: false,
        });
        errors.push(w.append_batch(&[rec(&alloc(1))]).unwrap_err());
        w.file = Box::new(FailingFile {
            inner: OpenOptions::new().append(true).open(&path).unwrap(),
            fail_after: 3,
            truncate_fails: true,
        });
        errors.push(w.append_batch(&[rec(&alloc(1))]).unwrap_err());
        errors.push(w.sync().unwrap_err());
        texts.push(format!("{w:?}"));
        drop(w);
        let mut l = read_lines(&path);
        l.truncate(5);
        l[1] = l[1].replacen("shard-", "shard_", 1);
        write_lines(&path, &l);
        errors.push(AuditLogWriter::open(&path, key(), "worker-1").unwrap_err());
        texts.push(format!("{:?}", MemoryChain::new(key(), "w").unwrap()));
        for e in &errors {
            texts.push(e.to_string());
            texts.push(format!("{e:?}"));
        }
        assert_eq!(errors.len(), 7);
        for t in &texts {
            assert!(!t.contains(&key_hex), "{t}");
            assert!(!t.contains(&key_hex[..16]), "{t}");
            assert!(!t.contains(&token_text), "{t}");
        }
    }
}
