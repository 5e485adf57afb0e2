//! A safetensors file replaced in place between the inspection of its header (which gives the
//! tensor list) and the read that is hashed and sealed: the seal fails rather than hand back a
//! tensor list that does not describe the sealed bytes — even when the caller's
//! `expected_sha256` matches the bytes that were sealed.
//!
//! The interleaving is made deterministic with the device's admission: with
//! `device_queue_limit(1)`, a first seal from a reader that blocks holds the device's only slot;
//! a second seal, from the file, is inspected and then waits for the slot (which
//! `device_load().waiting` shows); the file is replaced while it waits, and the first seal is let
//! go.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use vram_residency::{SealRequest, SealedShard, VerifyMode, VramError, VramResidency};

use crate::common;

/// A two-tensor safetensors file: `a` holds 1024 bytes of 0x11 and `b` 1024 bytes of 0xEE, and
/// the header gives `first` the first tensor and `second` the other. Same length whatever the
/// names (of the same length).
fn file(first: &str, second: &str) -> Vec<u8> {
    let header = format!(
        r#"{{"{first}":{{"dtype":"U8","shape":[1024],"data_offsets":[0,1024]}},"{second}":{{"dtype":"U8","shape":[1024],"data_offsets":[1024,2048]}}}}"#
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0x11u8, 1024));
    bytes.extend(std::iter::repeat_n(0xEEu8, 1024));
    bytes
}

/// Replaces the file's bytes in place (same inode, same length).
fn overwrite(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), bytes.len() as u64);
    f.write_all_at(bytes, 0).unwrap();
    f.sync_all().unwrap();
}

/// A reader that gives nothing until it is told to go.
struct Gated {
    go: mpsc::Receiver<()>,
    open: bool,
    bytes: std::io::Cursor<Vec<u8>>,
}

impl Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.open {
            self.go.recv().unwrap();
            self.open = true;
        }
        self.bytes.read(buf)
    }
}

async fn start() -> VramResidency {
    VramResidency::start(
        common::config(1, 8 << 20)
            .device_queue_limit(1)
            .admission_timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap()
}

/// Seals `request` (a file source at `path`, which holds `before`) with its file replaced by
/// `after` once its header has been inspected and before it is read for hashing.
async fn seal_swapped(
    system: &VramResidency,
    path: &Path,
    before: &[u8],
    after: &[u8],
    request: SealRequest,
) -> Result<SealedShard, VramError> {
    std::fs::write(path, before).unwrap();
    // The first seal takes the device's only slot and stays in it until `go`.
    let (go, gate) = mpsc::channel();
    let blocker = {
        let system = system.clone();
        let reader = Gated {
            go: gate,
            open: false,
            bytes: std::io::Cursor::new(common::pattern(5000)),
        };
        tokio::spawn(async move {
            system
                .seal(SealRequest::from_reader("blocker", "m", 0, reader, 5000))
                .await
        })
    };
    assert!(
        common::eventually(|| async { system.device_load(0).unwrap().in_flight == 1 }).await,
        "the first seal never reached the device"
    );
    // The second is inspected, then waits for the slot.
    let sealing = {
        let system = system.clone();
        tokio::spawn(async move { system.seal(request).await })
    };
    assert!(
        common::eventually(|| async { system.device_load(0).unwrap().waiting == 1 }).await,
        "the second seal never waited for the device"
    );
    overwrite(path, after);
    go.send(()).unwrap();
    let blocker = blocker.await.unwrap().unwrap();
    let sealed = sealing.await.unwrap();
    system.release(blocker).await.unwrap();
    sealed
}

fn assert_header_changed(e: &VramError) {
    assert!(
        matches!(e, VramError::Io { kind, .. } if *kind == std::io::ErrorKind::InvalidData),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("changed while it was being sealed")
            && shown.contains("safetensors header differs"),
        "{shown}"
    );
}

/// Nothing of a failed seal is left: no memory in use, no `VramSealed`, its allocation freed
/// (audited).
async fn assert_nothing_sealed(system: &VramResidency, shard_id: &str) {
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
    let ours: Vec<String> = system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["event"]["shard_id"] == shard_id)
                .then(|| v["event"]["type"].as_str().unwrap().into())
        })
        .collect();
    assert_eq!(ours, ["VramAllocated", "VramDeallocated"], "{shard_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_inspected_then_replaced_fails_the_seal_even_with_the_right_digest() {
    let system = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // The header inspected names the tensors one way, the file sealed the other way round.
    let inspected = file("wq", "wk");
    let genuine = file("wk", "wq");
    assert_eq!(inspected.len(), genuine.len());
    assert_ne!(inspected, genuine);
    let digest = hex::encode(Sha256::digest(&genuine));
    let request = SealRequest::from_file("swapped", "m", 0, &path).expected_sha256(&digest);
    let e = seal_swapped(&system, &path, &inspected, &genuine, request)
        .await
        .unwrap_err();
    assert_header_changed(&e);
    assert_nothing_sealed(&system, "swapped").await;

    // The same file, left alone, seals with the list of the bytes sealed: `wk` is the first
    // tensor (0x11).
    std::fs::write(&path, &genuine).unwrap();
    let shard = system
        .seal(SealRequest::from_file("genuine", "m", 0, &path).expected_sha256(&digest))
        .await
        .unwrap();
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    let mut got = vec![0u8; 1024];
    lease.tensor("wk").unwrap().read(0, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0x11));
    drop(lease);
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_replaced_by_bytes_that_are_not_safetensors_fails_the_seal() {
    let system = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let inspected = file("wq", "wk");
    let plain = common::pattern(inspected.len());
    let request = SealRequest::from_file("plain", "m", 0, &path);
    let e = seal_swapped(&system, &path, &inspected, &plain, request)
        .await
        .unwrap_err();
    assert_header_changed(&e);
    assert_nothing_sealed(&system, "plain").await;

    // The reverse: bytes that were not safetensors when inspected have no tensor list, so a
    // file that becomes one is sealed, and claims none.
    let request = SealRequest::from_file("became", "m", 0, &path);
    let shard = seal_swapped(&system, &path, &plain, &inspected, request)
        .await
        .unwrap();
    assert!(shard.tensors().is_none());
    assert_eq!(shard.info().digest, hex::encode(Sha256::digest(&inspected)));
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}
