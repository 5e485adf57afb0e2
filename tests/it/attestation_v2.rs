//! The `vram-attest-v2` vectors (`tests/vectors/attest-v2.json`, documented in
//! `.specs/attestation-v2.md`) checked three ways: the statement bytes rebuilt by hand from the
//! documented layout (claims included, from `.specs/design.md` §4), independently of the crate's encoder; the
//! signature recomputed with HKDF and HMAC straight from `hkdf`/`hmac`; and the crate's own
//! `statement` and `verify_attestation` agreeing with both.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code fails loudly

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use vram_residency::attestation::{StatementFields, statement};
use vram_residency::{Attestation, WorkerToken, verify_attestation};

fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../vectors/attest-v2.json")).unwrap()
}

fn len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn raw(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap()
}

/// `.specs/design.md` §4's claims, by hand.
fn claims_by_hand(s: &serde_json::Value) -> Vec<u8> {
    let mut c = b"vram-seal-v1".to_vec();
    for field in ["worker_id", "shard_id", "model_ref"] {
        len_prefixed(&mut c, s[field].as_str().unwrap().as_bytes());
    }
    c.extend_from_slice(&(s["gpu_device"].as_u64().unwrap() as u32).to_be_bytes());
    c.extend_from_slice(&s["vram_bytes"].as_u64().unwrap().to_be_bytes());
    c.extend_from_slice(&raw(s["digest"].as_str().unwrap()));
    c.extend_from_slice(&raw(s["merkle_root"].as_str().unwrap()));
    c.extend_from_slice(&s["chunk_size"].as_u64().unwrap().to_be_bytes());
    c.extend_from_slice(&s["sealed_at_unix_nanos"].as_u64().unwrap().to_be_bytes());
    for field in ["shard_index", "total_shards"] {
        let v = s[field].as_u64().map_or(u32::MAX, |v| v as u32);
        c.extend_from_slice(&v.to_be_bytes());
    }
    c
}

/// `.specs/attestation-v2.md`'s statement layout, by hand.
fn statement_by_hand(a: &serde_json::Value) -> Vec<u8> {
    let mut out = b"vram-attest-v2".to_vec();
    len_prefixed(&mut out, &raw(a["nonce"].as_str().unwrap()));
    len_prefixed(&mut out, &claims_by_hand(&a["shard"]));
    out.extend_from_slice(&raw(a["shard"]["signature"].as_str().unwrap()));
    out.extend_from_slice(&a["verified_at_unix_nanos"].as_u64().unwrap().to_be_bytes());
    for field in ["verified_mode", "backend", "device_id"] {
        len_prefixed(&mut out, a[field].as_str().unwrap().as_bytes());
    }
    out.extend_from_slice(&a["audit_head"]["seq"].as_u64().unwrap().to_be_bytes());
    out.extend_from_slice(&raw(a["audit_head"]["mac"].as_str().unwrap()));
    out
}

#[test]
fn vectors_rebuild_by_hand_and_verify() {
    let v = vectors();
    let token_text = v["worker_token"].as_str().unwrap();
    let hk = hkdf::Hkdf::<Sha256>::new(None, token_text.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(b"llorch-attest-key-v1", &mut key).unwrap();
    let token = WorkerToken::new(token_text.as_bytes().to_vec()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let a = &case["attestation"];
        let by_hand = statement_by_hand(a);
        assert_eq!(
            hex::encode(&by_hand),
            case["statement_hex"].as_str().unwrap(),
            "{name}: statement"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&by_hand);
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            a["signature"].as_str().unwrap(),
            "{name}: signature"
        );

        // The crate agrees: same statement bytes, and the attestation verifies.
        let att: Attestation = serde_json::from_value(a.clone()).unwrap();
        let nonce = raw(&att.nonce);
        let ours = statement(&StatementFields {
            nonce: &nonce,
            shard: &att.shard,
            verified_mode: &att.verified_mode,
            verified_at_unix_nanos: att.verified_at_unix_nanos,
            backend: &att.backend,
            device_id: &att.device_id,
            audit_head: &att.audit_head,
        })
        .unwrap();
        assert_eq!(ours, by_hand, "{name}: crate encoder");
        verify_attestation(&att, &token, &nonce).unwrap();
        let mut v1 = att.clone();
        v1.format = "vram-attest-v1".into();
        assert!(verify_attestation(&v1, &token, &nonce).is_err(), "{name}");
    }
}
