//! Messages for the `AuditActor`.

use chrono::{DateTime, Utc};
use ractor::RpcReplyPort;

use crate::audit::events::AuditEvent;
use crate::audit::refusals::RefusalReason;
use crate::error::VramError;

/// Counters the audit actor keeps (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditStats {
    /// Records written to the sink.
    pub written: u64,
    /// Events lost (buffer overflow, failing sink) since start.
    pub dropped: u64,
    /// Events waiting in the buffer.
    pub buffered: u64,
    /// Whether the sink's last write failed.
    pub sink_down: bool,
    /// Records an in-memory sink let go to stay within `Config::audit_memory_lines` (always 0
    /// for a file sink, which keeps everything).
    pub evicted: u64,
    /// Refusals counted instead of written one record each (`audit::refusals`).
    pub suppressed: u64,
}

/// Messages handled by `AuditActor`.
pub enum AuditMsg {
    /// Record an event (cast; never waits on the sink).
    Emit(DateTime<Utc>, AuditEvent),
    /// A refusal of a repeating kind (cast): its record, if any, is written only when it is the
    /// first of its reason in the window; otherwise it is counted into that reason's summary
    /// (`audit::refusals`).
    Refusal(DateTime<Utc>, RefusalReason, Option<Box<AuditEvent>>),
    /// Internal: a refusal window may have ended; write its summary.
    RefusalsDue,
    /// Write everything emitted before this message and make it durable (fsync).
    Flush(RpcReplyPort<Result<AuditStats, VramError>>),
    /// Like `Flush`, then the newest durable record's seq and MAC.
    Head(RpcReplyPort<Result<crate::types::AuditHead, VramError>>),
    /// Internal: the batch timer fired.
    Tick,
    /// The lines written so far (in-memory sink only; empty for a file sink).
    Lines(RpcReplyPort<Vec<String>>),
    /// Current counters.
    Stats(RpcReplyPort<AuditStats>),
    /// Fault injection: make every sink write fail (`true`) until cleared (`false`), to exercise
    /// the drop accounting and the fail-closed switch without breaking a real disk.
    SinkFault(bool),
}
