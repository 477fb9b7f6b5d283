//! How `cairn rack provision` shows what happens: with `--output json`, one JSON object per
//! change on standard output; otherwise a log line per change and one progress bar per server,
//! drawn through the shared [`cairn_api::cli::Progress`] (tracing-indicatif), so log lines are
//! printed above the bars instead of tearing them (bars appear only where `init_tracing` set
//! up a terminal); and the final table.

use std::collections::BTreeMap;

use cairn_api::cli::{OutputFormat, Progress};

use crate::rack::machine::{Observer, Phase, Record, State};

/// The observer for a run.
pub enum Reporter {
    /// `--output json`: one JSON object per change on standard output.
    JsonLines,
    /// For people: log lines, and a bar per server on a terminal.
    Text {
        /// One bar per server, dropped (cleared) with the reporter.
        bars: BTreeMap<String, Progress>,
    },
}

impl Reporter {
    /// The reporter for the output format and these servers.
    pub fn new(output: OutputFormat, servers: &[String]) -> Reporter {
        match output {
            OutputFormat::Json => Reporter::JsonLines,
            OutputFormat::Table => {
                let width = servers.iter().map(String::len).max().unwrap_or(0);
                let bars = servers
                    .iter()
                    .map(|name| {
                        let bar = Progress::items(&format!("{name:<width$} registered"), STEPS);
                        (name.clone(), bar)
                    })
                    .collect();
                Reporter::Text { bars }
            }
        }
    }

    fn label(bars: &BTreeMap<String, Progress>, server: &str) -> String {
        let width = bars.keys().map(String::len).max().unwrap_or(0);
        format!("{server:<width$}")
    }
}

/// Steps along the way, the bars' length: the six working phases and the end.
const STEPS: u64 = 7;

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

/// Steps done at a state (the bar's position, out of [`STEPS`]).
fn step(state: &State) -> u64 {
    match state {
        State::Registered => 0,
        State::Provisioned { .. } | State::Failed { .. } => STEPS,
        other => other
            .phase()
            .and_then(|p| Phase::ALL.iter().position(|q| *q == p))
            .map_or(0, |i| i as u64),
    }
}

impl Observer for Reporter {
    fn changed(&self, server: &str, state: &State) {
        match self {
            Reporter::JsonLines => {
                let line = serde_json::json!({"server": server, "event": "state", "detail": state, "time": now()});
                println!("{line}");
            }
            Reporter::Text { bars } => {
                if let Some(bar) = bars.get(server) {
                    bar.set_position(step(state));
                    bar.set_message(&format!(
                        "{} {}",
                        Self::label(bars, server),
                        describe(state)
                    ));
                }
                match state {
                    State::Failed { .. } => tracing::error!(%server, "{}", describe(state)),
                    // Byte counts change every second: the bar shows them, the log does not.
                    State::Installing {
                        step: Some(cairn_api::InstallStep::Writing),
                        ..
                    } => {}
                    _ => tracing::info!(%server, "{}", describe(state)),
                }
            }
        }
    }

    fn note(&self, server: &str, message: &str) {
        match self {
            Reporter::JsonLines => {
                let line = serde_json::json!({"server": server, "event": "note", "message": message, "time": now()});
                println!("{line}");
            }
            Reporter::Text { .. } => tracing::warn!(%server, "{message}"),
        }
    }
}

/// The final table: server, state, seconds per phase, total, error.
pub fn table(records: &[(String, Record)]) -> String {
    let seconds = |s: f64| format!("{s:.1}s");
    cairn_api::cli::table(
        &[
            "server", "state", "inspect", "firmware", "boot", "install", "reboot", "1st-boot",
            "total", "error",
        ],
        records.iter().map(|(name, r)| {
            let mut row = vec![name.clone(), r.state.name().to_owned()];
            let mut total = 0.0;
            for phase in Phase::ALL {
                row.push(match r.seconds.get(&phase) {
                    Some(s) => {
                        total += s;
                        seconds(*s)
                    }
                    None => "-".into(),
                });
            }
            row.push(seconds(total));
            row.push(match &r.state {
                State::Failed { reason, .. } => reason.clone(),
                _ => String::new(),
            });
            row
        }),
    )
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
        assert_eq!(step(&s), 3);
        assert_eq!(step(&State::Registered), 0);
        assert_eq!(
            step(&State::Failed {
                phase: Phase::Installing,
                reason: "x".into()
            }),
            STEPS
        );
    }
}
