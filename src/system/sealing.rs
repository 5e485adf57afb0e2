//! Sealing one shard: validating the request, inspecting its source off the runtime, and asking
//! its device to copy, hash and seal it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::admission::Abandoned;
use crate::error::VramError;
use crate::messages::gpu::{Cancel, GpuMsg, SealJob, SealMeta, ShardRef, SignedSource};
use crate::seal::claims::ShardInfo;
use crate::seal::tensors::TensorLayout;
use crate::shard::{SealRequest, SealSource, SealedShard, ShardHandle};
use crate::telemetry::{self};
use crate::validation;

use super::*;

impl VramResidency {
    /// Copies a shard into device memory, hashes it (SHA-256 and Merkle leaves), and seals it.
    ///
    /// Dropping the returned future (a `tokio::time::timeout`, a client gone) cancels the
    /// seal: the device stops it at the next staging piece and frees what it allocated,
    /// audited as `SealRejected` with reason `cancelled by caller` and counted in
    /// `vram_seals_total{result="cancelled"}`.
    #[tracing::instrument(name = "vram.seal", level = "info", skip_all, fields(shard_id = %crate::actors::spans::Shown(&request.shard_id), device = request.device))]
    pub async fn seal(&self, request: SealRequest) -> Result<SealedShard, VramError> {
        let started = std::time::Instant::now();
        let mut count = SealCount::default();
        let sealed = self.seal_uncounted(request, &count.handed_over).await;
        count.done = true;
        telemetry::record_seal(&sealed);
        if let Ok(shard) = &sealed {
            tracing::debug!(bytes = shard.info().vram_bytes, elapsed = ?started.elapsed(), "sealed");
        }
        sealed
    }

    /// `seal` without the `vram_seals_total` count (which `seal` adds for every outcome, or,
    /// for a seal whose caller left after it reached its device, the seal's undo). Sets
    /// `handed_over` once the device has the job.
    async fn seal_uncounted(
        &self,
        request: SealRequest,
        handed_over: &Arc<AtomicBool>,
    ) -> Result<SealedShard, VramError> {
        self.live()?;
        let SealRequest {
            shard_id,
            model_ref,
            device,
            source,
            expected_sha256,
            tensor_parallel,
            progress,
            provenance,
        } = request;
        validation::validate_identifier("shard_id", &shard_id)?;
        validation::validate_model_ref(&model_ref)?;
        validation::validate_device(device, self.inner.device_count)?;
        let expected_sha256 = expected_sha256
            .map(|h| validation::validate_hex_digest("expected_sha256", &h))
            .transpose()?;
        if let Some((i, t)) = tensor_parallel {
            validation::validate_tensor_parallel(i, t)?;
        }
        let provenance = provenance
            .map(|(signature, resource)| {
                signature
                    .provenance_of(&resource)
                    .map(|(provenance, file)| SignedSource {
                        provenance,
                        sha256: file.sha256.clone(),
                    })
            })
            .transpose()?;
        // The file's metadata and its safetensors header are file I/O (and a large header is
        // CPU work to parse): both run off the runtime's worker threads.
        let (source, len, layout) =
            crate::actors::spans::spawn_blocking(move || inspect_source(source))
                .await
                .map_err(|_| VramError::Internal("inspecting the seal source failed".into()))??;
        validation::validate_model_size(len, self.inner.max_model_size)?;
        if self.inner.fail_closed_audit && self.audit_stats().await?.sink_down {
            return Err(VramError::AuditUnavailable(
                "the audit sink is failing and fail_closed_audit is set; refusing to seal".into(),
            ));
        }
        let handle_id = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
        // The device keeps the map that names bad chunks; the handle keeps the tensor list.
        // Both come from the header inspected here; the device checks that the bytes it seals
        // start with that header (a file replaced in between fails the seal).
        let (tensors, lead_padding, tensor_list, header) = match layout {
            Some(layout) => {
                let lead = layout.lead_padding();
                let header = Some(layout.header);
                (
                    Some(Arc::new(layout.map)),
                    lead,
                    Some(layout.tensors),
                    header,
                )
            }
            None => (None, 0, None, None),
        };
        let job = SealJob {
            meta: SealMeta {
                shard_id,
                model_ref,
                expected_sha256,
                tensor_parallel,
                handle_id,
                tensors,
                lead_padding,
                provenance: provenance.clone(),
                header,
            },
            source,
            progress,
            len,
            cancel: Cancel::new(),
        };
        // A seal whose caller left is counted when its work ends (usually `cancelled`); one
        // that finished anyway is released: no handle will ever be.
        let system = self.clone();
        let undo = move |late: Result<Result<ShardInfo, VramError>, VramError>,
                         abandoned: Abandoned| {
            let late = late.and_then(|answer| answer);
            if abandoned == Abandoned::CallerLeft {
                telemetry::record_seal(&late);
            }
            if let (Ok(info), Ok(gpu)) = (late, system.gpu(device)) {
                tracing::warn!(gpu_device = device, shard_id = %info.shard_id,
                    "seal finished after its caller left; releasing it");
                let shard = ShardRef {
                    shard_id: info.shard_id,
                    handle_id,
                };
                let _ = gpu.cast(GpuMsg::Release { shard, reply: None });
            }
        };
        let info = self
            .ask_gpu_cancellable(
                device,
                |reply, cancel| {
                    handed_over.store(true, Ordering::Release);
                    GpuMsg::Seal {
                        job: Box::new(SealJob { cancel, ..job }),
                        reply,
                    }
                },
                undo,
            )
            .await??;
        Ok(SealedShard {
            inner: Arc::new(ShardHandle {
                info,
                handle_id,
                directory: self.inner.directory.clone(),
                released: AtomicBool::new(false),
                provenance: provenance.map(|p| p.provenance),
                tensors: tensor_list,
            }),
        })
    }
}

/// Counts a `seal` call whose caller left before the device got the job (dropped while its
/// source was inspected or it waited for a slot) as `cancelled`: nothing was allocated, so the
/// device has nothing to say about it. Once the device has it, the seal's undo counts it.
#[derive(Default)]
struct SealCount {
    handed_over: Arc<AtomicBool>,
    done: bool,
}

impl Drop for SealCount {
    fn drop(&mut self) {
        if !self.done && !self.handed_over.load(Ordering::Acquire) {
            telemetry::record_seal::<()>(&Err(VramError::Cancelled));
        }
    }
}

/// The source's length and, for a safetensors file or buffer, its parsed header (the stream of
/// a `from_reader` request is never inspected: it has no header to peek at without consuming
/// it).
fn inspect_source(
    source: SealSource,
) -> Result<(SealSource, u64, Option<TensorLayout>), VramError> {
    let (len, layout) = match &source {
        SealSource::Bytes(b) => {
            let len = b.len() as u64;
            (len, TensorLayout::parse(b, len))
        }
        SealSource::Reader(_, n) => (*n, None),
        SealSource::File(p) => (
            validation::regular_file(p, "model file")?.len(),
            TensorLayout::from_file(p),
        ),
    };
    Ok((source, len, layout))
}
