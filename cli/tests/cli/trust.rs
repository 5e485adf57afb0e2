//! `audit verify --head`: a cut tail exits 3 against a head kept elsewhere, and without a head a
//! log that does not end with `AuditLogClosed` exits 0 but is reported open.
#![allow(clippy::unwrap_used)] // test code fails loudly

use std::path::Path;

use assert_cmd::Command;
use vram_residency::AuditHead;

const TOKEN: &str = "cli-trust-token-3c9d1e7f0a";

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vram-residency"));
    cmd.env("VRAM_WORKER_TOKEN", TOKEN).env_remove("RUST_LOG");
    cmd
}

fn verify(log: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = cli()
        .args(["audit", "verify"])
        .arg(log)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    (out.status.code(), stdout, stderr)
}

#[test]
fn a_cut_tail_exits_3_with_a_head_and_is_open_without() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let head = crate::support::write_audit_log(&log, TOKEN);
    let arg = head.to_arg();

    let (code, stdout, _) = verify(&log, &["--head", &arg]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("closed"), "{stdout}");
    let (code, stdout, _) = verify(&log, &["--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["status"], "closed");

    // Cut the tail from the head's record on.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let keep = usize::try_from(head.seq).unwrap() - 1;
    std::fs::write(&log, lines[..keep].join("\n") + "\n").unwrap();

    // Without a head: exit 0, but open.
    let (code, stdout, _) = verify(&log, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("open"), "{stdout}");
    let (code, stdout, _) = verify(&log, &["--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["status"], "open");
    assert_eq!(v["intact"], true);

    // With the head: exit 3, one error line naming the cut.
    let (code, stdout, stderr) = verify(&log, &["--head", &arg]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("cut"), "{stderr}");
    assert!(stdout.contains("NOT INTACT"), "{stdout}");
    let (code, stdout, _) = verify(&log, &["--head", &arg, "--json"]);
    assert_eq!(code, Some(3));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["status"], "not_intact");

    // A head with another MAC at a seq the log still has: exit 3 too.
    let other = AuditHead {
        seq: 2,
        mac: "0".repeat(64),
    };
    let (code, _, stderr) = verify(&log, &["--head", &other.to_arg()]);
    assert_eq!(code, Some(3), "{stderr}");

    // A malformed head is a usage error.
    for bad in ["12", "x:00", "3:ABCD"] {
        let (code, _, stderr) = verify(&log, &["--head", bad]);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
    }
}
