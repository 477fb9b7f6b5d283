use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ApplianceId;

/// `GET /v1/audit|events` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SinceQuery {
    /// RFC 3339 time; entries at or after it. Default: the last 24 hours.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// At most this many (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// An audit record: who did what, when, from where, with what result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntryView {
    /// When.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `operator:<name>`, `appliance:<id>`, or `anonymous`.
    pub actor: String,
    /// What, e.g. `token.create`, `appliance.register`.
    pub action: String,
    /// On what.
    pub target: String,
    /// From where (peer address).
    pub source: String,
    /// `ok`, or `refused: <reason>`.
    pub result: String,
    /// Site concerned, when there is one.
    pub site: Option<String>,
    /// Tenant concerned, for tenant-wide things (VPCs, control planes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `GET /v1/events` query: which events, from when, how many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventQuery {
    /// RFC 3339 time; events at or after it. Default: the last 24 hours, or every event
    /// kept when `after` is given.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Only events with a sequence number above this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Only this appliance's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
    /// Only events of these kinds, comma-separated (e.g. `online,offline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// At most this many (default 1000, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /v1/watch/events` query: which events, and from where the stream starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventWatchQuery {
    /// Start with the events at or after this RFC 3339 time, then follow.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Start after this sequence number (the last event's `seq`, which is also its SSE
    /// `id`; a `Last-Event-ID` header says the same). Without it or `since`: from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Only this appliance's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<String>,
    /// Only events of these kinds, comma-separated (e.g. `online,offline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// End the stream this many seconds after the events it started with (those after
    /// `after` or since `since`) were sent; `0`: send those and end. Default: when the
    /// client goes.
    #[serde(
        default,
        rename = "timeoutSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u64>,
}

/// A fleet event: an appliance state transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventView {
    /// Its sequence number: the hub's store version it was written at. Increasing (with
    /// gaps) in the order events were recorded, across hub restarts and replicas; a watch
    /// resumes after it.
    #[serde(default)]
    pub seq: u64,
    /// When.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The appliance.
    pub appliance: ApplianceId,
    /// Its site.
    pub site: String,
    /// `online`, `offline`, `registered`, `rekeyed`, `registration_refused`,
    /// `upgrade-failed`, `unexpected-version`, ...
    pub kind: String,
    /// Detail for people.
    pub message: String,
    /// Which hub process recorded it.
    pub hub: String,
}
