//! The CUDA leaf kernel's SHA-256, tested on the host. `src/gpu/cuda/sha256_leaf.cu` is the
//! source of the PTX the crate embeds (`scripts/gen-ptx.sh`); `tests/kernel_shim/shim.c` builds
//! the very same file with the system C compiler (CUDA qualifiers defined away, a loop standing
//! in for the thread index), and these tests compare what it prints with the crate's own RFC 6962 leaf hashes and
//! with `sha2`. So the kernel's arithmetic, its one-byte-prefix word shifting, its padding of
//! short last chunks, the index-list path, the out-of-range rule and the fault-injection XOR
//! are all checked in CI, which has no GPU. Where no C compiler exists the tests say so and
//! pass without running.
#![allow(clippy::unwrap_used)] // test code fails loudly

use crate::common;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use vram_residency::seal::merkle::{Hash, leaf_hash, leaf_hashes_sequential, root_from_leaves};

const KERNEL: &str = "src/gpu/cuda/sha256_leaf.cu";
const SHIM: &str = "tests/kernel_shim/shim.c";

/// The shim, compiled into a directory that lives as long as the test that built it.
struct Shim {
    dir: TempDir,
    exe: PathBuf,
}

/// A C compiler that answers `--version`: `$CC` (program plus any arguments), else `cc`, `gcc`,
/// `clang`.
fn c_compiler() -> Option<(OsString, Vec<String>)> {
    let from_env = std::env::var("CC").ok().and_then(|cc| {
        let mut words = cc.split_whitespace().map(str::to_owned);
        let program = words.next()?;
        Some((OsString::from(program), words.collect::<Vec<_>>()))
    });
    let fallbacks = ["cc", "gcc", "clang"]
        .into_iter()
        .map(|c| (OsString::from(c), Vec::new()));
    from_env
        .into_iter()
        .chain(fallbacks)
        .find(|(program, args)| {
            Command::new(program)
                .args(args)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Builds the shim warnings-clean (`-Werror`), or returns `None` after saying why the test is
/// skipped. A compiler that exists but rejects the source fails the test.
fn shim() -> Option<Shim> {
    let Some((cc, cc_args)) = c_compiler() else {
        eprintln!(
            "skipping: no C compiler ($CC, cc, gcc or clang) found, so the CUDA leaf kernel's \
             host test did not run"
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("leaf_kernel_shim");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIM);
    let out = Command::new(&cc)
        .args(&cc_args)
        .args([
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fno-strict-aliasing",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cc:?} could not build the kernel shim:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Shim { dir, exe })
}

impl Shim {
    fn run(&self, args: &[String]) -> String {
        let out = Command::new(&self.exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "shim {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn data_file(&self, data: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        file.write_all(data).unwrap();
        file.flush().unwrap();
        file
    }

    /// The kernel's output slots: leaf hashes of `data` cut into `chunk_size` leaves, for every
    /// leaf (`indices == None`, the NULL path) or the listed ones. The bytes sit `base_offset`
    /// bytes past a 256-byte boundary.
    fn leaves(
        &self,
        data: &[u8],
        chunk_size: u64,
        base_offset: u64,
        indices: Option<&[u64]>,
    ) -> Vec<Hash> {
        let file = self.data_file(data);
        let mut args = vec![
            "leaves".to_owned(),
            file.path().to_str().unwrap().to_owned(),
            chunk_size.to_string(),
            base_offset.to_string(),
        ];
        match indices {
            None => args.push("all".to_owned()),
            Some(list) => {
                args.push("list".to_owned());
                args.extend(list.iter().map(u64::to_string));
            }
        }
        self.run(&args)
            .lines()
            .map(|line| hex::decode(line).unwrap().try_into().unwrap())
            .collect()
    }

    /// `data` after `vr_xor_byte(data, offset, mask)` ran over a whole block of threads.
    fn xor(&self, data: &[u8], offset: u64, mask: u8) -> Vec<u8> {
        let file = self.data_file(data);
        let out = self.run(&[
            "xor".to_owned(),
            file.path().to_str().unwrap().to_owned(),
            offset.to_string(),
            mask.to_string(),
        ]);
        hex::decode(out.trim_end()).unwrap()
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// One chunk of every length the tail logic distinguishes: 0..=200 covers no/one/two/three whole
/// 64-byte groups with every remainder (the one-or-two final block edge sits at 54/55 bytes
/// after the last group, the prefix byte making 55/56 and 63/64 byte chunks the SHA-256 block
/// edges), plus lengths around larger powers of two. Aligned and unaligned starts.
#[test]
fn every_chunk_length_around_the_block_edges_matches_the_crate() {
    let Some(shim) = shim() else { return };
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let lengths = (0..=200usize).chain([247, 255, 256, 257, 1023, 1024, 1025, 4095, 4096]);
    for len in lengths {
        let data = random_bytes(&mut rng, len);
        for base_offset in [0, 3] {
            let got = shim.leaves(&data, 4096, base_offset, None);
            if len == 0 {
                assert!(got.is_empty(), "an empty shard has no leaves");
                continue;
            }
            assert_eq!(
                got,
                vec![leaf_hash(&data)],
                "chunk of {len} bytes, base offset {base_offset}"
            );
        }
    }
}

/// Shards of many chunks whose last chunk is short (or not), at chunk sizes that are multiples
/// of 16 (every chunk read with 16-byte loads) and ones that are not (chunk starts alternate
/// between the wide and the byte path), from aligned and unaligned bases.
#[test]
fn multi_chunk_shards_with_short_last_chunks_match_the_crate() {
    let Some(shim) = shim() else { return };
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    let lengths = [
        5197,
        3 * 4096 + 1,
        4 * 4096 - 1,
        4 * 4096,
        65536 + 100,
        70_000,
        (1 << 20) + 333,
    ];
    let chunk_sizes = [64u64, 100, 1000, 1024, 4096, 4097, 65536];
    for len in lengths {
        let data = random_bytes(&mut rng, len);
        for chunk_size in chunk_sizes {
            let expected = leaf_hashes_sequential(&data, chunk_size as usize);
            for base_offset in [0, 1, 8] {
                let got = shim.leaves(&data, chunk_size, base_offset, None);
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "{len} bytes at chunk size {chunk_size}: leaf count"
                );
                if let Some(bad) = got.iter().zip(&expected).position(|(g, e)| g != e) {
                    panic!(
                        "{len} bytes, chunk size {chunk_size}, base offset {base_offset}: \
                         leaf {bad} differs"
                    );
                }
            }
        }
    }
}

/// The sampled-verification path: slot i holds the hash of leaf indices[i], in the given order,
/// repeats allowed; an index past the end (or any index at chunk size 0) yields 32 zero bytes
/// and reads nothing.
#[test]
fn the_index_list_path_hashes_the_listed_leaves_in_order() {
    let Some(shim) = shim() else { return };
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    let data = random_bytes(&mut rng, 70_000);
    let chunk_size = 1024u64;
    let expected = leaf_hashes_sequential(&data, chunk_size as usize);
    let leaves = expected.len() as u64; // 69, the last one 368 bytes
    assert_eq!(leaves, 69);

    let mut indices: Vec<u64> = (0..16).map(|_| rng.gen_range(0..leaves)).collect();
    indices.extend([0, leaves - 1, leaves - 1, 5, leaves, 1000, u64::MAX, 7]);
    for base_offset in [0, 5] {
        let got = shim.leaves(&data, chunk_size, base_offset, Some(&indices));
        assert_eq!(got.len(), indices.len());
        for (slot, (&index, hash)) in indices.iter().zip(&got).enumerate() {
            let want = expected.get(index as usize).copied().unwrap_or([0u8; 32]);
            assert_eq!(*hash, want, "slot {slot} (leaf {index})");
        }
    }

    // Chunk size 0 has no leaves: the NULL path has nothing to do, listed indices get zeros.
    assert!(shim.leaves(&data, 0, 0, None).is_empty());
    assert_eq!(shim.leaves(&data, 0, 0, Some(&[0, 1])), vec![[0u8; 32]; 2]);
    // So has an empty shard.
    assert_eq!(shim.leaves(&[], 4096, 0, Some(&[0])), vec![[0u8; 32]]);
    // An empty list produces nothing (and the spare threads of the launch write nothing).
    assert!(shim.leaves(&data, chunk_size, 0, Some(&[])).is_empty());
}

/// RFC 6962 domain separation: a leaf is SHA-256(0x00 ‖ chunk), checked here with `sha2`
/// directly rather than through the crate, and never the plain digest of the chunk nor the
/// inner-node form SHA-256(0x01 ‖ …).
#[test]
fn leaves_carry_the_rfc6962_leaf_prefix() {
    let Some(shim) = shim() else { return };
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    for len in [1usize, 31, 55, 56, 63, 64, 65, 119, 120, 4096] {
        let chunk = random_bytes(&mut rng, len);
        let got = shim.leaves(&chunk, 4096, 0, None);
        let prefixed = |p: u8| -> Hash {
            Sha256::new()
                .chain_update([p])
                .chain_update(&chunk)
                .finalize()
                .into()
        };
        let plain: Hash = Sha256::digest(&chunk).into();
        assert_eq!(got, vec![prefixed(0x00)], "{len} bytes");
        assert_ne!(got[0], plain, "{len} bytes: the 0x00 prefix is missing");
        assert_ne!(got[0], prefixed(0x01), "{len} bytes: node prefix used");
    }
}

/// Every chunk of every seal case in the shared vectors: the kernel's leaves equal the crate's,
/// and the Merkle root over the kernel's leaves is the published one.
#[test]
fn every_chunk_of_the_shared_seal_vectors_matches() {
    let Some(shim) = shim() else { return };
    let vectors: Value = serde_json::from_str(include_str!("../vectors/vectors-v1.json")).unwrap();
    let cases = vectors["seal_cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let data = common::pattern(case["data_len"].as_u64().unwrap() as usize);
        let chunk_size = case["info"]["chunk_size"].as_u64().unwrap();
        let root = case["info"]["merkle_root"].as_str().unwrap();

        let got = shim.leaves(&data, chunk_size, 0, None);
        assert_eq!(
            got,
            leaf_hashes_sequential(&data, chunk_size as usize),
            "{name}: leaves"
        );
        assert_eq!(hex::encode(root_from_leaves(&got)), root, "{name}: root");

        // The same chunks through the index path, last leaf first.
        let reversed: Vec<u64> = (0..got.len() as u64).rev().collect();
        let mut back = shim.leaves(&data, chunk_size, 0, Some(&reversed));
        back.reverse();
        assert_eq!(back, got, "{name}: index path");
    }
}

/// `vr_xor_byte` flips exactly the addressed byte by the mask, once, even when a whole block of
/// threads runs it.
#[test]
fn xor_byte_flips_one_byte_once() {
    let Some(shim) = shim() else { return };
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    let data = random_bytes(&mut rng, 100);
    for (offset, mask) in [(0u64, 0x01u8), (57, 0xff), (99, 0x80), (42, 0x00)] {
        let mut expected = data.clone();
        expected[offset as usize] ^= mask;
        assert_eq!(shim.xor(&data, offset, mask), expected, "offset {offset}");
    }
}

/// NVRTC on the GPU machine has no standard headers: the kernel source must include nothing,
/// and its entry points must keep the unmangled names the CUDA backend loads.
#[test]
fn the_kernel_source_includes_nothing_and_exports_c_names() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(KERNEL)).unwrap();
    for (number, line) in source.lines().enumerate() {
        assert!(
            !line.trim_start().starts_with("#include"),
            "{KERNEL}:{}: NVRTC cannot resolve includes here",
            number + 1
        );
    }
    for entry in [
        "VR_EXTERN_C __global__ void vr_sha256_leaves(",
        "VR_EXTERN_C __global__ void vr_xor_byte(",
    ] {
        assert!(source.contains(entry), "{KERNEL} lacks `{entry}`");
    }
    assert!(source.contains("#define VR_EXTERN_C extern \"C\""));
}
