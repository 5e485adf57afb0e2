//! Offline verification of a `vram-audit-v1` log: walks the HMAC chain from the first line and
//! reports how many records verify, what they are, and the first line where the log stops being
//! trustworthy.
//!
//! Rules:
//! * every line must be a well-formed record ([`super::format::parse_record_bytes`]), carry the
//!   next sequence number, and carry the MAC that chains it to the line before;
//! * bytes after the last `\n` that do not form a complete record are a *torn tail* (a crash
//!   during a write), reported as [`ProblemKind::TornTail`], distinct from tampering; a final
//!   line without `\n` that is a complete, valid record is accepted;
//! * an empty file is intact with 0 records;
//! * checking stops at the first problem; the counts cover only the verified prefix.
//!
//! The chain alone cannot show that records were cut off the *end* of a log. Two things help:
//! a log whose last record is not `AuditLogClosed` is reported as *open*
//! ([`AuditReport::status`]: intact so far, with a tail nobody can vouch for), and
//! [`verify_log_to_head`] checks the log against an [`AuditHead`] kept elsewhere (from
//! `VramResidency::audit_head`, or an attestation): a log that stops short of it, or carries
//! another MAC at its seq, is not intact.
//!
//! The same walker is used by the writer to vouch for an existing log before appending to it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use serde::Serialize;

use crate::audit::format::{
    ChainBreak, ChainState, MAX_LINE_BYTES, MalformedRecord, parse_record_bytes,
};
use crate::seal::keys::{AuditKey, WorkerToken};
pub use crate::types::AuditHead;

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Records that verified (the prefix before the first problem).
    pub records: u64,
    /// Sequence number of the last verified record (0 if none).
    pub last_seq: u64,
    /// Verified records per event `type`.
    pub counts_by_type: BTreeMap<String, u64>,
    /// The first line that did not verify, if any.
    pub first_problem: Option<AuditProblem>,
    /// Verified `AuditLogOpened` records after the first record, i.e. how many times the log
    /// was reopened and its chain continued.
    pub resumptions: u64,
    /// Whether the last verified record is `AuditLogClosed` (the writer shut down cleanly). A
    /// log that does not end so is *open*: still being written, or cut.
    pub closed: bool,
    /// The last verified record's seq and MAC (`None` for an empty log).
    pub head: Option<AuditHead>,
    /// When checked against a head kept elsewhere ([`verify_log_to_head`]): how the log fails
    /// to reach it, if it does.
    pub head_problem: Option<HeadProblem>,
}

impl AuditReport {
    /// True when every line verified (a torn tail counts as a problem: the file is not clean)
    /// and, when checked against a head, the log reaches that head with the same MAC.
    pub fn is_intact(&self) -> bool {
        self.first_problem.is_none() && self.head_problem.is_none()
    }

    /// `NotIntact` when a line fails or a head is missed; `Open` when every line verifies but
    /// the log does not end with `AuditLogClosed` (or is empty): intact so far, with a tail
    /// nobody can vouch for without a head kept elsewhere; `Closed` otherwise.
    pub fn status(&self) -> LogStatus {
        if !self.is_intact() {
            LogStatus::NotIntact
        } else if self.closed {
            LogStatus::Closed
        } else {
            LogStatus::Open
        }
    }
}

/// What a verified log amounts to ([`AuditReport::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogStatus {
    /// Every line verified and the last record is `AuditLogClosed`.
    Closed,
    /// Every line verified, but the log does not end with `AuditLogClosed`: records may have
    /// been cut off its end (or the writer is still running, or crashed).
    Open,
    /// A line did not verify, or the log does not reach the head it was checked against.
    NotIntact,
}

impl fmt::Display for LogStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "intact (closed)",
            Self::Open => "open (intact so far; its tail is not vouched for without a head)",
            Self::NotIntact => "NOT INTACT",
        })
    }
}

/// How a log fails to reach a head kept elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeadProblem {
    /// The verified log ends before the head's seq: records were cut off its end (or a line
    /// before the head failed).
    EndsBeforeHead {
        /// The head's seq.
        head_seq: u64,
        /// The last verified seq.
        last_seq: u64,
    },
    /// The record at the head's seq carries another MAC: the log was rewritten from there (or
    /// earlier), or the head belongs to another log.
    DiffersAtHead {
        /// The head's seq.
        head_seq: u64,
    },
    /// The head has seq 0, which stands only for an empty log with a MAC of 64 zeros; this log
    /// has records, or the head another MAC. Such a head vouches for nothing.
    ZeroHead {
        /// The last verified seq (0 when the log is empty).
        last_seq: u64,
    },
}

impl fmt::Display for HeadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndsBeforeHead { head_seq, last_seq } => write!(
                f,
                "the log ends at seq {last_seq}, before the head at seq {head_seq}: \
                 records were cut off its end"
            ),
            Self::DiffersAtHead { head_seq } => write!(
                f,
                "the record at seq {head_seq} has another MAC than the head: \
                 the log was rewritten, or the head is from another log"
            ),
            Self::ZeroHead { last_seq: 0 } => f.write_str(
                "the head has seq 0 but its MAC is not 64 zeros: \
                 seq 0 stands only for an empty log with an all-zero MAC",
            ),
            Self::ZeroHead { last_seq } => write!(
                f,
                "the head has seq 0 (an empty log) but the log goes to seq {last_seq}: \
                 a seq-0 head vouches for no record"
            ),
        }
    }
}

/// The first line that did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditProblem {
    /// 1-based line number in the file.
    pub line: u64,
    /// What is wrong with it.
    #[serde(flatten)]
    pub kind: ProblemKind,
}

impl fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

/// What is wrong with a line. Serialized as `{"kind": "<snake_case>", "detail": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The record is well-formed and in sequence, but its MAC does not chain: the record or one
    /// before it was altered, or it was written with a different audit key.
    MacMismatch,
    /// The record's sequence number is not the next one: a record was deleted, inserted or
    /// reordered (or a seq was edited).
    SeqGap {
        /// The sequence number expected at this line.
        expected: u64,
        /// The sequence number the line carries.
        found: u64,
    },
    /// A complete line (ending in `\n`) that is not a well-formed record.
    Malformed(String),
    /// The file's final bytes, after the last `\n`, are not a complete record: a write was cut
    /// short by a crash. Not evidence of tampering on its own.
    TornTail {
        /// How many bytes follow the last `\n`.
        bytes: u64,
    },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MacMismatch => f.write_str(
                "MAC mismatch: this record or an earlier one was altered, \
                 or the log was written with a different worker token",
            ),
            Self::SeqGap { expected, found } => write!(
                f,
                "out of sequence: expected seq {expected}, found {found} \
                 (a record was deleted, inserted or reordered)"
            ),
            Self::Malformed(reason) => write!(f, "malformed record: {reason}"),
            Self::TornTail { bytes } => write!(
                f,
                "torn tail: the last {bytes} bytes are an incomplete record \
                 (a write cut short by a crash)"
            ),
        }
    }
}

/// Verifies the log at `path` with the audit key derived from `token`.
///
/// Only I/O failures (the file cannot be opened or read) are errors; everything about the
/// content is in the report.
pub fn verify_log(path: &Path, token: &WorkerToken) -> io::Result<AuditReport> {
    let key = AuditKey::derive(token);
    let file = File::open(path)?;
    Ok(scan(BufReader::new(file), &key)?.report)
}

/// Verifies the log at `path` like [`verify_log`], and also against `head`, a head kept
/// elsewhere: the report is not intact ([`AuditReport::head_problem`]) when the verified log
/// ends before `head.seq` or its record at `head.seq` has another MAC. A log that goes on past
/// the head is fine (the worker kept writing). Only I/O failures are errors.
pub fn verify_log_to_head(
    path: &Path,
    token: &WorkerToken,
    head: &AuditHead,
) -> io::Result<AuditReport> {
    let key = AuditKey::derive(token);
    let file = File::open(path)?;
    let mut walker = Walker::new(&key);
    walker.target = Some(head.clone());
    Ok(scan_with(BufReader::new(file), walker)?.report)
}

/// Checks a report's walk against `head`, given the MAC seen at `head.seq` (if the walk reached
/// it).
fn head_problem(
    head: &AuditHead,
    last_seq: u64,
    mac_at_head: Option<&[u8; 32]>,
) -> Option<HeadProblem> {
    if head.seq == 0 {
        // Seq 0 names the empty log, whose chain starts from a MAC of 64 zeros. Anything else
        // under seq 0 would vouch for nothing while passing every log, an emptied one included.
        let zero_mac = head.mac.len() == 64 && head.mac.bytes().all(|b| b == b'0');
        return (last_seq != 0 || !zero_mac).then_some(HeadProblem::ZeroHead { last_seq });
    }
    match mac_at_head {
        None => Some(HeadProblem::EndsBeforeHead {
            head_seq: head.seq,
            last_seq,
        }),
        Some(mac) => {
            let mut want = [0u8; 32];
            let same = hex::decode_to_slice(&head.mac, &mut want).is_ok()
                && head.mac.bytes().all(|b| !b.is_ascii_uppercase())
                && bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &mac[..]));
            (!same).then_some(HeadProblem::DiffersAtHead { head_seq: head.seq })
        }
    }
}

/// Verifies lines already split off (each without its `\n`). `complete_final_line` says whether
/// the last line was followed by `\n`; if not and it is not a complete record, it is reported as
/// [`ProblemKind::TornTail`]. An empty unterminated final line is ignored (nothing after the
/// last `\n`).
pub fn verify_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    key: &AuditKey,
    complete_final_line: bool,
) -> AuditReport {
    let mut walker = Walker::new(key);
    let mut iter = lines.into_iter().peekable();
    while let Some(line) = iter.next() {
        let terminated = complete_final_line || iter.peek().is_some();
        if !walker.feed(line.as_bytes(), terminated) {
            break;
        }
    }
    walker.finish();
    walker.report
}

/// The result of walking a whole file.
pub(crate) struct Scan {
    /// What was found.
    pub report: AuditReport,
    /// The chain state after the last verified record.
    pub chain: ChainState,
    /// Bytes from the start of the file through the last verified record (and its `\n`).
    pub verified_len: u64,
    /// The last verified record was not followed by `\n`.
    pub final_line_unterminated: bool,
}

/// Walks a whole log from a reader, without buffering more than one line (at most
/// [`MAX_LINE_BYTES`] + 1 bytes).
pub(crate) fn scan<R: BufRead>(reader: R, key: &AuditKey) -> io::Result<Scan> {
    scan_with(reader, Walker::new(key))
}

fn scan_with<R: BufRead>(mut reader: R, mut walker: Walker<'_>) -> io::Result<Scan> {
    let mut verified_len: u64 = 0;
    let mut final_line_unterminated = false;
    let mut buf: Vec<u8> = Vec::new();
    let limit = u64::try_from(MAX_LINE_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    loop {
        buf.clear();
        let n = (&mut reader).take(limit).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        let (line, terminated) = match buf.split_last() {
            Some((b'\n', rest)) => (rest, true),
            _ => (buf.as_slice(), false),
        };
        // An over-long chunk without `\n` is not necessarily the end of the file; `feed` rejects
        // it as malformed because of its length, whatever `terminated` says.
        if !walker.feed(line, terminated) {
            break;
        }
        verified_len = verified_len.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        final_line_unterminated = !terminated;
    }
    walker.finish();
    Ok(Scan {
        report: walker.report,
        chain: walker.chain,
        verified_len,
        final_line_unterminated,
    })
}

/// Checks lines one at a time against the chain and accumulates the report.
struct Walker<'k> {
    key: &'k AuditKey,
    chain: ChainState,
    report: AuditReport,
    line_no: u64,
    /// A head to check the log against, and the MAC seen at its seq.
    target: Option<AuditHead>,
    mac_at_target: Option<[u8; 32]>,
}

impl<'k> Walker<'k> {
    fn new(key: &'k AuditKey) -> Self {
        Self {
            key,
            chain: ChainState::genesis(),
            report: AuditReport::default(),
            line_no: 0,
            target: None,
            mac_at_target: None,
        }
    }

    /// Fills in what is known only at the end: the head reached and, if a target head was
    /// given, whether the log reaches it.
    fn finish(&mut self) {
        let r = &mut self.report;
        r.head = (r.records > 0).then(|| AuditHead::new(r.last_seq, &self.chain.prev_mac));
        if let Some(target) = &self.target {
            r.head_problem = head_problem(target, r.last_seq, self.mac_at_target.as_ref());
        }
    }

    /// Checks one line (without `\n`). Returns false once a problem has been found.
    fn feed(&mut self, line: &[u8], terminated: bool) -> bool {
        if self.report.first_problem.is_some() {
            return false;
        }
        if !terminated && line.is_empty() {
            // Nothing after the last '\n'.
            return true;
        }
        self.line_no = self.line_no.saturating_add(1);
        let record = match parse_record_bytes(line) {
            Ok(r) => r,
            Err(MalformedRecord(reason)) => {
                let kind = if terminated || line.len() > MAX_LINE_BYTES {
                    ProblemKind::Malformed(reason)
                } else {
                    ProblemKind::TornTail {
                        bytes: u64::try_from(line.len()).unwrap_or(u64::MAX),
                    }
                };
                return self.fail(kind);
            }
        };
        if let Err(brk) = self.chain.accept(self.key, &record) {
            let kind = match brk {
                ChainBreak::SeqGap { expected, found } => ProblemKind::SeqGap { expected, found },
                ChainBreak::MacMismatch => ProblemKind::MacMismatch,
            };
            return self.fail(kind);
        }
        if self.target.as_ref().is_some_and(|t| t.seq == record.seq) {
            self.mac_at_target = Some(record.mac);
        }
        let r = &mut self.report;
        r.records = r.records.saturating_add(1);
        r.last_seq = record.seq;
        r.closed = record.event_type == "AuditLogClosed";
        if record.event_type == "AuditLogOpened" && record.seq > 1 {
            r.resumptions = r.resumptions.saturating_add(1);
        }
        let count = r.counts_by_type.entry(record.event_type).or_insert(0);
        *count = count.saturating_add(1);
        true
    }

    fn fail(&mut self, kind: ProblemKind) -> bool {
        self.report.first_problem = Some(AuditProblem {
            line: self.line_no,
            kind,
        });
        false
    }
}

#[cfg(test)]
mod tests;
