//! The demo's acts, in the order they are narrated: generate the model file (1), seal it (2),
//! verify it in each mode (3), execute on a verified view (4), attest a nonce (5), flip a bit (6),
//! detect it (7), fail closed on device 0 while device 1 keeps serving (8), release (9), shut
//! down (10) and verify the audit log offline (11). Each act prints its heading, checks its own
//! claim and records the outcome in `Demo`; [`story`] runs acts 2 to 9 on a started worker and
//! `super::run` does the rest.

use std::path::Path;
use std::time::Instant;

use rand::RngCore;
use serde_json::{Value, json};
use vram_residency::{
    Fault, SealRequest, SealedShard, VerifyMode, VramError, VramResidency, WorkerToken, audit,
    verify_attestation,
};

use super::{BLOCK, Demo, Model, Outcome, SHARD_A, SHARD_B, generate_model};
use crate::cli::error::CliError;
use crate::cli::{human_bytes, millis, progress, verify_info};

/// Act 1: generates the model file in `dir`.
pub(super) fn generate(demo: &mut Demo, dir: &Path, size: u64) -> Result<Model, CliError> {
    demo.heading(&format!("1. generate a {} model file", human_bytes(size)));
    let t = Instant::now();
    let model = generate_model(&dir.join("demo-model.bin"), size)?;
    demo.say(format!("   {}", model.path.display()));
    demo.step(
        "generate model file",
        true,
        format!(
            "{} written in {}, sha256 {}",
            human_bytes(model.size),
            millis(t.elapsed()),
            model.sha256
        ),
    );
    demo.put("model", json!({"size": model.size, "sha256": model.sha256}));
    Ok(model)
}

/// Acts 2 to 9 on the started worker. Only a failed seal (act 2) ends the story early.
pub(super) async fn story(
    demo: &mut Demo,
    system: &VramResidency,
    model: &Model,
    token: &WorkerToken,
) -> Result<(), CliError> {
    let shard = seal(demo, system, model).await?;
    verify_each_mode(demo, system, &shard).await;
    execute(demo, system, &shard, model).await;
    attest(demo, system, &shard, token).await;
    let flipped_at = flip_bit(demo, system, model).await;
    detect(demo, system, &shard, flipped_at).await;
    let shard_b = fail_closed(demo, system, &shard, model, flipped_at.is_some()).await;
    release(demo, system, shard, shard_b).await;
    Ok(())
}

/// Act 2: seals the model file into device 0, streamed, and compares the digest with the file's.
async fn seal(
    demo: &mut Demo,
    system: &VramResidency,
    model: &Model,
) -> Result<SealedShard, CliError> {
    demo.heading("2. seal it into device 0 (streamed from the file)");
    let bar = progress::bytes_bar(model.size, SHARD_A);
    let t = Instant::now();
    let sealed = system
        .seal(
            SealRequest::from_file(SHARD_A, "file:demo-model.bin", 0, model.path.clone())
                .on_progress(progress::seal_callback(&bar)),
        )
        .await;
    bar.finish_and_clear();
    let shard = sealed.map_err(|e| CliError::from(e).context("sealing the demo model"))?;
    let seal_time = t.elapsed();
    show_info(demo, &shard);
    let same = shard.info().digest == model.sha256;
    demo.step(
        "seal from file",
        same,
        if same {
            format!(
                "sealed in {}; digest equals the file's SHA-256 (what sha256sum prints)",
                millis(seal_time)
            )
        } else {
            format!(
                "digest {} differs from the file's SHA-256 {}",
                shard.info().digest,
                model.sha256
            )
        },
    );
    demo.put("shard", json!(shard.info()));
    Ok(shard)
}

/// Act 3: verifies the shard in each mode, with timings.
async fn verify_each_mode(demo: &mut Demo, system: &VramResidency, shard: &SealedShard) {
    demo.heading("3. verify in each mode");
    let mut reports = Vec::new();
    for (name, mode) in [
        ("verify full", VerifyMode::Full),
        ("verify sampled(16)", VerifyMode::Sampled { chunks: 16 }),
        ("verify signature-only", VerifyMode::SignatureOnly),
    ] {
        match system.verify(shard, mode).await {
            Ok(r) => {
                let what = if r.chunks_checked == 0 {
                    "seal signature checked, shard resident; no device memory read".to_string()
                } else {
                    format!(
                        "{:>4} of {} chunks ({}) read back from device memory",
                        r.chunks_checked,
                        r.total_chunks,
                        human_bytes(r.bytes_checked)
                    )
                };
                demo.step(
                    name,
                    true,
                    format!(
                        "{:<15} ok in {:>11}: {what}",
                        mode.to_string(),
                        millis(r.elapsed)
                    ),
                );
                reports.push(json!(r));
            }
            Err(e) => {
                demo.step(name, false, format!("{mode} failed: {e}"));
            }
        }
    }
    demo.put("verifications", Value::Array(reports));
}

/// Act 4: executes a closure on a verified view and checks it reads the file's first bytes.
async fn execute(demo: &mut Demo, system: &VramResidency, shard: &SealedShard, model: &Model) {
    demo.heading("4. execute on a verified view");
    let want = model.head.clone();
    let len = want.len();
    let got = system
        .execute(shard, move |view| {
            let mut buf = vec![0u8; len];
            view.read(0, &mut buf).map(|()| buf)
        })
        .await;
    match got {
        Ok(Ok(bytes)) if bytes == want => demo.step(
            "execute",
            true,
            format!(
                "verified first, then the closure read {} bytes from device memory: {}… (match the file)",
                bytes.len(),
                hex::encode(bytes.get(..8).unwrap_or(&bytes))
            ),
        ),
        Ok(Ok(_)) => demo.step(
            "execute",
            false,
            "the bytes read from device memory differ from the file",
        ),
        Ok(Err(e)) | Err(e) => demo.step("execute", false, format!("execute failed: {e}")),
    };
}

/// Act 5: attests to a random nonce and checks the attestation, and that another nonce fails.
async fn attest(demo: &mut Demo, system: &VramResidency, shard: &SealedShard, token: &WorkerToken) {
    demo.heading("5. attest to a challenger's nonce");
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    match system.attest(shard, &nonce).await {
        Ok(att) => {
            let good = verify_attestation(&att, token, &nonce).is_ok();
            let mut other = nonce;
            if let Some(b) = other.first_mut() {
                *b ^= 0xff;
            }
            let replay_refused = verify_attestation(&att, token, &other).is_err();
            demo.say(format!(
                "   nonce {}…, verified {}, signature {}…",
                hex::encode(nonce.get(..8).unwrap_or(&nonce)),
                att.verified_mode,
                att.signature.chars().take(16).collect::<String>()
            ));
            demo.step(
                "attest",
                good && replay_refused,
                match (good, replay_refused) {
                    (true, true) => {
                        "the attestation verifies with the token and this nonce; another nonce is refused"
                            .to_string()
                    }
                    (false, _) => "the attestation did NOT verify".to_string(),
                    (true, false) => "the attestation verified for a different nonce".to_string(),
                },
            );
        }
        Err(e) => {
            demo.step("attest", false, format!("attest failed: {e}"));
        }
    }
}

/// Act 6: flips one bit of the shard on device 0 (in host memory on a simulated device, with a
/// device-side XOR kernel on CUDA, where the demo opted in to fault injection). Returns the
/// flipped byte's offset, or `None` when no fault was injected.
async fn flip_bit(demo: &mut Demo, system: &VramResidency, model: &Model) -> Option<u64> {
    demo.heading("6. flip one bit in device memory");
    let offset = model
        .size
        .checked_div(2)
        .unwrap_or(0)
        .saturating_add(12_345)
        .min(model.size.saturating_sub(1));
    let fault = Fault::FlipBits {
        shard_id: SHARD_A.into(),
        offset,
        mask: 0x01,
    };
    match system.inject_fault(0, fault).await {
        Ok(()) => {
            demo.step(
                "inject bit flip",
                true,
                format!("XOR 0x01 into byte {offset} of {SHARD_A} on device 0"),
            );
            Some(offset)
        }
        Err(e) => {
            demo.step(
                "inject bit flip",
                false,
                format!("fault injection failed: {e}"),
            );
            None
        }
    }
}

/// Act 7: a full verification must catch the flipped bit (at `flipped_at`) and name the chunk
/// that holds it.
async fn detect(
    demo: &mut Demo,
    system: &VramResidency,
    shard: &SealedShard,
    flipped_at: Option<u64>,
) {
    demo.heading("7. detect it");
    let Some(offset) = flipped_at else {
        demo.record("detect flip", Outcome::Skip, "no fault was injected");
        return;
    };
    let t = Instant::now();
    match system.verify(shard, VerifyMode::Full).await {
        Err(e @ VramError::SealVerificationFailed { .. }) => {
            let spans = match &e {
                VramError::SealVerificationFailed { bad_chunks, .. } => bad_chunks.clone(),
                _ => Vec::new(),
            };
            let covering = spans.iter().find(|c| {
                offset
                    .checked_sub(c.offset)
                    .is_some_and(|inside| inside < c.len)
            });
            demo.say(format!("   caught in {}: {e}", millis(t.elapsed())));
            demo.put(
                "detection",
                json!({"error": e.to_string(), "flipped_offset": offset, "bad_chunks": spans}),
            );
            match covering {
                Some(c) => demo.step(
                    "detect flip",
                    true,
                    format!(
                        "full verify caught it: chunk {} (bytes {}..{}) holds flipped byte {offset}",
                        c.index,
                        c.offset,
                        c.offset.saturating_add(c.len)
                    ),
                ),
                None => demo.step(
                    "detect flip",
                    false,
                    format!("verification failed but no reported chunk covers byte {offset}"),
                ),
            };
        }
        Err(e) => {
            demo.step(
                "detect flip",
                false,
                format!("verification failed with an unexpected error: {e}"),
            );
        }
        Ok(_) => {
            demo.step(
                "detect flip",
                false,
                "the flipped bit was NOT caught: full verification passed",
            );
        }
    }
}

/// Act 8: after the flip, device 0 must refuse to execute and to seal, while device 1 seals,
/// verifies and executes a second shard. Returns that shard, to be released.
async fn fail_closed(
    demo: &mut Demo,
    system: &VramResidency,
    shard: &SealedShard,
    model: &Model,
    flipped: bool,
) -> Option<SealedShard> {
    demo.heading("8. fail closed on device 0, keep serving on device 1");
    if !flipped {
        demo.record(
            "device 0 fails closed",
            Outcome::Skip,
            "no fault was injected",
        );
        return None;
    }
    match system.execute(shard, |view| view.len()).await {
        Err(e) => demo.step(
            "execute refused",
            true,
            format!("execute on the corrupted shard refused: {e}"),
        ),
        Ok(_) => demo.step("execute refused", false, "executed from corrupted weights"),
    };

    let small = usize::try_from(model.size.min(4 << 20)).unwrap_or(BLOCK);
    let mut bytes = vec![0u8; small];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let on0 = system
        .seal(SealRequest::new(
            SHARD_B,
            "demo:generated",
            0,
            bytes.clone(),
        ))
        .await;
    match on0 {
        Err(e @ VramError::DeviceStopped { device: 0, .. }) => demo.step(
            "device 0 refuses new seals",
            true,
            format!("new seal on device 0 refused: {e}"),
        ),
        Err(e) => demo.step(
            "device 0 refuses new seals",
            false,
            format!("refused, but not as DeviceStopped: {e}"),
        ),
        Ok(s) => {
            let _ = system.release(s).await;
            demo.step(
                "device 0 refuses new seals",
                false,
                "device 0 accepted a new seal after an integrity failure",
            )
        }
    };
    if system.device_count() < 2 {
        demo.record(
            "device 1 keeps serving",
            Outcome::Skip,
            "this machine has one device: there is no other device to keep serving",
        );
        return None;
    }
    serve_on_device_1(demo, system, bytes).await
}

/// The second half of act 8: device 1 seals, verifies and executes `bytes`.
async fn serve_on_device_1(
    demo: &mut Demo,
    system: &VramResidency,
    bytes: Vec<u8>,
) -> Option<SealedShard> {
    let head: Vec<u8> = bytes.iter().take(16).copied().collect();
    let served = async {
        let b = system
            .seal(SealRequest::new(SHARD_B, "demo:generated", 1, bytes))
            .await?;
        system.verify(&b, VerifyMode::Full).await?;
        let len = head.len();
        let read = system
            .execute(&b, move |view| {
                let mut buf = vec![0u8; len];
                view.read(0, &mut buf).map(|()| buf)
            })
            .await??;
        Ok::<_, VramError>((b, read == head))
    }
    .await;
    match served {
        Ok((b, true)) => {
            demo.step(
                "device 1 keeps serving",
                true,
                format!(
                    "device 1 sealed, verified and executed {} ({})",
                    SHARD_B,
                    human_bytes(b.info().vram_bytes)
                ),
            );
            Some(b)
        }
        Ok((b, false)) => {
            demo.step(
                "device 1 keeps serving",
                false,
                "device 1 returned bytes that differ from what was sealed",
            );
            Some(b)
        }
        Err(e) => {
            demo.step(
                "device 1 keeps serving",
                false,
                format!("device 1 failed: {e}"),
            );
            None
        }
    }
}

/// Act 9: releases both shards and checks every device is back to 0 bytes used.
async fn release(
    demo: &mut Demo,
    system: &VramResidency,
    shard: SealedShard,
    shard_b: Option<SealedShard>,
) {
    demo.heading("9. release everything");
    let mut freed = 0u64;
    let mut release_ok = true;
    let mut problems = Vec::new();
    for s in std::iter::once(shard).chain(shard_b) {
        let id = s.shard_id().to_string();
        match system.release(s).await {
            Ok(n) => freed = freed.saturating_add(n),
            Err(e) => {
                release_ok = false;
                problems.push(format!("{id}: {e}"));
            }
        }
    }
    let mut used = 0u64;
    for d in 0..system.device_count() {
        match system.capacity(d).await {
            Ok(c) => used = used.saturating_add(c.used_bytes),
            Err(e) => {
                release_ok = false;
                problems.push(format!("capacity of device {d}: {e}"));
            }
        }
    }
    demo.step(
        "release",
        release_ok && used == 0,
        if release_ok && used == 0 {
            format!(
                "freed {} (the quarantined shard too); every device back to 0 bytes used",
                human_bytes(freed)
            )
        } else if problems.is_empty() {
            format!("{used} bytes still in use after releasing everything")
        } else {
            problems.join("; ")
        },
    );
}

/// Act 10: stops the worker (actors in order, device memory freed, audit log closed).
pub(super) async fn shut_down(demo: &mut Demo, system: VramResidency) {
    demo.heading("10. shut down");
    match system.shutdown().await {
        Ok(()) => demo.step(
            "shut down",
            true,
            "actors stopped in order, device memory freed, audit log closed",
        ),
        Err(e) => demo.step("shut down", false, format!("shutdown failed: {e}")),
    };
}

/// Act 11: verifies the audit log offline and checks every act above is on record.
pub(super) fn verify_audit_log(
    demo: &mut Demo,
    path: &Path,
    token: &WorkerToken,
) -> Result<(), CliError> {
    demo.heading("11. verify the audit log offline");
    let report = audit::verify_log(path, token)
        .map_err(|e| CliError::env(format!("cannot read the audit log {}: {e}", path.display())))?;
    if !demo.json {
        for (kind, n) in &report.counts_by_type {
            println!("   {kind:<26} {n:>6}");
        }
    }
    let flipped = demo
        .steps
        .iter()
        .any(|s| s.name == "inject bit flip" && s.outcome == Outcome::Pass);
    let shards = if flipped { 2u64 } else { 1 };
    let mut expected = vec![
        ("VramSealed", shards),
        ("SealVerified", 1),
        ("AttestationIssued", 1),
        ("VramDeallocated", shards),
        ("AuditLogClosed", 1),
    ];
    if flipped {
        expected.push(("SealVerificationFailed", 1));
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(kind, min)| report.counts_by_type.get(*kind).copied().unwrap_or(0) < *min)
        .map(|(kind, min)| format!("{kind} (expected at least {min})"))
        .collect();
    demo.put(
        "audit",
        json!({"path": path.display().to_string(), "report": report}),
    );
    let (ok, detail) = match (&report.first_problem, missing.is_empty()) {
        (Some(p), _) => (false, format!("NOT intact: {p}")),
        (None, false) => (
            false,
            format!("intact, but events are missing: {}", missing.join(", ")),
        ),
        (None, true) => (
            true,
            format!(
                "{} records, HMAC chain intact; every step above is on record",
                report.records
            ),
        ),
    };
    demo.step("audit log verifies", ok, detail);
    Ok(())
}

/// Prints the seal's claims, one per line.
fn show_info(demo: &Demo, shard: &SealedShard) {
    let i = shard.info();
    let chunks = i.vram_bytes.div_ceil(i.chunk_size.max(1));
    demo.say(format!("   shard_id     {}", i.shard_id));
    demo.say(format!("   model_ref    {}", i.model_ref));
    demo.say(format!("   worker_id    {}", i.worker_id));
    demo.say(format!("   gpu_device   {}", i.gpu_device));
    demo.say(format!(
        "   vram_bytes   {} ({})",
        i.vram_bytes,
        human_bytes(i.vram_bytes)
    ));
    demo.say(format!("   digest       {} (sha256)", i.digest));
    demo.say(format!("   merkle_root  {}", i.merkle_root));
    demo.say(format!(
        "   chunk_size   {} ({chunks} chunks)",
        human_bytes(i.chunk_size)
    ));
    demo.say(format!(
        "   sealed_at    {}",
        verify_info::sealed_at(i.sealed_at_unix_nanos)
    ));
    demo.say(format!(
        "   signature    {}… (HMAC-SHA256 with the worker's seal key)",
        i.signature.chars().take(32).collect::<String>()
    ));
}
