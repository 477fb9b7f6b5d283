//! Reaching an appliance through its tunnel (issue 17): the tunnel's upgrade, and the
//! requests the hub forwards to the node over it (logs, exec).

use serde::{Deserialize, Serialize};

/// The route an appliance upgrades to open its tunnel (HTTP/1.1 `Upgrade`).
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// The `Upgrade` protocol token of the tunnel: after the hub's `101`, the connection
/// carries yamux, the node accepting the streams the hub opens.
pub const TUNNEL_PROTOCOL: &str = "cairn-tunnel/1";

/// The node's routes on each tunnel stream (HTTP/1.1): `GET` with [`LogsQuery`].
pub const NODE_LOGS_PATH: &str = "/logs";

/// The node's routes on each tunnel stream (HTTP/1.1): `POST` with [`ExecRequest`].
pub const NODE_EXEC_PATH: &str = "/exec";

/// `GET /v1/appliances/{id}/logs` query: the node's journal, as `journalctl -o short-iso`
/// prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogsQuery {
    /// Only this systemd unit (`journalctl --unit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Only entries since this time, in any form `journalctl --since` takes
    /// (`2026-12-07 10:00:00`, `-1h`, `today`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Keep the stream open and send new entries as they come (`journalctl --follow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
}

/// The node's routes on each tunnel stream (HTTP/1.1): `POST`, no body; answers
/// [`RebootResult`] once the reboot is requested.
pub const NODE_REBOOT_PATH: &str = "/reboot";

/// The node's routes on each tunnel stream (HTTP/1.1): `POST`, no body; the other slot
/// becomes GRUB's default and the node reboots ([`RebootResult`]), or 409 with why not.
pub const NODE_ROLLBACK_PATH: &str = "/rollback";

/// The node's routes on each tunnel stream (HTTP/1.1): `GET`; answers the support bundle,
/// `application/gzip` (a tar of journal, status, redacted configuration, netlink state,
/// dmesg, versions and the upgrade record, under `support-bundle/`).
pub const NODE_SUPPORT_BUNDLE_PATH: &str = "/support-bundle";

/// The node's routes on each tunnel stream (HTTP/1.1): `GET`; answers the node's Prometheus
/// metrics (OpenMetrics text), the same as its local API's `GET /metrics`. The hub scrapes
/// it.
pub const NODE_METRICS_PATH: &str = "/metrics";

/// `POST /v1/appliances/{id}/reboot` and `.../rollback`: what the node said when asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RebootResult {
    /// The appliance.
    pub appliance: String,
    /// The node's own words: the reboot it requested (its `upgrade.reboot_command`).
    pub message: String,
}

/// `POST /v1/appliances/{id}/exec`: a command run on the appliance, as root, without a
/// shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; the program is looked up in the node's `PATH`.
    pub argv: Vec<String>,
    /// Kill the command after this many seconds (default 60, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// Default and largest run time of an [`ExecRequest`], seconds.
pub const EXEC_TIMEOUT_DEFAULT: u64 = 60;
/// See [`EXEC_TIMEOUT_DEFAULT`].
pub const EXEC_TIMEOUT_MAX: u64 = 600;

/// What an [`ExecRequest`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecResult {
    /// The exit code; a command ended by a signal (or its timeout) reads 128 + the signal.
    pub exit_code: i32,
    /// Its standard output (invalid UTF-8 replaced), at most 1 MiB.
    pub stdout: String,
    /// Its standard error (invalid UTF-8 replaced), at most 1 MiB.
    pub stderr: String,
    /// Whether the output was cut at the limit.
    #[serde(default)]
    pub truncated: bool,
}
