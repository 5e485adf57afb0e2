//! The worker identity key: an ECDSA P-256 key whose signatures anyone can check with the
//! public key alone, so checking a worker's proofs no longer takes the secret that makes them.
//!
//! It comes from `Config::identity_key_file` (PKCS#8 PEM), or, without one, from the worker
//! token: `HKDF-SHA256(salt none, ikm token, info "llorch-identity-key-v1", L 48)`, read as a
//! 384-bit big-endian integer `x`, gives the scalar `d = 1 + (x mod (n − 1))`, with `n` the
//! P-256 group order. The 128 extra bits make the reduction's bias negligible, and `d` is never
//! zero. A worker thus needs no new secret; a control plane that holds only the public key
//! cannot forge what the worker signs.
//!
//! The key signs only DSSE envelopes ([`IdentityKey::sign_dsse`]: the pre-authentication
//! encoding of a payload type and payload), with RFC 6979 deterministic ECDSA over SHA-256,
//! DER-encoded. Its id is the lowercase hex SHA-256 of the public key's SubjectPublicKeyInfo
//! DER. Like every key here it implements neither `Debug`, `Clone` nor `Serialize`, and its
//! scalar is zeroized on drop (by `p256`'s `SigningKey`; the HKDF output and the intermediate
//! integers are zeroized here).

use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::bigint::{NonZero, U256, U384};
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::WorkerToken;
use crate::error::VramError;

/// HKDF `info` for the identity key.
pub const IDENTITY_KEY_INFO: &[u8] = b"llorch-identity-key-v1";

/// `n − 1` for P-256's group order `n`, big-endian hex.
const P256_ORDER_MINUS_ONE: &str =
    "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632550";

/// Longest PKCS#8 PEM accepted for an identity key (a P-256 one is about 240 bytes).
pub const MAX_IDENTITY_KEY_PEM_BYTES: usize = 16 * 1024;

/// The worker's signing key. Lives in the `SealKeeper` actor only.
pub struct IdentityKey {
    signing: p256::ecdsa::SigningKey,
}

/// The public half of an identity key: what a challenger is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPublicKey {
    /// PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), LF line endings.
    pub pem: String,
    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
    pub key_id: String,
}

impl IdentityKey {
    /// Derives the identity key from the worker token (module docs).
    pub fn derive(token: &WorkerToken) -> Result<Self, VramError> {
        let okm: Zeroizing<[u8; 48]> = token.expand(IDENTITY_KEY_INFO);
        let x = Zeroizing::new(U384::from_be_slice(&*okm));
        let modulus = NonZero::<U256>::from_be_hex(P256_ORDER_MINUS_ONE);
        let reduced = Zeroizing::new(x.rem(&modulus));
        let d = Zeroizing::new(reduced.wrapping_add(&U256::ONE));
        let bytes = Zeroizing::new(d.to_be_bytes());
        let signing = p256::ecdsa::SigningKey::from_slice((*bytes).as_ref()).map_err(|_| {
            VramError::Internal("the derived identity scalar is out of range".into())
        })?;
        Ok(Self { signing })
    }

    /// Reads a PKCS#8 PEM P-256 private key (`-----BEGIN PRIVATE KEY-----`). Anything else
    /// (another curve, an encrypted or SEC1 key, not PEM) is `InvalidInput` naming `what`,
    /// never quoting the input.
    pub fn from_pkcs8_pem(what: &str, pem: &[u8]) -> Result<Self, VramError> {
        if pem.len() > MAX_IDENTITY_KEY_PEM_BYTES {
            return Err(VramError::invalid(format!(
                "{what} is larger than {MAX_IDENTITY_KEY_PEM_BYTES} bytes"
            )));
        }
        let text = std::str::from_utf8(pem)
            .map_err(|_| VramError::invalid(format!("{what} is not PEM text")))?;
        let signing = p256::ecdsa::SigningKey::from_pkcs8_pem(text.trim()).map_err(|_| {
            VramError::invalid(format!(
                "{what} is not an unencrypted PKCS#8 PEM (\"BEGIN PRIVATE KEY\") ECDSA P-256 \
                 private key"
            ))
        })?;
        Ok(Self { signing })
    }

    /// The public key, as PEM and as key id.
    pub fn public(&self) -> Result<IdentityPublicKey, VramError> {
        let verifying = self.signing.verifying_key();
        let der = verifying
            .to_public_key_der()
            .map_err(|_| VramError::Internal("encoding the identity public key failed".into()))?;
        let pem = verifying
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| VramError::Internal("encoding the identity public key failed".into()))?;
        Ok(IdentityPublicKey {
            pem,
            key_id: hex::encode(Sha256::digest(der.as_bytes())),
        })
    }

    /// Signs `PAE(payload_type, payload)` (DSSE v1): RFC 6979 deterministic ECDSA P-256 with
    /// SHA-256, DER-encoded.
    pub fn sign_dsse(&self, payload_type: &str, payload: &[u8]) -> Vec<u8> {
        let pae = crate::provenance::dsse::pae(payload_type, payload);
        let signature: p256::ecdsa::DerSignature = self.signing.sign(&pae);
        signature.as_bytes().to_vec()
    }

    /// The private scalar, big-endian, for the crate's own test-vector checks.
    #[cfg(test)]
    pub(crate) fn scalar_for_tests(&self) -> Vec<u8> {
        self.signing.to_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_vector_derives() {
        let token = WorkerToken::new(b"vectors-worker-token-0123456789abcdef".to_vec()).unwrap();
        let key = IdentityKey::derive(&token).unwrap();
        assert_eq!(
            hex::encode(key.scalar_for_tests()),
            "1ffd998b96ac6ec50938e6cfdc181194c9273d7353b838647d26245d71f1986d"
        );
        assert_eq!(
            key.public().unwrap().key_id,
            "3b1f9e87cfa080abb1fe8879da0b647e04f9e6c5b3bbdc9f2e52cbf0008d320c"
        );
    }

    #[test]
    fn signatures_are_deterministic_and_verify() {
        use p256::ecdsa::signature::Verifier;
        use p256::pkcs8::DecodePublicKey;
        let token = WorkerToken::new(b"another-token-of-enough-length".to_vec()).unwrap();
        let key = IdentityKey::derive(&token).unwrap();
        let a = key.sign_dsse("t", b"payload");
        assert_eq!(a, key.sign_dsse("t", b"payload"));
        assert_ne!(a, key.sign_dsse("u", b"payload"));
        let public =
            p256::ecdsa::VerifyingKey::from_public_key_pem(&key.public().unwrap().pem).unwrap();
        let sig = p256::ecdsa::DerSignature::from_bytes(&a).unwrap();
        assert!(public.verify(b"DSSEv1 1 t 7 payload", &sig).is_ok());
        assert!(public.verify(b"DSSEv1 1 t 7 payloaD", &sig).is_err());
    }

    #[test]
    fn pkcs8_round_trip_and_refusals() {
        use p256::pkcs8::EncodePrivateKey;
        let token = WorkerToken::new(b"another-token-of-enough-length".to_vec()).unwrap();
        let key = IdentityKey::derive(&token).unwrap();
        let pem = key.signing.to_pkcs8_pem(LineEnding::LF).unwrap();
        let loaded = IdentityKey::from_pkcs8_pem("k", pem.as_bytes()).unwrap();
        assert_eq!(loaded.public().unwrap(), key.public().unwrap());
        for bad in [
            &b"junk"[..],
            key.public().unwrap().pem.as_bytes(),
            &[0xff, 0xfe],
        ] {
            let err = IdentityKey::from_pkcs8_pem("the key file", bad)
                .err()
                .unwrap();
            assert!(matches!(err, VramError::InvalidInput(_)));
            assert!(err.to_string().contains("the key file"));
        }
    }
}
