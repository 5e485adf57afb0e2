//! The metrics the crate exports, by name, and the few functions that record them.
//!
//! Everything goes through the [`metrics`] facade: with no recorder installed each call is a
//! no-op; an embedding worker installs one (a Prometheus exporter, for instance) and calls
//! [`describe`] once so the exporter can print a help line and unit for each name. The names
//! follow Prometheus conventions (`_total` for counters, base units in the name):
//!
//! Every name is a constant here, listed with its kind, labels and help text in [`METRICS`],
//! which [`describe`] and the README's metrics table (checked against it by a test) both come
//! from. Code elsewhere records through the functions below, never with a literal name.
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
/// Gauge: bytes held on the device (sealed shards with their alignment padding, shards released
/// while leases hold them, seals in progress), by `gpu_device`.
pub const DEVICE_USED_BYTES: &str = "vram_device_used_bytes";
/// Gauge: bytes a new seal may use, by `gpu_device`.
pub const DEVICE_AVAILABLE_BYTES: &str = "vram_device_available_bytes";
/// Counter: `seal` calls, by `result`.
pub const SEALS_TOTAL: &str = "vram_seals_total";
/// Counter: verifications, by `mode`, `result` and `trigger`.
pub const VERIFICATIONS_TOTAL: &str = "vram_verifications_total";
/// Histogram: seconds from the start of a verification to its verdict, by `mode`.
pub const VERIFICATION_DURATION_SECONDS: &str = "vram_verification_duration_seconds";
/// Counter: refusals that repeat (forged or stale peer records, calls on a quarantined shard
/// or failed group, verifications cancelled by their caller), by `reason`: each is counted
/// here, and only the first of a reason per window is written to the audit log in full
/// (`audit::refusals`).
pub const REFUSALS_TOTAL: &str = "vram_refusals_total";
/// Counter: requests refused with `VramError::Busy` (no device slot within
/// `Config::admission_timeout`), by `gpu_device`.
pub const ADMISSION_BUSY_TOTAL: &str = "vram_admission_busy_total";
/// Counter: signature-only and `verify_info` checks, by `result`.
pub const SIGNATURE_CHECKS_TOTAL: &str = "vram_signature_checks_total";
/// Counter: audit events emitted by device actors, by `type` and `gpu_device`.
pub const EVENTS_TOTAL: &str = "vram_events_total";
/// Counter: audit records written.
pub const AUDIT_RECORDS_WRITTEN_TOTAL: &str = "vram_audit_records_written_total";
/// Counter: audit events lost, by `reason` where one is known.
pub const AUDIT_EVENTS_DROPPED_TOTAL: &str = "vram_audit_events_dropped_total";
/// Gauge: 1 while the audit sink works, 0 while it fails.
pub const AUDIT_SINK_UP: &str = "vram_audit_sink_up";
/// Counter: messages an actor could not deliver to another, by `to`.
pub const INTERNAL_SEND_FAILURES_TOTAL: &str = "vram_internal_send_failures_total";
/// Counter: CUDA device or pinned buffers deliberately leaked rather than freed unsafely.
pub const CUDA_LEAKED_BUFFERS_TOTAL: &str = "vram_cuda_leaked_buffers_total";
/// Counter: CUDA frees that reported a driver error.
pub const CUDA_FREE_ERRORS_TOTAL: &str = "vram_cuda_free_errors_total";
/// Counter: leaf-kernel launches that failed and were hashed on the host instead.
pub const CUDA_KERNEL_FALLBACKS_TOTAL: &str = "vram_cuda_kernel_fallbacks_total";
/// Counter: CUDA devices whose leaf kernel was switched off, by `gpu_device`.
pub const CUDA_LEAF_KERNEL_OFF_TOTAL: &str = "vram_cuda_leaf_kernel_off_total";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// A value set from time to time.
    Gauge,
    /// A distribution of samples.
    Histogram,
}

impl MetricKind {
    /// The word used in the README's table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric the crate records: its name, kind, unit, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    /// The series name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit, where it has one.
    pub unit: Option<metrics::Unit>,
    /// Its labels and their values, in words (`—` for none).
    pub labels: &'static str,
    /// The help text exporters print.
    pub help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: MetricKind,
    unit: Option<metrics::Unit>,
    labels: &'static str,
    help: &'static str,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

/// Every metric the crate records. Label values are a small fixed set (no shard ids, no chunk
/// counts), so the number of series stays bounded.
pub const METRICS: &[MetricSpec] = {
    use MetricKind::{Counter, Gauge, Histogram};
    use metrics::Unit::{Bytes, Seconds};
    &[
        spec(
            DEVICE_TOTAL_BYTES,
            Gauge,
            Some(Bytes),
            "`gpu_device`",
            "Device memory.",
        ),
        spec(
            DEVICE_USED_BYTES,
            Gauge,
            Some(Bytes),
            "`gpu_device`",
            "Device memory held: sealed shards (with their alignment padding), shards released while leases still hold them, and seals in progress.",
        ),
        spec(
            DEVICE_AVAILABLE_BYTES,
            Gauge,
            Some(Bytes),
            "`gpu_device`",
            "Device memory a new seal may use (total - used - headroom, or less when the device reports less free).",
        ),
        spec(
            SEALS_TOTAL,
            Counter,
            None,
            "`result`: `ok`, `invalid_input`, `insufficient_vram`, `allocation_failed`, `digest_mismatch`, `cancelled`, `error`",
            "Seal calls (and parts of seal_group) by result; `cancelled`: the caller dropped the call and the seal stopped (counted when it has, once).",
        ),
        spec(
            VERIFICATIONS_TOTAL,
            Counter,
            None,
            "`mode` (`full`, `sampled`, `signature_only`), `result` (`pass`, `fail`, `error`), `trigger` (`request`, `scrub`)",
            "Verifications by mode, result and trigger.",
        ),
        spec(
            VERIFICATION_DURATION_SECONDS,
            Histogram,
            Some(Seconds),
            "`mode`",
            "Time from the start of a verification to its verdict (pass or fail), by mode.",
        ),
        spec(
            SIGNATURE_CHECKS_TOTAL,
            Counter,
            None,
            "`result` (`pass`, `fail`)",
            "Signature-only and verify_info checks by result.",
        ),
        spec(
            EVENTS_TOTAL,
            Counter,
            None,
            "`type`, `gpu_device`",
            "Audit events emitted by device actors, by type and device.",
        ),
        spec(
            AUDIT_RECORDS_WRITTEN_TOTAL,
            Counter,
            None,
            "—",
            "Audit records written.",
        ),
        spec(
            AUDIT_EVENTS_DROPPED_TOTAL,
            Counter,
            None,
            "`reason` (where known)",
            "Audit events lost (buffer overflow, unencodable record, audit actor gone).",
        ),
        spec(
            AUDIT_SINK_UP,
            Gauge,
            None,
            "—",
            "1 while the audit sink works, 0 while it fails.",
        ),
        spec(
            INTERNAL_SEND_FAILURES_TOTAL,
            Counter,
            None,
            "`to`",
            "Messages an actor could not deliver to another, by recipient.",
        ),
        spec(
            REFUSALS_TOTAL,
            Counter,
            None,
            "`reason`",
            "Repeated refusals (forged or stale peer records, quarantined shards, failed groups) and verifications cancelled by their caller (`cancelled_verification`); only the first per reason and minute is audited in full.",
        ),
        spec(
            ADMISSION_BUSY_TOTAL,
            Counter,
            None,
            "`gpu_device`",
            "Requests refused with Busy: no device slot within the admission timeout.",
        ),
        spec(
            CUDA_LEAKED_BUFFERS_TOTAL,
            Counter,
            None,
            "—",
            "CUDA device or pinned buffers leaked on purpose because freeing them was not safe.",
        ),
        spec(
            CUDA_FREE_ERRORS_TOTAL,
            Counter,
            None,
            "—",
            "CUDA frees that reported a driver error.",
        ),
        spec(
            CUDA_KERNEL_FALLBACKS_TOTAL,
            Counter,
            None,
            "—",
            "Leaf-kernel launches that failed; those leaves were hashed on the host.",
        ),
        spec(
            CUDA_LEAF_KERNEL_OFF_TOTAL,
            Counter,
            None,
            "`gpu_device`",
            "CUDA devices whose leaf kernel was switched off (wrong hashes in its self-test when the device opened, or a failed launch); their leaves are hashed on the host from then on.",
        ),
    ]
};

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

/// The `result` label of a finished `seal` call.
fn seal_label<T>(result: &Result<T, VramError>) -> &'static str {
    match result.as_ref().map_err(VramError::innermost) {
        Ok(_) => "ok",
        Err(VramError::InvalidInput(_)) => "invalid_input",
        Err(VramError::InsufficientVram { .. }) => "insufficient_vram",
        Err(VramError::AllocationFailed { .. }) => "allocation_failed",
        Err(VramError::DigestMismatch { .. }) => "digest_mismatch",
        Err(VramError::Cancelled) => "cancelled",
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
    let mode = mode.metric_label();
    metrics::counter!(VERIFICATIONS_TOTAL, "mode" => mode, "result" => outcome.label(),
        "trigger" => trigger.label())
    .increment(1);
    if outcome != Outcome::Error {
        metrics::histogram!(VERIFICATION_DURATION_SECONDS, "mode" => mode)
            .record(elapsed.as_secs_f64());
    }
}

/// Counts a signature-only or `verify_info` check that reached a verdict.
pub(crate) fn record_signature_check(passed: bool) {
    let result = if passed { "pass" } else { "fail" };
    metrics::counter!(SIGNATURE_CHECKS_TOTAL, "result" => result).increment(1);
}

/// Counts an audit event a device actor emitted.
pub(crate) fn record_device_event(event_type: &'static str, device: u32) {
    metrics::counter!(EVENTS_TOTAL, "type" => event_type, "gpu_device" => device.to_string())
        .increment(1);
}

/// Counts audit records written to the sink.
pub(crate) fn record_audit_written(records: u64) {
    metrics::counter!(AUDIT_RECORDS_WRITTEN_TOTAL).increment(records);
}

/// Counts one lost audit event; `reason` labels the losses that happen outside the audit
/// actor (the actor's own losses carry their reason in its stats).
pub(crate) fn record_audit_dropped(reason: Option<&'static str>) {
    match reason {
        Some(reason) => metrics::counter!(AUDIT_EVENTS_DROPPED_TOTAL, "reason" => reason),
        None => metrics::counter!(AUDIT_EVENTS_DROPPED_TOTAL),
    }
    .increment(1);
}

/// Publishes whether the audit sink works.
pub(crate) fn set_audit_sink_up(up: bool) {
    metrics::gauge!(AUDIT_SINK_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts a message an actor could not deliver to `to`.
pub(crate) fn record_internal_send_failure(to: &'static str) {
    metrics::counter!(INTERNAL_SEND_FAILURES_TOTAL, "to" => to).increment(1);
}

/// Counts a CUDA buffer leaked on purpose.
pub(crate) fn record_cuda_leaked_buffer() {
    metrics::counter!(CUDA_LEAKED_BUFFERS_TOTAL).increment(1);
}

/// Counts a CUDA free that reported an error.
pub(crate) fn record_cuda_free_error() {
    metrics::counter!(CUDA_FREE_ERRORS_TOTAL).increment(1);
}

/// Counts a CUDA device's leaf kernel being switched off.
pub(crate) fn record_leaf_kernel_off(device: u32) {
    metrics::counter!(CUDA_LEAF_KERNEL_OFF_TOTAL, "gpu_device" => device.to_string()).increment(1);
}

/// Counts a failed leaf-kernel launch (hashed on the host instead).
pub(crate) fn record_cuda_kernel_fallback() {
    metrics::counter!(CUDA_KERNEL_FALLBACKS_TOTAL).increment(1);
}

/// Gives every metric in [`METRICS`] its description and unit, for exporters that print them
/// (Prometheus `# HELP` lines). Call it once after installing a recorder; calling it again is
/// harmless.
pub fn describe() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(unit)) => {
                metrics::describe_histogram!(m.name, unit, m.help)
            }
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The README's metrics table, generated from [`METRICS`]: a test keeps the README equal to it.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| name | kind | labels | what it counts or shows |\n|---|---|---|---|\n");
    for m in METRICS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            m.labels,
            m.help
        ));
    }
    out
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
        assert_eq!(seal_label(&ok), "ok");
        let no_room: Result<(), VramError> = Err(VramError::InsufficientVram {
            needed: 2,
            available: 1,
        });
        assert_eq!(seal_label(&no_room), "insufficient_vram");
        assert_eq!(seal_label(&gone), "error");
        let cancelled: Result<(), VramError> = Err(VramError::Cancelled);
        assert_eq!(seal_label(&cancelled), "cancelled");
    }
}
