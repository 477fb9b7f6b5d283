//! The conventions every cairn binary shares: logging flags, one tracing setup, one table
//! printer, one error-chain printer and one mapping from outcomes to exit codes.
//!
//! Exit codes (also in README):
//! - 0: everything asked for succeeded;
//! - 1: the command ran and something failed (for fleet commands: at least one target);
//! - 2: the command line was wrong;
//! - 3: the configuration or input file is invalid.

pub mod service;

use std::fmt::Display;
use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_indicatif::style::ProgressStyle;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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
///
/// With text logs on a terminal, [`Progress`] bars are drawn at the bottom of standard error
/// and log lines are printed above them, so neither tears the other. Anywhere else (a pipe,
/// CI, `--log-format json`) no bar is drawn and the logs are unchanged.
pub fn init_tracing(args: &LogArgs) {
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&args.log_level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    // A second initialisation (tests calling main twice) keeps the first subscriber.
    let _ = match args.log_format {
        LogFormat::Text if std::io::stderr().is_terminal() => {
            let bars = IndicatifLayer::new()
                .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
            // The level filter applies to the log lines only: `--log-level error` still shows
            // the bars.
            let logs = tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(bars.get_stderr_writer())
                .with_filter(filter());
            tracing_subscriber::registry()
                .with(logs)
                .with(bars.with_filter(IndicatifFilter::new(false)))
                .try_init()
                .map_err(|e| e.to_string())
        }
        // Files and the journal get plain text: colour codes there are noise to grep through.
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init()
            .map_err(|e| e.to_string()),
    };
}

/// A progress bar for long work (many servers, many bytes). It is drawn only where
/// [`init_tracing`] set up a terminal; elsewhere every call is cheap and silent, so commands
/// use it unconditionally. The bar goes away when the value is dropped.
#[derive(Debug)]
pub struct Progress {
    span: tracing::Span,
}

impl Progress {
    /// A bar counting `total` items (servers, steps), labelled `message`.
    pub fn items(message: &str, total: u64) -> Self {
        Self::with_template(message, total, "{msg} [{bar:30}] {pos}/{len} {elapsed}")
    }

    /// A bar counting `total` bytes, with rate and time left.
    pub fn bytes(message: &str, total: u64) -> Self {
        Self::with_template(
            message,
            total,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    fn with_template(message: &str, total: u64, template: &str) -> Self {
        let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
        if let Ok(style) = ProgressStyle::with_template(template) {
            span.pb_set_style(&style.progress_chars("=> "));
        }
        span.pb_set_length(total);
        span.pb_set_message(message);
        span.pb_start();
        Self { span }
    }

    /// Moves the bar forward by `delta`.
    pub fn inc(&self, delta: u64) {
        self.span.pb_inc(delta);
    }

    /// Sets the bar's position.
    pub fn set_position(&self, position: u64) {
        self.span.pb_set_position(position);
    }

    /// Replaces the label.
    pub fn set_message(&self, message: &str) {
        self.span.pb_set_message(message);
    }
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
    /// A command run elsewhere ended with this code, passed through (`cairn hub appliances
    /// exec`).
    Code(u8),
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::InvalidInput => 3,
            Exit::Code(code) => code,
        })
    }
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

/// Rows as aligned columns under upper-case headers, no borders, never wrapped (scripts may
/// cut columns); each line ends with a newline and no trailing blanks.
pub fn table<R, C>(headers: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = Vec<C>>,
    C: Into<comfy_table::Cell>,
{
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    // The preset pads every cell by one blank on each side: drop the first and the trailing.
    t.lines()
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(&l).trim_end()))
        .collect()
}
