//! Where the worker token comes from: `--token-file` (permission-checked by
//! `vram_residency::config::read_token_file`), the `VRAM_WORKER_TOKEN` environment variable, or
//! — for `demo` and `devices` only — a random 32-byte hex token made for this run.
//!
//! The token bytes live in zeroizing buffers, are handed to the library and the verifiers, and
//! are never printed or logged.

use std::path::{Path, PathBuf};

use rand::RngCore;
use vram_residency::{Config, VramError, WorkerToken};
use zeroize::Zeroizing;

use super::error::CliError;

/// The environment variable holding the token.
pub const TOKEN_ENV: &str = "VRAM_WORKER_TOKEN";

/// Where the token was found.
pub enum TokenSource {
    /// `--token-file PATH`.
    File(PathBuf),
    /// `VRAM_WORKER_TOKEN`.
    Env(Zeroizing<Vec<u8>>),
    /// Made for this run.
    Generated(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe().as_str())
    }
}

fn missing() -> CliError {
    CliError::usage("no worker token: pass --token-file PATH or set VRAM_WORKER_TOKEN")
        .hint("make one with: (umask 077; openssl rand -hex 32 > worker.token), then pass --token-file worker.token")
}

fn token_error(e: VramError) -> CliError {
    let msg = match e {
        VramError::InvalidInput(m) => m,
        other => other.to_string(),
    };
    CliError::env(msg)
}

impl TokenSource {
    /// `--token-file`, else `VRAM_WORKER_TOKEN`; `None` when neither is given.
    pub fn find(token_file: Option<&Path>) -> Option<Self> {
        if let Some(p) = token_file {
            return Some(Self::File(p.to_path_buf()));
        }
        match std::env::var_os(TOKEN_ENV) {
            Some(v) if !v.is_empty() => Some(Self::Env(Zeroizing::new(v.into_encoded_bytes()))),
            _ => None,
        }
    }

    /// Like [`TokenSource::find`], but a missing token is a usage error.
    pub fn require(token_file: Option<&Path>) -> Result<Self, CliError> {
        Self::find(token_file).ok_or_else(missing)
    }

    /// Like [`TokenSource::find`], but makes a random 32-byte hex token when none is given.
    pub fn find_or_generate(token_file: Option<&Path>) -> Self {
        Self::find(token_file).unwrap_or_else(|| {
            let mut raw = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut *raw);
            Self::Generated(Zeroizing::new(hex::encode(*raw).into_bytes()))
        })
    }

    /// Whether the token was made for this run.
    pub fn is_generated(&self) -> bool {
        matches!(self, Self::Generated(_))
    }

    /// Where the token came from, without the token.
    pub fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("token file {}", vram_residency::validation::shown_path(p)),
            Self::Env(_) => format!("${TOKEN_ENV}"),
            Self::Generated(_) => "a random 32-byte hex token made for this run".to_string(),
        }
    }

    /// Loads and checks the token (file permissions, length). Token-file and length problems
    /// are environment problems (exit 4).
    pub fn load(&self) -> Result<WorkerToken, CliError> {
        match self {
            Self::File(p) => vram_residency::config::read_token_file(p)
                .map_err(token_error)
                .map_err(|e| {
                    if e.message.contains("readable by group or others") {
                        e.hint(format!("chmod 600 {}", p.display()))
                    } else {
                        e.hint(format!(
                            "the token file must exist and be readable by you only (mode 0600); or set {TOKEN_ENV}"
                        ))
                    }
                }),
            Self::Env(bytes) => WorkerToken::new(bytes.to_vec())
                .map_err(token_error)
                .map_err(|e| e.context(format!("${TOKEN_ENV}"))),
            Self::Generated(bytes) => WorkerToken::new(bytes.to_vec()).map_err(token_error),
        }
    }

    /// Gives the token to a configuration.
    pub fn apply(&self, config: Config) -> Config {
        match self {
            Self::File(p) => config.worker_token_file(p.clone()),
            Self::Env(bytes) | Self::Generated(bytes) => config.worker_token(bytes.as_slice()),
        }
    }
}
