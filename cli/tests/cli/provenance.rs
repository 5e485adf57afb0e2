//! Issue 20 on the command line: `seal --model-signature BUNDLE --publisher-key PEM
//! [--resource NAME]` against the real model-signing fixture (`tests/fixtures/model-signing/`,
//! made by `model_signing` 1.1.1), `identity`, and `verify-attestation` checking `vram-attest-v3`
//! with the public key alone and `vram-attest-v2` with the token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::path::Path;

use crate::support::{TOKEN, cli, no_token, one_error, text};

use crate::model_signing::{fixture, read, sha256sums};

use vram_residency::{Config, GroupRequest, SealRequest, VramResidency};

const NONCE_HEX: &str = "00112233445566778899aabbccddeeff0011223344556677";

fn seal_signed(file: &Path, bundle: &str, key: &str, extra: &[&str]) -> std::process::Output {
    cli()
        .arg("seal")
        .arg(file)
        .args(["--devices", "1", "--device-capacity", "1048576"])
        .arg("--model-signature")
        .arg(fixture(bundle))
        .arg("--publisher-key")
        .arg(fixture(key))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn seal_checks_each_file_against_the_signed_manifest() {
    let sums = sha256sums();
    for file in ["model-00001.safetensors", "model-00002.bin"] {
        let out = seal_signed(
            &fixture(&format!("model/{file}")),
            "model-p384.sig",
            "keys/publisher-p384.pub.pem",
            &[],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let expected = &sums.iter().find(|(n, _)| n == file).unwrap().1;
        assert_eq!(info["digest"], *expected);
        no_token(&out);
    }
    // --resource names the file in the manifest when the local name differs.
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("weights.bin");
    std::fs::copy(fixture("model/model-00002.bin"), &renamed).unwrap();
    let out = seal_signed(
        &renamed,
        "model-p256.sig",
        "keys/publisher-p256.pub.pem",
        &["--resource", "model-00002.bin"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without it, the local name is not in the manifest: a usage error before any seal.
    let out = seal_signed(
        &renamed,
        "model-p256.sig",
        "keys/publisher-p256.pub.pem",
        &[],
    );
    let stderr = one_error(&out, 2);
    assert!(
        stderr.contains("weights.bin") && stderr.contains("not in the signed model"),
        "{stderr}"
    );
}

#[test]
fn a_changed_file_wrong_key_certificate_or_truncated_bundle_exits_3_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = read("model/model-00001.safetensors");
    bytes[200] ^= 0x80;
    let changed = dir.path().join("model-00001.safetensors");
    std::fs::write(&changed, bytes).unwrap();
    let out = seal_signed(
        &changed,
        "model-p256.sig",
        "keys/publisher-p256.pub.pem",
        &[],
    );
    let stderr = one_error(&out, 3);
    assert!(
        stderr.contains("provenance mismatch for resource model-00001.safetensors"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    let good = fixture("model/model-00001.safetensors");
    let truncated = dir.path().join("truncated.sig");
    let bundle = read("model-p256.sig");
    std::fs::write(&truncated, &bundle[..bundle.len() / 2]).unwrap();
    for (bundle, key, expect) in [
        (
            "model-p256.sig",
            "keys/other-p256.pub.pem",
            "does not verify",
        ),
        (
            "model-cert.sig",
            "keys/publisher-p256.pub.pem",
            "certificate",
        ),
        (
            truncated.to_str().unwrap(),
            "keys/publisher-p256.pub.pem",
            "truncated",
        ),
    ] {
        let out = seal_signed(&good, bundle, key, &[]);
        let stderr = one_error(&out, 3);
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(stderr.contains("model signature refused"), "{stderr}");
        assert!(
            stderr.contains("signing model-00001.safetensors"),
            "{stderr}"
        );
    }
    // A private key where the public one belongs: a usage error that quotes nothing.
    let out = seal_signed(&good, "model-p256.sig", "keys/publisher-p256.key.pem", &[]);
    let stderr = one_error(&out, 2);
    let private = String::from_utf8(read("keys/publisher-p256.key.pem")).unwrap();
    let body = private.lines().nth(1).unwrap();
    assert!(!stderr.contains(body), "{stderr}");
}

#[test]
fn a_group_seals_each_part_against_its_own_resource() {
    let out = cli()
        .arg("seal")
        .arg(fixture("model/model-00001.safetensors"))
        .arg(fixture("model/model-00002.bin"))
        .args(["--devices", "2", "--device-capacity", "1048576"])
        .args(["--group", "tp2", "--group-devices", "0,1"])
        .arg("--model-signature")
        .arg(fixture("model-p256.sig"))
        .arg("--publisher-key")
        .arg(fixture("keys/publisher-p256.pub.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let group: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(group["members"].as_array().unwrap().len(), 2);
    // Each part is checked against its own file name: a file under another file's name is
    // refused, and the whole group with it.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("model-00002.bin");
    std::fs::copy(fixture("model/model-00001.safetensors"), &wrong).unwrap();
    let out = cli()
        .arg("seal")
        .arg(fixture("model/model-00001.safetensors"))
        .arg(&wrong)
        .args(["--devices", "2", "--device-capacity", "1048576"])
        .args(["--group", "tp2", "--group-devices", "0,1"])
        .arg("--model-signature")
        .arg(fixture("model-p256.sig"))
        .arg("--publisher-key")
        .arg(fixture("keys/publisher-p256.pub.pem"))
        .output()
        .unwrap();
    let stderr = one_error(&out, 3);
    assert!(
        stderr.contains("provenance mismatch for resource model-00002.bin"),
        "{stderr}"
    );
}

#[test]
fn identity_prints_the_key_of_an_identity_key_file() {
    // Any PKCS#8 P-256 private key will do: the fixture's spare one, with its public half.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    std::fs::write(&path, read("keys/other-p256.key.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("identity")
        .arg("--identity-key-file")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        String::from_utf8(read("keys/other-p256.pub.pem")).unwrap()
    );
    // The private key never reaches a stream.
    let private = String::from_utf8(read("keys/other-p256.key.pem")).unwrap();
    let body = private.lines().nth(1).unwrap().to_string();
    assert!(!text(&out.stdout).contains(&body) && !text(&out.stderr).contains(&body));
    // Group-readable: refused like a token file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let out = cli()
            .arg("identity")
            .arg("--identity-key-file")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = one_error(&out, 2);
        assert!(stderr.contains("group or others"), "{stderr}");
    }
    // Without a token or a key file: a usage error.
    let out = cli()
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("identity")
        .output()
        .unwrap();
    one_error(&out, 2);
}

/// A worker (the library, with the CLI's token) answers challenges; the CLI checks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_attestation_checks_v3_with_the_public_key_and_v2_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let system = VramResidency::start(
        Config::simulated(2, 4 << 20)
            .worker_id("worker-1")
            .worker_token(TOKEN),
    )
    .await
    .unwrap();
    let shard = system
        .seal(SealRequest::new("s-a", "r", 0, vec![9; 10_000]))
        .await
        .unwrap();
    let group = system
        .seal_group(
            GroupRequest::new("tp2", "r")
                .part(SealRequest::new("tp2-0", "r", 0, vec![1; 5000]))
                .part(SealRequest::new("tp2-1", "r", 1, vec![2; 5000])),
        )
        .await
        .unwrap();
    let nonce = hex::decode(NONCE_HEX).unwrap();
    let write = |name: &str, json: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, json).unwrap();
        p
    };
    let v3 = write(
        "v3.json",
        serde_json::to_string(&system.attest_signed(&shard, &nonce).await.unwrap()).unwrap(),
    );
    let v3_group = write(
        "v3-group.json",
        serde_json::to_string(&system.attest_group_signed(&group, &nonce).await.unwrap()).unwrap(),
    );
    let v2 = write(
        "v2.json",
        serde_json::to_string(&system.attest(&shard, &nonce).await.unwrap()).unwrap(),
    );
    let v2_group = write(
        "v2-group.json",
        serde_json::to_string(&system.attest_group(&group, &nonce).await.unwrap()).unwrap(),
    );
    let digest = shard.info().digest.clone();
    system.shutdown().await.unwrap();

    // `identity` prints the same key the worker signs with.
    let out = cli().arg("identity").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pem = dir.path().join("worker.pub.pem");
    std::fs::write(&pem, &out.stdout).unwrap();
    assert!(text(&out.stdout).starts_with("-----BEGIN PUBLIC KEY-----"));
    no_token(&out);

    // v3: no token in the environment at all.
    let v3_cli = |file: &Path, extra: &[&str]| {
        let mut cmd = cli();
        cmd.env_remove("VRAM_WORKER_TOKEN")
            .arg("verify-attestation")
            .arg(file)
            .args(["--nonce", NONCE_HEX, "--public-key"])
            .arg(&pem)
            .args(extra);
        cmd.output().unwrap()
    };
    let out = v3_cli(
        &v3,
        &[
            "--expect-shard",
            "s-a",
            "--expect-digest",
            &digest,
            "--max-age",
            "600",
            "--require-mode",
            "full",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("ok: shard s-a"), "{stdout}");
    let out = v3_cli(&v3_group, &["--expect-shard", "tp2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: group tp2"),
        "{}",
        text(&out.stdout)
    );

    for (extra, expect) in [
        (vec!["--expect-shard", "s-b"], "not for s-b"),
        (vec!["--require-device-memory"], "device memory"),
        (vec!["--expect-digest", &"ab".repeat(32)], "sha256"),
    ] {
        let out = v3_cli(&v3, &extra);
        let stderr = one_error(&out, 3);
        assert!(
            stderr.contains("attestation invalid") && stderr.contains(expect),
            "{expect}: {stderr}"
        );
    }
    let mut cmd = cli();
    let out = cmd
        .env_remove("VRAM_WORKER_TOKEN")
        .arg("verify-attestation")
        .arg(&v3)
        .args(["--nonce", &"ff".repeat(24), "--public-key"])
        .arg(&pem)
        .output()
        .unwrap();
    let stderr = one_error(&out, 3);
    assert!(stderr.contains("different nonce"), "{stderr}");
    // A byte of the document changed.
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&v3).unwrap()).unwrap();
    let payload = doc["dsseEnvelope"]["payload"].as_str().unwrap().to_string();
    let flipped = if payload.starts_with('e') { "f" } else { "e" };
    doc["dsseEnvelope"]["payload"] = format!("{flipped}{}", &payload[1..]).into();
    let tampered = write("tampered.json", doc.to_string());
    let stderr = one_error(&v3_cli(&tampered, &[]), 3);
    assert!(stderr.contains("attestation invalid"), "{stderr}");
    // v3 without a key: usage.
    let out = cli()
        .arg("verify-attestation")
        .arg(&v3)
        .args(["--nonce", NONCE_HEX])
        .output()
        .unwrap();
    one_error(&out, 2);

    // v2, with the token.
    let v2_cli = |file: &Path, extra: &[&str]| {
        cli()
            .arg("verify-attestation")
            .arg(file)
            .args(["--nonce", NONCE_HEX])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = v2_cli(&v2, &["--expect-shard", "s-a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("vram-attest-v2"));
    let out = v2_cli(&v2_group, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = one_error(&v2_cli(&v2, &["--expect-shard", "s-b"]), 3);
    assert!(stderr.contains("attestation invalid"), "{stderr}");
    // A key is no use for v2.
    let out = v2_cli(&v2, &["--public-key", pem.to_str().unwrap()]);
    one_error(&out, 2);
    // Nor does a bad nonce get far.
    let out = v2_cli(&v2, &["--nonce-typo"]);
    assert_eq!(out.status.code(), Some(2));
}
