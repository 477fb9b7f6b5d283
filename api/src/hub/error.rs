use std::fmt;

use serde::{Deserialize, Serialize};

use super::TokenRefusal;

/// The JSON body of every error answer: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: ErrorCode,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
}

/// Every error code the hub answers with. On the wire a snake_case string; a code this
/// build does not know (from a newer hub) reads as [`ErrorCode::Unrecognized`], so a client
/// still shows the hub's message instead of failing to parse it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No operator token, or one the hub does not accept (401).
    Unauthenticated,
    /// The route needs the appliance's client certificate (401).
    ClientCertificateRequired,
    /// The client certificate was not accepted (401).
    ClientCertificateInvalid,
    /// The certificate was replaced by a later registration or renewal (401).
    CertificateSuperseded,
    /// The token's role or scope does not allow this (403).
    Forbidden,
    /// An enrollment token was refused (403), and why; `token_unknown` also answers a
    /// revocation of a token ID the hub does not have (404).
    Token(TokenRefusal),
    /// The CSR could not be parsed or its signature does not verify (400).
    CsrInvalid,
    /// The CSR's key is too weak (400).
    CsrWeakKey,
    /// The CSR names another subject than the appliance (400).
    CsrSubjectMismatch,
    /// Invalid input; the message names the field (400).
    Invalid,
    /// The JSON body could not be read (400).
    MalformedJson,
    /// The query string could not be read (400).
    MalformedQuery,
    /// The body is over the hub's limit (413).
    BodyTooLarge,
    /// A release bundle was refused: signature, key, payload or SHA-256 (400).
    BundleRefused,
    /// Uploading a bundle failed before it was complete (400).
    UploadFailed,
    /// The hub could not fetch a bundle from the URL it was given (502).
    FetchFailed,
    /// The hub could not read a bundle it serves (500).
    BundleReadFailed,
    /// No such appliance, or not in the caller's scope (404).
    ApplianceUnknown,
    /// No such operator token (404).
    OperatorTokenUnknown,
    /// No such VPC (404).
    VpcUnknown,
    /// No such control plane (404).
    ControlPlaneUnknown,
    /// No such tenant, or not the caller's (404).
    TenantUnknown,
    /// No such release (404).
    ReleaseUnknown,
    /// The release's bundle is not kept by this hub (404).
    BundleNotOnThisHub,
    /// No such campaign (404).
    CampaignUnknown,
    /// No such configuration layer, or not the caller's (404).
    ConfigLayerUnknown,
    /// The version was not quarantined on that appliance (404).
    NotQuarantined,
    /// The appliance carries no unexpected-version flag (404).
    NotFlagged,
    /// The appliance has no join bundle (404).
    NoJoinBundle,
    /// No such route (404).
    NoSuchRoute,
    /// The route does not take that method (405).
    MethodNotAllowed,
    /// Already exists or clashes (409).
    Conflict,
    /// A registration presented the hardware of a registered appliance without the right
    /// to re-key it (its certificate over mTLS, or a re-install token for it) (409). The
    /// appliance keeps its identity; the attempt is audited and raised as an event.
    HardwareKnown,
    /// Revoking or deleting this token would leave the hub without a usable fleet-wide
    /// admin token (409): create another admin token first.
    LastAdmin,
    /// Too many requests from this address (429).
    RateLimited,
    /// A control plane's API server failed (502).
    ControlPlaneFailed,
    /// The hub's store failed (503); retry.
    StoreUnavailable,
    /// Too many concurrent changes to one record (503); retry.
    Contended,
    /// The request took longer than the hub's request timeout (503); retry.
    Timeout,
    /// A watch asked to resume from a resource version the hub no longer keeps changes
    /// since (410): list again and watch from the list's `resource_version`.
    ResourceVersionTooOld,
    /// A `continue` cursor the hub did not make (400): start the listing again.
    CursorInvalid,
    /// The appliance holds no tunnel to this hub replica (503): it is offline or cannot
    /// reach the hub.
    NoTunnel,
    /// The appliance's tunnel broke during the request (502); retry.
    TunnelFailed,
    /// A code this build does not know, as the hub sent it.
    Unrecognized(String),
}

/// The fixed codes and their wire names, in one table both directions read.
const CODES: &[(&str, ErrorCode)] = &[
    ("unauthenticated", ErrorCode::Unauthenticated),
    (
        "client_certificate_required",
        ErrorCode::ClientCertificateRequired,
    ),
    (
        "client_certificate_invalid",
        ErrorCode::ClientCertificateInvalid,
    ),
    ("certificate_superseded", ErrorCode::CertificateSuperseded),
    ("forbidden", ErrorCode::Forbidden),
    ("csr_invalid", ErrorCode::CsrInvalid),
    ("csr_weak_key", ErrorCode::CsrWeakKey),
    ("csr_subject_mismatch", ErrorCode::CsrSubjectMismatch),
    ("invalid", ErrorCode::Invalid),
    ("malformed_json", ErrorCode::MalformedJson),
    ("malformed_query", ErrorCode::MalformedQuery),
    ("body_too_large", ErrorCode::BodyTooLarge),
    ("bundle_refused", ErrorCode::BundleRefused),
    ("upload_failed", ErrorCode::UploadFailed),
    ("fetch_failed", ErrorCode::FetchFailed),
    ("bundle_read_failed", ErrorCode::BundleReadFailed),
    ("appliance_unknown", ErrorCode::ApplianceUnknown),
    ("operator_token_unknown", ErrorCode::OperatorTokenUnknown),
    ("vpc_unknown", ErrorCode::VpcUnknown),
    ("control_plane_unknown", ErrorCode::ControlPlaneUnknown),
    ("tenant_unknown", ErrorCode::TenantUnknown),
    ("release_unknown", ErrorCode::ReleaseUnknown),
    ("bundle_not_on_this_hub", ErrorCode::BundleNotOnThisHub),
    ("campaign_unknown", ErrorCode::CampaignUnknown),
    ("config_layer_unknown", ErrorCode::ConfigLayerUnknown),
    ("not_quarantined", ErrorCode::NotQuarantined),
    ("not_flagged", ErrorCode::NotFlagged),
    ("no_join_bundle", ErrorCode::NoJoinBundle),
    ("no_such_route", ErrorCode::NoSuchRoute),
    ("method_not_allowed", ErrorCode::MethodNotAllowed),
    ("conflict", ErrorCode::Conflict),
    ("hardware_known", ErrorCode::HardwareKnown),
    ("last_admin", ErrorCode::LastAdmin),
    ("rate_limited", ErrorCode::RateLimited),
    ("control_plane_failed", ErrorCode::ControlPlaneFailed),
    ("store_unavailable", ErrorCode::StoreUnavailable),
    ("contended", ErrorCode::Contended),
    ("timeout", ErrorCode::Timeout),
    ("resource_version_too_old", ErrorCode::ResourceVersionTooOld),
    ("cursor_invalid", ErrorCode::CursorInvalid),
    ("no_tunnel", ErrorCode::NoTunnel),
    ("tunnel_failed", ErrorCode::TunnelFailed),
];

impl ErrorCode {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Token(reason) => reason.code(),
            Self::Unrecognized(code) => code,
            fixed => CODES
                .iter()
                .find(|(_, c)| c == fixed)
                .map(|(name, _)| *name)
                .expect("every fixed code is in CODES"),
        }
    }

    /// Reads a wire name; never fails (see [`ErrorCode::Unrecognized`]).
    pub fn parse(code: &str) -> Self {
        if let Some(reason) = TokenRefusal::from_code(code) {
            return Self::Token(reason);
        }
        CODES
            .iter()
            .find(|(name, _)| *name == code)
            .map_or_else(|| Self::Unrecognized(code.to_owned()), |(_, c)| c.clone())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl schemars::JsonSchema for ErrorCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Open-ended on purpose: a newer hub may send a code this build does not know.
        schemars::json_schema!({"type": "string", "description": "machine-readable error code"})
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}
