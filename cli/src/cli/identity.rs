//! `identity`: prints the worker's identity public key (PEM SubjectPublicKeyInfo, ECDSA P-256)
//! and its key id. Give the PEM to challengers: it is all `verify-attestation --public-key`
//! needs to check this worker's `vram-attest-v3` attestations, and it cannot sign anything.
//!
//! The key is the one `VramResidency` uses: loaded from `--identity-key-file` (PKCS#8 PEM,
//! owner-only), else derived from the worker token. No device is started.

use std::path::PathBuf;

use clap::Args;
use vram_residency::config::read_identity_key_file;
use vram_residency::seal::identity::IdentityKey;

use super::Global;
use super::error::CliError;
use super::token::TokenSource;

/// Arguments of `identity`.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Read the identity key from this PKCS#8 PEM file (mode 0600 or stricter) instead of
    /// deriving it from the worker token.
    #[arg(long, value_name = "PATH")]
    pub identity_key_file: Option<PathBuf>,
}

/// Runs `identity`.
pub fn run(global: &Global, args: IdentityArgs) -> Result<(), CliError> {
    let key = match &args.identity_key_file {
        Some(path) => read_identity_key_file(path).map_err(|e| {
            CliError::from(e).hint("give an unencrypted PKCS#8 PEM P-256 key, mode 0600")
        })?,
        None => {
            let token = TokenSource::require(global.token_file.as_deref())?.load()?;
            IdentityKey::derive(&token)?
        }
    };
    let public = key.public()?;
    drop(key);
    print!("{}", public.pem);
    eprintln!("key id (sha256 of the SPKI DER): {}", public.key_id);
    Ok(())
}
