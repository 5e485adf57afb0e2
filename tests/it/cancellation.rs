//! Cancellation that stops work: a `seal` or `verify` whose future is dropped (here by
//! `tokio::time::timeout`) stops at its next piece, frees what it allocated, is audited
//! (`SealRejected` / `VerificationError` with `cancelled by caller`, the latter coalesced), and
//! counts as in flight in `device_load` until it has really stopped; the device keeps answering
//! meanwhile. A cancelled verification is still judged on what it read: a bad chunk among it
//! quarantines the shard.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::io::Read;
use std::time::{Duration, Instant};

use crate::common;
use vram_residency::{Fault, SealRequest, VerifyMode, VramError, VramResidency};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `len` bytes of a cheap generated stream, `delay` per `read` call (each call fills at most
/// 1 MiB), so a large seal takes a while without a large buffer in the test.
struct Generated {
    left: u64,
    delay: Duration,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(MIB as usize).min(self.left as usize);
        if n == 0 {
            return Ok(0);
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        buf[..n].fill(0x5a);
        self.left -= n as u64;
        Ok(n)
    }
}

fn generated(shard_id: &str, len: u64, delay: Duration) -> SealRequest {
    SealRequest::from_reader(
        shard_id,
        "hf:org/m@r",
        0,
        Generated { left: len, delay },
        len,
    )
}

/// The audit records about `shard_id`, as JSON events.
async fn events_of(system: &VramResidency, shard_id: &str) -> Vec<serde_json::Value> {
    system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .filter(|e| e["shard_id"] == shard_id)
        .collect()
}

/// Polls `f` every 10 ms until it is true or `within` passes.
async fn within<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_seal_stops_frees_its_memory_and_is_audited() {
    let system = common::start(1, 2 * GIB).await;
    let before = system.capacity(0).await.unwrap().used_bytes;

    // A 1 GiB seal, abandoned after 20 ms.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(20),
        system.seal(generated("big", GIB, Duration::ZERO)),
    )
    .await;
    assert!(abandoned.is_err(), "a 1 GiB seal finished within 20 ms");

    // The device answers at once: the abandoned upload does not hold its mailbox.
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_millis(500), system.capacity(0))
        .await
        .expect("capacity answered within 500 ms of the cancellation")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_millis(500));
    eprintln!(
        "capacity after the cancelled 1 GiB seal: {:?}",
        asked.elapsed()
    );
    let next = Instant::now();

    // The next (small) seal goes through within a second.
    let small = tokio::time::timeout(
        Duration::from_secs(1),
        system.seal(SealRequest::new(
            "small",
            "hf:org/m@r",
            0,
            vec![7u8; 64 * 1024],
        )),
    )
    .await
    .expect("the next seal completed within 1 s")
    .unwrap();
    eprintln!("the next 64 KiB seal: {:?}", next.elapsed());
    let settling = Instant::now();

    // The cancelled seal counts as in flight until its memory is back: whenever nothing is in
    // flight, the books hold exactly the small shard.
    let settled = within(Duration::from_secs(3), || async {
        let load = system.device_load(0).unwrap();
        if load.in_flight != 0 {
            return false;
        }
        let used = system.capacity(0).await.unwrap().used_bytes;
        assert_eq!(
            used,
            before + 64 * 1024,
            "nothing in flight, yet memory still held"
        );
        true
    })
    .await;
    assert!(
        settled,
        "device_load did not return to 0 in flight within 3 s"
    );
    eprintln!("accounting exact again after: {:?}", settling.elapsed());

    // On record: the seal was refused as cancelled and its allocation freed; never sealed.
    let events = events_of(&system, "big").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(!kinds.contains(&"VramSealed"), "{kinds:?}");
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "SealRejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{kinds:?}");
    assert_eq!(rejected[0]["reason"], "cancelled by caller");
    assert_eq!(kinds.iter().filter(|k| **k == "VramAllocated").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "VramDeallocated").count(), 1);

    system.release(small).await.unwrap();
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, before);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_answers_while_a_seal_uploads() {
    let system = common::start(1, 256 * MIB).await;
    let other = system
        .seal(SealRequest::new(
            "other",
            "hf:org/m@r",
            0,
            vec![3u8; MIB as usize],
        ))
        .await
        .unwrap();
    // 64 MiB at 1 MiB per 20 ms: well over a second of upload.
    let sealer = system.clone();
    let sealing = tokio::spawn(async move {
        sealer
            .seal(generated("slow", 64 * MIB, Duration::from_millis(20)))
            .await
    });
    // Once the upload has started, its allocation counts as used…
    let started = within(Duration::from_secs(5), || async {
        system.capacity(0).await.unwrap().used_bytes == 65 * MIB
    })
    .await;
    assert!(started, "the seal's allocation was not counted as used");
    assert!(!sealing.is_finished());
    // …and the mailbox answers between its pieces.
    let asked = Instant::now();
    system.capacity(0).await.unwrap();
    system.verify(&other, VerifyMode::Full).await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "capacity and verify waited {:?} for the upload",
        asked.elapsed()
    );
    assert!(!sealing.is_finished(), "the upload ended before the check");
    let slow = sealing.await.unwrap().unwrap();
    system.verify(&slow, VerifyMode::Full).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_verify_stops_hashing_and_leaves_the_shard_intact() {
    let system = common::start(1, 256 * MIB).await;
    let shard = system
        .seal(SealRequest::new(
            "large",
            "hf:org/m@r",
            0,
            vec![9u8; 64 << 20],
        ))
        .await
        .unwrap();
    // Each read of device memory takes 100 ms: a full pass of 8 pieces takes most of a second.
    system
        .inject_fault(
            0,
            Fault::SlowDevice {
                millis_per_read: 100,
            },
        )
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        system.verify(&shard, VerifyMode::Full),
    )
    .await;
    assert!(abandoned.is_err());
    // The hashing stops at the next piece: the device is idle again well before a full pass.
    let stopped = within(Duration::from_millis(600), || async {
        system.device_load(0).unwrap().in_flight == 0
    })
    .await;
    assert!(stopped, "the abandoned verification kept the device busy");
    // On record as a verification that did not complete, not as a pass.
    let kinds: Vec<serde_json::Value> = events_of(&system, "large").await;
    let errors: Vec<_> = kinds
        .iter()
        .filter(|e| e["type"] == "VerificationError")
        .collect();
    assert_eq!(errors.len(), 1, "{kinds:?}");
    assert_eq!(errors[0]["error"], "cancelled by caller");
    assert!(
        !kinds.iter().any(|e| e["type"] == "SealVerified"),
        "{kinds:?}"
    );

    // The shard is untouched and still verifies.
    system
        .inject_fault(0, Fault::SlowDevice { millis_per_read: 0 })
        .await
        .unwrap();
    let report = system.verify(&shard, VerifyMode::Full).await.unwrap();
    assert_eq!(report.chunks_checked, report.total_chunks);
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 64 << 20);
    system.shutdown().await.unwrap();
}

/// A verification dropped by its caller is still judged on the pieces it read: a bad chunk among
/// them quarantines the shard and stops the device, as a finished verification would. Clients
/// that always time out before a full pass can no longer keep a corrupt shard in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_verify_that_read_a_bad_chunk_still_quarantines_the_shard() {
    let system = common::start(1, 256 * MIB).await;
    let shard = system
        .seal(SealRequest::new(
            "corrupt",
            "hf:org/m@r",
            0,
            vec![9u8; 64 << 20],
        ))
        .await
        .unwrap();
    // A flipped bit in chunk 1 (of 16384 4 KiB chunks, 2048 to a piece: in the first piece).
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "corrupt".into(),
                offset: 5_000,
                mask: 0x01,
            },
        )
        .await
        .unwrap();
    // Each read of device memory (one piece) takes 100 ms: a full pass takes most of a second.
    system
        .inject_fault(
            0,
            Fault::SlowDevice {
                millis_per_read: 100,
            },
        )
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(250),
        system.verify(&shard, VerifyMode::Full),
    )
    .await;
    assert!(abandoned.is_err(), "a slow full pass finished in 250 ms");
    let stopped = within(Duration::from_secs(2), || async {
        system.device_load(0).unwrap().in_flight == 0
    })
    .await;
    assert!(stopped, "the abandoned verification never stopped");

    // No verification finished, yet the shard is quarantined, its bad chunk named.
    let err = system
        .lease(&shard, VerifyMode::SignatureOnly)
        .await
        .map(|_| ())
        .unwrap_err();
    match &err {
        VramError::SealVerificationFailed {
            shard_id,
            first_bad_chunk,
            bad_chunk_count,
            bad_chunks,
            ..
        } => {
            assert_eq!(shard_id, "corrupt");
            assert_eq!(*first_bad_chunk, Some(1), "{err:?}");
            assert_eq!(*bad_chunk_count, 1, "{err:?}");
            assert_eq!((bad_chunks[0].offset, bad_chunks[0].len), (4096, 4096));
        }
        other => panic!("expected SealVerificationFailed, got {other:?}"),
    }
    // Fail-closed: the device takes no new seal until it is reset.
    let refused = system
        .seal(SealRequest::new("after", "hf:org/m@r", 0, vec![1u8; 4096]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, VramError::DeviceStopped { .. }),
        "{refused:?}"
    );
    // On record critically, once, with the chunk; not as a cancellation or a pass.
    let events = events_of(&system, "corrupt").await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "SealVerificationFailed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["first_bad_chunk"], 1);
    assert_eq!(failed[0]["severity"], "critical");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "VerificationError" || e["type"] == "SealVerified"),
        "{events:?}"
    );
    let lines = system.audit_lines().await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("\"DeviceStopped\"")),
        "{lines:?}"
    );
    system.shutdown().await.unwrap();
}

/// A client that keeps dropping its verifications cannot grow the audit log: the first
/// cancellation is written in full, the rest are counted (`vram_refusals_total{reason=
/// "cancelled_verification"}`) and summed up in one `RefusalsSuppressed` per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_dropped_verifies_cannot_flood_the_audit_log() {
    const N: usize = 20;
    let system = common::start(1, 256 * MIB).await;
    // Four pieces of 8 MiB, 50 ms each: every verification below is dropped in its first.
    let shard = system
        .seal(SealRequest::new(
            "dropped",
            "hf:org/m@r",
            0,
            vec![4u8; 32 << 20],
        ))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::SlowDevice {
                millis_per_read: 50,
            },
        )
        .await
        .unwrap();
    let before = system.audit_lines().await.unwrap().len();
    for _ in 0..N {
        let abandoned = tokio::time::timeout(
            Duration::from_millis(20),
            system.verify(&shard, VerifyMode::Full),
        )
        .await;
        assert!(abandoned.is_err());
        let stopped = within(Duration::from_secs(2), || async {
            system.device_load(0).unwrap().in_flight == 0
        })
        .await;
        assert!(stopped, "an abandoned verification never stopped");
    }
    let lines = system.audit_lines().await.unwrap();
    let added: Vec<serde_json::Value> = lines[before..]
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
        .collect();
    // The first in full; the rest only counted (their summary comes at the end of the minute).
    assert!(added.len() <= 2, "{N} dropped verifies wrote {added:?}");
    let errors: Vec<_> = added
        .iter()
        .filter(|e| e["type"] == "VerificationError")
        .collect();
    assert_eq!(errors.len(), 1, "{added:?}");
    assert_eq!(errors[0]["error"], "cancelled by caller");
    assert!(
        !added.iter().any(|e| e["type"] == "SealVerified"),
        "{added:?}"
    );

    // The shard is untouched and verifies once the device is fast again.
    system
        .inject_fault(0, Fault::SlowDevice { millis_per_read: 0 })
        .await
        .unwrap();
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system.shutdown().await.unwrap();
}
