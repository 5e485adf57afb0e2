//! Worker token and the keys derived from it.
//!
//! The worker token is the one secret an operator provisions. Two keys are derived from it with
//! HKDF-SHA256 (no salt), separated by their `info` strings, so that a log MAC can never be
//! replayed as a seal signature or the other way round:
//!
//! * [`SealKey`]  — `info = "llorch-seal-key-v1"`, signs `vram-seal-v1` claims;
//! * [`AuditKey`] — `info = "llorch-audit-key-v1"`, chains `vram-audit-v1` records.
//!
//! None of these types implements `Debug`, `Display`, `Clone` or `Serialize`, and all of them
//! zeroize their bytes on drop. The raw key bytes never leave this module: callers get a keyed
//! HMAC instance instead.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::VramError;

/// HMAC-SHA256, the MAC used by both formats.
pub type HmacSha256 = Hmac<Sha256>;

/// HKDF `info` for the seal key.
pub const SEAL_KEY_INFO: &[u8] = b"llorch-seal-key-v1";
/// HKDF `info` for the audit key.
pub const AUDIT_KEY_INFO: &[u8] = b"llorch-audit-key-v1";
/// HKDF `info` for the attestation key.
pub const ATTEST_KEY_INFO: &[u8] = b"llorch-attest-key-v1";
/// Shortest accepted worker token, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The per-worker secret. Zeroized on drop; never printed, cloned or serialized.
pub struct WorkerToken {
    bytes: Zeroizing<Vec<u8>>,
}

impl WorkerToken {
    /// Wraps token bytes, rejecting tokens shorter than [`MIN_TOKEN_LEN`] bytes.
    ///
    /// The error names the length rule only, never the token.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, VramError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < MIN_TOKEN_LEN {
            return Err(VramError::InvalidInput(format!(
                "worker token must be at least {MIN_TOKEN_LEN} bytes (got {})",
                bytes.len()
            )));
        }
        Ok(Self { bytes })
    }

    /// Makes a second owned copy. Deliberately not `Clone`, so that every copy is explicit.
    pub fn duplicate(&self) -> Self {
        Self {
            bytes: Zeroizing::new(self.bytes.to_vec()),
        }
    }

    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(None, &self.bytes);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit, so expand cannot fail; should it
        // ever, the all-zero key is never used because we return the (zeroed) buffer only on Ok.
        if hk.expand(info, &mut okm).is_err() {
            okm.zeroize();
        }
        okm
    }
}

/// A 32-byte HMAC key, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
struct KeyBytes([u8; 32]);

impl KeyBytes {
    fn hmac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this never takes the error branch; the fallback
        // keeps library code free of `expect`.
        match <HmacSha256 as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()),
        }
    }
}

/// Signs and checks `vram-seal-v1` claims. Lives inside the `SealKeeper` actor only.
pub struct SealKey(KeyBytes);

impl SealKey {
    /// Derives the seal key from the worker token.
    pub fn derive(token: &WorkerToken) -> Self {
        Self(KeyBytes(token.derive(SEAL_KEY_INFO)))
    }

    /// A fresh HMAC instance keyed with the seal key.
    pub fn mac(&self) -> HmacSha256 {
        self.0.hmac()
    }

    /// The key's bytes, for test-vector checks only.
    #[doc(hidden)]
    pub fn expose_for_vectors(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.0.to_vec())
    }
}

/// Chains `vram-audit-v1` records. Lives inside the `AuditActor` and the offline verifier.
pub struct AuditKey(KeyBytes);

impl AuditKey {
    /// Derives the audit key from the worker token.
    pub fn derive(token: &WorkerToken) -> Self {
        Self(KeyBytes(token.derive(AUDIT_KEY_INFO)))
    }

    /// A fresh HMAC instance keyed with the audit key.
    pub fn mac(&self) -> HmacSha256 {
        self.0.hmac()
    }

    /// The key's bytes, for test-vector checks only.
    #[doc(hidden)]
    pub fn expose_for_vectors(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.0.to_vec())
    }
}

/// Signs residency attestations (`vram-attest-v1`). Lives inside the `SealKeeper` actor only.
pub struct AttestKey(KeyBytes);

impl AttestKey {
    /// Derives the attestation key from the worker token.
    pub fn derive(token: &WorkerToken) -> Self {
        Self(KeyBytes(token.derive(ATTEST_KEY_INFO)))
    }

    /// A fresh HMAC instance keyed with the attestation key.
    pub fn mac(&self) -> HmacSha256 {
        self.0.hmac()
    }
}
