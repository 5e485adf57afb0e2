//! The `.specs/design.md` §3 walk-through, runnable: start two simulated devices, seal a shard, verify it
//! three ways, lease it and execute on it, attest it, catch an injected bit flip, release, shut down.
//!
//! `cargo run --release --example quickstart`

use vram_residency::{
    Config, Fault, SealRequest, SealedShard, VerifyMode, VramCapacity, VramError, VramResidency,
};

#[tokio::main]
async fn main() -> Result<(), VramError> {
    let config = Config::simulated(2, 512 << 20)
        .worker_id("worker-1")
        .worker_token("at-least-16-bytes-of-token")
        .chunk_size(1 << 20);
    let system = VramResidency::start(config).await?;
    println!("backend: {}", system.backend_description());

    // 64 MiB of deterministic "weights".
    let bytes: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let shard: SealedShard = system
        .seal(SealRequest::new(
            "llama-7b-q4",
            "hf:org/model@rev",
            0,
            bytes,
        ))
        .await?;
    let info = shard.info();
    println!(
        "sealed {} on device {}: sha256 {}",
        info.shard_id, info.gpu_device, info.digest
    );
    println!("{}", serde_json::to_string_pretty(info).unwrap_or_default());

    for mode in [
        VerifyMode::Full,
        VerifyMode::Sampled { chunks: 16 },
        VerifyMode::SignatureOnly,
    ] {
        let r = system.verify(&shard, mode).await?;
        println!(
            "verify {:<15} ok: {} of {} chunks read back in {:?}",
            mode.to_string(),
            r.chunks_checked,
            r.total_chunks,
            r.elapsed
        );
    }
    system.verify_info(info).await?;
    let lease = system
        .lease(&shard, VerifyMode::Sampled { chunks: 16 })
        .await?;
    let mut first = [0u8; 8];
    lease.read(0, &mut first)?;
    println!(
        "leased {} verified bytes (first bytes {first:?})",
        lease.len()
    );
    drop(lease);
    let out = system.execute(&shard, |view| view.len()).await?;
    println!("execute ran on a verified view of {out} bytes");

    let attestation = system.attest(&shard, b"challenger-nonce-1").await?;
    println!(
        "attested at {} ns: {}",
        attestation.verified_at_unix_nanos, &attestation.signature
    );

    let cap: VramCapacity = system.capacity(0).await?;
    println!(
        "device 0: {} of {} bytes used",
        cap.used_bytes, cap.total_bytes
    );

    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: "llama-7b-q4".into(),
                offset: 4096,
                mask: 0x01,
            },
        )
        .await?;
    match system.verify(&shard, VerifyMode::Full).await {
        Err(e @ VramError::SealVerificationFailed { .. }) => println!("bit flip caught: {e}"),
        other => {
            eprintln!("the flipped bit was NOT caught: {other:?}");
            std::process::exit(1);
        }
    }
    match system.execute(&shard, |view| view.len()).await {
        Err(e) => println!("execute refused: {e}"),
        Ok(_) => {
            eprintln!("executed from corrupted weights");
            std::process::exit(1);
        }
    }

    let freed: u64 = system.release(shard).await?;
    println!(
        "released {freed} bytes; device 0 now uses {} bytes",
        system.capacity(0).await?.used_bytes
    );
    let lines = system.audit_lines().await?;
    println!(
        "audit log: {} records, last: {}",
        lines.len(),
        lines.last().map(String::as_str).unwrap_or("")
    );
    system.shutdown().await?;
    Ok(())
}
