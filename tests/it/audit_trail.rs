//! The `vram-audit-v1` trail as an operator meets it: real runs verify offline, reopening
//! continues the chain, a crash's torn line is told apart from tampering, a tampered log is
//! refused, and a failing sink loses nothing silently.
#![allow(clippy::unwrap_used)] // test code fails loudly

use crate::common;

use std::io::Write;
use std::path::Path;

use common::{TOKEN, config, pattern};
use vram_residency::audit::{ProblemKind, verify_log};
use vram_residency::{SealRequest, VerifyMode, VramError, VramResidency, WorkerToken};

fn token() -> WorkerToken {
    WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap()
}

async fn run_once(log: &Path, id: &str) {
    let system = VramResidency::start(config(1, 1 << 20).audit_log(log))
        .await
        .unwrap();
    let s = system
        .seal(SealRequest::new(id, "m", 0, pattern(5000)))
        .await
        .unwrap();
    system.verify(&s, VerifyMode::Full).await.unwrap();
    system.release(s).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_run_verifies_and_reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    run_once(&log, "first").await;
    let one = verify_log(&log, &token()).unwrap();
    assert!(one.is_intact(), "{one:?}");
    for t in [
        "AuditLogOpened",
        "VramAllocated",
        "VramSealed",
        "SealVerified",
        "VramDeallocated",
        "AuditLogClosed",
    ] {
        assert_eq!(one.counts_by_type.get(t), Some(&1), "{t}: {one:?}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    run_once(&log, "second").await;
    let two = verify_log(&log, &token()).unwrap();
    assert!(two.is_intact(), "{two:?}");
    assert_eq!(two.records, 2 * one.records);
    assert_eq!(two.resumptions, 1);
    let text = std::fs::read_to_string(&log).unwrap();
    let reopened = text.lines().nth(one.records as usize).unwrap();
    assert!(
        reopened.contains(&format!(
            r#""type":"AuditLogOpened","resumed_from_seq":{}"#,
            one.last_seq
        )),
        "{reopened}"
    );
    // a different token cannot vouch for the log
    let other = WorkerToken::new(b"not-the-worker-token-at-all".to_vec()).unwrap();
    let bad = verify_log(&log, &other).unwrap();
    assert_eq!(bad.first_problem.unwrap().line, 1);
    // no token or key material anywhere in the file
    assert!(!text.contains(TOKEN));
    let seal_key = common::derived_key_hex(TOKEN.as_bytes(), b"llorch-seal-key-v1");
    let audit_key = common::derived_key_hex(TOKEN.as_bytes(), b"llorch-audit-key-v1");
    assert!(!text.contains(&seal_key[..16]) && !text.contains(&audit_key[..16]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_final_line_is_reported_as_torn_then_cut_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    run_once(&log, "a").await;
    let before = verify_log(&log, &token()).unwrap();
    // the process "died" mid-write: half a record, no newline
    let torn = r#"{"seq":99,"ts":"2026-11-29T09:00:00.0000"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(torn.as_bytes())
        .unwrap();
    let report = verify_log(&log, &token()).unwrap();
    let problem = report.first_problem.clone().unwrap();
    assert_eq!(problem.line, before.records + 1);
    assert_eq!(
        problem.kind,
        ProblemKind::TornTail {
            bytes: torn.len() as u64
        }
    );
    assert_eq!(report.records, before.records, "no complete record lost");

    run_once(&log, "b").await;
    let after = verify_log(&log, &token()).unwrap();
    assert!(after.is_intact(), "{after:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!(r#""torn_tail_bytes":{}"#, torn.len())));
    assert!(!text.contains(torn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_log_is_refused_at_start_and_named_by_the_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    run_once(&log, "a").await;
    let original = std::fs::read_to_string(&log).unwrap();
    // change the sealed size in line 3 (VramSealed)
    let lines: Vec<&str> = original.lines().collect();
    let edited_line = lines[2].replacen("\"vram_bytes\":5000", "\"vram_bytes\":5001", 1);
    assert_ne!(edited_line, lines[2]);
    let mut edited: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    edited[2] = edited_line;
    std::fs::write(&log, edited.join("\n") + "\n").unwrap();
    let report = verify_log(&log, &token()).unwrap();
    let p = report.first_problem.unwrap();
    assert_eq!((p.line, p.kind), (3, ProblemKind::MacMismatch));

    let err = VramResidency::start(config(1, 1 << 20).audit_log(&log))
        .await
        .unwrap_err();
    assert!(matches!(err, VramError::AuditUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("line 3"), "{err}");
    // refused without touching the file
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        edited.join("\n") + "\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_loses_nothing_silently() {
    let system = VramResidency::start(config(1, 1 << 20).audit_buffer_limit(5))
        .await
        .unwrap();
    system.audit_flush().await.unwrap();
    let before = system.audit_lines().await.unwrap().len();
    system.inject_audit_sink_failure(true).unwrap();
    // 4 seals = 8 events (VramAllocated + VramSealed each): 5 kept, 3 dropped
    let mut shards = Vec::new();
    for i in 0..4 {
        shards.push(
            system
                .seal(SealRequest::new(format!("s{i}"), "m", 0, pattern(100)))
                .await
                .unwrap(),
        );
    }
    let err = system.audit_flush().await.unwrap_err();
    assert!(matches!(err, VramError::AuditUnavailable(_)));
    let stats = system.audit_stats().await.unwrap();
    assert_eq!(
        (stats.buffered, stats.dropped, stats.sink_down),
        (5, 3, true)
    );

    system.inject_audit_sink_failure(false).unwrap();
    let stats = system.audit_flush().await.unwrap();
    assert!(!stats.sink_down);
    let lines = system.audit_lines().await.unwrap();
    let new: Vec<&String> = lines[before..].iter().collect();
    assert_eq!(new.len(), 6, "{new:#?}");
    let dropped: Vec<_> = new
        .iter()
        .filter(|l| l.contains("AuditEventsDropped"))
        .collect();
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].contains(r#""count":3"#), "{}", dropped[0]);
    // the chain is intact across the outage
    let key = vram_residency::seal::keys::AuditKey::derive(&token());
    let report = vram_residency::audit::verify_lines(lines.iter().map(String::as_str), &key, true);
    assert!(report.is_intact(), "{report:?}");
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_audit_refuses_seals_while_the_sink_is_down() {
    let system = VramResidency::start(config(1, 1 << 20).fail_closed_audit(true))
        .await
        .unwrap();
    let kept = system
        .seal(SealRequest::new("kept", "m", 0, pattern(100)))
        .await
        .unwrap();
    system.inject_audit_sink_failure(true).unwrap();
    assert!(
        common::eventually(|| async {
            matches!(
                system
                    .seal(SealRequest::new("x", "m", 0, pattern(100)))
                    .await,
                Err(VramError::AuditUnavailable(_))
            )
        })
        .await
    );
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        100,
        "nothing allocated while refusing"
    );
    // verification of what is already sealed keeps working
    system.verify(&kept, VerifyMode::Full).await.unwrap();
    system.inject_audit_sink_failure(false).unwrap();
    system.audit_flush().await.unwrap();
    system
        .seal(SealRequest::new("x", "m", 0, pattern(100)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_cannot_forge_or_break_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let system = VramResidency::start(config(1, 1 << 20).audit_log(&log))
        .await
        .unwrap();
    // ids with newline, ANSI escape or quote are refused outright
    for id in ["a\nb", "x\u{1b}[31m", "q\"uote"] {
        assert!(matches!(
            system.seal(SealRequest::new(id, "m", 0, pattern(10))).await,
            Err(VramError::InvalidInput(_))
        ));
    }
    // a printable model ref with quotes, backslashes and a fake record is escaped, not obeyed
    let nasty = r#"hf:o/m","mac":"00"},{"seq":1 \ ünï"#;
    system
        .seal(SealRequest::new("ok", nasty, 0, pattern(10)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["mac"].is_string());
    }
    let sealed = text.lines().find(|l| l.contains("VramSealed")).unwrap();
    let v: serde_json::Value = serde_json::from_str(sealed).unwrap();
    assert_eq!(v["event"]["model_ref"], nasty);
    assert!(verify_log(&log, &token()).unwrap().is_intact());
}

/// Without a log path the audit sink is in memory and bounded: it keeps the newest records and
/// counts the ones it let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_sink_keeps_the_newest_records_and_counts_the_rest() {
    let system = VramResidency::start(common::config(1, 1 << 20).audit_memory_lines(5))
        .await
        .unwrap();
    for i in 0..4 {
        let shard = system
            .seal(SealRequest::new(
                format!("s{i}"),
                "m",
                0,
                common::pattern(100),
            ))
            .await
            .unwrap();
        system.release(shard).await.unwrap();
    }
    let lines = system.audit_lines().await.unwrap();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let stats = system.audit_stats().await.unwrap();
    // 1 opened + 4 × (allocated, sealed, deallocated) = 13 records, 5 kept.
    assert_eq!(stats.written, 13);
    assert_eq!(stats.evicted, 8);
    assert!(lines.last().unwrap().contains("VramDeallocated"));
    system.shutdown().await.unwrap();
}
