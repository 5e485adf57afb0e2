//! Naming the tensors behind bad chunks stays correct and cheap against a crafted safetensors
//! header: a million zero-size tensors in front of one real 16 MiB tensor must neither crowd
//! the real tensor out of the error nor make localisation quadratic. Everything goes through
//! the public API, as a worker would call it.
#![allow(clippy::unwrap_used, clippy::panic, clippy::arithmetic_side_effects)] // test code fails loudly

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vram_residency::seal::tensors::{HEADER_NAME, TensorMap};
use vram_residency::{Config, Fault, SealRequest, VerifyMode, VramError, VramResidency};

const TOKEN: &str = "integration-test-token-0123456789";
const CHUNK: u64 = 4096;
/// Zero-size tensors in the crafted header (about 57 MB of JSON, under the 100 MB limit).
const EMPTY_TENSORS: usize = 1_000_000;
/// The one tensor that holds bytes.
const BIG: u64 = 16 << 20;
/// Chunks flipped inside `big` per verification.
const FLIPS: u64 = 1024;

/// Writes `EMPTY_TENSORS` zero-size tensors `z0, z1, …` (all at data offset 0, so they sort in
/// front of `big`) and the 16 MiB tensor `big`. The header is padded with spaces so the data
/// starts mid-chunk: the chunk holding the first byte of `big` also holds header bytes.
/// Returns the path and the absolute offset at which the data (`big`) starts.
fn crafted_file(dir: &Path) -> (PathBuf, u64) {
    let mut header = String::with_capacity(EMPTY_TENSORS * 60 + 128);
    header.push('{');
    for i in 0..EMPTY_TENSORS {
        write!(
            header,
            r#""z{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}},"#
        )
        .unwrap();
    }
    write!(
        header,
        r#""big":{{"dtype":"U8","shape":[{BIG}],"data_offsets":[0,{BIG}]}}}}"#
    )
    .unwrap();
    while (8 + header.len() as u64) % CHUNK != CHUNK / 2 {
        header.push(' ');
    }
    assert!(
        header.len() <= 100_000_000,
        "the header must stay under the 100 MB limit the safetensors crate applies"
    );
    let data_start = 8 + header.len() as u64;
    let mut bytes = Vec::with_capacity((data_start + BIG) as usize);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..BIG).map(|i| ((i * 31 + 7) % 251) as u8));
    let path = dir.join("crafted.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    (path, data_start)
}

/// Seals the file as `id`, flips one bit in each chunk at `offsets`, verifies in full and
/// returns the tensors the failure names, printing how long the verification took.
async fn flip_and_verify(
    system: &VramResidency,
    path: &Path,
    id: &str,
    offsets: &[u64],
) -> Vec<String> {
    let shard = system
        .seal(SealRequest::from_file(
            id,
            "file:crafted.safetensors",
            0,
            path,
        ))
        .await
        .unwrap();
    for &offset in offsets {
        let fault = Fault::FlipBits {
            shard_id: id.into(),
            offset,
            mask: 0x10,
        };
        system.inject_fault(0, fault).await.unwrap();
    }
    let t = Instant::now();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    let took = t.elapsed();
    println!(
        "{id}: verify (Full, {} bad chunks, {EMPTY_TENSORS} zero-size tensors) took {took:?}",
        offsets.len()
    );
    let VramError::SealVerificationFailed { bad_tensors, .. } = err else {
        panic!("{err:?}")
    };
    system.release(shard).await.unwrap();
    system.reset_device(0).await.unwrap();
    bad_tensors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_empty_tensors_neither_hide_the_real_one_nor_slow_localisation() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let (path, data_start) = crafted_file(dir.path());
    println!("writing the crafted file took {:?}", t.elapsed());

    // The header is accepted, and the map holds only what holds bytes.
    let t = Instant::now();
    let map = TensorMap::from_file(&path).expect("a 1M-tensor header is accepted");
    println!("parsing its header took {:?}", t.elapsed());
    let names: Vec<&str> = map.spans().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [HEADER_NAME, "big"]);
    drop(map);

    let system = VramResidency::start(
        Config::simulated(1, 128 << 20)
            .worker_id("worker-test")
            .worker_token(TOKEN)
            .chunk_size(CHUNK)
            .call_timeout(Duration::from_secs(300)),
    )
    .await
    .unwrap();

    // 1,024 chunks wholly inside `big`, every fourth one from the first full chunk on: each
    // chunk's lookup has a million zero-size tensors before it in offset order.
    let first_full = data_start.div_ceil(CHUNK);
    let inside: Vec<u64> = (0..FLIPS)
        .map(|i| (first_full + 4 * i) * CHUNK + 100)
        .collect();
    assert!(*inside.last().unwrap() < data_start + BIG);
    let named = flip_and_verify(&system, &path, "inside", &inside).await;
    assert_eq!(named, ["big"]);

    // The attack as reported: the first bad chunk holds the end of the header and the start of
    // `big` (where all the zero-size tensors sit), then 1,023 more inside `big`. The header is
    // named for its bytes in that chunk, `big` right after it, and no zero-size tensor at all.
    let mut edge = vec![data_start];
    edge.extend(inside.iter().take(FLIPS as usize - 1));
    let named = flip_and_verify(&system, &path, "edge", &edge).await;
    assert_eq!(named, [HEADER_NAME, "big"]);
    assert!(!named.iter().any(|n| n.starts_with('z')), "{named:?}");

    system.shutdown().await.unwrap();
}
