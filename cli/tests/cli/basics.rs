//! End-to-end tests of the `vram-residency` command, driving the built binary with `assert_cmd`
//! the way a newcomer would: the demo, sealing a real file (digest equal to `sha256sum`'s),
//! verifying seal records and audit logs (and catching edits), the exit codes and one-line
//! errors for bad arguments, and that the worker token never appears in any output.
#![allow(clippy::unwrap_used)] // test code fails loudly

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};

use crate::support as cli_support;

use cli_support::{TOKEN, cli, no_token, one_error, text};

fn write_model(dir: &Path, name: &str, len: usize) -> PathBuf {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn seal_json(path: &Path) -> (serde_json::Value, String) {
    let out = cli().arg("seal").arg(path).output().unwrap();
    assert!(out.status.success(), "seal failed: {}", text(&out.stderr));
    no_token(&out);
    let stdout = text(&out.stdout);
    let line = stdout.lines().next().unwrap().to_string();
    (serde_json::from_str(&line).unwrap(), line)
}

fn run_demo(log: &Path) -> Output {
    let out = cli()
        .args(["demo", "--size", "4194304", "--audit-log"])
        .arg(log)
        .output()
        .unwrap();
    no_token(&out);
    out
}

#[test]
fn demo_detects_the_flip_and_summarizes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_demo(&dir.path().join("audit.jsonl"));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        text(&out.stderr)
    );
    // 4 MiB model: the demo flips byte 2 MiB + 12345 and must name the chunk holding it.
    assert!(stdout.contains("full verify caught it: chunk "), "{stdout}");
    assert!(stdout.contains("holds flipped byte 2109497"), "{stdout}");
    assert!(stdout.contains("seal verification failed for shard demo-model"));
    assert!(stdout.contains("summary"), "{stdout}");
    assert!(stdout.contains("✓ detect flip"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(stdout.contains("steps behaved as claimed"), "{stdout}");
}

#[test]
fn demo_json_is_one_object() {
    let out = cli()
        .args(["demo", "--size", "1048576", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_token(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["token"], "env");
    let flipped = v["detection"]["flipped_offset"].as_u64().unwrap();
    let bad = &v["detection"]["bad_chunks"][0];
    let (start, len) = (
        bad["offset"].as_u64().unwrap(),
        bad["len"].as_u64().unwrap(),
    );
    assert!(start <= flipped && flipped < start + len, "{bad}");
    assert!(v["steps"].as_array().unwrap().len() >= 15);
}

#[test]
fn audit_verify_passes_then_names_the_edited_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    assert!(run_demo(&log).status.success());

    let out = cli().args(["audit", "verify"]).arg(&log).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("intact"), "{stdout}");
    assert!(stdout.contains("SealVerificationFailed"), "{stdout}");
    no_token(&out);

    let out = cli()
        .args(["audit", "verify", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], true);

    // Change one digit of the timestamp in a middle line: still well-formed JSON, so only the
    // MAC chain can tell.
    let original = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_string).collect();
    let middle = lines.len() / 2;
    let line = &mut lines[middle];
    let ts = line.find("\"ts\":\"").unwrap();
    let z = ts + line[ts..].find("Z\"").unwrap();
    let digit = line.as_bytes()[z - 1];
    let replacement = if digit == b'9' {
        '0'
    } else {
        (digit + 1) as char
    };
    line.replace_range(z - 1..z, &replacement.to_string());
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();

    let out = cli().args(["audit", "verify"]).arg(&log).output().unwrap();
    let stderr = one_error(&out, 3);
    let named = format!("line {}", middle + 1);
    assert!(stderr.contains(&named), "{stderr}");
    assert!(text(&out.stdout).contains(&named), "{}", text(&out.stdout));
}

#[test]
fn seal_prints_the_sha256_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), "weights v1.bin", 3 << 20 | 12_345);
    let (info, _) = seal_json(&path);
    let want = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(info["digest"], want.as_str());
    assert_eq!(info["shard_id"], "weights_v1_bin");
    assert!(info["model_ref"].as_str().unwrap().starts_with("file:"));
    assert_eq!(info["vram_bytes"], (3 << 20 | 12_345) as u64);

    // The same value the `sha256sum` program prints, when it is installed.
    if let Ok(out) = std::process::Command::new("sha256sum").arg(&path).output()
        && out.status.success()
    {
        let printed = text(&out.stdout);
        assert_eq!(printed.split_whitespace().next(), Some(want.as_str()));
    }

    // A matching --expected-sha256 is accepted; a different one is an integrity failure.
    let out = cli()
        .arg("seal")
        .arg(&path)
        .args(["--expected-sha256", &want.to_uppercase()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli()
        .arg("seal")
        .arg(&path)
        .args(["--expected-sha256", &"0".repeat(64)])
        .output()
        .unwrap();
    let stderr = one_error(&out, 3);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
}

#[test]
fn seal_several_files_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_model(dir.path(), "a.bin", 70_000);
    let b = write_model(dir.path(), "b.bin", 5_000);
    let out = cli()
        .args([
            "seal",
            "--devices",
            "3",
            "--device",
            "2",
            "--chunk-size",
            "4096",
        ])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let infos: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0]["shard_id"], "a_bin");
    assert_eq!(infos[1]["shard_id"], "b_bin");
    assert_eq!(infos[1]["gpu_device"], 2);
    assert_eq!(infos[0]["chunk_size"], 4096);
}

#[test]
fn seal_hold_verifies_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), "held.bin", 100_000);
    let log = dir.path().join("hold.jsonl");
    let out = cli()
        .arg("seal")
        .arg(&path)
        .args(["--hold", "2", "--verify-every", "1", "--audit-log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("released"),
        "{}",
        text(&out.stderr)
    );
    let out = cli()
        .args(["audit", "verify", "--json"])
        .arg(&log)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["intact"], true);
    let counts = &v["report"]["counts_by_type"];
    assert_eq!(counts["VramDeallocated"], 1);
    assert_eq!(counts["AuditLogClosed"], 1);
    assert!(counts["SealVerified"].as_u64().unwrap() >= 1, "{counts}");
}

#[test]
fn verify_info_accepts_a_seal_and_rejects_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), "model.bin", 50_000);
    let (mut info, line) = seal_json(&path);
    let good = dir.path().join("info.json");
    std::fs::write(&good, format!("{line}\n")).unwrap();
    let out = cli().arg("verify-info").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("signature valid"));
    no_token(&out);

    info["shard_id"] = "model_bim".into();
    let bad = dir.path().join("edited.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&info).unwrap()).unwrap();
    let out = cli().arg("verify-info").arg(&bad).output().unwrap();
    let stderr = one_error(&out, 3);
    assert!(stderr.contains("signature does not match"), "{stderr}");

    // A field that is visibly wrong is named.
    info["shard_id"] = "model_bin".into();
    let info_digest = info["digest"].as_str().unwrap().to_string();
    info["digest"] = "abc".into();
    std::fs::write(&bad, serde_json::to_string(&info).unwrap()).unwrap();
    let out = cli().arg("verify-info").arg(&bad).output().unwrap();
    let stderr = one_error(&out, 3);
    assert!(
        stderr.contains("digest must be 64 lowercase hex"),
        "{stderr}"
    );
    info["digest"] = info_digest.to_uppercase().into();
    std::fs::write(&bad, serde_json::to_string(&info).unwrap()).unwrap();
    let out = cli().arg("verify-info").arg(&bad).output().unwrap();
    let stderr = one_error(&out, 3);
    assert!(stderr.contains("uppercase"), "{stderr}");

    // Another token: the signature does not match.
    let out = cli()
        .env("VRAM_WORKER_TOKEN", "a-different-token-entirely")
        .arg("verify-info")
        .arg(&good)
        .output()
        .unwrap();
    one_error(&out, 3);
}

#[test]
fn bad_arguments_give_one_line_and_the_right_code() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "m.bin", 10_000);

    // Missing model file: usage error.
    let out = cli()
        .arg("seal")
        .arg(dir.path().join("missing.bin"))
        .output()
        .unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("missing.bin"), "{stderr}");

    // Token file that does not exist: environment problem.
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("--token-file")
        .arg(dir.path().join("no-such-token"))
        .arg("seal")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = one_error(&out, 4);
    assert!(stderr.contains("token file"), "{stderr}");

    // World-readable token file: refused, with a chmod hint; its content is never shown.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("--token-file")
        .arg(&token_file)
        .arg("seal")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = one_error(&out, 4);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    // The same file at 0600 works.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("--token-file")
        .arg(&token_file)
        .arg("seal")
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    no_token(&out);

    // Bad hex for --expected-sha256: usage error.
    let out = cli()
        .arg("seal")
        .arg(&model)
        .args(["--expected-sha256", "xyz"])
        .output()
        .unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("--expected-sha256"), "{stderr}");
    let out = cli()
        .arg("seal")
        .arg(&model)
        .args(["--expected-sha256", &"g".repeat(64)])
        .output()
        .unwrap();
    one_error(&out, 2);

    // Device out of range: usage error.
    let out = cli()
        .arg("seal")
        .arg(&model)
        .args(["--device", "7", "--devices", "2"])
        .output()
        .unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("gpu_device 7 does not exist"), "{stderr}");

    // No token at all: usage error with a hint.
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("seal")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("hint:"), "{stderr}");

    // Missing audit log and missing ShardInfo file: usage errors.
    let out = cli()
        .args(["audit", "verify"])
        .arg(dir.path().join("nope.jsonl"))
        .output()
        .unwrap();
    one_error(&out, 2);
    let out = cli()
        .arg("verify-info")
        .arg(dir.path().join("nope.json"))
        .output()
        .unwrap();
    one_error(&out, 2);

    // clap's own usage errors exit 2.
    let out = cli().args(["seal"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli().args(["demo", "--size", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn devices_lists_each_device() {
    let out = cli().args(["devices", "--devices", "3"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("simulated device 2"), "{stdout}");
    no_token(&out);
    let out = cli().args(["devices", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    assert_eq!(v["devices"][0]["capacity"]["used_bytes"], 0);
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let out = cli().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "demo",
        "seal",
        "verify-info",
        "audit",
        "devices",
        "--token-file",
        "VRAM_WORKER_TOKEN",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    for sub in [
        &["demo", "--help"][..],
        &["seal", "--help"],
        &["verify-info", "--help"],
        &["audit", "verify", "--help"],
        &["devices", "--help"],
    ] {
        let out = cli().args(sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
    }
}

#[test]
fn token_never_printed_even_with_debug_logging() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "m.bin", 20_000);
    for args in [
        vec!["devices".to_string()],
        vec!["seal".to_string(), model.display().to_string()],
        vec![
            "--log-format".to_string(),
            "json".to_string(),
            "seal".to_string(),
            model.display().to_string(),
        ],
    ] {
        let out = cli().env("RUST_LOG", "trace").args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        no_token(&out);
    }
}

/// Asserts that neither stream carries ESC, BEL or a C1 CSI byte: nothing from a file reached
/// the terminal as an escape sequence.
fn no_escapes(out: &Output) {
    for (name, s) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for bad in [0x1b_u8, 0x07, 0x9b] {
            assert!(
                !s.contains(&bad),
                "byte {bad:#04x} reached {name}: {:?}",
                text(s)
            );
        }
    }
}

/// A member name and field values that would retitle the window, recolour the terminal, clear
/// the screen (C1 CSI) and reverse the line (bidi override) if printed raw.
const HOSTILE: &str = "\u{1b}]0;pwned title\u{7}\u{1b}[31mred\u{9b}2J\u{202e}desrever\u{200b}";

#[test]
fn verify_info_never_echoes_escape_sequences_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), "model.bin", 20_000);
    let (info, line) = seal_json(&path);

    // An unknown member: serde_json's error quotes its name. One object, pretty-printed, and
    // as the second line of JSON Lines.
    let mut with_member = info.clone();
    with_member[HOSTILE] = 1.into();
    let files = [
        ("member.json", serde_json::to_string(&with_member).unwrap()),
        (
            "member-pretty.json",
            serde_json::to_string_pretty(&with_member).unwrap(),
        ),
        (
            "member-lines.json",
            format!("{line}\n{}\n", serde_json::to_string(&with_member).unwrap()),
        ),
    ];
    for (name, body) in files {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        let out = cli().arg("verify-info").arg(&file).output().unwrap();
        let stderr = one_error(&out, 2);
        assert!(stderr.contains("unknown field"), "{name}: {stderr}");
        assert!(stderr.contains('\u{FFFD}'), "{name}: {stderr}");
        no_escapes(&out);
    }

    // Hostile values in a record that does not verify (every field shown is the peer's).
    let mut unsigned = info.clone();
    unsigned["model_ref"] = format!("hf:{HOSTILE}").into();
    unsigned["shard_id"] = HOSTILE.into();
    unsigned["worker_id"] = HOSTILE.into();
    unsigned["format"] = HOSTILE.into();
    let file = dir.path().join("unsigned.json");
    std::fs::write(&file, serde_json::to_string(&unsigned).unwrap()).unwrap();
    let out = cli().arg("verify-info").arg(&file).output().unwrap();
    one_error(&out, 3);
    assert!(
        text(&out.stdout).contains("FAILED"),
        "{}",
        text(&out.stdout)
    );
    no_escapes(&out);

    // A record that *does* verify (a peer holding the token signed it) still has its fields
    // sanitised on the `ok:` line.
    let token = vram_residency::WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
    let key = vram_residency::seal::keys::SealKey::derive(&token);
    let mut signed: vram_residency::ShardInfo = serde_json::from_str(&line).unwrap();
    signed.model_ref = format!("hf:{HOSTILE}");
    signed.signature = vram_residency::seal::claims::sign(&key, &signed).unwrap();
    // The file name is hostile too.
    let file = dir.path().join(format!("{HOSTILE}.json"));
    std::fs::write(&file, serde_json::to_string(&signed).unwrap()).unwrap();
    let out = cli().arg("verify-info").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok: "), "{stdout}");
    assert!(stdout.contains("hf:\u{FFFD}"), "{stdout}");
    no_escapes(&out);
    no_token(&out);
}

#[test]
fn verify_info_refuses_an_oversized_file_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), "model.bin", 10_000);
    let (_, line) = seal_json(&path);
    // Valid JSON Lines, just too many of them: refused for its size (usage, exit 2).
    let big = dir.path().join("big.json");
    let mut body = String::new();
    while body.len() <= 1 << 20 {
        body.push_str(&line);
        body.push('\n');
    }
    std::fs::write(&big, &body).unwrap();
    let out = cli().arg("verify-info").arg(&big).output().unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("larger than"), "{stderr}");
    assert!(stderr.contains("1 MiB"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // A file that never ends is refused all the same.
    if Path::new("/dev/zero").exists() {
        let out = cli().arg("verify-info").arg("/dev/zero").output().unwrap();
        let stderr = one_error(&out, 2);
        assert!(stderr.contains("larger than"), "{stderr}");
    }

    // Bytes that are not UTF-8 are bad input (2), not an I/O problem.
    let binary = dir.path().join("binary.json");
    std::fs::write(&binary, b"{\"format\":\"\xff\xfe\"}").unwrap();
    let out = cli().arg("verify-info").arg(&binary).output().unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("not UTF-8"), "{stderr}");
}

#[test]
fn audit_verify_never_echoes_escape_sequences_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    assert!(run_demo(&log).status.success());
    let original = std::fs::read_to_string(&log).unwrap();
    let first = original.lines().next().unwrap();
    // A well-formed tail on a line whose members are hostile: raw C1 and bidi characters are
    // legal inside JSON strings, ESC and BEL arrive as \u escapes.
    let mac = &first[first.len() - 66..];
    let hostile = format!(
        "{{\"seq\":1,\"ts\":\"2026-01-01T00:00:00.000000000Z\",\"worker_id\":\"w\",\"event\":{{\"type\":\"X\",\"{}\":1}},\"{}\":2{mac}",
        HOSTILE
            .replace('\u{1b}', "\\u001b")
            .replace('\u{7}', "\\u0007"),
        "\u{9b}2J\u{202e}\\u001b]0;t\\u0007",
    );
    for (name, body) in [
        ("first.jsonl", format!("{hostile}\n")),
        ("later.jsonl", format!("{original}{hostile}\n")),
        ("torn.jsonl", format!("{original}\u{9b}2J\u{202e}x")),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        for json in [false, true] {
            let mut cmd = cli();
            cmd.args(["audit", "verify"]).arg(&file);
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().unwrap();
            one_error(&out, 3);
            no_escapes(&out);
            let stdout = text(&out.stdout);
            assert!(!stdout.contains('\u{202e}'), "{name}: {stdout}");
            if json {
                let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(v["intact"], false, "{name}: {stdout}");
            } else {
                assert!(stdout.contains("NOT INTACT"), "{name}: {stdout}");
            }
        }
    }
}
