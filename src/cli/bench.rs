//! `bench`: runs the verification benchmark suite (`vram_residency::bench`) on a fresh simulated
//! device and prints a table, or one JSON object on stdout with `--json`.
//!
//! Every figure is measured next to its baseline in the same run (one single-threaded SHA-256
//! over the same bytes; for verify also the reference design, copy back + sequential SHA-256),
//! so the ratios are comparable across machines. Progress lines go to stderr, only when stderr
//! is a terminal or with `--verbose`, so stdout stays clean for `--json`.
//!
//! Sizes accept plain bytes or a binary suffix: `268435456`, `256MiB`, `256M`, `1GiB`, `4KiB`.

use std::io::IsTerminal;

use clap::Args;
use vram_residency::bench::{self, BenchOptions};
use vram_residency::validation;

use super::error::CliError;
use super::human_bytes;

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shard size: bytes, or with a suffix (KiB, MiB, GiB, TiB; K, M, G, T mean the same).
    /// Host memory needed is about three times this.
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub size: u64,

    /// Merkle leaf size: a power of two from 4 KiB to 64 MiB (same syntax as --size).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Runs per throughput figure; the best (least disturbed) is kept.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeats: u32,

    /// Chunks per sampled verify.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub sampled_chunks: u32,

    /// Calls per latency figure (signature-only; sampled verify uses a tenth of it).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub latency_iterations: u32,

    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Print progress lines on stderr even when it is not a terminal.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Runs `bench`.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.size == 0 {
        return Err(CliError::usage("--size must be at least 1 byte"));
    }
    validation::validate_chunk_size(args.chunk_size)
        .map_err(CliError::from)
        .map_err(|e| e.context("--chunk-size"))?;
    let opts = BenchOptions {
        size_bytes: args.size,
        chunk_size: args.chunk_size,
        repeats: args.repeats,
        sampled_chunks: args.sampled_chunks,
        latency_iterations: args.latency_iterations,
    };
    let progress = args.verbose || std::io::stderr().is_terminal();
    if progress {
        eprintln!(
            "bench: {} shard, {} chunks, best of {} (simulated device)",
            human_bytes(args.size),
            human_bytes(args.chunk_size),
            args.repeats
        );
    }
    let report = bench::run(opts, |phase| {
        if progress {
            eprintln!("bench: {phase}");
        }
    })
    .await
    .map_err(|e| {
        CliError::from(e)
            .hint("try a smaller --size (the run needs about three times it in host memory)")
    })?;
    if args.json {
        let line = serde_json::to_string(&report)
            .map_err(|e| CliError::env(format!("cannot encode the report as JSON: {e}")))?;
        println!("{line}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Parses a byte count: `1073741824`, `256MiB`, `256M`, `1GiB`, `4KiB`. Whole numbers only
/// (`1.5GiB` is refused); units are binary and case-insensitive; `B` is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`{s}` is not a size: give bytes or a number with KiB, MiB, GiB or TiB"
        ));
    }
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0u32,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown size unit `{unit}` in `{s}`: use KiB, MiB, GiB or TiB (or plain bytes)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8388608"), Ok(8 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert_eq!(parse_size("12B"), Ok(12));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
    }
}
