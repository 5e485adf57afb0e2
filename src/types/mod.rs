//! Plain values shared across the crate's layers: how to verify and what a verification
//! reports, chunk spans, capacity figures, faults, device identity and status, and where a
//! seal's bytes come from.
//!
//! Nothing here talks to an actor or a device; these are the words the other layers use, so
//! they sit at the bottom (with [`crate::error`]) and every layer above may use them. The
//! public paths (`vram_residency::shard::VerifyMode`, `vram_residency::gpu::BackendKind`, …) are
//! re-exports of these.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

mod fault;
mod verify_mode;

pub use fault::Fault;
pub(crate) use verify_mode::ReadPlan;
pub use verify_mode::{InvalidVerifyMode, VerifyMode};

/// Called with `(bytes_done, bytes_total)` while a shard is being sealed.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Where a shard's bytes come from.
pub(crate) enum SealSource {
    Bytes(Vec<u8>),
    File(PathBuf),
    /// Any byte stream of a declared length (network, decompressor, pipe).
    Reader(Box<dyn std::io::Read + Send>, u64),
}

/// The newest record durably in an audit log: its sequence number and MAC. Kept somewhere the
/// worker cannot rewrite (a monitoring system, a challenger's copy of an attestation), it is what
/// makes a cut tail evident: `audit::verify_log_to_head` fails a log that stops short of it or
/// carries another MAC at that seq.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct AuditHead {
    /// Sequence number of the record (0 for an empty log).
    pub seq: u64,
    /// That record's MAC, 64 lowercase hex characters (all zeros for an empty log).
    pub mac: String,
}

impl AuditHead {
    /// The head of a chain whose last record has `seq` and `mac`.
    pub fn new(seq: u64, mac: &[u8; 32]) -> Self {
        Self {
            seq,
            mac: hex::encode(mac),
        }
    }

    /// The head written as `SEQ:MAC` (what `audit verify --head` takes).
    pub fn to_arg(&self) -> String {
        format!("{}:{}", self.seq, self.mac)
    }

    /// Parses `SEQ:MAC` (decimal seq, 64 lowercase hex); `None` when malformed.
    pub fn parse_arg(text: &str) -> Option<Self> {
        let (seq, mac) = text.split_once(':')?;
        let seq: u64 = seq.parse().ok()?;
        let ok = mac.len() == 64
            && mac
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self {
            seq,
            mac: mac.to_owned(),
        })
    }
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.mac)
    }
}

/// Which kind of backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// Device memory simulated in host memory.
    Simulated,
    /// A CUDA device.
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Simulated => "simulated",
            Self::Cuda => "cuda",
        })
    }
}

/// What a device is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceIdentity {
    /// Device index in this system.
    pub index: u32,
    /// Human-readable name.
    pub name: String,
    /// The device's UUID as the driver reports it (`GPU-xxxxxxxx-xxxx-…`, the form
    /// `nvidia-smi -L` prints) on CUDA; `None` on a simulated device.
    pub uuid: Option<String>,
    /// Backend kind.
    pub backend: BackendKind,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// Whether the device shares memory with the host (integrated GPU). The VRAM-only policy
    /// refuses such devices.
    pub integrated: bool,
}

/// What `devices` reports about one device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    /// Identity and memory size.
    pub identity: DeviceIdentity,
    /// Why the device is stopped, if it is.
    pub stopped: Option<String>,
    /// Whether the device is lost.
    pub lost: bool,
    /// Resident shards.
    pub shards: usize,
    /// Bytes held by resident shards.
    pub used_bytes: u64,
    /// VRAM-only policy status.
    pub policy: String,
    /// The driver's CUDA version (`13.0`); `None` on a simulated device.
    pub driver_version: Option<String>,
    /// Whether leaves are hashed on the device: `on (embedded PTX)` or `off (<why>)` on CUDA;
    /// `None` on a simulated device.
    pub leaf_kernel: Option<String>,
}

/// Why a device refuses work ([`crate::VramError::DeviceStopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopCause {
    /// A verification failed on the device (fail-closed): it refuses seals and executions
    /// until an operator calls `reset_device`.
    IntegrityFailure,
    /// The device's actor crashed and is being replaced; calls succeed again once it is back.
    Restarting,
    /// The device's actor crashed and could not be replaced (restart budget spent, or the
    /// restart failed): the device stays out of service until the worker restarts.
    Crashed,
    /// The system is shutting down.
    ShuttingDown,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IntegrityFailure => {
                "fail-closed after an integrity failure; call reset_device after investigating"
            }
            Self::Restarting => "its actor crashed and is being restarted; retry shortly",
            Self::Crashed => "its actor crashed and could not be restarted; restart the worker",
            Self::ShuttingDown => "the system is shutting down",
        })
    }
}

/// How busy one device's admission is ([`crate::VramResidency::device_load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceLoad {
    /// Requests sent to the device and not yet answered.
    pub in_flight: usize,
    /// Callers waiting for room.
    pub waiting: usize,
    /// Most requests in flight at once (`Config::device_queue_limit`).
    pub limit: usize,
}

/// A chunk of a shard: its Merkle leaf index and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChunkSpan {
    /// Leaf index.
    pub index: u64,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// The shard verified.
    pub shard_id: String,
    /// Its device.
    pub gpu_device: u32,
    /// The mode used.
    pub mode: VerifyMode,
    /// Chunks whose bytes were read back and hashed (0 for signature-only).
    pub chunks_checked: u64,
    /// Chunks in the shard.
    pub total_chunks: u64,
    /// Bytes read back from device memory.
    pub bytes_checked: u64,
    /// The probability that this check would have caught a corruption confined to one chunk:
    /// `chunks_checked / total_chunks` (1.0 for a full verify, 0.0 for signature-only). For a
    /// corruption touching `b` chunks, a sampled check of `k` of `n` chunks misses it with
    /// probability C(n-b, k) / C(n, k); see [`VerifyReport::detection_probability`].
    pub single_chunk_detection: f64,
    /// How long the check took.
    #[serde(with = "duration_micros")]
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Probability that a check like this one (same `chunks_checked` of `total_chunks`, drawn
    /// uniformly without replacement) detects a corruption that touches `bad_chunks` chunks.
    pub fn detection_probability(&self, bad_chunks: u64) -> f64 {
        detection_probability(self.total_chunks, self.chunks_checked, bad_chunks)
    }
}

/// P(at least one of `k` distinct chunks drawn from `n` is among `b` bad ones)
/// = 1 − C(n−b, k) / C(n, k) = 1 − Π_{i=0}^{k−1} (n−b−i)/(n−i).
pub fn detection_probability(n: u64, k: u64, b: u64) -> f64 {
    if b == 0 || n == 0 {
        return 0.0;
    }
    if k.saturating_add(b) > n {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in 0..k {
        miss *= (n.saturating_sub(b).saturating_sub(i)) as f64 / (n.saturating_sub(i)) as f64;
    }
    1.0 - miss
}

mod duration_micros {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// Memory figures of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VramCapacity {
    /// The device.
    pub gpu_device: u32,
    /// Device memory in bytes.
    pub total_bytes: u64,
    /// Bytes held by sealed shards.
    pub used_bytes: u64,
    /// Bytes a new seal may use: total − used − headroom.
    pub available_bytes: u64,
    /// Bytes kept free on purpose (`Config::headroom_bytes`).
    pub headroom_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_probability_math() {
        assert_eq!(detection_probability(100, 0, 1), 0.0);
        assert!((detection_probability(100, 10, 1) - 0.10).abs() < 1e-12);
        assert_eq!(detection_probability(100, 100, 1), 1.0);
        // 16 of 1024 chunks vs 64 bad chunks: 1 - C(960,16)/C(1024,16) = 0.646725982726774…
        let p = detection_probability(1024, 16, 64);
        assert!((p - 0.646_725_982_726_774_5).abs() < 1e-12, "{p}");
    }
}
