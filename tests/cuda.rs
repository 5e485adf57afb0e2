//! The CUDA backend, through the public API. Every test here runs on any machine: where no CUDA
//! driver or device exists, the GPU tests say so and skip, and the fallback tests check that the
//! crate notices without panicking. On the GPU machine (`scripts/gpu-check.sh`) the same binary
//! runs the whole story on real device memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TOKEN, pattern};
use sha2::{Digest, Sha256};
use vram_residency::attestation::{AttestationPolicy, verify_attestation_with};
use vram_residency::gpu::cuda;
use vram_residency::{
    BackendKind, Config, Fault, SealRequest, VerifyMode, VramError, VramResidency, WorkerToken,
};

const MIB: usize = 1 << 20;

/// `Some(why)` when this machine cannot run CUDA (the GPU tests then skip).
fn no_cuda() -> Option<String> {
    match cuda::probe() {
        Ok(_) => None,
        Err(why) => {
            eprintln!("skipping the CUDA part: {why}");
            Some(why)
        }
    }
}

fn cuda_config() -> Config {
    Config::cuda()
        .worker_id("worker-cuda")
        .worker_token(TOKEN)
        .chunk_size(1 << 16)
        .cuda_fault_injection(true)
        .call_timeout(Duration::from_secs(120))
}

#[test]
fn auto_falls_back_to_simulated_devices_without_a_driver_and_never_panics() {
    let config = Config::auto();
    let description = config.backend_description();
    if cuda::driver_library_present() && cuda::probe().is_ok() {
        assert!(description.starts_with("cuda"), "{description}");
    } else {
        assert!(config.is_simulated(), "{description}");
        assert!(description.contains("auto:"), "{description}");
        // The reason is given in words.
        assert!(
            description.contains("driver") || description.contains("device"),
            "{description}"
        );
    }
}

#[tokio::test]
async fn cuda_without_a_driver_is_a_clear_error() {
    if no_cuda().is_none() {
        return; // a GPU is here: nothing to refuse
    }
    let err = VramResidency::start(cuda_config()).await.unwrap_err();
    assert!(matches!(err, VramError::Cuda(_)), "{err:?}");
    assert!(err.to_string().contains("cannot be used"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seal_verify_attest_and_fail_closed_on_a_real_gpu() {
    if no_cuda().is_some() {
        return;
    }
    let system = VramResidency::start(cuda_config()).await.unwrap();
    assert_eq!(system.backend_kind(), BackendKind::Cuda);
    let devices = system.devices().await.unwrap();
    let identity = &devices[0].identity;
    let uuid = identity.uuid.clone().expect("a CUDA device has a UUID");
    assert!(uuid.starts_with("GPU-"), "{uuid}");
    assert!(identity.total_bytes > 0);
    assert!(devices[0].policy.starts_with("ok"), "{}", devices[0].policy);

    let before = system.capacity(0).await.unwrap();
    // 64 MiB + a short last chunk, so the kernel's tail path runs.
    let bytes = pattern(64 * MIB + 12_345);
    let digest = hex::encode(Sha256::digest(&bytes));
    let shard = system
        .seal(
            SealRequest::new("cuda-shard", "test:cuda", 0, bytes.clone()).expected_sha256(&digest),
        )
        .await
        .unwrap();
    assert_eq!(shard.info().digest, digest);
    let during = system.capacity(0).await.unwrap();
    assert_eq!(during.used_bytes, before.used_bytes + bytes.len() as u64);

    // Full (every leaf hashed on the device), sampled and signature-only verification.
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system
        .verify(&shard, VerifyMode::Sampled { chunks: 16 })
        .await
        .unwrap();
    system
        .verify(&shard, VerifyMode::SignatureOnly)
        .await
        .unwrap();
    let n = system
        .execute(&shard, |view| {
            let mut head = [0u8; 16];
            view.read(0, &mut head).unwrap();
            (view.len(), head)
        })
        .await
        .unwrap();
    assert_eq!(n.0, bytes.len() as u64);
    assert_eq!(&n.1[..], &bytes[..16]);

    // A challenger that insists on device memory accepts it.
    let nonce = [9u8; 32];
    let att = system.attest(&shard, &nonce).await.unwrap();
    let token = WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
    verify_attestation_with(
        &att,
        &token,
        &nonce,
        &AttestationPolicy::default()
            .require_mode(VerifyMode::Full)
            .require_device_memory(true),
    )
    .unwrap();

    // A bit flipped in device memory (device-side XOR) is found, fail-closed.
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "cuda-shard".into(),
                offset: 40 * MIB as u64 + 3,
                mask: 0x10,
            },
        )
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    match err {
        VramError::SealVerificationFailed {
            first_bad_chunk, ..
        } => assert_eq!(first_bad_chunk, Some((40 * MIB as u64 + 3) / (1 << 16))),
        other => panic!("expected a verification failure, got {other:?}"),
    }
    system.reset_device(0).await.unwrap();
    system.release(shard).await.unwrap();
    let after = system.capacity(0).await.unwrap();
    assert_eq!(after.used_bytes, before.used_bytes);

    // An injected allocation failure leaves nothing behind.
    system.inject_fault(0, Fault::FailNextAlloc).await.unwrap();
    assert!(
        system
            .seal(SealRequest::new("doomed", "test:cuda", 0, pattern(MIB)))
            .await
            .is_err()
    );
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        before.used_bytes
    );
    system.shutdown().await.unwrap();
}

#[tokio::test]
async fn faults_on_cuda_need_the_opt_in() {
    if no_cuda().is_some() {
        return;
    }
    let system = VramResidency::start(cuda_config().cuda_fault_injection(false))
        .await
        .unwrap();
    let err = system
        .inject_fault(0, Fault::FailNextAlloc)
        .await
        .unwrap_err();
    assert!(matches!(err, VramError::Unsupported(_)), "{err:?}");
    system.shutdown().await.unwrap();
}
