//! The command's error type: one message, an optional hint, and the exit code class.
//!
//! Library errors are classified here: `InvalidInput` is a usage error (2), integrity failures
//! (`SealVerificationFailed`, `DigestMismatch`) are 3, everything else (devices, backend, I/O,
//! audit sink) is an environment problem (4).

use std::fmt;
use std::process::ExitCode;

use vram_residency::VramError;

use super::untrusted;

/// Exit code classes, as documented in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Bad arguments or input: exit 2.
    Usage,
    /// Something did not verify: exit 3.
    Integrity,
    /// The environment (token file, I/O, devices) is at fault: exit 4.
    Environment,
}

impl Code {
    fn exit_code(self) -> u8 {
        match self {
            Self::Usage => 2,
            Self::Integrity => 3,
            Self::Environment => 4,
        }
    }
}

/// A failed command.
#[derive(Debug, Clone)]
pub struct CliError {
    /// Exit code class.
    pub code: Code,
    /// One line saying what went wrong.
    pub message: String,
    /// One line saying what to do about it.
    pub hint: Option<String>,
}

impl CliError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Code::Usage, message)
    }

    /// An integrity failure (exit 3).
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(Code::Integrity, message)
    }

    /// An environment problem (exit 4).
    pub fn env(message: impl Into<String>) -> Self {
        Self::new(Code::Environment, message)
    }

    /// Adds a hint line.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with context (`"sealing model.bin: "`).
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Prints the error (one line, plus a hint line) on stderr and returns the exit code.
    ///
    /// Both lines are sanitised and bounded here, in the one place every error leaves the
    /// command: messages quote file names, JSON member names and fields of records a peer
    /// wrote, and none of that may reach the terminal as an escape sequence.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {}", self.shown_message());
        if let Some(h) = self.shown_hint() {
            eprintln!("hint: {h}");
        }
        ExitCode::from(self.code.exit_code())
    }

    /// The message as [`CliError::report`] prints it: one line, sanitised, bounded.
    pub fn shown_message(&self) -> String {
        shown(&self.message)
    }

    /// The hint as [`CliError::report`] prints it: one line, sanitised, bounded.
    pub fn shown_hint(&self) -> Option<String> {
        self.hint.as_deref().map(shown)
    }

    /// Classifies an I/O error on a file the user named: not found is a usage error (2), any
    /// other failure an environment problem (4).
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            Self::usage(format!("{what}: no such file")).hint("check the path")
        } else {
            Self::env(format!("{what}: {e}"))
        }
    }
}

/// One line, sanitised and bounded: what may reach a terminal.
fn shown(s: &str) -> String {
    untrusted::bounded(&one_line(s), untrusted::MAX_MESSAGE_CHARS)
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl From<VramError> for CliError {
    fn from(e: VramError) -> Self {
        // A group member's error is classified by the member's own error; the message keeps
        // the group and the member it happened to.
        match e.innermost() {
            VramError::InvalidInput(m) => Self::usage(m.clone()),
            _ if e.is_integrity_failure() => Self::integrity(e.to_string()),
            VramError::AttestationInvalid(_) => Self::integrity(e.to_string()),
            VramError::DeviceStopped { .. } => Self::env(e.to_string()).hint(
                "the device stopped after an integrity failure; investigate, then reset it",
            ),
            // A model file that is not there is a usage error, as for the files the command
            // checks itself.
            VramError::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            } => Self::usage(e.to_string()).hint("check the path"),
            VramError::BackendUnavailable { .. } => Self::env(e.to_string())
                .hint("use --backend simulated, or check the driver and the device"),
            VramError::InsufficientVram { .. } => Self::env(e.to_string()).hint(
                "seal a smaller file, pick another --device, or (simulated devices) raise --device-capacity",
            ),
            _ => Self::env(e.to_string()),
        }
    }
}
