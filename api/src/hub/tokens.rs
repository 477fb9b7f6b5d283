use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Role;
use crate::ApplianceId;

/// A token as shown once at creation, `prefix.id.secret`, beside the view of what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "NewToken{T}")]
pub struct NewToken<T> {
    /// The full token; shown only now.
    pub token: String,
    /// What the hub keeps (without the secret).
    #[serde(flatten)]
    pub view: T,
}

/// `POST /v1/tokens` body: an enrollment token appliances register with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Site appliances join.
    pub site: String,
    /// Validity in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Registrations allowed.
    #[serde(default = "default_max_uses")]
    pub max_uses: u32,
    /// Labels given to enrolled appliances.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The tenant the site belongs to: checked when the site is claimed, and claims an
    /// unclaimed site for it (fleet-wide tokens only); `None`: the site's tenant as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Binds the token to the server with this boot MAC: a registration whose inventory
    /// lacks it is refused (`token_mismatch`). A bound token is single-use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Binds the token to the server with this serial number (as its BMC reports it).
    /// A bound token is single-use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `POST /v1/appliances/{id}/reinstall-token` body: a single-use token with which the
/// appliance's own hardware may register again (a re-install: new key, same identity and
/// site). Nothing else can re-key known hardware without its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReinstallToken {
    /// Validity in seconds (at most a day).
    #[serde(default = "default_reinstall_ttl")]
    pub ttl_seconds: u64,
}

fn default_reinstall_ttl() -> u64 {
    3600
}

/// What an enrollment token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Registers new hardware only; known hardware is refused (`hardware_known`).
    #[default]
    Enrollment,
    /// Re-registers one known appliance (its hardware only), keeping its ID and site.
    Reinstall,
}

fn default_ttl() -> u64 {
    24 * 3600
}
fn default_max_uses() -> u32 {
    1
}

/// An enrollment token as operators see it: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnrollmentTokenView {
    /// Public part of the token.
    pub id: String,
    /// Site appliances enrolled with it join.
    pub site: String,
    /// Labels given to appliances enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Enrollment of new hardware, or the re-install of one appliance.
    #[serde(default)]
    pub kind: TokenKind,
    /// The boot MAC it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The serial number it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The appliance a re-install token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<ApplianceId>,
    /// How many registrations it allows.
    pub max_uses: u32,
    /// How many it was used for.
    pub uses: u32,
    /// End of validity.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Revoked by an operator.
    pub revoked: bool,
    /// When it was made.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

/// `POST /v1/operator-tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// Who it is for.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Site scope: sees only this site (and its tenant's VPCs and control planes).
    #[serde(default)]
    pub site: Option<String>,
    /// Tenant scope: sees only this tenant's sites, VPCs and control planes. Neither site
    /// nor tenant: fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Validity in seconds; `None`: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// An operator token as admins see it: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperatorTokenView {
    /// Public part of the token.
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The only site it sees, when scoped to a site.
    pub site: Option<String>,
    /// The only tenant it sees, when scoped to a tenant or a site.
    #[serde(default)]
    pub tenant: Option<String>,
    /// When it was made.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
    /// End of validity; `None`: until revoked.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Revoked: refused from now on.
    #[serde(default)]
    pub revoked: bool,
}

/// `POST /v1/registrations/check` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The enrollment token.
    pub token: String,
}

/// `POST /v1/registrations/check` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenCheck {
    /// Whether a registration with it would be accepted now.
    pub valid: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TokenRefusal>,
    /// Site it enrolls into, when valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// Why an enrollment token was refused. Error code `token_<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenRefusal {
    /// Not `cairn-et.<id>.<secret>`.
    Malformed,
    /// No such token, or the secret does not match.
    Unknown,
    /// Past its TTL.
    Expired,
    /// Revoked by an operator.
    Revoked,
    /// All uses taken.
    UsedUp,
    /// Bound to another machine: the registering hardware lacks the token's MAC or serial,
    /// or a re-install token presented other hardware than its appliance's.
    Mismatch,
}

const REFUSALS: &[(TokenRefusal, &str, &str)] = &[
    (TokenRefusal::Malformed, "malformed", "token_malformed"),
    (TokenRefusal::Unknown, "unknown", "token_unknown"),
    (TokenRefusal::Expired, "expired", "token_expired"),
    (TokenRefusal::Revoked, "revoked", "token_revoked"),
    (TokenRefusal::UsedUp, "used_up", "token_used_up"),
    (TokenRefusal::Mismatch, "mismatch", "token_mismatch"),
];

impl TokenRefusal {
    fn entry(self) -> &'static (TokenRefusal, &'static str, &'static str) {
        REFUSALS
            .iter()
            .find(|(r, _, _)| *r == self)
            .expect("every refusal is in REFUSALS")
    }

    /// The reason alone, `used_up`.
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The error code it is answered with, `token_used_up`.
    pub fn code(self) -> &'static str {
        self.entry().2
    }

    /// The refusal an error code names, if it names one.
    pub fn from_code(code: &str) -> Option<Self> {
        REFUSALS.iter().find(|(_, _, c)| *c == code).map(|e| e.0)
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
