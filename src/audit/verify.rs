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
mod tests {
    use super::*;
    use crate::audit::format::{ChainState, encode_record};
    use crate::audit::test_support::{
        check, forged_after, key, log_lines, problem, seq_gap, temp_log, token, vector_key,
        vector_lines, vector_token, write_lines,
    };

    /// The six-record test log with line `from` copied in at index `at`.
    fn with_copy(from: usize, at: usize) -> Vec<String> {
        let mut lines = log_lines(&key());
        let copy = lines[from].clone();
        lines.insert(at, copy);
        lines
    }

    #[test]
    fn intact_log_counts() {
        let lines = log_lines(&key());
        let r = check(&lines, true);
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!(r.records, 6);
        assert_eq!(r.last_seq, 6);
        assert_eq!(r.counts_by_type["VramSealed"], 1);
        assert_eq!(r.counts_by_type.len(), 6);
        assert_eq!(r.resumptions, 0);
    }

    #[test]
    fn vectors_verify() {
        let lines = vector_lines();
        let r = verify_lines(lines.iter().map(String::as_str), &vector_key(), true);
        assert!(r.is_intact(), "{:?}", r.first_problem);
        assert_eq!((r.records, r.last_seq), (3, 3));
        assert_eq!(r.counts_by_type["SealVerificationFailed"], 1);

        let (_dir, path) = temp_log();
        write_lines(&path, &lines);
        let r2 = verify_log(&path, &vector_token()).unwrap();
        assert_eq!(r, r2);
        // A different token: the first record already fails.
        let r3 = verify_log(&path, &token()).unwrap();
        assert_eq!(problem(&r3), (1, ProblemKind::MacMismatch));
        assert_eq!(r3.records, 0);
    }

    #[test]
    fn a_cut_tail_is_caught_with_a_head_and_open_without() {
        let lines = log_lines(&key());
        let (_dir, path) = temp_log();
        write_lines(&path, &lines);
        let full = verify_log(&path, &token()).unwrap();
        let head = full.head.clone().unwrap();
        assert_eq!(head.seq, 6);
        assert_eq!(head.mac.len(), 64);
        // The whole log reaches its own head; one going on past it is fine too.
        assert!(
            verify_log_to_head(&path, &token(), &head)
                .unwrap()
                .is_intact()
        );
        let earlier = verify_lines(lines[..4].iter().map(String::as_str), &key(), true)
            .head
            .unwrap();
        assert!(
            verify_log_to_head(&path, &token(), &earlier)
                .unwrap()
                .is_intact()
        );

        // Cut the last two records: every line still verifies, but the log is only open, and
        // against the head it is not intact.
        write_lines(&path, &lines[..4]);
        let cut = verify_log(&path, &token()).unwrap();
        assert!(cut.is_intact());
        assert_eq!(cut.status(), LogStatus::Open);
        let r = verify_log_to_head(&path, &token(), &head).unwrap();
        assert!(!r.is_intact());
        assert_eq!(r.status(), LogStatus::NotIntact);
        assert_eq!(
            r.head_problem,
            Some(HeadProblem::EndsBeforeHead {
                head_seq: 6,
                last_seq: 4
            })
        );
        // A head with another MAC at its seq: the log differs there.
        let mut other = head.clone();
        other.mac = "00".repeat(32);
        write_lines(&path, &lines);
        let r = verify_log_to_head(&path, &token(), &other).unwrap();
        assert_eq!(
            r.head_problem,
            Some(HeadProblem::DiffersAtHead { head_seq: 6 })
        );
        assert!(!r.is_intact());
        // A seq-0 head stands for the empty log only: it is refused for a log with records,
        // whatever its MAC, and for the empty log unless its MAC is 64 zeros.
        let zero = AuditHead::new(0, &[0u8; 32]);
        let r = verify_log_to_head(&path, &token(), &zero).unwrap();
        assert_eq!(r.head_problem, Some(HeadProblem::ZeroHead { last_seq: 6 }));
        assert!(!r.is_intact());
        let any = AuditHead::new(0, &[0xab; 32]);
        assert!(
            !verify_log_to_head(&path, &token(), &any)
                .unwrap()
                .is_intact()
        );
        std::fs::write(&path, "").unwrap();
        assert!(
            verify_log_to_head(&path, &token(), &zero)
                .unwrap()
                .is_intact()
        );
        let r = verify_log_to_head(&path, &token(), &any).unwrap();
        assert_eq!(r.head_problem, Some(HeadProblem::ZeroHead { last_seq: 0 }));
        assert!(r.head_problem.unwrap().to_string().contains("seq 0"));
    }

    #[test]
    fn a_log_ending_with_closed_is_closed() {
        let mut chain = ChainState::genesis();
        let k = key();
        let lines: Vec<String> = [
            r#"{"type":"AuditLogOpened","resumed_from_seq":0}"#,
            r#"{"type":"AuditLogClosed","records_written":2}"#,
        ]
        .iter()
        .map(|e| encode_record(&k, &mut chain, "2026-11-29T09:00:00.000000000Z", "w", e))
        .collect();
        let r = check(&lines, true);
        assert!(r.closed);
        assert_eq!(r.status(), LogStatus::Closed);
        let r = check(&lines[..1], true);
        assert_eq!(r.status(), LogStatus::Open);
        assert_eq!(
            verify_lines(std::iter::empty(), &k, true).status(),
            LogStatus::Open
        );
    }

    #[test]
    fn head_args_round_trip() {
        let h = AuditHead::new(42, &[0xab; 32]);
        assert_eq!(AuditHead::parse_arg(&h.to_arg()), Some(h.clone()));
        assert_eq!(h.to_string(), format!("42:{}", "ab".repeat(32)));
        for bad in ["42", "x:ab", &format!("42:{}", "AB".repeat(32)), "42:abc"] {
            assert_eq!(AuditHead::parse_arg(bad), None, "{bad}");
        }
    }

    #[test]
    fn empty_is_intact() {
        let r = verify_lines(std::iter::empty(), &key(), true);
        assert!(r.is_intact());
        assert_eq!((r.records, r.last_seq), (0, 0));
        let r = verify_lines([""], &key(), false);
        assert!(r.is_intact());
        let (_dir, path) = temp_log();
        std::fs::write(&path, "").unwrap();
        let r = verify_log(&path, &token()).unwrap();
        assert!(r.is_intact());
        assert_eq!(r.records, 0);
    }

    #[test]
    fn edited_byte_is_mac_mismatch() {
        let mut lines = log_lines(&key());
        lines[2] = lines[2].replace("shard-a", "shard-b");
        let r = check(&lines, true);
        assert_eq!(problem(&r), (3, ProblemKind::MacMismatch));
        assert_eq!(r.records, 2);
        assert_eq!(r.last_seq, 2);
        assert_eq!(r.counts_by_type.values().sum::<u64>(), 2);
    }

    #[test]
    fn edited_seq_is_seq_gap() {
        let mut lines = log_lines(&key());
        lines[3] = lines[3].replacen("\"seq\":4", "\"seq\":5", 1);
        assert_eq!(problem(&check(&lines, true)), seq_gap(4, 4, 5));
    }

    #[test]
    fn deleted_line() {
        let mut lines = log_lines(&key());
        lines.remove(2);
        let r = check(&lines, true);
        assert_eq!(problem(&r), seq_gap(3, 3, 4));
        assert_eq!(r.records, 2);
    }

    #[test]
    fn deleted_first_line() {
        let mut lines = log_lines(&key());
        lines.remove(0);
        assert_eq!(problem(&check(&lines, true)), seq_gap(1, 1, 2));
    }

    #[test]
    fn inserted_copy() {
        let r = check(&with_copy(1, 4), true);
        assert_eq!(problem(&r), seq_gap(5, 5, 2));
        assert_eq!(r.records, 4);
    }

    #[test]
    fn duplicated_line_in_place() {
        assert_eq!(problem(&check(&with_copy(2, 3), true)), seq_gap(4, 4, 3));
    }

    #[test]
    fn swapped_lines() {
        let mut lines = log_lines(&key());
        lines.swap(2, 3);
        assert_eq!(problem(&check(&lines, true)), seq_gap(3, 3, 4));
    }

    #[test]
    fn renumbered_after_delete_is_mac_mismatch() {
        let k = key();
        let mut lines = log_lines(&k);
        lines.remove(2);
        for (i, l) in lines.iter_mut().enumerate().skip(2) {
            *l = l.replacen(
                &format!("\"seq\":{}", i + 2),
                &format!("\"seq\":{}", i + 1),
                1,
            );
        }
        let r = check(&lines, true);
        assert_eq!(problem(&r), (3, ProblemKind::MacMismatch));
    }

    #[test]
    fn forged_line_with_wrong_key() {
        let mut lines = log_lines(&key());
        // The forger knows the format and the last MAC but not the key.
        let forged = forged_after(lines.last().unwrap());
        lines.push(forged);
        let r = check(&lines, true);
        assert_eq!(problem(&r), (7, ProblemKind::MacMismatch));
        assert_eq!(r.records, 6);
        // Unterminated, the forged (complete) line is still a MAC mismatch, not a torn tail.
        let r = check(&lines, false);
        assert_eq!(problem(&r), (7, ProblemKind::MacMismatch));
    }

    #[test]
    fn torn_tail_vs_malformed() {
        let lines = log_lines(&key());
        let mut torn = lines.clone();
        let cut = torn[5].len() / 2;
        torn[5].truncate(cut);
        let r = check(&torn, false);
        assert_eq!(
            problem(&r),
            (6, ProblemKind::TornTail { bytes: cut as u64 })
        );
        assert_eq!(r.records, 5);
        // The same partial line followed by '\n' is malformed, not torn.
        let r = check(&torn, true);
        assert!(matches!(problem(&r), (6, ProblemKind::Malformed(_))));
        // A complete final record without '\n' is fine.
        let r = check(&lines, false);
        assert!(r.is_intact());
        assert_eq!(r.records, 6);
    }

    #[test]
    fn torn_tail_in_file() {
        let lines = log_lines(&key());
        let text = lines.join("\n") + "\n";
        let (_dir, path) = temp_log();
        let token = token();
        // Cut at every byte of the last line: never a MAC mismatch.
        let last_start = text.len() - lines[5].len() - 1;
        for cut in last_start + 1..text.len() - 1 {
            std::fs::write(&path, &text.as_bytes()[..cut]).unwrap();
            let r = verify_log(&path, &token).unwrap();
            assert_eq!(
                problem(&r),
                (
                    6,
                    ProblemKind::TornTail {
                        bytes: (cut - last_start) as u64
                    }
                ),
                "cut at {cut}"
            );
            assert_eq!(r.records, 5);
        }
        // Cut just before the final '\n': complete record, intact.
        std::fs::write(&path, &text.as_bytes()[..text.len() - 1]).unwrap();
        assert!(verify_log(&path, &token).unwrap().is_intact());
        // Zero-filled tail (size updated, data lost in a crash).
        let mut zeros = text.clone().into_bytes();
        zeros.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &zeros).unwrap();
        let r = verify_log(&path, &token).unwrap();
        assert_eq!(problem(&r), (7, ProblemKind::TornTail { bytes: 100 }));
    }

    #[test]
    fn empty_and_binary_lines_are_malformed() {
        let mut lines = log_lines(&key());
        lines.insert(1, String::new());
        let r = check(&lines, true);
        assert!(matches!(problem(&r), (2, ProblemKind::Malformed(_))));

        let (_dir, path) = temp_log();
        let mut bytes = log_lines(&key()).join("\n").into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe\n");
        std::fs::write(&path, &bytes).unwrap();
        let r = verify_log(&path, &token()).unwrap();
        assert!(matches!(problem(&r), (7, ProblemKind::Malformed(_))));
    }

    #[test]
    fn overlong_line_is_malformed() {
        let (_dir, path) = temp_log();
        let mut bytes = log_lines(&key()).join("\n").into_bytes();
        bytes.push(b'\n');
        bytes.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        std::fs::write(&path, &bytes).unwrap();
        let r = verify_log(&path, &token()).unwrap();
        assert!(
            matches!(problem(&r), (7, ProblemKind::Malformed(_))),
            "{r:?}"
        );
        assert_eq!(r.records, 6);
    }

    #[test]
    fn report_serializes() {
        let mut lines = log_lines(&key());
        lines.swap(1, 2);
        let r = check(&lines, true);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["records"], 1);
        assert_eq!(j["first_problem"]["line"], 2);
        assert_eq!(j["first_problem"]["kind"], "seq_gap");
        assert_eq!(j["first_problem"]["detail"]["expected"], 2);
        let m = serde_json::to_value(AuditProblem {
            line: 4,
            kind: ProblemKind::MacMismatch,
        })
        .unwrap();
        assert_eq!(m, serde_json::json!({"line": 4, "kind": "mac_mismatch"}));
        let p = r.first_problem.unwrap();
        assert_eq!(
            p.to_string(),
            "line 2: out of sequence: expected seq 2, found 3 (a record was deleted, inserted or reordered)"
        );
    }

    #[test]
    fn resumptions_counted() {
        let k = key();
        let mut chain = ChainState::genesis();
        let ts = "2026-11-29T09:00:00.000000000Z";
        let lines: Vec<String> = [
            r#"{"type":"AuditLogOpened","resumed_from_seq":0}"#,
            r#"{"type":"DeviceReset","gpu_device":0}"#,
            r#"{"type":"AuditLogOpened","resumed_from_seq":2,"torn_tail_bytes":17}"#,
        ]
        .iter()
        .map(|ev| encode_record(&k, &mut chain, ts, "w", ev))
        .collect();
        let r = check(&lines, true);
        assert!(r.is_intact());
        assert_eq!(r.resumptions, 1);
        assert_eq!(r.counts_by_type["AuditLogOpened"], 2);
    }
}
