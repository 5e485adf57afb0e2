//! `vram-attest-v1`: a signed answer to a challenger's nonce, saying that a shard was verified
//! resident and intact at a given moment.
//!
//! The statement the HMAC covers is ASCII `vram-attest-v1`, the nonce as u32 BE length + bytes,
//! the shard's `vram-seal-v1` claims as u32 BE length + bytes, the shard's seal signature (32 raw
//! bytes), `verified_at_unix_nanos` u64 BE, and the verification mode as u32 BE length + ASCII.
//! The key is HKDF-SHA256(token, info = "llorch-attest-key-v1"), distinct from the seal key, so
//! an attestation can never be replayed as a seal or the other way round. A challenger holding
//! the worker token checks it with [`verify_attestation`].

use hmac::Mac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::VramError;
use crate::seal::claims::ShardInfo;
use crate::seal::keys::{AttestKey, WorkerToken};

/// Format tag of attestations.
pub const ATTEST_FORMAT: &str = "vram-attest-v1";

/// A signed residency statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// Always `"vram-attest-v1"`.
    pub format: String,
    /// The challenger's nonce, hex.
    pub nonce: String,
    /// The shard's seal.
    pub shard: ShardInfo,
    /// How the shard was verified just before signing (`full`, `sampled(k)`).
    pub verified_mode: String,
    /// When.
    pub verified_at_unix_nanos: u64,
    /// HMAC-SHA256 with the attestation key over the statement, hex.
    pub signature: String,
}

fn put(out: &mut Vec<u8>, field: &str, bytes: &[u8]) -> Result<(), VramError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| VramError::invalid(format!("{field} is too long to attest")))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The bytes an attestation's signature covers.
pub fn statement(
    nonce: &[u8],
    shard: &ShardInfo,
    verified_mode: &str,
    verified_at_unix_nanos: u64,
) -> Result<Vec<u8>, VramError> {
    let claims = shard.claims()?;
    let mut sig = [0u8; 32];
    hex::decode_to_slice(&shard.signature, &mut sig)
        .map_err(|_| VramError::invalid("shard signature must be 64 hex characters"))?;
    let mut out = Vec::with_capacity(claims.len().saturating_add(nonce.len()).saturating_add(96));
    out.extend_from_slice(ATTEST_FORMAT.as_bytes());
    put(&mut out, "nonce", nonce)?;
    put(&mut out, "claims", &claims)?;
    out.extend_from_slice(&sig);
    out.extend_from_slice(&verified_at_unix_nanos.to_be_bytes());
    put(&mut out, "verified_mode", verified_mode.as_bytes())?;
    Ok(out)
}

/// Checks an attestation against the worker token and the nonce the challenger sent.
pub fn verify_attestation(
    att: &Attestation,
    token: &WorkerToken,
    expected_nonce: &[u8],
) -> Result<(), VramError> {
    let fail = || {
        VramError::seal_signature_failed(crate::text::sanitize(
            &att.shard.shard_id.chars().take(256).collect::<String>(),
        ))
    };
    if att.format != ATTEST_FORMAT {
        return Err(VramError::invalid(format!(
            "attestation format must be {ATTEST_FORMAT}"
        )));
    }
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower(&att.nonce) || !lower(&att.signature) {
        return Err(VramError::invalid(
            "attestation nonce and signature must be lowercase hex",
        ));
    }
    let nonce = hex::decode(&att.nonce).map_err(|_| VramError::invalid("nonce must be hex"))?;
    if !bool::from(nonce.as_slice().ct_eq(expected_nonce)) {
        return Err(VramError::invalid("attestation answers a different nonce"));
    }
    if !crate::seal::claims::verify(&crate::seal::keys::SealKey::derive(token), &att.shard) {
        return Err(fail());
    }
    let stmt = statement(
        &nonce,
        &att.shard,
        &att.verified_mode,
        att.verified_at_unix_nanos,
    )?;
    let mut given = [0u8; 32];
    if hex::decode_to_slice(&att.signature, &mut given).is_err() {
        return Err(fail());
    }
    let mut mac = AttestKey::derive(token).mac();
    mac.update(&stmt);
    if bool::from(mac.finalize().into_bytes().as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(fail())
    }
}
