//! Node configuration: `/etc/cairn/node.yaml` plus drop-ins `/etc/cairn/node.d/*.yaml`.
//!
//! The schema, shared with every writer of these files, is [`cairn_api::node_config`].
//! Each file is parsed on its own first, against the same schema with every key optional, so
//! a typo or a wrong type is reported with the file, line and key where it was written. The
//! files are then deep-merged (drop-ins in lexical order override the main file, key by key)
//! and the result is validated once into [`Settings`]; a semantic error names the file that
//! last set the key and the line it sits on there.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cairn_api::node_config::{NodeConfig, UpgradeSection, normalize_fingerprint, valid_hostname};
use serde_yaml_ng::{Mapping, Value};

/// Where the configuration sits below the root (`/` on an appliance, a temp dir in tests).
pub const MAIN_FILE: &str = "etc/cairn/node.yaml";
/// Drop-in directory below the root.
pub const DROP_IN_DIR: &str = "etc/cairn/node.d";

/// What an operator health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// Run this argv; exit 0 passes.
    Command(Vec<String>),
    /// GET this URL; 2xx passes.
    Http(String),
}

/// A validated operator health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Name for reports.
    pub name: String,
    /// What to do.
    pub probe: HealthProbe,
}

/// Where the slots are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSource {
    /// `<dir>/root-a`, `<dir>/root-b` (e.g. `/dev/disk/by-partlabel`).
    Dir(PathBuf),
    /// Partitions named `root-a`/`root-b` in this disk's GPT.
    Disk(PathBuf),
}

/// Validated upgrade settings.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeSettings {
    /// Release public key files (already rooted).
    pub trusted_keys: Vec<PathBuf>,
    /// Downloads and upgrade state (already rooted).
    pub data_dir: PathBuf,
    /// The slots.
    pub slots: SlotSource,
    /// GRUB environment block (already rooted).
    pub grubenv: PathBuf,
    /// Kernel command line file (already rooted).
    pub cmdline: PathBuf,
    /// Boots the new slot gets.
    pub tries: u8,
    /// Drain hook.
    pub drain_command: Option<Vec<String>>,
    /// Reboot command.
    pub reboot_command: Vec<String>,
    /// Health-check deadline.
    pub health_deadline: std::time::Duration,
    /// Operator checks.
    pub health_checks: Vec<HealthCheck>,
    /// Fixed UTC offset for windows, or `None` for the local time zone.
    pub utc_offset: Option<time::UtcOffset>,
}

/// Validated configuration, built once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The root every absolute path below is relative to.
    pub root: PathBuf,
    /// Hostname.
    pub hostname: String,
    /// Hub URL, `https://...`, no trailing slash: the first of `hub_urls`.
    pub hub_url: String,
    /// Every hub URL (`hub.url`, then `hub.urls`), in the order they are tried.
    pub hub_urls: Vec<String>,
    /// Pinned hub CA fingerprint, lowercase hex without colons.
    pub hub_ca_fingerprint: Option<String>,
    /// Hub CA bundle file (already rooted).
    pub hub_ca_file: Option<PathBuf>,
    /// Enrollment token file (already rooted).
    pub token_file: PathBuf,
    /// netplan YAML directory (already rooted).
    pub netplan_dir: PathBuf,
    /// Whether to apply the network.
    pub manage_network: bool,
    /// This appliance's VTEP address, when it takes part in VPC overlays.
    pub vtep_address: Option<std::net::IpAddr>,
    /// kubelet unit name.
    pub kubelet_unit: String,
    /// kubelet `ExecStart=`.
    pub kubelet_exec_start: String,
    /// kubelet files directory (already rooted).
    pub kubelet_dir: PathBuf,
    /// kubelet unit drop-in directory (already rooted).
    pub kubelet_dropin_dir: PathBuf,
    /// D-Bus address of the system bus.
    pub system_bus: String,
    /// State directory (already rooted).
    pub state_dir: PathBuf,
    /// Report queue bound.
    pub queue_limit: u64,
    /// Local API socket (already rooted).
    pub api_socket: PathBuf,
    /// Wizard listen address.
    pub wizard_listen: String,
    /// A/B upgrades.
    pub upgrade: UpgradeSettings,
    /// `tpm.policy`.
    pub tpm_policy: cairn_api::node_config::TpmPolicy,
    /// `tpm.tcti`; unset, `/dev/tpmrm0` when it exists.
    pub tpm_tcti: Option<String>,
}

/// A configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The files that make up the configuration, in merge order.
pub fn config_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = vec![root.join(MAIN_FILE)];
    let dir = root.join(DROP_IN_DIR);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut drop_ins: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            drop_ins.sort();
            files.extend(drop_ins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(files)
}

/// One parsed file: its text (for line lookups) and its tree.
struct Source {
    path: PathBuf,
    text: String,
}

/// Loads and validates the configuration under `root`.
pub fn load(root: &Path) -> Result<Settings, ConfigError> {
    let files = config_files(root).map_err(|e| ConfigError {
        file: root.join(DROP_IN_DIR),
        line: None,
        key: None,
        message: format!("cannot list drop-ins: {e}"),
    })?;
    let mut sources = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: path.clone(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        sources.push(Source { path, text });
    }
    load_sources(root, &sources)
}

fn load_sources(root: &Path, sources: &[Source]) -> Result<Settings, ConfigError> {
    let mut merged = Value::Mapping(Mapping::new());
    // Dotted key -> index of the source that last set it.
    let mut origin: BTreeMap<String, usize> = BTreeMap::new();
    for (index, source) in sources.iter().enumerate() {
        let value = parse_one(&source.path, &source.text)?;
        merge(&mut merged, value, "", index, &mut origin);
    }
    let file: NodeConfig = serde_yaml_ng::from_value(merged).map_err(|e| ConfigError {
        file: sources[0].path.clone(),
        line: None,
        key: None,
        message: e.to_string(),
    })?;
    Settings::from_merged(root, file).map_err(|(key, message)| {
        let (path, line) = match origin.get(&key) {
            Some(&i) => (
                sources[i].path.clone(),
                find_key_line(&sources[i].text, &key),
            ),
            None => (sources[0].path.clone(), None),
        };
        ConfigError {
            file: path,
            line,
            key: Some(key),
            message,
        }
    })
}

/// Parses one file against the schema, so unknown keys and wrong types are reported where
/// they were written; returns its tree for merging.
fn parse_one(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let located = |e: serde_yaml_ng::Error| {
        let message = e.to_string();
        ConfigError {
            file: path.to_path_buf(),
            line: e.location().map(|l| l.line()),
            key: key_in_message(&message),
            message: strip_location(&message),
        }
    };
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    let _: NodeConfig = serde_yaml_ng::from_str(text).map_err(located)?;
    serde_yaml_ng::from_str(text).map_err(located)
}

/// serde names the offending field in backticks ("unknown field `hubb`", "hub.url: invalid
/// type"); pull it out so the error can carry it as a key.
fn key_in_message(message: &str) -> Option<String> {
    if let Some(rest) = message.split_once("unknown field `") {
        return rest.1.split('`').next().map(str::to_owned);
    }
    let (head, _) = message.split_once(": ")?;
    (!head.contains(' ')).then(|| head.to_owned())
}

fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn merge(
    into: &mut Value,
    from: Value,
    prefix: &str,
    index: usize,
    origin: &mut BTreeMap<String, usize>,
) {
    let Value::Mapping(from) = from else { return };
    let Value::Mapping(into_map) = into else {
        return;
    };
    for (k, v) in from {
        let name = k.as_str().unwrap_or_default().to_owned();
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (into_map.get_mut(&k), v) {
            (Some(existing @ Value::Mapping(_)), v @ Value::Mapping(_)) => {
                merge(existing, v, &key, index, origin);
            }
            (_, v) => {
                mark(&key, &v, index, origin);
                into_map.insert(k, v);
            }
        }
    }
}

fn mark(key: &str, value: &Value, index: usize, origin: &mut BTreeMap<String, usize>) {
    origin.insert(key.to_owned(), index);
    if let Value::Mapping(map) = value {
        for (k, v) in map {
            mark(
                &format!("{key}.{}", k.as_str().unwrap_or_default()),
                v,
                index,
                origin,
            );
        }
    }
}

/// The 1-based line a dotted key is written on, following indentation.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let mut parts = dotted.split('.').peekable();
    let mut want = parts.next()?;
    let mut min_indent = 0usize;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('#') || indent < min_indent {
            continue;
        }
        if trimmed
            .strip_prefix(want)
            .is_some_and(|r| r.trim_start().starts_with(':'))
        {
            match parts.next() {
                Some(next) => {
                    want = next;
                    min_indent = indent + 1;
                }
                None => return Some(n + 1),
            }
        }
    }
    None
}

/// A key with what is wrong with it.
type Invalid = (String, String);

fn required<T>(value: Option<T>, key: &str) -> Result<T, Invalid> {
    value.ok_or_else(|| (key.to_owned(), "is required".to_owned()))
}

/// Joins an absolute configured path below the root.
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

impl Settings {
    /// Validates a merged configuration. Errors carry the dotted key.
    fn from_merged(root: &Path, file: NodeConfig) -> Result<Self, Invalid> {
        let hostname = required(file.hostname, "hostname")?;
        if !valid_hostname(&hostname) {
            return Err((
                "hostname".into(),
                format!("{hostname:?} is not a valid hostname (letters, digits, '-', dots)"),
            ));
        }
        let hub = required(file.hub, "hub")?;
        let mut hub_urls: Vec<String> = Vec::new();
        let given = hub.url.iter().map(|u| ("hub.url".to_owned(), u));
        let more = hub.urls.iter().flatten().enumerate();
        for (key, url) in given.chain(more.map(|(i, u)| (format!("hub.urls[{i}]"), u))) {
            let trimmed = url.trim_end_matches('/').to_owned();
            if !trimmed.starts_with("https://") || trimmed.len() <= "https://".len() {
                return Err((key, format!("{url:?} must be an https:// URL")));
            }
            if !hub_urls.contains(&trimmed) {
                hub_urls.push(trimmed);
            }
        }
        let Some(hub_url) = hub_urls.first().cloned() else {
            return Err((
                "hub.url".into(),
                "is required (the hub's https:// URL; several in hub.urls)".into(),
            ));
        };
        let hub_ca_fingerprint = match hub.ca_fingerprint {
            Some(text) => Some(normalize_fingerprint(&text).ok_or_else(|| {
                (
                    "hub.ca_fingerprint".to_owned(),
                    "must be a SHA-256 fingerprint: 64 hex digits, colons allowed".to_owned(),
                )
            })?),
            None => None,
        };
        if hub_ca_fingerprint.is_none() && hub.ca_file.is_none() {
            return Err((
                "hub.ca_fingerprint".into(),
                "set hub.ca_fingerprint or hub.ca_file: the node never trusts a hub it cannot verify"
                    .into(),
            ));
        }
        let token_file = required(hub.token_file, "hub.token_file")?;
        let network = file.network.unwrap_or_default();
        let kubelet = file.kubelet.unwrap_or_default();
        let state = file.state.unwrap_or_default();
        let queue_limit = state.queue_limit.unwrap_or(1000);
        if queue_limit == 0 {
            return Err(("state.queue_limit".into(), "must be at least 1".into()));
        }
        let unit = kubelet.unit.unwrap_or_else(|| "kubelet.service".into());
        if !unit.ends_with(".service") {
            return Err((
                "kubelet.unit".into(),
                format!("{unit:?} must name a .service unit"),
            ));
        }
        let vtep_address = match network.vtep_address {
            Some(text) => match text.trim().parse::<std::net::IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast() => {
                    Some(ip)
                }
                _ => {
                    return Err((
                        "network.vtep_address".into(),
                        format!(
                            "{text:?} is not a unicast IP address (the underlay address VXLAN ends on)"
                        ),
                    ));
                }
            },
            None => None,
        };
        let path =
            |p: Option<PathBuf>, default: &str| rooted(root, &p.unwrap_or_else(|| default.into()));
        let state_dir = path(state.dir, "/var/lib/cairn");
        let upgrade = upgrade_settings(root, &state_dir, file.upgrade.unwrap_or_default())?;
        let tpm = file.tpm.unwrap_or_default();
        Ok(Self {
            tpm_policy: tpm.policy.unwrap_or_default(),
            tpm_tcti: tpm.tcti,
            root: root.to_path_buf(),
            hostname,
            hub_url,
            hub_urls,
            hub_ca_fingerprint,
            hub_ca_file: hub.ca_file.map(|p| rooted(root, &p)),
            token_file: rooted(root, &token_file),
            netplan_dir: path(network.netplan_dir, "/etc/cairn/netplan"),
            manage_network: network.manage.unwrap_or(true),
            vtep_address,
            kubelet_dropin_dir: path(
                kubelet.dropin_dir,
                &format!("/etc/systemd/system/{unit}.d"),
            ),
            kubelet_unit: unit,
            kubelet_exec_start: kubelet.exec_start.unwrap_or_else(|| {
                "/usr/bin/kubelet --bootstrap-kubeconfig=/var/lib/kubelet/bootstrap-kubeconfig --kubeconfig=/var/lib/kubelet/kubeconfig --config=/var/lib/kubelet/config.yaml".into()
            }),
            kubelet_dir: path(kubelet.dir, "/var/lib/kubelet"),
            system_bus: kubelet
                .system_bus
                .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".into()),
            state_dir,
            upgrade,
            queue_limit,
            api_socket: path(file.api.unwrap_or_default().socket, "/run/cairn/node.sock"),
            wizard_listen: file
                .wizard
                .unwrap_or_default()
                .listen
                .unwrap_or_else(|| "0.0.0.0:8443".into()),
        })
    }
}

fn upgrade_settings(
    root: &Path,
    state_dir: &Path,
    section: UpgradeSection,
) -> Result<UpgradeSettings, Invalid> {
    let argv = |v: Option<Vec<String>>, key: &str| -> Result<Option<Vec<String>>, Invalid> {
        match v {
            Some(v) if v.is_empty() || v[0].is_empty() => {
                Err((key.to_owned(), "must be a non-empty argv list".to_owned()))
            }
            other => Ok(other),
        }
    };
    let tries = section.tries.unwrap_or(1);
    if !(1..=2).contains(&tries) {
        return Err(("upgrade.tries".into(), "must be 1 or 2".into()));
    }
    let slots = match (section.slot_dir, section.disk) {
        (Some(_), Some(_)) => {
            return Err((
                "upgrade.disk".into(),
                "set upgrade.slot_dir or upgrade.disk, not both".into(),
            ));
        }
        (_, Some(disk)) => SlotSource::Disk(rooted(root, &disk)),
        (dir, None) => SlotSource::Dir(rooted(
            root,
            &dir.unwrap_or_else(|| "/dev/disk/by-partlabel".into()),
        )),
    };
    let mut health_checks = Vec::new();
    for (i, check) in section
        .health_checks
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let key = format!("upgrade.health_checks.{i}");
        let probe = match (argv(check.command, &key)?, check.http) {
            (Some(argv), None) => HealthProbe::Command(argv),
            (None, Some(url)) if url.starts_with("http://") => HealthProbe::Http(url),
            (None, Some(url)) => {
                return Err((key, format!("{url:?}: probes are plain http:// URLs")));
            }
            _ => return Err((key, "set exactly one of command or http".into())),
        };
        health_checks.push(HealthCheck {
            name: check.name.unwrap_or_else(|| format!("check {}", i + 1)),
            probe,
        });
    }
    let utc_offset = match section.utc_offset {
        Some(text) => Some(
            time::UtcOffset::parse(
                &text,
                time::macros::format_description!("[offset_hour]:[offset_minute]"),
            )
            .map_err(|_| {
                (
                    "upgrade.utc_offset".to_owned(),
                    format!("{text:?} is not +HH:MM"),
                )
            })?,
        ),
        None => None,
    };
    Ok(UpgradeSettings {
        trusted_keys: section
            .trusted_keys
            .unwrap_or_default()
            .iter()
            .map(|p| rooted(root, p))
            .collect(),
        data_dir: section
            .data_dir
            .map(|p| rooted(root, &p))
            .unwrap_or_else(|| state_dir.join("upgrade")),
        slots,
        grubenv: rooted(
            root,
            &section
                .grubenv
                .unwrap_or_else(|| "/boot/efi/grub/grubenv".into()),
        ),
        cmdline: rooted(
            root,
            &section.cmdline.unwrap_or_else(|| "/proc/cmdline".into()),
        ),
        tries,
        drain_command: argv(section.drain_command, "upgrade.drain_command")?,
        reboot_command: argv(section.reboot_command, "upgrade.reboot_command")?
            .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]),
        health_deadline: std::time::Duration::from_secs(
            section.health_deadline_seconds.unwrap_or(300),
        ),
        health_checks,
        utc_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &str, text: &str) -> Source {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    const MAIN: &str = "\
hostname: edge-1
hub:
  url: https://hub.example.test:8443/
  ca_fingerprint: AB:CD:ef0123456789abcdef0123456789abcdef0123456789abcdef0123456789
  token_file: /etc/cairn/token
";

    #[test]
    fn main_file_alone_gives_settings_with_defaults_under_the_root() {
        let s = load_sources(Path::new("/r"), &[src("node.yaml", MAIN)]).unwrap();
        assert_eq!(s.hub_url, "https://hub.example.test:8443");
        assert_eq!(
            s.hub_ca_fingerprint.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        assert_eq!(s.token_file, PathBuf::from("/r/etc/cairn/token"));
        assert_eq!(s.api_socket, PathBuf::from("/r/run/cairn/node.sock"));
        assert_eq!(
            s.kubelet_dropin_dir,
            PathBuf::from("/r/etc/systemd/system/kubelet.service.d")
        );
        assert_eq!(s.queue_limit, 1000);
    }

    #[test]
    fn several_hub_urls_are_tried_in_order_and_each_must_be_https() {
        let s = load_sources(
            Path::new("/"),
            &[
                src("node.yaml", MAIN),
                src(
                    "node.d/10-hubs.yaml",
                    "hub:\n  urls: [https://hub-b.test/, https://hub.example.test:8443]\n",
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.hub_url, "https://hub.example.test:8443");
        assert_eq!(
            s.hub_urls,
            ["https://hub.example.test:8443", "https://hub-b.test"]
        );
        let only_list = MAIN.replace(
            "  url: https://hub.example.test:8443/",
            "  urls:\n    - https://a.test\n    - https://b.test",
        );
        let s = load_sources(Path::new("/"), &[src("node.yaml", &only_list)]).unwrap();
        assert_eq!(s.hub_url, "https://a.test");
        assert_eq!(s.hub_urls, ["https://a.test", "https://b.test"]);
        let plain = MAIN.replace(
            "  url: https://hub.example.test:8443/",
            "  urls: [https://a.test, http://b.test]",
        );
        let err = load_sources(Path::new("/"), &[src("node.yaml", &plain)]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("hub.urls[1]"), "{err}");
        let none = MAIN.replace("  url: https://hub.example.test:8443/\n", "");
        let err = load_sources(Path::new("/"), &[src("node.yaml", &none)]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("hub.url"), "{err}");
    }

    #[test]
    fn drop_ins_override_single_keys_and_keep_the_rest() {
        let s = load_sources(
            Path::new("/"),
            &[
                src("node.yaml", MAIN),
                src("node.d/10-hub.yaml", "hub:\n  url: https://other.test\n"),
            ],
        )
        .unwrap();
        assert_eq!(s.hub_url, "https://other.test");
        assert_eq!(s.token_file, PathBuf::from("/etc/cairn/token"));
    }

    #[test]
    fn unknown_key_is_reported_with_file_line_and_key() {
        let err = load_sources(
            Path::new("/"),
            &[
                src("node.yaml", MAIN),
                src("node.d/20.yaml", "# comment\nhub:\n  urll: https://x\n"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.file, PathBuf::from("node.d/20.yaml"));
        assert_eq!(err.line, Some(3));
        assert_eq!(err.key.as_deref(), Some("urll"));
        assert!(
            err.to_string()
                .starts_with("node.d/20.yaml:3: key `urll`: "),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_is_reported_with_line() {
        let err = load_sources(
            Path::new("/"),
            &[src(
                "node.yaml",
                &format!("{MAIN}state:\n  queue_limit: lots\n"),
            )],
        )
        .unwrap_err();
        assert_eq!(err.line, Some(7), "{err}");
        assert!(err.message.contains("invalid type"), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_file_and_line_that_set_the_key() {
        let err = load_sources(
            Path::new("/"),
            &[
                src("node.yaml", MAIN),
                src("node.d/30.yaml", "\n\nhub:\n  url: http://plain.test\n"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.file, PathBuf::from("node.d/30.yaml"));
        assert_eq!(err.line, Some(4));
        assert_eq!(err.key.as_deref(), Some("hub.url"));
        assert!(err.message.contains("https://"), "{err}");

        let bad_fp = MAIN.replace("AB:CD:ef", "zz");
        let err = load_sources(Path::new("/"), &[src("node.yaml", &bad_fp)]).unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("hub.ca_fingerprint"))
        );
    }

    #[test]
    fn the_vtep_address_is_checked_and_located() {
        let s = load_sources(
            Path::new("/"),
            &[src(
                "node.yaml",
                &format!("{MAIN}network:\n  vtep_address: 192.168.50.1\n"),
            )],
        )
        .unwrap();
        assert_eq!(s.vtep_address, Some("192.168.50.1".parse().unwrap()));
        for bad in ["192.168.50", "0.0.0.0", "127.0.0.1"] {
            let err = load_sources(
                Path::new("/"),
                &[src(
                    "node.yaml",
                    &format!("{MAIN}network:\n  vtep_address: {bad}\n"),
                )],
            )
            .unwrap_err();
            assert_eq!(
                (err.line, err.key.as_deref()),
                (Some(7), Some("network.vtep_address")),
                "{err}"
            );
            assert!(err.message.contains("not a unicast IP address"), "{err}");
        }
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = load_sources(Path::new("/"), &[src("node.yaml", "hostname: a\n")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("hub"));
        assert_eq!(err.message, "is required");
    }

    #[test]
    fn a_hub_without_trust_anchor_is_refused() {
        let text = MAIN.replace(
            "  ca_fingerprint: AB:CD:ef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\n",
            "",
        );
        let err = load_sources(Path::new("/"), &[src("node.yaml", &text)]).unwrap_err();
        assert!(err.message.contains("never trusts"), "{err}");
    }

    #[test]
    fn the_shipped_example_configuration_is_valid() {
        let text = include_str!("../dist/node.yaml");
        let s = load_sources(Path::new("/"), &[src("dist/node.yaml", text)]).unwrap();
        assert_eq!(s.api_socket, PathBuf::from("/run/cairn/node.sock"));
    }

    #[test]
    fn config_files_lists_yaml_drop_ins_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(DROP_IN_DIR);
        std::fs::create_dir_all(&d).unwrap();
        for name in ["20-b.yaml", "10-a.yml", "README"] {
            std::fs::write(d.join(name), "").unwrap();
        }
        let files = config_files(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["node.yaml", "10-a.yml", "20-b.yaml"]);
    }
}
