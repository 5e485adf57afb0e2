//! The command line's group support, driving the built binary: `seal --group ID --group-devices
//! 0,1,2,3 PART…` seals four files as one tensor-parallel group and prints its `GroupInfo`
//! (digests equal to `sha256sum`'s, part i on the i-th listed device); `verify-info` accepts it
//! (and catches a tampered member, a swapped order, a wrong total and another token); bad
//! group arguments are usage errors (exit 2) with one `error:` line.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // test code fails loudly

use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::{Digest, Sha256};

use crate::support as cli_support;

use cli_support::{cli, one_error, text};

fn write_parts(dir: &Path, sizes: &[usize]) -> Vec<PathBuf> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let bytes: Vec<u8> = (0..len).map(|k| ((k * 131 + i * 17) % 253) as u8).collect();
            let path = dir.join(format!("part{i}.bin"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

fn seal_group(parts: &[PathBuf], devices: &str) -> Output {
    cli()
        .args(["seal", "--group", "llama-tp4", "--group-devices", devices])
        .args(parts)
        .args(["--devices", "4"])
        .output()
        .unwrap()
}

fn verify_info(dir: &Path, name: &str, value: &serde_json::Value) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_string(value).unwrap()).unwrap();
    cli().arg("verify-info").arg(&file).output().unwrap()
}

#[test]
fn seal_group_prints_a_group_info_that_verify_info_accepts_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let parts = write_parts(dir.path(), &[50_000, 1, 4096, 70_000]);
    let out = seal_group(&parts, "3,2,1,0");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let group: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(group["format"], "vram-group-v1");
    assert_eq!(group["group_id"], "llama-tp4");
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["shard_id"], format!("llama-tp4-{i}"));
        assert_eq!(m["shard_index"], i);
        assert_eq!(m["total_shards"], 4);
        assert_eq!(m["gpu_device"], 3 - i);
        let bytes = std::fs::read(&parts[i]).unwrap();
        assert_eq!(m["digest"], hex::encode(Sha256::digest(&bytes)));
    }

    let out = verify_info(dir.path(), "group.json", &group);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ok: ")
            && stdout.contains("group llama-tp4")
            && stdout.contains("4 member(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("member 3: shard llama-tp4-3"), "{stdout}");

    // A tampered member, a swapped order, a wrong total: integrity failures (3), named.
    let mut tampered = group.clone();
    tampered["members"][1]["vram_bytes"] = 2.into();
    let stderr = one_error(&verify_info(dir.path(), "tampered.json", &tampered), 3);
    assert!(stderr.contains("member 1 (llama-tp4-1)"), "{stderr}");
    let mut swapped = group.clone();
    swapped["members"].as_array_mut().unwrap().swap(0, 3);
    let stderr = one_error(&verify_info(dir.path(), "swapped.json", &swapped), 3);
    assert!(stderr.contains("shard_index"), "{stderr}");
    let mut short = group.clone();
    short["members"].as_array_mut().unwrap().pop();
    let stderr = one_error(&verify_info(dir.path(), "short.json", &short), 3);
    assert!(stderr.contains("total_shards 4"), "{stderr}");
    let mut resigned = group.clone();
    resigned["signature"] = members[0]["signature"].clone();
    let stderr = one_error(&verify_info(dir.path(), "sig.json", &resigned), 3);
    assert!(
        stderr.contains("group signature does not match"),
        "{stderr}"
    );

    // Another worker's token verifies nothing.
    let file = dir.path().join("group.json");
    let out = cli()
        .env("VRAM_WORKER_TOKEN", "another-worker-token-0000")
        .arg("verify-info")
        .arg(&file)
        .output()
        .unwrap();
    one_error(&out, 3);

    // A member's own record still verifies as a ShardInfo, next to the group in JSON Lines.
    let lines = format!("{}\n{}\n", group, members[2]);
    let both = dir.path().join("both.json");
    std::fs::write(&both, lines).unwrap();
    let out = cli().arg("verify-info").arg(&both).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches("ok: ").count(), 2);
}

#[test]
fn bad_group_arguments_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let parts = write_parts(dir.path(), &[5_000, 6_000]);
    // One device per part.
    let stderr = one_error(&seal_group(&parts, "0"), 2);
    assert!(
        stderr.contains("--group-devices lists 1 device(s) for 2 file(s)"),
        "{stderr}"
    );
    // A device that does not exist.
    let stderr = one_error(&seal_group(&parts, "0,9"), 2);
    assert!(stderr.contains("gpu_device 9"), "{stderr}");
    // A bad group id.
    let out = cli()
        .args(["seal", "--group", "no spaces", "--group-devices", "0,1"])
        .args(&parts)
        .output()
        .unwrap();
    let stderr = one_error(&out, 2);
    assert!(stderr.contains("group_id"), "{stderr}");
    // --group needs --group-devices, and does not take --device.
    let out = cli()
        .args(["seal", "--group", "g"])
        .args(&parts)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli()
        .args([
            "seal",
            "--group",
            "g",
            "--group-devices",
            "0,1",
            "--device",
            "1",
        ])
        .args(&parts)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_group_that_does_not_fit_seals_nothing_and_names_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let parts = write_parts(dir.path(), &[8_192, 100_000]);
    let out = cli()
        .args(["seal", "--group", "big", "--group-devices", "0,1"])
        .args(&parts)
        .args(["--devices", "2", "--device-capacity", "65536"])
        .output()
        .unwrap();
    let stderr = one_error(&out, 4);
    assert!(
        stderr.contains("big-1") && stderr.contains("insufficient VRAM"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}
