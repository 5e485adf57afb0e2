//! Provenance: from a signed model release to the bytes a shard was sealed from.
//!
//! Model publishers sign releases with OpenSSF model-signing. A key-signed release is a
//! sigstore bundle v0.3 ([`bundle`]) holding a DSSE envelope ([`dsse`]) whose payload is an
//! in-toto statement listing every file with the plain SHA-256 of its bytes ([`manifest`]) —
//! exactly a seal's digest. [`ModelSignature::from_bundle`] checks the envelope's signature
//! with a publisher key the caller trusts ([`publisher_key`]), and what the statement says;
//! `SealRequest::provenance` then ties one file of that release to the shard sealed from it.
//! Layout and refusals: `.specs/provenance.md`.
//!
//! Only the given key is trusted: the bundle's `publicKey.hint` and the signature's `keyid`
//! are ignored, and certificate or keyless bundles are refused, since checking them would need
//! a certificate root and a transparency log this crate does not hold.

pub mod bundle;
pub mod dsse;
pub mod manifest;
pub mod publisher_key;

use serde::{Deserialize, Serialize};

use crate::error::VramError;

/// One file of a signed model: its name in the manifest and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedResource {
    /// The file's path in the model directory, as the manifest writes it.
    pub name: String,
    /// SHA-256 of the file's bytes, lowercase hex (what `sha256sum` prints).
    pub sha256: String,
}

/// Where a sealed shard's bytes come from: which file of which signed model, signed by whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The file's name in the signed manifest.
    pub resource: String,
    /// The model's subject digest: SHA-256 over every file's digest in manifest order.
    pub model_subject_sha256: String,
    /// The publisher key's id: lowercase hex SHA-256 of its SubjectPublicKeyInfo DER.
    pub publisher_keyid: String,
}

/// A model-signing v1.0 bundle whose DSSE signature verified with a given publisher key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSignature {
    resources: Vec<SignedResource>,
    subject_name: String,
    subject_sha256: String,
    publisher_keyid: String,
}

fn refuse(reason: String) -> VramError {
    VramError::ModelSignatureInvalid(reason)
}

impl ModelSignature {
    /// Parses a model-signing bundle (the JSON `model_signing sign key` writes) and verifies
    /// its DSSE signature with `publisher_public_key_pem` (PEM SubjectPublicKeyInfo, ECDSA
    /// P-256 or P-384).
    ///
    /// A publisher key that is not such a key is `InvalidInput`. Every refusal of the bundle
    /// is `ModelSignatureInvalid` naming the reason: larger than [`bundle::MAX_BUNDLE_BYTES`],
    /// truncated or not JSON, a certificate or keyless bundle, not one DSSE in-toto envelope,
    /// a signature that does not verify with the key, another statement or predicate type, a
    /// serialization other than `files`, a malformed resource, or a subject digest that is not
    /// SHA-256 over the resources' digests.
    pub fn from_bundle(
        bundle: &[u8],
        publisher_public_key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, VramError> {
        let key = publisher_key::PublicKey::from_pem(
            "the publisher key",
            publisher_public_key_pem.as_ref(),
        )?;
        let parsed = bundle::parse_bundle(bundle, refuse)?;
        let envelope = parsed.single_dsse(dsse::IN_TOTO_PAYLOAD_TYPE, refuse)?;
        if !key.verifies(&envelope.pae(), &envelope.signature) {
            return Err(refuse(format!(
                "the DSSE signature does not verify with the given {} publisher key (another \
                 key signed it, or the bundle was altered)",
                key.curve()
            )));
        }
        let manifest = manifest::parse_manifest(&envelope.payload, refuse)?;
        Ok(Self {
            resources: manifest.resources,
            subject_name: manifest.subject_name,
            subject_sha256: manifest.subject_sha256,
            publisher_keyid: key.key_id()?,
        })
    }

    /// The signed files, in manifest order.
    pub fn resources(&self) -> &[SignedResource] {
        &self.resources
    }

    /// The file named `name`, if the manifest lists it.
    pub fn resource(&self, name: &str) -> Option<&SignedResource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The statement's subject digest (lowercase hex): SHA-256 over every file's digest in
    /// manifest order. It names the whole release.
    pub fn subject_sha256(&self) -> &str {
        &self.subject_sha256
    }

    /// The statement's subject name (model-signing writes the model directory's name).
    pub fn subject_name(&self) -> &str {
        &self.subject_name
    }

    /// The id of the publisher key that verified the bundle: lowercase hex SHA-256 of its
    /// SubjectPublicKeyInfo DER.
    pub fn publisher_keyid(&self) -> &str {
        &self.publisher_keyid
    }

    /// The provenance a shard sealed from resource `name` carries; `InvalidInput` when the
    /// manifest does not list it.
    pub fn provenance_of(&self, name: &str) -> Result<(Provenance, &SignedResource), VramError> {
        let resource = self.resource(name).ok_or_else(|| {
            let listed: Vec<&str> = self
                .resources
                .iter()
                .take(8)
                .map(|r| r.name.as_str())
                .collect();
            VramError::invalid(format!(
                "resource {:?} is not in the signed model (it lists {} file(s): {}{})",
                crate::text::sanitize(&name.chars().take(256).collect::<String>()),
                self.resources.len(),
                crate::text::sanitize(&listed.join(", ")),
                if self.resources.len() > 8 {
                    ", …"
                } else {
                    ""
                }
            ))
        })?;
        Ok((
            Provenance {
                resource: resource.name.clone(),
                model_subject_sha256: self.subject_sha256.clone(),
                publisher_keyid: self.publisher_keyid.clone(),
            },
            resource,
        ))
    }
}
