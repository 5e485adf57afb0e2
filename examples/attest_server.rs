//! A worker that holds a sealed tensor-parallel model and answers a control plane over HTTP.
//!
//! ```sh
//! cargo run --example attest_server --features http-example
//! cargo run --example attest_server --features http-example -- --listen 127.0.0.1:9000 \
//!     --devices 4 --size 8388608 --token-file worker.token --audit-log audit.jsonl \
//!     --challenger-token-file challenger.token --max-concurrent 2
//! ```
//!
//! Endpoints (JSON in and out, except `/metrics`):
//!
//! * `POST /attest` with `Authorization: Bearer <challenger token>` and `{"nonce": "<hex>"}` — a
//!   fresh challenge of 16..=1024 bytes, lowercase or uppercase hex. Without the challenger's
//!   token (compared in constant time) the answer is `401` and nothing is verified. At most
//!   `--max-concurrent` challenges (default 4) are answered at once; beyond that the answer is
//!   `429` with `Retry-After`, at once, so a storm of challenges cannot queue up work. A body over
//!   4 KiB is `413`. The worker answers with `VramResidency::attest_group_signed`: it verifies
//!   every member of its tensor-parallel group (per `Config::execute_verify`, `Full` here) and
//!   answers `200` with a `vram-attest-v3` bundle (a sigstore bundle holding a DSSE envelope,
//!   signed with the worker's identity key): the group record and one statement per member
//!   under the same nonce, in `shard_index` order (`.specs/attestation-v3.md`). A member that fails verification fails the whole group (fail-all) and the
//!   challenge with it: `409` with `{"error": "…"}` naming the member, and no attestation at
//!   all. A malformed body or nonce is `400`; a device busy past the admission timeout `503` with
//!   `Retry-After`; a worker shutting down or a lost device `503`.
//! * `GET /metrics` — the crate's metrics in the Prometheus text format (names in
//!   `vram_residency::telemetry` and the README); the verification-duration histogram has
//!   buckets, so it aggregates across workers.
//! * `GET /healthz` — `200 {"status":"ok"}` while every device accepts work; `503
//!   {"status":"degraded","devices":[…]}` naming each stopped or lost device otherwise. It is
//!   answered from state a background task keeps up to date (every 250 ms), never through a
//!   device's mailbox, so it stays fast however busy the devices are; state older than 10 s is
//!   `503 {"status":"stale"}`.
//!
//! The worker token comes from `--token-file PATH` (owner-only permissions) or
//! `VRAM_WORKER_TOKEN`; the challenger token from `--challenger-token-file PATH`, read under the
//! same rules (owner-only, one trailing newline ignored; 16 or more of the characters a bearer
//! token may hold, e.g. `openssl rand -hex 32`). With neither, the worker writes a fresh random
//! one to an owner-only file in the temp directory, prints that file's path (never the token),
//! and deletes it at exit. The worker prints its identity public key at start; the control plane
//! takes it at provisioning and checks the bundle with it alone
//! (`verify_signed_group_attestation` and an `AttestationPolicy`): it never holds the worker
//! token, so it can check residency proofs and mint none. It also holds the challenger token to
//! be heard, the only secret that crosses the wire (in its header: use TLS in front of the
//! worker beyond a trusted network).
//! Ctrl-C or SIGTERM stops it cleanly: in-flight requests finish, the model is released, and the
//! audit log ends with `AuditLogClosed`. `tests/http_attest.rs` plays that control plane against
//! this router, and against this program in a process of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::sync::{Semaphore, watch};
use vram_residency::{
    Config, GroupRequest, SealRequest, SealedGroup, SignedAttestation, VramError, VramResidency,
};
use zeroize::Zeroizing;

#[path = "support/bearer.rs"]
pub mod bearer;
#[path = "support/shutdown.rs"]
mod shutdown;

/// The largest request body accepted: a 1024-byte nonce in hex plus room for the JSON around it.
const MAX_BODY_BYTES: usize = 4096;

/// Challenges answered at once unless `--max-concurrent` says otherwise.
pub const DEFAULT_MAX_CONCURRENT: usize = 4;

/// How often the health state is refreshed, and when it counts as stale.
const HEALTH_POLL: Duration = Duration::from_millis(250);
const HEALTH_STALE: Duration = Duration::from_secs(10);

/// What `429` and a busy `503` tell a challenger to wait, in seconds.
const RETRY_AFTER_SECS: u32 = 1;

/// Shortest challenger token accepted, in bytes.
const MIN_CHALLENGER_TOKEN: usize = 16;

/// Upper bounds (seconds) of the verification-duration histogram's buckets: from a
/// signature-only check (microseconds) to a full verify of a large shard (a minute).
const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// What the worker answers for: its system and the sealed model, who may challenge it and how
/// many at once, and its health as last seen.
pub struct Worker {
    system: VramResidency,
    group: SealedGroup,
    metrics: PrometheusHandle,
    challenger_token: Zeroizing<Vec<u8>>,
    challenges: Arc<Semaphore>,
    health: watch::Receiver<Health>,
}

/// The devices' health as the background task last saw it.
#[derive(Clone)]
struct Health {
    checked: Instant,
    ok: bool,
    body: serde_json::Value,
}

/// The body of `POST /attest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// The challenger's nonce, hex (16..=1024 bytes once decoded).
    pub nonce: String,
}

/// An error answer: `{"error": "…"}` with a status that says whose fault it is, and when to
/// retry if retrying helps.
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<VramError> for ApiError {
    fn from(e: VramError) -> Self {
        // A group's error wraps its member's: branch on the member's.
        let (status, retry_after) = match e.innermost() {
            VramError::InvalidInput(_) => (StatusCode::BAD_REQUEST, None),
            // The model is not what was sealed (or its device stopped fail-closed after part of
            // it was found not to be): the worker cannot vouch for it.
            inner if inner.is_integrity_failure() => (StatusCode::CONFLICT, None),
            VramError::DeviceStopped { .. } => (StatusCode::CONFLICT, None),
            // Load shedding: no device slot within the admission timeout.
            VramError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_AFTER_SECS)),
            VramError::ShuttingDown | VramError::DeviceLost { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, None)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        // `VramError`'s messages carry no pointer, key or token.
        Self {
            status,
            message: e.to_string(),
            retry_after,
        }
    }
}

impl Worker {
    /// A worker answering for `group`, sealed on `system`, to challengers that present
    /// `challenger_token`, at most `max_concurrent` (at least 1) at once; its metrics render
    /// from `metrics`. Looks at the devices once, then keeps their health up to date in a
    /// background task (which stops when the worker is dropped or the system shuts down).
    pub async fn new(
        system: VramResidency,
        group: SealedGroup,
        metrics: PrometheusHandle,
        challenger_token: Zeroizing<Vec<u8>>,
        max_concurrent: usize,
    ) -> Self {
        let (publish, health) = watch::channel(check_health(&system).await);
        let watched = system.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_POLL).await;
                if publish.is_closed() {
                    break;
                }
                let now = check_health(&watched).await;
                let gone = now.body.get("status").and_then(|s| s.as_str()) == Some("shutting down");
                if publish.send(now).is_err() || gone {
                    break;
                }
            }
        });
        Self {
            system,
            group,
            metrics,
            challenger_token,
            challenges: Arc::new(Semaphore::new(max_concurrent.max(1))),
            health,
        }
    }
}

/// Asks every device for its status (through the mailboxes; the actors answer between
/// requests, without waiting for a request slot).
async fn check_health(system: &VramResidency) -> Health {
    let (ok, body) = match system.devices().await {
        Ok(devices) => {
            let unwell: Vec<serde_json::Value> = devices
                .iter()
                .filter(|d| d.lost || d.stopped.is_some())
                .map(|d| {
                    serde_json::json!({
                        "gpu_device": d.identity.index,
                        "lost": d.lost,
                        "stopped": d.stopped,
                    })
                })
                .collect();
            if unwell.is_empty() {
                (true, serde_json::json!({ "status": "ok" }))
            } else {
                (
                    false,
                    serde_json::json!({ "status": "degraded", "devices": unwell }),
                )
            }
        }
        Err(VramError::ShuttingDown) => (false, serde_json::json!({ "status": "shutting down" })),
        Err(e) => (
            false,
            serde_json::json!({ "status": "degraded", "error": e.to_string() }),
        ),
    };
    Health {
        checked: Instant::now(),
        ok,
        body,
    }
}

/// The worker's HTTP interface (see the module documentation).
pub fn app(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/attest", post(attest))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(worker)
}

async fn attest(
    State(worker): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Result<Json<Challenge>, JsonRejection>,
) -> Result<Json<SignedAttestation>, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !bearer::authorized(presented, &worker.challenger_token) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a challenge needs the challenger's credential: Authorization: Bearer <token>",
        ));
    }
    // Beyond the cap the answer is immediate: a storm of challenges does not queue work.
    let Ok(_in_flight) = Arc::clone(&worker.challenges).try_acquire_owned() else {
        return Err(ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many challenges in flight; retry later",
            )
        });
    };
    let Json(challenge) =
        body.map_err(|e| ApiError::new(e.status(), format!("bad challenge: {e}")))?;
    let nonce = hex::decode(challenge.nonce.trim())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "nonce must be hex"))?;
    Ok(Json(
        worker
            .system
            .attest_group_signed(&worker.group, &nonce)
            .await?,
    ))
}

async fn metrics(State(worker): State<Arc<Worker>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        worker.metrics.render(),
    )
}

/// Answered from the state the background task keeps, never through a device's mailbox.
async fn healthz(State(worker): State<Arc<Worker>>) -> Response {
    let health = worker.health.borrow().clone();
    let age = health.checked.elapsed();
    if age > HEALTH_STALE {
        let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let body = serde_json::json!({ "status": "stale", "age_ms": age_ms });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health.body)).into_response()
}

/// Installs the Prometheus recorder for this process (the crate's metrics then land in it),
/// with buckets for the verification-duration histogram and the crate's metric descriptions.
/// Keeps the recorder's histograms compact in the background when a tokio runtime is running.
pub fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error + Send + Sync>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(vram_residency::telemetry::VERIFICATION_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    vram_residency::telemetry::describe();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let upkeep = handle.clone();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    Ok(handle)
}

/// Command-line options.
pub struct Opts {
    listen: SocketAddr,
    devices: u32,
    size: usize,
    token_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    challenger_token_file: Option<PathBuf>,
    max_concurrent: usize,
}

const USAGE: &str = "usage: attest_server [--listen ADDR] [--devices N] [--size BYTES_PER_PART] \
     [--token-file PATH] [--audit-log PATH] [--challenger-token-file PATH] [--max-concurrent N]";

/// Parses the arguments after the program name.
pub fn parse_opts(args: impl IntoIterator<Item = String>) -> Result<Opts, String> {
    let mut opts = Opts {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        devices: 4,
        size: 8 << 20,
        token_file: None,
        audit_log: None,
        challenger_token_file: None,
        max_concurrent: DEFAULT_MAX_CONCURRENT,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => opts.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--devices" => {
                opts.devices = value()?.parse().map_err(|e| format!("--devices: {e}"))?;
            }
            "--size" => opts.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--token-file" => opts.token_file = Some(PathBuf::from(value()?)),
            "--audit-log" => opts.audit_log = Some(PathBuf::from(value()?)),
            "--challenger-token-file" => {
                opts.challenger_token_file = Some(PathBuf::from(value()?));
            }
            "--max-concurrent" => {
                opts.max_concurrent = value()?
                    .parse()
                    .map_err(|e| format!("--max-concurrent: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    if opts.devices == 0 || opts.size == 0 || opts.max_concurrent == 0 {
        return Err("--devices, --size and --max-concurrent must be at least 1".into());
    }
    Ok(opts)
}

/// A fresh random token, hex, written to an owner-only temp file (tempfile creates it 0600) so a
/// control plane on this machine can read it; the file is deleted when the handle is dropped.
fn generated_token_file(
    what: &str,
) -> Result<tempfile::NamedTempFile, Box<dyn std::error::Error + Send + Sync>> {
    use rand::RngCore;
    use std::io::Write;
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    let mut file = tempfile::Builder::new()
        .prefix(&format!("vram-{what}-token-"))
        .tempfile()?;
    file.write_all(Zeroizing::new(hex::encode(raw.as_ref())).as_bytes())?;
    file.flush()?;
    println!(
        "no {what} token given: wrote a random one to {} (owner-only; deleted at exit)",
        file.path().display()
    );
    Ok(file)
}

/// Reads the challenger token like the worker token file (owner-only, no symlink, one trailing
/// newline ignored) and checks that it can travel in a bearer header.
fn read_challenger_token(
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, Box<dyn std::error::Error + Send + Sync>> {
    let token = vram_residency::config::read_secret_file(path)?;
    let mut header = Zeroizing::new(b"Bearer ".to_vec());
    header.extend_from_slice(&token);
    if token.len() < MIN_CHALLENGER_TOKEN || bearer::bearer_token(&header).is_none() {
        return Err(format!(
            "the challenger token in {} must be at least {MIN_CHALLENGER_TOKEN} bytes of \
             A-Z a-z 0-9 - . _ ~ + / (then any '=' padding), e.g. openssl rand -hex 32",
            vram_residency::validation::shown_path(path)
        )
        .into());
    }
    Ok(token)
}

/// Runs the worker until Ctrl-C or SIGTERM, then releases the model and shuts down (the audit
/// log ends with `AuditLogClosed`).
pub async fn run(opts: Opts) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let metrics = install_metrics()?;

    // The worker token: a file, the environment, or a fresh one in an owner-only temp file.
    // Copies of it in memory are wiped when dropped.
    let env_token = std::env::var("VRAM_WORKER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(Zeroizing::new);
    let capacity = u64::try_from(opts.size)?.saturating_mul(2).max(64 << 20);
    let mut config = Config::simulated(opts.devices, capacity).worker_id("attest-worker-1");
    let mut _generated = Vec::new(); // generated token files live (and are deleted) with this
    config = match (&opts.token_file, &env_token) {
        (Some(path), _) => config.worker_token_file(path),
        (None, Some(token)) => config.worker_token(token.as_bytes()),
        (None, None) => {
            let file = generated_token_file("worker")?;
            let path = file.path().to_path_buf();
            _generated.push(file);
            config.worker_token_file(path)
        }
    };
    let challenger_token = match &opts.challenger_token_file {
        Some(path) => read_challenger_token(path)?,
        None => {
            let file = generated_token_file("challenger")?;
            let token = read_challenger_token(file.path())?;
            _generated.push(file);
            token
        }
    };
    // With a file log, the audit heads in the attestations can be checked against it later
    // (`vram-residency audit verify LOG --head SEQ:MAC`); without one, events stay in memory.
    if let Some(path) = &opts.audit_log {
        config = config.audit_log(path);
    }
    let system = VramResidency::start(config).await?;

    // One model split across every device: part i on device i, sealed as one group.
    let group_id = format!("demo-model-tp{}", opts.devices);
    let model_ref = "example:demo-model@v1";
    let mut request = GroupRequest::new(group_id.clone(), model_ref);
    for device in 0..opts.devices {
        let bytes: Vec<u8> = (0..opts.size)
            .map(|i| (i.wrapping_mul(31).wrapping_add(device as usize) % 251) as u8)
            .collect();
        request = request.part(SealRequest::new(
            format!("{group_id}-{device}"),
            model_ref,
            device,
            bytes,
        ));
    }
    let group = system.seal_group(request).await?;
    let worker = Arc::new(
        Worker::new(
            system.clone(),
            group.clone(),
            metrics,
            challenger_token,
            opts.max_concurrent,
        )
        .await,
    );

    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    println!(
        "worker {} holds {group_id} on {} devices ({}); listening on http://{}",
        system.worker_id(),
        opts.devices,
        system.backend_description(),
        listener.local_addr()?
    );
    println!(
        "  POST /attest {{\"nonce\":\"<hex>\"}} (Authorization: Bearer <challenger token>) · \
         GET /metrics · GET /healthz · Ctrl-C or SIGTERM stops"
    );
    println!(
        "  answers are vram-attest-v3, signed with this worker's identity key:\n{}",
        system.identity_public_key_pem().trim_end()
    );
    axum::serve(listener, app(Arc::clone(&worker)))
        .with_graceful_shutdown(async {
            let what = shutdown::stop_requested().await;
            println!("{what}: stopping");
        })
        .await?;

    drop(worker);
    system.release_group(group).await?;
    system.shutdown().await?;
    println!("released the model and shut down");
    Ok(())
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opts = parse_opts(std::env::args().skip(1))?;
    run(opts).await
}
