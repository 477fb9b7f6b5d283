//! One error shape for every API answer: `{"error": code, "message": text}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_api::hub::{ErrorBody, ErrorCode};

use crate::fleet::FleetError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Code.
    pub code: ErrorCode,
    /// Message.
    pub message: String,
}

impl ApiError {
    /// Builds one.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
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
        let (status, code) = match &e {
            F::Store(err) => {
                tracing::error!(error = %err, "store failure");
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
            F::TokenRefused(reason) => (StatusCode::FORBIDDEN, ErrorCode::Token(*reason)),
            F::Csr(c) => (StatusCode::BAD_REQUEST, c.code()),
            F::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated),
            F::CertificateSuperseded => {
                (StatusCode::UNAUTHORIZED, ErrorCode::CertificateSuperseded)
            }
            F::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            F::NotFound { code, .. } => (StatusCode::NOT_FOUND, code.clone()),
            F::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            F::HardwareKnown => (StatusCode::CONFLICT, ErrorCode::HardwareKnown),
            F::LastAdmin(_) => (StatusCode::CONFLICT, ErrorCode::LastAdmin),
            F::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            F::BundleRefused(_) => (StatusCode::BAD_REQUEST, ErrorCode::BundleRefused),
            F::ControlPlane { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::ControlPlaneFailed),
            F::TooOld(_) => (StatusCode::GONE, ErrorCode::ResourceVersionTooOld),
            F::BadCursor => (StatusCode::BAD_REQUEST, ErrorCode::CursorInvalid),
            F::Contended(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Contended),
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
            ErrorCode::BodyTooLarge
        } else {
            ErrorCode::MalformedJson
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedQuery,
            r.body_text(),
        )
    }
}
