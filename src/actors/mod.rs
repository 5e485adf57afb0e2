//! The actors: one `GpuActor` per device, the `SealKeeper`, the `AuditActor`, and the
//! `Supervisor` that starts them linked and stops them in order.
//!
//! State lives inside actors and changes only in mailbox order; nothing here shares a lock with
//! another actor. Handles talk to actors through [`ask`], which turns every way a call can fail
//! (actor gone, reply dropped, timeout) into a precise [`VramError`].
//!
//! Every message carries the sender's tracing span, and every handler runs inside it, in a
//! span `actor{name}` of its own ([`spans`]): what an actor logs while serving a call is a
//! child of that call's `vram.*` span.

pub mod audit_actor;
pub mod gpu_actor;
pub mod seal_keeper;
pub(crate) mod spans;
pub mod supervisor;

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

use crate::audit::events::AuditEvent;
use crate::audit::refusals::{REFUSALS_TOTAL, RefusalReason};
use crate::error::VramError;
use crate::messages::audit::AuditMsg;

/// Casts `event` to the audit actor, never waiting. A cast fails only when the audit actor is
/// gone (shutdown, or a crash that stops the system); the loss is counted in
/// `vram_audit_events_dropped_total`, never ignored.
pub(crate) fn emit_audit(audit: &ActorRef<AuditMsg>, event: AuditEvent) {
    if audit
        .cast(AuditMsg::Emit(chrono::Utc::now(), event))
        .is_err()
    {
        crate::telemetry::record_audit_dropped(Some("audit actor gone"));
        tracing::warn!("an audit event was lost: the audit actor is gone");
    }
}

/// Reports a refusal of a repeating kind to the audit actor, never waiting: counted in
/// `vram_refusals_total{reason}` here, and `record` (if any) written only when it is the first
/// of its reason in the window (`audit::refusals`).
pub(crate) fn refuse_audit(
    audit: &ActorRef<AuditMsg>,
    reason: RefusalReason,
    record: Option<AuditEvent>,
) {
    metrics::counter!(REFUSALS_TOTAL, "reason" => reason.as_str()).increment(1);
    let message = AuditMsg::Refusal(chrono::Utc::now(), reason, record.map(Box::new));
    if audit.cast(message).is_err() {
        metrics::counter!("vram_audit_events_dropped_total", "reason" => "audit actor gone")
            .increment(1);
    }
}

/// Calls `actor` and waits at most `timeout` for the reply. `gone` is the error to report when
/// the actor is not there to answer (stopped, crashed, or dropped the reply while stopping).
pub(crate) async fn ask<M, T>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
    what: &str,
    gone: impl FnOnce() -> VramError,
) -> Result<T, VramError>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(VramError::Timeout(what.to_string())),
        Ok(CallResult::SenderError) | Err(_) => Err(gone()),
    }
}
