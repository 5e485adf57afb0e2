//! `seal --model-signature BUNDLE --publisher-key PEM [--resource NAME]`: loads and verifies a
//! model-signing bundle before anything starts, and ties each sealed file to its resource in
//! the signed manifest.
//!
//! A bundle that does not verify (wrong key, altered, certificate or keyless, truncated,
//! oversized) is refused before a device is touched, exit 3, naming the bundle. A file that is
//! not the resource it is sealed as is refused by the seal (`ProvenanceMismatch`, exit 3),
//! naming the resource.

use std::path::Path;
use std::sync::Arc;

use vram_residency::provenance::bundle::MAX_BUNDLE_BYTES;
use vram_residency::provenance::publisher_key::MAX_PUBLIC_KEY_PEM_BYTES;
use vram_residency::{ModelSignature, SealRequest, VramError, validation};

use super::error::CliError;

/// A verified signature and the `--resource` name, if one was given.
pub struct Signed {
    /// The verified bundle.
    pub signature: Arc<ModelSignature>,
    /// `--resource`.
    pub resource: Option<String>,
}

impl Signed {
    /// `request` checked against the resource `--resource` names, or `path`'s file name.
    pub fn apply(&self, request: SealRequest, path: &Path) -> SealRequest {
        let resource = resource_name(self.resource.as_deref(), path);
        request.provenance(Arc::clone(&self.signature), resource)
    }
}

/// The resource a file is sealed as: `--resource`, else the file's name.
pub fn resource_name(explicit: Option<&str>, path: &Path) -> String {
    explicit.map(str::to_owned).unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// Reads and verifies `--model-signature` with `--publisher-key`; a refusal names the
/// `resources` the files were to be sealed as.
pub fn load(
    bundle: &Path,
    key: &Path,
    resources: &[String],
) -> Result<Arc<ModelSignature>, CliError> {
    let key_pem = super::untrusted::read_bounded(key, "publisher key", MAX_PUBLIC_KEY_PEM_BYTES)?;
    let bytes = super::untrusted::read_bounded(bundle, "model signature", MAX_BUNDLE_BYTES)?;
    let shown = validation::shown_path(bundle);
    ModelSignature::from_bundle(&bytes, &key_pem)
        .map(Arc::new)
        .map_err(|e| match e {
            VramError::InvalidInput(m) => {
                CliError::usage(format!("{}: {m}", validation::shown_path(key)))
                    .hint("give the publisher's public key: PEM \"BEGIN PUBLIC KEY\", ECDSA P-256 or P-384")
            }
            other => CliError::from(other)
                .context(format!("{shown} (signing {})", resources.join(", ")))
                .hint("nothing was sealed; check the bundle and that --publisher-key is the key that signed it"),
        })
}
