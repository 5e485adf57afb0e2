//! Model-signing bundles (`model_signing sign key` output) from any bytes, checked with
//! `ModelSignature::from_bundle` against the fixture publisher key. Never a panic; every
//! refusal is `ModelSignatureInvalid` with clean text; an accepted bundle is internally
//! consistent (subject digest = SHA-256 over the resources' digests, names unique).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::{ModelSignature, VramError};

const KEY: &[u8] = include_bytes!("../../tests/fixtures/model-signing/keys/publisher-p256.pub.pem");

fuzz_target!(|data: &[u8]| {
    match ModelSignature::from_bundle(data, KEY) {
        Ok(sig) => {
            let mut names = std::collections::HashSet::new();
            for r in sig.resources() {
                assert_eq!(r.sha256.len(), 64);
                assert!(names.insert(r.name.clone()));
            }
            assert_eq!(sig.subject_sha256().len(), 64);
        }
        Err(VramError::ModelSignatureInvalid(reason)) => {
            assert_eq!(vram_residency::text::sanitize(&reason), reason);
        }
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
});
