//! `vram-attest-v3` attestations (sigstore bundles) from any bytes, checked with
//! `verify_signed_attestation` and the vectors' public key (`tests/vectors/attest-v3.json`),
//! against the nonce the payload names and a fixed one. Never a panic; every refusal of the
//! document is `AttestationInvalid`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::{verify_signed_attestation, AttestationPolicy, SignedAttestation, VramError};

/// The identity public key of the vectors' worker token.
const PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuxERUgfY1XJevlHR+NE9zs5VWWc3
3RzdJTS1+Js4/Qd5R11tYJ1TdDJAx1l5eMB6d9WDoqm3AIr7Zhf3OHs8eA==
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    let Ok(att) = serde_json::from_slice::<SignedAttestation>(data) else {
        return;
    };
    for nonce in [
        (0u8..32).collect::<Vec<u8>>(),
        b"challenger-nonce-0123456789abcdef".to_vec(),
    ] {
        match verify_signed_attestation(&att, PEM, &nonce, &AttestationPolicy::default()) {
            Ok(claims) => assert_eq!(claims.format, "vram-attest-v3"),
            Err(VramError::AttestationInvalid(_)) => {}
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }
});
