//! The hub scrapes the metrics of every appliance whose tunnel this replica holds (issue 17),
//! keeps the last answer of each with its tunnel (so it goes when the tunnel goes), and
//! serves them together at `GET /v1/metrics/appliances`, each sample labelled with its
//! appliance and site.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::tunnel::{TunnelError, Tunnels};

/// How the hub scrapes its appliances.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeSettings {
    /// Time between two rounds.
    pub every: Duration,
    /// Longest one appliance's scrape may take (the stream, the answer and its body).
    pub timeout: Duration,
    /// Scrapes in flight at once.
    pub concurrency: usize,
    /// Largest answer kept; a larger one fails the scrape.
    pub max_bytes: usize,
}

/// One appliance's last scrape: its site as of the scrape, and the node's text.
#[derive(Debug)]
pub struct Scrape {
    /// The appliance's site.
    pub site: String,
    /// The node's OpenMetrics text, as it answered.
    pub text: String,
}

/// Why one appliance's scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The tunnel refused or broke.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The node answered something else than 200.
    #[error("the node answered HTTP {0}; is its cairn-node older than the hub?")]
    Status(u16),
    /// Reading the answer failed, or it was too large.
    #[error("reading the node's metrics: {0}")]
    Body(String),
    /// The whole scrape took longer than the timeout.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The appliance's record is gone, or the store failed.
    #[error("reading the appliance's site: {0}")]
    Site(String),
}

/// Scrapes every tunnel of this replica every [`ScrapeSettings::every`], forever.
pub async fn run(
    tunnels: Arc<Tunnels>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    settings: ScrapeSettings,
) {
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        round(&tunnels, &fleet, &metrics, settings).await;
    }
}

/// One round: each connected appliance once, at most `concurrency` at a time.
async fn round(tunnels: &Tunnels, fleet: &Fleet, metrics: &Metrics, settings: ScrapeSettings) {
    use futures::StreamExt;
    futures::stream::iter(tunnels.connected())
        .for_each_concurrent(settings.concurrency.max(1), |id| async move {
            let result = tokio::time::timeout(settings.timeout, scrape(tunnels, fleet, &id, settings))
                .await
                .unwrap_or(Err(ScrapeError::Timeout(settings.timeout.as_secs())));
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            metrics
                .node_scrapes
                .get_or_create(&vec![("result", outcome.to_owned())])
                .inc();
            match result {
                Ok(scrape) => tunnels.keep_scrape(&id, Some(Arc::new(scrape))),
                Err(e) => {
                    tracing::warn!(appliance = %id, error = %e, "scraping the node's metrics failed");
                    // What is served is what the node answered at the last attempt: an
                    // appliance that stopped answering shows nothing rather than old values.
                    tunnels.keep_scrape(&id, None);
                }
            }
        })
        .await;
}

async fn scrape(
    tunnels: &Tunnels,
    fleet: &Fleet,
    id: &str,
    settings: ScrapeSettings,
) -> Result<Scrape, ScrapeError> {
    let site = fleet
        .appliance_site(id)
        .await
        .map_err(|e| ScrapeError::Site(e.to_string()))?
        .ok_or_else(|| ScrapeError::Site("no such appliance".into()))?;
    let request = hyper::Request::get(cairn_api::hub::remote::NODE_METRICS_PATH)
        .header(hyper::header::HOST, "node")
        .body(Full::new(Bytes::new()))
        .expect("a static request");
    let response = tunnels.request(id, request).await?;
    if response.status() != hyper::StatusCode::OK {
        return Err(ScrapeError::Status(response.status().as_u16()));
    }
    let body = Limited::new(response.into_body(), settings.max_bytes)
        .collect()
        .await
        .map_err(|e| ScrapeError::Body(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).map_err(|e| ScrapeError::Body(e.to_string()))?;
    Ok(Scrape { site, text })
}

/// Several appliances' metrics merged into one exposition: each family once, with its
/// `HELP`/`TYPE`/`UNIT` lines once, holding every appliance's samples, each sample with
/// `appliance` and `site` labels first.
///
/// The node's text is relabelled line by line rather than parsed: prometheus-client (the
/// encoder on both ends) has no parser, and the text is cairn-node's own OpenMetrics output,
/// whose lines are `#` comments naming a family, samples (`name{labels} value` or
/// `name value`) and `# EOF`. Adding labels is an insertion after the sample's name, which
/// never needs to read the label values after it.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<FamilyText>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Default)]
struct FamilyText {
    header: Vec<String>,
    samples: Vec<String>,
}

impl Exposition {
    /// Adds one appliance's text.
    pub fn add(&mut self, text: &str, appliance: &str, site: &str) {
        let labels = format!(
            "appliance=\"{}\",site=\"{}\"",
            escape(appliance),
            escape(site)
        );
        // Families this text introduced: only their header lines are kept.
        let mut fresh = Vec::new();
        let mut current = None;
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if let (Some("HELP" | "TYPE" | "UNIT"), Some(name)) = (words.next(), words.next()) {
                    let (i, new) = self.family(name);
                    if new {
                        fresh.push(i);
                    }
                    if fresh.contains(&i) {
                        self.families[i].header.push(line.to_owned());
                    }
                    current = Some(i);
                }
                // `# EOF` and any other comment: the merged text ends with its own EOF.
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let (name, rest) = line.split_at(end);
            let sample = match rest.strip_prefix('{') {
                Some(inner) if inner.starts_with('}') => format!("{name}{{{labels}{inner}"),
                Some(inner) => format!("{name}{{{labels},{inner}"),
                None => format!("{name}{{{labels}}}{rest}"),
            };
            // A sample before any header (not what cairn-node writes) is its own family.
            let i = match current {
                Some(i) => i,
                None => self.family(name).0,
            };
            self.families[i].samples.push(sample);
        }
    }

    fn family(&mut self, name: &str) -> (usize, bool) {
        if let Some(&i) = self.index.get(name) {
            return (i, false);
        }
        self.families.push(FamilyText::default());
        let i = self.families.len() - 1;
        self.index.insert(name.to_owned(), i);
        (i, true)
    }

    /// The OpenMetrics text, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            for line in family.header.iter().chain(&family.samples) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "\
# HELP cairn_node_heartbeat_seconds Round trip of each report delivered to the hub.
# TYPE cairn_node_heartbeat_seconds histogram
cairn_node_heartbeat_seconds_sum 0.02
cairn_node_heartbeat_seconds_count 1
cairn_node_heartbeat_seconds_bucket{le=\"0.001\"} 0
cairn_node_heartbeat_seconds_bucket{le=\"+Inf\"} 1
# HELP cairn_node_queued_reports Reports waiting for the hub.
# TYPE cairn_node_queued_reports gauge
cairn_node_queued_reports 3
# HELP cairn_node_events Persistent counts.
# TYPE cairn_node_events counter
cairn_node_events_total{name=\"reconnects\"} 2
# EOF
";

    #[test]
    fn every_sample_gets_the_appliance_and_site_and_each_family_one_header() {
        let mut e = Exposition::default();
        e.add(NODE, "ap-1", "east");
        e.add(NODE, "ap-2", "we\"st");
        let text = e.render();
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            "cairn_node_heartbeat_seconds_count{appliance=\"ap-1\",site=\"east\"} 1",
            "cairn_node_heartbeat_seconds_bucket{appliance=\"ap-1\",site=\"east\",le=\"+Inf\"} 1",
            "cairn_node_heartbeat_seconds_bucket{appliance=\"ap-2\",site=\"we\\\"st\",le=\"0.001\"} 0",
            "cairn_node_queued_reports{appliance=\"ap-2\",site=\"we\\\"st\"} 3",
            "cairn_node_events_total{appliance=\"ap-1\",site=\"east\",name=\"reconnects\"} 2",
        ] {
            assert!(lines.contains(&line), "{line} missing:\n{text}");
        }
        for header in [
            "# TYPE cairn_node_heartbeat_seconds histogram",
            "# HELP cairn_node_queued_reports Reports waiting for the hub.",
            "# TYPE cairn_node_events counter",
        ] {
            assert_eq!(
                lines.iter().filter(|l| **l == header).count(),
                1,
                "{header} not once:\n{text}"
            );
        }
        // A family's samples follow its header, both appliances' together; one EOF, last.
        let type_at = lines
            .iter()
            .position(|l| *l == "# TYPE cairn_node_queued_reports gauge")
            .unwrap();
        assert_eq!(
            &lines[type_at + 1..type_at + 3],
            &[
                "cairn_node_queued_reports{appliance=\"ap-1\",site=\"east\"} 3",
                "cairn_node_queued_reports{appliance=\"ap-2\",site=\"we\\\"st\"} 3",
            ]
        );
        assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1);
        assert_eq!(lines.last(), Some(&"# EOF"));
        // No sample is left without its appliance.
        assert!(
            lines
                .iter()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.contains("{appliance=\"")),
            "{text}"
        );
    }

    #[test]
    fn nothing_scraped_is_an_empty_exposition() {
        assert_eq!(Exposition::default().render(), "# EOF\n");
    }
}
