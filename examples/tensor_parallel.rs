//! A tensor-parallel model on four simulated devices: seal its four parts as one group, verify
//! the group, check its record the way a peer does (token only), corrupt one member and watch
//! the whole group fail (fail-all: no member executes any more), then release everything and
//! see every device back where it started.
//!
//! `cargo run --example tensor_parallel`

use vram_residency::{
    Config, Fault, GroupRequest, SealRequest, SealedGroup, VerifyMode, VramError, VramResidency,
    WorkerToken,
};

const TOKEN: &str = "tensor-parallel-example-token";
const MODEL: &str = "hf:org/llama-70b@rev";

#[tokio::main]
async fn main() -> Result<(), VramError> {
    let system = VramResidency::start(
        Config::simulated(4, 64 << 20)
            .worker_id("worker-1")
            .worker_token(TOKEN)
            .chunk_size(64 << 10),
    )
    .await?;
    let mut before = Vec::new();
    for device in 0..4 {
        before.push(system.capacity(device).await?);
    }

    // Four parts of 8 MiB of deterministic "weights", part i on device i.
    let mut request = GroupRequest::new("llama-70b-tp4", MODEL);
    for i in 0..4u32 {
        let bytes: Vec<u8> = (0..8u32 << 20)
            .map(|k| (k.wrapping_mul(31).wrapping_add(i) % 251) as u8)
            .collect();
        request = request.part(SealRequest::new(
            format!("llama-70b-tp4-{i}"),
            MODEL,
            i,
            bytes,
        ));
    }
    let group: SealedGroup = system.seal_group(request).await?;
    let info = group.info();
    println!(
        "sealed group {} ({}): {} members, signature {}",
        info.group_id,
        info.model_ref,
        info.members.len(),
        info.signature
    );
    for m in &info.members {
        println!(
            "  member {}/{}: {} on device {}, sha256 {}",
            m.shard_index.unwrap_or_default(),
            m.total_shards.unwrap_or_default(),
            m.shard_id,
            m.gpu_device,
            m.digest
        );
    }

    // What a peer receives is the JSON; the token alone checks every member seal, the
    // positions and the group signature.
    let json = serde_json::to_string(info).unwrap_or_default();
    println!("GroupInfo JSON: {} bytes", json.len());
    let received: vram_residency::GroupInfo = serde_json::from_str(&json)
        .map_err(|e| VramError::InvalidInput(format!("GroupInfo JSON: {e}")))?;
    received.verify(&WorkerToken::new(TOKEN)?)?;
    println!("peer check with the token alone: ok");

    let reports = system.verify_group(&group, VerifyMode::Full).await?;
    for r in &reports {
        println!(
            "  verified {} in full: {} chunks in {:?}",
            r.shard_id, r.chunks_checked, r.elapsed
        );
    }
    let nonce = b"control-plane-nonce-0001";
    let attestation = system.attest_group(&group, nonce).await?;
    vram_residency::verify_group_attestation(&attestation, &WorkerToken::new(TOKEN)?, nonce)?;
    println!(
        "one challenge, {} member attestations: ok",
        attestation.members.len()
    );

    // Corrupt one byte of member 2 in device memory.
    system
        .inject_fault(
            2,
            Fault::FlipBits {
                shard_id: "llama-70b-tp4-2".into(),
                offset: 3 << 20,
                mask: 0x04,
            },
        )
        .await?;
    match system.verify_group(&group, VerifyMode::Full).await {
        Err(e) => println!("group verification failed, as it should: {e}"),
        Ok(_) => {
            return Err(VramError::Internal(
                "a corrupted member went unnoticed".into(),
            ));
        }
    }
    // Fail-all: the intact members refuse to execute too.
    for member in group.shards() {
        match system.execute(member, |view| view.len()).await {
            Err(e) => println!("  execute on {}: refused ({e})", member.shard_id()),
            Ok(_) => {
                return Err(VramError::Internal(format!(
                    "{} executed although its group failed",
                    member.shard_id()
                )));
            }
        }
    }

    let freed = system.release_group(group).await?;
    println!("released the group: {freed} bytes freed");
    for device in 0..4 {
        let now = system.capacity(device).await?;
        let start = before.get(device as usize).map(|c| c.used_bytes);
        if start != Some(now.used_bytes) {
            return Err(VramError::Internal(format!(
                "device {device} did not come back to its starting accounting"
            )));
        }
        println!(
            "  device {device}: {} bytes used, as before",
            now.used_bytes
        );
    }
    system.shutdown().await
}
