//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::time::Duration;

use vram_residency::{Config, VramResidency};

pub const TOKEN: &str = "integration-test-token-0123456789";

/// Deterministic test bytes: byte i = (i*31+7) mod 251, like the vectors.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

pub fn config(devices: u32, capacity: u64) -> Config {
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
