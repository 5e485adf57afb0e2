//! A worker that holds a sealed tensor-parallel model and answers a control plane over HTTP.
//!
//! ```sh
//! cargo run --example attest_server --features http-example
//! cargo run --example attest_server --features http-example -- --listen 127.0.0.1:9000 \
//!     --devices 4 --size 8388608 --token-file worker.token --audit-log audit.jsonl
//! ```
//!
//! Endpoints (JSON in and out, except `/metrics`):
//!
//! * `POST /attest` with `{"nonce": "<hex>"}` — a fresh challenge of 16..=1024 bytes, lowercase or
//!   uppercase hex. The worker answers with `VramResidency::attest_group`: it verifies every
//!   member of its tensor-parallel group (per `Config::execute_verify`, `Full` here) and answers
//!   `200` with the `GroupAttestation` bundle `{"group": GroupInfo, "members": [Attestation…]}`:
//!   the signed group record and one `vram-attest-v2` statement per member under the same nonce,
//!   in `shard_index` order (`.specs/groups-v1.md` and `.specs/attestation-v2.md` have the
//!   layouts). A member that fails verification fails the whole group (fail-all) and the
//!   challenge with it: `409` with `{"error": "…"}` naming the member, and no attestation at
//!   all. A malformed body or nonce is `400`; a worker shutting down or a lost device `503`.
//! * `GET /metrics` — the crate's metrics in the Prometheus text format (names in
//!   `vram_residency::telemetry` and the README); the verification-duration histogram has
//!   buckets, so it aggregates across workers.
//! * `GET /healthz` — `200 {"status":"ok"}` while every device accepts work; `503
//!   {"status":"degraded","devices":[…]}` naming each stopped or lost device otherwise.
//!
//! The worker token comes from `--token-file PATH` (owner-only permissions) or
//! `VRAM_WORKER_TOKEN`; with neither, the worker writes a fresh random token to an owner-only
//! file in the temp directory, prints that file's path (never the token), and deletes it at
//! exit. The control plane holds the same token: it checks the bundle with it
//! (`verify_group_attestation_with`, or each member with `verify_attestation_with`, and an
//! `AttestationPolicy`), and nothing secret crosses the wire. `tests/http_attest.rs` plays that
//! control plane against this router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use vram_residency::{
    Config, GroupAttestation, GroupRequest, SealRequest, SealedGroup, VramError, VramResidency,
};

/// The largest request body accepted: a 1024-byte nonce in hex plus room for the JSON around it.
const MAX_BODY_BYTES: usize = 4096;

/// Upper bounds (seconds) of the verification-duration histogram's buckets: from a
/// signature-only check (microseconds) to a full verify of a large shard (a minute).
const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// What the worker answers for: its system and the sealed model.
pub struct Worker {
    system: VramResidency,
    group: SealedGroup,
    metrics: PrometheusHandle,
}

/// The body of `POST /attest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// The challenger's nonce, hex (16..=1024 bytes once decoded).
    pub nonce: String,
}

/// An error answer: `{"error": "…"}` with a status that says whose fault it is.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<VramError> for ApiError {
    fn from(e: VramError) -> Self {
        // A group's error wraps its member's: branch on the member's.
        let status = match e.innermost() {
            VramError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            // The model is not what was sealed (or its device stopped fail-closed after part of
            // it was found not to be): the worker cannot vouch for it.
            inner if inner.is_integrity_failure() => StatusCode::CONFLICT,
            VramError::DeviceStopped { .. } => StatusCode::CONFLICT,
            VramError::ShuttingDown | VramError::DeviceLost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // `VramError`'s messages carry no pointer, key or token.
        Self(status, e.to_string())
    }
}

impl Worker {
    /// A worker answering for `group`, sealed on `system`; its metrics render from `metrics`.
    pub fn new(system: VramResidency, group: SealedGroup, metrics: PrometheusHandle) -> Self {
        Self {
            system,
            group,
            metrics,
        }
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
    body: Result<Json<Challenge>, JsonRejection>,
) -> Result<Json<GroupAttestation>, ApiError> {
    let Json(challenge) =
        body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad challenge: {e}")))?;
    let nonce = hex::decode(challenge.nonce.trim())
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "nonce must be hex".into()))?;
    Ok(Json(
        worker.system.attest_group(&worker.group, &nonce).await?,
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

async fn healthz(State(worker): State<Arc<Worker>>) -> Result<Response, ApiError> {
    let devices = worker.system.devices().await?;
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
    Ok(if unwell.is_empty() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "degraded", "devices": unwell })),
        )
            .into_response()
    })
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
#[cfg_attr(test, allow(dead_code))]
struct Opts {
    listen: SocketAddr,
    devices: u32,
    size: usize,
    token_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
}

#[cfg_attr(test, allow(dead_code))]
fn parse_opts() -> Result<Opts, String> {
    let mut opts = Opts {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        devices: 4,
        size: 8 << 20,
        token_file: None,
        audit_log: None,
    };
    let mut args = std::env::args().skip(1);
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
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: attest_server [--listen ADDR] \
                     [--devices N] [--size BYTES_PER_PART] [--token-file PATH] [--audit-log PATH]"
                ));
            }
        }
    }
    if opts.devices == 0 || opts.size == 0 {
        return Err("--devices and --size must be at least 1".into());
    }
    Ok(opts)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let opts = parse_opts()?;
    let metrics = install_metrics()?;

    // The token: a file, the environment, or a fresh one written to an owner-only temp file
    // (tempfile creates it 0600) so a control plane on this machine can read it. Copies of it
    // in memory are wiped when dropped.
    let env_token = std::env::var("VRAM_WORKER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(zeroize::Zeroizing::new);
    let capacity = u64::try_from(opts.size)?.saturating_mul(2).max(64 << 20);
    let mut config = Config::simulated(opts.devices, capacity).worker_id("attest-worker-1");
    let mut _generated = None; // the generated token's file lives (and is deleted) with this
    config = match (&opts.token_file, &env_token) {
        (Some(path), _) => config.worker_token_file(path),
        (None, Some(token)) => config.worker_token(token.as_bytes()),
        (None, None) => {
            use rand::RngCore;
            use std::io::Write;
            let mut raw = zeroize::Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(raw.as_mut());
            let mut file = tempfile::Builder::new()
                .prefix("vram-worker-token-")
                .tempfile()?;
            file.write_all(zeroize::Zeroizing::new(hex::encode(raw.as_ref())).as_bytes())?;
            file.flush()?;
            println!(
                "no token given: wrote a random worker token to {} (owner-only; deleted at exit)",
                file.path().display()
            );
            let path = file.path().to_path_buf();
            _generated = Some(file);
            config.worker_token_file(path)
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
    let worker = Arc::new(Worker::new(system.clone(), group.clone(), metrics));

    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    println!(
        "worker {} holds {group_id} on {} devices ({}); listening on http://{}",
        system.worker_id(),
        opts.devices,
        system.backend_description(),
        listener.local_addr()?
    );
    println!("  POST /attest {{\"nonce\":\"<hex>\"}} · GET /metrics · GET /healthz · Ctrl-C stops");
    axum::serve(listener, app(Arc::clone(&worker)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    drop(worker);
    system.release_group(group).await?;
    system.shutdown().await?;
    println!("released the model and shut down");
    Ok(())
}
