//! The core capability through the public API: seal, verify, execute, release, fail-closed,
//! capacity, validation, faults, supervision and shutdown — all on the simulated backend.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code fails loudly

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{TOKEN, audit_types, eventually, pattern, start};
use vram_residency::{
    ChunkSpan, Config, Fault, SealRequest, StopCause, VerifyMode, VramError, VramResidency,
};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_verify_all_modes_execute_release_returns_capacity() {
    let system = start(2, 16 * MIB).await;
    let before = system.capacity(0).await.unwrap();
    assert_eq!(before.used_bytes, 0);
    assert_eq!(before.available_bytes, 16 * MIB);

    let data = pattern(100_000);
    let shard = system
        .seal(SealRequest::new(
            "shard-a",
            "hf:org/model@rev",
            0,
            data.clone(),
        ))
        .await
        .unwrap();
    let info = shard.info().clone();
    assert_eq!(info.format, "vram-seal-v1");
    assert_eq!(info.vram_bytes, 100_000);
    assert_eq!(info.worker_id, "worker-test");
    assert_eq!(info.digest, vram_residency::seal::sha256_hex(&data));
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 100_000);

    let full = system.verify(&shard, VerifyMode::Full).await.unwrap();
    assert_eq!(full.chunks_checked, 25);
    assert_eq!(full.total_chunks, 25);
    assert_eq!(full.bytes_checked, 100_000);
    assert_eq!(full.single_chunk_detection, 1.0);
    let sampled = system
        .verify(&shard, VerifyMode::Sampled { chunks: 5 })
        .await
        .unwrap();
    assert_eq!(sampled.chunks_checked, 5);
    assert!((sampled.single_chunk_detection - 0.2).abs() < 1e-12);
    let sig = system
        .verify(&shard, VerifyMode::SignatureOnly)
        .await
        .unwrap();
    assert_eq!(sig.chunks_checked, 0);
    system.verify_info(&info).await.unwrap();

    // execute sees exactly the sealed bytes
    let head = system
        .execute(&shard, |view| {
            let mut b = vec![0u8; 16];
            view.read(4096, &mut b).unwrap();
            (view.len(), view.shard_id().to_string(), b)
        })
        .await
        .unwrap();
    assert_eq!(
        head,
        (100_000, "shard-a".to_string(), data[4096..4112].to_vec())
    );

    assert_eq!(system.release(shard).await.unwrap(), 100_000);
    assert_eq!(system.capacity(0).await.unwrap(), before);
    // the shard is gone: a peer's copy of its info no longer verifies as resident
    assert!(matches!(
        system.verify_info(&info).await,
        Err(VramError::UnknownShard(_))
    ));
    let types = audit_types(&system).await;
    for t in [
        "AuditLogOpened",
        "VramAllocated",
        "VramSealed",
        "SealVerified",
        "VramDeallocated",
    ] {
        assert!(types.iter().any(|x| x == t), "missing {t} in {types:?}");
    }
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_flipped_bit_anywhere_is_caught_and_named() {
    let system = start(1, 4 * MIB).await;
    let len = 10 * 4096 + 123; // 11 chunks, the last one short
    // first byte, chunk borders, the middle, the very last byte, and some random spots
    let mut offsets = vec![0u64, 4095, 4096, 20_000, 8191, len as u64 - 1];
    for _ in 0..6 {
        offsets.push(rand::random::<u64>() % len as u64);
    }
    for (n, offset) in offsets.into_iter().enumerate() {
        let id = format!("flip-{n}");
        let shard = system
            .seal(SealRequest::new(&id, "m", 0, pattern(len)))
            .await
            .unwrap();
        let mask = 1u8 << (n % 8);
        system
            .inject_fault(
                0,
                Fault::FlipBits {
                    shard_id: id.clone(),
                    offset,
                    mask,
                },
            )
            .await
            .unwrap();
        let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
        let chunk = offset / 4096;
        let expected_span = ChunkSpan {
            index: chunk,
            offset: chunk * 4096,
            len: if chunk == 10 { 123 } else { 4096 },
        };
        match &err {
            VramError::SealVerificationFailed {
                shard_id,
                first_bad_chunk,
                bad_chunks,
                ..
            } => {
                assert_eq!(shard_id, &id);
                assert_eq!(*first_bad_chunk, Some(chunk), "offset {offset}");
                assert_eq!(bad_chunks, &vec![expected_span]);
            }
            other => panic!("offset {offset}: expected SealVerificationFailed, got {other:?}"),
        }
        assert!(!err.is_retriable());
        assert!(err.is_integrity_failure());
        // quarantined: execution refused; the device is stopped for everything new
        assert!(matches!(
            system.execute(&shard, |v| v.len()).await,
            Err(VramError::SealVerificationFailed { .. }) | Err(VramError::DeviceStopped { .. })
        ));
        system.release(shard).await.unwrap();
        system.reset_device(0).await.unwrap();
    }
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_never_reports_a_false_failure_and_catches_a_sampled_corruption() {
    let system = start(1, 4 * MIB).await;
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(8 * 4096)))
        .await
        .unwrap();
    for k in [1, 3, 8, 100] {
        for _ in 0..25 {
            let r = system
                .verify(&shard, VerifyMode::Sampled { chunks: k })
                .await
                .unwrap();
            assert_eq!(r.chunks_checked, u64::from(k.min(8)));
        }
    }
    assert!(matches!(
        system
            .verify(&shard, VerifyMode::Sampled { chunks: 0 })
            .await,
        Err(VramError::InvalidInput(_))
    ));
    // corrupt chunk 5; sampling every chunk must catch it at once
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "s".into(),
                offset: 5 * 4096 + 7,
                mask: 0x80,
            },
        )
        .await
        .unwrap();
    let err = system
        .verify(&shard, VerifyMode::Sampled { chunks: 8 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VramError::SealVerificationFailed {
                first_bad_chunk: Some(5),
                ..
            }
        ),
        "{err:?}"
    );
    system.release(shard).await.unwrap();
    system.reset_device(0).await.unwrap();

    // with 2 of 8 chunks sampled, a corrupted chunk is found within a few draws (miss
    // probability per draw 0.75; 200 draws miss with probability 1e-25), and every pass before
    // it was a true pass of other chunks
    let shard = system
        .seal(SealRequest::new("s2", "m", 0, pattern(8 * 4096)))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "s2".into(),
                offset: 3 * 4096,
                mask: 1,
            },
        )
        .await
        .unwrap();
    let mut caught = None;
    for attempt in 0..200 {
        match system
            .verify(&shard, VerifyMode::Sampled { chunks: 2 })
            .await
        {
            Ok(r) => assert_eq!(r.chunks_checked, 2),
            Err(e) => {
                caught = Some((attempt, e));
                break;
            }
        }
    }
    let (_, e) = caught.expect("sampling never hit the corrupted chunk");
    assert!(
        matches!(
            e,
            VramError::SealVerificationFailed {
                first_bad_chunk: Some(3),
                ..
            }
        ),
        "{e:?}"
    );
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_altered_shard_info_fails_verify_info() {
    let system = start(2, 4 * MIB).await;
    let shard = system
        .seal(SealRequest::new("real", "hf:org/m@1", 1, pattern(9000)).tensor_parallel(0, 2))
        .await
        .unwrap();
    let good = shard.info().clone();
    system.verify_info(&good).await.unwrap();

    type Edit = Box<dyn Fn(&mut vram_residency::ShardInfo)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "worker_id",
            Box::new(|i| i.worker_id = "worker-evil".into()),
        ),
        ("shard_id", Box::new(|i| i.shard_id = "real2".into())),
        ("model_ref", Box::new(|i| i.model_ref = "hf:org/m@2".into())),
        ("gpu_device", Box::new(|i| i.gpu_device = 0)),
        ("vram_bytes", Box::new(|i| i.vram_bytes += 1)),
        ("digest", Box::new(|i| i.digest = "00".repeat(32))),
        ("merkle_root", Box::new(|i| i.merkle_root = "ab".repeat(32))),
        ("chunk_size", Box::new(|i| i.chunk_size = 8192)),
        ("sealed_at", Box::new(|i| i.sealed_at_unix_nanos += 1)),
        ("shard_index", Box::new(|i| i.shard_index = Some(1))),
        ("total_shards", Box::new(|i| i.total_shards = None)),
        ("signature", Box::new(|i| i.signature = "00".repeat(32))),
        (
            "signature-case",
            Box::new(|i| i.signature = i.signature.to_uppercase()),
        ),
        ("format", Box::new(|i| i.format = "vram-seal-v2".into())),
    ];
    for (name, edit) in edits {
        let mut forged = good.clone();
        edit(&mut forged);
        let r = system.verify_info(&forged).await;
        assert!(
            matches!(
                r,
                Err(VramError::SealVerificationFailed { .. }) | Err(VramError::InvalidInput(_))
            ),
            "{name}: {r:?}"
        );
    }
    // A correctly signed ShardInfo made with another token is a forgery too.
    let other = VramResidency::start(
        Config::simulated(2, 4 * MIB)
            .worker_id("worker-test")
            .worker_token("a-different-token-0123456789")
            .chunk_size(4096),
    )
    .await
    .unwrap();
    let foreign = other
        .seal(SealRequest::new("real", "hf:org/m@1", 1, pattern(9000)).tensor_parallel(0, 2))
        .await
        .unwrap();
    assert!(matches!(
        system.verify_info(foreign.info()).await,
        Err(VramError::SealVerificationFailed { .. })
    ));
    // JSON with an unknown member is rejected at parse time
    let mut v = serde_json::to_value(&good).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<vram_residency::ShardInfo>(v).is_err());
    // the genuine one still verifies: forgeries changed nothing
    system.verify_info(&good).await.unwrap();
    other.shutdown().await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_input_is_rejected_and_changes_nothing() {
    let system = VramResidency::start(common::config(2, 4 * MIB).max_model_size(MIB))
        .await
        .unwrap();
    let audit_before = system.audit_lines().await.unwrap().len();
    let cap_before = (
        system.capacity(0).await.unwrap(),
        system.capacity(1).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, SealRequest, &str)> = vec![
        (
            "empty id",
            SealRequest::new("", "m", 0, pattern(10)),
            "shard_id",
        ),
        (
            "bad id char",
            SealRequest::new("a/b", "m", 0, pattern(10)),
            "shard_id",
        ),
        (
            "nul in id",
            SealRequest::new("a\0b", "m", 0, pattern(10)),
            "shard_id",
        ),
        (
            "ansi in id",
            SealRequest::new("x\u{1b}[31m", "m", 0, pattern(10)),
            "shard_id",
        ),
        (
            "long id",
            SealRequest::new("a".repeat(257), "m", 0, pattern(10)),
            "shard_id",
        ),
        (
            "empty ref",
            SealRequest::new("s", "", 0, pattern(10)),
            "model_ref",
        ),
        (
            "nul ref",
            SealRequest::new("s", "m\0", 0, pattern(10)),
            "model_ref",
        ),
        (
            "newline ref",
            SealRequest::new("s", "m\n{\"seq\":1}", 0, pattern(10)),
            "model_ref",
        ),
        (
            "long ref",
            SealRequest::new("s", "m".repeat(513), 0, pattern(10)),
            "model_ref",
        ),
        (
            "device",
            SealRequest::new("s", "m", 2, pattern(10)),
            "gpu_device",
        ),
        ("empty", SealRequest::new("s", "m", 0, Vec::new()), "empty"),
        (
            "too big",
            SealRequest::new("s", "m", 0, pattern(MIB as usize + 1)),
            "max_model_size",
        ),
        (
            "short hex",
            SealRequest::new("s", "m", 0, pattern(10)).expected_sha256("abc"),
            "expected_sha256",
        ),
        (
            "non-hex",
            SealRequest::new("s", "m", 0, pattern(10)).expected_sha256("z".repeat(64)),
            "expected_sha256",
        ),
        (
            "tp index",
            SealRequest::new("s", "m", 0, pattern(10)).tensor_parallel(2, 2),
            "tensor_parallel",
        ),
        (
            "tp zero",
            SealRequest::new("s", "m", 0, pattern(10)).tensor_parallel(0, 0),
            "tensor_parallel",
        ),
        (
            "directory",
            SealRequest::from_file("s", "m", 0, dir.path()),
            "not a regular file",
        ),
    ];
    for (name, req, needle) in cases {
        match system.seal(req).await {
            Err(VramError::InvalidInput(msg)) => {
                assert!(
                    msg.contains(needle),
                    "{name}: message {msg:?} should mention {needle}"
                );
                assert!(
                    !msg.contains('\u{1b}') && !msg.contains('\0'),
                    "{name}: {msg:?}"
                );
            }
            other => panic!("{name}: expected InvalidInput, got {other:?}"),
        }
    }
    // capacity, table and audit chain untouched
    assert_eq!(
        (
            system.capacity(0).await.unwrap(),
            system.capacity(1).await.unwrap()
        ),
        cap_before
    );
    assert_eq!(system.audit_lines().await.unwrap().len(), audit_before);
    assert!(matches!(
        system.capacity(9).await,
        Err(VramError::InvalidInput(_))
    ));
    assert!(matches!(
        system
            .inject_fault(
                0,
                Fault::FlipBits {
                    shard_id: "none".into(),
                    offset: 0,
                    mask: 1
                }
            )
            .await,
        Err(VramError::UnknownShard(_))
    ));
    // a duplicate id on the same device is refused without touching the first
    let a = system
        .seal(SealRequest::new("dup", "m", 0, pattern(10)))
        .await
        .unwrap();
    assert!(matches!(
        system
            .seal(SealRequest::new("dup", "m", 0, pattern(20)))
            .await,
        Err(VramError::InvalidInput(_))
    ));
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 10);
    system.verify(&a, VerifyMode::Full).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("token-644");
    std::fs::write(&loose, format!("{TOKEN}\n")).unwrap();
    let tight = dir.path().join("token-600");
    std::fs::write(&tight, format!("{TOKEN}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let base = || Config::simulated(1, MIB).worker_id("w");
    let cases: Vec<(&str, Config, &str)> = vec![
        ("no token", base(), "worker token is required"),
        (
            "short token",
            base().worker_token("short"),
            "at least 16 bytes",
        ),
        (
            "bad worker id",
            Config::simulated(1, MIB)
                .worker_id("w w")
                .worker_token(TOKEN),
            "worker_id",
        ),
        (
            "chunk not pow2",
            base().worker_token(TOKEN).chunk_size(5000),
            "chunk_size",
        ),
        (
            "chunk too small",
            base().worker_token(TOKEN).chunk_size(1024),
            "chunk_size",
        ),
        (
            "chunk too big",
            base().worker_token(TOKEN).chunk_size(128 << 20),
            "chunk_size",
        ),
        (
            "no devices",
            Config::simulated(0, MIB).worker_token(TOKEN),
            "device count",
        ),
        (
            "missing token file",
            base().worker_token_file(dir.path().join("nope")),
            "cannot read token file",
        ),
        #[cfg(unix)]
        (
            "world-readable token file",
            base().worker_token_file(&loose),
            "readable by group or others",
        ),
    ];
    for (name, cfg, needle) in cases {
        match VramResidency::start(cfg).await {
            Err(VramError::InvalidInput(m)) => assert!(m.contains(needle), "{name}: {m}"),
            other => panic!("{name}: expected InvalidInput, got {other:?}"),
        }
    }
    // The 0600 file works, and its trailing newline is not part of the token: a seal made with
    // it verifies under the inline token.
    let a = VramResidency::start(base().worker_token_file(&tight))
        .await
        .unwrap();
    let b = VramResidency::start(base().worker_token(TOKEN))
        .await
        .unwrap();
    let s = a
        .seal(SealRequest::new("s", "m", 0, pattern(100)))
        .await
        .unwrap();
    let t = b
        .seal(SealRequest::new("s", "m", 0, pattern(100)))
        .await
        .unwrap();
    b.verify_info(t.info()).await.unwrap();
    let mut moved = s.info().clone();
    moved.sealed_at_unix_nanos = t.info().sealed_at_unix_nanos;
    assert_ne!(moved.signature, t.info().signature); // different time => different signature
    assert!(vram_residency::seal::claims::verify(
        &vram_residency::seal::keys::SealKey::derive(
            &vram_residency::WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap()
        ),
        s.info()
    ));
    assert!(matches!(
        VramResidency::start(Config::cuda().worker_token(TOKEN)).await,
        Err(VramError::BackendUnavailable { .. })
    ));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_vram_reports_needed_and_available_and_respects_headroom() {
    let system = VramResidency::start(common::config(1, 100_000).headroom_bytes(10_000))
        .await
        .unwrap();
    let cap = system.capacity(0).await.unwrap();
    assert_eq!(cap.available_bytes, 90_000);
    let _a = system
        .seal(SealRequest::new("a", "m", 0, pattern(60_000)))
        .await
        .unwrap();
    let err = system
        .seal(SealRequest::new("b", "m", 0, pattern(40_000)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VramError::InsufficientVram {
            needed: 40_000,
            available: 30_000
        }
    );
    assert!(err.is_retriable());
    assert!(
        err.to_string()
            .contains("needed 40000 bytes, available 30000 bytes")
    );
    let cap = system.capacity(0).await.unwrap();
    assert_eq!((cap.used_bytes, cap.available_bytes), (60_000, 30_000));
    // exactly the available amount fits
    let _b = system
        .seal(SealRequest::new("b", "m", 0, pattern(30_000)))
        .await
        .unwrap();
    assert_eq!(system.capacity(0).await.unwrap().available_bytes, 0);
    let types = audit_types(&system).await;
    assert!(types.iter().any(|t| t == "VramAllocationFailed"));
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_frees_the_allocation() {
    let system = start(1, MIB).await;
    let data = pattern(5000);
    let wrong = "ab".repeat(32);
    let err = system
        .seal(SealRequest::new("s", "m", 0, data.clone()).expected_sha256(&wrong))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VramError::DigestMismatch {
            expected: wrong,
            actual: vram_residency::seal::sha256_hex(&data)
        }
    );
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    // the right digest (in upper case) is accepted
    let ok = vram_residency::seal::sha256_hex(&data).to_uppercase();
    system
        .seal(SealRequest::new("s", "m", 0, data).expected_sha256(ok))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_device_refuses_new_work_while_another_device_serves() {
    let system = start(2, 4 * MIB).await;
    let bad = system
        .seal(SealRequest::new("bad", "m", 0, pattern(20_000)))
        .await
        .unwrap();
    let good0 = system
        .seal(SealRequest::new("good0", "m", 0, pattern(20_000)))
        .await
        .unwrap();
    let good1 = system
        .seal(SealRequest::new("good1", "m", 1, pattern(20_000)))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "bad".into(),
                offset: 9,
                mask: 2,
            },
        )
        .await
        .unwrap();
    assert!(system.verify(&bad, VerifyMode::Full).await.is_err());

    // device 0: no new seals, no executions, even of intact shards
    let e = system
        .seal(SealRequest::new("new", "m", 0, pattern(10)))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        VramError::DeviceStopped {
            device: 0,
            cause: StopCause::IntegrityFailure
        }
    );
    assert!(!e.is_retriable());
    assert_eq!(
        system.execute(&good0, |v| v.len()).await.unwrap_err(),
        VramError::DeviceStopped {
            device: 0,
            cause: StopCause::IntegrityFailure
        }
    );
    // intact shards on it can still be verified (diagnosis) and released
    system.verify(&good0, VerifyMode::Full).await.unwrap();
    // device 1 keeps serving
    system
        .seal(SealRequest::new("new", "m", 1, pattern(10)))
        .await
        .unwrap();
    assert_eq!(system.execute(&good1, |v| v.len()).await.unwrap(), 20_000);

    let types = audit_types(&system).await;
    assert!(types.iter().any(|t| t == "SealVerificationFailed"));
    assert!(types.iter().any(|t| t == "DeviceStopped"));
    let lines = system.audit_lines().await.unwrap();
    let failed = lines
        .iter()
        .find(|l| l.contains("SealVerificationFailed"))
        .unwrap();
    assert!(failed.contains(r#""severity":"critical""#), "{failed}");
    assert!(failed.contains(r#""first_bad_chunk":0"#), "{failed}");

    // reset: device 0 accepts work again, the quarantined shard stays refused
    system.reset_device(0).await.unwrap();
    assert_eq!(system.execute(&good0, |v| v.len()).await.unwrap(), 20_000);
    assert!(matches!(
        system.execute(&bad, |v| v.len()).await,
        Err(VramError::SealVerificationFailed { .. })
    ));
    assert!(matches!(
        system.verify(&bad, VerifyMode::SignatureOnly).await,
        Err(VramError::SealVerificationFailed { .. })
    ));
    system
        .seal(SealRequest::new("new", "m", 0, pattern(10)))
        .await
        .unwrap();
    assert_eq!(system.release(bad).await.unwrap(), 20_000);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_frees_the_memory() {
    let system = start(1, MIB).await;
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(50_000)))
        .await
        .unwrap();
    let clone = shard.clone();
    drop(shard);
    // a clone is still alive: still resident
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 50_000);
    system.verify(&clone, VerifyMode::Full).await.unwrap();
    drop(clone);
    assert!(
        eventually(|| async { system.capacity(0).await.unwrap().used_bytes == 0 }).await,
        "memory was not freed after the last handle was dropped"
    );
    assert!(
        audit_types(&system)
            .await
            .iter()
            .any(|t| t == "VramDeallocated")
    );
    // explicit release of one clone makes the other clones stale
    let s = system
        .seal(SealRequest::new("s", "m", 0, pattern(10)))
        .await
        .unwrap();
    let other = s.clone();
    system.release(s).await.unwrap();
    assert!(matches!(
        system.verify(&other, VerifyMode::Full).await,
        Err(VramError::UnknownShard(_))
    ));
    assert!(matches!(
        system.release(other).await,
        Err(VramError::UnknownShard(_))
    ));
    // and a handle from the old seal never matches a new shard with the same id
    let old = system
        .seal(SealRequest::new("again", "m", 0, pattern(10)))
        .await
        .unwrap();
    let stale = old.clone();
    system.release(old).await.unwrap();
    let _new = system
        .seal(SealRequest::new("again", "m", 0, pattern(10)))
        .await
        .unwrap();
    assert!(matches!(
        system.execute(&stale, |v| v.len()).await,
        Err(VramError::UnknownShard(_))
    ));
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_verifies_across_four_devices() {
    let system = start(4, 8 * MIB).await;
    let mut shards = Vec::new();
    for d in 0..4u32 {
        for s in 0..3 {
            shards.push(
                system
                    .seal(SealRequest::new(
                        format!("d{d}-s{s}"),
                        "m",
                        d,
                        pattern(64 * 1024 + s * 1000),
                    ))
                    .await
                    .unwrap(),
            );
        }
    }
    let shards = Arc::new(shards);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000usize {
        let system = system.clone();
        let shards = Arc::clone(&shards);
        tasks.spawn(async move {
            let shard = &shards[i % shards.len()];
            let mode = match i % 3 {
                0 => VerifyMode::Full,
                1 => VerifyMode::Sampled { chunks: 4 },
                _ => VerifyMode::SignatureOnly,
            };
            system.verify(shard, mode).await.map(|r| r.mode)
        });
    }
    let mut ok = 0;
    let deadline = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
            ok += 1;
        }
    });
    deadline
        .await
        .expect("concurrent verifies did not finish in bounded time");
    assert_eq!(ok, 1000);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_verification_does_not_stall_another_device_and_release_waits_for_it() {
    let system = start(2, 4 * MIB).await;
    let slow = system
        .seal(SealRequest::new("slow", "m", 0, pattern(40_000)))
        .await
        .unwrap();
    let fast = system
        .seal(SealRequest::new("fast", "m", 1, pattern(40_000)))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::SlowDevice {
                millis_per_read: 1500,
            },
        )
        .await
        .unwrap();
    let s2 = system.clone();
    let slow2 = slow.clone();
    let pending = tokio::spawn(async move { s2.verify(&slow2, VerifyMode::Full).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // device 1 answers at once, and so does device 0's own mailbox
    let t = std::time::Instant::now();
    system.verify(&fast, VerifyMode::Full).await.unwrap();
    system.capacity(0).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "stalled for {:?}",
        t.elapsed()
    );
    // a release during the verification waits for it, then frees
    let freed = system.release(slow).await.unwrap();
    assert_eq!(freed, 40_000);
    assert!(
        pending.await.unwrap().is_ok(),
        "the in-flight verification must finish cleanly"
    );
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_faults_and_a_lost_device() {
    let system = start(2, MIB).await;
    system.inject_fault(0, Fault::FailNextAlloc).await.unwrap();
    let e = system
        .seal(SealRequest::new("a", "m", 0, pattern(100)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, VramError::AllocationFailed { device: 0, .. }),
        "{e:?}"
    );
    assert!(e.is_retriable());
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    let a = system
        .seal(SealRequest::new("a", "m", 0, pattern(100)))
        .await
        .unwrap();

    system.inject_fault(0, Fault::LoseDevice).await.unwrap();
    assert_eq!(
        system.verify(&a, VerifyMode::Full).await.unwrap_err(),
        VramError::DeviceLost { device: 0 }
    );
    assert_eq!(
        system
            .seal(SealRequest::new("b", "m", 0, pattern(100)))
            .await
            .unwrap_err(),
        VramError::DeviceLost { device: 0 }
    );
    assert_eq!(
        system.reset_device(0).await.unwrap_err(),
        VramError::DeviceLost { device: 0 }
    );
    // releasing on a lost device still balances the books
    assert_eq!(system.release(a).await.unwrap(), 100);
    // the other device is unaffected
    let b = system
        .seal(SealRequest::new("b", "m", 1, pattern(100)))
        .await
        .unwrap();
    system.verify(&b, VerifyMode::Full).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_device_actor_is_replaced_without_leaking_or_lying() {
    let system = start(2, MIB).await;
    let a = system
        .seal(SealRequest::new("a", "m", 0, pattern(70_000)))
        .await
        .unwrap();
    let b = system
        .seal(SealRequest::new("b", "m", 1, pattern(70_000)))
        .await
        .unwrap();
    system.inject_fault(0, Fault::CrashActor).await.unwrap();
    // a fresh actor takes over device 0 with an empty table and full capacity
    assert!(
        eventually(|| async {
            matches!(system.capacity(0).await, Ok(c) if c.used_bytes == 0 && c.available_bytes == MIB)
        })
        .await
    );
    // the old handle does not claim residency any more
    assert!(matches!(
        system.verify(&a, VerifyMode::SignatureOnly).await,
        Err(VramError::UnknownShard(_))
    ));
    assert!(matches!(
        system.execute(&a, |v| v.len()).await,
        Err(VramError::UnknownShard(_))
    ));
    assert!(matches!(
        system.verify_info(a.info()).await,
        Err(VramError::UnknownShard(_))
    ));
    // the device works again, and the other device never noticed
    system
        .seal(SealRequest::new("a", "m", 0, pattern(10)))
        .await
        .unwrap();
    system.verify(&b, VerifyMode::Full).await.unwrap();
    let lines = system.audit_lines().await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("DeviceStopped") && l.contains("device actor failed"))
    );
    drop(a); // dropping a stale handle is harmless
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_closure_that_panics_does_not_take_the_device_down() {
    let system = start(1, MIB).await;
    let s = system
        .seal(SealRequest::new("s", "m", 0, pattern(100)))
        .await
        .unwrap();
    let r: Result<(), _> = system.execute(&s, |_| panic!("user bug")).await;
    assert!(matches!(r, Err(VramError::ExecutionPanicked { .. })));
    assert_eq!(system.execute(&s, |v| v.len()).await.unwrap(), 100);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_work_in_flight_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let system = VramResidency::start(common::config(2, 64 * MIB).audit_log(&log))
        .await
        .unwrap();
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(4 << 20)))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let system = system.clone();
        let shard = shard.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                system.verify(&shard, VerifyMode::Full).await.map(|_| ())
            } else {
                system
                    .seal(SealRequest::new(format!("x{i}"), "m", 1, pattern(1 << 20)))
                    .await
                    .map(|_| ())
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    tokio::time::timeout(Duration::from_secs(60), system.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(()) | Err(VramError::ShuttingDown) => {}
            Err(e) => panic!("unexpected error during shutdown: {e:?}"),
        }
    }
    // after shutdown: clean errors, no panics, idempotent shutdown
    assert_eq!(
        system.capacity(0).await.unwrap_err(),
        VramError::ShuttingDown
    );
    assert_eq!(
        system
            .seal(SealRequest::new("late", "m", 0, pattern(10)))
            .await
            .unwrap_err(),
        VramError::ShuttingDown
    );
    system.shutdown().await.unwrap();
    drop(shard);
    // the log closed cleanly and verifies
    let report = vram_residency::audit::verify_log(
        &log,
        &vram_residency::WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap(),
    )
    .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.counts_by_type.get("AuditLogClosed"), Some(&1));
    let count = |t: &str| report.counts_by_type.get(t).copied().unwrap_or(0);
    // Every allocation was freed: the sealed shards, and the seals still uploading when the
    // device stopped (those end with `ShuttingDown`).
    assert_eq!(
        count("VramAllocated"),
        count("VramDeallocated"),
        "every allocation was freed at shutdown: {report:?}"
    );
    assert!(
        count("VramSealed") <= count("VramDeallocated"),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pointer_key_or_token_appears_in_any_output() {
    let system = start(1, 4 * MIB).await;
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(20_000)))
        .await
        .unwrap();
    let (ptr, view_dbg) = system
        .execute(&shard, |v| {
            (
                *v.device_ptr().as_kernel_arg(),
                format!("{v:?} {:?}", v.device_ptr()),
            )
        })
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "s".into(),
                offset: 1,
                mask: 1,
            },
        )
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    let seal_key = common::derived_key_hex(TOKEN.as_bytes(), b"llorch-seal-key-v1");
    let audit_key = common::derived_key_hex(TOKEN.as_bytes(), b"llorch-audit-key-v1");
    let mut outputs = vec![
        format!("{system:?}"),
        format!("{shard:?}"),
        format!("{:?}", shard.info()),
        serde_json::to_string(shard.info()).unwrap(),
        format!("{err} {err:?}"),
        view_dbg,
        format!("{:?}", common::config(1, MIB)),
    ];
    outputs.extend(system.audit_lines().await.unwrap());
    for out in &outputs {
        for secret in [
            TOKEN,
            &seal_key,
            &audit_key,
            &seal_key[..16],
            &audit_key[..16],
        ] {
            assert!(!out.contains(secret), "secret leaked in {out}");
        }
        assert!(
            !out.contains(&format!("{ptr:x}")) && !out.contains(&ptr.to_string()),
            "pointer leaked in {out}"
        );
    }
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_from_a_file_matches_sealing_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    let data = pattern(3 * 1024 * 1024 + 777);
    std::fs::write(&path, &data).unwrap();
    let system = VramResidency::start(common::config(2, 16 * MIB).staging_bytes(256 * 1024))
        .await
        .unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let from_file = system
        .seal(
            SealRequest::from_file("f", "file:model.bin", 0, &path)
                .on_progress(move |done, total| seen2.lock().unwrap().push((done, total))),
        )
        .await
        .unwrap();
    let from_mem = system
        .seal(SealRequest::new("f", "file:model.bin", 1, data.clone()))
        .await
        .unwrap();
    let (mut a, mut b) = (from_file.info().clone(), from_mem.info().clone());
    for i in [&mut a, &mut b] {
        i.sealed_at_unix_nanos = 0;
        i.signature.clear();
        i.gpu_device = 0;
    }
    assert_eq!(a, b);
    assert_eq!(
        from_file.info().digest,
        vram_residency::seal::sha256_hex(&data)
    );
    let progress = seen.lock().unwrap().clone();
    assert!(
        progress.len() >= 12,
        "progress reported per staging buffer: {progress:?}"
    );
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        progress.last(),
        Some(&(data.len() as u64, data.len() as u64))
    );
    system.verify(&from_file, VerifyMode::Full).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_binds_nonce_and_seal() {
    let system = start(1, MIB).await;
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(10_000)))
        .await
        .unwrap();
    let att = system
        .attest(&shard, b"challenger-nonce-123")
        .await
        .unwrap();
    let token = vram_residency::WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
    vram_residency::verify_attestation(&att, &token, b"challenger-nonce-123").unwrap();
    assert!(vram_residency::verify_attestation(&att, &token, b"challenger-nonce-124").is_err());
    let mut altered = att.clone();
    altered.verified_at_unix_nanos += 1;
    assert!(vram_residency::verify_attestation(&altered, &token, b"challenger-nonce-123").is_err());
    let mut upper = att.clone();
    upper.signature = upper.signature.to_uppercase();
    assert!(vram_residency::verify_attestation(&upper, &token, b"challenger-nonce-123").is_err());
    let mut tp = att.clone();
    tp.shard.total_shards = Some(u32::MAX);
    tp.shard.shard_index = Some(0);
    assert!(vram_residency::verify_attestation(&tp, &token, b"challenger-nonce-123").is_err());
    let other = vram_residency::WorkerToken::new(b"some-other-token-123456".to_vec()).unwrap();
    assert!(vram_residency::verify_attestation(&att, &other, b"challenger-nonce-123").is_err());
    assert!(
        audit_types(&system)
            .await
            .iter()
            .any(|t| t == "AttestationIssued")
    );
    // a corrupted shard cannot be attested
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "s".into(),
                offset: 0,
                mask: 1,
            },
        )
        .await
        .unwrap();
    assert!(system.attest(&shard, b"n").await.is_err());
    system.shutdown().await.unwrap();
}

/// A reader that delivers `data` slowly: `pause` before each 64 KiB.
struct SlowReader {
    data: std::io::Cursor<Vec<u8>>,
    pause: Duration,
}

impl std::io::Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.pause);
        let n = buf.len().min(64 * 1024);
        self.data.read(&mut buf[..n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_whose_caller_gives_up_does_not_leak_capacity() {
    let system = start(1, 4 * MIB).await;
    let data = pattern(512 * 1024);
    let reader = SlowReader {
        data: std::io::Cursor::new(data.clone()),
        pause: Duration::from_millis(25),
    };
    let req = SealRequest::from_reader("slow", "m", 0, reader, data.len() as u64);
    // the caller stops waiting long before the 8 slow pieces arrive
    let r = tokio::time::timeout(Duration::from_millis(50), system.seal(req)).await;
    assert!(r.is_err(), "the seal should still have been running");
    // the actor finishes the seal, finds nobody to hand it to, and releases it
    assert!(
        eventually(|| async { system.capacity(0).await.unwrap().used_bytes == 0 }).await,
        "an abandoned seal kept its memory"
    );
    // and the id is free again
    system
        .seal(SealRequest::new("slow", "m", 0, data))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_times_out_instead_of_holding_the_device() {
    let system = VramResidency::start(
        common::config(1, 4 * MIB).seal_stall_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let reader = SlowReader {
        data: std::io::Cursor::new(pattern(1000)),
        pause: Duration::from_secs(2),
    };
    let err = system
        .seal(SealRequest::from_reader("stalled", "m", 0, reader, 1000))
        .await
        .unwrap_err();
    assert!(matches!(err, VramError::Timeout(_)), "{err:?}");
    // the device answers again and its books are back to zero
    assert!(
        eventually(|| async { matches!(system.capacity(0).await, Ok(c) if c.used_bytes == 0) })
            .await
    );
    system
        .seal(SealRequest::new("next", "m", 0, pattern(10)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

/// Crashes device 0's actor and waits until a fresh one answers.
async fn crash_and_wait_for_restart(system: &VramResidency) {
    system.inject_fault(0, Fault::CrashActor).await.unwrap();
    assert!(
        eventually(|| async { system.capacity(0).await.is_ok() }).await,
        "device 0 did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_stop_survives_a_crash_restart() {
    let system = start(2, MIB).await;
    let shard = system
        .seal(SealRequest::new("s", "m", 0, pattern(20_000)))
        .await
        .unwrap();
    let flip = Fault::FlipBits {
        shard_id: "s".into(),
        offset: 9,
        mask: 1,
    };
    system.inject_fault(0, flip).await.unwrap();
    assert!(system.verify(&shard, VerifyMode::Full).await.is_err());
    crash_and_wait_for_restart(&system).await;
    // The replacement actor starts stopped: a crash does not clear a fail-closed stop.
    let refused = system
        .seal(SealRequest::new("t", "m", 0, pattern(10)))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        VramError::DeviceStopped {
            device: 0,
            cause: StopCause::IntegrityFailure
        }
    );
    system.reset_device(0).await.unwrap();
    system
        .seal(SealRequest::new("t", "m", 0, pattern(10)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_restarts_in_a_minute_then_the_device_is_left_crashed() {
    let system = start(2, MIB).await;
    for _ in 0..8 {
        crash_and_wait_for_restart(&system).await;
    }
    system
        .seal(SealRequest::new("after-8", "m", 0, pattern(10)))
        .await
        .unwrap();
    // The ninth crash within the minute is over budget: the device stays down, and says why.
    system.inject_fault(0, Fault::CrashActor).await.unwrap();
    let gone = eventually(|| async {
        matches!(
            system.capacity(0).await,
            Err(VramError::DeviceStopped {
                device: 0,
                cause: StopCause::Crashed
            })
        )
    })
    .await;
    assert!(gone, "{:?}", system.capacity(0).await);
    assert!(!system.capacity(0).await.unwrap_err().is_retriable());
    // The other device never noticed.
    system
        .seal(SealRequest::new("other", "m", 1, pattern(10)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_device_waits_for_room_while_another_keeps_answering() {
    // Back-pressure without shedding: every caller waits as long as it takes (the flood takes
    // longer than the default admission timeout).
    let system = VramResidency::start(
        common::config(2, 4 * MIB)
            .device_queue_limit(4)
            .admission_timeout(Duration::from_secs(600)),
    )
    .await
    .unwrap();
    let shard = system
        .seal(SealRequest::new("flooded", "m", 0, pattern(64 << 10)))
        .await
        .unwrap();
    let slow = Fault::SlowDevice {
        millis_per_read: 100,
    };
    system.inject_fault(0, slow).await.unwrap();
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let (system, shard) = (system.clone(), shard.clone());
            tokio::spawn(async move { system.verify(&shard, VerifyMode::Full).await })
        })
        .collect();
    // The flood is bounded: four requests in device 0's mailbox, the other callers waiting.
    let bounded = eventually(|| async {
        let load = system.device_load(0).unwrap();
        assert!(load.in_flight <= 4, "{load:?}");
        load.in_flight == 4 && load.waiting == 36
    })
    .await;
    assert!(bounded, "{:?}", system.device_load(0));
    // Another device answers at once, while device 0's callers are still waiting.
    let _elsewhere = system
        .seal(SealRequest::new("elsewhere", "m", 1, pattern(10)))
        .await
        .unwrap();
    assert_eq!(system.capacity(1).await.unwrap().used_bytes, 10);
    assert!(system.device_load(0).unwrap().waiting > 0);
    assert_eq!(system.device_load(1).unwrap().in_flight, 0);
    // A reset is always admitted, flood or not.
    system.reset_device(0).await.unwrap();
    assert!(system.device_load(0).unwrap().waiting > 0);
    // Back-pressure, not refusal: every caller is served in the end.
    for task in flood {
        task.await.unwrap().unwrap();
    }
    let load = system.device_load(0).unwrap();
    assert_eq!((load.in_flight, load.waiting), (0, 0));
    system.shutdown().await.unwrap();
}
