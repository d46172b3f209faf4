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
    /// With `too_many_requests`: how long to wait before retrying.
    pub(crate) retry_after_ms: Option<u64>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), retry_after_ms: None }
    }
    /// `too_many_requests`, to be retried after `retry_after`.
    pub(crate) fn too_many_requests(
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> ApiError {
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        ApiError { retry_after_ms: Some(ms), ..ApiError::new(ErrorCode::TooManyRequests, message) }
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
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
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
        ApiError { code: body.code, message: body.message, retry_after_ms: body.retry_after_ms }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        let code = err.code();
        let message = match &err {
            StoreError::Unavailable(_) => {
                metrics::counter!("natter_store_errors_total", "kind" => "unavailable")
                    .increment(1);
                tracing::warn!(error = %err, "store unavailable");
                "the store is unavailable; retry".to_owned()
            }
            StoreError::Internal(_) => {
                metrics::counter!("natter_store_errors_total", "kind" => "internal").increment(1);
                tracing::error!(error = %err, "store fault");
                "internal error".to_owned()
            }
            _ => err.to_string(),
        };
        let retry_after_ms = match err {
            StoreError::SlowMode { retry_after_ms } => Some(retry_after_ms.max(1)),
            StoreError::Muted { until } => {
                Some(u64::try_from(until.saturating_sub(crate::now_ms())).unwrap_or(0).max(1))
            }
            _ => None,
        };
        ApiError { code, message, retry_after_ms }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rej: JsonRejection) -> ApiError {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large("request body too large");
        }
        if crate::serve::is_body_timeout(&rej) {
            let message = "the request body did not arrive in time";
            return ApiError::new(ErrorCode::RequestTimeout, message);
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

impl ApiError {
    /// Counts this error, answered on `transport`, under its stable code.
    pub(crate) fn count(&self, transport: &'static str) {
        let code = serde_json::to_value(self.code).ok();
        let code = code.as_ref().and_then(|c| c.as_str()).unwrap_or("unknown").to_owned();
        metrics::counter!("natter_errors_total", "transport" => transport, "code" => code)
            .increment(1);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.count("rest");
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, Json(self.body())).into_response();
        if let Some(ms) = self.retry_after_ms {
            // Whole seconds, rounded up (RFC 9110 `Retry-After`); the body has milliseconds.
            let secs = ms.div_ceil(1000).to_string();
            if let Ok(value) = axum::http::HeaderValue::from_str(&secs) {
                res.headers_mut().insert(axum::http::header::RETRY_AFTER, value);
            }
        }
        res
    }
}
