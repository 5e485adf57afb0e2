//! Issue 20: provenance from a model-signing release to the bytes sealed in device memory, and
//! `vram-attest-v3` signed attestations anyone can check with a public key.
//!
//! The fixture under `tests/fixtures/model-signing/` was made by the real `model_signing`
//! 1.1.1 CLI (see its README); nothing here re-signs it with the crate's own code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)] // test code fails loudly

use vram_residency::{ModelSignature, VramError};

use crate::common::model_signing::{fixture, read, sha256sums};

fn refused(r: Result<ModelSignature, VramError>) -> String {
    match r {
        Err(VramError::ModelSignatureInvalid(reason)) => reason,
        other => panic!("expected ModelSignatureInvalid, got {other:?}"),
    }
}

mod model_signature {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn a_real_p256_and_p384_bundle_verify_and_list_sha256sum_digests() {
        for curve in ["p256", "p384"] {
            let sig = ModelSignature::from_bundle(
                &read(&format!("model-{curve}.sig")),
                read(&format!("keys/publisher-{curve}.pub.pem")),
            )
            .unwrap();
            let mut listed: Vec<(String, String)> = sig
                .resources()
                .iter()
                .map(|r| (r.name.clone(), r.sha256.clone()))
                .collect();
            let mut expected = sha256sums();
            listed.sort();
            expected.sort();
            assert_eq!(listed, expected, "{curve}");
            assert_eq!(sig.subject_name(), "model");
            assert_eq!(sig.subject_sha256().len(), 64);
            // The key id is SHA-256 of the SPKI DER, not model-signing's hint (PEM text).
            let pem = String::from_utf8(read(&format!("keys/publisher-{curve}.pub.pem"))).unwrap();
            let der = STANDARD
                .decode(
                    pem.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .collect::<String>(),
                )
                .unwrap();
            assert_eq!(sig.publisher_keyid(), sha256_hex(&der));
            let bundle: serde_json::Value =
                serde_json::from_slice(&read(&format!("model-{curve}.sig"))).unwrap();
            assert_eq!(
                bundle["verificationMaterial"]["publicKey"]["hint"],
                sha256_hex(pem.as_bytes())
            );
            assert_ne!(sig.publisher_keyid(), sha256_hex(pem.as_bytes()));
        }
    }

    #[test]
    fn the_subject_digest_is_sha256_over_the_resource_digests_in_manifest_order() {
        let sig = ModelSignature::from_bundle(
            &read("model-p256.sig"),
            read("keys/publisher-p256.pub.pem"),
        )
        .unwrap();
        let mut raw = Vec::new();
        for r in sig.resources() {
            raw.extend(hex::decode(&r.sha256).unwrap());
        }
        assert_eq!(sig.subject_sha256(), sha256_hex(&raw));
    }

    #[test]
    fn the_wrong_publisher_key_is_refused() {
        let reason = refused(ModelSignature::from_bundle(
            &read("model-p256.sig"),
            read("keys/other-p256.pub.pem"),
        ));
        assert!(reason.contains("does not verify"), "{reason}");
        // A key of the other curve is just as wrong.
        let reason = refused(ModelSignature::from_bundle(
            &read("model-p256.sig"),
            read("keys/publisher-p384.pub.pem"),
        ));
        assert!(reason.contains("does not verify"), "{reason}");
    }

    #[test]
    fn a_certificate_bundle_is_refused_as_such() {
        let reason = refused(ModelSignature::from_bundle(
            &read("model-cert.sig"),
            read("keys/publisher-p256.pub.pem"),
        ));
        assert!(reason.contains("certificate"), "{reason}");
        // A keyless (Fulcio) bundle carries `certificate` instead of a chain.
        let mut keyless: serde_json::Value =
            serde_json::from_slice(&read("model-p256.sig")).unwrap();
        keyless["verificationMaterial"] = serde_json::json!({
            "certificate": {"rawBytes": "MIIB"},
            "tlogEntries": [{"logIndex": "1"}]
        });
        let reason = refused(ModelSignature::from_bundle(
            &serde_json::to_vec(&keyless).unwrap(),
            read("keys/publisher-p256.pub.pem"),
        ));
        assert!(reason.contains("certificate"), "{reason}");
    }

    #[test]
    fn truncated_empty_and_oversized_bundles_are_refused_distinctly() {
        let bundle = read("model-p256.sig");
        let key = read("keys/publisher-p256.pub.pem");
        for cut in [1, bundle.len() / 3, bundle.len() / 2, bundle.len() - 2] {
            let reason = refused(ModelSignature::from_bundle(&bundle[..cut], &key));
            assert!(reason.contains("truncated"), "cut at {cut}: {reason}");
        }
        let reason = refused(ModelSignature::from_bundle(b"  \n", &key));
        assert!(reason.contains("empty"), "{reason}");
        let reason = refused(ModelSignature::from_bundle(b"{not json", &key));
        assert!(reason.contains("not valid JSON"), "{reason}");
        let mut big = bundle.clone();
        big.resize(
            vram_residency::provenance::bundle::MAX_BUNDLE_BYTES + 1,
            b' ',
        );
        let reason = refused(ModelSignature::from_bundle(&big, &key));
        assert!(reason.contains("limit"), "{reason}");
    }

    #[test]
    fn a_bad_publisher_key_is_invalid_input() {
        let bundle = read("model-p256.sig");
        for key in [
            b"not a key".to_vec(),
            read("keys/publisher-p256.key.pem"),
            read("keys/publisher-p256.cert.pem"),
        ] {
            assert!(matches!(
                ModelSignature::from_bundle(&bundle, &key),
                Err(VramError::InvalidInput(_))
            ));
        }
    }

    /// Re-signs a modified statement with the fixture's publisher key, as a publisher might
    /// sign something the crate must still refuse.
    fn resigned(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        use p256::pkcs8::DecodePrivateKey;
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&read("model-p256.sig")).unwrap();
        let payload = STANDARD
            .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        edit(&mut statement);
        let payload = serde_json::to_vec(&statement).unwrap();
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(
            std::str::from_utf8(&read("keys/publisher-p256.key.pem")).unwrap(),
        )
        .unwrap();
        let pae = [
            format!("DSSEv1 28 application/vnd.in-toto+json {} ", payload.len()).into_bytes(),
            payload.clone(),
        ]
        .concat();
        let sig: p256::ecdsa::DerSignature = key.sign(&pae);
        bundle["dsseEnvelope"]["payload"] = STANDARD.encode(&payload).into();
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = STANDARD.encode(sig.as_bytes()).into();
        serde_json::to_vec(&bundle).unwrap()
    }

    #[test]
    fn a_resigned_but_unchanged_statement_verifies() {
        // The control for the refusals below: re-signing alone changes nothing.
        let sig =
            ModelSignature::from_bundle(&resigned(|_| {}), read("keys/publisher-p256.pub.pem"))
                .unwrap();
        assert_eq!(sig.resources().len(), 3);
    }

    #[test]
    fn other_predicates_serializations_and_inconsistent_subjects_are_refused() {
        let key = read("keys/publisher-p256.pub.pem");
        let cases: Vec<(&str, Edit)> = vec![
            (
                "predicate type",
                Box::new(|s| s["predicateType"] = "https://slsa.dev/provenance/v1".into()),
            ),
            (
                "statement type",
                Box::new(|s| s["_type"] = "https://in-toto.io/Statement/v0.1".into()),
            ),
            (
                "serialization",
                Box::new(|s| s["predicate"]["serialization"]["method"] = "shards".into()),
            ),
            (
                "hashes with",
                Box::new(|s| s["predicate"]["serialization"]["hash_type"] = "blake2".into()),
            ),
            (
                "is not SHA-256 over the resources",
                Box::new(|s| {
                    s["predicate"]["resources"][0]["digest"] = "00".repeat(32).into();
                }),
            ),
            (
                "is not SHA-256 over the resources",
                Box::new(|s| {
                    let r = s["predicate"]["resources"].as_array_mut().unwrap();
                    r.swap(0, 1);
                }),
            ),
            (
                "listed twice",
                Box::new(|s| {
                    let r = s["predicate"]["resources"].as_array_mut().unwrap();
                    let first = r[0].clone();
                    r.push(first);
                }),
            ),
            (
                "subjects",
                Box::new(|s| {
                    let first = s["subject"][0].clone();
                    s["subject"].as_array_mut().unwrap().push(first);
                }),
            ),
        ];
        for (expect, edit) in cases {
            let reason = refused(ModelSignature::from_bundle(&resigned(edit), &key));
            assert!(reason.contains(expect), "{expect}: {reason}");
        }
    }

    #[test]
    fn every_single_byte_change_of_the_payload_is_refused() {
        let key = read("keys/publisher-p256.pub.pem");
        let bundle: serde_json::Value = serde_json::from_slice(&read("model-p256.sig")).unwrap();
        let payload = STANDARD
            .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        for i in (0..payload.len()).step_by(7) {
            let mut changed = payload.clone();
            changed[i] ^= 0x01;
            let mut b = bundle.clone();
            b["dsseEnvelope"]["payload"] = STANDARD.encode(&changed).into();
            let reason = refused(ModelSignature::from_bundle(
                &serde_json::to_vec(&b).unwrap(),
                &key,
            ));
            assert!(reason.contains("does not verify"), "byte {i}: {reason}");
        }
    }

    #[test]
    fn hint_and_keyid_are_not_trusted() {
        let key = read("keys/publisher-p256.pub.pem");
        let mut b: serde_json::Value = serde_json::from_slice(&read("model-p256.sig")).unwrap();
        b["verificationMaterial"]["publicKey"]["hint"] = "ff".repeat(32).into();
        b["dsseEnvelope"]["signatures"][0]["keyid"] = "someone-else".into();
        // Lying hints change nothing: the given key decides.
        assert!(ModelSignature::from_bundle(&serde_json::to_vec(&b).unwrap(), &key).is_ok());
        assert!(
            ModelSignature::from_bundle(
                &serde_json::to_vec(&b).unwrap(),
                read("keys/other-p256.pub.pem")
            )
            .is_err()
        );
    }

    #[test]
    fn envelope_shape_refusals_name_their_reason() {
        let key = read("keys/publisher-p256.pub.pem");
        let base: serde_json::Value = serde_json::from_slice(&read("model-p256.sig")).unwrap();
        let cases: Vec<(&str, Edit)> = vec![
            (
                "media type",
                Box::new(|b| b["mediaType"] = "application/json".into()),
            ),
            (
                "no DSSE envelope",
                Box::new(|b| {
                    b.as_object_mut().unwrap().remove("dsseEnvelope");
                    b["messageSignature"] = serde_json::json!({"signature": "AA=="});
                }),
            ),
            (
                "payload type",
                Box::new(|b| b["dsseEnvelope"]["payloadType"] = "text/plain".into()),
            ),
            (
                "exactly one",
                Box::new(|b| b["dsseEnvelope"]["signatures"] = serde_json::json!([])),
            ),
            (
                "exactly one",
                Box::new(|b| {
                    let s = b["dsseEnvelope"]["signatures"][0].clone();
                    b["dsseEnvelope"]["signatures"]
                        .as_array_mut()
                        .unwrap()
                        .push(s);
                }),
            ),
            (
                "not standard base64",
                Box::new(|b| b["dsseEnvelope"]["payload"] = "%%%".into()),
            ),
            (
                "no public key",
                Box::new(|b| {
                    b["verificationMaterial"]
                        .as_object_mut()
                        .unwrap()
                        .remove("publicKey");
                }),
            ),
        ];
        for (expect, edit) in cases {
            let mut b = base.clone();
            edit(&mut b);
            let reason = refused(ModelSignature::from_bundle(
                &serde_json::to_vec(&b).unwrap(),
                &key,
            ));
            assert!(reason.contains(expect), "{expect}: {reason}");
        }
    }
}

/// One change to a JSON document, for tables of tampering cases.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

mod seal_with_provenance {
    use super::*;
    use std::sync::Arc;
    use vram_residency::{Config, SealRequest, VramResidency};

    async fn system() -> VramResidency {
        VramResidency::start(
            Config::simulated(1, 16 << 20)
                .worker_id("worker-prov")
                .worker_token("provenance-test-token-0123456789"),
        )
        .await
        .unwrap()
    }

    fn signature() -> Arc<ModelSignature> {
        Arc::new(
            ModelSignature::from_bundle(
                &read("model-p256.sig"),
                read("keys/publisher-p256.pub.pem"),
            )
            .unwrap(),
        )
    }

    fn events(lines: &[String], kind: &str) -> Vec<serde_json::Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["event"]["type"] == kind)
            .map(|r| r["event"].clone())
            .collect()
    }

    #[tokio::test]
    async fn a_signed_file_seals_with_its_provenance_on_the_handle_and_in_the_audit_log() {
        let system = system().await;
        let sig = signature();
        for (id, file) in [
            ("m-1", "model-00001.safetensors"),
            ("m-2", "model-00002.bin"),
        ] {
            let shard = system
                .seal(
                    SealRequest::from_file(
                        id,
                        "hf:org/m@rev",
                        0,
                        fixture(&format!("model/{file}")),
                    )
                    .provenance(Arc::clone(&sig), file),
                )
                .await
                .unwrap();
            let p = shard.provenance().unwrap();
            assert_eq!(p.resource, file);
            assert_eq!(p.model_subject_sha256, sig.subject_sha256());
            assert_eq!(p.publisher_keyid, sig.publisher_keyid());
            assert_eq!(shard.info().digest, sig.resource(file).unwrap().sha256);
        }
        let plain = system
            .seal(SealRequest::new("m-3", "r", 0, vec![1; 100]))
            .await
            .unwrap();
        assert!(plain.provenance().is_none());
        let lines = system.audit_lines().await.unwrap();
        let sealed = events(&lines, "VramSealed");
        assert_eq!(sealed.len(), 3);
        assert_eq!(
            sealed[0]["provenance"]["resource"],
            "model-00001.safetensors"
        );
        assert_eq!(
            sealed[0]["provenance"]["model_subject_sha256"],
            sig.subject_sha256()
        );
        assert_eq!(
            sealed[0]["provenance"]["publisher_keyid"],
            sig.publisher_keyid()
        );
        assert_eq!(sealed[1]["provenance"]["resource"], "model-00002.bin");
        assert!(sealed[2].get("provenance").is_none());
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn one_byte_changed_after_signing_is_a_provenance_mismatch_with_nothing_allocated() {
        let system = system().await;
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = read("model/model-00001.safetensors");
        let at = bytes.len() - 100;
        bytes[at] ^= 0x01;
        let changed = dir.path().join("model-00001.safetensors");
        std::fs::write(&changed, &bytes).unwrap();
        let sig = signature();
        let before = system.capacity(0).await.unwrap();
        let err = system
            .seal(
                SealRequest::from_file("m-1", "hf:org/m@rev", 0, &changed)
                    .provenance(Arc::clone(&sig), "model-00001.safetensors"),
            )
            .await
            .unwrap_err();
        let expected = sig
            .resource("model-00001.safetensors")
            .unwrap()
            .sha256
            .clone();
        let actual = sha256_hex(&bytes);
        match &err {
            VramError::ProvenanceMismatch {
                resource,
                expected: e,
                actual: a,
            } => {
                assert_eq!(resource, "model-00001.safetensors");
                assert_eq!(*e, expected);
                assert_eq!(*a, actual);
            }
            other => panic!("expected ProvenanceMismatch, got {other:?}"),
        }
        assert!(err.is_integrity_failure());
        assert!(!err.is_retriable());
        let text = err.to_string();
        assert!(
            text.contains("model-00001.safetensors")
                && text.contains(&expected)
                && text.contains(&actual)
        );
        assert_eq!(system.capacity(0).await.unwrap(), before);
        let lines = system.audit_lines().await.unwrap();
        let mismatch = events(&lines, "ProvenanceMismatch");
        assert_eq!(mismatch.len(), 1);
        assert_eq!(mismatch[0]["severity"], "critical");
        assert_eq!(mismatch[0]["resource"], "model-00001.safetensors");
        assert_eq!(mismatch[0]["expected_digest"], expected);
        assert_eq!(mismatch[0]["actual_digest"], actual);
        assert!(events(&lines, "VramSealed").is_empty());
        // The id is free: the right file seals under it now.
        system
            .seal(
                SealRequest::from_file(
                    "m-1",
                    "hf:org/m@rev",
                    0,
                    fixture("model/model-00001.safetensors"),
                )
                .provenance(sig, "model-00001.safetensors"),
            )
            .await
            .unwrap();
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn another_file_of_the_release_is_a_mismatch_and_an_unlisted_name_is_invalid_input() {
        let system = system().await;
        let sig = signature();
        let err = system
            .seal(
                SealRequest::from_file("m-1", "r", 0, fixture("model/model-00002.bin"))
                    .provenance(Arc::clone(&sig), "model-00001.safetensors"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, VramError::ProvenanceMismatch { .. }),
            "{err:?}"
        );
        let err = system
            .seal(
                SealRequest::from_file("m-1", "r", 0, fixture("model/model-00002.bin"))
                    .provenance(sig, "model-00003.bin"),
            )
            .await
            .unwrap_err();
        match err {
            VramError::InvalidInput(m) => assert!(
                m.contains("model-00003.bin") && m.contains("not in the signed model"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(system.capacity(0).await.unwrap().used_bytes, 0);
        let lines = system.audit_lines().await.unwrap();
        // The unlisted name was refused before anything was allocated.
        assert_eq!(events(&lines, "VramAllocated").len(), 1);
        system.shutdown().await.unwrap();
    }
}

mod signed_attestation {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use std::sync::Arc;
    use std::time::Duration;
    use vram_residency::{
        AttestationPolicy, Config, SealRequest, SignedAttestation, VerifyMode, VramResidency,
        verify_signed_attestation,
    };

    const NONCE: &[u8] = b"challenger-nonce-0123456789abcdef";

    async fn system() -> VramResidency {
        VramResidency::start(
            Config::simulated(2, 16 << 20)
                .worker_id("worker-v3")
                .worker_token("v3-test-token-0123456789abcdef"),
        )
        .await
        .unwrap()
    }

    async fn signed_shard(system: &VramResidency) -> vram_residency::SealedShard {
        let sig = ModelSignature::from_bundle(
            &read("model-p256.sig"),
            read("keys/publisher-p256.pub.pem"),
        )
        .unwrap();
        system
            .seal(
                SealRequest::from_file(
                    "m-1",
                    "hf:org/m@rev",
                    1,
                    fixture("model/model-00001.safetensors"),
                )
                .provenance(Arc::new(sig), "model-00001.safetensors"),
            )
            .await
            .unwrap()
    }

    fn invalid(r: Result<impl std::fmt::Debug, VramError>) -> String {
        match r {
            Err(VramError::AttestationInvalid(reason)) => reason,
            other => panic!("expected AttestationInvalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_v3_attestation_verifies_with_the_public_key_alone_and_says_everything_v2_says() {
        let system = system().await;
        let shard = signed_shard(&system).await;
        // A v2 attestation of the same shard names the device (the simulated backend's name
        // for it) and the backend the v3 one must name too.
        let v2 = system.attest(&shard, NONCE).await.unwrap();
        let att = system.attest_signed(&shard, NONCE).await.unwrap();
        let pem = system.identity_public_key_pem();
        // What travels is JSON.
        let json = serde_json::to_string(&att).unwrap();
        assert!(json.starts_with(
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":""#
        ));
        let back: SignedAttestation = serde_json::from_str(&json).unwrap();
        let policy = AttestationPolicy::default()
            .max_age(Duration::from_secs(60))
            .require_mode(VerifyMode::Full)
            .expect_shard_id("m-1")
            .expect_digest(&shard.info().digest)
            .expect_device_id(v2.device_id.clone())
            .min_audit_seq(v2.audit_head.seq)
            .require_provenance(shard.provenance().unwrap().model_subject_sha256.clone());
        let claims = verify_signed_attestation(&back, &pem, NONCE, &policy).unwrap();
        assert_eq!(claims.format, "vram-attest-v3");
        assert_eq!(claims.shard, *shard.info());
        assert_eq!(claims.worker_id, "worker-v3");
        assert_eq!(claims.nonce, hex::encode(NONCE));
        assert_eq!(claims.verified_mode, VerifyMode::Full);
        assert_eq!(claims.backend, vram_residency::BackendKind::Simulated);
        assert_eq!(claims.provenance.as_ref(), shard.provenance());
        assert!(claims.audit_head.seq >= 1);
        // The same facts the v2 attestation signs.
        assert_eq!(v2.device_id, claims.device_id);
        assert_eq!(v2.shard, claims.shard);
        assert_eq!(v2.backend, claims.backend.to_string());
        // The key id names the SPKI DER.
        let der = STANDARD
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        assert_eq!(system.identity_key_id(), sha256_hex(&der));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v["verificationMaterial"]["publicKey"]["hint"],
            sha256_hex(&der)
        );
        assert_eq!(
            v["dsseEnvelope"]["signatures"][0]["keyid"],
            sha256_hex(&der)
        );
        assert_eq!(
            v["verificationMaterial"]["tlogEntries"],
            serde_json::json!([])
        );
        system.shutdown().await.unwrap();
    }

    /// The check a peer in any language makes: PAE rebuilt by hand from the JSON, the signature
    /// checked with `p256` directly, the statement read as plain JSON. No crate code involved.
    #[tokio::test]
    async fn a_v3_attestation_checks_without_the_crates_encoder() {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePublicKey;
        let system = system().await;
        let shard = signed_shard(&system).await;
        let att = system.attest_signed(&shard, NONCE).await.unwrap();
        let v = serde_json::to_value(&att).unwrap();
        let env = &v["dsseEnvelope"];
        let payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
        let payload_type = env["payloadType"].as_str().unwrap();
        assert_eq!(payload_type, "application/vnd.in-toto+json");
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .into_bytes();
        pae.extend_from_slice(&payload);
        let sig = STANDARD
            .decode(env["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(&system.identity_public_key_pem())
            .unwrap();
        key.verify(&pae, &p256::ecdsa::DerSignature::from_bytes(&sig).unwrap())
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(
            statement["predicateType"],
            "urn:vram-residency:attestation:v3"
        );
        assert_eq!(
            statement["subject"],
            serde_json::json!([{"name": "m-1", "digest": {"sha256": shard.info().digest}}])
        );
        let p = &statement["predicate"];
        // Members in the documented order (the raw text; a parsed map would sort them).
        let text = std::str::from_utf8(&payload).unwrap();
        let predicate_text = &text[text.find("\"predicate\":{").unwrap()..];
        let at: Vec<usize> = [
            "nonce",
            "worker_id",
            "shard",
            "verified_mode",
            "verified_at",
            "backend",
            "device_id",
            "audit_head",
            "provenance",
        ]
        .iter()
        .map(|k| predicate_text.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{predicate_text}");
        assert!(text.starts_with(r#"{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"m-1","digest":{"sha256":""#));
        assert_eq!(p["nonce"], hex::encode(NONCE));
        assert_eq!(p["shard"], serde_json::to_value(shard.info()).unwrap());
        assert_eq!(p["verified_mode"], "full");
        let at = p["verified_at"].as_str().unwrap();
        assert!(
            at.ends_with('Z') && at.len() == "2026-01-01T00:00:00.000000000Z".len(),
            "{at}"
        );
        assert_eq!(
            p["provenance"],
            serde_json::to_value(shard.provenance().unwrap()).unwrap()
        );
        // Deterministic (RFC 6979): the same statement gets the same signature.
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn any_changed_payload_byte_wrong_key_nonce_or_policy_is_attestation_invalid() {
        let system = system().await;
        let shard = signed_shard(&system).await;
        let att = system.attest_signed(&shard, NONCE).await.unwrap();
        let pem = system.identity_public_key_pem();
        let none = AttestationPolicy::default();
        verify_signed_attestation(&att, &pem, NONCE, &none).unwrap();

        // Every byte of the payload, one bit at a time.
        let env = att.bundle.dsse_envelope.as_ref().unwrap();
        let payload = STANDARD.decode(&env.payload).unwrap();
        for i in 0..payload.len() {
            let mut changed = payload.clone();
            changed[i] ^= 0x20;
            let mut a = att.clone();
            a.bundle.dsse_envelope.as_mut().unwrap().payload = STANDARD.encode(&changed);
            let why = invalid(verify_signed_attestation(&a, &pem, NONCE, &none));
            assert!(why.contains("does not verify"), "byte {i}: {why}");
        }
        // The signature, the payload type, the key id and the hint.
        let mut a = att.clone();
        let sig = &mut a.bundle.dsse_envelope.as_mut().unwrap().signatures[0].sig;
        let mut raw = STANDARD.decode(&*sig).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        *sig = STANDARD.encode(raw);
        invalid(verify_signed_attestation(&a, &pem, NONCE, &none));
        let mut a = att.clone();
        a.bundle.dsse_envelope.as_mut().unwrap().payload_type = "application/json".into();
        invalid(verify_signed_attestation(&a, &pem, NONCE, &none));
        let mut a = att.clone();
        a.bundle.dsse_envelope.as_mut().unwrap().signatures[0].keyid = "00".repeat(32);
        invalid(verify_signed_attestation(&a, &pem, NONCE, &none));
        let mut a = att.clone();
        a.bundle
            .verification_material
            .public_key
            .as_mut()
            .unwrap()
            .hint = "x".into();
        invalid(verify_signed_attestation(&a, &pem, NONCE, &none));

        // Another worker's key.
        let other = VramResidency::start(
            Config::simulated(1, 1 << 20).worker_token("another-worker-token-0123456789"),
        )
        .await
        .unwrap();
        let why = invalid(verify_signed_attestation(
            &att,
            other.identity_public_key_pem(),
            NONCE,
            &none,
        ));
        assert!(why.contains("does not verify"), "{why}");
        other.shutdown().await.unwrap();

        // Another nonce.
        let why = invalid(verify_signed_attestation(
            &att,
            &pem,
            b"another-challenge-nonce-000000000",
            &none,
        ));
        assert!(why.contains("different nonce"), "{why}");

        // Each policy requirement, one at a time.
        let subject = shard.provenance().unwrap().model_subject_sha256.clone();
        let head = verify_signed_attestation(&att, &pem, NONCE, &none)
            .unwrap()
            .audit_head
            .seq;
        for (what, policy) in [
            ("for shard", none.clone().expect_shard_id("m-2")),
            ("sha256", none.clone().expect_digest("ab".repeat(32))),
            ("on device", none.clone().expect_device_id("GPU-0000")),
            ("backwards", none.clone().min_audit_seq(head + 1)),
            (
                "from model",
                none.clone().require_provenance("cd".repeat(32)),
            ),
            ("device memory", none.clone().require_device_memory(true)),
        ] {
            let why = invalid(verify_signed_attestation(&att, &pem, NONCE, &policy));
            assert!(why.contains(what), "{what}: {why}");
        }
        // The ones that hold pass (the controls for the refusals above).
        for policy in [
            none.clone().expect_shard_id("m-1"),
            none.clone()
                .expect_digest(shard.info().digest.to_uppercase()),
            none.clone().min_audit_seq(head),
            none.clone().require_provenance(subject.to_uppercase()),
        ] {
            verify_signed_attestation(&att, &pem, NONCE, &policy).unwrap();
        }
        // A bad key or nonce from the challenger itself is its own input error.
        assert!(matches!(
            verify_signed_attestation(&att, "junk", NONCE, &none),
            Err(VramError::InvalidInput(_))
        ));
        assert!(matches!(
            verify_signed_attestation(&att, &pem, b"short", &none),
            Err(VramError::InvalidInput(_))
        ));
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_unsigned_shard_attests_with_null_provenance_and_fails_require_provenance() {
        let system = system().await;
        let shard = system
            .seal(SealRequest::new("plain", "r", 0, vec![3; 5000]))
            .await
            .unwrap();
        let att = system.attest_signed(&shard, NONCE).await.unwrap();
        let payload = STANDARD
            .decode(&att.bundle.dsse_envelope.as_ref().unwrap().payload)
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert!(statement["predicate"]["provenance"].is_null());
        let pem = system.identity_public_key_pem();
        let claims =
            verify_signed_attestation(&att, &pem, NONCE, &AttestationPolicy::default()).unwrap();
        assert!(claims.provenance.is_none());
        let why = invalid(verify_signed_attestation(
            &att,
            &pem,
            NONCE,
            &AttestationPolicy::default().require_provenance("ab".repeat(32)),
        ));
        assert!(why.contains("no provenance"), "{why}");
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn group_attestations_carry_one_subject_per_member() {
        use vram_residency::GroupRequest;
        use vram_residency::attestation::signed::verify_signed_group_attestation;
        let system = system().await;
        let group = system
            .seal_group(
                GroupRequest::new("tp2", "hf:org/m@rev")
                    .part(SealRequest::new("tp2-0", "hf:org/m@rev", 0, vec![1; 9000]))
                    .part(SealRequest::new("tp2-1", "hf:org/m@rev", 1, vec![2; 9000])),
            )
            .await
            .unwrap();
        let att = system.attest_group_signed(&group, NONCE).await.unwrap();
        let pem = system.identity_public_key_pem();
        let claims = verify_signed_group_attestation(
            &att,
            &pem,
            NONCE,
            &AttestationPolicy::default()
                .expect_shard_id("tp2")
                .expect_digest(&group.shards()[1].info().digest)
                .require_mode(VerifyMode::Full),
        )
        .unwrap();
        assert_eq!(claims.group, *group.info());
        assert_eq!(claims.members.len(), 2);
        assert_eq!(claims.members[1].shard, *group.shards()[1].info());
        let payload = STANDARD
            .decode(&att.bundle.dsse_envelope.as_ref().unwrap().payload)
            .unwrap();
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(statement["subject"].as_array().unwrap().len(), 2);
        assert_eq!(statement["subject"][1]["name"], "tp2-1");
        // A group attestation is not a shard attestation, and the other way round.
        let why = invalid(verify_signed_attestation(
            &att,
            &pem,
            NONCE,
            &AttestationPolicy::default(),
        ));
        assert!(why.contains("predicate type"), "{why}");
        invalid(verify_signed_group_attestation(
            &att,
            &pem,
            NONCE,
            &AttestationPolicy::default().expect_shard_id("tp2-0"),
        ));
        invalid(verify_signed_group_attestation(
            &att,
            &pem,
            b"another-challenge-nonce-000000000",
            &AttestationPolicy::default(),
        ));
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_signed_audit_head_checks_with_the_public_key() {
        use vram_residency::verify_signed_audit_head;
        let system = system().await;
        let _shard = signed_shard(&system).await;
        let signed = system.audit_head_signed().await.unwrap();
        let pem = system.identity_public_key_pem();
        let head = verify_signed_audit_head(&signed, &pem).unwrap();
        assert_eq!(head, system.audit_head().await.unwrap());
        // Not an attestation: refused as one.
        invalid(verify_signed_attestation(
            &signed,
            &pem,
            NONCE,
            &AttestationPolicy::default(),
        ));
        let mut forged = signed.clone();
        let env = forged.bundle.dsse_envelope.as_mut().unwrap();
        let text = String::from_utf8(STANDARD.decode(&env.payload).unwrap()).unwrap();
        env.payload = STANDARD.encode(text.replace(&format!("\"seq\":{}", head.seq), "\"seq\":1"));
        invalid(verify_signed_audit_head(&forged, &pem));
        system.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_identity_key_comes_from_a_key_file_or_from_the_token() {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let dir = tempfile::tempdir().unwrap();
        // Derived: the SPEC §9.3 vector.
        let system = VramResidency::start(
            Config::simulated(1, 1 << 20).worker_token("vectors-worker-token-0123456789abcdef"),
        )
        .await
        .unwrap();
        assert_eq!(
            system.identity_key_id(),
            "3b1f9e87cfa080abb1fe8879da0b647e04f9e6c5b3bbdc9f2e52cbf0008d320c"
        );
        system.shutdown().await.unwrap();
        // Loaded: a PKCS#8 PEM file, owner-only.
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let path = dir.path().join("identity.pem");
        std::fs::write(&path, pem.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let system = VramResidency::start(
            Config::simulated(1, 1 << 20)
                .worker_token("vectors-worker-token-0123456789abcdef")
                .identity_key_file(&path),
        )
        .await
        .unwrap();
        use p256::pkcs8::EncodePublicKey;
        assert_eq!(
            system.identity_public_key_pem(),
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
        );
        system.shutdown().await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = VramResidency::start(
                Config::simulated(1, 1 << 20)
                    .worker_token("vectors-worker-token-0123456789abcdef")
                    .identity_key_file(&path),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, VramError::InvalidInput(m) if m.contains("identity key file") && m.contains("group or others")),
                "{err}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let link = dir.path().join("link.pem");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            let err = VramResidency::start(
                Config::simulated(1, 1 << 20)
                    .worker_token("vectors-worker-token-0123456789abcdef")
                    .identity_key_file(&link),
            )
            .await
            .unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        // Not a key: refused without quoting the file.
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = VramResidency::start(
            Config::simulated(1, 1 << 20)
                .worker_token("vectors-worker-token-0123456789abcdef")
                .identity_key_file(&junk),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, VramError::InvalidInput(_)), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }
}

/// The two findings of the HMAC format's review (issue 20), for v2 and v3 alike.
mod review_findings {
    use super::*;
    use std::time::Duration;
    use vram_residency::{
        AttestationPolicy, Config, SealRequest, VramResidency, WorkerToken, verify_attestation,
        verify_attestation_with, verify_signed_attestation,
    };

    const NONCE: &[u8] = b"challenger-nonce-0123456789abcdef";
    const TOKEN: &str = "review-test-token-0123456789abcdef";

    async fn two_shards() -> (
        VramResidency,
        vram_residency::SealedShard,
        vram_residency::SealedShard,
    ) {
        let system = VramResidency::start(Config::simulated(1, 16 << 20).worker_token(TOKEN))
            .await
            .unwrap();
        let a = system
            .seal(SealRequest::new("s-a", "r", 0, vec![1; 5000]))
            .await
            .unwrap();
        let b = system
            .seal(SealRequest::new("s-b", "r", 0, vec![2; 5000]))
            .await
            .unwrap();
        (system, a, b)
    }

    /// A man in the middle edits an attestation about a healthy shard: the challenger must not
    /// be told that some shard (of the attacker's choosing) failed its seal.
    #[tokio::test]
    async fn a_tampered_v2_attestation_is_attestation_invalid_not_a_shard_failure() {
        let (system, a, _b) = two_shards().await;
        let token = WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
        let att = system.attest(&a, NONCE).await.unwrap();
        verify_attestation(&att, &token, NONCE).unwrap();
        let mut cases = Vec::new();
        let mut t = att.clone();
        t.shard.shard_id = "victim-shard".into();
        cases.push(t);
        let mut t = att.clone();
        t.shard.vram_bytes += 1;
        cases.push(t);
        let mut t = att.clone();
        t.verified_at_unix_nanos += 1;
        cases.push(t);
        let mut t = att.clone();
        t.device_id = "GPU-other".into();
        cases.push(t);
        let mut t = att.clone();
        t.signature = "00".repeat(32);
        cases.push(t);
        let mut t = att.clone();
        t.format = "vram-attest-v1".into();
        cases.push(t);
        for t in cases {
            let err = verify_attestation(&t, &token, NONCE).unwrap_err();
            assert!(matches!(err, VramError::AttestationInvalid(_)), "{err:?}");
            assert!(!err.is_integrity_failure(), "{err:?}");
            assert!(!err.to_string().contains("victim-shard"), "{err}");
        }
        let err =
            verify_attestation(&att, &token, b"another-challenge-nonce-000000000").unwrap_err();
        assert!(matches!(err, VramError::AttestationInvalid(_)), "{err:?}");
        system.shutdown().await.unwrap();
    }

    /// A challenge about `s-a` answered with a (genuine) attestation about `s-b`.
    #[tokio::test]
    async fn an_attestation_for_another_shard_fails_a_challenge_that_names_its_shard() {
        let (system, a, b) = two_shards().await;
        let token = WorkerToken::new(TOKEN.as_bytes().to_vec()).unwrap();
        let about_b = system.attest(&b, NONCE).await.unwrap();
        let asked = AttestationPolicy::default()
            .max_age(Duration::from_secs(60))
            .expect_shard_id("s-a")
            .expect_digest(&a.info().digest);
        let err = verify_attestation_with(&about_b, &token, NONCE, &asked).unwrap_err();
        assert!(
            matches!(&err, VramError::AttestationInvalid(m) if m.contains("s-b")),
            "{err:?}"
        );
        let asked_digest_only = AttestationPolicy::default().expect_digest(&a.info().digest);
        let err = verify_attestation_with(&about_b, &token, NONCE, &asked_digest_only).unwrap_err();
        assert!(matches!(err, VramError::AttestationInvalid(_)), "{err:?}");
        let about_a = system.attest(&a, NONCE).await.unwrap();
        verify_attestation_with(&about_a, &token, NONCE, &asked).unwrap();

        // v3 alike.
        let pem = system.identity_public_key_pem();
        let about_b = system.attest_signed(&b, NONCE).await.unwrap();
        let err = verify_signed_attestation(&about_b, &pem, NONCE, &asked).unwrap_err();
        assert!(matches!(err, VramError::AttestationInvalid(_)), "{err:?}");
        let about_a = system.attest_signed(&a, NONCE).await.unwrap();
        verify_signed_attestation(&about_a, &pem, NONCE, &asked).unwrap();
        system.shutdown().await.unwrap();
    }
}

/// `tests/vectors/attest-v3.json`, made by `scripts/make-attest-v3-vectors.py` with Python's
/// `cryptography` (RFC 6979 deterministic ECDSA), not by the crate: the crate must produce the
/// same bytes — key, statement, signature, bundle — and accept them; the signature is also
/// checked by hand (PAE rebuilt from the JSON, `p256` directly).
mod vectors {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use std::time::Duration;
    use vram_residency::attestation::ResidencyClaims;
    use vram_residency::attestation::signed::{
        assemble, audit_head_payload, residency_payload, verify_signed_attestation_at,
    };
    use vram_residency::seal::identity::IdentityKey;
    use vram_residency::{
        AttestationPolicy, AuditHead, BackendKind, Provenance, ShardInfo, SignedAttestation,
        WorkerToken, verify_signed_audit_head,
    };

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!("../vectors/attest-v3.json")).unwrap()
    }

    fn token(v: &serde_json::Value) -> WorkerToken {
        WorkerToken::new(v["token"].as_str().unwrap().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_identity_key_is_the_one_python_derives() {
        let v = vectors();
        let public = IdentityKey::derive(&token(&v)).unwrap().public().unwrap();
        assert_eq!(
            public.pem,
            v["identity"]["public_key_pem"].as_str().unwrap()
        );
        assert_eq!(public.key_id, v["identity"]["key_id"].as_str().unwrap());
        assert_eq!(
            v["identity"]["d"],
            "1ffd998b96ac6ec50938e6cfdc181194c9273d7353b838647d26245d71f1986d"
        );
    }

    #[test]
    fn the_crate_writes_exactly_the_vector_bytes_and_accepts_them() {
        let v = vectors();
        let token = token(&v);
        let key = IdentityKey::derive(&token).unwrap();
        let pem = v["identity"]["public_key_pem"].as_str().unwrap();
        let key_id = v["identity"]["key_id"].as_str().unwrap();
        let cases = v["attestations"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let payload = case["payload"].as_str().unwrap().as_bytes();
            let statement: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let p = &statement["predicate"];
            let shard: ShardInfo = serde_json::from_value(p["shard"].clone()).unwrap();
            // The seal inside was made by Python per SPEC §4: the crate's HMAC agrees.
            vram_residency::seal::claims::verify(
                &vram_residency::seal::keys::SealKey::derive(&token),
                &shard,
            )
            .then_some(())
            .unwrap();
            let claims = ResidencyClaims {
                format: "vram-attest-v3".into(),
                nonce: case["nonce"].as_str().unwrap().into(),
                worker_id: p["worker_id"].as_str().unwrap().into(),
                shard,
                verified_mode: p["verified_mode"].as_str().unwrap().parse().unwrap(),
                verified_at_unix_nanos: case["verified_at_unix_nanos"].as_u64().unwrap(),
                backend: match p["backend"].as_str().unwrap() {
                    "cuda" => BackendKind::Cuda,
                    _ => BackendKind::Simulated,
                },
                device_id: p["device_id"].as_str().unwrap().into(),
                audit_head: serde_json::from_value::<AuditHead>(p["audit_head"].clone()).unwrap(),
                provenance: serde_json::from_value::<Option<Provenance>>(p["provenance"].clone())
                    .unwrap(),
            };
            // Same statement bytes, same (deterministic) signature, same bundle.
            assert_eq!(
                String::from_utf8(residency_payload(&claims).unwrap()).unwrap(),
                case["payload"].as_str().unwrap(),
                "{name}"
            );
            let sig = key.sign_dsse("application/vnd.in-toto+json", payload);
            assert_eq!(
                STANDARD.encode(&sig),
                case["signature_der_base64"].as_str().unwrap(),
                "{name}"
            );
            let bundle = assemble(payload, &sig, key_id);
            assert_eq!(
                serde_json::to_string(&bundle).unwrap(),
                case["bundle_json"].as_str().unwrap(),
                "{name}"
            );
            // And the crate accepts the vector's bundle with the public key alone.
            let att: SignedAttestation =
                serde_json::from_str(case["bundle_json"].as_str().unwrap()).unwrap();
            let nonce = hex::decode(case["nonce"].as_str().unwrap()).unwrap();
            let now = Duration::from_nanos(claims.verified_at_unix_nanos) + Duration::from_secs(5);
            let policy = AttestationPolicy::default()
                .max_age(Duration::from_secs(60))
                .expect_shard_id(claims.shard.shard_id.clone())
                .expect_digest(claims.shard.digest.clone());
            let got = verify_signed_attestation_at(&att, pem, &nonce, &policy, now).unwrap();
            assert_eq!(got, claims, "{name}");
            // Stale by the vector's own clock.
            let later = now + Duration::from_secs(120);
            assert!(matches!(
                verify_signed_attestation_at(&att, pem, &nonce, &policy, later),
                Err(VramError::AttestationInvalid(m)) if m.contains("stale")
            ));
        }
    }

    #[test]
    fn the_vector_signatures_check_by_hand_from_the_json() {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePublicKey;
        let v = vectors();
        let key = p256::ecdsa::VerifyingKey::from_public_key_pem(
            v["identity"]["public_key_pem"].as_str().unwrap(),
        )
        .unwrap();
        let mut bundles: Vec<&str> = v["attestations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["bundle_json"].as_str().unwrap())
            .collect();
        bundles.push(v["audit_head"]["bundle_json"].as_str().unwrap());
        for text in bundles {
            let b: serde_json::Value = serde_json::from_str(text).unwrap();
            let env = &b["dsseEnvelope"];
            let payload = STANDARD.decode(env["payload"].as_str().unwrap()).unwrap();
            let t = env["payloadType"].as_str().unwrap();
            let pae = [
                format!("DSSEv1 {} {t} {} ", t.len(), payload.len()).into_bytes(),
                payload.clone(),
            ]
            .concat();
            let sig = STANDARD
                .decode(env["signatures"][0]["sig"].as_str().unwrap())
                .unwrap();
            let sig = p256::ecdsa::DerSignature::from_bytes(&sig).unwrap();
            key.verify(&pae, &sig).unwrap();
            let mut altered = pae.clone();
            let last = altered.len() - 2;
            altered[last] ^= 1;
            assert!(key.verify(&altered, &sig).is_err());
        }
    }

    #[test]
    fn the_signed_audit_head_vector() {
        let v = vectors();
        let h = &v["audit_head"];
        let head: AuditHead = serde_json::from_value(h["audit_head"].clone()).unwrap();
        let payload = audit_head_payload(
            h["worker_id"].as_str().unwrap(),
            &head,
            h["signed_at_unix_nanos"].as_u64().unwrap(),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            h["payload"].as_str().unwrap()
        );
        let att: SignedAttestation =
            serde_json::from_str(h["bundle_json"].as_str().unwrap()).unwrap();
        assert_eq!(
            verify_signed_audit_head(&att, v["identity"]["public_key_pem"].as_str().unwrap())
                .unwrap(),
            head
        );
    }
}
