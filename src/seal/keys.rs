//! Worker token and the keys derived from it.
//!
//! The worker token is the one secret an operator provisions. Two keys are derived from it with
//! HKDF-SHA256 (no salt), separated by their `info` strings, so that a log MAC can never be
//! replayed as a seal signature or the other way round:
//!
//! * [`SealKey`]  — `info = "llorch-seal-key-v1"`, signs `vram-seal-v1` claims;
//! * [`AuditKey`] — `info = "llorch-audit-key-v1"`, chains `vram-audit-v1` records.
//!
//! * [`AttestKey`] — `info = "llorch-attest-key-v1"`, signs residency attestations.
//!
//! None of these types implements `Debug`, `Display`, `Clone` or `Serialize`, and all of them
//! zeroize their bytes on drop. The raw key bytes never leave this module except to the
//! crate's own unit tests (`cfg(test)`): callers get a keyed HMAC instance instead. With the
//! `zeroize` features of `sha2` and `hmac`, the hash states inside those HMAC instances (which
//! hold the key's padded blocks) are wiped on drop too. What is not wiped: copies the compiler
//! makes on the stack or in registers while hashing, and a token that reached the process as an
//! ordinary `String` before it was wrapped (an environment variable, for example).

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;
use zeroize::Zeroizing;

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

    fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        self.expand(info)
    }

    /// HKDF-SHA256(salt none, ikm = token, `info`, L = N).
    pub(super) fn expand<const N: usize>(&self, info: &[u8]) -> Zeroizing<[u8; N]> {
        let hk = Hkdf::<Sha256>::new(None, &self.bytes);
        // The output is written straight into zeroizing memory, so no copy of the key is left
        // behind on the stack. The lengths used (32, 48) are far below HKDF-SHA256's 255 × 32
        // limit, so `expand` cannot fail; if it ever did, the buffer would stay all zeros (a key
        // nobody else derives, so nothing would verify), which is safe rather than silently weak.
        let mut okm = Zeroizing::new([0u8; N]);
        let _cannot_fail = hk.expand(info, &mut *okm);
        okm
    }
}

/// What a derived key is for: its HKDF `info` string. One type per purpose, so a key for one
/// purpose can never be passed where another is expected.
pub trait KeyPurpose {
    /// The HKDF `info` string that derives this purpose's key.
    const INFO: &'static [u8];
}

/// Purpose of the key that signs `vram-seal-v1` claims (and `vram-group-v1` records).
pub enum Seal {}
/// Purpose of the key that chains `vram-audit-v1` records.
pub enum Audit {}
/// Purpose of the key that signs residency attestations.
pub enum Attest {}

impl KeyPurpose for Seal {
    const INFO: &'static [u8] = SEAL_KEY_INFO;
}
impl KeyPurpose for Audit {
    const INFO: &'static [u8] = AUDIT_KEY_INFO;
}
impl KeyPurpose for Attest {
    const INFO: &'static [u8] = ATTEST_KEY_INFO;
}

/// A 32-byte HMAC key derived from the worker token for one purpose, zeroized on drop. Its
/// bytes never leave this module (outside the crate's own unit tests): callers get a keyed HMAC
/// instance instead.
pub struct DerivedKey<P: KeyPurpose> {
    bytes: Zeroizing<[u8; 32]>,
    purpose: std::marker::PhantomData<P>,
}

/// Signs and checks `vram-seal-v1` claims. Lives inside the `SealKeeper` actor only.
pub type SealKey = DerivedKey<Seal>;
/// Chains `vram-audit-v1` records. Lives inside the `AuditActor` and the offline verifier.
pub type AuditKey = DerivedKey<Audit>;
/// Signs residency attestations. Lives inside the `SealKeeper` actor only.
pub type AttestKey = DerivedKey<Attest>;

impl<P: KeyPurpose> DerivedKey<P> {
    /// Derives this purpose's key from the worker token.
    pub fn derive(token: &WorkerToken) -> Self {
        Self {
            bytes: token.derive(P::INFO),
            purpose: std::marker::PhantomData,
        }
    }

    /// A fresh HMAC instance keyed with this key.
    pub fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this never takes the error branch; the fallback
        // keeps library code free of `expect`.
        match <HmacSha256 as KeyInit>::new_from_slice(&*self.bytes) {
            Ok(m) => m,
            Err(_) => <HmacSha256 as KeyInit>::new(&Default::default()),
        }
    }

    /// The key's bytes, for the crate's own test-vector checks.
    #[cfg(test)]
    pub(crate) fn bytes_for_tests(&self) -> &[u8; 32] {
        &self.bytes
    }
}
