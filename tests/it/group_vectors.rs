//! The published `vram-group-v1` vectors (`tests/vectors/vectors-groups-v1.json`, made by an
//! independent implementation), reproduced through the public API; the group claims rebuilt by
//! hand from the `.specs/design.md` §8 text alone and signed with HKDF/HMAC directly; and the vector data
//! sealed as a group through the actors.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // test code fails loudly

use crate::common;

use hmac::{KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use vram_residency::seal::claims;
use vram_residency::seal::group_record::{self, GROUP_FORMAT};
use vram_residency::seal::keys::{SEAL_KEY_INFO, SealKey, WorkerToken};
use vram_residency::seal::merkle::MerkleTree;
use vram_residency::seal::sha256_hex;
use vram_residency::{Config, GroupInfo, GroupRequest, SealRequest, VramError, VramResidency};

fn vectors() -> Value {
    serde_json::from_str(include_str!("../vectors/vectors-groups-v1.json")).unwrap()
}

fn token_text(v: &Value) -> &str {
    v["worker_token"].as_str().unwrap()
}

fn token(v: &Value) -> WorkerToken {
    WorkerToken::new(token_text(v).as_bytes().to_vec()).unwrap()
}

fn cases(v: &Value) -> Vec<(String, Value, GroupInfo)> {
    let cases = v["group_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    cases
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c.clone(),
                serde_json::from_value(c["info"].clone()).unwrap(),
            )
        })
        .collect()
}

/// "member i's bytes are the first vram_bytes bytes of SHA-256("vram-group-vector-<shard_id>-<k>")
/// for k = 0, 1, 2, … concatenated"
fn member_data(shard_id: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut k = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("vram-group-vector-{shard_id}-{k}")));
        k += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn every_group_case_reproduces_members_claims_and_signatures() {
    let v = vectors();
    let key = SealKey::derive(&token(&v));
    for (name, case, info) in cases(&v) {
        for m in &info.members {
            let data = member_data(&m.shard_id, m.vram_bytes as usize);
            assert_eq!(sha256_hex(&data), m.digest, "{name}/{}: digest", m.shard_id);
            let tree = MerkleTree::build(&data, m.chunk_size as usize);
            assert_eq!(
                hex::encode(tree.root()),
                m.merkle_root,
                "{name}/{}: root",
                m.shard_id
            );
            assert_eq!(
                claims::sign(&key, m).unwrap(),
                m.signature,
                "{name}/{}",
                m.shard_id
            );
        }
        assert_eq!(
            hex::encode(info.claims().unwrap()),
            case["group_claims_hex"].as_str().unwrap(),
            "{name}: group claims"
        );
        assert_eq!(
            group_record::sign(&key, &info).unwrap(),
            info.signature,
            "{name}: signature"
        );
        assert!(group_record::verify(&key, &info), "{name}");
        info.verify(&token(&v)).unwrap();
        // The JSON layout round-trips exactly.
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            case["info"],
            "{name}: json"
        );
    }
}

/// The claims as `.specs/design.md` §8 words them, built here byte by byte (no crate encoder), signed with a
/// seal key derived here with HKDF: the vector signature, and the crate's claims, must agree.
#[test]
fn group_claims_rebuilt_by_hand_from_the_spec_sign_to_the_vector_signature() {
    fn lp(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let v = vectors();
    let seal_key = hex::decode(common::derived_key_hex(
        token_text(&v).as_bytes(),
        b"llorch-seal-key-v1",
    ))
    .unwrap();
    assert_eq!(SEAL_KEY_INFO, b"llorch-seal-key-v1");
    for (name, case, _) in cases(&v) {
        let j = &case["info"];
        // ASCII `vram-group-v1`, then worker_id, group_id, model_ref each as u32 BE length +
        // UTF-8, sealed_at_unix_nanos u64 BE, total_shards u32 BE, then for each member in
        // shard_index order: gpu_device u32 BE and the member's seal signature (32 raw bytes).
        let mut claims = b"vram-group-v1".to_vec();
        lp(&mut claims, j["worker_id"].as_str().unwrap());
        lp(&mut claims, j["group_id"].as_str().unwrap());
        lp(&mut claims, j["model_ref"].as_str().unwrap());
        claims.extend_from_slice(&j["sealed_at_unix_nanos"].as_u64().unwrap().to_be_bytes());
        let members = j["members"].as_array().unwrap();
        claims.extend_from_slice(&(members.len() as u32).to_be_bytes());
        for (i, m) in members.iter().enumerate() {
            assert_eq!(m["shard_index"].as_u64().unwrap(), i as u64, "{name}");
            assert_eq!(
                m["total_shards"].as_u64().unwrap(),
                members.len() as u64,
                "{name}"
            );
            claims.extend_from_slice(&(m["gpu_device"].as_u64().unwrap() as u32).to_be_bytes());
            claims.extend_from_slice(&hex::decode(m["signature"].as_str().unwrap()).unwrap());
        }
        assert_eq!(
            hex::encode(&claims),
            case["group_claims_hex"].as_str().unwrap(),
            "{name}"
        );
        let signature = hmac::Hmac::<Sha256>::new_from_slice(&seal_key)
            .unwrap()
            .chain_update(&claims)
            .finalize()
            .into_bytes();
        assert_eq!(
            hex::encode(signature),
            j["signature"].as_str().unwrap(),
            "{name}"
        );
        let info: GroupInfo = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(info.claims().unwrap(), claims, "{name}: the crate's claims");
    }
}

/// Every alteration a peer could meet fails the offline check with the token alone.
#[test]
fn the_peer_check_refuses_every_altered_vector() {
    let v = vectors();
    let t = token(&v);
    for (name, _, info) in cases(&v) {
        info.verify(&t).unwrap();
        let last = info.members.len() - 1;
        let mut tampered_member = info.clone();
        tampered_member.members[last].vram_bytes += 1;
        let mut swapped = info.clone();
        swapped.members.swap(0, last);
        let mut wrong_total = info.clone();
        for m in &mut wrong_total.members {
            m.total_shards = Some(m.total_shards.unwrap() + 1);
        }
        let mut dropped = info.clone();
        dropped.members.pop();
        let mut wrong_signature = info.clone();
        wrong_signature.signature = info.members[0].signature.clone();
        let mut moved = info.clone();
        moved.members[0].gpu_device += 1;
        let mut renamed = info.clone();
        renamed.group_id.push('x');
        let mut retagged = info.clone();
        retagged.format = "vram-group-v2".into();
        for (what, bad) in [
            ("tampered member", &tampered_member),
            ("swapped order", &swapped),
            ("wrong total", &wrong_total),
            ("member dropped", &dropped),
            ("wrong signature", &wrong_signature),
            ("member moved to another device", &moved),
            ("group renamed", &renamed),
            ("format tag", &retagged),
        ] {
            let e = bad.verify(&t).unwrap_err();
            assert!(
                matches!(
                    e,
                    VramError::InvalidInput(_) | VramError::SealVerificationFailed { .. }
                ),
                "{name}: {what}: {e:?}"
            );
        }
        let other = WorkerToken::new(b"another-token-of-16+bytes".to_vec()).unwrap();
        assert!(info.verify(&other).is_err(), "{name}: another token");
        // Unknown members are refused by the JSON layout itself.
        let mut extra = serde_json::to_value(&info).unwrap();
        extra["note"] = "x".into();
        assert!(serde_json::from_value::<GroupInfo>(extra).is_err());
    }
}

/// The vector data sealed as a group through the actors gives the vector's digests, roots and
/// positions; re-signed at the vector times, the vector's member and group signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_the_vector_data_as_a_group_gives_the_vector_record() {
    let v = vectors();
    let key = SealKey::derive(&token(&v));
    for (name, _, expected) in cases(&v) {
        let system = VramResidency::start(
            Config::simulated(4, 1 << 20)
                .worker_id(&expected.worker_id)
                .worker_token(token_text(&v))
                .chunk_size(4096),
        )
        .await
        .unwrap();
        let mut request = GroupRequest::new(&expected.group_id, &expected.model_ref);
        for m in &expected.members {
            request = request.part(
                SealRequest::new(
                    &m.shard_id,
                    &m.model_ref,
                    m.gpu_device,
                    member_data(&m.shard_id, m.vram_bytes as usize),
                )
                .expected_sha256(&m.digest),
            );
        }
        let sealed = system.seal_group(request).await.unwrap();
        let got = sealed.info();
        assert_eq!(got.format, GROUP_FORMAT);
        assert_eq!(got.members.len(), expected.members.len());
        let mut at_vector_time = got.clone();
        for (g, e) in at_vector_time.members.iter_mut().zip(&expected.members) {
            assert_eq!(
                (&g.digest, &g.merkle_root, g.shard_index, g.total_shards),
                (&e.digest, &e.merkle_root, e.shard_index, e.total_shards),
                "{name}/{}",
                e.shard_id
            );
            g.sealed_at_unix_nanos = e.sealed_at_unix_nanos;
            g.signature = claims::sign(&key, g).unwrap();
            assert_eq!(g.signature, e.signature, "{name}/{}", e.shard_id);
        }
        at_vector_time.sealed_at_unix_nanos = expected.sealed_at_unix_nanos;
        at_vector_time.signature = group_record::sign(&key, &at_vector_time).unwrap();
        assert_eq!(at_vector_time, expected, "{name}");
        got.verify(&token(&v)).unwrap();
        system.release_group(sealed).await.unwrap();
        system.shutdown().await.unwrap();
    }
}
