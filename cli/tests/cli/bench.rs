//! `vram-residency bench`, driven through the built binary: the JSON report has the documented
//! shape with positive figures, and bad arguments are usage errors (exit 2) with one error line.
//! No timing thresholds here — the figures depend on the machine; only shape and sanity.
#![allow(clippy::panic)] // test code fails loudly

use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vram-residency"));
    cmd.env_remove("RUST_LOG").env_remove("VRAM_WORKER_TOKEN");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number at a dotted `path`, asserted to be finite and > 0.
fn positive(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = cur
            .get(key)
            .unwrap_or_else(|| panic!("missing key `{path}` in {v}"));
    }
    let n = cur
        .as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number: {cur}"));
    assert!(n.is_finite() && n > 0.0, "`{path}` = {n}, expected > 0");
    n
}

fn usage_error(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "exactly one error line expected: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(text(&out.stdout).is_empty(), "nothing on stdout on error");
    stderr
}

#[test]
fn bench_json_has_the_documented_shape() {
    let out = cli()
        .args(["bench", "--size", "8388608", "--json", "--repeats", "1"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}; stdout: {stdout}"
    );
    // Progress goes to stderr only for a terminal or --verbose; stdout is exactly one object.
    assert!(
        !stderr.contains("bench:"),
        "progress on a non-terminal: {stderr}"
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();

    assert_eq!(v["size_bytes"].as_u64(), Some(8 << 20));
    assert_eq!(v["chunk_size"].as_u64(), Some(1 << 20));
    for key in [
        "seal_vs_baseline",
        "full_verify_vs_baseline",
        "full_verify_vs_reference",
        "sampled_fraction_of_full",
        "signature_only.p50_us",
        "signature_only.p99_us",
        "sampled_verify.p50_us",
        "baseline_sha256.gib_per_s",
        "baseline_sha256.seconds",
        "reference_verify.gib_per_s",
        "seal.gib_per_s",
        "full_verify.gib_per_s",
        "threads",
    ] {
        positive(&v, key);
    }
    assert!(v["signature_only"]["p99_us"].as_f64() >= v["signature_only"]["p50_us"].as_f64());
    assert_eq!(v["sampled_chunks"].as_u64(), Some(16));
    assert!(
        v["backend"].as_str().is_some_and(|b| !b.is_empty()),
        "backend: {}",
        v["backend"]
    );
}

#[test]
fn bench_table_and_verbose_progress() {
    let out = cli()
        .args([
            "bench",
            "--size",
            "1MiB",
            "--chunk-size",
            "64KiB",
            "--repeats",
            "1",
            "--latency-iterations",
            "20",
            "--verbose",
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.contains("baseline: 1-thread SHA-256"), "{stdout}");
    assert!(stdout.contains("verify full"), "{stdout}");
    assert!(stdout.contains("signature-only"), "{stdout}");
    assert!(stderr.contains("bench: full verify"), "{stderr}");
}

#[test]
fn bad_sizes_are_usage_errors() {
    for bad in ["12XB", "lots", "1.5GiB", "0", "99999999999TiB"] {
        let out = cli().args(["bench", "--size", bad]).output().unwrap();
        usage_error(&out);
    }
}

#[test]
fn bad_chunk_size_is_a_usage_error() {
    for bad in ["1000", "1KiB", "128MiB"] {
        let out = cli()
            .args(["bench", "--size", "1MiB", "--chunk-size", bad])
            .output()
            .unwrap();
        let stderr = usage_error(&out);
        assert!(stderr.contains("chunk"), "{stderr}");
    }
}

#[test]
fn repeats_must_be_positive() {
    let out = cli()
        .args(["bench", "--size", "1MiB", "--repeats", "0"])
        .output()
        .unwrap();
    usage_error(&out);
}
