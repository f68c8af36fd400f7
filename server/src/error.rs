//! The one place where errors become the API's error body (`{"error":{"code","message"}}`).

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use serde::Serialize;

/// Every error a REST handler can return. The variant decides status and `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`; the message names the offending field.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `room_not_found`.
    #[error("room '{0}' not found")]
    RoomNotFound(String),
    /// 404 `recording_not_found`.
    #[error("recording '{0}' not found")]
    RecordingNotFound(String),
    /// 404 `participant_not_found`.
    #[error("participant '{0}' not found")]
    ParticipantNotFound(String),
    /// 404 `not_found`: no such route (a path outside the API contract).
    #[error("{0}")]
    NotFound(String),
    /// 409 `room_exists`.
    #[error("room '{0}' already exists")]
    RoomExists(String),
    /// 409 `room_full`.
    #[error("room '{0}' is full")]
    RoomFull(String),
    /// 409 `recording_in_progress`.
    #[error("room '{0}' is already being recorded")]
    RecordingInProgress(String),
    /// 409 `recording_in_progress`: the recording is still running (its file is not final).
    #[error("recording '{0}' is still running; stop it first")]
    RecordingRunning(uuid::Uuid),
    /// 416 `range_not_satisfiable`: the byte range lies outside the file of this size; the
    /// response carries `Content-Range: bytes */<size>`.
    #[error("the requested range lies outside the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
    /// 413 `payload_too_large`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 `rate_limited`: too many failed API-key attempts from this address; the response
    /// carries `Retry-After` (seconds).
    #[error("too many failed authentication attempts from your address; retry in {0} s")]
    RateLimited(u64),
    /// 503 `unavailable` (database unreachable, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// 503 `server_busy`: no node can take a new room now (all over their CPU headroom or
    /// draining).
    #[error("{0}")]
    ServerBusy(String),
    /// 500 `internal`: logged with its cause, the client sees a generic message.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The snake_case code of the API contract.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RoomNotFound(_) => "room_not_found",
            ApiError::RecordingNotFound(_) => "recording_not_found",
            ApiError::ParticipantNotFound(_) => "participant_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::RoomExists(_) => "room_exists",
            ApiError::RoomFull(_) => "room_full",
            ApiError::RecordingInProgress(_) | ApiError::RecordingRunning(_) => {
                "recording_in_progress"
            }
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::ServerBusy(_) => "server_busy",
            ApiError::Unexpected(_) => "internal",
        }
    }
}

/// The JSON error body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and human message.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable snake_case code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RoomNotFound(_)
            | ApiError::RecordingNotFound(_)
            | ApiError::ParticipantNotFound(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RoomExists(_)
            | ApiError::RoomFull(_)
            | ApiError::RecordingInProgress(_)
            | ApiError::RecordingRunning(_) => StatusCode::CONFLICT,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::ServerBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Unexpected(e) => {
                tracing::error!(error = ?e, "unexpected error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::RateLimited(secs) = self {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        if let ApiError::RangeNotSatisfiable(size) = self {
            res.insert_header((
                actix_web::http::header::CONTENT_RANGE,
                format!("bytes */{size}"),
            ));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message,
            },
        })
    }
}
