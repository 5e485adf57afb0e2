//! `VramResidency`: the public, cheaply cloneable handle to a running system.
//!
//! Every method validates its input here, before any message is sent (so a rejected request
//! changes nothing), then talks to the right actor. The handle holds no lock and no state that
//! an actor also holds: device actors are found through the [`DeviceDirectory`], which the
//! supervisor updates when it restarts one. Tensor-parallel groups (`seal_group` and friends)
//! are in [`group`].

mod group;
mod signed;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorRef};

use crate::actors::ask;
use crate::actors::directory::{self, DeviceDirectory};
use crate::actors::emit_audit;
use crate::actors::gpu_actor::now_unix_nanos;
use crate::actors::supervisor::{
    BackendFactory, DeviceSettings, RestartBudget, Supervisor, SupervisorArgs,
};
use crate::attestation::{Attestation, check_nonce};
use crate::audit::events::{AuditEvent, Severity};
use crate::config::{BackendChoice, Config};
use crate::error::VramError;
use crate::gpu::DeviceBackend;
use crate::gpu::sim::SimDevice;
use crate::messages::audit::{AuditMsg, AuditStats};
use crate::messages::gpu::{AttestDraft, GpuMsg, ResidencyQuery, SealJob, SealMeta, SignedSource};
use crate::messages::seal_keeper::SealKeeperMsg;
use crate::messages::supervisor::SupervisorMsg;
use crate::seal::claims::ShardInfo;
use crate::seal::tensors::TensorMap;
use crate::shard::{
    Fault, SealRequest, SealSource, SealedShard, ShardHandle, VerifyMode, VerifyReport,
    VramCapacity,
};
use crate::telemetry::{self, Outcome, Trigger};
use crate::types::{DeviceLoad, DeviceStatus, StopCause};
use crate::validation;

/// A running vram-residency system. Clone it freely; all clones talk to the same actors.
#[derive(Clone)]
pub struct VramResidency {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: ActorRef<SupervisorMsg>,
    seal_keeper: ActorRef<SealKeeperMsg>,
    audit: ActorRef<AuditMsg>,
    directory: DeviceDirectory,
    device_count: u32,
    worker_id: String,
    max_model_size: u64,
    execute_verify: VerifyMode,
    call_timeout: Duration,
    fail_closed_audit: bool,
    next_handle: AtomicU64,
    /// Per device: admission to its mailbox (see [`Admission`]).
    admission: Vec<Admission>,
    shut_down: AtomicBool,
    backend_description: String,
    backend_kind: crate::gpu::BackendKind,
    /// The identity key's public half (the private key lives in the seal keeper).
    identity_public: crate::seal::identity::IdentityPublicKey,
}

impl std::fmt::Debug for VramResidency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramResidency")
            .field("worker_id", &self.inner.worker_id)
            .field("devices", &self.inner.device_count)
            .field("backend", &self.inner.backend_description)
            .finish_non_exhaustive()
    }
}

/// The CUDA backend factory: probes the driver (a clear `Cuda` error when there is no library or
/// no device) and checks the integrated-GPU policy before any actor starts; each device actor
/// then opens its own device with it.
fn cuda_backend(config: &Config) -> Result<(u32, BackendFactory), VramError> {
    let found = crate::gpu::cuda::probe()
        .map_err(|why| VramError::Cuda(format!("CUDA was requested but cannot be used: {why}")))?;
    if !config.allow_integrated_gpu {
        for index in 0..found.device_count {
            if crate::gpu::cuda::probe::is_integrated(index)? {
                return Err(VramError::PolicyViolation(format!(
                    "VP-001: CUDA device {index} is an integrated GPU (its memory is host memory); \
                     refused unless Config::allow_integrated_gpu(true)"
                )));
            }
        }
    }
    let options = crate::gpu::cuda::CudaOptions {
        allow_integrated: config.allow_integrated_gpu,
        fault_injection: config.cuda_fault_injection,
        staging_bytes: config.staging_bytes,
    };
    Ok((
        found.device_count,
        Arc::new(move |i| {
            crate::gpu::cuda::CudaDevice::open(i, options.clone())
                .map(|d| Box::new(d) as Box<dyn DeviceBackend>)
                .map_err(|e| format!("CUDA device {i}: {e}"))
        }),
    ))
}

impl VramResidency {
    /// Starts the actors: audit log (opened, or verified and continued), seal keeper, and one
    /// device actor per device. Fails with `InvalidInput` for a bad configuration, and
    /// `AuditUnavailable` if the audit log cannot be opened (or does not verify).
    pub async fn start(mut config: Config) -> Result<Self, VramError> {
        let token = config.take_token()?;
        let identity = config.take_identity(&token)?;
        let identity_public = identity.public()?;
        let backend_description = config.backend_description();
        let (device_count, factory): (u32, BackendFactory) = match config.backend.clone() {
            BackendChoice::Simulated { count, capacity } => (
                count,
                Arc::new(move |i| {
                    Ok(Box::new(SimDevice::new(i, capacity)) as Box<dyn DeviceBackend>)
                }),
            ),
            BackendChoice::Cuda => cuda_backend(&config)?,
        };
        let backend_kind = match config.backend {
            BackendChoice::Simulated { .. } => crate::gpu::BackendKind::Simulated,
            BackendChoice::Cuda => crate::gpu::BackendKind::Cuda,
        };
        let (writer, directory) = directory::directory(device_count);
        let args = SupervisorArgs {
            device_count,
            factory,
            settings: DeviceSettings {
                worker_id: config.worker_id.clone(),
                chunk_size: config.chunk_size,
                headroom_bytes: config.headroom_bytes,
                staging_bytes: config.staging_bytes,
                call_timeout: config.call_timeout,
                seal_stall_timeout: config.seal_stall_timeout,
                scrub_interval: config.scrub_interval,
                scrub_bytes_per_sec: config.scrub_bytes_per_sec,
            },
            token,
            identity,
            audit_sink: config.audit.clone(),
            audit_batch_size: config.audit_batch_size,
            audit_flush_interval: config.audit_flush_interval,
            audit_buffer_limit: config.audit_buffer_limit,
            audit_memory_lines: config.audit_memory_lines,
            directory: writer,
            restart_budget: RestartBudget::default(),
        };
        let (supervisor, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| VramError::AuditUnavailable(format!("start-up failed: {e}")))?;
        let (seal_keeper, audit) = ask(
            &supervisor,
            SupervisorMsg::Children,
            config.call_timeout,
            "the supervisor",
            || VramError::ShuttingDown,
        )
        .await?;
        tracing::info!(backend = %backend_description, worker_id = %config.worker_id, "vram-residency started");
        Ok(Self {
            inner: Arc::new(Inner {
                supervisor,
                seal_keeper,
                audit,
                directory,
                device_count,
                worker_id: config.worker_id.clone(),
                max_model_size: config.max_model_size,
                execute_verify: config.execute_verify,
                call_timeout: config.call_timeout,
                fail_closed_audit: config.fail_closed_audit,
                next_handle: AtomicU64::new(1),
                admission: (0..device_count)
                    .map(|_| Admission::new(config.device_queue_limit))
                    .collect(),
                shut_down: AtomicBool::new(false),
                backend_description,
                backend_kind,
                identity_public,
            }),
        })
    }

    /// Which backend is running, and why it was chosen.
    pub fn backend_description(&self) -> &str {
        &self.inner.backend_description
    }

    /// Whether the devices are simulated or real.
    pub fn backend_kind(&self) -> crate::gpu::BackendKind {
        self.inner.backend_kind
    }

    /// Number of devices.
    pub fn device_count(&self) -> u32 {
        self.inner.device_count
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    fn live(&self) -> Result<(), VramError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            Err(VramError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    fn gpu(&self, device: u32) -> Result<ActorRef<GpuMsg>, VramError> {
        self.live()?;
        validation::validate_device(device, self.inner.device_count)?;
        self.inner
            .directory
            .gpu(device)
            .map_err(|cause| VramError::DeviceStopped { device, cause })
    }

    /// Calls a device actor once it has room for another request (waiting for it if not).
    async fn ask_gpu<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
    ) -> Result<T, VramError> {
        validation::validate_device(device, self.inner.device_count)?;
        let admission = usize::try_from(device)
            .ok()
            .and_then(|i| self.inner.admission.get(i))
            .ok_or_else(|| VramError::Internal("no admission for a valid device".into()))?;
        let _permit = admission.enter().await?;
        self.ask_gpu_now(device, build).await
    }

    /// Calls a device actor without waiting for room: for releases and resets, which must
    /// always get through (they are what frees a flooded device).
    async fn ask_gpu_now<T: Send + 'static>(
        &self,
        device: u32,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> GpuMsg,
    ) -> Result<T, VramError> {
        let gpu = self.gpu(device)?;
        let inner = Arc::clone(&self.inner);
        ask(
            &gpu,
            build,
            self.inner.call_timeout,
            "the device actor",
            move || {
                if inner.shut_down.load(Ordering::Acquire) {
                    return VramError::ShuttingDown;
                }
                // The actor went away mid-call: it crashed (and is being replaced, or already
                // was) or it stopped for good; the directory says which.
                let cause = inner
                    .directory
                    .gpu(device)
                    .err()
                    .unwrap_or(StopCause::Restarting);
                VramError::DeviceStopped { device, cause }
            },
        )
        .await
    }

    /// Calls one of the long-lived service actors (seal keeper, audit, supervisor); if it is not
    /// there to answer, the system is shutting down.
    async fn ask_service<M: ractor::Message, T: Send + 'static>(
        &self,
        actor: &ActorRef<M>,
        build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
        what: &str,
    ) -> Result<T, VramError> {
        ask(actor, build, self.inner.call_timeout, what, || {
            VramError::ShuttingDown
        })
        .await
    }

    async fn check_signature(&self, info: &ShardInfo) -> Result<(), VramError> {
        let ok = self
            .ask_service(
                &self.inner.seal_keeper,
                |reply| SealKeeperMsg::Verify {
                    info: Box::new(info.clone()),
                    reply,
                },
                "the seal keeper",
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(VramError::seal_signature_failed(info.shard_id.clone()))
        }
    }

    /// Puts a failed signature or residency check on record as `SealVerificationFailed` with a
    /// reason naming what failed. Recorded only: nothing is quarantined and no device stopped
    /// (nothing resident is known to be wrong). Failures that are not a verdict (shutdown,
    /// timeouts, a stopped or lost device) are not recorded here. Passing checks are counted in
    /// `vram_signature_checks_total{result="pass"}`, not written one line each.
    fn record_check(
        &self,
        info: &ShardInfo,
        what: &str,
        signature: &Result<(), VramError>,
        residency: &Result<Result<(), VramError>, VramError>,
    ) {
        let failed = match (signature, residency) {
            (Err(VramError::SealVerificationFailed { .. }), _) => {
                "the seal signature does not verify (forged or altered record)"
            }
            (_, Ok(Err(VramError::UnknownShard(_)))) => {
                "residency mismatch: no shard resident here carries exactly this record"
            }
            (_, Ok(Err(VramError::SealVerificationFailed { .. }))) => {
                "the shard is quarantined after an integrity failure"
            }
            (Ok(()), Ok(Ok(()))) => {
                metrics::counter!("vram_signature_checks_total", "result" => "pass").increment(1);
                return;
            }
            _ => return,
        };
        metrics::counter!("vram_signature_checks_total", "result" => "fail").increment(1);
        let root_ok = info.merkle_root.len() == 64
            && info
                .merkle_root
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        emit_audit(
            &self.inner.audit,
            AuditEvent::SealVerificationFailed {
                shard_id: info.shard_id.clone(),
                gpu_device: info.gpu_device,
                reason: format!("{what}: {failed} (recorded only: nothing quarantined)"),
                expected_root: if root_ok {
                    info.merkle_root.clone()
                } else {
                    String::new()
                },
                actual_root: String::new(),
                first_bad_chunk: None,
                bad_chunks: 0,
                bad_tensors: Vec::new(),
                severity: Severity::Critical,
            },
        );
    }

    /// Copies a shard into device memory, hashes it (SHA-256 and Merkle leaves), and seals it.
    pub async fn seal(&self, request: SealRequest) -> Result<SealedShard, VramError> {
        let sealed = self.seal_uncounted(request).await;
        telemetry::record_seal(&sealed);
        sealed
    }

    /// `seal` without the `vram_seals_total` count (which `seal` adds for every outcome).
    async fn seal_uncounted(&self, request: SealRequest) -> Result<SealedShard, VramError> {
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
        let (source, len, tensors) = tokio::task::spawn_blocking(move || inspect_source(source))
            .await
            .map_err(|_| VramError::Internal("inspecting the seal source failed".into()))??;
        validation::validate_model_size(len, self.inner.max_model_size)?;
        if self.inner.fail_closed_audit && self.audit_stats().await?.sink_down {
            return Err(VramError::AuditUnavailable(
                "the audit sink is failing and fail_closed_audit is set; refusing to seal".into(),
            ));
        }
        let handle_id = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
        let job = SealJob {
            meta: SealMeta {
                shard_id,
                model_ref,
                expected_sha256,
                tensor_parallel,
                handle_id,
                tensors,
                provenance: provenance.clone(),
            },
            source,
            progress,
            len,
        };
        let info = self
            .ask_gpu(device, |reply| GpuMsg::Seal {
                job: Box::new(job),
                reply,
            })
            .await??;
        Ok(SealedShard {
            inner: Arc::new(ShardHandle {
                info,
                handle_id,
                directory: self.inner.directory.clone(),
                released: AtomicBool::new(false),
                provenance: provenance.map(|p| p.provenance),
            }),
        })
    }

    /// Proves the shard still matches its seal: the signature always; the bytes in device
    /// memory for `Full` (every chunk) and `Sampled` (random chunks). A mismatch quarantines the
    /// shard and stops its device (fail-closed).
    pub async fn verify(
        &self,
        shard: &SealedShard,
        mode: VerifyMode,
    ) -> Result<VerifyReport, VramError> {
        let started = std::time::Instant::now();
        let verified = self.verify_uncounted(shard, mode).await;
        if let Some(outcome) = Outcome::counted(&verified) {
            telemetry::record_verification(mode, Trigger::Request, outcome, started.elapsed());
        }
        verified
    }

    /// `verify` without the `vram_verifications_total` count and duration (which `verify`
    /// adds for every outcome).
    async fn verify_uncounted(
        &self,
        shard: &SealedShard,
        mode: VerifyMode,
    ) -> Result<VerifyReport, VramError> {
        self.live()?;
        if shard.inner.released.load(Ordering::Acquire) {
            return Err(VramError::UnknownShard(shard.shard_id().to_string()));
        }
        if let VerifyMode::Sampled { chunks: 0 } = mode {
            return Err(VramError::invalid(
                "Sampled verification needs at least 1 chunk",
            ));
        }
        let started = std::time::Instant::now();
        let info = &shard.inner.info;
        let device = info.gpu_device;
        match mode {
            VerifyMode::SignatureOnly => {
                // The two checks are independent: ask both actors at once.
                let query = ResidencyQuery::Handle(shard.inner.shard_ref(), Box::new(info.clone()));
                let (signature, residency) = tokio::join!(
                    self.check_signature(info),
                    self.ask_gpu(device, |reply| GpuMsg::Residency { query, reply })
                );
                self.record_check(info, "a signature-only check", &signature, &residency);
                signature?;
                residency??;
                Ok(VerifyReport {
                    shard_id: info.shard_id.clone(),
                    gpu_device: device,
                    mode,
                    chunks_checked: 0,
                    total_chunks: crate::seal::merkle::leaf_count(info.vram_bytes, info.chunk_size),
                    bytes_checked: 0,
                    single_chunk_detection: 0.0,
                    elapsed: started.elapsed(),
                })
            }
            VerifyMode::Full | VerifyMode::Sampled { .. } => {
                self.check_signature(info).await?;
                let shard_ref = shard.inner.shard_ref();
                self.ask_gpu(device, |reply| GpuMsg::Verify {
                    shard: shard_ref,
                    info: Box::new(info.clone()),
                    mode,
                    reply,
                })
                .await?
            }
        }
    }

    /// Checks a `ShardInfo` received from elsewhere: its signature against this worker's key,
    /// and that exactly that shard is resident here and not quarantined.
    pub async fn verify_info(&self, info: &ShardInfo) -> Result<VerifyReport, VramError> {
        let started = std::time::Instant::now();
        let verified = self.verify_info_uncounted(info, started).await;
        // A peer's record that no resident shard carries is a failed check, not a missing
        // answer (it is audited as a failure too).
        let outcome = match &verified {
            Err(VramError::UnknownShard(_)) => Some(Outcome::Fail),
            other => Outcome::counted(other),
        };
        if let Some(outcome) = outcome {
            let mode = VerifyMode::SignatureOnly;
            telemetry::record_verification(mode, Trigger::Request, outcome, started.elapsed());
        }
        verified
    }

    /// `verify_info` without the `vram_verifications_total` count and duration.
    async fn verify_info_uncounted(
        &self,
        info: &ShardInfo,
        started: std::time::Instant,
    ) -> Result<VerifyReport, VramError> {
        self.live()?;
        validation::validate_identifier("shard_id", &info.shard_id)?;
        validation::validate_device(info.gpu_device, self.inner.device_count)?;
        let query = ResidencyQuery::Info(Box::new(info.clone()));
        let (signature, residency) = tokio::join!(
            self.check_signature(info),
            self.ask_gpu(info.gpu_device, |reply| GpuMsg::Residency { query, reply })
        );
        self.record_check(
            info,
            "a peer's ShardInfo (verify_info)",
            &signature,
            &residency,
        );
        // A bad signature is the more important answer: report it first.
        signature?;
        residency??;
        Ok(VerifyReport {
            shard_id: info.shard_id.clone(),
            gpu_device: info.gpu_device,
            mode: VerifyMode::SignatureOnly,
            chunks_checked: 0,
            total_chunks: crate::seal::merkle::leaf_count(info.vram_bytes, info.chunk_size),
            bytes_checked: 0,
            single_chunk_detection: 0.0,
            elapsed: started.elapsed(),
        })
    }

    /// Verifies the shard (per `Config::execute_verify`), then runs `f` on the device's actor
    /// with a view of the shard's device memory. The only way to reach the weights' pointer.
    pub async fn execute<R, F>(&self, shard: &SealedShard, f: F) -> Result<R, VramError>
    where
        F: FnOnce(&crate::shard::DeviceView) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.verify(shard, self.inner.execute_verify).await?;
        let job: crate::messages::gpu::ExecuteFn =
            Box::new(move |view| Box::new(f(view)) as Box<dyn Any + Send>);
        let shard_ref = shard.inner.shard_ref();
        let out = self
            .ask_gpu(shard.device(), |reply| GpuMsg::Execute {
                shard: shard_ref,
                job,
                reply,
            })
            .await??;
        out.downcast::<R>()
            .map(|b| *b)
            .map_err(|_| VramError::Unsupported("execute result had an unexpected type".into()))
    }

    /// Verifies the shard (per `Config::execute_verify`) and signs a `vram-attest-v2` statement
    /// binding the challenger's `nonce` (16..=1024 bytes, else `InvalidInput`) to its seal, the
    /// mode that ran, the backend and device, and the durable audit head (flushed first). The
    /// device actor checks that the shard is still resident and not quarantined in the same
    /// handler that obtains the signature. Check it with [`crate::verify_attestation`] or
    /// [`crate::verify_attestation_with`].
    pub async fn attest(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<Attestation, VramError> {
        check_nonce(nonce)?;
        let mode = self.inner.execute_verify;
        self.verify(shard, mode).await?;
        let verified_at = now_unix_nanos();
        let audit_head = self.audit_head().await?;
        let draft = AttestDraft {
            nonce: nonce.to_vec(),
            verified_mode: mode,
            verified_at_unix_nanos: verified_at,
            audit_head,
        };
        let shard_ref = shard.inner.shard_ref();
        let info = Box::new(shard.info().clone());
        self.ask_gpu(shard.device(), |reply| GpuMsg::Attest {
            shard: shard_ref,
            info,
            draft: Box::new(draft),
            reply,
        })
        .await?
    }

    /// Memory figures of a device.
    pub async fn capacity(&self, device: u32) -> Result<VramCapacity, VramError> {
        self.ask_gpu(device, |reply| GpuMsg::Capacity { reply })
            .await?
    }

    /// Injects a fault into a simulated device.
    pub async fn inject_fault(&self, device: u32, fault: Fault) -> Result<(), VramError> {
        if let Fault::FlipBits { shard_id, .. } = &fault {
            validation::validate_identifier("shard_id", shard_id)?;
        }
        let crash = matches!(fault, Fault::CrashActor);
        let r = self
            .ask_gpu(device, |reply| GpuMsg::InjectFault { fault, reply })
            .await;
        match r {
            // The actor dies instead of answering: that is the fault working.
            Err(VramError::DeviceStopped { .. }) if crash => Ok(()),
            other => other?,
        }
    }

    /// Makes the audit sink fail (`true`) or work again (`false`): fault injection for the
    /// drop accounting and `fail_closed_audit`.
    pub fn inject_audit_sink_failure(&self, failing: bool) -> Result<(), VramError> {
        self.live()?;
        if self.inner.backend_kind != crate::gpu::BackendKind::Simulated {
            return Err(VramError::Unsupported(
                "audit fault injection is only available with simulated devices".into(),
            ));
        }
        self.inner
            .audit
            .cast(AuditMsg::SinkFault(failing))
            .map_err(|_| VramError::ShuttingDown)
    }

    /// Frees the shard's device memory now; returns the bytes freed. Other clones of the handle
    /// become stale (`UnknownShard`). If a verification is reading the shard, the release waits
    /// for it.
    pub async fn release(&self, shard: SealedShard) -> Result<u64, VramError> {
        self.live()?;
        if shard.inner.released.swap(true, Ordering::AcqRel) {
            return Err(VramError::UnknownShard(shard.shard_id().to_string()));
        }
        let shard_ref = shard.inner.shard_ref();
        self.ask_gpu_now(shard.device(), |reply| GpuMsg::Release {
            shard: shard_ref,
            reply: Some(reply),
        })
        .await?
    }

    /// Lets a device that stopped after an integrity failure accept seals and executions
    /// again. Quarantined shards stay quarantined; release them.
    pub async fn reset_device(&self, device: u32) -> Result<(), VramError> {
        self.ask_gpu_now(device, |reply| GpuMsg::Reset { reply })
            .await?
    }

    /// Status of every device.
    pub async fn devices(&self) -> Result<Vec<DeviceStatus>, VramError> {
        let mut out = Vec::new();
        for d in 0..self.inner.device_count {
            out.push(self.ask_gpu(d, |reply| GpuMsg::Status { reply }).await?);
        }
        Ok(out)
    }

    /// How busy a device's admission is: requests in flight, callers waiting for room, and the
    /// limit (`Config::device_queue_limit`).
    pub fn device_load(&self, device: u32) -> Result<DeviceLoad, VramError> {
        validation::validate_device(device, self.inner.device_count)?;
        usize::try_from(device)
            .ok()
            .and_then(|i| self.inner.admission.get(i))
            .map(Admission::load)
            .ok_or_else(|| VramError::Internal("no admission for a valid device".into()))
    }

    /// Writes every audit event emitted so far and fsyncs the log. Fails with
    /// `AuditUnavailable` if the sink is failing (the events stay buffered).
    pub async fn audit_flush(&self) -> Result<AuditStats, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Flush, "the audit actor")
            .await?
    }

    /// Flushes the audit log, then returns its newest durable record's seq and MAC. Keep it
    /// somewhere the worker cannot rewrite: `audit::verify_log_to_head` then catches a log cut
    /// (or rewritten) at or before it. Fails with `AuditUnavailable` while the sink fails.
    pub async fn audit_head(&self) -> Result<crate::types::AuditHead, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Head, "the audit actor")
            .await?
    }

    /// Audit counters (written, dropped, buffered, sink state).
    pub async fn audit_stats(&self) -> Result<AuditStats, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Stats, "the audit actor")
            .await
    }

    /// The audit lines written so far, when the sink is in memory (flushes first).
    pub async fn audit_lines(&self) -> Result<Vec<String>, VramError> {
        self.audit_flush().await?;
        self.ask_service(&self.inner.audit, AuditMsg::Lines, "the audit actor")
            .await
    }

    /// Stops everything in order: devices drain their mailboxes and free their memory, the seal
    /// key is zeroized, and the audit log is flushed, closed and synced. Calls made afterwards
    /// get `ShuttingDown`. Idempotent.
    pub async fn shutdown(&self) -> Result<(), VramError> {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Each device may take up to a call timeout to drain (then another to be killed),
        // followed by the seal keeper and the audit log.
        let steps = self.inner.device_count.saturating_mul(2).saturating_add(3);
        let budget = self.inner.call_timeout.saturating_mul(steps);
        ask(
            &self.inner.supervisor,
            SupervisorMsg::Shutdown,
            budget,
            "shutdown",
            || VramError::ShuttingDown,
        )
        .await
    }
}

/// Admission to one device's mailbox: at most `limit` requests in flight; callers beyond that
/// wait (in arrival order) for a permit. The permit is held until the reply arrives, so the
/// mailbox never holds more than `limit` caller requests (plus the actor's own internal
/// messages, one per request at most). Each device has its own, so a flood on one never
/// delays another.
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
    waiting: Arc<AtomicUsize>,
}

impl Admission {
    fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for room; the permit is given back when dropped.
    async fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, VramError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _still_waiting = DecrementOnDrop(&self.waiting);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| VramError::ShuttingDown)?;
        Ok(permit)
    }

    fn load(&self) -> DeviceLoad {
        DeviceLoad {
            in_flight: self.limit.saturating_sub(self.permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }
}

/// Counts a caller out of the waiting line however its wait ends (admitted, or its future
/// dropped).
struct DecrementOnDrop<'a>(&'a AtomicUsize);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A seal source's length and, for safetensors bytes or files, its tensor layout. Blocking
/// (file metadata, header read and parse): call it off the async runtime.
fn inspect_source(
    source: SealSource,
) -> Result<(SealSource, u64, Option<Arc<TensorMap>>), VramError> {
    let (len, tensors) = match &source {
        SealSource::Bytes(b) => {
            let len = b.len() as u64;
            (len, TensorMap::parse(b, len))
        }
        SealSource::Reader(_, n) => (*n, None),
        SealSource::File(p) => (
            validation::regular_file(p, "model file")?.len(),
            TensorMap::from_file(p),
        ),
    };
    Ok((source, len, tensors.map(Arc::new)))
}
