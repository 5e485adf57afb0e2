//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod model_signing;

use std::time::Duration;

use vram_residency::{Config, VramResidency};

pub const TOKEN: &str = "integration-test-token-0123456789";

/// Deterministic test bytes: byte i = (i*31+7) mod 251, like the vectors.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

pub fn config(devices: u32, capacity: u64) -> Config {
    scoped_tracing_works();
    Config::simulated(devices, capacity)
        .worker_id("worker-test")
        .worker_token(TOKEN)
        .chunk_size(4096)
        .call_timeout(Duration::from_secs(60))
}

pub async fn start(devices: u32, capacity: u64) -> VramResidency {
    VramResidency::start(config(devices, capacity))
        .await
        .unwrap()
}

/// Polls until `f` is true or 5 s pass.
pub async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Event types in the in-memory audit log, in order.
pub async fn audit_types(system: &VramResidency) -> Vec<String> {
    system
        .audit_lines()
        .await
        .unwrap()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"]["type"].as_str().unwrap().to_string()
        })
        .collect()
}

/// HKDF-SHA256(token, info) in lowercase hex, derived here independently of the crate, so tests
/// can look for key material in outputs without the crate ever handing its key bytes out.
pub fn derived_key_hex(token: &[u8], info: &[u8]) -> String {
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, token)
        .expand(info, &mut okm)
        .unwrap();
    hex::encode(okm)
}

/// Every `.rs` file below `dir`, appended to `out` (the source scans of `layering.rs` and
/// `unsafe_scope.rs`).
pub fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A seal source that takes a while: `len` bytes of 0x5a, at most `per_read` bytes per `read`
/// call, `delay` before each call. Large seals need no large buffer in the test.
pub struct SlowSource {
    pub left: u64,
    pub per_read: usize,
    pub delay: Duration,
}

impl std::io::Read for SlowSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.per_read).min(self.left as usize);
        if n == 0 {
            return Ok(0);
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        buf[..n].fill(0x5a);
        self.left -= n as u64;
        Ok(n)
    }
}

/// A seal of `len` bytes from a [`SlowSource`] on device 0.
pub fn slow_seal(
    shard_id: &str,
    len: u64,
    per_read: usize,
    delay: Duration,
) -> vram_residency::SealRequest {
    vram_residency::SealRequest::from_reader(
        shard_id,
        "hf:org/m@r",
        0,
        SlowSource {
            left: len,
            per_read,
            delay,
        },
        len,
    )
}

/// Flips `mask` into byte `offset` of `shard`, verifies it in full and returns what the
/// failure names: its bad chunks and bad tensors. Panics unless the verification failed so.
pub async fn flip_and_verify(
    system: &VramResidency,
    shard: &vram_residency::SealedShard,
    offset: u64,
    mask: u8,
) -> (Vec<vram_residency::ChunkSpan>, Vec<String>) {
    system
        .inject_fault(
            shard.device(),
            vram_residency::Fault::FlipBits {
                shard_id: shard.shard_id().to_string(),
                offset,
                mask,
            },
        )
        .await
        .unwrap();
    match system.verify(shard, vram_residency::VerifyMode::Full).await {
        Err(vram_residency::VramError::SealVerificationFailed {
            bad_chunks,
            bad_tensors,
            ..
        }) => (bad_chunks, bad_tensors),
        other => panic!("expected a failed verification, got {other:?}"),
    }
}

/// A process-wide subscriber that records nothing but keeps every callsite's interest at
/// "sometimes", so that a test's own scoped subscriber (`set_default`, `with_default`) always
/// sees the spans and events of its thread. Without it, a callsite first hit by a test with no
/// subscriber, at the moment another test registers its own, can be cached as "never" for the
/// whole process (tracing's interest cache is global), and the second test misses it.
struct AskEveryTime;

impl tracing::Subscriber for AskEveryTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs [`AskEveryTime`] as the global subscriber, once per process (before any scoped
/// subscriber, and from `config`, so that it is in place early in every test binary).
pub fn scoped_tracing_works() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(AskEveryTime);
    });
}
