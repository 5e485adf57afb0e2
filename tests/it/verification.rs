//! The verification engine: parallel leaves agree with the sequential definition, streaming
//! sources seal like in-memory ones, the background scrub catches corruption on its own, and
//! sampled verification reports its detection probability.

use crate::common;

use std::time::Duration;

use common::{pattern, start};
use proptest::prelude::*;
use vram_residency::seal::merkle::{
    MerkleTree, leaf_hashes_parallel, leaf_hashes_sequential, root_from_leaves,
};
use vram_residency::{Fault, SealRequest, StopCause, VerifyMode, VramError, VramResidency};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn parallel_and_sequential_merkle_roots_agree(
        len in 1usize..(10 << 20),
        chunk_pow in 12u32..=20,
        seed in any::<u8>(),
    ) {
        let chunk = 1usize << chunk_pow;
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let seq = leaf_hashes_sequential(&data, chunk);
        let par = leaf_hashes_parallel(&data, chunk);
        prop_assert_eq!(&seq, &par);
        prop_assert_eq!(seq.len(), len.div_ceil(chunk));
        let tree = MerkleTree::build(&data, chunk);
        prop_assert_eq!(tree.root(), &root_from_leaves(&seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_from_a_reader_seals_like_memory_and_rejects_short_or_long_streams() {
    let system = start(2, 16 << 20).await;
    let data = pattern(2 * 1024 * 1024 + 5);
    let a = system
        .seal(SealRequest::from_reader(
            "r",
            "stream",
            0,
            std::io::Cursor::new(data.clone()),
            data.len() as u64,
        ))
        .await
        .unwrap();
    let b = system
        .seal(SealRequest::new("r", "stream", 1, data.clone()))
        .await
        .unwrap();
    assert_eq!(a.info().digest, b.info().digest);
    assert_eq!(a.info().merkle_root, b.info().merkle_root);
    system.verify(&a, VerifyMode::Full).await.unwrap();
    let used = system.capacity(0).await.unwrap().used_bytes;

    // a stream that ends early or runs long fails, and gives its memory back
    let short = system
        .seal(SealRequest::from_reader(
            "short",
            "s",
            0,
            std::io::Cursor::new(data[..1000].to_vec()),
            5000,
        ))
        .await;
    assert!(
        matches!(
            short,
            Err(VramError::Io {
                kind: std::io::ErrorKind::UnexpectedEof,
                ..
            })
        ),
        "{short:?}"
    );
    let long = system
        .seal(SealRequest::from_reader(
            "long",
            "s",
            0,
            std::io::Cursor::new(data.clone()),
            1000,
        ))
        .await;
    assert!(
        matches!(
            long,
            Err(VramError::Io {
                kind: std::io::ErrorKind::InvalidData,
                ..
            })
        ),
        "{long:?}"
    );
    assert_eq!(system.capacity(0).await.unwrap().used_bytes, used);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_finds_a_flip_without_any_request_touching_the_shard() {
    let system =
        VramResidency::start(common::config(2, 4 << 20).scrub_interval(Duration::from_millis(20)))
            .await
            .unwrap();
    let victim = system
        .seal(SealRequest::new("victim", "m", 0, pattern(64 * 1024)))
        .await
        .unwrap();
    let _other = system
        .seal(SealRequest::new("other", "m", 0, pattern(64 * 1024)))
        .await
        .unwrap();
    let _elsewhere = system
        .seal(SealRequest::new("elsewhere", "m", 1, pattern(10)))
        .await
        .unwrap();
    // let the scrub pass over the intact shards first: it must not raise false alarms
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        system
            .seal(SealRequest::new("probe", "m", 0, pattern(10)))
            .await
            .is_ok()
    );
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "victim".into(),
                offset: 40_000,
                mask: 0x10,
            },
        )
        .await
        .unwrap();
    // no request touches the shard; the scrub has to find it and stop the device
    let found = common::eventually(|| async {
        matches!(
            system
                .seal(SealRequest::new("probe2", "m", 0, pattern(10)))
                .await,
            Err(VramError::DeviceStopped {
                device: 0,
                cause: StopCause::IntegrityFailure
            })
        )
    })
    .await;
    assert!(found, "the scrub never found the flipped bit");
    let lines = system.audit_lines().await.unwrap();
    let failed = lines
        .iter()
        .find(|l| l.contains("SealVerificationFailed"))
        .unwrap();
    assert!(
        failed.contains(r#""shard_id":"victim""#) && failed.contains(r#""first_bad_chunk":9"#),
        "{failed}"
    );
    assert!(lines.iter().any(|l| l.contains(r#""trigger":"scrub""#)));
    // the quarantined shard is refused; the other device never stopped
    assert!(system.execute(&victim, |v| v.len()).await.is_err());
    system
        .seal(SealRequest::new("fine", "m", 1, pattern(10)))
        .await
        .unwrap();
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_rate_limit_spaces_out_scrubs() {
    // 64 KiB shards at 64 KiB/s: at most about one scrub per second, even with a 5 ms tick
    let system = VramResidency::start(
        common::config(1, 4 << 20)
            .scrub_interval(Duration::from_millis(5))
            .scrub_rate_limit(64 * 1024),
    )
    .await
    .unwrap();
    let _a = system
        .seal(SealRequest::new("a", "m", 0, pattern(64 * 1024)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let scrubs = system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .filter(|l| l.contains(r#""trigger":"scrub""#))
        .count();
    assert!((1..=2).contains(&scrubs), "{scrubs} scrubs in 0.6 s");
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_reports_its_detection_probability() {
    let system = start(1, 4 << 20).await;
    let s = system
        .seal(SealRequest::new("s", "m", 0, pattern(100 * 4096)))
        .await
        .unwrap();
    let r = system
        .verify(&s, VerifyMode::Sampled { chunks: 10 })
        .await
        .unwrap();
    assert_eq!((r.chunks_checked, r.total_chunks), (10, 100));
    assert!((r.single_chunk_detection - 0.1).abs() < 1e-12);
    assert!((r.detection_probability(1) - 0.1).abs() < 1e-12);
    // 10 bad chunks of 100, 10 sampled: 1 - C(90,10)/C(100,10)
    let p = r.detection_probability(10);
    assert!((p - 0.669_523_788_9).abs() < 1e-6, "{p}");
    assert_eq!(r.detection_probability(91), 1.0);
    system.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_a_safetensors_file_names_the_tensor() {
    use safetensors::tensor::{Dtype, TensorView};
    let embed = pattern(3 * 4096);
    let q = vec![9u8; 2 * 4096 + 100];
    let bias = vec![1u8; 64];
    let bytes = safetensors::serialize(
        [
            (
                "model.embed_tokens.weight",
                TensorView::new(Dtype::U8, vec![embed.len()], &embed).unwrap(),
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                TensorView::new(Dtype::U8, vec![q.len()], &q).unwrap(),
            ),
            (
                "model.layers.0.self_attn.q_proj.bias",
                TensorView::new(Dtype::U8, vec![bias.len()], &bias).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let system = start(1, 4 << 20).await;
    let shard = system
        .seal(SealRequest::from_file(
            "st",
            "file:model.safetensors",
            0,
            &path,
        ))
        .await
        .unwrap();
    // a byte inside the q_proj weight (after the embeddings)
    let offset = header_len + embed.len() as u64 + 5000;
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "st".into(),
                offset,
                mask: 4,
            },
        )
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    let VramError::SealVerificationFailed {
        bad_chunks,
        bad_tensors,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(bad_chunks.len(), 1);
    let span = bad_chunks[0];
    assert!(span.offset <= offset && offset < span.offset + span.len);
    // the 4 KiB chunk holding the flip overlaps exactly the tensors whose bytes it covers
    assert!(
        bad_tensors.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()),
        "{bad_tensors:?}"
    );
    assert!(
        !bad_tensors.contains(&"model.layers.0.self_attn.q_proj.bias".to_string()),
        "{bad_tensors:?}"
    );
    assert!(
        err.to_string()
            .contains("model.layers.0.self_attn.q_proj.weight"),
        "{err}"
    );
    let lines = system.audit_lines().await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SealVerificationFailed") && l.contains("q_proj.weight"))
    );
    system.release(shard).await.unwrap();
    system.reset_device(0).await.unwrap();

    // sealing the same bytes from memory gives the same map; a flip in the header names it
    let shard = system
        .seal(SealRequest::new("mem", "m", 0, bytes.clone()))
        .await
        .unwrap();
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "mem".into(),
                offset: 20,
                mask: 1,
            },
        )
        .await
        .unwrap();
    let err = system.verify(&shard, VerifyMode::Full).await.unwrap_err();
    let VramError::SealVerificationFailed { bad_tensors, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(bad_tensors[0], vram_residency::seal::tensors::HEADER_NAME);
    system.shutdown().await.unwrap();
}

/// A corruption spread over many chunks is reported by count, with only the first few chunks
/// kept by range: the quarantine, and every refused call's error cloned from it, stay bounded
/// whatever the size of the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_corruption_is_counted_not_copied_into_every_error() {
    use vram_residency::error::MAX_REPORTED_BAD_CHUNKS;
    let system = common::start(1, 8 << 20).await;
    let chunks = 512u64; // 2 MiB of 4 KiB chunks
    let shard = system
        .seal(SealRequest::new(
            "wide",
            "m",
            0,
            common::pattern(4096 * chunks as usize),
        ))
        .await
        .unwrap();
    let flipped = 300u64;
    for i in 0..flipped {
        let fault = Fault::FlipBits {
            shard_id: "wide".into(),
            offset: i * 4096 + 17,
            mask: 0x20,
        };
        system.inject_fault(0, fault).await.unwrap();
    }
    let check = |err: &VramError| {
        let VramError::SealVerificationFailed {
            first_bad_chunk,
            bad_chunks,
            bad_chunk_count,
            ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*first_bad_chunk, Some(0));
        assert_eq!(*bad_chunk_count, flipped);
        assert_eq!(bad_chunks.len(), MAX_REPORTED_BAD_CHUNKS);
        let indices: Vec<u64> = bad_chunks.iter().map(|s| s.index).collect();
        assert_eq!(
            indices,
            (0..MAX_REPORTED_BAD_CHUNKS as u64).collect::<Vec<_>>()
        );
        assert!(
            err.to_string().contains("300 bad chunk(s) in total"),
            "{err}"
        );
    };
    check(&system.verify(&shard, VerifyMode::Full).await.unwrap_err());
    // Every later refusal carries the same bounded report.
    check(&system.execute(&shard, |v| v.len()).await.unwrap_err());
    check(&system.verify(&shard, VerifyMode::Full).await.unwrap_err());
    system.shutdown().await.unwrap();
}
