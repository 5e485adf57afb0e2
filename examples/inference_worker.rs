//! An inference worker that answers requests by running a real forward pass over sealed weights.
//!
//! The model is a small two-layer MLP (64 → 512 → 64, `f32`, ReLU) that the example writes as a
//! safetensors file, deterministically, then seals twice: replica A on device 0 and replica B on
//! device 1. The story it tells, and checks, is the serving path an inference worker needs:
//!
//! 1. At start the forward pass over the sealed weights (read through tensor views) must equal
//!    the host reference computed from the weights before they were written; otherwise it exits 1.
//! 2. Requests run concurrently. Each takes a [`ShardLease`] on its replica, which first verifies
//!    a random sample of chunks, and reads the weights through [`TensorView`]s. A background
//!    scrub re-verifies every resident shard in full meanwhile.
//! 3. One bit of a weight in replica A is flipped. The next check that looks at that chunk (a
//!    request's sampled verification or the scrub, whichever comes first) quarantines the
//!    replica, and requests routed to it are refused with the tensor's name. They are served
//!    from replica B instead, and every answer still equals the reference.
//! 4. On Ctrl-C (or SIGTERM), or when the story is over, the worker releases its shards, shuts
//!    down (closing the audit log) and verifies that log.
//!
//! ```sh
//! cargo run --release --example inference_worker
//! cargo run --release --example inference_worker -- --backend cuda   # real (or fake) CUDA
//! ```
//!
//! The forward pass runs on the host, over bytes copied back through the views: it stands in for
//! the kernel a GPU worker would launch on `TensorView::device_ptr()`. The numbers printed are
//! not a GPU's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::task::JoinSet;
use vram_residency::{
    Config, Fault, SealRequest, SealedShard, ShardLease, VerifyMode, VramError, VramResidency,
};

/// Input width of the model.
const IN: usize = 64;
/// Hidden width.
const HIDDEN: usize = 512;
/// Output width.
const OUT: usize = 64;
/// The tensors, as (name, shape).
const TENSORS: [(&str, &[usize]); 4] = [
    ("layers.0.weight", &[HIDDEN, IN]),
    ("layers.0.bias", &[HIDDEN]),
    ("layers.1.weight", &[OUT, HIDDEN]),
    ("layers.1.bias", &[OUT]),
];
/// The tensor whose bit the story flips.
const FLIPPED_TENSOR: &str = "layers.1.weight";

/// Which devices to serve from.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    /// Two simulated devices.
    Sim,
    /// CUDA devices (at least two; the fake driver in tests/fake_cuda provides two).
    Cuda,
}

#[path = "support/shutdown.rs"]
mod shutdown;

/// Command-line options.
#[derive(Debug, Parser)]
struct Opts {
    /// Where the weights live.
    #[arg(long, value_enum, default_value_t = Backend::Sim)]
    backend: Backend,
    /// Requests served before the bit flip, and again after the replica was refused.
    #[arg(long, default_value_t = 64)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Chunks a request's lease verifies (a random sample).
    #[arg(long, default_value_t = 2)]
    sampled_chunks: u32,
    /// Background scrub interval in milliseconds.
    #[arg(long, default_value_t = 40)]
    scrub_ms: u64,
    /// Audit log path (default: a file in a temporary folder, removed at exit).
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The model's weights on the host, as written to the file.
struct Weights {
    tensors: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// Deterministic weights: an integer hash of (tensor, index) scaled into a small range, so
    /// that every platform writes the same bytes.
    fn generate() -> Self {
        let tensors = TENSORS
            .iter()
            .zip(1u32..)
            .map(|((name, shape), seed)| {
                let n: usize = shape.iter().product();
                let scale = 1.0 / (shape.last().copied().unwrap_or(1) as f32).sqrt();
                let values = (0..n as u32)
                    .map(|i| {
                        let h = i
                            .wrapping_mul(0x9E37_79B1)
                            .wrapping_add(seed.wrapping_mul(0x85EB_CA6B))
                            .rotate_left(13)
                            .wrapping_mul(0xC2B2_AE35);
                        // Top 16 bits → [-1, 1) exactly representable, then scaled.
                        ((h >> 16) as f32 / 32768.0 - 1.0) * scale
                    })
                    .collect();
                (*name, shape.to_vec(), values)
            })
            .collect();
        Self { tensors }
    }

    fn get(&self, name: &str) -> &[f32] {
        self.tensors
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// Writes the weights as a safetensors file (the `safetensors` crate orders tensors by dtype,
    /// then name, so the bytes are the same on every run).
    fn write_safetensors(&self, path: &Path) -> Result<(), BoxError> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, shape, values)| {
                let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_string(), shape.clone(), raw)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, raw)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                    .map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        std::fs::write(path, safetensors::serialize(views, Some(metadata))?)?;
        Ok(())
    }

    /// The reference forward pass, on the host arrays.
    fn forward(&self, input: &[f32; IN]) -> [f32; OUT] {
        forward(
            self.get("layers.0.weight"),
            self.get("layers.0.bias"),
            self.get("layers.1.weight"),
            self.get("layers.1.bias"),
            input,
        )
    }
}

/// `y = W1ᵀ… `: `relu(W0·x + b0)` then `W1·h + b1`, summed in a fixed order so that the result is
/// bit-for-bit the same whichever copy of the weights it runs on.
fn forward(w0: &[f32], b0: &[f32], w1: &[f32], b1: &[f32], x: &[f32; IN]) -> [f32; OUT] {
    let mut hidden = [0f32; HIDDEN];
    for ((h, row), b) in hidden.iter_mut().zip(w0.chunks_exact(IN)).zip(b0) {
        let dot: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum();
        *h = (dot + b).max(0.0);
    }
    let mut out = [0f32; OUT];
    for ((o, row), b) in out.iter_mut().zip(w1.chunks_exact(HIDDEN)).zip(b1) {
        let dot: f32 = row.iter().zip(&hidden).map(|(w, v)| w * v).sum();
        *o = dot + b;
    }
    out
}

/// The input of request `id`.
fn input_for(id: u64) -> [f32; IN] {
    let mut x = [0f32; IN];
    for (i, v) in x.iter_mut().enumerate() {
        let k = id.wrapping_mul(31).wrapping_add((i as u64).wrapping_mul(7)) % 97;
        *v = (k as f32 - 48.0) / 48.0;
    }
    x
}

/// Reads one tensor of the lease as `f32`s, through its tensor view.
fn read_tensor(lease: &ShardLease, name: &str) -> Result<Vec<f32>, VramError> {
    let view = lease
        .tensor(name)
        .ok_or_else(|| VramError::InvalidInput(format!("the sealed model has no tensor {name}")))?;
    let info = view.info();
    let len = info.end.saturating_sub(info.start);
    let mut raw = vec![0u8; usize::try_from(len).unwrap_or(0)];
    view.read(0, &mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
        .collect())
}

/// The forward pass over a lease's tensor views.
fn forward_on(lease: &ShardLease, input: &[f32; IN]) -> Result<[f32; OUT], VramError> {
    Ok(forward(
        &read_tensor(lease, "layers.0.weight")?,
        &read_tensor(lease, "layers.0.bias")?,
        &read_tensor(lease, "layers.1.weight")?,
        &read_tensor(lease, "layers.1.bias")?,
        input,
    ))
}

/// One copy of the model on one device, and whether requests may still be routed to it.
struct Replica {
    label: &'static str,
    shard: SealedShard,
    serving: AtomicBool,
}

/// What the serving tasks share.
struct Worker {
    system: VramResidency,
    replicas: Vec<Replica>,
    weights: Weights,
    mode: VerifyMode,
    served: AtomicU64,
    refused: AtomicU64,
    /// Set once a refusal named the flipped tensor.
    refusal_named_tensor: AtomicBool,
    /// Set when the bit has been flipped.
    flipped: AtomicBool,
    /// Answers computed from the flipped weights: leases whose random sample missed the bad
    /// chunk, before a check that did not miss quarantined the replica.
    missed_by_sample: AtomicU64,
}

impl Worker {
    /// Answers one request: the first replica still serving takes a lease (sampled
    /// verification), runs the forward pass over its tensor views, and the answer is checked
    /// against the reference. A refused lease takes its replica out of rotation and the request
    /// moves on to the next replica. Returns the label of the replica that answered.
    async fn handle(&self, id: u64) -> Result<&'static str, BoxError> {
        let input = input_for(id);
        for replica in &self.replicas {
            if !replica.serving.load(Ordering::Acquire) {
                continue;
            }
            match self.system.lease(&replica.shard, self.mode).await {
                Ok(lease) => {
                    // The pass is CPU work over copied-back bytes: keep it off the runtime's
                    // workers, as a worker would keep a kernel launch.
                    let (out, lease) = tokio::task::spawn_blocking(move || {
                        let out = forward_on(&lease, &input);
                        (out, lease)
                    })
                    .await?;
                    drop(lease);
                    let out = out?;
                    if out != self.weights.forward(&input) {
                        if self.flipped.load(Ordering::Acquire) {
                            // What a sampled check costs: until a check that reads the bad
                            // chunk runs, a request may be served from it.
                            self.missed_by_sample.fetch_add(1, Ordering::Relaxed);
                            return Ok(replica.label);
                        }
                        return Err(format!(
                            "request {id}: replica {} answered differently from the reference",
                            replica.label
                        )
                        .into());
                    }
                    self.served.fetch_add(1, Ordering::Relaxed);
                    return Ok(replica.label);
                }
                Err(e) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    if let VramError::SealVerificationFailed { bad_tensors, .. } = &e
                        && bad_tensors.iter().any(|t| t == FLIPPED_TENSOR)
                    {
                        self.refusal_named_tensor.store(true, Ordering::Release);
                    }
                    if replica.serving.swap(false, Ordering::AcqRel) {
                        println!(
                            "request {id} REFUSED by replica {} (device {}): {e}",
                            replica.label,
                            replica.shard.device()
                        );
                        println!(
                            "  replica {} taken out of rotation; requests go to the next replica",
                            replica.label
                        );
                    }
                }
            }
        }
        Err(format!("request {id}: no replica left to serve it").into())
    }
}

/// Serves `count` requests starting at `first`, `concurrency` at a time; returns how many each
/// replica served.
async fn serve(
    worker: &Arc<Worker>,
    first: u64,
    count: u64,
    concurrency: usize,
) -> Result<HashMap<&'static str, u64>, BoxError> {
    let mut tasks = JoinSet::new();
    let mut by_replica = HashMap::new();
    let mut next = first;
    let end = first.saturating_add(count);
    loop {
        while tasks.len() < concurrency && next < end {
            let worker = Arc::clone(worker);
            let id = next;
            tasks.spawn(async move { worker.handle(id).await });
            next = next.saturating_add(1);
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let replica = done??;
        let n: &mut u64 = by_replica.entry(replica).or_insert(0);
        *n = n.saturating_add(1);
    }
    Ok(by_replica)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let opts = Opts::parse();
    if opts.concurrency == 0 || opts.requests == 0 || opts.sampled_chunks == 0 {
        return Err("--concurrency, --requests and --sampled-chunks must be at least 1".into());
    }
    let dir = std::env::temp_dir().join(format!("inference-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outcome = run(&opts, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Writes the model, starts the worker, tells the story (or stops early on Ctrl-C or SIGTERM),
/// then shuts down cleanly either way and verifies the audit log.
async fn run(opts: &Opts, dir: &Path) -> Result<(), BoxError> {
    // 1. The model, written deterministically.
    let weights = Weights::generate();
    let model_path = dir.join("mlp.safetensors");
    weights.write_safetensors(&model_path)?;
    let model_len = std::fs::metadata(&model_path)?.len();
    println!(
        "wrote {} ({model_len} bytes): a 2-layer MLP {IN} → {HIDDEN} → {OUT}, f32",
        model_path.display()
    );

    // 2. The worker: two devices, sampled verification per lease, a full background scrub.
    let audit_path: PathBuf = opts
        .audit_log
        .clone()
        .unwrap_or_else(|| dir.join("audit.jsonl"));
    let token = hex_token();
    let config = match opts.backend {
        Backend::Sim => Config::simulated(2, 64 << 20),
        Backend::Cuda => Config::cuda().cuda_fault_injection(true),
    };
    let system = VramResidency::start(
        config
            .worker_id("inference-worker")
            .worker_token(token.as_bytes())
            .chunk_size(16 << 10)
            .scrub_interval(Duration::from_millis(opts.scrub_ms))
            .audit_log(audit_path.clone()),
    )
    .await?;
    println!("worker started: {}", system.backend_description());

    let mut sealed = Vec::new();
    let outcome = tokio::select! {
        r = story(&system, opts, &model_path, weights, &mut sealed) => r,
        signal = shutdown::stop_requested() => {
            println!("{signal}: stopping before the story's end");
            Ok(())
        }
    };

    // 6. Shut down, story told or not: release, close the log, verify it.
    for shard in sealed {
        // A quarantined replica's release still frees its memory.
        let _ = system.release(shard).await;
    }
    system.shutdown().await?;
    let token = vram_residency::WorkerToken::new(token.into_bytes())?;
    let report = vram_residency::audit::verify_log(&audit_path, &token)?;
    println!(
        "shut down; audit log: {} records, intact: {}, last record {}",
        report.records,
        report.is_intact(),
        if report.closed {
            "AuditLogClosed"
        } else {
            "not AuditLogClosed"
        }
    );
    outcome?;
    if !report.is_intact() {
        return Err("the audit log is not intact".into());
    }
    Ok(())
}

/// Seals the two replicas (recorded in `sealed` as they are), checks the pass over the sealed
/// weights, serves, flips a bit and serves on. Fails when a step of the story does not hold.
async fn story(
    system: &VramResidency,
    opts: &Opts,
    model_path: &Path,
    weights: Weights,
    sealed: &mut Vec<SealedShard>,
) -> Result<(), BoxError> {
    if system.device_count() < 2 {
        return Err("this story needs two devices (one per replica)".into());
    }
    let mut replicas = Vec::new();
    for (label, device) in [("A", 0u32), ("B", 1u32)] {
        let shard = system
            .seal(SealRequest::from_file(
                format!("mlp-replica-{label}"),
                "example:inference-worker/mlp",
                device,
                model_path,
            ))
            .await?;
        println!(
            "sealed replica {label} on device {device}: {} bytes, sha256 {}",
            shard.info().vram_bytes,
            shard.info().digest
        );
        sealed.push(shard.clone());
        replicas.push(Replica {
            label,
            shard,
            serving: AtomicBool::new(true),
        });
    }

    // The tensor map, and where the weights sit on the device.
    let replica_a = replicas.first().ok_or("no replica")?.shard.clone();
    let probe = system.lease(&replica_a, VerifyMode::Full).await?;
    println!("tensors (file order):");
    for info in replica_a.tensors().unwrap_or(&[]) {
        let aligned = probe
            .tensor(&info.name)
            .map(|t| *t.device_ptr().as_kernel_arg() % 256 == 0)
            .unwrap_or(false);
        println!(
            "  {:<16} {} {:?} bytes {}..{}{}",
            info.name,
            info.dtype,
            info.shape,
            info.start,
            info.end,
            if aligned {
                ", 256-byte aligned on the device"
            } else {
                ""
            }
        );
    }

    // 3. The self-check: the pass over sealed weights equals the host reference.
    let x = input_for(0);
    let (expected, got) = (weights.forward(&x), forward_on(&probe, &x)?);
    drop(probe);
    if expected != got {
        return Err(
            "self-check failed: the sealed weights do not give the reference output".into(),
        );
    }
    println!(
        "self-check: the forward pass over the sealed weights equals the host reference \
         (y[0..4] = {:.5?})",
        &got[..4]
    );

    let mode = VerifyMode::Sampled {
        chunks: opts.sampled_chunks,
    };
    let worker = Arc::new(Worker {
        system: system.clone(),
        replicas,
        weights,
        mode,
        served: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        refusal_named_tensor: AtomicBool::new(false),
        flipped: AtomicBool::new(false),
        missed_by_sample: AtomicU64::new(0),
    });

    // 4. Serving.
    let started = Instant::now();
    let by = serve(&worker, 1, opts.requests, opts.concurrency).await?;
    println!(
        "served {} requests in {:.0} ms, each verified ({mode}) through its lease: {by:?}",
        opts.requests,
        started.elapsed().as_secs_f64() * 1e3
    );

    // 5. A weight goes bad in replica A.
    let flipped = replica_a
        .tensors()
        .and_then(|t| t.iter().find(|t| t.name == FLIPPED_TENSOR))
        .ok_or("the sealed model has no tensor map")?;
    let offset = flipped.start.midpoint(flipped.end);
    system
        .inject_fault(
            0,
            Fault::FlipBits {
                shard_id: replica_a.shard_id().to_string(),
                offset,
                mask: 0x10,
            },
        )
        .await?;
    worker.flipped.store(true, Ordering::Release);
    println!("flipped one bit of {FLIPPED_TENSOR} in replica A (shard byte {offset})");

    // Keep serving until replica A has been refused (a request's sample or the scrub catches it),
    // then as many requests again, all from replica B.
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(30))
        .ok_or("clock")?;
    let mut next = opts.requests.saturating_add(1);
    let mut before = HashMap::new();
    while worker
        .replicas
        .first()
        .is_some_and(|a| a.serving.load(Ordering::Acquire))
    {
        if Instant::now() > deadline {
            return Err("the flipped bit was not caught within 30 s".into());
        }
        for (k, v) in serve(&worker, next, opts.concurrency as u64, opts.concurrency).await? {
            let n: &mut u64 = before.entry(k).or_insert(0);
            *n = n.saturating_add(v);
        }
        next = next.saturating_add(opts.concurrency as u64);
    }
    println!("until the refusal: {before:?}");
    let after = serve(&worker, next, opts.requests, opts.concurrency).await?;
    let missed = worker.missed_by_sample.load(Ordering::Relaxed);
    println!(
        "after the refusal: {} requests, every answer equal to the reference: {after:?}",
        opts.requests
    );
    println!(
        "between the flip and the refusal, {missed} answer(s) came from the flipped weights: \
         leases whose random sample of {} chunk(s) missed the bad one. Sampling bounds that \
         window by chance, the background scrub by time; lease with VerifyMode::Full where no \
         such answer is acceptable.",
        opts.sampled_chunks
    );
    let named = worker.refusal_named_tensor.load(Ordering::Acquire);
    println!(
        "{} requests served, {} refused by replica A (the refusal named {FLIPPED_TENSOR}: {named})",
        worker.served.load(Ordering::Relaxed),
        worker.refused.load(Ordering::Relaxed)
    );

    if !named {
        return Err(format!("no refusal named the flipped tensor {FLIPPED_TENSOR}").into());
    }
    Ok(())
}

/// A random worker token (from the environment in production). Never printed.
fn hex_token() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}
