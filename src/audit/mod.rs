//! The `vram-audit-v1` audit trail.
//!
//! * [`events`] — what is recorded, and the sanitiser every string passes through;
//! * [`format`](mod@format) — one record's line encoding and the HMAC chain;
//! * [`writer`] — the crash-safe, append-only file writer (and the in-memory chain);
//! * [`verify`] — the offline verifier that names the first bad line;
//! * [`refusals`] — repeated refusals counted, with one summary record per reason and window.
//!
//! The `AuditActor` (in `src/actors/`) batches events into a writer; anyone holding the worker
//! token can check a log offline with [`verify_log`].

pub mod events;
pub mod format;
pub mod refusals;
#[cfg(test)]
mod test_support;
pub mod verify;
pub mod writer;

pub use verify::{
    AuditHead, AuditProblem, AuditReport, HeadProblem, LogStatus, ProblemKind, verify_lines,
    verify_log, verify_log_to_head,
};
