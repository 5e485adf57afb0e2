//! The types a caller holds: requests to seal, handles to sealed shards, verification modes and
//! reports, capacity figures, faults, and the device view an `execute` closure receives.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::actors::directory::DeviceDirectory;
use crate::gpu::{DevicePtr, DeviceReader};
use crate::messages::gpu::{GpuMsg, ShardRef};
use crate::seal::claims::ShardInfo;

/// Called with `(bytes_done, bytes_total)` while a shard is being sealed.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Where a shard's bytes come from.
pub(crate) enum SealSource {
    Bytes(Vec<u8>),
    File(PathBuf),
    /// Any byte stream of a declared length (network, decompressor, pipe).
    Reader(Box<dyn std::io::Read + Send>, u64),
}

/// A request to copy a model shard into device memory and seal it.
pub struct SealRequest {
    pub(crate) shard_id: String,
    pub(crate) model_ref: String,
    pub(crate) device: u32,
    pub(crate) source: SealSource,
    pub(crate) expected_sha256: Option<String>,
    pub(crate) tensor_parallel: Option<(u32, u32)>,
    pub(crate) progress: Option<ProgressFn>,
}

impl SealRequest {
    /// Seal `bytes` as `shard_id` on device `gpu_device`.
    pub fn new(
        shard_id: impl Into<String>,
        model_ref: impl Into<String>,
        gpu_device: u32,
        bytes: Vec<u8>,
    ) -> Self {
        Self::with_source(shard_id, model_ref, gpu_device, SealSource::Bytes(bytes))
    }

    /// Seal the contents of the file at `path`, streamed through bounded staging buffers so
    /// host memory stays small whatever the model size.
    pub fn from_file(
        shard_id: impl Into<String>,
        model_ref: impl Into<String>,
        gpu_device: u32,
        path: impl Into<PathBuf>,
    ) -> Self {
        Self::with_source(
            shard_id,
            model_ref,
            gpu_device,
            SealSource::File(path.into()),
        )
    }

    /// Seal `len` bytes read from `reader` (a socket, a decompressor, a pipe), streamed through
    /// bounded staging buffers. The seal fails if the stream ends early or runs long.
    pub fn from_reader(
        shard_id: impl Into<String>,
        model_ref: impl Into<String>,
        gpu_device: u32,
        reader: impl std::io::Read + Send + 'static,
        len: u64,
    ) -> Self {
        Self::with_source(
            shard_id,
            model_ref,
            gpu_device,
            SealSource::Reader(Box::new(reader), len),
        )
    }

    fn with_source(
        shard_id: impl Into<String>,
        model_ref: impl Into<String>,
        device: u32,
        source: SealSource,
    ) -> Self {
        Self {
            shard_id: shard_id.into(),
            model_ref: model_ref.into(),
            device,
            source,
            expected_sha256: None,
            tensor_parallel: None,
            progress: None,
        }
    }

    /// Refuse the seal (`DigestMismatch`) unless the bytes' SHA-256 equals `hex`.
    pub fn expected_sha256(mut self, hex: impl Into<String>) -> Self {
        self.expected_sha256 = Some(hex.into());
        self
    }

    /// Mark the shard as part `index` of a tensor-parallel group of `total`.
    pub fn tensor_parallel(mut self, index: u32, total: u32) -> Self {
        self.tensor_parallel = Some((index, total));
        self
    }

    /// Report progress while sealing.
    pub fn on_progress(mut self, f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

impl fmt::Debug for SealRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            SealSource::Bytes(b) => format!("{} bytes in memory", b.len()),
            SealSource::File(p) => format!("file {}", crate::validation::shown_path(p)),
            SealSource::Reader(_, len) => format!("stream of {len} bytes"),
        };
        f.debug_struct("SealRequest")
            .field("shard_id", &self.shard_id)
            .field("model_ref", &self.model_ref)
            .field("device", &self.device)
            .field("source", &source)
            .field("expected_sha256", &self.expected_sha256)
            .field("tensor_parallel", &self.tensor_parallel)
            .finish()
    }
}

/// A resident, sealed shard. Cheap to clone; when the last clone is dropped the device memory is
/// released (asynchronously, without blocking or panicking in `drop`).
#[derive(Clone)]
pub struct SealedShard {
    pub(crate) inner: Arc<ShardHandle>,
}

pub(crate) struct ShardHandle {
    pub(crate) info: ShardInfo,
    pub(crate) handle_id: u64,
    pub(crate) directory: DeviceDirectory,
    pub(crate) released: AtomicBool,
}

impl ShardHandle {
    pub(crate) fn shard_ref(&self) -> ShardRef {
        ShardRef {
            shard_id: self.info.shard_id.clone(),
            handle_id: self.handle_id,
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        // A cast never blocks; if the device actor is gone (shutdown, crash) its memory was
        // already freed with it, so there is nothing left to do.
        if let Some(actor) = self.directory.gpu(self.info.gpu_device) {
            let _ = actor.cast(GpuMsg::Release {
                shard: self.shard_ref(),
                reply: None,
            });
        }
    }
}

impl SealedShard {
    /// The shard's public, signed description.
    pub fn info(&self) -> &ShardInfo {
        &self.inner.info
    }

    /// The shard id.
    pub fn shard_id(&self) -> &str {
        &self.inner.info.shard_id
    }

    /// The device holding the shard.
    pub fn device(&self) -> u32 {
        self.inner.info.gpu_device
    }
}

impl fmt::Debug for SealedShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedShard")
            .field("shard_id", &self.inner.info.shard_id)
            .field("gpu_device", &self.inner.info.gpu_device)
            .field("vram_bytes", &self.inner.info.vram_bytes)
            .field("digest", &self.inner.info.digest)
            .finish_non_exhaustive()
    }
}

/// How thoroughly to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum VerifyMode {
    /// Re-read every byte from device memory and check every leaf against the signed root.
    Full,
    /// Check `chunks` leaves drawn at random (CSPRNG, fresh each call) against the signed root.
    Sampled {
        /// How many distinct chunks to check (capped at the shard's chunk count).
        chunks: u32,
    },
    /// Check the seal's signature and that the shard is still resident, without reading VRAM.
    SignatureOnly,
}

impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("full"),
            Self::Sampled { chunks } => write!(f, "sampled({chunks})"),
            Self::SignatureOnly => f.write_str("signature-only"),
        }
    }
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

/// A fault to inject (simulated backend only; CUDA devices answer `Unsupported`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// XOR `mask` into byte `offset` of the named shard's device memory.
    FlipBits {
        /// The shard.
        shard_id: String,
        /// Byte offset within the shard.
        offset: u64,
        /// Bits to flip.
        mask: u8,
    },
    /// Make the next allocation on the device fail.
    FailNextAlloc,
    /// Lose the device: every later operation on it fails with `DeviceLost`.
    LoseDevice,
    /// Add a delay to every device read, to exercise slow verification.
    SlowDevice {
        /// Milliseconds added to each read.
        millis_per_read: u64,
    },
    /// Make the device's actor panic, to exercise supervision. Its shards are lost, its memory
    /// freed, and a fresh actor takes over the device.
    CrashActor,
}

/// What an `execute` closure sees: the shard's device memory, verified just before the call.
pub struct DeviceView {
    pub(crate) gpu_device: u32,
    pub(crate) shard_id: String,
    pub(crate) len: u64,
    pub(crate) ptr: DevicePtr,
    pub(crate) reader: Arc<dyn DeviceReader>,
}

impl DeviceView {
    /// Size of the shard in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the shard is empty (never, for a sealed shard).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device index.
    pub fn gpu_device(&self) -> u32 {
        self.gpu_device
    }

    /// The shard id.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The weights' device address, for kernel launches. Never log it. It is valid only while
    /// the closure runs: after it returns the shard may be released or quarantined, so do not
    /// keep it.
    pub fn device_ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Copies `buf.len()` bytes at `offset` from device memory into `buf`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::VramError> {
        self.reader
            .read(offset, buf)
            .map_err(|e| crate::VramError::InvalidInput(format!("device read: {e}")))
    }
}

impl fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceView")
            .field("gpu_device", &self.gpu_device)
            .field("shard_id", &self.shard_id)
            .field("len", &self.len)
            .field("ptr", &self.ptr)
            .finish()
    }
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
