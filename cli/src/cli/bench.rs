//! `bench`: runs the verification benchmark suite (`vram_residency::bench`) on a fresh CUDA or simulated
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
use super::untrusted;
use super::{BackendArg, BackendOpt, human_bytes};

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub backend: BackendOpt,

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

    /// Print one Markdown table row (`--markdown-header` prints the header) instead of the
    /// table; `scripts/gpu-check.sh` builds its report from these.
    #[arg(long, conflicts_with = "json")]
    pub markdown_row: bool,

    /// Print the header of the `--markdown-row` table and exit.
    #[arg(long)]
    pub markdown_header: bool,

    /// Print progress lines on stderr even when it is not a terminal.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Runs `bench`.
pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.markdown_header {
        println!("{}", bench::BenchReport::MARKDOWN_HEADER);
        return Ok(());
    }
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
        cuda: match args.backend.backend {
            BackendArg::Cuda => true,
            BackendArg::Simulated => false,
            BackendArg::Auto => vram_residency::gpu::cuda::probe().is_ok(),
        },
    };
    let progress = args.verbose || std::io::stderr().is_terminal();
    if progress {
        eprintln!(
            "bench: {} shard, {} chunks, best of {} ({})",
            human_bytes(args.size),
            human_bytes(args.chunk_size),
            args.repeats,
            if opts.cuda {
                "CUDA device 0"
            } else {
                "simulated device"
            }
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
    if args.markdown_row {
        println!("{}", report.markdown_row());
    } else if args.json {
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
/// Error messages quote the input sanitised and cut to 64 characters (clap prints them).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let shown = untrusted::field(s, 64);
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`{shown}` is not a size: give bytes or a number with KiB, MiB, GiB or TiB"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{shown}` is too large"))?;
    let unit = unit.trim();
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0u32,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown size unit `{}` in `{shown}`: use KiB, MiB, GiB or TiB (or plain bytes)",
                untrusted::field(unit, 16)
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{shown}` is too large"))
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test code
mod tests {
    use super::parse_size;
    use proptest::prelude::*;

    const UNITS: [(&str, u32); 14] = [
        ("", 0),
        ("B", 0),
        ("b", 0),
        ("K", 10),
        ("KiB", 10),
        ("kib", 10),
        ("M", 20),
        ("MiB", 20),
        ("mIb", 20),
        ("G", 30),
        ("GiB", 30),
        ("T", 40),
        ("TiB", 40),
        ("tib", 40),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever clap hands over: never a panic, and an error never carries a control
        /// character or escape sequence back to the terminal, nor more than a bounded echo.
        #[test]
        fn any_string_is_a_size_or_a_clean_bounded_error(s in any::<String>()) {
            if let Err(e) = parse_size(&s) {
                prop_assert!(!e.chars().any(char::is_control), "{e:?}");
                prop_assert!(e.chars().count() < 200, "{e:?}");
            }
        }

        #[test]
        fn hostile_sizes_are_refused_cleanly(
            n in any::<u64>(),
            // Controls that `trim` keeps (no whitespace), C1, bidi overrides.
            junk in "[\\x00-\\x08\\x0e-\\x1f\\x7f-\\x84\\x86-\\x9f\\u{202a}-\\u{202e}]{1,8}",
        ) {
            let text = format!("{n}{junk}MiB");
            let e = parse_size(&text).unwrap_err();
            prop_assert!(!e.chars().any(char::is_control), "{e:?}");
            prop_assert!(!e.contains('\u{202e}'), "{e:?}");
        }

        /// `N<unit>` is `N << shift` exactly when that fits in a u64, and an error otherwise.
        #[test]
        fn number_with_unit_round_trips(
            n in any::<u64>(),
            unit in 0..UNITS.len(),
            space in any::<bool>(),
            pad in any::<bool>(),
        ) {
            let (suffix, shift) = UNITS[unit];
            let sep = if space && !suffix.is_empty() { " " } else { "" };
            let text = if pad { format!(" {n}{sep}{suffix} ") } else { format!("{n}{sep}{suffix}") };
            let want = n.checked_mul(1u64 << shift);
            match want {
                Some(v) => prop_assert_eq!(parse_size(&text), Ok(v)),
                None => prop_assert!(parse_size(&text).is_err()),
            }
            // Small values: the same with leading zeros.
            let small = n % 1024;
            let padded = format!("000{small}{suffix}");
            prop_assert_eq!(parse_size(&padded), Ok(small << shift));
        }

        #[test]
        fn fractions_signs_and_unknown_units_are_refused(
            n in 0u64..1_000_000,
            bad in prop::sample::select(vec![".5GiB", "e3", "XB", "kb", "MB", "GB", "iB", "KiBB", "-"]),
        ) {
            for text in [format!("{n}{bad}"), format!("-{n}"), format!("+{n}")] {
                prop_assert!(parse_size(&text).is_err(), "{text}");
            }
        }
    }

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
