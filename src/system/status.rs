//! What a running system reports about its devices and audit log: capacity, device status, the
//! audit log's stats, head and lines; and the fault-injection switches for drills and tests.

use crate::error::VramError;
use crate::messages::audit::{AuditMsg, AuditStats};
use crate::messages::gpu::GpuMsg;
use crate::shard::{Fault, VramCapacity};
use crate::types::DeviceStatus;
use crate::validation;

use super::*;

impl VramResidency {
    /// Memory figures of a device. A status query: it does not wait for a request slot, and
    /// the device answers it between requests (hashing runs off its actor).
    #[tracing::instrument(name = "vram.capacity", level = "info", skip_all, fields(device = device))]
    pub async fn capacity(&self, device: u32) -> Result<VramCapacity, VramError> {
        self.ask_gpu_now(device, |reply| GpuMsg::Capacity { reply })
            .await?
    }

    /// Injects a fault into a device (see [`Fault`] for which backend accepts which). A fault
    /// that names a shard is checked against the device's shard table before anything
    /// changes: an unknown shard is `UnknownShard`, an offset past its end `InvalidInput`.
    #[tracing::instrument(name = "vram.inject_fault", level = "info", skip_all, fields(device = device))]
    pub async fn inject_fault(&self, device: u32, fault: Fault) -> Result<(), VramError> {
        if let Some((shard_id, _)) = fault.target() {
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
        }?;
        tracing::debug!("fault injected");
        Ok(())
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

    /// Status of every device. A status query: it does not wait for request slots, and each
    /// device answers it between requests (hashing runs off its actor).
    #[tracing::instrument(name = "vram.devices", level = "info", skip_all)]
    pub async fn devices(&self) -> Result<Vec<DeviceStatus>, VramError> {
        let mut out = Vec::new();
        for d in 0..self.inner.device_count {
            out.push(
                self.ask_gpu_now(d, |reply| GpuMsg::Status { reply })
                    .await?,
            );
        }
        Ok(out)
    }

    /// Writes every audit event emitted so far and fsyncs the log. Fails with
    /// `AuditUnavailable` if the sink is failing (the events stay buffered).
    #[tracing::instrument(name = "vram.audit_flush", level = "info", skip_all)]
    pub async fn audit_flush(&self) -> Result<AuditStats, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Flush, "the audit actor")
            .await?
    }

    /// Flushes the audit log, then returns its newest durable record's seq and MAC. Keep it
    /// somewhere the worker cannot rewrite: `audit::verify_log_to_head` then catches a log cut
    /// (or rewritten) at or before it. Fails with `AuditUnavailable` while the sink fails.
    #[tracing::instrument(name = "vram.audit_head", level = "info", skip_all)]
    pub async fn audit_head(&self) -> Result<crate::types::AuditHead, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Head, "the audit actor")
            .await?
    }

    /// Audit counters (written, dropped, buffered, sink state).
    #[tracing::instrument(name = "vram.audit_stats", level = "info", skip_all)]
    pub async fn audit_stats(&self) -> Result<AuditStats, VramError> {
        self.live()?;
        self.ask_service(&self.inner.audit, AuditMsg::Stats, "the audit actor")
            .await
    }

    /// The audit lines written so far, when the sink is in memory (flushes first).
    #[tracing::instrument(name = "vram.audit_lines", level = "info", skip_all)]
    pub async fn audit_lines(&self) -> Result<Vec<String>, VramError> {
        self.audit_flush().await?;
        self.ask_service(&self.inner.audit, AuditMsg::Lines, "the audit actor")
            .await
    }
}
