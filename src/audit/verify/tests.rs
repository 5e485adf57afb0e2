//! Unit tests of the audit log verifier.
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
