//! The types a caller holds: requests to seal and handles to sealed shards.
//!
//! A [`SealedShard`] is the caller's proof of a seal and its way back to the device: dropping
//! the last clone releases the shard through the device's actor. This module sits above the
//! actors (its handle talks to them); the plain values it re-exports — verification modes and
//! reports, capacity figures, faults, the device view — live in lower layers.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::gpu::DeviceView;
use crate::messages::directory::DeviceDirectory;
use crate::messages::gpu::{GpuMsg, ShardRef};
use crate::provenance::{ModelSignature, Provenance};
use crate::seal::claims::ShardInfo;
use crate::seal::tensors::{TensorInfo, TensorList};
pub(crate) use crate::types::SealSource;
pub use crate::types::{
    ChunkSpan, Fault, ProgressFn, VerifyMode, VerifyReport, VramCapacity, detection_probability,
};

/// A request to copy a model shard into device memory and seal it.
pub struct SealRequest {
    pub(crate) shard_id: String,
    pub(crate) model_ref: String,
    pub(crate) device: u32,
    pub(crate) source: SealSource,
    pub(crate) expected_sha256: Option<String>,
    pub(crate) tensor_parallel: Option<(u32, u32)>,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) provenance: Option<(Arc<ModelSignature>, String)>,
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
            provenance: None,
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

    /// The bytes are file `resource` of the signed model `signature` (verified with its
    /// publisher's key by [`ModelSignature::from_bundle`]). The seal then fails with
    /// `ProvenanceMismatch` (audited critical, nothing left allocated) unless the bytes'
    /// SHA-256 is the one the manifest lists for `resource`; a resource the manifest does not
    /// list is `InvalidInput` before anything is allocated. On success the `VramSealed` audit
    /// record and [`SealedShard::provenance`] name the resource, the model's subject digest
    /// and the publisher key id.
    pub fn provenance(
        mut self,
        signature: Arc<ModelSignature>,
        resource: impl Into<String>,
    ) -> Self {
        self.provenance = Some((signature, resource.into()));
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
            .field(
                "provenance",
                &self.provenance.as_ref().map(|(sig, resource)| {
                    (
                        resource.as_str(),
                        sig.subject_sha256(),
                        sig.publisher_keyid(),
                    )
                }),
            )
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
    pub(crate) provenance: Option<Provenance>,
    /// The tensor list of a shard sealed from safetensors bytes.
    pub(crate) tensors: Option<TensorList>,
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
        if let Ok(actor) = self.directory.gpu(self.info.gpu_device) {
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

    /// Which file of which signed model the shard was sealed from, when the seal checked it
    /// (`SealRequest::provenance`).
    pub fn provenance(&self) -> Option<&Provenance> {
        self.inner.provenance.as_ref()
    }

    /// The tensors of a shard sealed from a safetensors file (or buffer), as its header lists
    /// them: every tensor, zero-size ones included, in file order (by data offset), with byte
    /// ranges counted from the shard's first byte. `None` for any other source (bytes that do
    /// not parse as safetensors, and `SealRequest::from_reader` streams, whose header is not
    /// inspected). Read at seal time from the header, before the source is read again to be
    /// hashed; the seal then checks that the bytes it sealed start with exactly that header
    /// (a file replaced in between fails the seal with `VramError::Io`, kind `InvalidData`),
    /// so the list describes the sealed bytes and is as trustworthy as they are, which
    /// verification covers.
    pub fn tensors(&self) -> Option<&[TensorInfo]> {
        self.inner.tensors.as_ref().map(TensorList::as_slice)
    }

    /// The tensor called `name`, exactly as the header spells it. O(log n).
    pub(crate) fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.inner.tensors.as_ref()?.get(name)
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
