//! An inference worker embedded in a tokio service: it seals a model at start, serves concurrent
//! requests that each run through `execute` (which verifies the shard before the closure sees a
//! byte), scrubs every resident shard in full in the background, and shuts down — on Ctrl-C,
//! SIGTERM or after `--requests N` requests — with the audit log flushed and closed, then verifies that log.
//!
//! ```sh
//! cargo run --release --example embedded_worker                 # 200 requests, then exit
//! cargo run --release --example embedded_worker -- --requests 0 # serve until Ctrl-C or SIGTERM
//! ```
//!
//! Serving verifies a random sample of chunks before each request (`execute_verify`), while the
//! background scrub re-reads every chunk periodically: cheap per request, complete over time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{RngCore, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vram_residency::{Config, SealRequest, SealedShard, VerifyMode, VramError, VramResidency};

#[path = "support/shutdown.rs"]
mod shutdown;

/// Command-line options.
#[derive(Debug, Parser)]
struct Opts {
    /// Stop after serving this many requests (0: serve until Ctrl-C or SIGTERM).
    #[arg(long, default_value_t = 200)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print a progress line every N requests.
    #[arg(long, default_value_t = 50)]
    report_every: u64,
    /// Size of the generated model in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    size: usize,
    /// Background scrub interval in milliseconds (one shard per tick).
    #[arg(long, default_value_t = 100)]
    scrub_ms: u64,
    /// Audit log path (default: a file in the temp dir, removed at exit).
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let opts = Opts::parse();
    if opts.concurrency == 0 || opts.size == 0 {
        return Err("--concurrency and --size must be at least 1".into());
    }

    // The token comes from the environment in production; a random one keeps the example
    // self-contained. It is never printed.
    let token: Vec<u8> = match std::env::var("VRAM_WORKER_TOKEN") {
        Ok(t) if !t.is_empty() => t.into_bytes(),
        _ => {
            let mut raw = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            hex::encode(raw).into_bytes()
        }
    };
    let temp_log = opts.audit_log.is_none();
    let audit_path = opts.audit_log.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("embedded-worker-{}.jsonl", std::process::id()))
    });

    let system = VramResidency::start(
        Config::simulated(2, 256 << 20)
            .worker_id("embedded-worker")
            .worker_token(&token)
            .chunk_size(256 << 10)
            .execute_verify(VerifyMode::Sampled { chunks: 8 })
            .scrub_interval(Duration::from_millis(opts.scrub_ms))
            .audit_log(audit_path.clone()),
    )
    .await?;
    println!("worker started: {}", system.backend_description());

    // Seal the model at start-up.
    let mut weights = vec![0u8; opts.size];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut weights);
    let shard = system
        .seal(SealRequest::new(
            "model-q4",
            "example:generated",
            0,
            weights,
        ))
        .await?;
    println!(
        "sealed {} ({} bytes) sha256 {}",
        shard.shard_id(),
        shard.info().vram_bytes,
        shard.info().digest
    );

    let started = Instant::now();
    let served = Arc::new(AtomicU64::new(0));
    let serving = serve(&system, &shard, &opts, Arc::clone(&served));
    let outcome = tokio::select! {
        r = serving => r,
        what = shutdown::stop_requested() => {
            println!("{what}: stopping");
            Ok(())
        }
    };
    let n = served.load(Ordering::Relaxed);
    println!(
        "served {n} requests in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // Release, then shut down: devices free their memory, the audit log is flushed and closed.
    let freed = system.release(shard).await?;
    system.shutdown().await?;
    println!("released {freed} bytes; shut down");

    let token = vram_residency::WorkerToken::new(token)?;
    let report = vram_residency::audit::verify_log(&audit_path, &token)?;
    println!(
        "audit log {}: {} records, intact: {}; {:?}",
        audit_path.display(),
        report.records,
        report.is_intact(),
        report.counts_by_type
    );
    if temp_log {
        let _ = std::fs::remove_file(&audit_path);
    }
    outcome?;
    if let Some(p) = report.first_problem {
        return Err(format!("audit log not intact: {p}").into());
    }
    Ok(())
}

/// Serves requests until `opts.requests` are done (forever when 0).
async fn serve(
    system: &VramResidency,
    shard: &SealedShard,
    opts: &Opts,
    served: Arc<AtomicU64>,
) -> Result<(), BoxError> {
    let permits = Arc::new(Semaphore::new(opts.concurrency));
    let mut tasks = JoinSet::new();
    let mut issued = 0u64;
    let window = Instant::now();
    loop {
        if opts.requests != 0 && issued >= opts.requests {
            break;
        }
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (system, shard, served) = (system.clone(), shard.clone(), Arc::clone(&served));
        let request = issued;
        let report_every = opts.report_every.max(1);
        tasks.spawn(async move {
            let _permit = permit;
            let checksum = handle(&system, &shard, request).await?;
            let n = served.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if n.checked_rem(report_every) == Some(0) {
                println!(
                    "served {n:>6} requests ({:.0}/s), last checksum {checksum:016x}",
                    n as f64 / window.elapsed().as_secs_f64().max(1e-9)
                );
            }
            Ok::<_, VramError>(())
        });
        issued = issued.saturating_add(1);
        // Reap finished tasks as we go so errors surface early and memory stays flat.
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// One "inference": verify (inside `execute`), read 4 KiB of weights, reduce them.
async fn handle(
    system: &VramResidency,
    shard: &SealedShard,
    request: u64,
) -> Result<u64, VramError> {
    let len = shard.info().vram_bytes;
    let offset = request
        .wrapping_mul(4096)
        .checked_rem(len.saturating_sub(4096).max(1))
        .unwrap_or(0);
    system
        .execute(shard, move |view| {
            let mut buf = vec![0u8; 4096.min(view.len() as usize)];
            view.read(offset, &mut buf)?;
            Ok(buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            }))
        })
        .await?
}
