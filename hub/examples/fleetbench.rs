//! Fleet API benchmark (BENCHMARKS.md, `hub/bench/fleet.sh`, issue 20 item 2).
//!
//! - `seed`: writes N appliance records (and a status for each) straight through the hub's
//!   store API, embedded file or etcd: registering 100,000 appliances one CSR at a time would
//!   measure registration, not lists.
//! - `measure`: against a running hub, over HTTPS with the typed client: p50/p99 of a page of
//!   500 (the first page, a page from the middle by its cursor, a page with a selector), the
//!   latency of a watch event after a label change, and the hub's RSS before and after one
//!   pass over every page. Prints one JSON object.
//! - `campaign`: an upgrade campaign over N appliances in batches of B, driven in this
//!   process on the given etcd: each step is one driver pass (record reports, order the next
//!   batch) after the simulated appliances of the batch reported success through their status
//!   records, as their heartbeats would. Prints one JSON object with the step times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_api::hub::{
    ApplianceQuery, CreateCampaign, LabelRequest, MemberState, Selector, WatchQuery,
};
use cairn_api::{ApplianceId, HardwareInventory, NodeStatus, UpgradePhase, UpgradeReport};
use cairn_hub::fleet::{Fleet, FleetSettings};
use cairn_hub::model::{Appliance, Release, Status, keys};
use cairn_hub::store::embedded::EmbeddedStore;
use cairn_hub::store::etcd::{EtcdSettings, EtcdStore};
use cairn_hub::store::{MAX_TXN_OPS, Op, Store};
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
use clap::{Parser, Subcommand};
use serde_json::json;
use time::OffsetDateTime;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Where the records go.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The embedded store file (`<data>/hub.redb`), with no hub running on it.
    #[arg(long, conflicts_with = "etcd")]
    embedded: Option<std::path::PathBuf>,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The hub's key prefix in etcd.
    #[arg(long, default_value = "/cairn/hub/")]
    etcd_prefix: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes appliance records `fb-000000`... with statuses.
    Seed {
        #[command(flatten)]
        store: StoreArgs,
        /// Records to write.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
    },
    /// Measures pages, a selector, a watch and the hub's RSS.
    Measure {
        /// Hub URL.
        #[arg(long)]
        url: String,
        /// The hub CA (PEM).
        #[arg(long)]
        ca: std::path::PathBuf,
        /// Admin token file.
        #[arg(long)]
        token_file: std::path::PathBuf,
        /// The hub's process ID, for its RSS.
        #[arg(long)]
        pid: u32,
        /// Requests timed per figure.
        #[arg(long, default_value_t = 50)]
        samples: usize,
    },
    /// Drives a campaign over seeded appliances in this process, on etcd.
    Campaign {
        #[command(flatten)]
        store: StoreArgs,
        /// Appliances (seeded first).
        #[arg(long, default_value_t = 10_000)]
        appliances: usize,
        /// Batch size.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

async fn open(store: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &store.embedded {
        Some(path) => Arc::new(EmbeddedStore::open(path).context("opening the store file")?),
        None if !store.etcd.is_empty() => Arc::new(
            EtcdStore::connect(
                &store.etcd,
                &EtcdSettings::new(&store.etcd_prefix, "fleetbench", Duration::from_secs(10)),
            )
            .await
            .context("connecting to etcd")?,
        ),
        None => bail!("give --embedded FILE or --etcd URLS"),
    })
}

fn node_status(os: &str, report: Option<UpgradeReport>) -> Status {
    Status {
        last_seen: OffsetDateTime::now_utc(),
        interval_seconds: 30,
        applied_generation: 1,
        online: true,
        status: NodeStatus {
            agent_version: "0.1.0".into(),
            os_version: os.into(),
            booted_slot: Some("a".into()),
            uptime_seconds: 1000,
            load1: 0.5,
            conditions: vec![],
            counters: Default::default(),
            vtep_address: None,
            hub_link: None,
            upgrade: report,
            config: None,
            observed_at: OffsetDateTime::now_utc(),
        },
    }
}

/// Appliance `i`: 20 sites, a third `role=edge`, one in ten `hold`.
fn appliance(i: usize) -> Appliance {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        "role".to_owned(),
        if i.is_multiple_of(3) { "edge" } else { "core" }.to_owned(),
    );
    labels.insert("rack".to_owned(), format!("r{}", i % 40));
    if i.is_multiple_of(10) {
        labels.insert("hold".to_owned(), "yes".to_owned());
    }
    Appliance {
        id: ApplianceId::new(format!("fb-{i:06}")).expect("valid ID"),
        site: format!("site-{}", i % 20),
        hostname: format!("fb-{i:06}"),
        labels,
        inventory: HardwareInventory {
            serial: format!("FB{i:06}"),
            ..Default::default()
        },
        agent_version: "0.1.0".into(),
        cert_sha256: format!("{i:064x}"),
        previous_cert_sha256: None,
        cert_not_after: OffsetDateTime::now_utc() + time::Duration::days(1),
        registered_at: OffsetDateTime::now_utc(),
        rekeys: 0,
        vtep_address: None,
        vtep_refused: None,
        vpcs: Default::default(),
        control_plane: None,
        join: None,
        desired: Default::default(),
        quarantined: Default::default(),
        upgrade_flag: None,
    }
}

async fn seed(store: &dyn Store, records: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = serde_json::to_vec(&node_status("1.0", None))?;
    // Two keys per appliance, as many as one transaction holds.
    for chunk in (0..records).collect::<Vec<_>>().chunks(MAX_TXN_OPS / 2) {
        let mut ops = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let a = appliance(i);
            ops.push(Op::put(format!("{}{}", keys::STATUS, a.id), status.clone()));
            ops.push(Op::put(
                format!("{}{}", keys::APPLIANCES, a.id),
                serde_json::to_vec(&a)?,
            ));
        }
        if !store.txn(vec![], ops).await? {
            bail!("an unconditional write was refused");
        }
    }
    Ok(start.elapsed())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// p50 and p99 of `samples` timings, milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    json!({"p50_ms": at(0.50), "p99_ms": at(0.99), "n": samples.len()})
}

async fn time_query(
    hub: &HubClient,
    query: &ApplianceQuery,
    samples: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut timings = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let page = hub.list_appliances_page(query).await?;
        timings.push(start.elapsed());
        if page.items.is_empty() {
            bail!("an empty page: were the records seeded?");
        }
    }
    Ok(percentiles(timings))
}

async fn measure(
    url: &str,
    ca: &std::path::Path,
    token_file: &std::path::Path,
    pid: u32,
    samples: usize,
) -> anyhow::Result<serde_json::Value> {
    let ca = std::fs::read_to_string(ca).context("reading the CA")?;
    let token = std::fs::read_to_string(token_file).context("reading the token")?;
    let hub = HubClient::new(url, &Trust::CaBundle(ca), None)?.with_bearer(token.trim());
    let rss_before = rss_kib(pid)?;
    // One pass over every page: the whole fleet through the hub once.
    let start = Instant::now();
    let mut query = ApplianceQuery {
        limit: Some(500),
        ..Default::default()
    };
    let (mut pages, mut total, mut middle) = (0, 0, None);
    loop {
        let page = hub.list_appliances_page(&query).await?;
        pages += 1;
        total += page.items.len();
        if pages == 100 {
            middle = query.cursor.clone();
        }
        match page.cursor {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    let full_pass = start.elapsed();
    let rss_after = rss_kib(pid)?;
    let first = time_query(
        &hub,
        &ApplianceQuery {
            limit: Some(500),
            ..Default::default()
        },
        samples,
    )
    .await?;
    let middle = time_query(
        &hub,
        &ApplianceQuery {
            limit: Some(500),
            cursor: middle,
            ..Default::default()
        },
        samples,
    )
    .await?;
    let selector = "role in (edge),!hold,rack notin (r1,r2)";
    let selected = time_query(
        &hub,
        &ApplianceQuery {
            limit: Some(500),
            selector: Some(selector.into()),
            ..Default::default()
        },
        samples,
    )
    .await?;
    // Watch latency: from sending a label change to its event.
    let mut watch = hub.watch_appliances(&WatchQuery::default()).await?;
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = format!("fb-{:06}", i * 7);
        let request = LabelRequest {
            labels: [("bench".to_owned(), Some(format!("v{i}")))].into(),
        };
        let start = Instant::now();
        hub.label_appliance(&id, &request).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .context("no watch event within 30 s")??
                .context("the watch ended")?;
            if event.id.as_str() == id {
                break;
            }
        }
        latencies.push(start.elapsed());
    }
    Ok(json!({
        "records": total,
        "full_pass_s": full_pass.as_secs_f64(),
        "pages": pages,
        "first_page": first,
        "middle_page": middle,
        "selector_page": selected,
        "selector": selector,
        "watch_event_after_label": percentiles(latencies),
        "rss_before_pass_kib": rss_before,
        "rss_after_pass_kib": rss_after,
    }))
}

async fn campaign(
    store: Arc<dyn Store>,
    n: usize,
    batch: u32,
) -> anyhow::Result<serde_json::Value> {
    let seeded = seed(store.as_ref(), n).await?;
    let release = Release {
        version: "2.0".into(),
        architecture: "x86_64".into(),
        compatible_from: vec![],
        size_bytes: 1,
        sha256: "00".repeat(32),
        signing_key: "bench".into(),
        build_time: "2026-12-01T00:00:00Z".into(),
        source_url: None,
        added_at: OffsetDateTime::now_utc(),
        added_by: "fleetbench".into(),
    };
    store
        .txn(
            vec![],
            vec![Op::put(
                format!("{}2.0", keys::RELEASES),
                serde_json::to_vec(&release)?,
            )],
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let ca = cairn_hub::pki::init(dir.path(), &["localhost".into()], None)?;
    let fleet = Fleet::new(store.clone(), Arc::new(ca), FleetSettings::default());
    let token = fleet
        .bootstrap_admin()
        .await?
        .context("the store already had an admin: use a fresh etcd prefix")?;
    let admin = fleet.authenticate(&token, "127.0.0.1").await?;
    let start = Instant::now();
    fleet
        .create_campaign(
            &admin,
            CreateCampaign {
                name: "bench".into(),
                release: "2.0".into(),
                selector: Selector {
                    expression: "hold!=never".parse()?,
                    ..Default::default()
                },
                canaries: 0,
                batch_size: Some(batch),
                max_concurrency: None,
                max_failures: 0,
                window: None,
                prestage: false,
                allow_downgrade: false,
                deadline_seconds: None,
            },
        )
        .await?;
    let created = start.elapsed();
    fleet.campaign_action(&admin, "bench", "start").await?;
    let mut steps = Vec::new();
    let mut reports = Vec::new();
    loop {
        let pass = Instant::now();
        fleet.drive_campaigns().await?;
        steps.push(pass.elapsed());
        let view = fleet.show_campaign(&admin, "bench").await?;
        let ordered: Vec<_> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Ordered)
            .map(|m| m.appliance.clone())
            .collect();
        if ordered.is_empty() {
            if view
                .members
                .iter()
                .all(|m| m.state == MemberState::Committed)
            {
                break;
            }
            bail!("campaign stuck: {:?} ({})", view.state, view.state_reason);
        }
        // The batch's appliances report the new version, as their heartbeats would.
        let report = Instant::now();
        for chunk in ordered.chunks(MAX_TXN_OPS) {
            let mut ops = Vec::with_capacity(chunk.len());
            for id in chunk {
                let status = node_status(
                    "2.0",
                    Some(UpgradeReport {
                        campaign: "bench".into(),
                        version: "2.0".into(),
                        phase: UpgradePhase::Committed,
                        reason: String::new(),
                        bytes_done: 0,
                        bytes_total: 0,
                        logs: vec![],
                        at: OffsetDateTime::now_utc(),
                    }),
                );
                ops.push(Op::put(
                    format!("{}{id}", keys::STATUS),
                    serde_json::to_vec(&status)?,
                ));
            }
            store.txn(vec![], ops).await?;
        }
        reports.push(report.elapsed());
    }
    let total = start.elapsed();
    Ok(json!({
        "appliances": n,
        "batch": batch,
        "seed_s": seeded.as_secs_f64(),
        "create_s": created.as_secs_f64(),
        "driver_pass": percentiles(steps.clone()),
        "driver_pass_max_ms": steps.iter().max().map(|d| d.as_secs_f64() * 1000.0),
        "passes": steps.len(),
        "batch_reports_written": percentiles(reports),
        "campaign_total_s": total.as_secs_f64(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = match args.command {
        Command::Seed { store, records } => {
            let store = open(&store).await?;
            let took = seed(store.as_ref(), records).await?;
            json!({"records": records, "seed_s": took.as_secs_f64()})
        }
        Command::Measure {
            url,
            ca,
            token_file,
            pid,
            samples,
        } => measure(&url, &ca, &token_file, pid, samples).await?,
        Command::Campaign {
            store,
            appliances,
            batch,
        } => campaign(open(&store).await?, appliances, batch).await?,
    };
    println!("{out}");
    Ok(())
}
