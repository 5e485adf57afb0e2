//! Seals a (large) file from disk and reports the process's peak resident memory, to show that
//! a streaming seal holds O(staging buffer) of host memory beyond the device allocation.
//!
//! `cargo run --release --example seal_file_rss -- [SIZE_MIB (default 1024)] [PATH]`
//!
//! Without PATH it writes a file of SIZE_MIB in the system temp dir first (in 8 MiB pieces, so
//! writing it does not raise the peak either). On the simulated backend the device allocation
//! itself lives in host memory, so the expected peak is the shard size plus a small constant.

use std::io::Write;

use vram_residency::{Config, SealRequest, VerifyMode, VramResidency};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let (path, _guard) = match std::env::args().nth(2) {
        Some(p) => (std::path::PathBuf::from(p), None),
        None => {
            let dir = tempfile::tempdir()?;
            let p = dir.path().join("model.bin");
            let mut f = std::io::BufWriter::new(std::fs::File::create(&p)?);
            let mut piece = vec![0u8; 8 << 20];
            let mut written = 0u64;
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            while written < size {
                for b in piece.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let n = size.saturating_sub(written).min(piece.len() as u64) as usize;
                f.write_all(piece.get(..n).unwrap_or_default())?;
                written = written.saturating_add(n as u64);
            }
            f.flush()?;
            (p, Some(dir))
        }
    };
    let file_len = std::fs::metadata(&path)?.len();
    let before = peak_rss_kib().unwrap_or(0);
    let system = VramResidency::start(
        Config::simulated(1, file_len.saturating_add(64 << 20))
            .worker_id("rss-check")
            .worker_token("rss-check-token-0123456789"),
    )
    .await?;
    let t = std::time::Instant::now();
    let shard = system
        .seal(SealRequest::from_file("model", "file:model", 0, &path))
        .await?;
    let seal_s = t.elapsed().as_secs_f64();
    system.verify(&shard, VerifyMode::Full).await?;
    let peak = peak_rss_kib().unwrap_or(0);
    let shard_kib = file_len / 1024;
    println!(
        "sealed {} MiB from {} in {:.2} s ({:.2} GiB/s); sha256 {}",
        file_len >> 20,
        path.display(),
        seal_s,
        file_len as f64 / seal_s / f64::from(1u32 << 30),
        shard.info().digest
    );
    println!(
        "peak RSS {} MiB (before start {} MiB); shard {} MiB; overhead beyond the simulated device memory {} MiB (budget 128 MiB)",
        peak / 1024,
        before / 1024,
        shard_kib / 1024,
        peak.saturating_sub(shard_kib) / 1024
    );
    system.release(shard).await?;
    system.shutdown().await?;
    if peak.saturating_sub(shard_kib) > 128 * 1024 {
        eprintln!("peak RSS exceeds shard size + 128 MiB");
        std::process::exit(1);
    }
    Ok(())
}
