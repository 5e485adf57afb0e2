//! `audit verify LOG`: walks a `vram-audit-v1` log's HMAC chain with the audit key derived from
//! the worker token, prints how many records verified, counts by event type, how many times the
//! log was reopened, and the first problem with its line number. Exit 0 only when intact, 3 when
//! not, 2 when the file does not exist, 4 when it cannot be read. With `--head SEQ:MAC` (a head
//! kept elsewhere) a log that stops short of it or differs at it is not intact (exit 3); without
//! it, a log that does not end with `AuditLogClosed` is reported *open* (exit 0).

use std::path::PathBuf;

use clap::Args;
use vram_residency::AuditHead;
use vram_residency::audit::{self, AuditReport, HeadProblem, LogStatus, ProblemKind};
use vram_residency::validation;

use super::Global;
use super::error::CliError;
use super::token::TokenSource;
use super::untrusted;

/// Arguments of `audit verify`.
#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The audit log (JSON Lines, vram-audit-v1).
    #[arg(value_name = "LOG")]
    pub log: PathBuf,

    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// A head kept elsewhere (`VramResidency::audit_head`, an attestation's `audit_head`): the
    /// log must reach record SEQ with this MAC (64 lowercase hex), else it is not intact.
    #[arg(long, value_name = "SEQ:MAC")]
    pub head: Option<String>,
}

/// Runs `audit verify`.
pub fn run_verify(global: &Global, args: AuditVerifyArgs) -> Result<(), CliError> {
    let head = match &args.head {
        None => None,
        Some(text) => Some(AuditHead::parse_arg(text).ok_or_else(|| {
            CliError::usage("--head must be SEQ:MAC (decimal seq, 64 lowercase hex characters)")
        })?),
    };
    let token = TokenSource::require(global.token_file.as_deref())?.load()?;
    let shown = validation::shown_path(&args.log);
    match std::fs::metadata(&args.log) {
        Ok(m) if !m.is_file() => {
            return Err(CliError::usage(format!("{shown} is not a regular file")));
        }
        Ok(_) => {}
        Err(e) => return Err(CliError::io(format!("cannot read audit log {shown}"), &e)),
    }
    let report = match &head {
        Some(head) => audit::verify_log_to_head(&args.log, &token, head),
        None => audit::verify_log(&args.log, &token),
    }
    .map_err(|e| CliError::io(format!("cannot read audit log {shown}"), &e))?;
    drop(token);

    if args.json {
        let value = serde_json::json!({
            "log": shown,
            "intact": report.is_intact(),
            "status": report.status(),
            "report": report,
        });
        // Problem details quote the log's bytes; serde_json escapes C0 controls only.
        println!("{}", untrusted::json(value));
    } else {
        print_report(&shown, &report);
    }
    check_intact(&shown, &report)
}

/// Prints a report for people. Every line is sanitised: event type names and problem details
/// come from the log, `shown` may be a hostile file name.
pub fn print_report(shown: &str, report: &AuditReport) {
    let say = |line: String| println!("{}", untrusted::text(&line));
    say(format!("audit log {shown}"));
    say(format!(
        "  records verified: {} (last seq {})",
        report.records, report.last_seq
    ));
    say(format!("  resumptions:      {}", report.resumptions));
    if report.counts_by_type.is_empty() {
        say("  events:           none".to_string());
    } else {
        say("  events by type:".to_string());
        for (kind, n) in &report.counts_by_type {
            say(format!("    {kind:<26} {n:>8}"));
        }
    }
    if let Some(head) = &report.head {
        say(format!("  head:             {head}"));
    }
    match (&report.first_problem, &report.head_problem) {
        (Some(p), _) => say(format!(
            "  status:           NOT INTACT — {}",
            untrusted::bounded(&p.to_string(), untrusted::MAX_MESSAGE_CHARS)
        )),
        (None, Some(h)) => say(format!("  status:           NOT INTACT — {h}")),
        (None, None) if report.status() == LogStatus::Closed => {
            say("  status:           intact (closed by AuditLogClosed)".to_string());
        }
        (None, None) => say(
            "  status:           open: intact so far, but the log does not end with \
             AuditLogClosed, so its tail is not vouched for (check it against a head kept \
             elsewhere with --head SEQ:MAC)"
                .to_string(),
        ),
    }
}

/// Exit 0 when intact; otherwise an integrity error naming the line.
pub fn check_intact(shown: &str, report: &AuditReport) -> Result<(), CliError> {
    let Some(problem) = &report.first_problem else {
        return match &report.head_problem {
            None => Ok(()),
            Some(h @ HeadProblem::ZeroHead { .. }) => Err(CliError::integrity(format!(
                "audit log {shown} is not intact: {h}"
            ))
            .hint("pass the head the worker reported (VramResidency::audit_head, an attestation's audit_head)")),
            Some(h) => Err(
                CliError::integrity(format!("audit log {shown} is not intact: {h}")).hint(
                    "the head was kept elsewhere: a log that stops short of it was cut; \
                         one that differs at it was rewritten (or the head is from another log)",
                ),
            ),
        };
    };
    let err = CliError::integrity(format!("audit log {shown} is not intact: {problem}"));
    Err(match problem.kind {
        ProblemKind::TornTail { .. } => err.hint(
            "a torn tail comes from a crash during a write; the worker cuts it when it reopens the log",
        ),
        ProblemKind::MacMismatch => err.hint(
            "records before that line verified; if the log is genuine, check that the token is the one that wrote it",
        ),
        _ => err,
    })
}
