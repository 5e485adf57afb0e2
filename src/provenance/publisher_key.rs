//! Public keys that check ECDSA signatures: a model publisher's (P-256 with SHA-256, or P-384
//! with SHA-384, as model-signing's `sign key` makes them) and a worker's identity key (P-256).
//!
//! A key is given as PEM SubjectPublicKeyInfo. Its id is the lowercase hex SHA-256 of the SPKI
//! DER: a name that depends only on the key, not on how its PEM text happens to be wrapped
//! (model-signing's own `publicKey.hint` hashes the PEM text, and is not trusted here).

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use sha2::{Digest, Sha256};

use crate::error::VramError;

/// Longest PEM text accepted for a public key (a P-384 SPKI PEM is about 215 bytes).
pub const MAX_PUBLIC_KEY_PEM_BYTES: usize = 16 * 1024;

/// An ECDSA public key on one of the curves the crate verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// NIST P-256; signatures hash with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// NIST P-384; signatures hash with SHA-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Parses a PEM SubjectPublicKeyInfo holding a P-256 or P-384 key. Anything else (another
    /// curve, RSA, Ed25519, a private key, a certificate, not PEM) is `InvalidInput` naming
    /// `what`.
    pub fn from_pem(what: &str, pem: &[u8]) -> Result<Self, VramError> {
        if pem.len() > MAX_PUBLIC_KEY_PEM_BYTES {
            return Err(VramError::invalid(format!(
                "{what} is {} bytes; a PEM public key is at most {MAX_PUBLIC_KEY_PEM_BYTES}",
                pem.len()
            )));
        }
        let text = std::str::from_utf8(pem)
            .map_err(|_| VramError::invalid(format!("{what} is not PEM text")))?
            .trim();
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(text) {
            return Ok(Self::P256(key));
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(text) {
            return Ok(Self::P384(key));
        }
        Err(VramError::invalid(format!(
            "{what} is not a PEM public key (SubjectPublicKeyInfo, \"BEGIN PUBLIC KEY\") for \
             ECDSA P-256 or P-384"
        )))
    }

    /// The key's SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Result<Vec<u8>, VramError> {
        let der = match self {
            Self::P256(k) => k.to_public_key_der(),
            Self::P384(k) => k.to_public_key_der(),
        };
        der.map(|d| d.as_bytes().to_vec())
            .map_err(|_| VramError::Internal("encoding a public key failed".into()))
    }

    /// The key id: lowercase hex SHA-256 of the SPKI DER.
    pub fn key_id(&self) -> Result<String, VramError> {
        Ok(hex::encode(Sha256::digest(self.spki_der()?)))
    }

    /// The curve's name (`P-256`, `P-384`).
    pub fn curve(&self) -> &'static str {
        match self {
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
        }
    }

    /// Whether `der_signature` (ASN.1 DER `ECDSA-Sig-Value`) is this key's signature over
    /// `message`, hashed with the curve's hash (SHA-256 for P-256, SHA-384 for P-384).
    pub fn verifies(&self, message: &[u8], der_signature: &[u8]) -> bool {
        match self {
            Self::P256(k) => p256::ecdsa::DerSignature::from_bytes(der_signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok()),
            Self::P384(k) => p384::ecdsa::DerSignature::from_bytes(der_signature)
                .is_ok_and(|sig| k.verify(message, &sig).is_ok()),
        }
    }
}
