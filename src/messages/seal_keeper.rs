//! Messages for the `SealKeeper`, the only holder of the seal key.

use ractor::RpcReplyPort;

use crate::error::VramError;
use crate::seal::claims::ShardInfo;
use crate::seal::group_record::GroupInfo;

/// Messages handled by `SealKeeper`.
pub enum SealKeeperMsg {
    /// Sign an unsigned `ShardInfo`; replies with the signature hex.
    Sign {
        info: Box<ShardInfo>,
        reply: RpcReplyPort<Result<String, VramError>>,
    },
    /// Check a `ShardInfo`'s signature (constant time).
    Verify {
        info: Box<ShardInfo>,
        reply: RpcReplyPort<bool>,
    },
    /// Sign an unsigned `GroupInfo` (`vram-group-v1` claims, seal key); replies with the
    /// signature hex.
    SignGroup {
        info: Box<GroupInfo>,
        reply: RpcReplyPort<Result<String, VramError>>,
    },
    /// Check a `GroupInfo`'s group signature (constant time).
    VerifyGroup {
        info: Box<GroupInfo>,
        reply: RpcReplyPort<bool>,
    },
    /// Sign an attestation statement; replies with the signature hex.
    Attest {
        statement: Vec<u8>,
        reply: RpcReplyPort<String>,
    },
    /// Sign `PAE(payload_type, payload)` with the identity key (DSSE v1, ECDSA P-256 with
    /// SHA-256, RFC 6979); replies with the DER signature. The payload type is one of the
    /// crate's own constants, so the key signs only the kinds of document the crate defines.
    SignDsse {
        payload_type: &'static str,
        payload: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
}
