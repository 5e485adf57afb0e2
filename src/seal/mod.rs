//! The seal: what makes "these exact bytes are resident" a checkable claim.
//!
//! * [`merkle`] — the chunked RFC 6962 tree that lets verification run in parallel and name the
//!   bad chunk;
//! * [`claims`] — the signed, public [`claims::ShardInfo`] record (`vram-seal-v1`);
//! * [`group_record`] — the signed record of a tensor-parallel group of seals (`vram-group-v1`);
//! * [`keys`] — the worker token and the seal/audit keys derived from it;
//! * [`identity`] — the worker's ECDSA P-256 identity key, which signs what anyone holding
//!   only its public key can check (`vram-attest-v3`, signed audit heads).
//!
//! The plain SHA-256 digest ([`sha256_hex`]) is what `sha256sum` prints; it is computed once at
//! seal time (it is inherently sequential) while re-verification uses the Merkle tree.

pub mod claims;
pub mod group_record;
pub mod identity;
pub mod keys;
pub mod merkle;
pub mod tensors;

use sha2::{Digest, Sha256};

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
