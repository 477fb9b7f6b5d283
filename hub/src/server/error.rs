//! One error shape for every API answer: `{"error": code, "message": text}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::fleet::FleetError;

/// The JSON body of every error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    /// What happened, for people.
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Code.
    pub code: String,
    /// Message.
    pub message: String,
}

impl ApiError {
    /// Builds one.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        use FleetError as F;
        let message = e.to_string();
        let (status, code): (StatusCode, String) = match &e {
            F::Store(err) => {
                tracing::error!(error = %err, "store failure");
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable".into())
            }
            F::TokenRefused(reason) => (StatusCode::FORBIDDEN, format!("token_{reason}")),
            F::Csr(c) => (StatusCode::BAD_REQUEST, c.code().into()),
            F::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated".into()),
            F::CertificateSuperseded => (StatusCode::UNAUTHORIZED, "certificate_superseded".into()),
            F::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden".into()),
            F::NotFound { code, .. } => (StatusCode::NOT_FOUND, (*code).into()),
            F::Conflict(_) => (StatusCode::CONFLICT, "conflict".into()),
            F::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid".into()),
            F::BundleRefused(_) => (StatusCode::BAD_REQUEST, "bundle_refused".into()),
            F::ControlPlane { .. } => (StatusCode::BAD_GATEWAY, "control_plane_failed".into()),
            F::Contended(_) => (StatusCode::SERVICE_UNAVAILABLE, "contended".into()),
        };
        Self::new(status, code, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r.status() {
            // Over the body limit stays 413; every other JSON problem is the client's.
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "malformed_json"
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_query", r.body_text())
    }
}
