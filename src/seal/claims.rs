//! `vram-seal-v1`: the public [`ShardInfo`] record and the canonical claims bytes its HMAC covers.
//!
//! The claims encoding is deliberately simple so a peer can check a seal in any language:
//! ASCII `vram-seal-v1`, then `worker_id`, `shard_id`, `model_ref` each as a u32 big-endian
//! length followed by UTF-8 bytes, then `gpu_device` u32 BE, `vram_bytes` u64 BE, `digest` and
//! `merkle_root` as 32 raw bytes each, `chunk_size` u64 BE, `sealed_at_unix_nanos` u64 BE,
//! `shard_index` u32 BE and `total_shards` u32 BE (both `0xFFFFFFFF` when absent). The signature is
//! HMAC-SHA256(seal_key, claims) in lowercase hex, always compared in constant time.

use hmac::Mac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::VramError;
use crate::seal::keys::SealKey;

/// The format tag, first in the claims and in the JSON.
pub const SEAL_FORMAT: &str = "vram-seal-v1";
const ABSENT_U32: u32 = u32::MAX;

/// Everything public about a sealed shard, signed. Safe to log, store and send to peers: it
/// contains no pointer and no key. Its JSON layout is fixed by `vram-seal-v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// Always `"vram-seal-v1"`.
    pub format: String,
    /// The worker that sealed the shard.
    pub worker_id: String,
    /// The shard's id.
    pub shard_id: String,
    /// Where the weights came from (e.g. `hf:org/model@rev`).
    pub model_ref: String,
    /// The device index holding the shard.
    pub gpu_device: u32,
    /// The shard's size in bytes.
    pub vram_bytes: u64,
    /// SHA-256 of the bytes, lowercase hex (what `sha256sum` prints).
    pub digest: String,
    /// RFC 6962 Merkle root over `chunk_size` leaves, lowercase hex.
    pub merkle_root: String,
    /// The Merkle leaf size in bytes.
    pub chunk_size: u64,
    /// When the seal was made, nanoseconds since the Unix epoch.
    pub sealed_at_unix_nanos: u64,
    /// Position in a tensor-parallel group, if any.
    pub shard_index: Option<u32>,
    /// Size of the tensor-parallel group, if any.
    pub total_shards: Option<u32>,
    /// HMAC-SHA256 over the claims, lowercase hex.
    pub signature: String,
}

impl ShardInfo {
    /// The canonical claims bytes. Fails if a field cannot be encoded (a digest that is not 32
    /// bytes of hex, a string longer than `u32::MAX`, a wrong format tag).
    pub fn claims(&self) -> Result<Vec<u8>, VramError> {
        if self.format != SEAL_FORMAT {
            return Err(VramError::invalid(format!(
                "format must be {SEAL_FORMAT:?}, got {:?}",
                crate::text::sanitize(&self.format.chars().take(32).collect::<String>())
            )));
        }
        match (self.shard_index, self.total_shards) {
            (None, None) => {}
            (Some(i), Some(t)) if i < t && t != ABSENT_U32 => {}
            _ => {
                return Err(VramError::invalid(
                    "shard_index and total_shards must both be absent, or both set with shard_index < total_shards",
                ));
            }
        }
        let digest = decode32("digest", &self.digest)?;
        let root = decode32("merkle_root", &self.merkle_root)?;
        let mut out = Vec::with_capacity(
            128usize
                .saturating_add(self.worker_id.len())
                .saturating_add(self.shard_id.len())
                .saturating_add(self.model_ref.len()),
        );
        out.extend_from_slice(SEAL_FORMAT.as_bytes());
        for (name, s) in [
            ("worker_id", &self.worker_id),
            ("shard_id", &self.shard_id),
            ("model_ref", &self.model_ref),
        ] {
            let len = u32::try_from(s.len())
                .map_err(|_| VramError::invalid(format!("{name} is too long to encode")))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.gpu_device.to_be_bytes());
        out.extend_from_slice(&self.vram_bytes.to_be_bytes());
        out.extend_from_slice(&digest);
        out.extend_from_slice(&root);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.sealed_at_unix_nanos.to_be_bytes());
        out.extend_from_slice(&self.shard_index.unwrap_or(ABSENT_U32).to_be_bytes());
        out.extend_from_slice(&self.total_shards.unwrap_or(ABSENT_U32).to_be_bytes());
        Ok(out)
    }

    /// The Merkle root as raw bytes.
    pub fn merkle_root_bytes(&self) -> Result<[u8; 32], VramError> {
        decode32("merkle_root", &self.merkle_root)
    }

    /// The digest as raw bytes.
    pub fn digest_bytes(&self) -> Result<[u8; 32], VramError> {
        decode32("digest", &self.digest)
    }
}

/// Whether `s` is canonical lowercase hex. The format fixes one spelling per value so that two
/// different JSON texts can never carry the same valid signature.
fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode32(field: &str, hex_str: &str) -> Result<[u8; 32], VramError> {
    let mut out = [0u8; 32];
    if hex_str.len() != 64
        || !is_lower_hex(hex_str)
        || hex::decode_to_slice(hex_str, &mut out).is_err()
    {
        return Err(VramError::invalid(format!(
            "{field} must be 64 lowercase hex characters"
        )));
    }
    Ok(out)
}

/// Computes the signature of `info`'s claims (ignoring `info.signature`).
pub fn sign(key: &SealKey, info: &ShardInfo) -> Result<String, VramError> {
    let claims = info.claims()?;
    let mut mac = key.mac();
    mac.update(&claims);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Whether `info.signature` is the valid signature of its claims. Constant-time on the MAC;
/// malformed fields simply fail.
pub fn verify(key: &SealKey, info: &ShardInfo) -> bool {
    let Ok(claims) = info.claims() else {
        return false;
    };
    let mut given = [0u8; 32];
    if info.signature.len() != 64
        || !is_lower_hex(&info.signature)
        || hex::decode_to_slice(&info.signature, &mut given).is_err()
    {
        return false;
    }
    let mut mac = key.mac();
    mac.update(&claims);
    let expected = mac.finalize().into_bytes();
    expected.as_slice().ct_eq(&given).into()
}

#[cfg(test)]
impl ShardInfo {
    /// An unsigned record of shard `s` (worker `w`, model `m`, device 0, 4 KiB chunks) of `len`
    /// bytes, with placeholder digest and root: a fixture for the crate's unit tests.
    pub(crate) fn unsigned_for_tests(len: u64) -> Self {
        Self {
            format: SEAL_FORMAT.into(),
            worker_id: "w".into(),
            shard_id: "s".into(),
            model_ref: "m".into(),
            gpu_device: 0,
            vram_bytes: len,
            digest: "00".repeat(32),
            merkle_root: "11".repeat(32),
            chunk_size: 4096,
            sealed_at_unix_nanos: 1,
            shard_index: None,
            total_shards: None,
            signature: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ShardInfo {
        ShardInfo::unsigned_for_tests(1)
    }

    #[test]
    fn one_spelling_per_claim() {
        assert!(info().claims().is_ok());
        // `Some(u32::MAX)` would encode like "absent"; half-set pairs are meaningless
        for (i, t) in [
            (Some(0), Some(u32::MAX)),
            (Some(0), None),
            (None, Some(2)),
            (Some(2), Some(2)),
        ] {
            let mut x = info();
            x.shard_index = i;
            x.total_shards = t;
            assert!(x.claims().is_err(), "{i:?}/{t:?}");
        }
        let mut upper = info();
        upper.digest = "AA".repeat(32);
        assert!(upper.claims().is_err());
    }
}
