//! The device actor driven through its mailbox, without the public handle: seal, verify,
//! release and fail-closed, and — in the tokio-test style, polling futures step by step — the
//! promises the mailbox makes while work is in flight.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio_test::{assert_pending, assert_ready, task};

use super::{BackendSource, DeviceSettings, GpuActor, GpuArgs};
use crate::actors::audit_actor::{AuditActor, AuditArgs};
use crate::actors::seal_keeper::SealKeeper;
use crate::config::AuditSinkConfig;
use crate::error::VramError;
use crate::gpu::sim::SimDevice;
use crate::messages::gpu::{Cancel, GpuMsg, ResidencyQuery, SealJob, SealMeta, ShardRef};
use crate::seal::claims::ShardInfo;
use crate::seal::keys::WorkerToken;
use crate::types::{
    ChunkSpan, Fault, SealSource, StopCause, VerifyMode, VerifyReport, VramCapacity,
};

fn token() -> WorkerToken {
    WorkerToken::new(b"gpu-actor-test-token".to_vec()).unwrap()
}

/// One device actor on a simulated device of `capacity` bytes (4 KiB chunks), with its seal
/// keeper and an in-memory audit actor.
async fn spawn_gpu(capacity: u64) -> ActorRef<GpuMsg> {
    spawn_gpu_on(Box::new(SimDevice::new(0, capacity))).await
}

/// One device actor on `backend` (see [`spawn_gpu`]).
async fn spawn_gpu_on(backend: Box<dyn crate::gpu::DeviceBackend>) -> ActorRef<GpuMsg> {
    let (audit, _) = Actor::spawn(
        None,
        AuditActor,
        AuditArgs {
            sink: AuditSinkConfig::Memory,
            token: token(),
            worker_id: "w".into(),
            batch_size: 1,
            flush_interval: Duration::from_millis(5),
            buffer_limit: 1000,
            memory_lines: 1000,
        },
    )
    .await
    .unwrap();
    let keeper_args = crate::actors::seal_keeper::SealKeeperArgs::derived(token()).unwrap();
    let (keeper, _) = Actor::spawn(None, SealKeeper, keeper_args).await.unwrap();
    let (gpu, _) = Actor::spawn(
        None,
        GpuActor,
        GpuArgs {
            device: 0,
            backend: BackendSource::Ready(backend),
            settings: DeviceSettings::for_tests(),
            seal_keeper: keeper,
            audit,
            stop: Default::default(),
        },
    )
    .await
    .unwrap();
    gpu
}

/// Calls the actor and unwraps the messaging layer (the actor is alive in these tests).
async fn call<T: Send + 'static>(
    gpu: &ActorRef<GpuMsg>,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
) -> T {
    gpu.call(build, None).await.unwrap().unwrap()
}

fn shard(id: &str, handle_id: u64) -> ShardRef {
    ShardRef {
        shard_id: id.into(),
        handle_id,
    }
}

async fn seal(
    gpu: &ActorRef<GpuMsg>,
    id: &str,
    len: usize,
    handle_id: u64,
) -> Result<ShardInfo, VramError> {
    let job = Box::new(SealJob {
        meta: SealMeta {
            shard_id: id.into(),
            model_ref: "m".into(),
            expected_sha256: None,
            tensor_parallel: None,
            handle_id,
            tensors: None,
            lead_padding: 0,
            provenance: None,
            header: None,
        },
        source: SealSource::Bytes((0..len).map(|i| (i % 251) as u8).collect()),
        progress: None,
        len: len as u64,
        cancel: Cancel::new(),
    });
    call(gpu, |reply| GpuMsg::Seal { job, reply }).await
}

async fn verify(
    gpu: &ActorRef<GpuMsg>,
    shard: ShardRef,
    info: &ShardInfo,
    mode: VerifyMode,
) -> Result<VerifyReport, VramError> {
    let info = Box::new(info.clone());
    call(gpu, |reply| GpuMsg::Verify {
        shard,
        info,
        mode,
        cancel: Cancel::new(),
        reply,
    })
    .await
}

async fn release(gpu: &ActorRef<GpuMsg>, shard: ShardRef) -> Result<u64, VramError> {
    call(gpu, |reply| GpuMsg::Release {
        shard,
        reply: Some(reply),
    })
    .await
}

async fn inject(gpu: &ActorRef<GpuMsg>, fault: Fault) -> Result<(), VramError> {
    call(gpu, |reply| GpuMsg::InjectFault { fault, reply }).await
}

async fn capacity(gpu: &ActorRef<GpuMsg>) -> VramCapacity {
    call(gpu, |reply| GpuMsg::Capacity { reply }).await.unwrap()
}

fn flip(shard_id: &str, offset: u64) -> Fault {
    Fault::FlipBits {
        shard_id: shard_id.into(),
        offset,
        mask: 1,
    }
}

#[tokio::test]
async fn seal_verify_release_through_the_mailbox() {
    let gpu = spawn_gpu(100_000).await;
    let info = seal(&gpu, "a", 10_000, 7).await.unwrap();
    assert_eq!(info.vram_bytes, 10_000);
    let report = verify(&gpu, shard("a", 7), &info, VerifyMode::Full).await;
    assert_eq!(report.unwrap().chunks_checked, 3);
    // A wrong handle id is unknown, and changes nothing.
    let r = release(&gpu, shard("a", 8)).await;
    assert!(matches!(r, Err(VramError::UnknownShard(_))));
    assert_eq!(capacity(&gpu).await.used_bytes, 10_000);
    assert_eq!(release(&gpu, shard("a", 7)).await, Ok(10_000));
    assert_eq!(capacity(&gpu).await.used_bytes, 0);
    let status = call(&gpu, |reply| GpuMsg::Status { reply }).await;
    assert_eq!(status.shards, 0);
    assert!(status.stopped.is_none());
    gpu.stop(None);
}

#[tokio::test]
async fn a_failed_verify_quarantines_and_stops_until_reset() {
    let gpu = spawn_gpu(100_000).await;
    let info = seal(&gpu, "a", 9_000, 1).await.unwrap();
    inject(&gpu, flip("a", 8_999)).await.unwrap();
    match verify(&gpu, shard("a", 1), &info, VerifyMode::Full).await {
        Err(VramError::SealVerificationFailed {
            first_bad_chunk,
            bad_chunks,
            ..
        }) => {
            assert_eq!(first_bad_chunk, Some(2));
            let span = ChunkSpan {
                index: 2,
                offset: 8192,
                len: 808,
            };
            assert_eq!(bad_chunks, vec![span]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        seal(&gpu, "b", 10, 2).await,
        Err(VramError::DeviceStopped {
            device: 0,
            cause: StopCause::IntegrityFailure
        })
    );
    call(&gpu, |reply| GpuMsg::Reset { reply }).await.unwrap();
    seal(&gpu, "b", 10, 2).await.unwrap();
    // The quarantined shard stays refused after the reset.
    let query = ResidencyQuery::Handle(shard("a", 1), Box::new(info));
    let r = call(&gpu, |reply| GpuMsg::Residency { query, reply }).await;
    assert!(matches!(r, Err(VramError::SealVerificationFailed { .. })));
    gpu.stop(None);
}

/// A device whose every read takes a second: long enough that a verification is certainly still
/// hashing while the next messages are handled.
async fn slow_device_with(id: &str, len: usize) -> (ActorRef<GpuMsg>, ShardInfo) {
    let gpu = spawn_gpu(1 << 20).await;
    let info = seal(&gpu, id, len, 1).await.unwrap();
    let slow = Fault::SlowDevice {
        millis_per_read: 1_000,
    };
    inject(&gpu, slow).await.unwrap();
    (gpu, info)
}

#[tokio::test]
async fn capacity_is_answered_while_a_long_verification_is_pending() {
    let (gpu, info) = slow_device_with("a", 20_000).await;
    let mut verifying = task::spawn(verify(&gpu, shard("a", 1), &info, VerifyMode::Full));
    assert_pending!(verifying.poll()); // sent; the actor hands the hashing off
    // The mailbox keeps answering while the shard is being hashed.
    let cap = capacity(&gpu).await;
    assert_eq!(cap.used_bytes, 20_000);
    assert_pending!(verifying.poll());
    let report = verifying.await.unwrap();
    assert_eq!(report.chunks_checked, 5);
    gpu.stop(None);
}

#[tokio::test]
async fn a_release_waits_for_the_verification_reading_the_shard() {
    let (gpu, info) = slow_device_with("a", 20_000).await;
    let mut verifying = task::spawn(verify(&gpu, shard("a", 1), &info, VerifyMode::Full));
    assert_pending!(verifying.poll());
    let mut releasing = task::spawn(release(&gpu, shard("a", 1)));
    assert_pending!(releasing.poll());
    // The release is deferred, not refused: the memory is still held…
    assert_eq!(capacity(&gpu).await.used_bytes, 20_000);
    assert_pending!(releasing.poll());
    assert!(!releasing.is_woken());
    // …until the verification that is reading it has finished.
    verifying.await.unwrap();
    let freed = releasing.await;
    assert_eq!(freed, Ok(20_000));
    assert_eq!(capacity(&gpu).await.used_bytes, 0);
    gpu.stop(None);
}

#[tokio::test]
async fn a_fault_sent_during_an_upload_never_touches_the_memory_being_uploaded() {
    let gpu = spawn_gpu(1 << 20).await;
    // Three requests sent before any is answered: a seal, a fault on what it seals, a second
    // seal. The seal takes one message per piece, so the other two are handled between its
    // pieces: the fault finds no shard `a` yet (memory still uploading is nobody's to flip), or,
    // if the seal ended first, flips the sealed shard and verification sees it. Either way the
    // verdict matches what happened, and the second seal does not wait for the first.
    let mut sealing = task::spawn(seal(&gpu, "a", 300_000, 1));
    let mut faulting = task::spawn(inject(&gpu, flip("a", 5)));
    let mut second = task::spawn(seal(&gpu, "b", 1_000, 2));
    assert_pending!(sealing.poll());
    assert_pending!(faulting.poll());
    assert_pending!(second.poll());
    let info = sealing.await.unwrap();
    let fault = faulting.await;
    second.await.unwrap();
    let r = verify(&gpu, shard("a", 1), &info, VerifyMode::Full).await;
    match fault {
        Ok(()) => assert!(matches!(r, Err(VramError::SealVerificationFailed { .. }))),
        Err(e) => {
            assert!(matches!(e, VramError::UnknownShard(_)), "{e:?}");
            r.unwrap();
        }
    }
    gpu.stop(None);
}

#[tokio::test]
async fn a_verification_answer_is_ready_only_after_the_hashing() {
    let (gpu, info) = slow_device_with("a", 4096).await;
    let mut verifying = task::spawn(verify(&gpu, shard("a", 1), &info, VerifyMode::Full));
    assert_pending!(verifying.poll());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // By now the slow read has finished and the actor has answered.
    let report = assert_ready!(verifying.poll()).unwrap();
    assert!(report.elapsed >= Duration::from_millis(1_000));
    gpu.stop(None);
}

async fn attest(
    gpu: &ActorRef<GpuMsg>,
    shard: ShardRef,
    info: &ShardInfo,
) -> Result<crate::attestation::Attestation, VramError> {
    let info = Box::new(info.clone());
    let draft = Box::new(crate::messages::gpu::AttestDraft {
        nonce: b"challenger-nonce-0123".to_vec(),
        verified_mode: VerifyMode::Full,
        verified_at_unix_nanos: 1,
        audit_head: crate::types::AuditHead::new(0, &[0; 32]),
    });
    call(gpu, |reply| GpuMsg::Attest {
        shard,
        info,
        draft,
        reply,
    })
    .await
}

/// The signing step re-checks residency in the device actor: a quarantine that lands after the
/// caller's verification passed (a scrub, another caller's verify) is caught there, and nothing
/// is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attest_signs_only_a_resident_unquarantined_shard() {
    let gpu = spawn_gpu(1 << 20).await;
    let info = seal(&gpu, "a", 40_000, 1).await.unwrap();
    verify(&gpu, shard("a", 1), &info, VerifyMode::Full)
        .await
        .unwrap();
    let att = attest(&gpu, shard("a", 1), &info).await.unwrap();
    assert_eq!(att.backend, "simulated");
    assert_eq!(att.device_id, "simulated device 0");
    crate::attestation::verify_attestation(&att, &token(), b"challenger-nonce-0123").unwrap();
    // A stale handle or another record: refused.
    assert!(matches!(
        attest(&gpu, shard("a", 2), &info).await,
        Err(VramError::UnknownShard(_))
    ));
    let mut other = info.clone();
    other.vram_bytes += 1;
    assert!(attest(&gpu, shard("a", 1), &other).await.is_err());

    // The caller's verification passed above; now a quarantine lands before the signature.
    let flip = Fault::FlipBits {
        shard_id: "a".into(),
        offset: 10,
        mask: 1,
    };
    call(&gpu, |reply| GpuMsg::InjectFault { fault: flip, reply })
        .await
        .unwrap();
    assert!(
        verify(&gpu, shard("a", 1), &info, VerifyMode::Full)
            .await
            .is_err()
    );
    assert!(matches!(
        attest(&gpu, shard("a", 1), &info).await,
        Err(VramError::SealVerificationFailed { .. } | VramError::DeviceStopped { .. })
    ));
}

/// A device whose DMA corrupts one byte of every upload and whose reader hashes "on the
/// device": a simulated device underneath, so what verification reads is what really landed.
mod bad_dma {
    use std::sync::Arc;

    use crate::gpu::sim::SimDevice;
    use crate::gpu::{
        AllocationId, BackendError, DeviceAddress, DeviceBackend, DeviceIdentity, DeviceReader,
        DeviceUpload,
    };
    use crate::seal::merkle::Hash;

    pub(super) struct BadDma(pub(super) SimDevice);

    struct Upload(Box<dyn DeviceUpload>);

    impl DeviceUpload for Upload {
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
            let mut landed = data.to_vec();
            // The byte at offset 5000 of the allocation arrives with a bit flipped.
            if let Some(i) = 5000u64.checked_sub(offset)
                && let Some(b) = landed.get_mut(i as usize)
            {
                *b ^= 0x04;
            }
            self.0.write(offset, &landed)
        }

        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }

    struct Reader(Arc<dyn DeviceReader>);

    impl DeviceReader for Reader {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
            self.0.read(offset, buf)
        }
        fn leaf_hashes(&self, chunk: u64, indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
            self.0.leaf_hashes(chunk, indices)
        }
        fn hashes_on_device(&self, _chunk_size: u64) -> bool {
            true
        }
    }

    impl DeviceBackend for BadDma {
        fn identity(&self) -> DeviceIdentity {
            self.0.identity()
        }
        fn free_bytes(&self) -> Result<u64, BackendError> {
            self.0.free_bytes()
        }
        fn allocate(&mut self, len: u64, lead: u64) -> Result<AllocationId, BackendError> {
            self.0.allocate(len, lead)
        }
        fn begin_upload(
            &mut self,
            id: AllocationId,
        ) -> Result<Box<dyn DeviceUpload>, BackendError> {
            Ok(Box::new(Upload(self.0.begin_upload(id)?)))
        }
        fn finish_upload(
            &mut self,
            id: AllocationId,
            upload: Box<dyn DeviceUpload>,
        ) -> Result<(), BackendError> {
            match upload.into_any().downcast::<Upload>() {
                Ok(ours) => self.0.finish_upload(id, ours.0),
                Err(_) => Err(BackendError::Worker("not our upload".into())),
            }
        }
        fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError> {
            Ok(Arc::new(Reader(self.0.reader(id)?)))
        }
        fn device_address(&self, id: AllocationId) -> Result<DeviceAddress, BackendError> {
            self.0.device_address(id)
        }
        fn free(&mut self, id: AllocationId) -> Result<u64, BackendError> {
            self.0.free(id)
        }
    }
}

/// The seal covers what landed on the device: a backend that hashes in place re-hashes every
/// leaf after the upload, and a corrupted copy fails the seal with nothing left allocated.
#[tokio::test]
async fn a_seal_refuses_an_upload_that_landed_corrupted() {
    let gpu = spawn_gpu_on(Box::new(bad_dma::BadDma(SimDevice::new(0, 1 << 20)))).await;
    let err = seal(&gpu, "s", 20_000, 1).await.unwrap_err();
    match err {
        VramError::UploadCorrupted {
            device,
            first_bad_chunk,
            bad_chunk_count,
        } => {
            assert_eq!(device, 0);
            assert_eq!(first_bad_chunk, 5000 / 4096);
            assert_eq!(bad_chunk_count, 1);
        }
        other => panic!("expected UploadCorrupted, got {other:?}"),
    }
    assert_eq!(capacity(&gpu).await.used_bytes, 0);
    // The id is free again, and nothing claims residency.
    assert!(matches!(
        seal(&gpu, "s", 20_000, 2).await,
        Err(VramError::UploadCorrupted { .. })
    ));
    assert_eq!(capacity(&gpu).await.used_bytes, 0);
}

/// A device whose upload copies or whose leaf hashing panic (a bug in a backend or the
/// hashing code): a simulated device underneath otherwise.
mod panicking {
    use std::sync::Arc;

    use crate::gpu::sim::SimDevice;
    use crate::gpu::{
        AllocationId, BackendError, DeviceAddress, DeviceBackend, DeviceIdentity, DeviceReader,
        DeviceUpload,
    };
    use crate::seal::merkle::Hash;

    pub(super) struct Panicking {
        pub(super) device: SimDevice,
        pub(super) in_upload: bool,
    }

    /// Holds the lent memory (as a real upload does) and panics when asked to write.
    struct Upload {
        _lent: Box<dyn DeviceUpload>,
    }

    impl DeviceUpload for Upload {
        fn write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), BackendError> {
            #[allow(clippy::panic)]
            {
                panic!("injected panic in an upload copy")
            }
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }

    struct Reader(Arc<dyn DeviceReader>);

    impl DeviceReader for Reader {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
            self.0.read(offset, buf)
        }
        fn leaf_hashes(&self, _chunk: u64, _indices: &[u64]) -> Result<Vec<Hash>, BackendError> {
            #[allow(clippy::panic)]
            {
                panic!("injected panic in leaf hashing")
            }
        }
    }

    impl DeviceBackend for Panicking {
        fn identity(&self) -> DeviceIdentity {
            self.device.identity()
        }
        fn free_bytes(&self) -> Result<u64, BackendError> {
            self.device.free_bytes()
        }
        fn allocate(&mut self, len: u64, lead: u64) -> Result<AllocationId, BackendError> {
            self.device.allocate(len, lead)
        }
        fn begin_upload(
            &mut self,
            id: AllocationId,
        ) -> Result<Box<dyn DeviceUpload>, BackendError> {
            let upload = self.device.begin_upload(id)?;
            Ok(if self.in_upload {
                Box::new(Upload { _lent: upload })
            } else {
                upload
            })
        }
        fn finish_upload(
            &mut self,
            id: AllocationId,
            upload: Box<dyn DeviceUpload>,
        ) -> Result<(), BackendError> {
            self.device.finish_upload(id, upload)
        }
        fn reader(&self, id: AllocationId) -> Result<Arc<dyn DeviceReader>, BackendError> {
            Ok(Arc::new(Reader(self.device.reader(id)?)))
        }
        fn device_address(&self, id: AllocationId) -> Result<DeviceAddress, BackendError> {
            self.device.device_address(id)
        }
        fn free(&mut self, id: AllocationId) -> Result<u64, BackendError> {
            self.device.free(id)
        }
    }
}

/// Waits until the actor has stopped (crashed), or fails after 5 s.
async fn stopped(gpu: &ActorRef<GpuMsg>) -> bool {
    for _ in 0..500 {
        if gpu.get_status() == ractor::ActorStatus::Stopped {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A seal whose bytes do not start with the safetensors header its tensor list was parsed
/// from (a file replaced after it was inspected) fails before it is signed, with nothing left
/// allocated; one whose bytes do is sealed. The check reads the header back from the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_whose_bytes_are_not_the_inspected_header_fails() {
    use crate::seal::tensors::HeaderDigest;
    let gpu = spawn_gpu(1 << 20).await;
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let job = |id: &str, handle_id, header| {
        Box::new(SealJob {
            meta: SealMeta {
                shard_id: id.into(),
                model_ref: "m".into(),
                expected_sha256: None,
                tensor_parallel: None,
                handle_id,
                tensors: None,
                lead_padding: 160,
                provenance: None,
                header: Some(header),
            },
            source: SealSource::Bytes(bytes.clone()),
            progress: None,
            len: bytes.len() as u64,
            cancel: Cancel::new(),
        })
    };
    let mut other = bytes[..5000].to_vec();
    other[4999] ^= 1;
    for (i, wrong) in [
        HeaderDigest::of(&other),
        HeaderDigest {
            len: 4999,
            ..HeaderDigest::of(&bytes[..5000])
        },
        HeaderDigest::of(&bytes[1..5001]),
        HeaderDigest {
            len: 20_001,
            sha256: [0; 32],
        },
    ]
    .into_iter()
    .enumerate()
    {
        let job = job("x", i as u64, wrong);
        let e = call(&gpu, |reply| GpuMsg::Seal { job, reply })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, VramError::Io { kind, .. } if *kind == std::io::ErrorKind::InvalidData),
            "{e:?}"
        );
        assert!(e.to_string().contains("header differs"), "{e}");
        assert_eq!(capacity(&gpu).await.used_bytes, 0);
    }
    for (i, right) in [
        HeaderDigest::of(&bytes[..5000]),
        HeaderDigest::of(&bytes),
        HeaderDigest::of(&[]),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("ok{i}");
        let job = job(&id, 10 + i as u64, right);
        call(&gpu, |reply| GpuMsg::Seal { job, reply })
            .await
            .unwrap();
        release(&gpu, shard(&id, 10 + i as u64)).await.unwrap();
    }
    assert_eq!(capacity(&gpu).await.used_bytes, 0);
}

/// A panic in an upload copy (a rayon job, where a panic would abort the process) crashes the
/// device actor instead, for its supervisor to replace: the caller hears the device went away,
/// and the process, this test included, lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_upload_crashes_the_device_actor_not_the_process() {
    let gpu = spawn_gpu_on(Box::new(panicking::Panicking {
        device: SimDevice::new(0, 1 << 20),
        in_upload: true,
    }))
    .await;
    let job = Box::new(SealJob {
        meta: SealMeta {
            shard_id: "p".into(),
            model_ref: "m".into(),
            expected_sha256: None,
            tensor_parallel: None,
            handle_id: 1,
            tensors: None,
            lead_padding: 0,
            provenance: None,
            header: None,
        },
        source: SealSource::Bytes(vec![7u8; 20_000]),
        progress: None,
        len: 20_000,
        cancel: Cancel::new(),
    });
    let answer = gpu.call(|reply| GpuMsg::Seal { job, reply }, None).await;
    assert!(
        !matches!(answer, Ok(ractor::rpc::CallResult::Success(_))),
        "the seal was answered"
    );
    assert!(stopped(&gpu).await, "the device actor is still running");
}

/// A panic in a verification's hashing (a blocking thread) crashes the device actor too, rather
/// than answering `Internal` from a device whose state is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hash_job_crashes_the_device_actor_not_the_process() {
    let gpu = spawn_gpu_on(Box::new(panicking::Panicking {
        device: SimDevice::new(0, 1 << 20),
        in_upload: false,
    }))
    .await;
    let info = seal(&gpu, "h", 20_000, 1).await.unwrap();
    let info = Box::new(info);
    let answer = gpu
        .call(
            |reply| GpuMsg::Verify {
                shard: shard("h", 1),
                info,
                mode: VerifyMode::Full,
                cancel: Cancel::new(),
                reply,
            },
            None,
        )
        .await;
    assert!(
        !matches!(answer, Ok(ractor::rpc::CallResult::Success(_))),
        "the verification was answered"
    );
    assert!(stopped(&gpu).await, "the device actor is still running");
}
