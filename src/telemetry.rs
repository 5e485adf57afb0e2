//! The metrics the crate exports, by name, and the few functions that record them.
//!
//! Everything goes through the [`metrics`] facade: with no recorder installed each call is a
//! no-op; an embedding worker installs one (a Prometheus exporter, for instance) and calls
//! [`describe`] once so the exporter can print a help line and unit for each name. The names
//! follow Prometheus conventions (`_total` for counters, base units in the name):
//!
//! | name | kind | labels | what it counts or shows |
//! |---|---|---|---|
//! | `vram_device_total_bytes` | gauge | `gpu_device` | device memory |
//! | `vram_device_used_bytes` | gauge | `gpu_device` | bytes held by sealed shards |
//! | `vram_device_available_bytes` | gauge | `gpu_device` | bytes a new seal may use (total − used − headroom, or less when the device reports less free) |
//! | `vram_seals_total` | counter | `result` | every `seal` call, and every part `seal_group` seals: `ok`, `invalid_input`, `insufficient_vram`, `allocation_failed`, `digest_mismatch`, `error` |
//! | `vram_verifications_total` | counter | `mode`, `result`, `trigger` | every verification: `mode` is `full`, `sampled` or `signature_only`; `result` is `pass`, `fail` (the shard or record does not match its seal, or is quarantined, itself or with its tensor-parallel group) or `error` (no verdict: device lost or stopped, incomplete read, shard gone, timeout); `trigger` is `request` or `scrub` |
//! | `vram_verification_duration_seconds` | histogram | `mode` | time to a verdict (`pass` or `fail`) |
//! | `vram_signature_checks_total` | counter | `result` | signature-only and `verify_info` checks (`pass`, `fail`) |
//! | `vram_events_total` | counter | `type`, `gpu_device` | audit events emitted by device actors |
//! | `vram_audit_records_written_total` | counter | — | audit records written |
//! | `vram_audit_events_dropped_total` | counter | `reason` (some) | audit events lost (overflow, unencodable, actor gone) |
//! | `vram_audit_sink_up` | gauge | — | 1 while the audit sink works, 0 while it fails |
//! | `vram_internal_send_failures_total` | counter | `to` | messages an actor could not deliver to another |
//! | `vram_cuda_leaf_kernel_off_total` | counter | `gpu_device` | CUDA devices whose leaf kernel was switched off (wrong hashes at the start-up self-test, or a failed launch); their leaves are hashed on the host |
//! | `vram_cuda_kernel_fallbacks_total` | counter | — | leaf hash requests the kernel could not answer, answered on the host |
//! | `vram_cuda_leaked_buffers_total` | counter | — | CUDA device or pinned buffers deliberately leaked because freeing them was not safe (the context could not be made current or synchronised, or a copy may still read them) |
//! | `vram_cuda_free_errors_total` | counter | — | CUDA frees the driver reported an error for |
//!
//! Where they are recorded: device gauges by each device actor after every message that can
//! change its memory figures (and at start and stop); seal counters and request verifications
//! in the `VramResidency` facade, which sees every outcome a caller sees, including input
//! rejected before any actor is asked and the verifications `execute` and `attest` run first;
//! background scrubs by the device actor that runs them. The group calls go through the same
//! facade methods for each member (`seal_group` seals each part with `seal`, `verify_group` and
//! `attest_group` verify each member with `verify`, `verify_group_info` with `verify_info`), so
//! a group of four counts four seals or four verifications. Label values are a small fixed set
//! (no shard ids, no chunk counts), so the number of series stays bounded.

use std::time::Duration;

use crate::error::VramError;
use crate::types::{VerifyMode, VramCapacity};

/// Gauge: device memory in bytes, by `gpu_device`.
pub const DEVICE_TOTAL_BYTES: &str = "vram_device_total_bytes";
/// Gauge: bytes held by sealed shards, by `gpu_device`.
pub const DEVICE_USED_BYTES: &str = "vram_device_used_bytes";
/// Gauge: bytes a new seal may use, by `gpu_device`.
pub const DEVICE_AVAILABLE_BYTES: &str = "vram_device_available_bytes";
/// Counter: `seal` calls, by `result`.
pub const SEALS_TOTAL: &str = "vram_seals_total";
/// Counter: verifications, by `mode`, `result` and `trigger`.
pub const VERIFICATIONS_TOTAL: &str = "vram_verifications_total";
/// Histogram: seconds from the start of a verification to its verdict, by `mode`.
pub const VERIFICATION_DURATION_SECONDS: &str = "vram_verification_duration_seconds";

/// Counter: CUDA devices whose leaf kernel was switched off, by `gpu_device`.
pub const CUDA_LEAF_KERNEL_OFF_TOTAL: &str = "vram_cuda_leaf_kernel_off_total";
/// Counter: leaf hash requests the CUDA kernel could not answer (answered on the host).
pub const CUDA_KERNEL_FALLBACKS_TOTAL: &str = "vram_cuda_kernel_fallbacks_total";
/// Counter: CUDA buffers leaked on purpose because freeing them was not safe.
pub const CUDA_LEAKED_BUFFERS_TOTAL: &str = "vram_cuda_leaked_buffers_total";
/// Counter: CUDA frees the driver reported an error for.
pub const CUDA_FREE_ERRORS_TOTAL: &str = "vram_cuda_free_errors_total";

/// Who asked for a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A caller: `verify`, `verify_info`, or the check `execute` and `attest` run first.
    Request,
    /// The device actor's background scrub.
    Scrub,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Scrub => "scrub",
        }
    }
}

/// What a verification concluded, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The shard matches its seal.
    Pass,
    /// It does not: corrupt bytes, a forged or altered record, or a quarantined shard.
    Fail,
    /// No verdict: the check could not run or finish.
    Error,
}

impl Outcome {
    /// The outcome of a verification a caller asked for, or `None` when nothing was checked
    /// (the request itself was invalid, or the system is shutting down).
    pub(crate) fn counted<T>(result: &Result<T, VramError>) -> Option<Self> {
        match result {
            Err(e)
                if matches!(
                    e.innermost(),
                    VramError::InvalidInput(_) | VramError::ShuttingDown
                ) =>
            {
                None
            }
            other => Some(Self::of(other)),
        }
    }

    /// The outcome of a verification that ended with `result`.
    pub(crate) fn of<T>(result: &Result<T, VramError>) -> Self {
        match result {
            Ok(_) => Self::Pass,
            // Includes a member refused because its tensor-parallel group failed (fail-all).
            Err(e) if e.is_integrity_failure() => Self::Fail,
            Err(_) => Self::Error,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Error => "error",
        }
    }
}

/// The `mode` label: the mode's kind only (a sample size would make one series per size).
fn mode_label(mode: VerifyMode) -> &'static str {
    match mode {
        VerifyMode::Full => "full",
        VerifyMode::Sampled { .. } => "sampled",
        VerifyMode::SignatureOnly => "signature_only",
    }
}

/// The `result` label of a finished `seal` call.
fn seal_label<T>(result: &Result<T, VramError>) -> &'static str {
    match result.as_ref().map_err(VramError::innermost) {
        Ok(_) => "ok",
        Err(VramError::InvalidInput(_)) => "invalid_input",
        Err(VramError::InsufficientVram { .. }) => "insufficient_vram",
        Err(VramError::AllocationFailed { .. }) => "allocation_failed",
        Err(VramError::DigestMismatch { .. }) => "digest_mismatch",
        Err(_) => "error",
    }
}

/// Publishes one device's memory figures.
pub(crate) fn publish_capacity(capacity: &VramCapacity) {
    let device = capacity.gpu_device.to_string();
    metrics::gauge!(DEVICE_TOTAL_BYTES, "gpu_device" => device.clone())
        .set(capacity.total_bytes as f64);
    metrics::gauge!(DEVICE_USED_BYTES, "gpu_device" => device.clone())
        .set(capacity.used_bytes as f64);
    metrics::gauge!(DEVICE_AVAILABLE_BYTES, "gpu_device" => device)
        .set(capacity.available_bytes as f64);
}

/// Counts a finished `seal` call.
pub(crate) fn record_seal<T>(result: &Result<T, VramError>) {
    metrics::counter!(SEALS_TOTAL, "result" => seal_label(result)).increment(1);
}

/// Counts a finished verification and, when it reached a verdict, records how long it took.
pub(crate) fn record_verification(
    mode: VerifyMode,
    trigger: Trigger,
    outcome: Outcome,
    elapsed: Duration,
) {
    let mode = mode_label(mode);
    metrics::counter!(VERIFICATIONS_TOTAL, "mode" => mode, "result" => outcome.label(),
        "trigger" => trigger.label())
    .increment(1);
    if outcome != Outcome::Error {
        metrics::histogram!(VERIFICATION_DURATION_SECONDS, "mode" => mode)
            .record(elapsed.as_secs_f64());
    }
}

/// Counts a CUDA device's leaf kernel being switched off.
pub(crate) fn record_leaf_kernel_off(device: u32) {
    metrics::counter!(CUDA_LEAF_KERNEL_OFF_TOTAL, "gpu_device" => device.to_string()).increment(1);
}

/// Counts a CUDA buffer leaked on purpose.
pub(crate) fn record_cuda_leak() {
    metrics::counter!(CUDA_LEAKED_BUFFERS_TOTAL).increment(1);
}

/// Gives every metric the crate records a description (and a unit where it has one), for
/// exporters that print them (Prometheus `# HELP` lines). Call it once after installing a
/// recorder; calling it again is harmless.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(DEVICE_TOTAL_BYTES, Unit::Bytes, "Device memory.");
    describe_gauge!(
        DEVICE_USED_BYTES,
        Unit::Bytes,
        "Device memory held by sealed shards."
    );
    describe_gauge!(
        DEVICE_AVAILABLE_BYTES,
        Unit::Bytes,
        "Device memory a new seal may use (total - used - headroom, or less when the device reports less free)."
    );
    describe_counter!(
        SEALS_TOTAL,
        "Seal calls by result (ok, invalid_input, insufficient_vram, allocation_failed, digest_mismatch, error)."
    );
    describe_counter!(
        VERIFICATIONS_TOTAL,
        "Verifications by mode (full, sampled, signature_only), result (pass, fail, error) and trigger (request, scrub)."
    );
    describe_histogram!(
        VERIFICATION_DURATION_SECONDS,
        Unit::Seconds,
        "Time from the start of a verification to its verdict, by mode."
    );
    describe_counter!(
        "vram_signature_checks_total",
        "Signature-only and verify_info checks by result (pass, fail)."
    );
    describe_counter!(
        "vram_events_total",
        "Audit events emitted by device actors, by type and device."
    );
    describe_counter!("vram_audit_records_written_total", "Audit records written.");
    describe_counter!(
        "vram_audit_events_dropped_total",
        "Audit events lost (buffer overflow, unencodable record, audit actor gone)."
    );
    describe_gauge!(
        "vram_audit_sink_up",
        "1 while the audit sink works, 0 while it fails."
    );
    describe_counter!(
        "vram_internal_send_failures_total",
        "Messages an actor could not deliver to another, by recipient."
    );
    describe_counter!(
        CUDA_LEAF_KERNEL_OFF_TOTAL,
        "CUDA devices whose leaf kernel was switched off (wrong hashes at the start-up self-test, or a failed launch), by device."
    );
    describe_counter!(
        CUDA_KERNEL_FALLBACKS_TOTAL,
        "Leaf hash requests the CUDA kernel could not answer, answered on the host."
    );
    describe_counter!(
        CUDA_LEAKED_BUFFERS_TOTAL,
        "CUDA buffers leaked on purpose because freeing them was not safe."
    );
    describe_counter!(
        CUDA_FREE_ERRORS_TOTAL,
        "CUDA frees the driver reported an error for."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_labels() {
        let ok: Result<(), VramError> = Ok(());
        assert_eq!(Outcome::of(&ok), Outcome::Pass);
        let corrupt: Result<(), VramError> = Err(VramError::seal_signature_failed("s"));
        assert_eq!(Outcome::of(&corrupt), Outcome::Fail);
        let gone: Result<(), VramError> = Err(VramError::DeviceLost { device: 0 });
        assert_eq!(Outcome::of(&gone), Outcome::Error);
        let with_group: Result<(), VramError> = Err(VramError::GroupQuarantined {
            shard_id: "m1".into(),
            group_id: "g".into(),
            failed_shard_id: "m0".into(),
        });
        assert_eq!(Outcome::of(&with_group), Outcome::Fail);
        let invalid: Result<(), VramError> = Err(VramError::invalid("no"));
        assert_eq!(Outcome::counted(&invalid), None);
        assert_eq!(Outcome::counted(&corrupt), Some(Outcome::Fail));
        assert_eq!(mode_label(VerifyMode::Sampled { chunks: 7 }), "sampled");
        assert_eq!(seal_label(&ok), "ok");
        let no_room: Result<(), VramError> = Err(VramError::InsufficientVram {
            needed: 2,
            available: 1,
        });
        assert_eq!(seal_label(&no_room), "insufficient_vram");
        assert_eq!(seal_label(&gone), "error");
    }
}
