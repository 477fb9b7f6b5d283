use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /v1/releases` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReleaseFromUrl {
    /// `https://...` (or `http://`: the signature, not the transport, is the trust anchor)
    /// the hub downloads the bundle from once.
    pub url: String,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
}

/// `POST /v1/releases/upload` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadQuery {
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
}

/// A signed OS release the hub can roll out, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReleaseView {
    /// Version the bundle installs (from its signed manifest).
    pub version: String,
    /// CPU architecture.
    pub architecture: String,
    /// Versions it may be installed over; empty means any.
    pub compatible_from: Vec<String>,
    /// Size of the bundle file, bytes.
    pub size_bytes: u64,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
    /// Fingerprint of the trusted key that signed it.
    pub signing_key: String,
    /// Build time from the manifest.
    pub build_time: String,
    /// Where the hub fetched it from, when added by URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// When it was added.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
    /// Who added it.
    pub added_by: String,
}
