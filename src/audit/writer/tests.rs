//! Unit tests of the file writer and the in-memory chain: every log they write must pass the
//! offline verifier, reopening must continue the chain (cutting only a torn tail), tampering must
//! be refused, and failed writes must leave no partial line. Write failures are injected through
//! the writer's `LogFile` seam; shared set-up lives in `crate::audit::test_support`.

use super::*;
use crate::audit::format::{MAX_LINE_BYTES, format_ts, parse_record};
use crate::audit::test_support::{
    TOKEN, alloc, check, dealloc, forged_after, key, other_key, problem_of, read_lines, rec,
    temp_log, verify_intact, write_lines, write_log,
};
use crate::audit::verify::AuditProblem;

/// The report of reopening a log whose last record is `seq`.
fn resumed(seq: u64, torn_tail_bytes: Option<u64>) -> OpenReport {
    OpenReport {
        resumed_from_seq: seq,
        torn_tail_bytes,
        torn_tail_sha256: None,
    }
}

/// `report` without the torn tail's hash (checked separately where the bytes are known).
fn unhashed(report: OpenReport) -> OpenReport {
    OpenReport {
        torn_tail_sha256: None,
        ..report
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

#[test]
fn written_log_verifies() {
    let (_dir, path) = temp_log();
    let w = write_log(&path);
    assert_eq!(w.next_seq(), 11);
    assert_eq!(w.last_seq(), 10);
    assert_eq!(w.records_written(), 10);
    drop(w);
    let r = verify_intact(&path);
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
    let (_dir, path) = temp_log();
    let _w = AuditLogWriter::open(&path, key(), "w").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn tampering_in_a_written_log_is_found() {
    let (_dir, path) = temp_log();
    drop(write_log(&path));
    let lines = read_lines(&path);
    let found_in = |l: &[String]| {
        write_lines(&path, l);
        problem_of(&path)
    };
    let mac_mismatch = |line| AuditProblem {
        line,
        kind: ProblemKind::MacMismatch,
    };
    let gap = |line, expected, found| AuditProblem {
        line,
        kind: ProblemKind::SeqGap { expected, found },
    };

    // One byte edited in a middle line.
    let mut l = lines.clone();
    l[4] = l[4].replacen("shard-", "shard_", 1);
    assert_eq!(found_in(&l), mac_mismatch(5));

    // A line deleted.
    let mut l = lines.clone();
    l.remove(6);
    assert_eq!(found_in(&l), gap(7, 7, 8));

    // A copied line inserted.
    let mut l = lines.clone();
    let copy = l[2].clone();
    l.insert(8, copy);
    assert_eq!(found_in(&l), gap(9, 9, 3));

    // Two lines swapped.
    let mut l = lines.clone();
    l.swap(3, 7);
    assert_eq!(found_in(&l), gap(4, 4, 8));

    // Truncated mid-line.
    let text = lines.join("\n") + "\n";
    let cut = text.len() - lines[9].len() / 2;
    std::fs::write(&path, &text[..cut]).unwrap();
    let p = problem_of(&path);
    assert_eq!(p.line, 10);
    assert!(matches!(p.kind, ProblemKind::TornTail { .. }), "{p:?}");

    // A forged line appended with a wrong key, chained onto the real last MAC.
    let mut l = lines.clone();
    l.push(forged_after(&lines[9]));
    assert_eq!(found_in(&l), mac_mismatch(11));
}

#[test]
fn reopen_continues_the_chain() {
    let (_dir, path) = temp_log();
    drop(write_log(&path));
    let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
    assert_eq!(report, resumed(10, None));
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
    let r = verify_intact(&path);
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
    let (_dir, path) = temp_log();
    drop(write_log(&path));
    let full = std::fs::read(&path).unwrap();
    let torn = b"{\"seq\":11,\"ts\":\"2026-11-29T09:00:00.0";
    let mut bytes = full.clone();
    bytes.extend_from_slice(torn);
    std::fs::write(&path, &bytes).unwrap();

    let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
    assert_eq!(unhashed(report), resumed(10, Some(torn.len() as u64)));
    assert_eq!(report.torn_tail_sha256, Some(sha256(torn)));
    // Exactly the torn bytes were cut: every complete record is still there, byte for byte.
    assert_eq!(std::fs::read(&path).unwrap(), full);
    w.append_batch(&[rec(&report.opened_event())]).unwrap();
    drop(w);
    let r = verify_intact(&path);
    assert_eq!((r.records, r.resumptions), (11, 1));
    let lines = read_lines(&path);
    let opened = parse_record(lines.last().unwrap()).unwrap();
    assert_eq!(
        opened.event_json,
        format!(
            r#"{{"type":"AuditLogOpened","resumed_from_seq":10,"torn_tail_bytes":{},"torn_tail_sha256":"{}"}}"#,
            torn.len(),
            hex::encode(sha256(torn))
        )
    );
}

#[test]
fn reopen_of_a_torn_only_file() {
    let (_dir, path) = temp_log();
    std::fs::write(&path, b"{\"seq\":1,\"ts").unwrap();
    let (mut w, report) = AuditLogWriter::open(&path, key(), "w").unwrap();
    assert_eq!(unhashed(report), resumed(0, Some(12)));
    assert_eq!(report.torn_tail_sha256, Some(sha256(b"{\"seq\":1,\"ts")));
    w.append_batch(&[rec(&report.opened_event())]).unwrap();
    drop(w);
    verify_intact(&path);
}

#[test]
fn reopen_terminates_a_complete_unterminated_record() {
    let (_dir, path) = temp_log();
    drop(write_log(&path));
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    std::fs::write(&path, &bytes).unwrap();
    let (mut w, report) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
    assert_eq!(report, resumed(10, None));
    w.append_batch(&[rec(&report.opened_event())]).unwrap();
    drop(w);
    assert_eq!(verify_intact(&path).records, 11);
}

#[test]
fn reopen_of_a_tampered_log_is_refused() {
    let (dir, path) = temp_log();
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
    let err = AuditLogWriter::open(&dir.path().join("b.log"), other_key(), "worker-1").unwrap_err();
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

impl FailingFile {
    /// A failing handle appending to the log at `path`, ready to replace a writer's file.
    fn boxed(path: &Path, fail_after: usize, truncate_fails: bool) -> Box<dyn LogFile> {
        Box::new(Self {
            inner: OpenOptions::new().append(true).open(path).unwrap(),
            fail_after,
            truncate_fails,
        })
    }
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
    let (_dir, path) = temp_log();
    let mut w = write_log(&path);
    let before = std::fs::read(&path).unwrap();
    let real = std::mem::replace(&mut w.file, FailingFile::boxed(&path, 57, false));
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
    assert_eq!(verify_intact(&path).records, 12);
}

#[test]
fn failed_rollback_poisons_until_reopened() {
    let (_dir, path) = temp_log();
    let mut w = write_log(&path);
    w.file = FailingFile::boxed(&path, 40, true);
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
    assert_eq!(unhashed(report), resumed(10, Some(40)));
    assert!(report.torn_tail_sha256.is_some());
    w.append_batch(&[rec(&report.opened_event())]).unwrap();
    drop(w);
    verify_intact(&path);
}

#[cfg(unix)]
#[test]
fn real_io_failure_on_a_read_only_handle() {
    // A real OS error: writing through a read-only descriptor fails (EBADF), and so does
    // truncating through it, so the writer must poison itself.
    let (_dir, path) = temp_log();
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
    let (_dir, path) = temp_log();
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
    let (dir, _) = temp_log();
    for id in ["", "w\n1", "w\u{1b}[2K", &"x".repeat(300)] {
        let err = AuditLogWriter::open(&dir.path().join("x.log"), key(), id).unwrap_err();
        assert!(matches!(err, AuditLogError::InvalidWorkerId(_)));
    }
    // Quotes and non-ASCII are fine: they are JSON-escaped.
    let path = dir.path().join("y.log");
    let (mut w, _) = AuditLogWriter::open(&path, key(), "wörker \"1\"").unwrap();
    w.append_batch(&[rec(&alloc(1))]).unwrap();
    drop(w);
    verify_intact(&path);
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
    let batch1 = vec![rec(&resumed(0, None).opened_event()), rec(&alloc(1))];
    let batch2 = vec![rec(&dealloc(1))];
    assert_eq!(m.append_batch(&batch1).unwrap(), 2);
    assert_eq!(m.append_batch(&batch2).unwrap(), 3);
    assert!(
        m.append_batch(&[(String::from("x"), String::from("{}"))])
            .is_err()
    );
    assert_eq!(m.lines().len(), 3);
    assert_eq!((m.next_seq(), m.records_written()), (4, 3));
    let r = check(&m.lines(), true);
    assert!(r.is_intact());
    assert_eq!(r.records, 3);

    // The file writer produces the same bytes for the same input.
    let (_dir, path) = temp_log();
    let (mut w, _) = AuditLogWriter::open(&path, key(), "worker-1").unwrap();
    w.append_batch(&batch1).unwrap();
    w.append_batch(&batch2).unwrap();
    drop(w);
    assert_eq!(read_lines(&path), m.lines());
}

#[test]
fn no_key_bytes_in_errors_or_debug() {
    let key_hex = hex::encode(key().bytes_for_tests());
    let token_text = String::from_utf8(TOKEN.to_vec()).unwrap();
    let (dir, path) = temp_log();
    let mut w = write_log(&path);
    let mut texts = vec![format!("{w:?}")];
    let mut errors = vec![
        AuditLogWriter::open(dir.path(), key(), "w").unwrap_err(),
        AuditLogWriter::open(&path, key(), "").unwrap_err(),
        w.append_batch(&[(String::from("x"), String::from("{}"))])
            .unwrap_err(),
    ];
    w.file = FailingFile::boxed(&path, 3, false);
    errors.push(w.append_batch(&[rec(&alloc(1))]).unwrap_err());
    w.file = FailingFile::boxed(&path, 3, true);
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

#[test]
fn the_memory_chain_keeps_the_newest_lines_and_counts_the_rest() {
    let mut m = MemoryChain::with_limit(key(), "worker-1", 3).unwrap();
    for i in 0..5u64 {
        m.append_batch(&[rec(&alloc(i))]).unwrap();
    }
    let kept = m.lines();
    assert_eq!(kept.len(), 3);
    assert_eq!(m.evicted(), 2);
    assert_eq!(m.records_written(), 5);
    // The newest three, in order.
    for (line, seq) in kept.iter().zip(3..) {
        assert!(line.starts_with(&format!("{{\"seq\":{seq},")), "{line}");
    }
}
