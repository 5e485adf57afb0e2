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
}
