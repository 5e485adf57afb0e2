//! `vram-group-v1`: the public [`GroupInfo`] record of a tensor-parallel group, the canonical
//! claims bytes its HMAC covers, and the offline check a peer runs with the worker token alone.
//!
//! A model too large for one GPU is split into tensor-parallel shards, each sealed on its own
//! device as an ordinary `vram-seal-v1` [`ShardInfo`] (with `shard_index` / `total_shards`
//! set). The group record binds those seals together, in order, under the same seal key, so a
//! peer can tell "every part of this model, and only these parts, in this order" from a set of
//! loose seals that happen to share a model reference.
//!
//! Claims (all integers big-endian; `lp(x)` = u32 length, then the bytes): ASCII
//! `vram-group-v1`; `lp(worker_id)`, `lp(group_id)`, `lp(model_ref)` (UTF-8);
//! `sealed_at_unix_nanos` u64; `total_shards` u32 (the member count); then for each member in
//! `shard_index` order its `gpu_device` u32 and its seal signature (32 raw bytes). The group
//! signature is HMAC-SHA256(seal_key, claims), lowercase hex; the format tag keeps group claims
//! and seal claims apart under the one key. Full layout and worked vectors:
//! `.specs/groups-v1.md`.
//!
//! This module sits with the other seal formats (layer `seal`): it knows bytes and keys, not
//! devices. Sealing a group lives in `crate::group` and `VramResidency::seal_group`.

use hmac::Mac;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::VramError;
use crate::seal::claims::{self, ShardInfo};
use crate::seal::keys::{SealKey, WorkerToken};

/// The format tag, first in the claims and in the JSON.
pub const GROUP_FORMAT: &str = "vram-group-v1";

/// Most members a group may have. Tensor-parallel degrees are small (2 to 64 in practice); the
/// bound keeps a group record, its claims and the work of checking it bounded whatever a peer
/// sends.
pub const MAX_GROUP_MEMBERS: usize = 1024;

/// Everything public about a sealed tensor-parallel group, signed. Like [`ShardInfo`], safe to
/// log, store and send to peers: no pointer, no key. Its JSON layout is fixed by
/// `vram-group-v1`; `members` are the members' own seal records, in `shard_index` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInfo {
    /// Always `"vram-group-v1"`.
    pub format: String,
    /// The worker that sealed the group (and every member).
    pub worker_id: String,
    /// The group's id.
    pub group_id: String,
    /// The model the group holds (e.g. `hf:org/llama-70b@rev`).
    pub model_ref: String,
    /// When the group record was signed (after every member was sealed), nanoseconds since the
    /// Unix epoch.
    pub sealed_at_unix_nanos: u64,
    /// The members' seals, member `i` with `shard_index = i` and `total_shards` = the member
    /// count.
    pub members: Vec<ShardInfo>,
    /// HMAC-SHA256 over the group claims under the seal key, lowercase hex.
    pub signature: String,
}

impl GroupInfo {
    /// The canonical group claims bytes. Fails (`InvalidInput`) if the record cannot be
    /// encoded: a wrong format tag, no members or more than [`MAX_GROUP_MEMBERS`], a member
    /// signature that is not 64 lowercase hex characters, a string longer than `u32::MAX`.
    pub fn claims(&self) -> Result<Vec<u8>, VramError> {
        if self.format != GROUP_FORMAT {
            return Err(VramError::invalid(format!(
                "format must be {GROUP_FORMAT:?}, got {:?}",
                crate::text::sanitize(&self.format.chars().take(32).collect::<String>())
            )));
        }
        let total = self.total_shards()?;
        let mut out = Vec::with_capacity(
            64usize
                .saturating_add(self.worker_id.len())
                .saturating_add(self.group_id.len())
                .saturating_add(self.model_ref.len())
                .saturating_add(self.members.len().saturating_mul(36)),
        );
        out.extend_from_slice(GROUP_FORMAT.as_bytes());
        for (name, s) in [
            ("worker_id", &self.worker_id),
            ("group_id", &self.group_id),
            ("model_ref", &self.model_ref),
        ] {
            let len = u32::try_from(s.len())
                .map_err(|_| VramError::invalid(format!("{name} is too long to encode")))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.sealed_at_unix_nanos.to_be_bytes());
        out.extend_from_slice(&total.to_be_bytes());
        for (i, member) in self.members.iter().enumerate() {
            let signature = decode_signature(&member.signature).ok_or_else(|| {
                VramError::invalid(format!(
                    "member {i}: signature must be 64 lowercase hex characters"
                ))
            })?;
            out.extend_from_slice(&member.gpu_device.to_be_bytes());
            out.extend_from_slice(&signature);
        }
        Ok(out)
    }

    /// The member count as the claims encode it (`total_shards`): 1..=[`MAX_GROUP_MEMBERS`].
    pub fn total_shards(&self) -> Result<u32, VramError> {
        let n = self.members.len();
        if n == 0 {
            return Err(VramError::invalid("a group has at least one member"));
        }
        if n > MAX_GROUP_MEMBERS {
            return Err(VramError::invalid(format!(
                "a group has at most {MAX_GROUP_MEMBERS} members, this one has {n}"
            )));
        }
        u32::try_from(n).map_err(|_| VramError::invalid("too many members"))
    }

    /// The shape a `vram-group-v1` record must have, checked without the key: the format tag,
    /// 1..=[`MAX_GROUP_MEMBERS`] members, member `i` with `shard_index = i` and `total_shards`
    /// = the member count, every member sealed by the group's worker, no shard id twice, and
    /// every member's seal record encodable. A failure is `InvalidInput` naming the member and
    /// the rule.
    pub fn check_structure(&self) -> Result<(), VramError> {
        self.claims()?;
        let total = self.total_shards()?;
        let mut seen = std::collections::HashSet::new();
        for (i, member) in self.members.iter().enumerate() {
            let index = u32::try_from(i).map_err(|_| VramError::invalid("too many members"))?;
            let name = || {
                format!(
                    "member {i} ({})",
                    crate::text::sanitize(&member.shard_id.chars().take(64).collect::<String>())
                )
            };
            if member.shard_index != Some(index) {
                return Err(VramError::invalid(format!(
                    "{} has shard_index {}; member {i} of a group must have shard_index {i}",
                    name(),
                    shown(member.shard_index)
                )));
            }
            if member.total_shards != Some(total) {
                return Err(VramError::invalid(format!(
                    "{} has total_shards {}; the group has {total} member(s)",
                    name(),
                    shown(member.total_shards)
                )));
            }
            if member.worker_id != self.worker_id {
                return Err(VramError::invalid(format!(
                    "{} was sealed by another worker than the group",
                    name()
                )));
            }
            if !seen.insert(member.shard_id.as_str()) {
                return Err(VramError::invalid(format!(
                    "{}: the shard id appears twice in the group",
                    name()
                )));
            }
            member
                .claims()
                .map_err(|e| VramError::invalid(format!("{}: {}", name(), plain(e))))?;
        }
        Ok(())
    }

    /// The offline check a peer runs with the worker token alone: [`Self::check_structure`],
    /// then every member's seal signature, then the group signature (all MACs compared in
    /// constant time). A malformed record is `InvalidInput`; a signature that does not verify
    /// is `SealVerificationFailed` naming the member's shard id (or the group id, for the group
    /// signature). It says nothing about residency: ask the worker (`verify_group_info`) or
    /// challenge it (`attest_group`) for that.
    pub fn verify(&self, token: &WorkerToken) -> Result<(), VramError> {
        self.verify_with_key(&SealKey::derive(token))
    }

    /// [`Self::verify`] with an already derived seal key.
    pub fn verify_with_key(&self, key: &SealKey) -> Result<(), VramError> {
        self.check_structure()?;
        if let Some(bad) = self.members.iter().find(|m| !claims::verify(key, m)) {
            return Err(VramError::seal_signature_failed(bounded(&bad.shard_id)));
        }
        if !verify(key, self) {
            return Err(VramError::seal_signature_failed(bounded(&self.group_id)));
        }
        Ok(())
    }
}

/// Computes the group signature of `info`'s claims (ignoring `info.signature`).
pub fn sign(key: &SealKey, info: &GroupInfo) -> Result<String, VramError> {
    let claims = info.claims()?;
    let mut mac = key.mac();
    mac.update(&claims);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Whether `info.signature` is the valid group signature of its claims (the group signature
/// only: [`GroupInfo::verify`] also checks the shape and every member). Constant-time on the
/// MAC; a malformed record simply fails.
pub fn verify(key: &SealKey, info: &GroupInfo) -> bool {
    let Ok(claims) = info.claims() else {
        return false;
    };
    let Some(given) = decode_signature(&info.signature) else {
        return false;
    };
    let mut mac = key.mac();
    mac.update(&claims);
    let expected = mac.finalize().into_bytes();
    expected.as_slice().ct_eq(&given).into()
}

/// A signature's 32 bytes, if it is exactly 64 lowercase hex characters (one spelling per
/// value, as in `vram-seal-v1`).
fn decode_signature(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let lower = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (text.len() == 64 && lower && hex::decode_to_slice(text, &mut out).is_ok()).then_some(out)
}

fn shown(v: Option<u32>) -> String {
    v.map_or_else(|| "null".to_string(), |n| n.to_string())
}

/// An id from a peer's record, as an error may carry it: sanitised and bounded.
fn bounded(id: &str) -> String {
    crate::text::sanitize(
        &id.chars()
            .take(crate::validation::MAX_ID_LEN)
            .collect::<String>(),
    )
}

fn plain(e: VramError) -> String {
    match e {
        VramError::InvalidInput(m) => m,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::claims::SEAL_FORMAT;

    fn token() -> WorkerToken {
        WorkerToken::new(b"group-unit-test-token-0123".to_vec()).unwrap()
    }

    /// A signed group of `n` members (placeholder digests and roots, signed seals).
    fn group(n: u32) -> GroupInfo {
        let key = SealKey::derive(&token());
        let members = (0..n)
            .map(|i| {
                let mut m = ShardInfo {
                    shard_id: format!("g-{i}"),
                    gpu_device: i,
                    shard_index: Some(i),
                    total_shards: Some(n),
                    ..ShardInfo::unsigned_for_tests(100)
                };
                m.signature = claims::sign(&key, &m).unwrap();
                m
            })
            .collect();
        let mut g = GroupInfo {
            format: GROUP_FORMAT.into(),
            worker_id: "w".into(),
            group_id: "g".into(),
            model_ref: "m".into(),
            sealed_at_unix_nanos: 7,
            members,
            signature: String::new(),
        };
        g.signature = sign(&key, &g).unwrap();
        g
    }

    #[test]
    fn a_signed_group_verifies_and_its_claims_have_the_documented_length() {
        let g = group(3);
        g.verify(&token()).unwrap();
        // tag 13 + 3 × (4 + 1) + sealed_at 8 + total 4 + 3 × (4 + 32)
        assert_eq!(g.claims().unwrap().len(), 13 + 15 + 8 + 4 + 3 * 36);
    }

    #[test]
    fn the_shape_is_checked_before_any_mac() {
        let mut g = group(2);
        g.members.swap(0, 1);
        let e = g.verify(&token()).unwrap_err().to_string();
        assert!(
            e.contains("member 0 (g-1)") && e.contains("shard_index 1"),
            "{e}"
        );
        let mut g = group(2);
        g.members.pop();
        let e = g.verify(&token()).unwrap_err().to_string();
        assert!(e.contains("total_shards 2"), "{e}");
        let mut g = group(2);
        g.members.clear();
        assert!(matches!(
            g.verify(&token()),
            Err(VramError::InvalidInput(_))
        ));
        let mut g = group(2);
        g.members[1].worker_id = "other".into();
        assert!(matches!(
            g.verify(&token()),
            Err(VramError::InvalidInput(_))
        ));
        let mut g = group(2);
        g.format = SEAL_FORMAT.into();
        assert!(g.claims().is_err());
    }

    #[test]
    fn a_bad_member_or_group_signature_names_who() {
        let mut g = group(2);
        g.members[1].vram_bytes += 1;
        match g.verify(&token()) {
            Err(VramError::SealVerificationFailed { shard_id, .. }) => assert_eq!(shard_id, "g-1"),
            other => panic!("{other:?}"),
        }
        let mut g = group(2);
        g.model_ref = "m2".into();
        match g.verify(&token()) {
            Err(VramError::SealVerificationFailed { shard_id, .. }) => assert_eq!(shard_id, "g"),
            other => panic!("{other:?}"),
        }
        let mut g = group(2);
        g.signature = g.signature.to_uppercase();
        assert!(!verify(&SealKey::derive(&token()), &g));
    }
}
