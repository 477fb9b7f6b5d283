use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Role;

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
    /// Site scope.
    #[serde(default)]
    pub site: Option<String>,
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
    /// The only site it sees, when scoped.
    pub site: Option<String>,
    /// When it was made.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
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
}

const REFUSALS: &[(TokenRefusal, &str, &str)] = &[
    (TokenRefusal::Malformed, "malformed", "token_malformed"),
    (TokenRefusal::Unknown, "unknown", "token_unknown"),
    (TokenRefusal::Expired, "expired", "token_expired"),
    (TokenRefusal::Revoked, "revoked", "token_revoked"),
    (TokenRefusal::UsedUp, "used_up", "token_used_up"),
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
