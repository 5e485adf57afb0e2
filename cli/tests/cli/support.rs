//! Helpers shared by the tests that drive the built binary with a worker token (`basics.rs`,
//! `groups.rs`): the command, and the assertions every failure must meet (one `error:`
//! line, the documented exit code, no panic, and the token on neither stream).
#![allow(dead_code, clippy::unwrap_used)] // test code fails loudly

use std::process::Output;

use assert_cmd::Command;

pub const TOKEN: &str = "cli-test-token-5f1c0e7a9b";

/// The binary with a known token in the environment and no inherited RUST_LOG.
pub fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vram-residency"));
    cmd.env("VRAM_WORKER_TOKEN", TOKEN).env_remove("RUST_LOG");
    cmd
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the token is absent from both streams.
pub fn no_token(out: &Output) {
    for (name, s) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text(s).contains(TOKEN),
            "the worker token appeared on {name}"
        );
    }
}

/// Asserts a failure with `code` and exactly one `error:` line (no panic, no backtrace, no
/// token).
pub fn one_error(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr: {stderr}; stdout: {}",
        text(&out.stdout)
    );
    let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "exactly one error line expected: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    no_token(out);
    stderr
}

/// Writes a closed audit log at `log` under `token` (one seal and its release) and returns the
/// head taken just before shutdown.
pub fn write_audit_log(log: &std::path::Path, token: &str) -> vram_residency::AuditHead {
    use vram_residency::{Config, SealRequest, VramResidency};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let system = VramResidency::start(
            Config::simulated(1, 16 << 20)
                .worker_id("worker-cli")
                .worker_token(token)
                .chunk_size(4096)
                .audit_log(log),
        )
        .await
        .unwrap();
        let shard = system
            .seal(SealRequest::new("s", "m", 0, vec![7u8; 20_000]))
            .await
            .unwrap();
        system.release(shard).await.unwrap();
        let head = system.audit_head().await.unwrap();
        system.shutdown().await.unwrap();
        head
    })
}
