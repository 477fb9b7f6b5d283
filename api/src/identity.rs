use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity the hub assigns to an appliance at registration. It appears as the CN of the
/// appliance's client certificate and in its URI SAN `cairn://appliance/<id>`, so it is
/// restricted to characters that are safe in both.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct ApplianceId(String);

/// An appliance ID that is empty, too long or holds characters outside `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid appliance id {value:?}: {reason}")]
pub struct InvalidApplianceId {
    value: String,
    reason: &'static str,
}

impl ApplianceId {
    /// Longest accepted ID; fits a DNS label so it can also name a Kubernetes node.
    pub const MAX_LEN: usize = 63;

    /// Validates and wraps an ID.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidApplianceId> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("it is empty")
        } else if value.len() > Self::MAX_LEN {
            Some("it is longer than 63 characters")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("only lowercase letters, digits and '-' are allowed")
        } else if value.starts_with('-') || value.ends_with('-') {
            Some("it may not start or end with '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidApplianceId { value, reason }),
            None => Ok(Self(value)),
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN the hub puts in the appliance's client certificate.
    pub fn uri_san(&self) -> String {
        format!("cairn://appliance/{}", self.0)
    }
}

impl TryFrom<String> for ApplianceId {
    type Error = InvalidApplianceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ApplianceId> for String {
    fn from(id: ApplianceId) -> Self {
        id.0
    }
}

impl fmt::Display for ApplianceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 certificate fingerprint as operators paste it — `sha256:ab12…`, `AB:12:…` from
/// `openssl x509 -fingerprint`, or bare hex — held as 64 lower-case hex digits. Pins of BMC
/// certificates, of the hub's CA and of the wizard's certificate all go through it, so every
/// tool accepts the same spellings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFingerprint(String);

/// Text that is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 fingerprint (64 hex digits, colons and a sha256: prefix allowed)")]
pub struct InvalidFingerprint(String);

impl CertFingerprint {
    /// Parses any of the accepted spellings.
    pub fn parse(text: &str) -> Result<Self, InvalidFingerprint> {
        let trimmed = text.trim();
        let body = [
            "sha256:",
            "SHA256:",
            "sha256 Fingerprint=",
            "SHA256 Fingerprint=",
        ]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
        let hex: String = body
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(hex))
        } else {
            Err(InvalidFingerprint(text.to_owned()))
        }
    }

    /// The 64 lower-case hex digits.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = InvalidFingerprint;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// `sha256:` and the hex digits, the form cairn prints and stores.
impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}
