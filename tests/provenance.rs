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

use std::path::{Path, PathBuf};

use vram_residency::{ModelSignature, VramError};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model-signing")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

fn sha256sums() -> Vec<(String, String)> {
    String::from_utf8(read("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| {
            let (digest, name) = l.split_once("  ").unwrap();
            (name.to_string(), digest.to_string())
        })
        .collect()
}

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
