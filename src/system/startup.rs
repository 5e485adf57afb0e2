//! Start-up and shutdown: choosing and probing the backend, starting the supervised actors,
//! and stopping them in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ractor::Actor;

use crate::actors::ask;
use crate::actors::supervisor::{
    BackendFactory, DeviceSettings, RestartBudget, Supervisor, SupervisorArgs,
};
use crate::config::{BackendChoice, Config};
use crate::error::VramError;
use crate::gpu::DeviceBackend;
use crate::gpu::sim::SimDevice;
use crate::messages::directory::{self};
use crate::messages::supervisor::SupervisorMsg;

use super::*;

/// The CUDA backend factory: probes the driver (`BackendUnavailable` when there is no library
/// or no device) and checks the integrated-GPU policy before any actor starts; each device
/// actor then opens its own device with it.
fn cuda_backend(config: &Config) -> Result<(u32, BackendFactory), VramError> {
    let found = crate::gpu::cuda::probe().map_err(|why| VramError::BackendUnavailable {
        device: None,
        reason: format!("CUDA was requested but cannot be used: {why}"),
    })?;
    if !config.allow_integrated_gpu {
        for index in 0..found.device_count {
            let integrated = crate::gpu::cuda::probe::is_integrated(index).map_err(|e| {
                VramError::BackendUnavailable {
                    device: Some(index),
                    reason: format!("cannot query the device: {e}"),
                }
            })?;
            if integrated {
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

/// The opt-level cargo compiled this crate at (`build.rs`): `"0"` in a debug build without
/// profile overrides.
const OPT_LEVEL: &str = env!("VRAM_RESIDENCY_OPT_LEVEL");

/// Warns, once per process, when this crate was compiled without optimisation: a dependent's
/// debug build then usually compiles the hashers unoptimised too, and sealing or verifying
/// gigabytes takes minutes instead of seconds.
fn warn_if_unoptimised() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if OPT_LEVEL != "0" {
        return;
    }
    WARNED.call_once(|| {
        tracing::warn!(
            opt_level = OPT_LEVEL,
            "vram-residency was compiled without optimisation (opt-level 0): if its hashers \
             (sha2, hmac) were too, as in a dependent's debug build, SHA-256 runs about 45x \
             slower (sealing 64 MiB took 12.4 s instead of 1.07 s); add the profile overrides \
             from the README section \"Building a dependent: profile overrides\" to your \
             Cargo.toml, or build with --release"
        );
    });
}

/// The error of a supervisor that did not start: the supervisor says which part failed (a
/// `VramError`: `AuditUnavailable` for the audit log, `BackendUnavailable` for a device);
/// anything else is a bug.
fn start_failure(e: ractor::SpawnErr) -> VramError {
    if let ractor::SpawnErr::StartupFailed(inner) = &e
        && let Some(known) = inner.downcast_ref::<VramError>()
    {
        return known.clone();
    }
    VramError::Internal(format!("start-up failed: {e}"))
}

impl VramResidency {
    /// Starts the actors: audit log (opened, or verified and continued), seal keeper, and one
    /// device actor per device. Fails with `InvalidInput` for a bad configuration,
    /// `PolicyViolation` for a device the policy refuses (an integrated GPU),
    /// `AuditUnavailable` if the audit log cannot be opened (or does not verify), and
    /// `BackendUnavailable` if the backend cannot start (no CUDA driver or device, a device
    /// that cannot be opened).
    ///
    /// In a build that compiled this crate without optimisation it logs one warning per
    /// process (see the README's "Building a dependent: profile overrides").
    #[tracing::instrument(name = "vram.start", level = "info", skip_all, fields(worker_id = %crate::actors::spans::Shown(&config.worker_id)))]
    pub async fn start(mut config: Config) -> Result<Self, VramError> {
        warn_if_unoptimised();
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
            .map_err(start_failure)?;
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
                    .map(|_| Admission::new(config.device_queue_limit, config.admission_timeout))
                    .collect(),
                shut_down: AtomicBool::new(false),
                backend_description,
                backend_kind,
                identity_public,
            }),
        })
    }

    /// Stops everything in order: devices drain their mailboxes and free their memory, the seal
    /// key is zeroized, and the audit log is flushed, closed and synced. Calls made afterwards
    /// get `ShuttingDown`. Idempotent.
    #[tracing::instrument(name = "vram.shutdown", level = "info", skip_all)]
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
        .await?;
        tracing::debug!("shut down");
        Ok(())
    }
}
