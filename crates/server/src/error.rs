//! [`ApiError`]: what a failed request answers, on REST and on the WebSocket alike.
//!
//! The client sees a stable [`ErrorCode`] and a short message; internal detail (database
//! errors) is logged here and never sent.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use natter_proto::{ErrorBody, ErrorCode, MAX_SEQ, Seq};
use natter_store::StoreError;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }
    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::TooLarge, message)
    }
    pub(crate) fn unauthenticated() -> ApiError {
        ApiError::new(ErrorCode::Unauthenticated, "missing, invalid or revoked credentials")
    }
    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code, message: self.message.clone() }
    }
}

/// Fails with `bad_request` for a seq the stores cannot hold (beyond [`MAX_SEQ`]), so that
/// it is never cast into a negative one.
pub(crate) fn check_seq(what: &str, seq: Seq) -> ApiResult<Seq> {
    if seq > MAX_SEQ {
        return Err(ApiError::bad_request(format!("{what} out of range (at most {MAX_SEQ})")));
    }
    Ok(seq)
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        ApiError { code: body.code, message: body.message }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let code = err.code();
        let message = match &err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %err, "store unavailable");
                "the store is unavailable; retry".to_owned()
            }
            StoreError::Internal(_) => {
                tracing::error!(error = %err, "store fault");
                "internal error".to_owned()
            }
            _ => err.to_string(),
        };
        ApiError { code, message }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rej: JsonRejection) -> ApiError {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large("request body too large");
        }
        ApiError::new(ErrorCode::MalformedFrame, rej.body_text())
    }
}

/// A JSON request body read as `T` with the WebSocket's error codes
/// ([`natter_proto::from_json_value`]): not JSON or the wrong shape is `malformed_frame`, a
/// number out of range is `bad_request`, over `max_http_body_bytes` is `too_large`.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state).await?;
        Ok(JsonBody(natter_proto::from_json_value(value)?))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rej: PathRejection) -> ApiError {
        ApiError::bad_request(rej.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rej: QueryRejection) -> ApiError {
        ApiError::bad_request(rej.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}
