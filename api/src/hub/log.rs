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

/// A fleet event: an appliance state transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventView {
    /// When.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The appliance.
    pub appliance: ApplianceId,
    /// Its site.
    pub site: String,
    /// `online`, `offline`, `registered`, `rekeyed`.
    pub kind: String,
    /// Detail for people.
    pub message: String,
    /// Which hub process recorded it.
    pub hub: String,
}
