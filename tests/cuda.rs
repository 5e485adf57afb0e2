//! The CUDA backend, through the public API. Every test here runs on any machine: where no CUDA
//! driver or device exists, the GPU tests say so and skip (or fail, with `VR_EXPECT_CUDA=1`), and
//! the fallback tests check that the crate notices without panicking. In CI they run against the
//! fake CUDA driver (`scripts/fake-cuda.sh`, `.specs/fake-cuda.md`), which queues asynchronous
//! work until it is synchronised, so a missing wait fails here; on the GPU machine
//! (`scripts/gpu-check.sh`) the same binary runs the whole story on real device memory.
//!
//! The fake driver's injected faults (`VR_FAKE_CUDA_FAULT`) are read once per process, so each
//! fault test runs itself again in a child process of this binary with the fault set.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TOKEN, pattern};
use sha2::{Digest, Sha256};
use vram_residency::attestation::{AttestationPolicy, verify_attestation_with};
use vram_residency::gpu::cuda;
use vram_residency::{
    BackendKind, Config, Fault, SealRequest, VerifyMode, VramError, VramResidency, WorkerToken,
};

const MIB: usize = 1 << 20;

/// Set to `1` where CUDA must be there (CI under the fake driver, the GPU check): a test that
/// would skip for want of a device fails instead.
const EXPECT_CUDA: &str = "VR_EXPECT_CUDA";
/// The fake driver's fault variable (`.specs/fake-cuda.md`).
const FAULT: &str = "VR_FAKE_CUDA_FAULT";
/// What the fake driver calls its devices.
const FAKE_NAME_SUFFIX: &str = "(test driver)";

fn expect_cuda() -> bool {
    std::env::var(EXPECT_CUDA).is_ok_and(|v| v == "1")
}

/// `Some(why)` when this machine cannot run CUDA (the GPU tests then skip). With
/// `VR_EXPECT_CUDA=1` that is a failure instead.
fn no_cuda() -> Option<String> {
    match cuda::probe() {
        Ok(_) => None,
        Err(why) => {
            assert!(
                !expect_cuda(),
                "no CUDA device ({why}), and {EXPECT_CUDA}=1 says there must be one"
            );
            eprintln!("skipping the CUDA part: {why}");
            Some(why)
        }
    }
}

/// Whether the CUDA devices here are the fake driver's.
fn under_fake_driver() -> bool {
    cuda::probe().is_ok_and(|p| p.names.iter().all(|n| n.ends_with(FAKE_NAME_SUFFIX)))
}

fn cuda_config() -> Config {
    Config::cuda()
        .worker_id("worker-cuda")
        .worker_token(TOKEN)
        .chunk_size(1 << 16)
        .staging_bytes(1 << 20)
        .cuda_fault_injection(true)
        .call_timeout(Duration::from_secs(120))
}

/// Runs a fault test's body only in a process whose fake driver injects `fault`. Called at the
/// top of test `name`: in the parent it runs `name` again in a child of this binary with
/// `VR_FAKE_CUDA_FAULT=fault`, checks that the child ran it and passed, and returns `false`;
/// in that child it returns `true` (run the body). Without the fake driver there is nothing to
/// inject into: it skips (a failure with `VR_EXPECT_CUDA=1` and no device at all).
fn fault_body(fault: &str, name: &str) -> bool {
    fault_body_with(fault, &[], name)
}

/// [`fault_body`] with more of the fake driver's variables set in the child.
fn fault_body_with(fault: &str, env: &[(&str, &str)], name: &str) -> bool {
    if let Ok(injected) = std::env::var(FAULT) {
        return injected == fault;
    }
    if no_cuda().is_some() {
        return false;
    }
    if !under_fake_driver() {
        eprintln!("skipping: injected faults need the fake CUDA driver");
        return false;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(FAULT, fault)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} with {FAULT}={fault} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// The audit log's events, parsed.
async fn audit_events(system: &VramResidency) -> Vec<serde_json::Value> {
    system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).unwrap();
            record.get("event").unwrap().clone()
        })
        .collect()
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
    assert!(
        matches!(err, VramError::BackendUnavailable { device: None, .. }),
        "{err:?}"
    );
    assert!(!err.is_retriable());
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
    // The leaf kernel loaded from the embedded PTX and passed its self-test, so the full
    // verifications below hash on the device.
    assert_eq!(
        devices[0].leaf_kernel.as_deref(),
        Some("on (embedded PTX)"),
        "{devices:?}"
    );
    assert!(devices[0].driver_version.is_some());
    if under_fake_driver() {
        assert_eq!(identity.name, "fake CUDA device 0 (test driver)");
    }

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

/// The safetensors fixture the Python `safetensors` package wrote (`tests/it/tensors.rs`).
fn safetensors_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/safetensors/model.safetensors")
}

/// A hand-made safetensors file of one `len`-byte U8 tensor `big` and a 3-element F32 `tail`,
/// its header padded with spaces so that the data section starts at `data_start` (which is
/// not a multiple of 256).
fn big_safetensors(len: usize, data_start: usize) -> Vec<u8> {
    let mut header = format!(
        r#"{{"big":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}},"tail":{{"dtype":"F32","shape":[3],"data_offsets":[{len},{}]}}}}"#,
        len + 12
    );
    assert!(8 + header.len() <= data_start);
    while 8 + header.len() < data_start {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(pattern(len + 12));
    bytes
}

/// Tensor views on CUDA memory. A safetensors shard's data section is 256-byte aligned in
/// device memory, which puts padding in front of the shard; nothing may see it: reads, tensor
/// views, fault offsets and bad-chunk ranges count from the file's first byte, and the leaf
/// kernel hashes chunks from the shard's first byte (the seal re-hashes what landed on the
/// device and compares it with the host's leaves, so a kernel reading from the allocation's
/// start fails the seal). The padding counts as used memory and comes back on release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn safetensors_shards_are_aligned_and_served_by_tensor_on_cuda() {
    if no_cuda().is_some() {
        return;
    }
    let system = VramResidency::start(cuda_config().chunk_size(4096))
        .await
        .unwrap();
    let before = system.capacity(0).await.unwrap();

    // The Python-written fixture: data at 672 (160 mod 256), so 96 bytes of padding.
    let bytes = std::fs::read(safetensors_fixture()).unwrap();
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(data_start, 672);
    let shard = system
        .seal(SealRequest::from_file(
            "st",
            "file:model",
            0,
            safetensors_fixture(),
        ))
        .await
        .unwrap();
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        before.used_bytes + bytes.len() as u64 + 96
    );
    let tensors = shard.tensors().unwrap().to_vec();
    assert_eq!(tensors.len(), 8);
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    let base = *lease.device_ptr().as_kernel_arg();
    assert_eq!((base + data_start) % 256, 0);
    let mut all = vec![0u8; bytes.len()];
    lease.read(0, &mut all).unwrap();
    assert_eq!(all, bytes);
    for t in &tensors {
        let view = lease.tensor(&t.name).unwrap();
        let at = *view.device_ptr().as_kernel_arg();
        assert_eq!(at - base, t.start);
        if (t.start - data_start).is_multiple_of(256) {
            assert_eq!(at % 256, 0, "{}", t.name);
        }
        let mut got = vec![0u8; t.len() as usize];
        view.read(0, &mut got).unwrap();
        assert_eq!(got, &bytes[t.start as usize..t.end as usize], "{}", t.name);
        let mut past = [0u8; 1];
        assert!(matches!(
            view.read(view.len(), &mut past),
            Err(VramError::InvalidInput(_))
        ));
    }
    drop(lease);
    // A flip at shard offset 3 * 4096 + 5 (inside layers.0.attn.q.weight) is in chunk 3; taken
    // from the allocation's start it would land in chunk 2.
    let offset = 3 * 4096 + 5;
    let (bad_chunks, bad_tensors) = common::flip_and_verify(&system, &shard, offset, 0x40).await;
    assert_eq!(bad_chunks.len(), 1, "{bad_chunks:?}");
    assert_eq!((bad_chunks[0].offset, bad_chunks[0].len), (3 * 4096, 4096));
    assert_eq!(bad_tensors, &["layers.0.attn.q.weight", "tokens.mask"]);
    system.reset_device(0).await.unwrap();
    assert_eq!(
        system.release(shard).await.unwrap(),
        bytes.len() as u64 + 96
    );
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        before.used_bytes
    );

    // Enough 4 KiB leaves (600) for the leaf kernel, data at 8 + 1000 (240 mod 256).
    let big = big_safetensors(600 * 4096, 1008);
    let lead = 16;
    let shard = system
        .seal(SealRequest::new("big", "test:st", 0, big.clone()))
        .await
        .unwrap();
    assert_eq!(
        system.capacity(0).await.unwrap().used_bytes,
        before.used_bytes + big.len() as u64 + lead
    );
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    let view = lease.tensor("big").unwrap();
    assert_eq!(*view.device_ptr().as_kernel_arg() % 256, 0);
    let mut got = vec![0u8; 4096];
    view.read(300 * 4096, &mut got).unwrap();
    assert_eq!(got, &big[1008 + 300 * 4096..1008 + 301 * 4096]);
    let tail = lease.tensor("tail").unwrap();
    let mut got = vec![0u8; 12];
    tail.read(0, &mut got).unwrap();
    assert_eq!(got, &big[big.len() - 12..]);
    drop(lease);
    let offset = 1008 + 123 * 4096 + 7;
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "big".into(),
                offset,
                mask: 1,
            },
        )
        .await
        .unwrap();
    match system.verify(&shard, VerifyMode::Full).await.unwrap_err() {
        VramError::SealVerificationFailed {
            first_bad_chunk,
            bad_tensors,
            ..
        } => {
            assert_eq!(first_bad_chunk, Some(offset / 4096));
            assert_eq!(bad_tensors, ["big"]);
        }
        other => panic!("expected a verification failure, got {other:?}"),
    }
    system.reset_device(0).await.unwrap();
    system.release(shard).await.unwrap();
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

/// The embedded PTX is what the checked-in `.cu` compiles to: its header records the source's
/// SHA-256 (rerun `scripts/gen-ptx.sh` after editing the kernel); it is PTX ISA 8.0 or older for
/// a target no newer than `sm_80`, so drivers from R525 on load it; it has both entry points.
#[test]
fn the_embedded_ptx_comes_from_the_checked_in_source_and_is_old_enough() {
    // Built in, so the check also runs from the GPU bundle, far from the sources.
    let source: &[u8] = include_bytes!("../src/gpu/cuda/sha256_leaf.cu");
    let ptx = include_str!("../src/gpu/cuda/sha256_leaf.ptx");
    let recorded = ptx
        .lines()
        .find_map(|l| l.strip_prefix("// source-sha256: "))
        .expect("the PTX records its source's SHA-256");
    assert_eq!(
        recorded,
        hex::encode(Sha256::digest(source)),
        "sha256_leaf.ptx is stale: run scripts/gen-ptx.sh"
    );
    let version = ptx
        .lines()
        .find_map(|l| l.strip_prefix(".version "))
        .unwrap();
    let (major, minor) = version.trim().split_once('.').unwrap();
    let isa = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
    assert!(
        isa <= (8, 0),
        "PTX ISA {version} needs a driver newer than R525"
    );
    let target = ptx
        .lines()
        .find_map(|l| l.strip_prefix(".target sm_"))
        .unwrap();
    assert!(
        target.trim().parse::<u32>().unwrap() <= 80,
        "target sm_{target}"
    );
    assert!(ptx.contains(".entry vr_sha256_leaves("));
    assert!(ptx.contains(".entry vr_xor_byte("));
}

/// What `devices` shows comes from the driver: every device by its driver name (the fake
/// driver's say so), the driver's version, and whether the leaf kernel is in use.
#[tokio::test]
async fn devices_show_the_driver_version_the_leaf_kernel_and_the_drivers_names() {
    if no_cuda().is_some() {
        return;
    }
    let probe = cuda::probe().unwrap();
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let devices = system.devices().await.unwrap();
    assert_eq!(devices.len() as u32, probe.device_count);
    for (status, name) in devices.iter().zip(&probe.names) {
        assert_eq!(&status.identity.name, name);
        assert_eq!(status.leaf_kernel.as_deref(), Some("on (embedded PTX)"));
        let version = status.driver_version.as_deref().unwrap();
        assert!(version.contains('.'), "{version}");
    }
    if under_fake_driver() {
        let names: Vec<&str> = devices.iter().map(|d| d.identity.name.as_str()).collect();
        assert_eq!(
            names[..2],
            [
                "fake CUDA device 0 (test driver)",
                "fake CUDA device 1 (test driver)"
            ]
        );
        assert_eq!(devices[0].driver_version.as_deref(), Some("12.0"));
    }
    system.shutdown().await.unwrap();
}

/// Memory that the driver says is host memory is refused: `PolicyViolation` (VP-002), a
/// critical audit event, and nothing left allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_host_memory_is_a_policy_violation_and_nothing_stays_allocated() {
    if !fault_body(
        "host-memory",
        "fault_host_memory_is_a_policy_violation_and_nothing_stays_allocated",
    ) {
        return;
    }
    policy_violation_leaves_nothing("VP-002").await;
}

/// Managed (unified) memory is refused the same way (VP-003).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_managed_memory_is_a_policy_violation_and_nothing_stays_allocated() {
    if !fault_body(
        "managed",
        "fault_managed_memory_is_a_policy_violation_and_nothing_stays_allocated",
    ) {
        return;
    }
    policy_violation_leaves_nothing("VP-003").await;
}

async fn policy_violation_leaves_nothing(policy: &str) {
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let before = system.capacity(0).await.unwrap();
    let err = system
        .seal(SealRequest::new("refused", "test:cuda", 0, pattern(MIB)))
        .await
        .unwrap_err();
    assert!(matches!(err, VramError::PolicyViolation(_)), "{err:?}");
    assert!(err.to_string().contains(policy), "{err}");
    let events = audit_events(&system).await;
    let violation = events
        .iter()
        .find(|e| e["type"] == "PolicyViolation")
        .expect("a PolicyViolation audit event");
    assert_eq!(violation["policy"], policy, "{violation}");
    assert_eq!(violation["severity"], "critical", "{violation}");
    assert!(events.iter().any(|e| e["type"] == "VramAllocationFailed"));
    assert!(!events.iter().any(|e| e["type"] == "VramSealed"));
    // The allocation went back to the driver: its own free figure is what it was.
    let after = system.capacity(0).await.unwrap();
    assert_eq!(after.used_bytes, before.used_bytes);
    assert_eq!(after.available_bytes, before.available_bytes);
    system.shutdown().await.unwrap();
}

/// An integrated GPU (its "device memory" is host memory) is refused when the system starts.
#[tokio::test]
async fn fault_integrated_gpu_is_refused_at_start() {
    if !fault_body("integrated", "fault_integrated_gpu_is_refused_at_start") {
        return;
    }
    let err = VramResidency::start(cuda_config()).await.unwrap_err();
    assert!(matches!(err, VramError::PolicyViolation(_)), "{err:?}");
    assert!(err.to_string().contains("VP-001"), "{err}");
    // Allowed on purpose, it starts, and says what it is.
    let system = VramResidency::start(cuda_config().allow_integrated_gpu(true))
        .await
        .unwrap();
    let devices = system.devices().await.unwrap();
    assert!(devices[0].identity.integrated);
    assert!(
        devices[0].policy.contains("integrated"),
        "{}",
        devices[0].policy
    );
    system.shutdown().await.unwrap();
}

/// The driver refuses an allocation the books had room for (another process took the memory):
/// the caller sees an allocation failure, the audit log says so, and nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_out_of_memory_is_an_allocation_failure_and_nothing_stays_allocated() {
    if !fault_body(
        "oom",
        "fault_out_of_memory_is_an_allocation_failure_and_nothing_stays_allocated",
    ) {
        return;
    }
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let before = system.capacity(0).await.unwrap();
    let err = system
        .seal(SealRequest::new(
            "too-big",
            "test:cuda",
            0,
            pattern(4 * MIB),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VramError::InsufficientVram { .. } | VramError::AllocationFailed { .. }
        ),
        "{err:?}"
    );
    let events = audit_events(&system).await;
    assert!(events.iter().any(|e| e["type"] == "VramAllocationFailed"));
    assert!(!events.iter().any(|e| e["type"] == "VramSealed"));
    assert_eq!(system.capacity(0).await.unwrap(), before);
    // A seal the driver can serve still works.
    let small = system
        .seal(SealRequest::new("small", "test:cuda", 0, pattern(MIB / 2)))
        .await
        .unwrap();
    system.verify(&small, VerifyMode::Full).await.unwrap();
    system.release(small).await.unwrap();
    // The memory goes back to the driver on the device's free thread, just after the release.
    assert!(common::eventually(|| async { system.capacity(0).await.unwrap() == before }).await);
    system.shutdown().await.unwrap();
}

/// Every launch fails: the kernel is off from the start (counted, and `devices` says why), and
/// seals and verifications run on the host — including finding a flipped bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_launch_failure_switches_the_kernel_off_and_seals_on_the_host() {
    if !fault_body(
        "launch-fail",
        "fault_launch_failure_switches_the_kernel_off_and_seals_on_the_host",
    ) {
        return;
    }
    kernel_off_and_host_hashing("launch").await;
}

/// The kernel writes wrong digests: its self-test at open catches it, it is switched off, and
/// seals succeed on host hashing (never `UploadCorrupted` from a wrong kernel).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_wrong_kernel_switches_itself_off_and_seals_on_the_host() {
    if !fault_body(
        "kernel-wrong",
        "fault_wrong_kernel_switches_itself_off_and_seals_on_the_host",
    ) {
        return;
    }
    kernel_off_and_host_hashing("differs from the host").await;
}

/// Where `kernel_off_and_host_hashing` flips a bit: in leaf 320 of 64 KiB chunks.
const FLIP_AT: u64 = 20 * (1 << 20) + 1;

/// Counts of `vram_cuda_leaf_kernel_off_total` by device, recorded since the recorder was
/// installed (in this process: fault tests run in children of their own).
fn kernel_off_counts(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "vram_cuda_leaf_kernel_off_total")
        .map(|(key, _, _, value)| {
            let device = key
                .key()
                .labels()
                .find(|l| l.key() == "gpu_device")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            match value {
                metrics_util::debugging::DebugValue::Counter(n) => (device, n),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    counts.sort();
    counts
}

fn install_recorder() -> metrics_util::debugging::Snapshotter {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    snapshotter
}

async fn kernel_off_and_host_hashing(why: &str) {
    let snapshotter = install_recorder();
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let devices = system.devices().await.unwrap();
    for d in &devices {
        let kernel = d.leaf_kernel.as_deref().unwrap();
        assert!(
            kernel.starts_with("off (") && kernel.contains(why),
            "{kernel}"
        );
    }
    assert_eq!(
        kernel_off_counts(&snapshotter),
        [("0".to_string(), 1), ("1".to_string(), 1)],
        "one count per device"
    );

    // 33 MiB of 64 KiB chunks: 529 leaves, enough for the kernel path (256) if it were on.
    let bytes = pattern(33 * MIB + 5);
    let shard = system
        .seal(SealRequest::new("host-hashed", "test:cuda", 0, bytes))
        .await
        .unwrap();
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "host-hashed".into(),
                offset: FLIP_AT,
                mask: 0x04,
            },
        )
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    assert!(
        matches!(err, VramError::SealVerificationFailed { first_bad_chunk: Some(c), .. } if c == FLIP_AT >> 16),
        "{err:?}"
    );
    system.reset_device(0).await.unwrap();
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}

/// Launches the leaf kernel makes in its self-test when a device opens (two chunk sizes, each
/// through the every-leaf and the index-list path).
const SELF_TEST_LAUNCHES: &str = "4";

/// The kernel passed its self-test, then a launch fails (the seal's check of what landed): the
/// kernel is switched off for that device only (logged and counted once), the seal succeeds on
/// host hashing, and later verifications hash on the host too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_later_launch_failure_switches_the_kernel_off_and_the_seal_succeeds() {
    if !fault_body_with(
        "launch-fail",
        &[("VR_FAKE_CUDA_FAULT_AFTER", SELF_TEST_LAUNCHES)],
        "fault_later_launch_failure_switches_the_kernel_off_and_the_seal_succeeds",
    ) {
        return;
    }
    let snapshotter = install_recorder();
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let devices = system.devices().await.unwrap();
    assert_eq!(devices[0].leaf_kernel.as_deref(), Some("on (embedded PTX)"));
    let shard = system
        .seal(SealRequest::new("later", "test:cuda", 0, pattern(33 * MIB)))
        .await
        .unwrap();
    let devices = system.devices().await.unwrap();
    let kernel = devices[0].leaf_kernel.as_deref().unwrap();
    assert!(kernel.starts_with("off (a launch failed"), "{kernel}");
    assert_eq!(devices[1].leaf_kernel.as_deref(), Some("on (embedded PTX)"));
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    system.verify(&shard, VerifyMode::Full).await.unwrap();
    assert_eq!(kernel_off_counts(&snapshotter), [("0".to_string(), 1)]);
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}

/// A sampled verification of at least `KERNEL_MIN_LEAVES` (256) chunks reaches the leaf kernel:
/// a verification reads in pieces of at least the backend's preferred batch, not a staging
/// buffer's 16 leaves (each of which would be hashed on the host). Seen through a launch that
/// fails once the self-test and the seal's own check have launched: the sampled verify's launch
/// is the one that fails, so the kernel is switched off (counted once) and the verification
/// passes on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_a_sampled_verify_of_256_chunks_launches_the_leaf_kernel() {
    if !fault_body_with(
        "launch-fail",
        &[("VR_FAKE_CUDA_FAULT_AFTER", "5")],
        "fault_a_sampled_verify_of_256_chunks_launches_the_leaf_kernel",
    ) {
        return;
    }
    let snapshotter = install_recorder();
    let system = VramResidency::start(cuda_config()).await.unwrap();
    // 33 MiB of 64 KiB chunks: 528 leaves; the seal's check of what landed is launch 5.
    let shard = system
        .seal(SealRequest::new(
            "sampled",
            "test:cuda",
            0,
            pattern(33 * MIB),
        ))
        .await
        .unwrap();
    let devices = system.devices().await.unwrap();
    assert_eq!(devices[0].leaf_kernel.as_deref(), Some("on (embedded PTX)"));
    system
        .verify(&shard, VerifyMode::Sampled { chunks: 300 })
        .await
        .unwrap();
    let devices = system.devices().await.unwrap();
    let kernel = devices[0].leaf_kernel.as_deref().unwrap();
    assert!(
        kernel.starts_with("off (a launch failed"),
        "the sampled verify never launched the kernel: {kernel}"
    );
    assert_eq!(kernel_off_counts(&snapshotter), [("0".to_string(), 1)]);
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}

/// An uncorrectable ECC error after a seal: device 0 is lost mid-verify (`DeviceLost`,
/// fail-closed: no verdict of "pass", nothing new accepted there), and device 1 serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_ecc_error_loses_the_device_fail_closed_and_the_other_device_serves() {
    if !fault_body(
        "ecc",
        "fault_ecc_error_loses_the_device_fail_closed_and_the_other_device_serves",
    ) {
        return;
    }
    let system = VramResidency::start(cuda_config()).await.unwrap();
    let bytes = pattern(33 * MIB);
    let shard = system
        .seal(SealRequest::new("ecc", "test:cuda", 0, bytes.clone()))
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    assert!(
        matches!(err, VramError::DeviceLost { device: 0 }),
        "{err:?}"
    );
    // Fail-closed: the device takes nothing new and verifies nothing.
    let again = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    assert!(
        matches!(again, VramError::DeviceLost { device: 0 }),
        "{again:?}"
    );
    let refused = system
        .seal(SealRequest::new("after", "test:cuda", 0, pattern(MIB)))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, VramError::DeviceLost { device: 0 }),
        "{refused:?}"
    );
    let devices = system.devices().await.unwrap();
    assert!(devices[0].lost);
    assert!(!devices[1].lost);
    let events = audit_events(&system).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "DeviceStopped" && e["gpu_device"] == 0),
        "{events:?}"
    );
    // The other device serves.
    let other = system
        .seal(SealRequest::new("elsewhere", "test:cuda", 1, bytes))
        .await
        .unwrap();
    system.verify(&other, VerifyMode::Full).await.unwrap();
    system.release(other).await.unwrap();
    let _ = system.release(shard).await;
    system.shutdown().await.unwrap();
}
