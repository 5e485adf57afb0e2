//! Logging: `tracing-subscriber` to stderr, filtered by `RUST_LOG`, as text or JSON lines.
//!
//! When `RUST_LOG` is unset the subcommand's default applies (`warn`; `off` for the demo, which
//! narrates every step itself). A malformed `RUST_LOG` is reported once and the default used.

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// Installs the global subscriber. Never fails: if one is already installed, nothing happens.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => f,
            Err(e) => {
                // The parse error quotes the variable's text: sanitised, bounded.
                let why = super::untrusted::bounded(&e.to_string(), 200);
                eprintln!("warning: ignoring RUST_LOG ({why}); using {default_filter:?}");
                EnvFilter::new(default_filter)
            }
        },
        _ => EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
