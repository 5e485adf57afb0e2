//! Serving from sealed weights: leases that outlive a release and survive a quarantine, and
//! `execute` closures that run off the device actor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code fails loudly

use std::time::{Duration, Instant};

use crate::common::{self, pattern};
use vram_residency::{Fault, SealRequest, VerifyMode, VramError};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_release_holding_its_memory_until_it_drops() {
    let system = common::start(1, 64 << 20).await;
    let data = pattern(MIB + 123);
    let shard = system
        .seal(SealRequest::new("leased", "hf:org/m@r", 0, data.clone()))
        .await
        .unwrap();
    let lease = system
        .lease(&shard, VerifyMode::Sampled { chunks: 4 })
        .await
        .unwrap();
    assert_eq!((lease.shard_id(), lease.gpu_device()), ("leased", 0));
    assert_eq!(lease.len(), data.len() as u64);

    // The release answers at once; the memory is still held, and counted, for the lease.
    let freed = tokio::time::timeout(Duration::from_secs(10), system.release(shard))
        .await
        .expect("release does not wait for the lease")
        .unwrap();
    assert_eq!(freed, data.len() as u64);
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        data.len() as u64
    );
    let mut back = vec![0u8; 4096];
    lease.read(MIB as u64 - 4000, &mut back).unwrap();
    assert_eq!(back, data[MIB - 4000..MIB + 96]);
    // A lease is 'static + Send + Sync: it can move to another task.
    let lease = tokio::spawn(async move {
        let mut first = [0u8; 16];
        lease.read(0, &mut first).unwrap();
        assert_eq!(first, data[..16]);
        lease
    })
    .await
    .unwrap();

    drop(lease);
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_quarantine_after_the_lease_keeps_its_memory_and_check_reports_it() {
    let system = common::start(1, 64 << 20).await;
    let data = pattern(MIB);
    let shard = system
        .seal(SealRequest::new("weights", "hf:org/m@r", 0, data.clone()))
        .await
        .unwrap();
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "weights".into(),
                offset: 77,
                mask: 1,
            },
        )
        .await
        .unwrap();
    let err = lease.check(VerifyMode::Full).await.unwrap_err();
    assert!(err.is_integrity_failure(), "{err:?}");
    // The quarantine did not pull the memory from under the lease: it still reads. (Which
    // byte it sees depends on the backend: the simulated device copies on write for a reader
    // that already holds the bytes; a GPU's memory is one.)
    let mut back = vec![0u8; 100];
    lease.read(0, &mut back).unwrap();
    assert!(back[77] == data[77] || back[77] == data[77] ^ 1);
    // New leases and executions are refused.
    assert!(system.lease(&shard, VerifyMode::Full).await.is_err());
    system.shutdown().await.unwrap();
}

/// A closure that blocks until told to finish, on device 0, while another shard on device 0
/// is verified: the verification must answer while the closure still runs.
async fn verify_answers_while_a_closure_runs() {
    let system = common::start(1, 64 << 20).await;
    let busy = system
        .seal(SealRequest::new("busy", "hf:org/m@r", 0, pattern(MIB)))
        .await
        .unwrap();
    let other = system
        .seal(SealRequest::new("other", "hf:org/m@r", 0, pattern(MIB)))
        .await
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let runner = system.clone();
    let closure = tokio::spawn(async move {
        runner
            .execute(&busy, move |view| {
                let _ = started_tx.send(());
                // Held until the test says so (at most 30 s, so a failure cannot hang).
                let _ = finish_rx.recv_timeout(Duration::from_secs(30));
                view.len()
            })
            .await
    });
    started_rx.await.unwrap();
    let asked = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        system.verify(&other, VerifyMode::Full),
    )
    .await
    .expect("verify answered while the execute closure was still running")
    .unwrap();
    // A figure for the record (`--nocapture`), not a threshold.
    eprintln!(
        "verify of a 1 MiB shard while an execute closure holds the same device: {:?}",
        asked.elapsed()
    );
    assert_eq!(report.shard_id, "other");
    assert!(!closure.is_finished());
    finish_tx.send(()).unwrap();
    assert_eq!(closure.await.unwrap().unwrap(), MIB as u64);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_closure_does_not_hold_the_device_on_a_multi_thread_runtime() {
    verify_answers_while_a_closure_runs().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_execute_closure_does_not_hold_the_device_on_a_current_thread_runtime() {
    verify_answers_while_a_closure_runs().await;
}

#[tokio::test]
async fn a_lease_of_a_released_or_unknown_shard_is_refused_and_changes_nothing() {
    let system = common::start(1, 64 << 20).await;
    let shard = system
        .seal(SealRequest::new("gone", "hf:org/m@r", 0, pattern(MIB)))
        .await
        .unwrap();
    let stale = shard.clone();
    system.release(shard).await.unwrap();
    let err = system.lease(&stale, VerifyMode::Full).await.unwrap_err();
    assert!(matches!(err, VramError::UnknownShard(_)), "{err:?}");
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    system.shutdown().await.unwrap();
}
