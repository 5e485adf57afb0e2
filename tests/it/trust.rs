//! What a challenger or an auditor can rely on, through the public API: a cut audit tail is
//! caught against a head kept elsewhere (and a log without `AuditLogClosed` is reported open); a
//! torn tail's length and hash stay on record; attestations v2 are refused when replayed, stale,
//! weaker than required, from a simulated device, answered to a short nonce or tagged v1; a
//! peer's forged `ShardInfo` is on record while the device keeps serving; and a token file
//! swapped for a symlink is refused.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code fails loudly

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{TOKEN, config, pattern};
use vram_residency::audit::{self, HeadProblem, LogStatus};
use vram_residency::{
    Attestation, AttestationPolicy, AuditHead, Config, SealRequest, VerifyMode, VramError,
    VramResidency, WorkerToken, verify_attestation, verify_attestation_with,
};

const MIB: u64 = 1 << 20;

fn token() -> WorkerToken {
    WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Starts a system logging to `log`, seals and releases one shard, returns the durable head
/// and shuts down.
async fn run_and_keep_head(log: &Path) -> AuditHead {
    let system = VramResidency::start(config(1, 16 * MIB).audit_log(log))
        .await
        .unwrap();
    let shard = system
        .seal(SealRequest::new(
            "shard-a",
            "hf:org/m@r",
            0,
            pattern(20_000),
        ))
        .await
        .unwrap();
    system.release(shard).await.unwrap();
    let head = system.audit_head().await.unwrap();
    // The head is the newest record durably in the log.
    let lines = lines_of(log);
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["seq"], head.seq);
    assert_eq!(last["mac"], head.mac.as_str());
    assert_eq!(head.mac.len(), 64);
    // Serde round trip.
    let json = serde_json::to_string(&head).unwrap();
    assert_eq!(serde_json::from_str::<AuditHead>(&json).unwrap(), head);
    system.shutdown().await.unwrap();
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_is_caught_with_a_head_and_reported_open_without() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let head = run_and_keep_head(&log).await;

    // Whole log: intact against the head, closed.
    let r = audit::verify_log_to_head(&log, &token(), &head).unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.status(), LogStatus::Closed);

    // Cut everything from the head's record on (the close record, the head record, …).
    let lines = lines_of(&log);
    let keep = usize::try_from(head.seq).unwrap() - 1;
    std::fs::write(&log, lines[..keep].join("\n") + "\n").unwrap();
    let plain = audit::verify_log(&log, &token()).unwrap();
    assert!(plain.is_intact(), "every remaining line still verifies");
    assert_eq!(plain.status(), LogStatus::Open);
    let r = audit::verify_log_to_head(&log, &token(), &head).unwrap();
    assert!(!r.is_intact());
    assert!(matches!(
        r.head_problem,
        Some(HeadProblem::EndsBeforeHead { head_seq, .. }) if head_seq == head.seq
    ));

    // Restarting resumes from the shortened log (nothing there to notice), but the head kept
    // elsewhere still catches it: the record now at head.seq has another MAC.
    let system = VramResidency::start(config(1, 16 * MIB).audit_log(&log))
        .await
        .unwrap();
    let later = system.audit_head().await.unwrap();
    system.shutdown().await.unwrap();
    assert!(later.seq >= head.seq);
    let r = audit::verify_log_to_head(&log, &token(), &head).unwrap();
    assert!(!r.is_intact());
    assert_eq!(
        r.head_problem,
        Some(HeadProblem::DiffersAtHead { head_seq: head.seq })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_its_length_and_hash_are_on_record() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let head = run_and_keep_head(&log).await;
    let before = lines_of(&log).len();
    let torn = b"{\"seq\":99,\"ts\":\"2026-12-02T08:00:00.0";
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(torn);
    std::fs::write(&log, &bytes).unwrap();

    let system = VramResidency::start(config(1, 16 * MIB).audit_log(&log))
        .await
        .unwrap();
    system.shutdown().await.unwrap();

    let lines = lines_of(&log);
    let resumed: serde_json::Value = serde_json::from_str(&lines[before]).unwrap();
    assert_eq!(resumed["event"]["type"], "AuditLogOpened");
    assert_eq!(resumed["event"]["resumed_from_seq"], before);
    assert_eq!(resumed["event"]["torn_tail_bytes"], torn.len());
    assert_eq!(
        resumed["event"]["torn_tail_sha256"],
        hex::encode(sha2::Sha256::digest(torn))
    );
    let r = audit::verify_log_to_head(&log, &token(), &head).unwrap();
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.status(), LogStatus::Closed);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_swapped_for_a_symlink_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("token");
    std::fs::write(&real, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = || {
        Config::simulated(1, 16 * MIB)
            .worker_id("worker-test")
            .chunk_size(4096)
    };
    // The file itself is accepted.
    let system = VramResidency::start(base().worker_token_file(&real))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
    assert!(vram_residency::config::read_token_file(&real).is_ok());

    // A symlink to a world-readable file is refused, and so is one to a private file: the
    // token is read only from the file named, never through a link an attacker can swap.
    let loose = dir.path().join("loose");
    std::fs::write(&loose, TOKEN).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("token-link");
    std::os::unix::fs::symlink(&loose, &link).unwrap();
    let err = vram_residency::config::read_token_file(&link)
        .err()
        .unwrap();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let err = VramResidency::start(base().worker_token_file(&link))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!err.to_string().contains(TOKEN));

    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(vram_residency::config::read_token_file(&link).is_err());

    // A FIFO is not a regular file (and opening it does not hang).
    let fifo = dir.path().join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    if status.success() {
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = vram_residency::config::read_token_file(&fifo)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

const NONCE: &[u8] = b"challenger-nonce-0123456789";

async fn sealed(system: &VramResidency) -> vram_residency::SealedShard {
    system
        .seal(SealRequest::new(
            "shard-a",
            "hf:org/m@r",
            0,
            pattern(50_000),
        ))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_v2_binds_backend_device_and_audit_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let system = VramResidency::start(config(1, 16 * MIB).audit_log(&log))
        .await
        .unwrap();
    let shard = sealed(&system).await;
    let att = system.attest(&shard, NONCE).await.unwrap();
    assert_eq!(att.format, "vram-attest-v2");
    assert_eq!(att.verified_mode, "full");
    assert_eq!(att.backend, "simulated");
    assert_eq!(att.device_id, "simulated device 0");
    verify_attestation(&att, &token(), NONCE).unwrap();
    // JSON: v1's member names plus v2's, and a round trip.
    let json: serde_json::Value = serde_json::to_value(&att).unwrap();
    for member in [
        "format",
        "nonce",
        "shard",
        "verified_mode",
        "verified_at_unix_nanos",
        "signature",
        "backend",
        "device_id",
        "audit_head",
    ] {
        assert!(json.get(member).is_some(), "{member}");
    }
    let back: Attestation = serde_json::from_value(json).unwrap();
    assert_eq!(back, att);
    // Every added field is signed.
    for edit in 0..4 {
        let mut changed = att.clone();
        match edit {
            0 => changed.backend = "cuda".into(),
            1 => changed.device_id = "GPU-00000000-0000-0000-0000-000000000000".into(),
            2 => changed.audit_head.seq += 1,
            _ => changed.verified_mode = "sampled(1)".into(),
        }
        assert!(
            verify_attestation(&changed, &token(), NONCE).is_err(),
            "{edit}"
        );
    }
    // The head it carries is durable, and the log reaches it.
    system.shutdown().await.unwrap();
    let r = audit::verify_log_to_head(&log, &token(), &att.audit_head).unwrap();
    assert!(r.is_intact(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_weak_and_simulated_attestations_are_refused_by_policy() {
    let system = VramResidency::start(config(1, 16 * MIB)).await.unwrap();
    let shard = sealed(&system).await;
    let att = system.attest(&shard, NONCE).await.unwrap();
    let fresh = AttestationPolicy::default()
        .max_age(Duration::from_secs(60))
        .require_mode(VerifyMode::Full);
    verify_attestation_with(&att, &token(), NONCE, &fresh).unwrap();

    // Replayed to another challenge: a different nonce.
    let other_nonce = b"challenger-nonce-9876543210";
    assert!(verify_attestation_with(&att, &token(), other_nonce, &fresh).is_err());

    // Stale: an attestation verified longer ago than the policy allows. (Re-signed by hand
    // would need the token; here the policy's clock is what moves.)
    tokio::time::sleep(Duration::from_millis(30)).await;
    let strict = AttestationPolicy::default().max_age(Duration::from_millis(10));
    let err = verify_attestation_with(&att, &token(), NONCE, &strict).unwrap_err();
    assert!(matches!(err, VramError::AttestationInvalid(_)), "{err}");
    assert!(err.to_string().contains("stale"), "{err}");

    // Simulated device: refused when device memory is required.
    let device = AttestationPolicy::default().require_device_memory(true);
    let err = verify_attestation_with(&att, &token(), NONCE, &device).unwrap_err();
    assert!(matches!(err, VramError::AttestationInvalid(_)), "{err}");
    system.shutdown().await.unwrap();

    // Weak mode: a worker that verifies by sampling (or by signature only) before attesting
    // says so, and a challenger requiring Full refuses it.
    for (mode, sampled_8_ok) in [
        (VerifyMode::Sampled { chunks: 8 }, true),
        (VerifyMode::Sampled { chunks: 4 }, false),
        (VerifyMode::SignatureOnly, false),
    ] {
        let system = VramResidency::start(config(1, 16 * MIB).execute_verify(mode))
            .await
            .unwrap();
        let shard = sealed(&system).await;
        let att = system.attest(&shard, NONCE).await.unwrap();
        assert_eq!(att.verified_mode, mode.to_string());
        verify_attestation(&att, &token(), NONCE).unwrap();
        let full = AttestationPolicy::default().require_mode(VerifyMode::Full);
        let err = verify_attestation_with(&att, &token(), NONCE, &full).unwrap_err();
        assert!(
            matches!(err, VramError::AttestationInvalid(_)),
            "{mode}: {err}"
        );
        let sampled_8 =
            AttestationPolicy::default().require_mode(VerifyMode::Sampled { chunks: 8 });
        assert_eq!(
            verify_attestation_with(&att, &token(), NONCE, &sampled_8).is_ok(),
            sampled_8_ok,
            "{mode}"
        );
        system.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_nonces_and_v1_attestations_are_refused() {
    let system = VramResidency::start(config(1, 16 * MIB)).await.unwrap();
    let shard = sealed(&system).await;
    for bad in [&b""[..], &[7u8; 15][..], &[7u8; 1025][..]] {
        let err = system.attest(&shard, bad).await.unwrap_err();
        assert!(matches!(err, VramError::InvalidInput(_)), "{err}");
    }
    assert!(system.attest(&shard, &[7u8; 16]).await.is_ok());
    assert!(system.attest(&shard, &[7u8; 1024]).await.is_ok());

    // A v1-tagged attestation is refused by its tag, whatever else it carries.
    let att = system.attest(&shard, NONCE).await.unwrap();
    let mut v1 = att.clone();
    v1.format = "vram-attest-v1".into();
    let err = verify_attestation(&v1, &token(), NONCE).unwrap_err();
    assert!(err.to_string().contains("vram-attest-v2"), "{err}");
    // A v1 attestation's JSON (no v2 members) does not even parse as one.
    let mut json = serde_json::to_value(&att).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.insert("format".into(), "vram-attest-v1".into());
    for member in ["backend", "device_id", "audit_head"] {
        obj.remove(member);
    }
    assert!(serde_json::from_value::<Attestation>(json).is_err());
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_is_not_signed_for_a_quarantined_shard() {
    let system = VramResidency::start(config(1, 16 * MIB)).await.unwrap();
    let shard = sealed(&system).await;
    system
        .inject_fault(
            0,
            vram_residency::Fault::FlipBits {
                shard_id: "shard-a".into(),
                offset: 100,
                mask: 1,
            },
        )
        .await
        .unwrap();
    assert!(system.attest(&shard, NONCE).await.is_err());
    let lines = system.audit_lines().await.unwrap();
    assert!(!lines.iter().any(|l| l.contains("AttestationIssued")));
    system.shutdown().await.unwrap();
}

/// The `SealVerificationFailed` records (event objects) in the in-memory log.
async fn failures(system: &VramResidency) -> Vec<serde_json::Value> {
    system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["type"] == "SealVerificationFailed")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_forgery_is_on_record_and_the_device_keeps_serving() {
    let system = VramResidency::start(config(1, 16 * MIB)).await.unwrap();
    let shard = sealed(&system).await;

    // A forged record: claims changed, signature kept.
    let mut forged = shard.info().clone();
    forged.vram_bytes += 1;
    assert!(system.verify_info(&forged).await.is_err());
    let f = failures(&system).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["shard_id"], "shard-a");
    assert_eq!(f[0]["severity"], "critical");
    let reason = f[0]["reason"].as_str().unwrap();
    assert!(reason.contains("verify_info"), "{reason}");
    assert!(reason.contains("signature"), "{reason}");
    assert!(reason.contains("nothing quarantined"), "{reason}");

    // A validly signed record that is not what is resident: a residency mismatch.
    let other = VramResidency::start(config(1, 16 * MIB)).await.unwrap();
    let elsewhere = other
        .seal(SealRequest::new("shard-a", "hf:org/m@r", 0, pattern(1000)))
        .await
        .unwrap();
    assert!(system.verify_info(elsewhere.info()).await.is_err());
    let f = failures(&system).await;
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[1]["reason"]
            .as_str()
            .unwrap()
            .contains("residency mismatch"),
        "{f:?}"
    );
    other.shutdown().await.unwrap();

    // Recorded only: the device still serves the genuine shard, in every mode.
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system.verify_info(shard.info()).await.unwrap();
    assert_eq!(system.execute(&shard, |v| v.len()).await.unwrap(), 50_000);
    let more = system
        .seal(SealRequest::new("shard-b", "hf:org/m@r", 0, pattern(1000)))
        .await
        .unwrap();
    system
        .verify(&more, VerifyMode::SignatureOnly)
        .await
        .unwrap();
    assert_eq!(
        failures(&system).await.len(),
        2,
        "passing checks add no failure"
    );
    system.shutdown().await.unwrap();
}
