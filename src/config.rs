//! Start-up configuration: which devices, which worker, which token, which audit sink.
//!
//! `Config` is a builder. Setters never fail; a bad value is remembered and reported by
//! `VramResidency::start` as `InvalidInput`, so a misconfigured worker refuses to start instead
//! of running with a default the operator did not choose.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::VramError;
use crate::seal::identity::IdentityKey;
use crate::seal::keys::WorkerToken;
use crate::types::VerifyMode;
use crate::validation;

/// Which devices to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// `count` simulated devices of `capacity` bytes each.
    Simulated {
        /// How many devices.
        count: u32,
        /// Bytes of memory each.
        capacity: u64,
    },
    /// CUDA devices.
    Cuda,
}

/// Where audit events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSinkConfig {
    /// Kept in memory (read back with `VramResidency::audit_lines`): the newest
    /// [`Config::audit_memory_lines`] records (default 100 000), older ones counted as evicted.
    /// Meant for tests, demos and short jobs; a long-running worker should use
    /// [`Config::audit_log`], which keeps everything.
    Memory,
    /// Appended to a `vram-audit-v1` file.
    File(PathBuf),
}

enum TokenSource {
    None,
    Inline(WorkerToken),
    File(PathBuf),
}

/// Configuration for [`crate::VramResidency::start`].
pub struct Config {
    pub(crate) backend: BackendChoice,
    pub(crate) backend_reason: String,
    pub(crate) worker_id: String,
    token: TokenSource,
    identity_key_file: Option<PathBuf>,
    pub(crate) chunk_size: u64,
    pub(crate) audit: AuditSinkConfig,
    pub(crate) max_model_size: u64,
    pub(crate) headroom_bytes: u64,
    pub(crate) execute_verify: VerifyMode,
    pub(crate) call_timeout: Duration,
    pub(crate) seal_stall_timeout: Duration,
    pub(crate) fail_closed_audit: bool,
    pub(crate) audit_batch_size: usize,
    pub(crate) audit_flush_interval: Duration,
    pub(crate) audit_buffer_limit: usize,
    pub(crate) audit_memory_lines: usize,
    pub(crate) staging_bytes: usize,
    pub(crate) allow_integrated_gpu: bool,
    pub(crate) cuda_fault_injection: bool,
    pub(crate) device_queue_limit: usize,
    pub(crate) admission_timeout: Duration,
    pub(crate) scrub_interval: Option<Duration>,
    pub(crate) scrub_bytes_per_sec: Option<u64>,
    errors: Vec<VramError>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = match &self.token {
            TokenSource::None => "none".to_string(),
            TokenSource::Inline(_) => "<redacted>".to_string(),
            TokenSource::File(p) => format!("file {}", crate::validation::shown_path(p)),
        };
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("worker_id", &self.worker_id)
            .field("worker_token", &token)
            .field(
                "identity_key_file",
                &self
                    .identity_key_file
                    .as_deref()
                    .map(crate::validation::shown_path),
            )
            .field("chunk_size", &self.chunk_size)
            .field("audit", &self.audit)
            .field("max_model_size", &self.max_model_size)
            .field("headroom_bytes", &self.headroom_bytes)
            .field("execute_verify", &self.execute_verify)
            .field("fail_closed_audit", &self.fail_closed_audit)
            .finish_non_exhaustive()
    }
}

impl Config {
    fn with_backend(backend: BackendChoice, reason: String) -> Self {
        Self {
            backend,
            backend_reason: reason,
            worker_id: "worker-1".into(),
            token: TokenSource::None,
            identity_key_file: None,
            chunk_size: 1 << 20,
            audit: AuditSinkConfig::Memory,
            max_model_size: validation::DEFAULT_MAX_MODEL_SIZE,
            headroom_bytes: 0,
            execute_verify: VerifyMode::Full,
            call_timeout: Duration::from_secs(300),
            seal_stall_timeout: Duration::from_secs(30),
            fail_closed_audit: false,
            audit_batch_size: 256,
            audit_flush_interval: Duration::from_millis(50),
            audit_buffer_limit: 65_536,
            audit_memory_lines: crate::audit::writer::DEFAULT_MEMORY_LINES,
            staging_bytes: 8 << 20,
            allow_integrated_gpu: false,
            cuda_fault_injection: false,
            device_queue_limit: 64,
            admission_timeout: DEFAULT_ADMISSION_TIMEOUT,
            scrub_interval: None,
            scrub_bytes_per_sec: None,
            errors: Vec::new(),
        }
    }

    /// `count` simulated devices of `capacity_bytes` each.
    pub fn simulated(count: u32, capacity_bytes: u64) -> Self {
        let mut c = Self::with_backend(
            BackendChoice::Simulated {
                count,
                capacity: capacity_bytes,
            },
            "simulated devices requested".into(),
        );
        if count == 0 {
            c.errors.push(VramError::invalid(
                "simulated device count must be at least 1",
            ));
        }
        if capacity_bytes == 0 {
            c.errors.push(VramError::invalid(
                "simulated device capacity must be at least 1 byte",
            ));
        }
        c
    }

    /// CUDA when a driver library and at least one device are present, else 2 simulated
    /// devices of 1 GiB. The probe asks the loader for the driver library before any other CUDA
    /// call (cudarc panics without it), so this never panics; the fallback is logged once, with
    /// the reason, and [`Config::backend_description`] says which was chosen and why.
    pub fn auto() -> Self {
        match crate::gpu::cuda::probe() {
            Ok(found) => Self::with_backend(
                BackendChoice::Cuda,
                format!(
                    "auto: {} CUDA device(s): {}",
                    found.device_count,
                    found.names.join(", ")
                ),
            ),
            Err(why) => {
                let mut c = Self::simulated(2, 1 << 30);
                c.backend_reason = format!("auto: {why}; using 2 simulated devices of 1 GiB");
                tracing::info!("no CUDA: {why}; using 2 simulated devices of 1 GiB");
                c
            }
        }
    }

    /// CUDA devices only (every device the driver shows); `start` fails with `VramError::Cuda`
    /// when there is no driver library or no device.
    pub fn cuda() -> Self {
        Self::with_backend(BackendChoice::Cuda, "CUDA requested".into())
    }

    /// Accept integrated GPUs, whose "device memory" is host memory (default: refused at
    /// start-up with `PolicyViolation`, VP-001). CUDA only.
    pub fn allow_integrated_gpu(mut self, allow: bool) -> Self {
        self.allow_integrated_gpu = allow;
        self
    }

    /// Accept injected faults on CUDA devices (`FlipBits` as a device-side XOR,
    /// `FailNextAlloc`), for tests and the demo. Off by default: a production worker refuses
    /// them with `Unsupported`. Simulated devices always accept faults.
    pub fn cuda_fault_injection(mut self, on: bool) -> Self {
        self.cuda_fault_injection = on;
        self
    }

    /// Which backend was chosen, and why.
    pub fn backend_description(&self) -> String {
        match &self.backend {
            BackendChoice::Simulated { count, capacity } => format!(
                "simulated: {count} device(s) of {capacity} bytes ({})",
                self.backend_reason
            ),
            BackendChoice::Cuda => format!("cuda ({})", self.backend_reason),
        }
    }

    /// The worker id (1..=256 of `[A-Za-z0-9_-]`).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        if let Err(e) = validation::validate_identifier("worker_id", &id) {
            self.errors.push(e);
        }
        self.worker_id = id;
        self
    }

    /// The worker token (at least 16 bytes). Keys are derived from it; it is never printed.
    pub fn worker_token(mut self, token: impl AsRef<[u8]>) -> Self {
        match WorkerToken::new(token.as_ref().to_vec()) {
            Ok(t) => self.token = TokenSource::Inline(t),
            Err(e) => self.errors.push(e),
        }
        self
    }

    /// Use an already loaded token (e.g. from [`read_token_file`]).
    pub fn worker_token_value(mut self, token: WorkerToken) -> Self {
        self.token = TokenSource::Inline(token);
        self
    }

    /// Whether this configuration runs simulated devices.
    pub fn is_simulated(&self) -> bool {
        matches!(self.backend, BackendChoice::Simulated { .. })
    }

    /// Read the worker token from a file at start-up. The file must not be readable by group or
    /// others (mode 0600 or stricter); one trailing newline is ignored.
    pub fn worker_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token = TokenSource::File(path.into());
        self
    }

    /// Read the worker's identity key (which signs `vram-attest-v3` attestations and signed
    /// audit heads) from a file at start-up: an unencrypted PKCS#8 PEM ECDSA P-256 private key,
    /// checked like the token file (a regular file, not a symbolic link, owned by this user,
    /// not readable by group or others). Without it the key is derived from the worker token.
    pub fn identity_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity_key_file = Some(path.into());
        self
    }

    /// Merkle leaf size: a power of two in 4 KiB ..= 64 MiB (default 1 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        if let Err(e) = validation::validate_chunk_size(bytes) {
            self.errors.push(e);
        }
        self.chunk_size = bytes;
        self
    }

    /// Append audit records to this `vram-audit-v1` file (created 0600 if absent; an existing
    /// log is verified and continued).
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit = AuditSinkConfig::File(path.into());
        self
    }

    /// Largest accepted shard (default 100 GiB).
    pub fn max_model_size(mut self, bytes: u64) -> Self {
        if bytes == 0 {
            self.errors
                .push(VramError::invalid("max_model_size must be at least 1"));
        }
        self.max_model_size = bytes;
        self
    }

    /// Bytes to keep free on every device (default 0).
    pub fn headroom_bytes(mut self, bytes: u64) -> Self {
        self.headroom_bytes = bytes;
        self
    }

    /// How `execute` verifies before running (default `Full`).
    pub fn execute_verify(mut self, mode: VerifyMode) -> Self {
        if let Err(e) = mode.validate() {
            self.errors
                .push(VramError::invalid(format!("execute_verify: {e}")));
        }
        self.execute_verify = mode;
        self
    }

    /// Upper bound on how long one call waits for an actor (default 300 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.errors
                .push(VramError::invalid("call timeout must be positive"));
        }
        self.call_timeout = timeout;
        self
    }

    /// How long a seal waits for the next staging piece from its source before it gives up
    /// with `Timeout` (default 30 s). A seal's upload runs in its device's mailbox (device
    /// memory is only written there), so a stalled source holds that device at most this long.
    pub fn seal_stall_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.errors
                .push(VramError::invalid("seal stall timeout must be positive"));
        }
        self.seal_stall_timeout = timeout;
        self
    }

    /// Refuse new seals with `AuditUnavailable` while the audit sink is failing.
    pub fn fail_closed_audit(mut self, on: bool) -> Self {
        self.fail_closed_audit = on;
        self
    }

    /// Audit batching: write after `events` events or `interval`, whichever comes first.
    pub fn audit_batching(mut self, events: usize, interval: Duration) -> Self {
        if events == 0 {
            self.errors
                .push(VramError::invalid("audit batch size must be at least 1"));
        }
        if interval < Duration::from_millis(1) {
            self.errors.push(VramError::invalid(
                "audit flush interval must be at least 1 ms",
            ));
        }
        if interval < Duration::from_millis(1) {
            self.errors.push(VramError::invalid(
                "audit flush interval must be at least 1 ms",
            ));
        }
        self.audit_batch_size = events;
        self.audit_flush_interval = interval;
        self
    }

    /// Lines the in-memory audit sink (used when no [`Config::audit_log`] is given) keeps:
    /// the newest `lines` (default 100 000); older ones are let go and counted
    /// (`AuditStats::evicted`). A long-running worker should log to a file instead.
    pub fn audit_memory_lines(mut self, lines: usize) -> Self {
        if lines == 0 {
            self.errors.push(VramError::invalid(
                "the in-memory audit sink must keep at least 1 line",
            ));
        }
        self.audit_memory_lines = lines;
        self
    }

    /// Most events held while the sink is failing before further ones are counted as dropped.
    pub fn audit_buffer_limit(mut self, events: usize) -> Self {
        if events == 0 {
            self.errors
                .push(VramError::invalid("audit buffer limit must be at least 1"));
        }
        self.audit_buffer_limit = events;
        self
    }

    /// Most requests one device works on or holds in its mailbox at once (default 64). Callers
    /// beyond that wait for room (back-pressure, up to [`Config::admission_timeout`]), so a flood of calls on one device
    /// cannot grow its mailbox without bound, and never delays another device. Releases and
    /// resets are always admitted.
    pub fn device_queue_limit(mut self, requests: usize) -> Self {
        if requests == 0 || requests > 1 << 20 {
            self.errors.push(VramError::invalid(
                "device queue limit must be 1..=1048576 requests",
            ));
        }
        self.device_queue_limit = requests;
        self
    }

    /// How long a request waits for a slot on its device (see
    /// [`Config::device_queue_limit`]) before it gives up with `VramError::Busy` (default 5 s):
    /// load shedding, so a flood of callers gets a quick, retriable answer instead of queueing
    /// without end. Counted in `vram_admission_busy_total`, not audited. Releases, resets and
    /// status queries (`devices`, `capacity`) never wait for a slot.
    pub fn admission_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            self.errors
                .push(VramError::invalid("admission timeout must be positive"));
        }
        self.admission_timeout = timeout;
        self
    }

    /// Staging buffer for streaming seals (default 8 MiB; rounded to a multiple of the chunk
    /// size).
    pub fn staging_bytes(mut self, bytes: usize) -> Self {
        if bytes == 0 {
            self.errors
                .push(VramError::invalid("staging buffer must be at least 1 byte"));
        }
        self.staging_bytes = bytes;
        self
    }

    /// Re-verify every resident shard in full in the background, like a filesystem scrub: each
    /// device looks at its next shard (round robin) every `interval`, between requests. A
    /// mismatch takes the fail-closed path exactly as a requested verification does.
    pub fn scrub_interval(mut self, interval: Duration) -> Self {
        if interval.is_zero() || interval > Duration::from_secs(365 * 86_400) {
            self.errors.push(VramError::invalid(
                "scrub interval must be positive and at most a year",
            ));
        }
        self.scrub_interval = Some(interval);
        self
    }

    /// Caps the background scrub's read rate per device: after scrubbing a shard of `B` bytes
    /// the next scrub waits at least `B / bytes_per_sec` seconds.
    pub fn scrub_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            self.errors
                .push(VramError::invalid("scrub rate limit must be positive"));
        }
        self.scrub_bytes_per_sec = Some(bytes_per_sec);
        self
    }

    /// Checks everything and produces the worker token.
    pub(crate) fn take_token(&mut self) -> Result<WorkerToken, VramError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        match std::mem::replace(&mut self.token, TokenSource::None) {
            TokenSource::None => Err(VramError::invalid(
                "a worker token is required: use Config::worker_token or worker_token_file",
            )),
            TokenSource::Inline(t) => Ok(t),
            TokenSource::File(p) => read_token_file(&p),
        }
    }

    /// The identity key: read from [`Config::identity_key_file`], else derived from `token`.
    pub(crate) fn take_identity(&mut self, token: &WorkerToken) -> Result<IdentityKey, VramError> {
        match self.identity_key_file.take() {
            None => IdentityKey::derive(token),
            Some(path) => read_identity_key_file(&path),
        }
    }
}

/// How long a request waits for a device slot by default ([`Config::admission_timeout`]).
pub const DEFAULT_ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest token file read (a token is far shorter; this only bounds the read).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a token file, refusing one that group or others can read.
///
/// On Unix the file is opened once, without following a symlink (`O_NOFOLLOW`) and without
/// blocking on a FIFO (`O_NONBLOCK`), and that open handle is checked (`fstat`): a regular file,
/// owned by the effective user, not readable or writable by group or others
/// ([`validation::owner_only`]). The bytes are read through the same handle, so the file cannot
/// be swapped between the check and the read, into one zeroizing buffer sized from the file's
/// length (at most 64 KiB): no growing buffer leaves copies of the token in freed memory. A
/// file that grows while it is read is refused.
pub fn read_token_file(path: &Path) -> Result<WorkerToken, VramError> {
    let mut bytes = read_secret_file(path)?;
    // The buffer itself moves into the token (no copy); the `Zeroizing` left behind is empty.
    WorkerToken::new(std::mem::take(&mut *bytes))
}

/// Reads an identity key file (PKCS#8 PEM P-256) with the checks of [`read_token_file`].
pub fn read_identity_key_file(path: &Path) -> Result<IdentityKey, VramError> {
    let what = format!("identity key file {}", crate::validation::shown_path(path));
    let pem = read_owner_only_file(path, &validation::owner_only::IDENTITY_KEY_FILE)?;
    IdentityKey::from_pkcs8_pem(&what, &pem)
}

/// Reads a secret from a file under the token file's rules (see [`read_token_file`]: owner-only,
/// no symlink, at most 64 KiB, one zeroizing buffer, refused if it grows while read), one
/// trailing newline (`\n` or `\r\n`) removed. For other credentials kept like the worker token,
/// such as a challenger's bearer token (`examples/attest_server.rs`).
pub fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, VramError> {
    read_owner_only_file(path, &validation::owner_only::TOKEN_FILE)
}

/// [`read_secret_file`] under `rule`, which also names the file in errors ("token file",
/// "identity key file").
fn read_owner_only_file(
    path: &Path,
    rule: &validation::owner_only::Rule,
) -> Result<zeroize::Zeroizing<Vec<u8>>, VramError> {
    use std::io::Read;
    let what = rule.what;
    let shown = crate::validation::shown_path(path);
    let (mut file, meta) =
        validation::owner_only::open(path, rule, std::fs::OpenOptions::new().read(true))
            .map_err(VramError::invalid)?;
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(VramError::invalid(format!(
            "{what} {shown} is {} bytes; a {what} holds at most {MAX_TOKEN_FILE_BYTES} bytes",
            meta.len()
        )));
    }
    let expected = usize::try_from(meta.len())
        .map_err(|_| VramError::invalid(format!("{what} {shown} is too large")))?;
    // One byte more than the file's length, so that growth shows as a read past the end.
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; expected.saturating_add(1)]);
    let mut filled = 0usize;
    while let Some(rest) = bytes.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => filled = filled.saturating_add(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(VramError::invalid(format!(
                    "cannot read {what} {shown}: {e}"
                )));
            }
        }
    }
    if filled > expected {
        return Err(VramError::invalid(format!(
            "{what} {shown} grew while it was read; refused (write it first, then start)"
        )));
    }
    bytes.truncate(filled);
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}
