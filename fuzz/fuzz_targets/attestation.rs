//! Attestation JSON (`vram-attest-v2`) from any bytes, checked with `verify_attestation`, both
//! against the nonce it names (so the check gets past the nonce comparison to the seal and the
//! statement) and against a fixed one. Never a panic; a pass implies the shard record inside
//! verifies on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::seal::claims;
use vram_residency::seal::keys::SealKey;
use vram_residency::{verify_attestation, Attestation, WorkerToken};

/// The worker token of the published test vectors (`tests/vectors/vectors-v1.json`), which the
/// seeds in `fuzz/seeds/` are signed with.
const TOKEN: &[u8] = b"vectors-worker-token-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(att) = serde_json::from_slice::<Attestation>(data) else {
        return;
    };
    let token = WorkerToken::new(TOKEN.to_vec()).expect("a valid token");
    let named: Vec<u8> = decode_hex(&att.nonce).unwrap_or_default();
    for nonce in [named.as_slice(), b"fixed-nonce-0123".as_slice()] {
        if verify_attestation(&att, &token, nonce).is_ok() {
            assert!(claims::verify(&SealKey::derive(&token), &att.shard));
            assert_eq!(nonce, named.as_slice());
        }
    }
});

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
