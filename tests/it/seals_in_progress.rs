//! Seals in progress meet the rest of the device: a fail-closed stop ends them unrecorded, a
//! call timeout cancels them, and a device uploads one seal at a time with the others queued
//! (their memory is not allocated until their turn).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::time::Duration;

use crate::common;
use vram_residency::{Fault, SealRequest, VerifyMode, VramError};

const MIB: u64 = 1 << 20;

/// A seal of `len` bytes, 64 KiB per read, `delay` before each read: one that takes a while.
fn slow(shard_id: &str, len: u64, delay: Duration) -> SealRequest {
    common::slow_seal(shard_id, len, 64 << 10, delay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_stop_ends_a_seal_in_progress_unrecorded() {
    let system = common::start(1, 64 * MIB).await;
    let bad = system
        .seal(SealRequest::new("bad", "m", 0, common::pattern(64 << 10)))
        .await
        .unwrap();
    let used_before = system.capacity(0).await.unwrap().used_bytes;
    // About 1.6 s of upload (32 reads of 64 KiB, 50 ms each).
    let uploading = {
        let system = system.clone();
        tokio::spawn(async move {
            system
                .seal(slow("late", 2 * MIB, Duration::from_millis(50)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "bad".into(),
                offset: 5,
                mask: 1,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        system.verify(&bad, VerifyMode::Full).await,
        Err(VramError::SealVerificationFailed { .. })
    ));
    // The device stopped fail-closed while "late" uploaded: it is not signed or recorded.
    let late = uploading.await.unwrap();
    assert!(
        matches!(late, Err(VramError::DeviceStopped { device: 0, .. })),
        "{late:?}"
    );
    let types = common::audit_types(&system).await;
    assert_eq!(
        types.iter().filter(|t| *t == "VramSealed").count(),
        1,
        "{types:?}"
    );
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        used_before,
        "the stopped seal's memory was not freed"
    );
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_past_its_call_timeout_is_cancelled_not_finished() {
    let system = vram_residency::VramResidency::start(
        common::config(1, 64 * MIB)
            .call_timeout(Duration::from_secs(1))
            .staging_bytes(256 << 10),
    )
    .await
    .unwrap();
    // About 3.2 s of upload in 256 KiB pieces (4 reads of 50 ms each).
    let timed_out = system
        .seal(slow("slow", 4 * MIB, Duration::from_millis(50)))
        .await;
    assert!(
        matches!(timed_out, Err(VramError::Timeout(_))),
        "{timed_out:?}"
    );
    // The device stops it at its next piece and frees its memory; it is never sealed.
    let stopped = common::eventually(|| async {
        system.device_load(0).unwrap().in_flight == 0
            && system.capacity(0).await.unwrap().used_bytes == 0
    })
    .await;
    assert!(stopped, "the timed-out seal still holds its device");
    let types = common::audit_types(&system).await;
    assert!(!types.iter().any(|t| t == "VramSealed"), "{types:?}");
    assert!(types.iter().any(|t| t == "SealRejected"), "{types:?}");
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_seals_on_one_device_upload_one_at_a_time_and_all_land() {
    let system = common::start(1, 64 * MIB).await;
    let first = {
        let system = system.clone();
        tokio::spawn(async move {
            system
                .seal(slow("first", MIB, Duration::from_millis(20)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Queued behind "first": nothing of it is allocated yet, and the device still answers.
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let system = system.clone();
            tokio::spawn(async move {
                system
                    .seal(SealRequest::new(
                        format!("queued-{i}"),
                        "m",
                        0,
                        common::pattern(256 << 10),
                    ))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = system.capacity(0).await.unwrap().used_bytes;
    assert!(
        during <= MIB,
        "queued seals allocated before their turn: {during} bytes used"
    );
    // Keep the handles: dropping a shard's last handle releases it.
    let mut shards = vec![first.await.unwrap().unwrap()];
    for q in queued {
        shards.push(q.await.unwrap().unwrap());
    }
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        MIB + 3 * (256 << 10)
    );
    system.shutdown().await.unwrap();
}
