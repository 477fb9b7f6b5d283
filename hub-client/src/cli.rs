//! `cairn hub ...`: the operator's command for the hub API, on [`HubClient`].
//!
//! `login` pins the hub's CA by the fingerprint `cairn-hub init` printed and saves the URL,
//! CA and token (0600); every other command reads that login. `--output json` prints the
//! API's views as they came; the default prints tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_api::cli::{Exit, OutputFormat, table};
use cairn_api::hub::{
    AddControlPlane, AddReleaseFromUrl, ApplianceList, ApplianceQuery, ApplianceState,
    ApplianceView, AssignRequest, AuditEntryView, CampaignAction, CampaignView, ControlPlaneView,
    CountBy, CountQuery, CreateCampaign, CreateEnrollmentToken, CreateOperatorToken,
    CreateReinstallToken, CreateTenant, EnrollmentTokenView, EventQuery, EventView,
    EventWatchQuery, ExecRequest, LabelRequest, LabelSelector, LogsQuery, OperatorTokenView,
    ReleaseView, Role, Selector, SelectorError, SinceQuery, TenantView, VpcView, WatchQuery,
};
use cairn_api::{CertFingerprint, MaintenanceWindow};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::tls::Trust;
use crate::{Error, HubClient};

/// Talk to a cairn hub: enrollment tokens, appliances, control planes, VPCs, audit.
///
/// First `cairn hub login --url https://hub:8443 --ca-fingerprint sha256:... --token-file
/// admin.token` (the fingerprint and token come from `cairn-hub init`); every other command
/// then uses the saved login.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Where the login is saved.
    #[arg(long, global = true, value_name = "FILE", env = "CAIRN_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: HubClientCommand,
}

#[derive(Debug, Subcommand)]
enum HubClientCommand {
    /// Check the hub against its CA fingerprint and save its URL, CA and your token.
    Login {
        /// Hub URL, `https://host:port`.
        #[arg(long)]
        url: String,
        /// The CA fingerprint `cairn-hub init` printed (`sha256:<hex>`).
        #[arg(long, value_name = "FP")]
        ca_fingerprint: String,
        /// File holding your operator token (never pass tokens on the command line).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Enrollment tokens appliances register with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tenants: each owns sites (with their appliances), VPCs and control planes.
    #[command(subcommand)]
    Tenants(TenantCommand),
    /// Operator tokens: role, scope (fleet, tenant or site), expiry.
    #[command(subcommand)]
    Operators(OperatorCommand),
    /// Appliances in the fleet.
    #[command(subcommand)]
    Appliances(ApplianceCommand),
    /// Hosted Kubernetes control planes appliances join.
    #[command(subcommand, name = "control-planes")]
    ControlPlanes(ControlPlaneCommand),
    /// VPC overlays.
    #[command(subcommand)]
    Vpcs(VpcCommand),
    /// Signed OS releases the hub can roll out.
    #[command(subcommand)]
    Releases(ReleaseCommand),
    /// Upgrade campaigns: canaries, batches, automatic pause on failures.
    #[command(subcommand)]
    Campaigns(CampaignCommand),
    /// Fleet configuration layers: tenant, site, label group and appliance patches of node
    /// settings and netplan, versioned, validated by the hub.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Appliance events (state changes, registrations, upgrades), oldest first; `--watch`
    /// then follows new ones as the hub records them.
    Events(EventsArgs),
    /// The audit log: who did what, when, from where.
    Audit {
        /// Entries at or after this RFC 3339 time (default: the last 24 hours).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Args)]
struct EventsArgs {
    /// Keep following: print each new event as the hub records it (Ctrl-C ends it); a cut
    /// connection is resumed after the last event printed.
    #[arg(long)]
    watch: bool,
    /// Only this appliance's events.
    #[arg(long, value_name = "ID")]
    appliance: Option<String>,
    /// Only events of this kind, e.g. `offline` (repeat, or separate with commas).
    #[arg(long = "kind", value_name = "K")]
    kinds: Vec<String>,
    /// Events at or after this RFC 3339 time (default: the last 24 hours; with `--watch`,
    /// only new events).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Events after this sequence number (the `seq` column): where an earlier listing or
    /// watch stopped.
    #[arg(long, value_name = "SEQ")]
    after: Option<u64>,
}

impl EventsArgs {
    fn kind(&self) -> Option<String> {
        (!self.kinds.is_empty()).then(|| self.kinds.join(","))
    }
}

/// An RFC 3339 `--since`, or a message saying what is expected.
fn parse_since(since: Option<&str>) -> anyhow::Result<Option<time::OffsetDateTime>> {
    since
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .with_context(|| {
                    format!("--since {t:?}: expected RFC 3339, e.g. 2026-01-31T12:00:00Z")
                })
        })
        .transpose()
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; it is shown once.
    Create {
        /// Site the appliances join.
        #[arg(long)]
        site: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86400)]
        ttl_seconds: u64,
        /// How many appliances may register with it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Label given to enrolled appliances, `key=value` (repeat).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The tenant the site belongs to: checked, and an unclaimed site is claimed for
        /// it (fleet-wide tokens only).
        #[arg(long)]
        tenant: Option<String>,
        /// Bind the token to the server with this boot MAC (a single-use token for one
        /// server: another machine registering with it is refused).
        #[arg(long)]
        mac: Option<String>,
        /// Bind the token to the server with this serial number (as its BMC reports it).
        #[arg(long)]
        serial: Option<String>,
    },
    /// List tokens (secrets are never shown again).
    List,
    /// Revoke a token by ID.
    Revoke {
        /// Token ID (the middle part of `cairn-et.<id>.<secret>`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant, claiming sites (a site already claimed is refused).
    Create {
        /// Unique name (a-z, 0-9, '-').
        name: String,
        /// Site it owns (repeat).
        #[arg(long = "site", value_name = "SITE")]
        sites: Vec<String>,
    },
    /// List tenants with their sites (`default` owns every unclaimed site).
    List,
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create an operator token; it is shown once.
    Create {
        /// Who it is for.
        name: String,
        /// What it may do.
        #[arg(long, value_enum, default_value_t = Role::Viewer)]
        role: Role,
        /// Scope it to this tenant.
        #[arg(long, conflicts_with = "site")]
        tenant: Option<String>,
        /// Scope it to this site.
        #[arg(long)]
        site: Option<String>,
        /// Validity in seconds (default: until revoked).
        #[arg(long, value_name = "SECONDS")]
        ttl_seconds: Option<u64>,
    },
    /// List operator tokens in your scope (secrets are never shown again).
    List,
    /// Revoke an operator token by ID: refused from now on.
    Revoke {
        /// Token ID (the middle part of `cairn-op.<id>.<secret>`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApplianceCommand {
    /// List appliances with their state: one page (500 by default; `--all` for every page),
    /// or with `--watch` their changes as they happen.
    ///
    /// Example: `cairn hub appliances list -l 'role in (edge,core),!maintenance' --state online`
    List {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only appliances this label selector matches, as `kubectl -l` takes it: `a=b`,
        /// `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma for AND; `site` is the
        /// appliance's site.
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        /// Only appliances in this state: registered, online, offline.
        #[arg(long, value_parser = parse_state)]
        state: Option<ApplianceState>,
        /// Page size (the hub answers at most 1000).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Go on after a previous page: its `continue` value.
        #[arg(long = "continue", value_name = "CURSOR", conflicts_with = "watch")]
        cursor: Option<String>,
        /// Every page, following the hub's cursors.
        #[arg(long, conflicts_with = "watch")]
        all: bool,
        /// Print the changes of the matching appliances as they happen (one line, or one
        /// JSON object, per event) until interrupted.
        #[arg(long)]
        watch: bool,
        /// With `--watch`: start after this resource version (a list's, or an event's).
        #[arg(long, value_name = "VERSION", requires = "watch")]
        resource_version: Option<u64>,
    },
    /// Count appliances by state, site or OS version.
    ///
    /// Example: `cairn hub appliances count --by version -l role=edge`
    Count {
        /// What to count by: state, site, version.
        #[arg(long, value_parser = parse_count_by, default_value = "state")]
        by: CountBy,
        /// Only appliances this label selector matches (as for `list`).
        #[arg(long, short = 'l', value_name = "SELECTOR")]
        selector: Option<String>,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show one appliance in full.
    Show {
        /// Appliance ID.
        id: String,
    },
    /// Set (`key=value`) or remove (`key-`) labels.
    Label {
        /// Appliance ID.
        id: String,
        /// `key=value` or `key-`.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Delete an appliance; its certificate stops working at once.
    Delete {
        /// Appliance ID.
        id: String,
    },
    /// Allow campaigns to order a version this appliance rolled back from (or refused, or
    /// was interrupted installing) again.
    Unquarantine {
        /// Appliance ID.
        id: String,
        /// The quarantined version.
        version: String,
    },
    /// Clear the flag set when the appliance came back on a version nobody ordered.
    ClearFlag {
        /// Appliance ID.
        id: String,
    },
    /// Mint a single-use re-install token: the appliance's own hardware registers with it
    /// again (new key, same ID and site). Known hardware re-keys no other way but renewal
    /// over mTLS with its certificate. The token is shown once.
    Reinstall {
        /// Appliance ID.
        id: String,
        /// Validity in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
    /// Print the appliance's journal (`journalctl -o short-iso` on the node), read through
    /// the tunnel the appliance keeps to the hub (operator role).
    ///
    /// Example: `cairn hub appliances logs ap-1234 -f --unit kubelet.service --since -1h`
    Logs {
        /// Appliance ID.
        id: String,
        /// Keep printing new entries until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this systemd unit.
        #[arg(long, value_name = "UNIT")]
        unit: Option<String>,
        /// Only entries since this time, as journalctl takes it (`-1h`, `today`,
        /// `2026-12-07 10:00:00`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Run a command on the appliance through its tunnel (admin role; no shell: the words
    /// after `--` are the argv). Prints its output and exits with its exit code; every call
    /// is in the hub's audit log.
    ///
    /// Example: `cairn hub appliances exec ap-1234 -- ip -br addr`
    Exec {
        /// Appliance ID.
        id: String,
        /// Kill the command after this many seconds (at most 600).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// The program and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Reboot the appliance through its tunnel (admin role; audited): the node runs its
    /// reboot command (`systemctl reboot`). Asks first unless `--yes`.
    ///
    /// Example: `cairn hub appliances reboot ap-1234 --yes`
    Reboot {
        /// Appliance ID.
        id: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Save the appliance's support bundle, read through its tunnel (operator role; audited):
    /// one tar.gz with the journal of the current boot, `cairn-node status`, its
    /// configuration with secrets redacted, `ip -j addr/route/link`, dmesg, versions and the
    /// upgrade record.
    ///
    /// Example: `cairn hub appliances support-bundle ap-1234 -o ap-1234.tar.gz`
    SupportBundle {
        /// Appliance ID.
        id: String,
        /// Where to write it (`-o`; `--output` is the global output format).
        #[arg(long = "file", short = 'o', value_name = "FILE")]
        file: PathBuf,
    },
    /// Boot the appliance's other A/B slot from now on, and reboot into it (admin role;
    /// audited). Refused when that slot holds no committed release (never upgraded, or its
    /// last upgrade failed or rolled back) or an upgrade is under way. Asks first unless
    /// `--yes`.
    ///
    /// Example: `cairn hub appliances rollback ap-1234 --yes`
    Rollback {
        /// Appliance ID.
        id: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Add a release from a signed bundle (`cairn image sign`). The hub verifies the
    /// Ed25519 signature inside the bundle against its trusted release keys
    /// (`cairn-hub init/serve --trusted-release-key`) and every payload byte against the
    /// signed manifest, and refuses the release otherwise. It then serves the bundle to
    /// appliances itself.
    Add {
        /// A local bundle file (uploaded) or an `https://` URL the hub downloads once.
        #[arg(long, value_name = "FILE|URL")]
        bundle: String,
        /// SHA-256 of the bundle file (`sha256sum`), checked by the hub.
        #[arg(long, value_name = "HEX")]
        sha256: String,
    },
    /// List releases: version, size, compatible-from, signing key.
    List,
    /// Show one release.
    Show {
        /// Version.
        version: String,
    },
    /// Delete a release (refused while a campaign that is not over uses it).
    Delete {
        /// Version.
        version: String,
    },
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Create a campaign (not started): picks the appliances now, lays out canaries and
    /// batches. Quarantined and flagged appliances are listed as skipped.
    ///
    /// Example: `cairn hub campaigns create nov --release 2026.11.2 --selector 'site=dc1,role=edge'
    /// --canaries 1 --batch-size 10 --max-failures 1 --window 22:00-04:00 --prestage`
    Create {
        /// Campaign name (a-z, 0-9, '-'); default: `rollout-<version>-<time>`.
        name: Option<String>,
        /// Release version to roll out.
        #[arg(long)]
        release: String,
        /// A label selector as `kubectl -l` takes it (`site=dc1,role in (edge,core),!hold`;
        /// `site` is the appliance's site): the appliances it covers (default: every
        /// appliance in your scope).
        #[arg(long, value_name = "SELECTOR", default_value = "")]
        selector: String,
        /// Appliances upgraded first, alone; nothing else starts until they finished.
        #[arg(long, value_name = "N", default_value_t = 0)]
        canaries: u32,
        /// Fixed batches of N: the next starts when the current one finished.
        #[arg(long, value_name = "N", conflicts_with = "max_concurrency")]
        batch_size: Option<u32>,
        /// A rolling window: at most N appliances upgrading at any time.
        #[arg(long, value_name = "N")]
        max_concurrency: Option<u32>,
        /// Pause the campaign when more than N appliances failed.
        #[arg(long, value_name = "N", default_value_t = 0)]
        max_failures: u32,
        /// Install only between these times each day, in each appliance's local time.
        #[arg(long, value_name = "HH:MM-HH:MM")]
        window: Option<String>,
        /// Let appliances download and verify the bundle ahead of the window.
        #[arg(long)]
        prestage: bool,
        /// Allow installing a version older than the one running.
        #[arg(long)]
        allow_downgrade: bool,
        /// Count an appliance as failed when it has not finished this long after its order
        /// (default: an offline appliance keeps its order pending until it returns).
        #[arg(long, value_name = "SECONDS")]
        deadline_seconds: Option<u64>,
    },
    /// Start ordering: canaries first.
    Start {
        /// Campaign name.
        name: String,
    },
    /// Order no new appliance; those upgrading finish.
    Pause {
        /// Campaign name.
        name: String,
    },
    /// Continue a paused campaign.
    Resume {
        /// Campaign name.
        name: String,
    },
    /// Stop for good: withdraw orders nodes have not acted on.
    Abort {
        /// Campaign name.
        name: String,
    },
    /// Progress per batch and per appliance.
    Show {
        /// Campaign name.
        name: String,
    },
    /// List campaigns.
    List,
}

#[derive(Debug, Subcommand)]
enum ControlPlaneCommand {
    /// Register a control plane.
    Add {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// API server URL, `https://...`.
        #[arg(long)]
        api_server: String,
        /// The API server's CA bundle (PEM file).
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
        /// Path, on the hub's machine, of a bearer token file allowed to create Secrets in
        /// kube-system.
        #[arg(long, value_name = "PATH")]
        credentials_ref: String,
        /// The tenant whose appliances it takes (default: `default`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List control planes.
    List,
    /// Assign appliances by site and/or labels; matching appliances join now.
    Assign {
        /// Control plane name.
        name: String,
        /// Appliances of this site.
        #[arg(long)]
        site: Option<String>,
        /// Appliances with this label, `key=value` (repeat).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Apply a layer file (YAML naming its `layer:`): the hub validates it and stores it
    /// as the layer's next generation; prints what changed.
    Apply {
        /// The layer file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Apply even a netplan patch the hub says would cut an appliance's link to it.
        #[arg(long)]
        force: bool,
    },
    /// What applying a layer file would change, without storing it.
    Diff {
        /// The layer file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// A layer's generations: who, when.
    History {
        /// The layer, `tenant:NAME`, `site:NAME`, `group:NAME` or `appliance:ID`.
        layer: String,
    },
    /// Make an earlier generation of a layer current again (as a new generation).
    Rollback {
        /// The layer.
        layer: String,
        /// The generation to return to.
        #[arg(long)]
        to: u64,
    },
    /// An appliance's rendered configuration, applied and last good generations, drift.
    Show {
        /// Appliance ID.
        #[arg(long)]
        appliance: String,
    },
}

#[derive(Debug, Subcommand)]
enum VpcCommand {
    /// Create a VPC; the hub picks a unique VNI.
    Create {
        /// Unique name.
        name: String,
        /// IPv4 subnet, CIDR.
        #[arg(long)]
        subnet: String,
        /// The tenant whose appliances attach (default: your token's, or `default`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List VPCs.
    List,
    /// Attach an appliance.
    Attach {
        /// VPC name.
        name: String,
        /// Appliance ID.
        appliance: String,
    },
    /// Detach an appliance.
    Detach {
        /// VPC name.
        name: String,
        /// Appliance ID.
        appliance: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// The saved login.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    url: String,
    ca_fingerprint: String,
    ca_pem: String,
    token: String,
}

fn config_path(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set; pass --config")?;
    Ok(base.join("cairn").join("hub.json"))
}

fn save_login(path: &Path, login: &Login) -> anyhow::Result<()> {
    // The login holds a bearer token: 0600 even over an older, looser file.
    cairn_formats::fsio::atomic_write_mode(
        path,
        serde_json::to_string_pretty(login)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn open_session(config: &Option<PathBuf>) -> anyhow::Result<HubClient> {
    let path = config_path(config)?;
    let raw = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (run `cairn hub login` first)", path.display()))?;
    let login: Login =
        serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
    Ok(HubClient::new(&login.url, &Trust::CaBundle(login.ca_pem), None)?.with_bearer(login.token))
}

/// Parses a campaign's `--selector` (`kubectl -l` syntax, `site` the appliance's site),
/// saying where it is malformed before anything is sent.
pub fn parse_selector(s: &str) -> Result<Selector, String> {
    let expression: LabelSelector = s.parse().map_err(|e: SelectorError| e.to_string())?;
    Ok(Selector {
        expression,
        ..Default::default()
    })
}

/// Checks a list's `--selector` here, so a typo is told with its position without a call.
fn checked_selector(s: Option<String>) -> anyhow::Result<Option<String>> {
    if let Some(text) = &s {
        text.parse::<LabelSelector>()?;
    }
    Ok(s)
}

fn parse_state(s: &str) -> Result<ApplianceState, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: expected registered, online or offline"))
}

fn parse_count_by(s: &str) -> Result<CountBy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: expected state, site or version"))
}

/// `cairn hub appliances list --watch`: prints each event as it comes, until the hub ends
/// the watch (it may after a day: run it again with the last version printed).
async fn watch_appliances(
    hub: &HubClient,
    query: &WatchQuery,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut watch = hub.watch_appliances(query).await?;
    while let Some(event) = watch.next().await? {
        match output {
            OutputFormat::Json => println!("{}", serde_json::to_string(&event)?),
            OutputFormat::Table => println!(
                "{} {} {} {}",
                event.resource_version,
                event.kind.as_str(),
                event.id,
                event
                    .object
                    .as_ref()
                    .map_or_else(String::new, |a| format!("{} {}", a.site, a.state)),
            ),
        }
    }
    Ok(())
}

/// How long `cairn hub events --watch` waits before reconnecting, at most.
const EVENT_RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// `cairn hub events --watch`: prints each event as it comes. When the connection is cut
/// (a hub restart, a network blip), it reconnects with growing pauses and resumes after the
/// last event printed, so none is printed twice or missed; a refusal ends it.
async fn watch_events(
    hub: &HubClient,
    mut query: EventWatchQuery,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut pause = std::time::Duration::from_secs(1);
    let mut watch = hub.watch_events(&query).await?;
    loop {
        let cut = match watch.next().await {
            Ok(Some(event)) => {
                pause = std::time::Duration::from_secs(1);
                // Resuming starts after this one; `since` no longer matters.
                query.after = Some(event.seq);
                query.since = None;
                match output {
                    OutputFormat::Json => println!("{}", serde_json::to_string(&event)?),
                    OutputFormat::Table => println!(
                        "{} {} {} {} {} {}",
                        event.seq,
                        rfc3339(event.at),
                        event.site,
                        event.appliance,
                        event.kind,
                        event.message
                    ),
                }
                continue;
            }
            Ok(None) => "the hub ended the stream".to_owned(),
            Err(e @ Error::Unreachable { .. }) => format!("{e}"),
            Err(e) => return Err(e.into()),
        };
        loop {
            tracing::warn!(reason = %cut, after = ?query.after, "event stream cut; reconnecting");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(EVENT_RECONNECT_MAX);
            match hub.watch_events(&query).await {
                Ok(w) => {
                    watch = w;
                    break;
                }
                Err(e @ Error::Unreachable { .. }) => {
                    tracing::warn!(error = %e, "the hub is not reachable yet");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn events_table(events: &[EventView]) -> String {
    table(
        &["seq", "at", "site", "appliance", "kind", "message"],
        events.iter().map(|e| {
            vec![
                e.seq.to_string(),
                rfc3339(e.at),
                e.site.clone(),
                e.appliance.to_string(),
                e.kind.clone(),
                e.message.clone(),
            ]
        }),
    )
}

/// `-` for nothing, for table cells.
fn opt(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn list(items: impl IntoIterator<Item = impl ToString>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn tokens_table(tokens: &[EnrollmentTokenView]) -> String {
    table(
        &["id", "site", "uses", "max", "expires", "revoked", "labels"],
        tokens.iter().map(|t| {
            vec![
                t.id.clone(),
                t.site.clone(),
                t.uses.to_string(),
                t.max_uses.to_string(),
                rfc3339(t.expires_at),
                t.revoked.to_string(),
                labels(&t.labels),
            ]
        }),
    )
}

fn tenants_table(tenants: &[TenantView]) -> String {
    table(
        &["name", "sites", "created"],
        tenants.iter().map(|t| {
            vec![
                t.name.clone(),
                list(&t.sites),
                t.created_at.map_or_else(|| "-".into(), rfc3339),
            ]
        }),
    )
}

/// `fleet`, `tenant <t>` or `site <s>`.
fn operator_scope(t: &OperatorTokenView) -> String {
    match (&t.site, &t.tenant) {
        (Some(s), _) => format!("site {s}"),
        (None, Some(t)) => format!("tenant {t}"),
        (None, None) => "fleet".into(),
    }
}

fn operators_table(tokens: &[OperatorTokenView]) -> String {
    table(
        &["id", "name", "role", "scope", "expires", "revoked"],
        tokens.iter().map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.to_string(),
                operator_scope(t),
                t.expires_at.map_or_else(|| "never".into(), rfc3339),
                t.revoked.to_string(),
            ]
        }),
    )
}

fn appliances_table(appliances: &[ApplianceView]) -> String {
    table(
        &[
            "id",
            "hostname",
            "site",
            "state",
            "last seen",
            "generation",
            "os",
            "slot",
            "last upgrade",
            "flag",
            "labels",
        ],
        appliances.iter().map(|a| {
            let status = a.status.as_ref();
            let node = status.map(|s| &s.status);
            vec![
                a.id.to_string(),
                a.hostname.clone(),
                a.site.clone(),
                a.state.to_string(),
                opt(status.map(|s| rfc3339(s.last_seen))),
                a.desired.generation.to_string(),
                opt(node.map(|n| n.os_version.clone())),
                opt(node.and_then(|n| n.booted_slot.clone())),
                opt(node
                    .and_then(|n| n.upgrade.as_ref())
                    .map(|u| phase(u.phase))),
                opt(a.upgrade_flag.clone()),
                labels(&a.labels),
            ]
        }),
    )
}

/// A phase as it reads on the wire (`rolled-back`).
fn phase(p: cairn_api::UpgradePhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn control_planes_table(cps: &[ControlPlaneView]) -> String {
    table(
        &["name", "tenant", "api server", "site", "labels"],
        cps.iter().map(|c| {
            vec![
                c.name.clone(),
                c.tenant.clone(),
                c.api_server_url.clone(),
                opt(c.site.clone()),
                labels(&c.labels),
            ]
        }),
    )
}

fn vpcs_table(vpcs: &[VpcView]) -> String {
    table(
        &["name", "tenant", "subnet", "vni", "members"],
        vpcs.iter().map(|v| {
            vec![
                v.name.clone(),
                v.tenant.clone(),
                v.subnet.clone(),
                v.vni.to_string(),
                list(&v.members),
            ]
        }),
    )
}

fn releases_table(releases: &[ReleaseView]) -> String {
    table(
        &[
            "version",
            "size",
            "compatible from",
            "signing key",
            "arch",
            "added",
        ],
        releases.iter().map(|r| {
            vec![
                r.version.clone(),
                r.size_bytes.to_string(),
                list(&r.compatible_from),
                r.signing_key.clone(),
                r.architecture.clone(),
                rfc3339(r.added_at),
            ]
        }),
    )
}

fn campaigns_table(campaigns: &[CampaignView]) -> String {
    table(
        &["name", "release", "state", "members", "failures", "reason"],
        campaigns.iter().map(|c| {
            vec![
                c.name.clone(),
                c.release.clone(),
                c.state.to_string(),
                c.members.len().to_string(),
                c.failures.to_string(),
                if c.state_reason.is_empty() {
                    "-".into()
                } else {
                    c.state_reason.clone()
                },
            ]
        }),
    )
}

fn audit_table(entries: &[AuditEntryView]) -> String {
    table(
        &["at", "actor", "action", "target", "source", "result"],
        entries.iter().map(|e| {
            vec![
                rfc3339(e.at),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.source.clone(),
                e.result.clone(),
            ]
        }),
    )
}

/// `cairn hub campaigns show` as text: the campaign, its batches, its appliances.
fn campaign_text(c: &CampaignView) -> String {
    let mut out = format!(
        "campaign {}: release {}, {}{}\n",
        c.name,
        c.release,
        c.state,
        if c.state_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.state_reason)
        }
    );
    out.push_str(&format!(
        "failures {} (max {}), window {}, prestage {}\n\n",
        c.failures,
        c.max_failures,
        c.window
            .as_ref()
            .map_or_else(|| "any time".into(), |w| format!("{}-{}", w.start, w.end)),
        c.prestage
    ));
    out.push_str(&table(
        &["batch", "kind", "progress"],
        c.batches.iter().map(|b| {
            vec![
                b.index.to_string(),
                b.kind.clone(),
                b.counts
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        }),
    ));
    out.push('\n');
    out.push_str(&table(
        &["appliance", "batch", "state", "phase", "from", "reason"],
        c.members.iter().map(|m| {
            vec![
                m.appliance.to_string(),
                m.batch.to_string(),
                m.state.to_string(),
                opt(m.phase.map(phase)),
                if m.from_version.is_empty() {
                    "-".into()
                } else {
                    m.from_version.clone()
                },
                if m.reason.is_empty() {
                    "-".into()
                } else {
                    m.reason.clone()
                },
            ]
        }),
    ));
    out
}

/// One command's answer: the view for `--output json`, the text for people.
struct Answer {
    json: serde_json::Value,
    text: String,
}

impl Answer {
    fn of<T: Serialize>(view: &T, text: impl FnOnce(&T) -> String) -> anyhow::Result<Self> {
        Ok(Self {
            json: serde_json::to_value(view)?,
            text: text(view),
        })
    }

    fn done(text: &str) -> Self {
        Self {
            json: serde_json::Value::Null,
            text: format!("{text}\n"),
        }
    }
}

/// The request for a layer file: its text as written, so the hub's errors point at its
/// lines.
fn layer_request(
    file: &Path,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<cairn_api::hub::ApplyLayer> {
    let document =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(cairn_api::hub::ApplyLayer {
        file: file.display().to_string(),
        document,
        dry_run,
        force,
    })
}

fn layer_change_text(c: &cairn_api::hub::LayerChange) -> String {
    let mut text = String::new();
    for d in &c.diff {
        text.push_str(&format!("{d}\n"));
    }
    let verb = match (c.dry_run, c.changed) {
        (_, false) => "unchanged",
        (true, true) => "would become",
        (false, true) => "now at",
    };
    text.push_str(&format!(
        "{} {verb} generation {}; {} appliance(s) {}\n",
        c.layer.layer,
        c.layer.generation,
        c.appliances,
        if c.dry_run {
            "would re-render"
        } else {
            "re-rendered"
        }
    ));
    text
}

fn campaign_name(release: &str) -> String {
    let version: String = release
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let at = time::OffsetDateTime::now_utc();
    format!(
        "rollout-{version}-{:04}{:02}{:02}{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn label_changes(changes: Vec<String>) -> anyhow::Result<LabelRequest> {
    let mut labels = BTreeMap::new();
    for c in changes {
        if let Some(k) = c.strip_suffix('-').filter(|_| !c.contains('=')) {
            labels.insert(k.to_owned(), None);
        } else {
            let (k, v) = parse_label(&c).map_err(anyhow::Error::msg)?;
            labels.insert(k, Some(v));
        }
    }
    Ok(LabelRequest { labels })
}

impl HubArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        let command = match self.command {
            HubClientCommand::Login {
                url,
                ca_fingerprint,
                token_file,
            } => {
                return login(
                    &self.config,
                    &url,
                    &ca_fingerprint,
                    &token_file,
                    self.output,
                )
                .await;
            }
            other => other,
        };
        let hub = open_session(&self.config)?;
        let answer = match command {
            HubClientCommand::Appliances(ApplianceCommand::List {
                site,
                selector,
                state,
                watch: true,
                resource_version,
                ..
            }) => {
                let query = WatchQuery {
                    site,
                    state,
                    selector: checked_selector(selector)?,
                    resource_version,
                    timeout_seconds: None,
                };
                watch_appliances(&hub, &query, self.output)
                    .await
                    .map(|()| Answer::done("the hub ended the watch"))
            }
            HubClientCommand::Events(args) if args.watch => {
                let query = EventWatchQuery {
                    since: parse_since(args.since.as_deref())?,
                    after: args.after,
                    kind: args.kind(),
                    appliance: args.appliance,
                    timeout_seconds: None,
                };
                watch_events(&hub, query, self.output)
                    .await
                    .map(|()| Answer::done("the hub ended the watch"))
            }
            HubClientCommand::Appliances(ApplianceCommand::Logs {
                id,
                follow,
                unit,
                since,
            }) => {
                let query = LogsQuery {
                    unit,
                    since,
                    follow: follow.then_some(true),
                };
                return logs(&hub, &id, &query).await;
            }
            HubClientCommand::Appliances(ApplianceCommand::SupportBundle { id, file }) => {
                return support_bundle(&hub, &id, &file).await;
            }
            HubClientCommand::Appliances(ApplianceCommand::Exec { id, timeout, argv }) => {
                let request = ExecRequest {
                    argv,
                    timeout_seconds: timeout,
                };
                return exec(&hub, &id, &request, self.output).await;
            }
            command => execute(&hub, command).await,
        };
        match answer {
            Ok(answer) => {
                match self.output {
                    OutputFormat::Json => {
                        println!("{}", serde_json::to_string_pretty(&answer.json)?)
                    }
                    OutputFormat::Table => print!("{}", answer.text),
                }
                Ok(Exit::Success)
            }
            Err(e) => match e.downcast::<Error>() {
                Ok(e) => refused(e),
                Err(other) => Err(other),
            },
        }
    }
}

/// A hub's refusal as the commands report it: its message, exit 1.
fn refused(e: Error) -> anyhow::Result<Exit> {
    match e {
        Error::Refused { status, body, .. } => {
            eprintln!("error: hub answered {status}: {}", body.message);
            Ok(Exit::Failed)
        }
        other => Err(other.into()),
    }
}

/// Copies the appliance's journal to standard output as it arrives.
async fn logs(hub: &HubClient, id: &str, query: &LogsQuery) -> anyhow::Result<Exit> {
    use std::io::Write;
    let mut stream = match hub.appliance_logs(id, query).await {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next_chunk().await? {
        out.write_all(&chunk)
            .context("writing to standard output")?;
        out.flush().context("writing to standard output")?;
    }
    Ok(Exit::Success)
}

/// Writes the support bundle to `path` as it arrives; a partial file is removed.
async fn support_bundle(hub: &HubClient, id: &str, path: &Path) -> anyhow::Result<Exit> {
    use std::io::Write;
    let mut stream = match hub.support_bundle(id).await {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let write = async {
        let mut file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut size = 0;
        while let Some(chunk) = stream.next_chunk().await? {
            file.write_all(&chunk)
                .with_context(|| format!("writing {}", path.display()))?;
            size += chunk.len();
        }
        file.sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
        anyhow::Ok(size)
    };
    match write.await {
        Ok(size) => {
            eprintln!(
                "wrote the support bundle of {id} to {} ({size} bytes)",
                path.display()
            );
            Ok(Exit::Success)
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e.context(format!(
                "the support bundle of {id} was cut off (the node failed building it, or the tunnel broke); retry"
            )))
        }
    }
}

/// Runs the command and passes its output and exit code through; a refusal by the hub is
/// exit 1, with the hub's message.
async fn exec(
    hub: &HubClient,
    id: &str,
    request: &ExecRequest,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    use std::io::Write;
    let result = match hub.exec(id, request).await {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&result)?),
        OutputFormat::Table => {
            std::io::stdout()
                .write_all(result.stdout.as_bytes())
                .context("writing to standard output")?;
            std::io::stderr()
                .write_all(result.stderr.as_bytes())
                .context("writing to standard error")?;
            if result.truncated {
                eprintln!("cairn: output cut at 1 MiB per stream");
            }
        }
    }
    // Codes outside 0..=255 (none on Unix) read as a failure.
    Ok(Exit::Code(u8::try_from(result.exit_code).unwrap_or(1)))
}

/// Asks `question` on the terminal; only `y` or `yes` goes ahead. Without a terminal there
/// is no one to ask: the caller must say `--yes`.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} Standard input is not a terminal: pass --yes to go ahead");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr()
        .flush()
        .context("writing to standard error")?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(
        line.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn execute(hub: &HubClient, command: HubClientCommand) -> anyhow::Result<Answer> {
    Ok(match command {
        HubClientCommand::Login { .. }
        | HubClientCommand::Appliances(
            ApplianceCommand::Logs { .. }
            | ApplianceCommand::Exec { .. }
            | ApplianceCommand::SupportBundle { .. },
        ) => unreachable!("handled by run"),
        HubClientCommand::Token(TokenCommand::Create {
            site,
            ttl_seconds,
            max_uses,
            labels,
            tenant,
            mac,
            serial,
        }) => {
            let request = CreateEnrollmentToken {
                site,
                ttl_seconds,
                max_uses,
                labels: labels.into_iter().collect(),
                tenant,
                mac,
                serial,
            };
            Answer::of(&hub.create_token(&request).await?, |t| {
                format!(
                    "token (shown once): {}\nsite {}, {} uses, expires {}\n",
                    t.token,
                    t.view.site,
                    t.view.max_uses,
                    rfc3339(t.view.expires_at)
                )
            })?
        }
        HubClientCommand::Token(TokenCommand::List) => {
            Answer::of(&hub.list_tokens().await?, |t| tokens_table(t))?
        }
        HubClientCommand::Token(TokenCommand::Revoke { id }) => {
            Answer::of(&hub.revoke_token(&id).await?, |t| {
                format!("revoked {}\n", t.id)
            })?
        }
        HubClientCommand::Tenants(TenantCommand::Create { name, sites }) => {
            let request = CreateTenant {
                name,
                sites: sites.into_iter().collect(),
            };
            Answer::of(&hub.create_tenant(&request).await?, |t| {
                format!("created tenant {} (sites: {})\n", t.name, list(&t.sites))
            })?
        }
        HubClientCommand::Tenants(TenantCommand::List) => {
            Answer::of(&hub.list_tenants().await?, |t| tenants_table(t))?
        }
        HubClientCommand::Operators(OperatorCommand::Create {
            name,
            role,
            tenant,
            site,
            ttl_seconds,
        }) => {
            let request = CreateOperatorToken {
                name,
                role,
                site,
                tenant,
                ttl_seconds,
            };
            Answer::of(&hub.create_operator_token(&request).await?, |t| {
                format!(
                    "token (shown once): {}\n{} {}, scope {}, expires {}\n",
                    t.token,
                    t.view.name,
                    t.view.role,
                    operator_scope(&t.view),
                    t.view.expires_at.map_or_else(|| "never".into(), rfc3339)
                )
            })?
        }
        HubClientCommand::Operators(OperatorCommand::List) => {
            Answer::of(&hub.list_operator_tokens().await?, |t| operators_table(t))?
        }
        HubClientCommand::Operators(OperatorCommand::Revoke { id }) => {
            Answer::of(&hub.revoke_operator_token(&id).await?, |t| {
                format!("revoked {}\n", t.id)
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::List {
            site,
            selector,
            state,
            limit,
            cursor,
            all,
            watch: _,
            resource_version: _,
        }) => {
            let query = ApplianceQuery {
                site,
                state,
                selector: checked_selector(selector)?,
                limit,
                cursor,
            };
            let page = if all {
                ApplianceList {
                    items: hub.list_appliances(&query).await?,
                    cursor: None,
                    resource_version: 0,
                }
            } else {
                hub.list_appliances_page(&query).await?
            };
            Answer::of(&page, |p| {
                let mut text = appliances_table(&p.items);
                if let Some(next) = &p.cursor {
                    text += &format!("more follow: --continue {next} (or --all)\n");
                }
                text
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Count { by, selector, site }) => {
            let query = CountQuery {
                by,
                selector: checked_selector(selector)?,
                site,
            };
            Answer::of(&hub.count_appliances(&query).await?, |c| {
                let mut rows: Vec<Vec<String>> = c
                    .counts
                    .iter()
                    .map(|(k, n)| vec![k.clone(), n.to_string()])
                    .collect();
                rows.push(vec!["total".into(), c.total.to_string()]);
                table(&[&format!("{:?}", c.by).to_lowercase(), "appliances"], rows)
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Show { id }) => {
            Answer::of(&hub.appliance(&id).await?, |a| {
                serde_json::to_string_pretty(a).unwrap_or_default() + "\n"
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Label { id, changes }) => Answer::of(
            &hub.label_appliance(&id, &label_changes(changes)?).await?,
            |a| format!("{} labels: {}\n", a.id, labels(&a.labels)),
        )?,
        HubClientCommand::Appliances(ApplianceCommand::Reboot { id, yes }) => {
            if !yes && !confirm(&format!("Reboot appliance {id} now?"))? {
                return Ok(Answer::done("not rebooted"));
            }
            Answer::of(&hub.reboot(&id).await?, |r| {
                format!("{}: {}\n", r.appliance, r.message)
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Rollback { id, yes }) => {
            let question = format!("Roll appliance {id} back to its other slot and reboot it now?");
            if !yes && !confirm(&question)? {
                return Ok(Answer::done("not rolled back"));
            }
            Answer::of(&hub.rollback(&id).await?, |r| {
                format!("{}: {}\n", r.appliance, r.message)
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Delete { id }) => {
            hub.delete_appliance(&id).await?;
            Answer::done("deleted")
        }
        HubClientCommand::Appliances(ApplianceCommand::Unquarantine { id, version }) => {
            Answer::of(&hub.clear_quarantine(&id, &version).await?, |a| {
                format!("{} quarantined: {}\n", a.id, list(a.quarantined.keys()))
            })?
        }
        HubClientCommand::Appliances(ApplianceCommand::Reinstall { id, ttl_seconds }) => {
            Answer::of(
                &hub.reinstall_token(&id, &CreateReinstallToken { ttl_seconds })
                    .await?,
                |t| {
                    format!(
                        "re-install token for {id} (shown once, single-use): {}\nsite {}, expires {}\n",
                        t.token,
                        t.view.site,
                        rfc3339(t.view.expires_at)
                    )
                },
            )?
        }
        HubClientCommand::Appliances(ApplianceCommand::ClearFlag { id }) => {
            Answer::of(&hub.clear_upgrade_flag(&id).await?, |a| {
                format!("{} flag cleared\n", a.id)
            })?
        }
        HubClientCommand::ControlPlanes(ControlPlaneCommand::Add {
            name,
            api_server,
            ca_file,
            credentials_ref,
            tenant,
        }) => {
            let ca_bundle_pem = std::fs::read_to_string(&ca_file)
                .with_context(|| format!("reading {}", ca_file.display()))?;
            let request = AddControlPlane {
                name,
                api_server_url: api_server,
                ca_bundle_pem,
                credentials_ref,
                tenant,
            };
            Answer::of(&hub.add_control_plane(&request).await?, |c| {
                format!("added control plane {}\n", c.name)
            })?
        }
        HubClientCommand::ControlPlanes(ControlPlaneCommand::List) => {
            Answer::of(&hub.list_control_planes().await?, |c| {
                control_planes_table(c)
            })?
        }
        HubClientCommand::ControlPlanes(ControlPlaneCommand::Assign { name, site, labels }) => {
            let request = AssignRequest {
                site,
                labels: labels.into_iter().collect(),
            };
            Answer::of(&hub.assign_control_plane(&name, &request).await?, |r| {
                let mut text = format!("joined: {}\n", list(&r.assigned));
                for (id, why) in &r.failed {
                    text.push_str(&format!("failed: {id}: {why}\n"));
                }
                text
            })?
        }
        HubClientCommand::Vpcs(VpcCommand::Create {
            name,
            subnet,
            tenant,
        }) => {
            let request = cairn_api::hub::CreateVpc {
                name,
                subnet,
                tenant,
            };
            Answer::of(&hub.create_vpc(&request).await?, |v| {
                format!("created VPC {} (VNI {})\n", v.name, v.vni)
            })?
        }
        HubClientCommand::Vpcs(VpcCommand::List) => {
            Answer::of(&hub.list_vpcs().await?, |v| vpcs_table(v))?
        }
        HubClientCommand::Vpcs(VpcCommand::Attach { name, appliance }) => {
            Answer::of(&hub.attach(&name, &appliance).await?, |v| {
                format!("{} members: {}\n", v.name, list(&v.members))
            })?
        }
        HubClientCommand::Vpcs(VpcCommand::Detach { name, appliance }) => {
            Answer::of(&hub.detach(&name, &appliance).await?, |v| {
                format!("{} members: {}\n", v.name, list(&v.members))
            })?
        }
        HubClientCommand::Releases(ReleaseCommand::Add { bundle, sha256 }) => {
            let release = if bundle.starts_with("https://") || bundle.starts_with("http://") {
                hub.add_release_from_url(&AddReleaseFromUrl {
                    url: bundle,
                    sha256,
                })
                .await?
            } else {
                hub.upload_release(Path::new(&bundle), &sha256).await?
            };
            Answer::of(&release, |r| {
                format!(
                    "release {} added ({} bytes, signed by key {})\n",
                    r.version, r.size_bytes, r.signing_key
                )
            })?
        }
        HubClientCommand::Releases(ReleaseCommand::List) => {
            Answer::of(&hub.list_releases().await?, |r| releases_table(r))?
        }
        HubClientCommand::Releases(ReleaseCommand::Show { version }) => {
            Answer::of(&hub.release(&version).await?, |r| {
                serde_json::to_string_pretty(r).unwrap_or_default() + "\n"
            })?
        }
        HubClientCommand::Releases(ReleaseCommand::Delete { version }) => {
            hub.delete_release(&version).await?;
            Answer::done("deleted")
        }
        HubClientCommand::Campaigns(CampaignCommand::Create {
            name,
            release,
            selector,
            canaries,
            batch_size,
            max_concurrency,
            max_failures,
            window,
            prestage,
            allow_downgrade,
            deadline_seconds,
        }) => {
            let request = CreateCampaign {
                name: name.unwrap_or_else(|| campaign_name(&release)),
                release,
                selector: parse_selector(&selector).map_err(anyhow::Error::msg)?,
                canaries,
                batch_size,
                max_concurrency,
                max_failures,
                window: window
                    .map(|w| MaintenanceWindow::parse(&w))
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                prestage,
                allow_downgrade,
                deadline_seconds,
            };
            Answer::of(&hub.create_campaign(&request).await?, campaign_text)?
        }
        HubClientCommand::Campaigns(
            action @ (CampaignCommand::Start { .. }
            | CampaignCommand::Pause { .. }
            | CampaignCommand::Resume { .. }
            | CampaignCommand::Abort { .. }),
        ) => {
            let (verb, name) = match action {
                CampaignCommand::Start { name } => (CampaignAction::Start, name),
                CampaignCommand::Pause { name } => (CampaignAction::Pause, name),
                CampaignCommand::Resume { name } => (CampaignAction::Resume, name),
                CampaignCommand::Abort { name } => (CampaignAction::Abort, name),
                _ => unreachable!("matched above"),
            };
            Answer::of(&hub.campaign_action(&name, verb).await?, campaign_text)?
        }
        HubClientCommand::Campaigns(CampaignCommand::Show { name }) => {
            Answer::of(&hub.campaign(&name).await?, campaign_text)?
        }
        HubClientCommand::Campaigns(CampaignCommand::List) => {
            Answer::of(&hub.list_campaigns().await?, |c| campaigns_table(c))?
        }
        HubClientCommand::Config(ConfigCommand::Apply { file, force }) => {
            let change = hub
                .apply_config_layer(&layer_request(&file, false, force)?)
                .await?;
            Answer::of(&change, layer_change_text)?
        }
        HubClientCommand::Config(ConfigCommand::Diff { file }) => {
            let change = hub
                .apply_config_layer(&layer_request(&file, true, false)?)
                .await?;
            Answer::of(&change, layer_change_text)?
        }
        HubClientCommand::Config(ConfigCommand::History { layer }) => {
            Answer::of(&hub.config_layer_history(&layer).await?, |h| {
                table(
                    &["GENERATION", "AUTHOR", "AT"],
                    h.iter().map(|l| {
                        vec![
                            l.generation.to_string(),
                            l.author.clone(),
                            l.at.format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default(),
                        ]
                    }),
                )
            })?
        }
        HubClientCommand::Config(ConfigCommand::Rollback { layer, to }) => Answer::of(
            &hub.rollback_config_layer(&layer, to).await?,
            layer_change_text,
        )?,
        HubClientCommand::Config(ConfigCommand::Show { appliance }) => {
            Answer::of(&hub.appliance_config(&appliance).await?, |c| {
                let s = &c.state;
                let mut text = format!(
                    "desired generation {}, applied {}, last good {}{}\n",
                    s.desired_generation,
                    s.applied_generation,
                    s.last_good_generation
                        .map_or_else(|| "none".into(), |g| g.to_string()),
                    if s.drift { ", DRIFT" } else { "" }
                );
                if let Some(r) = &c.rendered {
                    text.push_str(&format!("layers: {}\n", r.layers.join(", ")));
                    text.push_str(&serde_json::to_string_pretty(r).unwrap_or_default());
                    text.push('\n');
                }
                text
            })?
        }
        HubClientCommand::Events(args) => {
            let query = EventQuery {
                since: parse_since(args.since.as_deref())?,
                after: args.after,
                kind: args.kind(),
                appliance: args.appliance,
                limit: None,
            };
            Answer::of(&hub.events(&query).await?, |e| events_table(e))?
        }
        HubClientCommand::Audit { since } => {
            let since = parse_since(since.as_deref())?;
            let query = SinceQuery { since, limit: None };
            Answer::of(&hub.audit(&query).await?, |e| audit_table(e))?
        }
    })
}

async fn login(
    config: &Option<PathBuf>,
    url: &str,
    fingerprint: &str,
    token_file: &Path,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let url = url.trim_end_matches('/').to_owned();
    if !url.starts_with("https://") {
        eprintln!("error: --url must start with https://");
        return Ok(Exit::Usage);
    }
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?
        .trim()
        .to_owned();
    let want = match CertFingerprint::parse(fingerprint) {
        Ok(fp) => fp,
        Err(e) => {
            eprintln!("error: --ca-fingerprint: {e}; the hub prints it at `cairn-hub init`");
            return Ok(Exit::InvalidInput);
        }
    };
    // The CA comes over a connection pinned to the fingerprint; the token is not sent on it.
    let ca = match HubClient::fetch_pinned_ca(&url, &want).await {
        Ok(ca) => ca,
        Err(Error::FingerprintMismatch { presented, .. }) => anyhow::bail!(
            "the hub at {url} has CA fingerprint {presented}, not {want}: not logging in (wrong hub, or someone in between)"
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("fetching the CA from {url}"))),
    };
    // Now verified with the pinned CA: the token only ever travels on this connection.
    let hub = HubClient::new(&url, &Trust::CaBundle(ca.ca_bundle_pem.clone()), None)?
        .with_bearer(token.clone());
    let me = match hub.whoami().await {
        Ok(me) => me,
        Err(Error::Refused { status, body, .. }) => {
            eprintln!("error: hub answered {status}: {}", body.message);
            return Ok(Exit::Failed);
        }
        Err(e) => return Err(e.into()),
    };
    let path = config_path(config)?;
    save_login(
        &path,
        &Login {
            url,
            ca_fingerprint: want.to_string(),
            ca_pem: ca.ca_bundle_pem,
            token,
        },
    )?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::json!({"config": path, "whoami": me})),
        OutputFormat::Table => println!(
            "logged in as {} ({}{}); saved to {}",
            me.name,
            me.role,
            me.site
                .as_deref()
                .map(|x| format!(", site {x}"))
                .unwrap_or_default(),
            path.display()
        ),
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_or_say_why() {
        let s = parse_selector("site=dc1,role in (edge,core)").unwrap();
        assert_eq!(s.expression.to_string(), "site=dc1,role in (core,edge)");
        let e = parse_selector("site=dc1,role in edge").unwrap_err();
        assert!(e.contains("at character 18"), "{e}");
    }

    #[test]
    fn label_changes_set_and_remove() {
        let r = label_changes(vec!["role=edge".into(), "rack-".into()]).unwrap();
        assert_eq!(r.labels.get("role"), Some(&Some("edge".to_owned())));
        assert_eq!(r.labels.get("rack"), Some(&None));
        assert!(label_changes(vec!["=x".into()]).is_err());
    }
}
