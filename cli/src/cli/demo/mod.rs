//! `demo`: the whole story in a few seconds, on the chosen backend (`--backend`; by default
//! `Config::auto()`: a CUDA GPU when one is present, simulated devices otherwise).
//!
//! It generates a model file, seals it from the file (streamed, with a progress bar), shows the
//! seal, verifies it in each mode with timings, executes on a verified view, attests a random
//! nonce and checks the attestation, flips one bit in device memory (a device-side XOR on CUDA),
//! shows the detection with the chunk index and byte range, shows device 0 refusing work
//! (fail-closed) while device 1 seals and serves (skipped on a one-GPU machine), releases everything, shuts down, verifies the
//! audit log offline, and prints a summary table. Every step checks its own claim; the command
//! exits 3 if any claim did not hold.
//!
//! This file holds the plumbing: the arguments, [`run`] (which sets up the worker and calls the
//! acts in order), the narration and step record (`Demo`) and the summary. The acts
//! themselves, one function each, are in `story`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vram_residency::{Config, VramResidency};

use super::error::CliError;
use super::token::TokenSource;
use super::{BackendArg, BackendOpt, DEFAULT_SIM_CAPACITY, Global};

mod story;

const SHARD_A: &str = "demo-model";
const SHARD_B: &str = "demo-model-b";
const BLOCK: usize = 1 << 20;

/// Arguments of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the generated model file in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub size: u64,

    #[command(flatten)]
    pub backend: BackendOpt,

    /// Use N simulated devices (at least 2) instead of the default backend.
    #[arg(long, value_name = "N")]
    pub devices: Option<u32>,

    /// Write the audit log here and keep it (default: a temporary file, removed at exit).
    /// Verify it later with `audit verify` and the same token.
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// Print one JSON object with every step's result on stdout instead of the narration.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    fn mark(self) -> &'static str {
        match self {
            Self::Pass => "✓",
            Self::Fail => "✗",
            Self::Skip => "–",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skipped",
        }
    }
}

struct Step {
    name: &'static str,
    outcome: Outcome,
    detail: String,
}

/// Narration (text mode) and the record of every step (both modes).
struct Demo {
    json: bool,
    steps: Vec<Step>,
    doc: serde_json::Map<String, Value>,
}

impl Demo {
    fn say(&self, line: impl AsRef<str>) {
        if !self.json {
            println!("{}", line.as_ref());
        }
    }

    fn heading(&self, title: &str) {
        self.say(format!("\n── {title}"));
    }

    fn step(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) -> bool {
        let outcome = if ok { Outcome::Pass } else { Outcome::Fail };
        self.record(name, outcome, detail);
        ok
    }

    fn record(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        let detail = detail.into();
        self.say(format!("   {} {detail}", outcome.mark()));
        self.steps.push(Step {
            name,
            outcome,
            detail,
        });
    }

    fn put(&mut self, key: &str, value: Value) {
        self.doc.insert(key.to_string(), value);
    }
}

/// A directory under the system temp dir, removed (with its contents) on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self, CliError> {
        let mut tag = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut tag);
        let path = std::env::temp_dir().join(format!(
            "vram-residency-demo-{}-{}",
            std::process::id(),
            hex::encode(tag)
        ));
        std::fs::create_dir(&path).map_err(|e| {
            CliError::env(format!(
                "cannot create a temporary directory {}: {e}",
                path.display()
            ))
            .hint("set TMPDIR to a writable directory")
        })?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Model {
    path: PathBuf,
    size: u64,
    sha256: String,
    head: Vec<u8>,
}

/// Writes `size` pseudo-random bytes (fixed seed, so the digest is the same on every run).
fn generate_model(path: &Path, size: u64) -> Result<Model, CliError> {
    let fail = |e: std::io::Error| {
        CliError::env(format!(
            "cannot write the model file {}: {e}",
            path.display()
        ))
    };
    let file = File::create(path).map_err(fail)?;
    let mut out = BufWriter::with_capacity(BLOCK, file);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EA1_ED00_0000_0001);
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut left = size;
    let mut buf = vec![0u8; BLOCK];
    while left > 0 {
        let n = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
        let Some(block) = buf.get_mut(..n) else {
            break;
        };
        rng.fill_bytes(block);
        hasher.update(&*block);
        if head.is_empty() {
            head.extend(block.iter().take(16));
        }
        out.write_all(block).map_err(fail)?;
        left = left.saturating_sub(n as u64);
    }
    out.flush().map_err(fail)?;
    let file = out.into_inner().map_err(|e| fail(e.into_error()))?;
    file.sync_all().map_err(fail)?;
    Ok(Model {
        path: path.to_path_buf(),
        size,
        sha256: hex::encode(hasher.finalize()),
        head,
    })
}

/// Runs `demo`.
pub async fn run(global: &Global, args: DemoArgs) -> Result<(), CliError> {
    check_args(&args)?;
    let started = Instant::now();
    let token = TokenSource::find_or_generate(global.token_file.as_deref());
    let worker_token = token.load()?;
    let workdir = WorkDir::create()?;
    let keep_log = args.audit_log.is_some();
    let audit_path = args
        .audit_log
        .clone()
        .unwrap_or_else(|| workdir.0.join("audit.jsonl"));
    let config = demo_config(global, &args, &token, &audit_path)?;

    let mut demo = Demo {
        json: args.json,
        steps: Vec::new(),
        doc: serde_json::Map::new(),
    };
    introduce(&mut demo, &config, &token, &audit_path, keep_log);
    let model = story::generate(&mut demo, &workdir.0, args.size)?;

    let system = VramResidency::start(config).await?;
    demo.say(format!(
        "   started worker {} on {} device(s)",
        system.worker_id(),
        system.device_count()
    ));
    // Which devices, by the driver's own names: a run on the fake CUDA driver says so.
    for status in system.devices().await? {
        demo.say(format!(
            "   device {}: {}{}",
            status.identity.index,
            status.identity.name,
            status
                .leaf_kernel
                .map(|k| format!(" (leaf kernel {k})"))
                .unwrap_or_default()
        ));
    }
    let story = story::story(&mut demo, &system, &model, &worker_token).await;
    story::shut_down(&mut demo, system).await;
    story?;

    story::verify_audit_log(&mut demo, &audit_path, &worker_token)?;
    drop(worker_token);

    finish(demo, started)
}

/// Refuses arguments the demo cannot run with, before anything is created.
fn check_args(args: &DemoArgs) -> Result<(), CliError> {
    if args.size == 0 {
        return Err(CliError::usage("--size must be at least 1 byte"));
    }
    if let Some(n) = args.devices
        && n < 2
    {
        return Err(CliError::usage(
            "the demo needs at least 2 devices (one is stopped on purpose, the other keeps serving)",
        ));
    }
    Ok(())
}

/// The worker's configuration on the chosen backend. Simulated devices are sized to hold the
/// model twice (the second device takes a copy). On CUDA the demo opts in to fault injection
/// (its bit flip is a device-side XOR), which a production worker never does.
fn demo_config(
    global: &Global,
    args: &DemoArgs,
    token: &TokenSource,
    audit_path: &Path,
) -> Result<Config, CliError> {
    let needs_bigger = args.size > DEFAULT_SIM_CAPACITY / 4;
    let capacity = args.size.saturating_mul(2).max(DEFAULT_SIM_CAPACITY);
    let config = match args.backend.backend {
        BackendArg::Cuda if args.devices.is_some() => {
            return Err(CliError::usage(
                "--devices describes simulated devices; --backend cuda uses the GPUs that are present",
            ));
        }
        BackendArg::Cuda => Config::cuda().cuda_fault_injection(true),
        BackendArg::Simulated => Config::simulated(args.devices.unwrap_or(2), capacity),
        BackendArg::Auto if args.devices.is_some() || needs_bigger => {
            Config::simulated(args.devices.unwrap_or(2), capacity)
        }
        BackendArg::Auto => Config::auto().cuda_fault_injection(true),
    };
    Ok(token
        .apply(config.worker_id(global.worker_id.clone()))
        .audit_log(audit_path.to_path_buf()))
}

/// The opening lines: what runs where, with which token, logging to which file.
fn introduce(
    demo: &mut Demo,
    config: &Config,
    token: &TokenSource,
    audit_path: &Path,
    keep_log: bool,
) {
    demo.say(
        "vram-residency demo: seal → verify → execute → attest → detect → fail closed → audit",
    );
    demo.say(format!("backend:      {}", config.backend_description()));
    if token.is_generated() {
        demo.say(
            "worker token: a random 32-byte hex token was generated for this run (never printed; \
             pass --token-file or set VRAM_WORKER_TOKEN to choose one)",
        );
    } else {
        demo.say(format!(
            "worker token: from {} (never printed)",
            token.describe()
        ));
    }
    demo.put("backend", json!(config.backend_description()));
    demo.put(
        "token",
        json!(match token {
            TokenSource::File(_) => "file",
            TokenSource::Env(_) => "env",
            TokenSource::Generated(_) => "generated",
        }),
    );
    demo.say(format!(
        "audit log:    {}{}",
        audit_path.display(),
        if keep_log {
            ""
        } else {
            " (temporary; pass --audit-log PATH to keep it)"
        }
    ));
}

/// Prints the summary (or the JSON document) and fails if any step did not hold.
fn finish(mut demo: Demo, started: Instant) -> Result<(), CliError> {
    let failed = demo
        .steps
        .iter()
        .filter(|s| s.outcome == Outcome::Fail)
        .count();
    let total = demo.steps.len();
    let elapsed = started.elapsed();
    if demo.json {
        let steps: Vec<Value> = demo
            .steps
            .iter()
            .map(|s| json!({"step": s.name, "outcome": s.outcome.word(), "detail": s.detail}))
            .collect();
        demo.put("steps", Value::Array(steps));
        demo.put("ok", json!(failed == 0));
        demo.put("elapsed_ms", json!(elapsed.as_secs_f64() * 1000.0));
        println!("{}", Value::Object(std::mem::take(&mut demo.doc)));
    } else {
        println!("\nsummary");
        for s in &demo.steps {
            println!("  {} {:<28} {}", s.outcome.mark(), s.name, s.outcome.word());
        }
        println!(
            "{} of {total} steps behaved as claimed, in {:.2} s",
            total.saturating_sub(failed),
            elapsed.as_secs_f64()
        );
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::integrity(format!(
            "{failed} of {total} demo steps did not behave as claimed (marked ✗ above)"
        )))
    }
}
