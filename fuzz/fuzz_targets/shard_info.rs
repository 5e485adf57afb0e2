//! `ShardInfo` JSON (`vram-seal-v1`) from any bytes, then its claims encoding and signature
//! check. Never a panic; whatever parses survives a JSON round trip unchanged; nothing the
//! fuzzer writes verifies unless it is a record signed with the fuzz token (the seeds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_residency::seal::claims;
use vram_residency::seal::keys::SealKey;
use vram_residency::{ShardInfo, WorkerToken};

/// The worker token of the published test vectors (`tests/vectors/vectors-v1.json`), which the
/// seeds in `fuzz/seeds/` are signed with.
const TOKEN: &[u8] = b"vectors-worker-token-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(info) = serde_json::from_slice::<ShardInfo>(data) else {
        return;
    };
    let claims = info.claims();
    let token = WorkerToken::new(TOKEN.to_vec()).expect("a valid token");
    let valid = claims::verify(&SealKey::derive(&token), &info);
    if valid {
        // A valid signature implies well-formed claims.
        assert!(claims.is_ok());
    }
    let text = serde_json::to_string(&info).expect("a ShardInfo always serialises");
    let back: ShardInfo = serde_json::from_str(&text).expect("its own JSON parses");
    assert_eq!(back, info);
    assert_eq!(claims::verify(&SealKey::derive(&token), &back), valid);
});
