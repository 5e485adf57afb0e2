//! Tensor views of a safetensors shard, on a file the Python `safetensors` package wrote
//! (`tests/fixtures/safetensors/make_fixture.py`; the output is committed): the tensor list in
//! file order, views that read exactly their own bytes, device addresses whose data section is
//! 256-byte aligned, padding that no offset ever sees (faults, bad chunks, reads) and capacity
//! that counts it and comes back to the start.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vram_residency::{SealRequest, TensorInfo, VerifyMode, VramError};

use crate::common::{self, pattern};

/// The data section's first byte in the fixture: 8 + its 664-byte header (160 mod 256).
const DATA_START: u64 = 672;
/// The padding a backend puts in front of it: (256 - 672 % 256) % 256.
const LEAD: u64 = 96;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors/model.safetensors")
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture()).unwrap()
}

fn info(name: &str, dtype: &str, shape: &[u64], start: u64, end: u64) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        start: DATA_START + start,
        end: DATA_START + end,
    }
}

/// The fixture's tensors in file order, as its header lists them (offsets in the data section).
fn expected() -> Vec<TensorInfo> {
    vec![
        info("positions", "I64", &[128], 0, 1024),
        info("embed.weight", "F32", &[16, 64], 1024, 5120),
        info("empty", "F32", &[0, 4], 5120, 5120),
        info("layers.1.mlp.w", "F32", &[24, 64], 5120, 11264),
        info("scale", "F32", &[], 11264, 11268),
        info("layers.0.attn.q.bias", "F16", &[50], 11268, 11368),
        info("layers.0.attn.q.weight", "F16", &[32, 64], 11368, 15464),
        info("tokens.mask", "U8", &[1000], 15464, 16464),
    ]
}

#[test]
fn the_fixture_is_the_one_the_generator_writes() {
    let bytes = fixture_bytes();
    let sums = std::fs::read_to_string(fixture().with_file_name("SHA256SUMS")).unwrap();
    let digest = hex::encode(Sha256::digest(&bytes));
    assert!(sums.starts_with(&digest), "{sums} vs {digest}");
    assert_eq!(
        8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()),
        DATA_START
    );
    assert_ne!(DATA_START % 256, 0, "the fixture must need padding");
    assert_eq!(bytes.len() as u64, DATA_START + 16464);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tensor_list_is_the_headers_in_file_order() {
    let system = common::start(1, 8 << 20).await;
    let bytes = fixture_bytes();
    let from_file = system
        .seal(SealRequest::from_file("file", "file:model", 0, fixture()))
        .await
        .unwrap();
    assert_eq!(from_file.tensors().unwrap(), &expected()[..]);
    assert_eq!(from_file.info().digest, hex::encode(Sha256::digest(&bytes)));

    // The same bytes from memory give the same list; the safetensors crate agrees on every
    // tensor's dtype, shape and bytes.
    let from_bytes = system
        .seal(SealRequest::new("bytes", "file:model", 0, bytes.clone()))
        .await
        .unwrap();
    assert_eq!(from_bytes.tensors(), from_file.tensors());
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for t in from_file.tensors().unwrap() {
        let view = parsed.tensor(&t.name).unwrap();
        assert_eq!(view.dtype().to_string(), t.dtype);
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape);
        assert_eq!(view.data(), &bytes[t.start as usize..t.end as usize]);
        assert_eq!(t.len(), t.end - t.start);
    }

    // Anything else has no list: a stream (its header is not inspected) and bytes that are
    // not safetensors.
    let stream = system
        .seal(SealRequest::from_reader(
            "stream",
            "file:model",
            0,
            std::io::Cursor::new(bytes.clone()),
            bytes.len() as u64,
        ))
        .await
        .unwrap();
    assert!(stream.tensors().is_none());
    let plain = system
        .seal(SealRequest::new("plain", "m", 0, pattern(10_000)))
        .await
        .unwrap();
    assert!(plain.tensors().is_none());
    let lease = system.lease(&plain, VerifyMode::Full).await.unwrap();
    assert!(lease.tensors().is_none());
    assert!(lease.tensor("positions").is_none());
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_views_read_their_own_bytes_at_256_byte_aligned_addresses() {
    let system = common::start(1, 8 << 20).await;
    let bytes = fixture_bytes();
    let shard = system
        .seal(SealRequest::from_file("st", "file:model", 0, fixture()))
        .await
        .unwrap();
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    assert_eq!(lease.tensors().unwrap(), &expected()[..]);

    // The padding is invisible to the lease: offset 0 is the file's first byte.
    let mut all = vec![0u8; bytes.len()];
    lease.read(0, &mut all).unwrap();
    assert_eq!(all, bytes);
    let base = *lease.device_ptr().as_kernel_arg();
    assert_eq!(
        (base + DATA_START) % 256,
        0,
        "the data section is 256-byte aligned"
    );

    let mut aligned = 0;
    for t in lease.tensors().unwrap() {
        let view = lease.tensor(&t.name).unwrap();
        assert_eq!(view.info(), t);
        let ptr = view.device_ptr();
        let at = *ptr.as_kernel_arg();
        assert_eq!(at - base, t.start, "{}", t.name);
        if (t.start - DATA_START).is_multiple_of(256) {
            assert_eq!(at % 256, 0, "{} is at a 256-byte data offset", t.name);
            aligned += 1;
        }
        let mut got = vec![0u8; t.len() as usize];
        view.read(0, &mut got).unwrap();
        assert_eq!(got, &bytes[t.start as usize..t.end as usize], "{}", t.name);
        if !view.is_empty() {
            let mut last = [0u8; 1];
            view.read(view.len() - 1, &mut last).unwrap();
            assert_eq!(last[0], bytes[t.end as usize - 1]);
        }
        // Never past the tensor's end, even where the shard goes on.
        let mut two = [0u8; 2];
        let err = view
            .read(view.len().saturating_sub(1), &mut two)
            .unwrap_err();
        assert!(matches!(err, VramError::InvalidInput(_)), "{err:?}");
        assert!(matches!(
            view.read(u64::MAX, &mut two),
            Err(VramError::InvalidInput(_))
        ));
        view.read(view.len(), &mut []).unwrap();
        // No address in its Debug.
        let shown = format!("{view:?} {ptr:?}");
        assert!(
            !shown.contains(&at.to_string()) && !shown.contains(&format!("{at:x}")),
            "{shown}"
        );
        assert!(shown.contains(&t.name), "{shown}");
    }
    assert_eq!(
        aligned, 5,
        "positions, embed.weight, empty, layers.1.mlp.w, scale"
    );
    assert!(lease.tensor("no.such.tensor").is_none());
    assert!(lease.tensor("").is_none());
    assert!(lease.tensor("__metadata__").is_none());
    drop(lease);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_at_a_tensors_shard_offset_is_found_there_and_names_it() {
    let system = common::start(1, 8 << 20).await;
    let shard = system
        .seal(SealRequest::from_file("st", "file:model", 0, fixture()))
        .await
        .unwrap();
    let q = shard
        .tensors()
        .unwrap()
        .iter()
        .find(|t| t.name == "layers.0.attn.q.weight")
        .unwrap()
        .clone();
    // The first byte of chunk 3: were the offset taken from the allocation's start (96 bytes
    // of padding earlier), the flip would land in chunk 2.
    let offset = 3 * 4096 + 5;
    assert!(q.start <= offset && offset < q.end);
    assert_eq!((offset - LEAD) / 4096, 2);
    let (bad_chunks, bad_tensors) = common::flip_and_verify(&system, &shard, offset, 0x40).await;
    assert_eq!(bad_chunks.len(), 1, "{bad_chunks:?}");
    assert_eq!((bad_chunks[0].offset, bad_chunks[0].len), (3 * 4096, 4096));
    // Chunk 3 (12288..16384) holds the rest of q.weight and the start of tokens.mask.
    assert_eq!(
        bad_tensors,
        &[
            "layers.0.attn.q.weight".to_string(),
            "tokens.mask".to_string()
        ]
    );
    system.release(shard).await.unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_counts_the_padding_and_comes_back_to_the_start() {
    let system = common::start(1, 8 << 20).await;
    let start = system.capacity(0).await.unwrap();
    assert_eq!(start.used_bytes, 0);
    let len = fixture_bytes().len() as u64;
    let shard = system
        .seal(SealRequest::from_file("st", "file:model", 0, fixture()))
        .await
        .unwrap();
    assert_eq!(
        shard.info().vram_bytes,
        len,
        "the seal covers the file's bytes"
    );
    let used = system.capacity(0).await.unwrap();
    assert_eq!(used.used_bytes, len + LEAD);
    assert_eq!(used.available_bytes, start.available_bytes - len - LEAD);

    // A lease keeps the memory, padding included, counted after a release.
    let lease = system.lease(&shard, VerifyMode::Full).await.unwrap();
    assert_eq!(system.release(shard).await.unwrap(), len + LEAD);
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, len + LEAD);
    let mut first = [0u8; 8];
    lease
        .tensor("positions")
        .unwrap()
        .read(0, &mut first)
        .unwrap();
    assert_eq!(i64::from_le_bytes(first), -64);
    drop(lease);
    assert_eq!(system.capacity(0).await.unwrap(), start);

    // The allocation audit says what was asked for and what was allocated.
    let lines = system.audit_lines().await.unwrap();
    let allocated = lines
        .iter()
        .find(|l| l.contains("\"VramAllocated\""))
        .unwrap();
    assert!(
        allocated.contains(&format!("\"requested_bytes\":{len}"))
            && allocated.contains(&format!("\"allocated_bytes\":{}", len + LEAD)),
        "{allocated}"
    );

    // Bytes that are not safetensors get no padding.
    let plain = system
        .seal(SealRequest::new("plain", "m", 0, pattern(10_000)))
        .await
        .unwrap();
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, 10_000);
    assert_eq!(system.release(plain).await.unwrap(), 10_000);
    assert_eq!(system.capacity(0).await.unwrap(), start);
    system.shutdown().await.unwrap();
}
