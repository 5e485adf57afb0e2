//! Shared set-up for the audit unit tests in [`format`](super::format), [`verify`](super::verify)
//! and [`writer`](super::writer): one test worker token and its audit key, the published
//! `vectors-v1.json` test vectors, builders for events and records, and helpers that write, read,
//! tamper with and verify a log. Compiled only for tests; each test module keeps only what is
//! particular to it.

use std::path::{Path, PathBuf};

use crate::audit::events::AuditEvent;
use crate::audit::format::{ChainState, encode_record, format_ts, parse_record};
use crate::audit::verify::{AuditProblem, AuditReport, ProblemKind, verify_lines, verify_log};
use crate::audit::writer::{AuditLogWriter, OpenReport};
use crate::seal::keys::{AuditKey, WorkerToken};

/// The worker token the tests write and verify logs with.
pub(crate) const TOKEN: &[u8] = b"audit-test-token-0123456789abcdef";

/// [`TOKEN`] as a worker token.
pub(crate) fn token() -> WorkerToken {
    WorkerToken::new(TOKEN.to_vec()).unwrap()
}

/// The audit key derived from [`TOKEN`].
pub(crate) fn key() -> AuditKey {
    AuditKey::derive(&token())
}

/// An audit key derived from a token other than [`TOKEN`]: what a forger or a misconfigured
/// worker would use.
pub(crate) fn other_key() -> AuditKey {
    AuditKey::derive(&WorkerToken::new(b"a-different-token-000000".to_vec()).unwrap())
}

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/vectors-v1.json"
));

/// The published test vectors.
pub(crate) fn vectors() -> serde_json::Value {
    serde_json::from_str(VECTORS).unwrap()
}

/// The vectors' worker token.
pub(crate) fn vector_token() -> WorkerToken {
    let v = vectors();
    let token = v["worker_token"].as_str().unwrap();
    WorkerToken::new(token.as_bytes().to_vec()).unwrap()
}

/// The audit key derived from the vectors' worker token.
pub(crate) fn vector_key() -> AuditKey {
    AuditKey::derive(&vector_token())
}

/// The vectors' audit log lines (without `\n`).
pub(crate) fn vector_lines() -> Vec<String> {
    vectors()["audit_log_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

/// One event of each kind a small log holds, as `AuditEvent::to_json` writes them.
const EVENTS: &[&str] = &[
    r#"{"type":"AuditLogOpened","resumed_from_seq":0}"#,
    r#"{"type":"VramAllocated","shard_id":"shard-a","requested_bytes":10,"allocated_bytes":10,"available_bytes":90,"used_bytes":10,"gpu_device":0}"#,
    r#"{"type":"VramSealed","shard_id":"shard-a","gpu_device":0,"vram_bytes":10,"digest":"d","merkle_root":"m","model_ref":"r"}"#,
    r#"{"type":"SealVerified","shard_id":"shard-a","gpu_device":0,"mode":"full","chunks_checked":1}"#,
    r#"{"type":"VramDeallocated","shard_id":"shard-a","freed_bytes":10,"remaining_used":0,"gpu_device":0}"#,
    r#"{"type":"AuditLogClosed","records_written":6}"#,
];

/// A six-record log chained with `key`, one second apart, as lines without `\n`.
pub(crate) fn log_lines(key: &AuditKey) -> Vec<String> {
    let mut chain = ChainState::genesis();
    EVENTS
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let ts = format!("2026-11-29T09:00:0{i}.000000000Z");
            encode_record(key, &mut chain, &ts, "worker-1", e)
        })
        .collect()
}

/// A `DeviceReset` record chained onto `last` (its seq + 1, its MAC) with [`other_key`]: a
/// forger who knows the format and the last MAC but not the key.
pub(crate) fn forged_after(last: &str) -> String {
    let last = parse_record(last).unwrap();
    let mut chain = ChainState {
        next_seq: last.seq + 1,
        prev_mac: last.mac,
    };
    encode_record(
        &other_key(),
        &mut chain,
        "2026-11-29T09:00:09.000000000Z",
        "worker-1",
        r#"{"type":"DeviceReset","gpu_device":0}"#,
    )
}

/// A `(ts, event_json)` record of `ev`, stamped now.
pub(crate) fn rec(ev: &AuditEvent) -> (String, String) {
    (format_ts(chrono::Utc::now()), ev.to_json())
}

/// A `VramAllocated` event for `shard-{i}`.
pub(crate) fn alloc(i: u64) -> AuditEvent {
    AuditEvent::VramAllocated {
        shard_id: format!("shard-{i}"),
        requested_bytes: i,
        allocated_bytes: i,
        available_bytes: 1000 - i,
        used_bytes: i,
        gpu_device: 0,
    }
}

/// A `VramDeallocated` event for `shard-{i}`.
pub(crate) fn dealloc(i: u64) -> AuditEvent {
    AuditEvent::VramDeallocated {
        shard_id: format!("shard-{i}"),
        freed_bytes: i,
        remaining_used: 0,
        gpu_device: 0,
    }
}

/// A fresh temporary directory and the path `audit.log` in it (the directory is removed when
/// the returned guard is dropped).
pub(crate) fn temp_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    (dir, path)
}

/// Writes a log at `path` with one open record and three batches (1 + 3 + 2 + 4 = 10 records),
/// checking the sequence number each batch ends at, and returns the still-open writer.
pub(crate) fn write_log(path: &Path) -> AuditLogWriter {
    let (mut w, report) = AuditLogWriter::open(path, key(), "worker-1").unwrap();
    assert_eq!(
        report,
        OpenReport {
            resumed_from_seq: 0,
            torn_tail_bytes: None,
            torn_tail_sha256: None,
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

/// The lines of the file at `path`, without their `\n`.
pub(crate) fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Replaces the file at `path` with `lines`, each ending in `\n`.
pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Verifies `lines` with [`key`]; `complete` says whether the last one ended in `\n`.
pub(crate) fn check(lines: &[String], complete: bool) -> AuditReport {
    verify_lines(lines.iter().map(String::as_str), &key(), complete)
}

/// Verifies the log at `path` with [`token`] and asserts that it is intact.
pub(crate) fn verify_intact(path: &Path) -> AuditReport {
    let r = verify_log(path, &token()).unwrap();
    assert!(r.is_intact(), "{:?}", r.first_problem);
    r
}

/// The first problem of a report that must have one, as `(line, kind)`.
pub(crate) fn problem(r: &AuditReport) -> (u64, ProblemKind) {
    let p = r.first_problem.clone().expect("expected a problem");
    (p.line, p.kind)
}

/// The first problem [`verify_log`] finds in the log at `path` (with [`token`]).
pub(crate) fn problem_of(path: &Path) -> AuditProblem {
    verify_log(path, &token()).unwrap().first_problem.unwrap()
}

/// The problem at `line` when seq `found` stands where seq `expected` belongs.
pub(crate) fn seq_gap(line: u64, expected: u64, found: u64) -> (u64, ProblemKind) {
    (line, ProblemKind::SeqGap { expected, found })
}
