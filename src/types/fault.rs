//! Faults a test or an operator's drill injects into a device, to watch the crate notice them.
//!
//! One type from the caller to the backend: the device actor resolves the shard a fault names
//! once (its id, the offset against the shard's length, and the allocation behind it), then
//! hands the fault and that allocation to its backend. Which backend accepts what:
//!
//! | fault | simulated | CUDA (`Config::cuda_fault_injection(true)`) |
//! |---|---|---|
//! | `FlipBits` | yes | yes (XOR on the device) |
//! | `FailNextAlloc` | yes | yes |
//! | `LoseDevice` | yes | `Unsupported` |
//! | `SlowDevice` | yes | `Unsupported` |
//! | `CrashActor` | yes | `Unsupported` |
//!
//! The CUDA fake driver's own faults (out of memory, host memory, a lost device through an ECC
//! error, …) are set in its environment instead; see `.specs/00_decisions.md`.

/// A fault to inject with [`crate::VramResidency::inject_fault`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// XOR `mask` into byte `offset` of the named shard's device memory.
    FlipBits {
        /// The shard.
        shard_id: String,
        /// Byte offset within the shard (the file's first byte is offset 0).
        offset: u64,
        /// Bits to flip.
        mask: u8,
    },
    /// Make the next allocation on the device fail.
    FailNextAlloc,
    /// Lose the device: every later operation on it fails with `DeviceLost`.
    LoseDevice,
    /// Add a delay to every device read, to exercise slow verification. A verification reads
    /// a piece of leaves per read (a staging buffer's worth, or more: see
    /// `DeviceReader::preferred_batch_leaves`), so a pass over a shard of `p` pieces is delayed
    /// `p` times, and a small shard once.
    SlowDevice {
        /// Milliseconds added to each read.
        millis_per_read: u64,
    },
    /// Make the device's actor panic, to exercise supervision. Its shards are lost, its memory
    /// freed, and a fresh actor takes over the device.
    CrashActor,
}

impl Fault {
    /// The shard the fault targets, and the byte offset within it, for a fault that names one.
    pub fn target(&self) -> Option<(&str, u64)> {
        match self {
            Self::FlipBits {
                shard_id, offset, ..
            } => Some((shard_id, *offset)),
            Self::FailNextAlloc | Self::LoseDevice | Self::SlowDevice { .. } | Self::CrashActor => {
                None
            }
        }
    }
}
