//! Sigstore bundle v0.3 as JSON: the container model-signing writes for a signed model and
//! this crate writes for a signed attestation or audit head.
//!
//! One set of types serves both directions. Reading is lenient about members it does not use
//! (a newer bundle may carry more) and strict about size and shape: the input is capped before
//! parsing, and a parse failure says whether the text was cut short, was not JSON, or was JSON
//! of another shape, with the line and column, never echoing more than a bounded, sanitised
//! piece of the input.

use serde::{Deserialize, Serialize};

use crate::error::VramError;

/// Media type of a sigstore bundle v0.3 (the version model-signing 1.x writes).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Largest bundle accepted, in bytes. A model-signing manifest lists one line per file; a
/// release of tens of thousands of files stays far below this.
pub const MAX_BUNDLE_BYTES: usize = 8 << 20;

/// A sigstore bundle: verification material and a DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigstoreBundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    pub media_type: String,
    /// How to check the signature: a public key hint, or certificates (refused here).
    pub verification_material: VerificationMaterial,
    /// The signed envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsse_envelope: Option<DsseEnvelope>,
    /// A plain message signature (bundles of signed blobs; refused here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_signature: Option<serde_json::Value>,
}

/// A bundle's verification material. Key-signed bundles carry `publicKey`; certificate and
/// keyless (Fulcio) bundles carry `x509CertificateChain` or `certificate` and transparency-log
/// entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// A hint naming the key; never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyHint>,
    /// An X.509 chain (certificate-signed bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_certificate_chain: Option<serde_json::Value>,
    /// A single leaf certificate (keyless bundles, v0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_json::Value>,
    /// Transparency-log entries (always written, empty for a key-signed bundle).
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
    /// RFC 3161 timestamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_verification_data: Option<serde_json::Value>,
}

/// `publicKey`: a hint only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyHint {
    /// What the signer called its key (model-signing: SHA-256 of the key's PEM text; this
    /// crate: its key id).
    #[serde(default)]
    pub hint: String,
}

/// A DSSE envelope as sigstore bundles write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DsseEnvelope {
    /// The signed payload, standard base64.
    pub payload: String,
    /// What the payload is (`application/vnd.in-toto+json`).
    pub payload_type: String,
    /// The signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<DsseSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseSignature {
    /// The signature, standard base64 (ASN.1 DER for ECDSA).
    pub sig: String,
    /// The signer's key id (empty in model-signing bundles).
    #[serde(default)]
    pub keyid: String,
}

/// Why a JSON document did not parse, in words fit for an error: truncated, not JSON, or JSON
/// of another shape, with the position. The serde message (which may quote the input) is cut
/// to a bounded, sanitised piece.
pub fn describe_json_error(e: &serde_json::Error) -> String {
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        serde_json::error::Category::Eof => format!("it ends early ({at}): truncated"),
        serde_json::error::Category::Syntax => format!("it is not valid JSON ({at})"),
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            let what: String = e.to_string().chars().take(120).collect();
            format!(
                "it does not have the expected shape: {}",
                crate::text::sanitize(&what)
            )
        }
    }
}

/// Parses a bundle of at most [`MAX_BUNDLE_BYTES`], turning every failure into `refuse(reason)`.
pub fn parse_bundle(
    bytes: &[u8],
    refuse: impl Fn(String) -> VramError,
) -> Result<SigstoreBundle, VramError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(refuse(format!(
            "the bundle is {} bytes, more than the {MAX_BUNDLE_BYTES}-byte limit",
            bytes.len()
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(refuse("the bundle is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        refuse(format!(
            "the bundle is malformed: {}",
            describe_json_error(&e)
        ))
    })
}

impl SigstoreBundle {
    /// The one DSSE envelope of a bundle that must be a key-signed, single-signature DSSE
    /// bundle of `payload_type`, with its payload and signature decoded; every other kind of
    /// bundle is `refuse(reason)`.
    pub fn single_dsse(
        &self,
        payload_type: &str,
        refuse: impl Fn(String) -> VramError,
    ) -> Result<DecodedEnvelope<'_>, VramError> {
        let shown = |s: &str| crate::text::sanitize(&s.chars().take(80).collect::<String>());
        if self.media_type != BUNDLE_MEDIA_TYPE {
            return Err(refuse(format!(
                "the bundle's media type is {:?}, not {BUNDLE_MEDIA_TYPE}",
                shown(&self.media_type)
            )));
        }
        let material = &self.verification_material;
        if material.x509_certificate_chain.is_some() || material.certificate.is_some() {
            return Err(refuse(
                "it is a certificate-based (X.509 or keyless) bundle; only bundles signed with a \
                 publisher key are verified, against the key given"
                    .into(),
            ));
        }
        if material.public_key.is_none() {
            return Err(refuse(
                "the bundle names no public key (verificationMaterial.publicKey is missing)".into(),
            ));
        }
        let Some(envelope) = &self.dsse_envelope else {
            return Err(refuse(
                "the bundle carries no DSSE envelope (a message signature is not a signed \
                 statement)"
                    .into(),
            ));
        };
        if envelope.payload_type != payload_type {
            return Err(refuse(format!(
                "the envelope's payload type is {:?}, not {payload_type}",
                shown(&envelope.payload_type)
            )));
        }
        let [signature] = envelope.signatures.as_slice() else {
            return Err(refuse(format!(
                "the envelope has {} signatures; exactly one is expected",
                envelope.signatures.len()
            )));
        };
        let payload = super::dsse::base64_decode(&envelope.payload)
            .ok_or_else(|| refuse("the envelope's payload is not standard base64".into()))?;
        let sig = super::dsse::base64_decode(&signature.sig)
            .ok_or_else(|| refuse("the signature is not standard base64".into()))?;
        Ok(DecodedEnvelope {
            payload_type: &envelope.payload_type,
            payload,
            signature: sig,
            keyid: &signature.keyid,
            hint: material
                .public_key
                .as_ref()
                .map(|k| k.hint.as_str())
                .unwrap_or_default(),
        })
    }
}

/// A DSSE envelope's parts, decoded, ready to check.
#[derive(Debug)]
pub struct DecodedEnvelope<'a> {
    /// The payload type.
    pub payload_type: &'a str,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The signature bytes.
    pub signature: Vec<u8>,
    /// The signature's key id, as written (untrusted).
    pub keyid: &'a str,
    /// The bundle's public key hint, as written (untrusted).
    pub hint: &'a str,
}

impl DecodedEnvelope<'_> {
    /// The bytes the signature covers: `PAE(payload_type, payload)`.
    pub fn pae(&self) -> Vec<u8> {
        super::dsse::pae(self.payload_type, &self.payload)
    }
}
