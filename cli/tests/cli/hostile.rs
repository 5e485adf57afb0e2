//! `audit verify --head 0:<any MAC>` passed any log, an emptied one included (issue 21). A
//! seq-0 head is now refused (exit 3) unless the log is empty and the MAC is 64 zeros.
#![allow(clippy::unwrap_used)] // test code fails loudly

use vram_residency::AuditHead;

use crate::support::{TOKEN, cli, one_error};

#[test]
fn a_zero_head_vouches_for_no_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    crate::support::write_audit_log(&log, TOKEN);
    let zeros = AuditHead::new(0, &[0; 32]).to_arg();
    let other = AuditHead::new(0, &[0x5a; 32]).to_arg();
    for head in [&zeros, &other] {
        let out = cli()
            .args(["audit", "verify"])
            .arg(&log)
            .args(["--head", head])
            .output()
            .unwrap();
        let stderr = one_error(&out, 3);
        assert!(stderr.contains("seq 0"), "{stderr}");
    }
    // Emptied, the log still does not reach a seq-0 head with another MAC …
    std::fs::write(&log, "").unwrap();
    let out = cli()
        .args(["audit", "verify"])
        .arg(&log)
        .args(["--head", &other])
        .output()
        .unwrap();
    one_error(&out, 3);
    // … and the empty log with the all-zero head is the one pair that verifies.
    let out = cli()
        .args(["audit", "verify"])
        .arg(&log)
        .args(["--head", &zeros])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
