//! Command-line definitions (clap derive) and dispatch to one module per subcommand.
//!
//! Global options (`--token-file`, `--worker-id`, `--log-format`) apply to every subcommand.
//! Each subcommand returns `Result<(), CliError>`; `main` turns the error into one `error:` line,
//! an optional `hint:` line and the documented exit code. Text that came from a file (a peer's
//! record, an audit log) is sanitised before it reaches a terminal ([`untrusted`]).

pub mod audit;
pub mod bench;
pub mod demo;
pub mod devices;
pub mod error;
pub mod identity;
pub mod logging;
pub mod progress;
pub mod provenance;
pub mod seal;
pub mod shutdown;
pub mod token;
pub mod untrusted;
pub mod verify_attestation;
pub mod verify_info;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use vram_residency::Config;

use self::error::CliError;

/// The token and exit-code reference shown after every command's help.
macro_rules! reference_help {
    () => {
        "\
Worker token:
  Keys (seal, audit, attestation) are derived from the worker token. Give it with
  --token-file PATH (the file must be mode 0600 or stricter) or the VRAM_WORKER_TOKEN
  environment variable (at least 16 bytes). `demo` and `devices` make a random one when
  neither is given. The token is never printed.

Exit codes:
  0  success
  2  usage error: bad arguments, bad hex, device out of range, missing input file
  3  integrity failure: verification failed, digest mismatch, audit log not intact,
     seal signature does not match, provenance mismatch, model signature or
     attestation refused
  4  environment problem: unreadable or insecure token file, I/O error, device or
     backend error, not enough device memory

Logging goes to stderr: set RUST_LOG (e.g. RUST_LOG=vram_residency=debug) and choose
--log-format text|json."
    };
}

const AFTER_HELP: &str = reference_help!();

const TOP_AFTER_HELP: &str = concat!(
    "Examples:
  vram-residency demo                                   # the whole story, in seconds
  export VRAM_WORKER_TOKEN=...                          # or --token-file PATH (mode 0600)
  vram-residency seal model.safetensors > seal.json     # digest = sha256sum's
  vram-residency verify-info seal.json
  vram-residency seal --group tp2 --group-devices 0,1 part0.bin part1.bin > group.json
  vram-residency verify-info group.json                 # every member seal + the group's
  vram-residency seal model.safetensors --audit-log audit.jsonl --hold 0
  vram-residency audit verify audit.jsonl
  vram-residency devices

",
    reference_help!()
);

/// Keep model weights sealed in GPU memory, prove they are unchanged, and audit every step.
///
/// Runs on CUDA GPUs when a driver and a device are present, and on simulated devices (device
/// memory held in host memory, with fault injection) otherwise; `--backend` chooses. Start
/// with `vram-residency demo`.
#[derive(Debug, Parser)]
#[command(name = "vram-residency", version, after_help = TOP_AFTER_HELP)]
pub struct Cli {
    /// Read the worker token from this file (must not be readable by group or others).
    /// Without it, the VRAM_WORKER_TOKEN environment variable is used.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub token_file: Option<PathBuf>,

    /// Worker id recorded in seals and audit records ([A-Za-z0-9_-], 1..=256 characters).
    #[arg(
        long,
        global = true,
        value_name = "ID",
        default_value = "worker-1",
        help_heading = "Global options"
    )]
    pub worker_id: String,

    /// Format of log lines on stderr: text or json (filter them with RUST_LOG).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        hide_possible_values = true,
        help_heading = "Global options"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the whole story in a few seconds (start here).
    ///
    /// Seals a generated model, verifies it three ways, executes, attests, catches an injected
    /// bit flip, fails closed on that device while another keeps serving, shuts down and
    /// verifies the audit log; then prints a summary table. Exits 3 if any step does not
    /// behave as claimed.
    #[command(after_help = AFTER_HELP)]
    Demo(demo::DemoArgs),

    /// Seal model files into device memory; print each seal (ShardInfo) as a JSON line.
    ///
    /// The shard id is the file name reduced to [A-Za-z0-9_-]; the model ref is
    /// `file:<path>`. The digest is the file's SHA-256, the value `sha256sum` prints. With
    /// --group ID --group-devices 0,1,... the files are the parts of one tensor-parallel group
    /// (part i on the i-th listed device, shard id ID-i), sealed all or nothing; the group's
    /// GroupInfo is printed instead. With --hold the shards stay resident and are verified
    /// periodically until the time is up, Ctrl-C or SIGTERM, then released cleanly.
    #[command(after_help = AFTER_HELP)]
    Seal(seal::SealArgs),

    /// Check a ShardInfo or GroupInfo record (from `seal` or a peer) against the worker token, offline.
    ///
    /// Checks the HMAC signatures only (it does not show that the shard is still resident); a
    /// group's member seals, member positions and group signature. When a record fails, names
    /// the field that looks wrong when it can.
    #[command(name = "verify-info", after_help = AFTER_HELP)]
    VerifyInfo(verify_info::VerifyInfoArgs),

    /// Check an attestation a worker sent for a challenge; one line, exit 0 or 3.
    ///
    /// A vram-attest-v3 bundle (shard or group) is checked with --public-key alone (the
    /// worker's identity key, from `identity`); a vram-attest-v2 attestation or group
    /// attestation with the worker token. --expect-shard and --expect-digest pin what was
    /// asked; --max-age, --require-mode, --require-device-memory, --min-audit-seq and
    /// --require-provenance add requirements. No age limit unless --max-age is given.
    #[command(name = "verify-attestation", after_help = AFTER_HELP)]
    VerifyAttestation(verify_attestation::VerifyAttestationArgs),

    /// Print the worker's identity public key (PEM, ECDSA P-256) for challengers.
    ///
    /// Derived from the worker token (or read from --identity-key-file). Challengers check
    /// vram-attest-v3 attestations with it alone; it cannot sign. The key id (SHA-256 of the
    /// SPKI DER) goes to stderr.
    #[command(after_help = AFTER_HELP)]
    Identity(identity::IdentityArgs),

    /// Work with vram-audit-v1 audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),

    /// Show each device: backend, name, total and free memory, policy status.
    ///
    /// Starts the default backend (simulated devices in this build) or --devices N
    /// simulated ones, reports, and shuts down.
    #[command(after_help = AFTER_HELP)]
    Devices(devices::DevicesArgs),

    /// Measure seal and verify throughput and latency, each next to a baseline from this run.
    ///
    /// Seals a generated shard of --size bytes on a fresh simulated device and reports seal,
    /// full-verify and reference-verify (copy back + one SHA-256) throughput against one
    /// single-threaded SHA-256 over the same bytes, sampled-verify latency and signature-only
    /// round-trip latency (p50/p99). Needs no worker token.
    #[command(after_help = AFTER_HELP)]
    Bench(bench::BenchArgs),
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log's HMAC chain; name the first bad line.
    ///
    /// Prints the number of records that verified, counts by event type, how many times the
    /// log was reopened, and the first problem with its line number. Exits 0 only when the
    /// log is intact, 3 when it is not.
    #[command(after_help = AFTER_HELP)]
    Verify(audit::AuditVerifyArgs),
}

impl Command {
    /// The log filter used when RUST_LOG is not set. The demo narrates every step itself, so
    /// the library's own warnings (e.g. about the bit flip it injects) stay quiet there.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Self::Demo(_) => "off",
            _ => "warn",
        }
    }
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let global = Global {
        token_file: cli.token_file,
        worker_id: cli.worker_id,
    };
    match cli.command {
        Command::Demo(args) => demo::run(&global, args).await,
        Command::Seal(args) => seal::run(&global, args).await,
        Command::VerifyInfo(args) => verify_info::run(&global, args),
        Command::VerifyAttestation(args) => verify_attestation::run(&global, args),
        Command::Identity(args) => identity::run(&global, args),
        Command::Audit(AuditCommand::Verify(args)) => audit::run_verify(&global, args),
        Command::Devices(args) => devices::run(&global, args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// The global options a subcommand needs.
#[derive(Debug)]
pub struct Global {
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--worker-id`.
    pub worker_id: String,
}

/// `1.5 GiB`-style sizes for people; exact byte counts stay in JSON.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        unit = u;
        if value < 1024.0 || u == "TiB" {
            break;
        }
        value /= 1024.0;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A duration in milliseconds with three decimals.
pub fn millis(d: std::time::Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Sanitizes a file name into a shard id: `[A-Za-z0-9_-]`, 1..=256 characters.
pub fn shard_id_from_name(name: &str) -> String {
    let mut id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(vram_residency::validation::MAX_ID_LEN)
        .collect();
    if id.is_empty() {
        id.push_str("shard");
    }
    id
}

/// Default capacity of each simulated device when `--devices` is given without a capacity.
pub const DEFAULT_SIM_CAPACITY: u64 = 1 << 30;

/// Which devices a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BackendArg {
    /// CUDA when a driver library and a device are present, else simulated devices.
    #[default]
    Auto,
    /// CUDA devices only; fails when there is no driver or device.
    Cuda,
    /// Simulated devices (device memory held in host memory).
    Simulated,
}

/// `--backend`, shared by `demo`, `bench`, `seal` and `devices`.
#[derive(Debug, Clone, Copy, Args)]
pub struct BackendOpt {
    /// Devices to run on: auto (CUDA when a driver and a device are present, else simulated),
    /// cuda, or simulated.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto, value_name = "auto|cuda|simulated")]
    pub backend: BackendArg,
}

/// The configuration for `--backend`: `Config::auto()` / `Config::cuda()`, or `count`
/// simulated devices of `capacity` bytes (`--devices` / `--device-capacity` imply simulated
/// devices under `auto`, and are refused with `cuda`, which uses the GPUs that are there).
pub fn base_config(
    global: &Global,
    backend: BackendArg,
    devices: Option<u32>,
    capacity: Option<u64>,
) -> Result<Config, CliError> {
    let sizes_given = devices.is_some() || capacity.is_some();
    let simulated = || {
        Config::simulated(
            devices.unwrap_or(2),
            capacity.unwrap_or(DEFAULT_SIM_CAPACITY),
        )
    };
    let config = match backend {
        BackendArg::Cuda if sizes_given => {
            return Err(CliError::usage(
                "--devices and --device-capacity describe simulated devices; --backend cuda uses the GPUs that are present",
            ));
        }
        BackendArg::Cuda => Config::cuda(),
        BackendArg::Simulated => simulated(),
        BackendArg::Auto if sizes_given => simulated(),
        BackendArg::Auto => Config::auto(),
    };
    Ok(config.worker_id(global.worker_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any file name (a peer may choose it) becomes a valid shard id.
        #[test]
        fn shard_ids_from_any_name_are_valid(name in any::<String>()) {
            let id = shard_id_from_name(&name);
            prop_assert!(vram_residency::validation::validate_identifier("shard_id", &id).is_ok(), "{id:?}");
        }

        #[test]
        fn human_bytes_never_panics(n in any::<u64>()) {
            let s = human_bytes(n);
            prop_assert!(s.ends_with('B'), "{s}");
        }
    }
}
