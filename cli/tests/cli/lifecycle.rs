//! The command's life as a service sees it: `seal --hold 0` stops cleanly on SIGTERM as on
//! Ctrl-C (shards released, the audit log closed with `AuditLogClosed` as its last record), and
//! a build that compiled the library without optimisation says so once, naming the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code fails loudly

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{TOKEN, cli, text};

fn write_model(dir: &Path, len: usize) -> std::path::PathBuf {
    let path = dir.join("held.bin");
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The `type` of each record of the audit log at `log`, in order.
fn record_types(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"]["type"].as_str().unwrap().to_string()
        })
        .collect()
}

#[cfg(unix)]
#[test]
fn seal_hold_stops_cleanly_on_sigterm_and_closes_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), 200_000);
    let log = dir.path().join("audit.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vram-residency"))
        .env("VRAM_WORKER_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .arg("seal")
        .arg(&model)
        .args(["--hold", "0", "--verify-every", "1", "--audit-log"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Read stderr on a thread; wait for the line that says it is holding (the signal handlers
    // are installed before it is printed).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let holding = line.starts_with("holding ");
                seen.push(line);
                if holding {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no \"holding\" line ({e}); stderr so far: {seen:#?}");
            }
        }
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // It exits by itself, successfully, within a few seconds.
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("still running 30 s after SIGTERM");
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let stderr = seen.join("\n");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("SIGTERM: releasing"), "{stderr}");
    assert!(stderr.contains("released"), "{stderr}");

    let types = record_types(&log);
    assert_eq!(
        types.last().map(String::as_str),
        Some("AuditLogClosed"),
        "{types:?}"
    );
    assert!(types.contains(&"VramDeallocated".to_string()), "{types:?}");
    // And the log verifies, closed.
    let out = cli()
        .args(["audit", "verify", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["report"]["counts_by_type"]["AuditLogClosed"], 1, "{v}");
}

#[test]
fn an_unoptimised_build_warns_once_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), 10_000);
    let out = cli().arg("seal").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("compiled without optimisation"))
        .count();
    // The tests build the library at opt-level 0 (debug assertions on); a release test run
    // builds it optimised, and then nothing is said.
    let expected = usize::from(cfg!(debug_assertions));
    assert_eq!(warnings, expected, "{stderr}");
    if expected == 1 {
        assert!(
            stderr.contains("Building a dependent: profile overrides"),
            "{stderr}"
        );
        assert!(stderr.contains("45x slower"), "{stderr}");
    }
}
