//! The `vram-residency` command: a demo of the whole seal → verify → execute → attest → detect
//! story on the default backend (simulated devices in this build), plus operator tools for real files (`seal`), received
//! seal records (`verify-info`), audit logs (`audit verify`) and devices (`devices`).
//!
//! Every failure ends in one `error:` line on stderr (and a `hint:` line where one helps) and a
//! distinct exit code: 2 usage, 3 integrity, 4 environment. The worker token is never printed.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        // `vram-residency demo | head`: the reader went away. Stop quietly, like other Unix
        // tools killed by SIGPIPE (128 + 13).
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        let msg = vram_residency::text::sanitize(&msg);
        eprintln!("error: internal error (this is a bug in vram-residency): {msg}");
    }));

    let args = cli::Cli::parse();
    cli::logging::init(args.log_format, args.command.default_log_filter());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return cli::error::CliError::env(format!("cannot start the async runtime: {e}"))
                .report();
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
