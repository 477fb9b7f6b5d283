//! The conventions every cairn binary shares: logging flags, one tracing setup, and one
//! mapping from outcomes to exit codes.
//!
//! Exit codes (also in README):
//! - 0: everything asked for succeeded;
//! - 1: the command ran and something failed (for fleet commands: at least one target);
//! - 2: the command line was wrong, or the subcommand is not built yet;
//! - 3: the configuration or input file is invalid.

use std::fmt::Display;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// `--log-level` and `--log-format`, flattened into every binary's top-level arguments.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log verbosity: error, warn, info, debug, trace, or a filter such as
    /// `cairn_hardware=debug,info`. The `RUST_LOG` variable overrides it.
    #[arg(long, global = true, default_value = "info", env = "CAIRN_LOG_LEVEL")]
    pub log_level: String,
    /// Log format on standard error: `text` for people, `json` for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--output table|json` for commands that print results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Installs the global tracing subscriber, writing to standard error so that standard output
/// stays clean for `--output json`.
pub fn init_tracing(args: &LogArgs) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests calling main twice) keeps the first subscriber.
    let _ = match args.log_format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What a command ended with, before it becomes an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Success,
    /// Ran, and something failed; the details were already reported.
    Failed,
    /// The command line was wrong.
    Usage,
    /// The configuration or an input file is invalid.
    InvalidInput,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::InvalidInput => 3,
        })
    }
}

/// A subcommand that is not built yet says so on standard error and exits 2; it never
/// pretends to have done anything.
pub fn not_built(command: &str, tracking: &str) -> Exit {
    eprintln!("error: `{command}` is not built yet (tracked in {tracking}); nothing was done");
    Exit::Usage
}

/// Turns a command's result into the process exit code, printing the error chain once.
/// `{:#}` prints an `anyhow` chain as "outer: inner: root cause".
pub fn finish<E: Display>(result: Result<Exit, E>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            Exit::Failed.into()
        }
    }
}
