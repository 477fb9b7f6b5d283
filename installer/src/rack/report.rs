//! How `cairn rack provision` shows what happens: one progress bar per server on a terminal,
//! JSON lines with `--output json`, log lines otherwise; and the final table.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cairn_api::cli::OutputFormat;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::rack::machine::{Observer, Phase, Record, State};

/// The observer for a run.
pub enum Reporter {
    /// `--output json`: one JSON object per change on standard output.
    JsonLines,
    /// Progress bars on standard error (a terminal).
    Bars {
        /// The bars' container.
        multi: MultiProgress,
        /// One bar per server.
        bars: Mutex<BTreeMap<String, ProgressBar>>,
    },
    /// Not a terminal: log lines.
    Log,
}

impl Reporter {
    /// Picks the reporter for the output format and whether standard error is a terminal.
    pub fn new(output: OutputFormat, servers: &[String]) -> Reporter {
        use std::io::IsTerminal;
        match output {
            OutputFormat::Json => Reporter::JsonLines,
            OutputFormat::Table if std::io::stderr().is_terminal() => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{prefix:>8} {spinner} [{elapsed_precise}] {bar:30} {msg}",
                )
                .expect("valid template");
                let bars = servers
                    .iter()
                    .map(|name| {
                        let bar = multi.add(ProgressBar::new(100));
                        bar.set_style(style.clone());
                        bar.set_prefix(name.clone());
                        bar.enable_steady_tick(std::time::Duration::from_millis(200));
                        (name.clone(), bar)
                    })
                    .collect();
                Reporter::Bars {
                    multi,
                    bars: Mutex::new(bars),
                }
            }
            OutputFormat::Table => Reporter::Log,
        }
    }
}

/// Seconds since the Unix epoch, in JSON lines, so scripts can time each step.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A one-line description of a state (the bar's message, the log line).
pub fn describe(state: &State) -> String {
    match state {
        State::Installing {
            step,
            bytes_written,
            bytes_total,
            ..
        } => {
            let step = step
                .map(|s| {
                    serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                })
                .flatten()
                .unwrap_or_else(|| "waiting for the agent".into());
            match bytes_total {
                Some(total) if *total > 0 => format!(
                    "installing: {step} {} / {} MiB",
                    bytes_written >> 20,
                    total >> 20
                ),
                _ => format!("installing: {step}"),
            }
        }
        State::Provisioned { appliance_id } => format!("provisioned as {appliance_id}"),
        State::Failed { phase, reason } => format!("failed in {}: {reason}", phase.as_str()),
        other if other.attempt() > 1 => format!("{} (attempt {})", other.name(), other.attempt()),
        other => other.name().to_string(),
    }
}

/// Where along the way a state is, in percent (the bar's position).
fn percent(state: &State) -> u64 {
    match state {
        State::Registered => 0,
        State::Inspecting { .. } => 5,
        State::ConfiguringFirmware { .. } => 10,
        State::BootingInstaller { .. } => 15,
        State::Installing {
            bytes_written,
            bytes_total: Some(total),
            ..
        } if *total > 0 => 20 + 60 * bytes_written.min(total) / total,
        State::Installing { .. } => 20,
        State::Rebooting { .. } => 80,
        State::FirstBoot { .. } => 85,
        State::Provisioned { .. } | State::Failed { .. } => 100,
    }
}

impl Observer for Reporter {
    fn changed(&self, server: &str, state: &State) {
        match self {
            Reporter::JsonLines => {
                let line = serde_json::json!({"server": server, "event": "state", "detail": state, "time": now()});
                println!("{line}");
            }
            Reporter::Bars { bars, .. } => {
                if let Some(bar) = bars.lock().expect("bars lock").get(server) {
                    bar.set_position(percent(state));
                    bar.set_message(describe(state));
                    if state.is_final() {
                        bar.finish();
                    }
                }
            }
            Reporter::Log => match state {
                State::Failed { .. } => tracing::error!(%server, "{}", describe(state)),
                _ => tracing::info!(%server, "{}", describe(state)),
            },
        }
    }

    fn note(&self, server: &str, message: &str) {
        match self {
            Reporter::JsonLines => {
                let line = serde_json::json!({"server": server, "event": "note", "message": message, "time": now()});
                println!("{line}");
            }
            Reporter::Bars { multi, .. } => {
                let _ = multi.println(format!("{server}: {message}"));
            }
            Reporter::Log => tracing::warn!(%server, "{message}"),
        }
    }
}

/// The final table: server, state, seconds per phase, total, error.
pub fn table(records: &[(String, Record)]) -> String {
    let mut out = format!("{:<10} {:<12}", "SERVER", "STATE");
    let short = [
        "INSPECT", "FIRMWARE", "BOOT", "INSTALL", "REBOOT", "1ST-BOOT",
    ];
    for s in short {
        out.push_str(&format!(" {s:>8}"));
    }
    out.push_str(&format!(" {:>8}  ERROR\n", "TOTAL"));
    for (name, r) in records {
        out.push_str(&format!("{:<10} {:<12}", name, r.state.name()));
        let mut total = 0.0;
        for phase in Phase::ALL {
            match r.seconds.get(&phase) {
                Some(s) => {
                    total += s;
                    out.push_str(&format!(" {:>7.1}s", s));
                }
                None => out.push_str(&format!(" {:>8}", "-")),
            }
        }
        out.push_str(&format!(" {:>7.1}s", total));
        if let State::Failed { reason, .. } = &r.state {
            out.push_str(&format!("  {reason}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_times_per_phase_and_the_error() {
        let mut ok = Record {
            state: State::Provisioned {
                appliance_id: "a".into(),
            },
            ..Record::default()
        };
        ok.seconds.insert(Phase::Installing, 30.0);
        ok.seconds.insert(Phase::FirstBoot, 12.5);
        let bad = Record {
            state: State::Failed {
                phase: Phase::Inspecting,
                reason: "BMC reading power state: authentication failed".into(),
            },
            ..Record::default()
        };
        let t = table(&[("srv1".into(), ok), ("srv2".into(), bad)]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SERVER") && lines[0].contains("INSTALL"));
        assert!(
            lines[1].contains("provisioned")
                && lines[1].contains("30.0s")
                && lines[1].contains("42.5s"),
            "{t}"
        );
        assert!(
            lines[2].contains("failed") && lines[2].contains("authentication failed"),
            "{t}"
        );
    }

    #[test]
    fn install_progress_reads_as_step_and_mebibytes() {
        let s = State::Installing {
            attempt: 1,
            step: Some(cairn_api::InstallStep::Writing),
            bytes_written: 64 << 20,
            bytes_total: Some(256 << 20),
        };
        assert_eq!(describe(&s), "installing: writing 64 / 256 MiB");
        assert_eq!(percent(&s), 35);
    }
}
