//! # Media routes
//!
//! Uploads (`POST /v1/media` whole, or resumable under `/v1/media/uploads`) need a bearer
//! token; downloads (`GET /v1/media/{id}/content|thumbnail`) need instead a URL signed for a
//! reader, who must still be allowed to see the media when they use it. Bodies stream to a
//! staging file, never into memory; their deadline is per read (`http_body_timeout_ms`
//! between two chunks), not for the whole body, so large files on slow links get through.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use natter_proto::rest::{NewUpload, UploadCreated, Uploaded};
use natter_proto::{ErrorCode, UserId};
use natter_store::MediaRecord;
use serde::Deserialize;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::media::service::MAX_NAME_BYTES;
use crate::media::sign::{Refused, Variant};
use crate::media::upload::Meta;
use crate::media::{Media, SNIFF_BYTES, StageError};
use crate::now_ms;
use crate::rate::Action;
use crate::state::AppState;

/// `Upload-Offset`, `Upload-Length`: tus 1.0's names for where a resumable upload stands.
const UPLOAD_OFFSET: &str = "upload-offset";
const UPLOAD_LENGTH: &str = "upload-length";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadQuery {
    filename: Option<String>,
}

/// `POST /v1/media?filename=..`: the body is the file. Answers `201` with the stored media.
#[utoipa::path(
    post, path = "/v1/media", tag = "media",
    params(UploadQuery),
    request_body(content = super::openapi::Binary, content_type = "application/octet-stream", description = "the file"),
    responses((status = 201, description = "stored", body = Uploaded))
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    let me = auth.principal.user_id;
    let name = check_name(query?.0.filename)?;
    let media = state.media();
    let max = media.policy.max_upload();
    if content_length(&headers).is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    state.rate().check(Action::Upload, me)?;
    check_quota(&state, me, content_length(&headers).unwrap_or(0)).await?;
    let declared = declared_type(&headers);
    // The first bytes decide the type, and so the cap, before the rest is read.
    let mut body = body.into_data_stream();
    let mut head = Vec::new();
    while head.len() < SNIFF_BYTES {
        match body.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(err)) => return Err(body_error(StageError::Body(err.to_string()))),
            None => break,
        }
    }
    // With a Content-Length, a file over its type's cap is refused before it is read.
    let size = content_length(&headers).unwrap_or(head.len() as u64);
    let sniffed = media.admit(&head, declared.as_deref(), size)?;
    let cap = media.policy.cap(&sniffed).unwrap_or(max);
    let body = futures_util::stream::iter([Ok::<_, axum::Error>(Bytes::from(head))]).chain(body);
    let mut partial = media.blobs.partial().await.map_err(io_error)?;
    let pace = media.pace.clone();
    let written = media
        .ingest(async move {
            let res = partial.append(body, cap, &pace).await;
            res.map(|()| partial.finish())
        })
        .await;
    let staged = written.map_err(|err| match err {
        StageError::TooLarge => ApiError::too_large(format!(
            "uploads of type {} may have at most {cap} bytes",
            sniffed.content_type
        )),
        err => body_error(err),
    })?;
    let record = media
        .store(state.store().as_ref(), me, staged, declared.as_deref(), name, quota(&state))
        .await?;
    Ok((StatusCode::CREATED, Json(uploaded(media, &record, me))))
}

/// `POST /v1/media/uploads` `{length, content_type?, name?}`: opens a resumable upload.
#[utoipa::path(
    post, path = "/v1/media/uploads", tag = "media",
    request_body = NewUpload,
    responses((status = 201, description = "started", body = UploadCreated, headers(("Location" = String, description = "the upload's URL"), ("Upload-Offset" = u64, description = "0"))))
)]
pub(super) async fn create_upload(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<NewUpload>,
) -> ApiResult<Response> {
    let JsonBody(req) = body;
    let me = auth.principal.user_id;
    let media = state.media();
    let name = check_name(req.name)?;
    if req.length > media.policy.max_upload() {
        return Err(too_large(media.policy.max_upload()));
    }
    state.rate().check(Action::Upload, me)?;
    check_quota(&state, me, req.length).await?;
    let partial = media.blobs.partial().await.map_err(io_error)?;
    let meta = Meta { owner: me, length: req.length, declared: req.content_type, name };
    let id = media.uploads.open(meta, partial)?;
    let location = format!("/v1/media/uploads/{id}");
    let created = UploadCreated { id, offset: 0, length: req.length };
    let mut res = (StatusCode::CREATED, Json(created)).into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, header_value(&location));
    h.insert(UPLOAD_OFFSET, HeaderValue::from(0u64));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(req.length));
    Ok(res)
}

/// `HEAD /v1/media/uploads/{id}`: where the upload stands (`Upload-Offset`).
#[utoipa::path(
    head, path = "/v1/media/uploads/{id}", tag = "media",
    params(("id" = String, Path, description = "the upload id")),
    responses((status = 200, description = "how far it is", headers(("Upload-Offset" = u64, description = "the bytes received"), ("Upload-Length" = u64, description = "the bytes to come in all"))))
)]
pub(super) async fn upload_offset(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let slot = state.media().uploads.get(&id, auth.principal.user_id)?;
    let guard = slot.lock().await;
    let open = guard.as_ref().ok_or_else(|| ApiError::not_found("upload"))?;
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    h.insert(UPLOAD_OFFSET, HeaderValue::from(open.partial.size()));
    h.insert(UPLOAD_LENGTH, HeaderValue::from(open.meta.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `PATCH /v1/media/uploads/{id}` with `Upload-Offset` (what `HEAD` says): appends the
/// body. `204` with the new `Upload-Offset`, or `201` and the stored media once the last
/// byte arrived. A broken body keeps what arrived.
#[utoipa::path(
    patch, path = "/v1/media/uploads/{id}", tag = "media",
    params(("id" = String, Path, description = "the upload id"), ("Upload-Offset" = u64, Header, description = "where these bytes start")),
    request_body(content = super::openapi::Binary, content_type = "application/offset+octet-stream", description = "the next bytes"),
    responses((status = 204, description = "appended", headers(("Upload-Offset" = u64, description = "the bytes received"))), (status = 201, description = "the last byte came: stored", body = Uploaded))
)]
pub(super) async fn append_upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let me = auth.principal.user_id;
    let media = state.media();
    let offset = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("Upload-Offset (a byte offset) is required"))?;
    let slot = media.uploads.get(&id, me)?;
    let Ok(mut guard) = slot.try_lock_owned() else {
        return Err(ApiError::new(ErrorCode::Conflict, "another PATCH is writing this upload"));
    };
    let open = guard.as_mut().ok_or_else(|| ApiError::not_found("upload"))?;
    open.at(offset)?;
    let length = open.meta.length;
    // Written on the ingest runtime by a task that holds the upload's lock, so that what
    // arrived is recorded even if this request is dropped half-way.
    let body = body.into_data_stream();
    let pace = media.pace.clone();
    let (mut guard, appended) = media
        .ingest(async move {
            let res = match guard.as_mut() {
                Some(open) => open.partial.append(body, length, &pace).await,
                None => Ok(()),
            };
            (guard, res)
        })
        .await;
    let open = guard.as_mut().ok_or_else(|| ApiError::not_found("upload"))?;
    let refused = match appended {
        Ok(()) => None,
        Err(StageError::TooLarge) => Some(ApiError::bad_request(format!(
            "the body runs past the upload's length ({length} bytes)"
        ))),
        Err(err) => return Err(body_error(err)),
    };
    let size = open.partial.size();
    // Type and cap are checked as soon as the first bytes are in.
    if !open.sniffed && (open.partial.head().len() >= SNIFF_BYTES || size == length) {
        if let Err(err) = media.admit(open.partial.head(), open.meta.declared.as_deref(), length) {
            guard.take();
            media.uploads.remove(&id);
            return Err(err);
        }
        open.sniffed = true;
    }
    if let Some(err) = refused {
        return Err(err);
    }
    if size < length {
        let mut res = StatusCode::NO_CONTENT.into_response();
        res.headers_mut().insert(UPLOAD_OFFSET, HeaderValue::from(size));
        return Ok(res);
    }
    let done = guard.take().expect("checked above");
    media.uploads.remove(&id);
    drop(guard);
    let staged = done.partial.finish();
    let declared = done.meta.declared.as_deref();
    let record = media
        .store(state.store().as_ref(), me, staged, declared, done.meta.name, quota(&state))
        .await?;
    let mut res = (StatusCode::CREATED, Json(uploaded(media, &record, me))).into_response();
    res.headers_mut().insert(UPLOAD_OFFSET, HeaderValue::from(size));
    Ok(res)
}

/// `DELETE /v1/media/uploads/{id}`: abandons a resumable upload.
#[utoipa::path(
    delete, path = "/v1/media/uploads/{id}", tag = "media",
    params(("id" = String, Path, description = "the upload id")),
    responses((status = 204, description = "dropped"))
)]
pub(super) async fn delete_upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let media = state.media();
    let slot = media.uploads.get(&id, auth.principal.user_id)?;
    slot.lock().await.take();
    media.uploads.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/media/{id}`: the media with fresh URLs, for its owner and for members of a
/// conversation where it was posted.
#[utoipa::path(
    get, path = "/v1/media/{id}", tag = "media",
    params(("id" = String, Path, description = "the media id")),
    responses((status = 200, description = "the media, with signed URLs", body = Uploaded))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Uploaded>> {
    let me = auth.principal.user_id;
    let record = readable(&state, me, &id).await?;
    Ok(Json(uploaded(state.media(), &record, me)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Signed {
    u: i64,
    e: i64,
    s: String,
}

/// `GET /v1/media/{id}/content?u=&e=&s=`: the bytes, to the reader the URL was signed for.
#[utoipa::path(
    get, path = "/v1/media/{id}/content", tag = "media",
    security(()),
    params(("id" = String, Path, description = "the media id"), Signed),
    responses((status = 200, description = "the bytes", body = super::openapi::Binary, content_type = "*/*"), (status = 206, description = "the range asked for", body = super::openapi::Binary, content_type = "*/*"))
)]
pub(super) async fn content(
    state: State<AppState>,
    id: Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    download(state, id, query, headers, Variant::Original).await
}

/// `GET /v1/media/{id}/thumbnail?u=&e=&s=`.
#[utoipa::path(
    get, path = "/v1/media/{id}/thumbnail", tag = "media",
    security(()),
    params(("id" = String, Path, description = "the media id"), Signed),
    responses((status = 200, description = "the thumbnail", body = super::openapi::Binary, content_type = "*/*"), (status = 206, description = "the range asked for", body = super::openapi::Binary, content_type = "*/*"))
)]
pub(super) async fn thumbnail(
    state: State<AppState>,
    id: Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    download(state, id, query, headers, Variant::Thumbnail).await
}

async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
    variant: Variant,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let media = state.media();
    let grant = media.signer.check(&id, variant, UserId(q.u), q.e, &q.s, now_ms() / 1000);
    let grant = grant.map_err(|refused| match refused {
        Refused::BadSignature => ApiError::new(ErrorCode::Forbidden, "bad URL signature"),
        Refused::Expired => ApiError::new(ErrorCode::Forbidden, "the URL has expired"),
    })?;
    let record = readable(&state, grant.reader, &id).await?;
    let blobs = &media.blobs;
    let requested = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // A thumbnail is small: read whole, its type (JPEG, or PNG with alpha) from its bytes.
    let thumbnail = match variant {
        Variant::Original => None,
        Variant::Thumbnail => {
            let (sha, _) =
                record.thumbnail.clone().ok_or_else(|| ApiError::not_found("thumbnail"))?;
            let bytes = blobs.read_all(&sha).await.map_err(blob_error)?;
            Some((sha, bytes))
        }
    };
    let size = thumbnail.as_ref().map_or(record.size, |(_, bytes)| bytes.len() as u64);
    let range = match requested.map(|spec| byte_range(spec, size)) {
        None => None,
        Some(Some(range)) => Some(range),
        Some(None) => return Ok(unsatisfiable(size)),
    };
    let (sha, content_type, body) = match thumbnail {
        None => {
            let stream = blobs.read(&record.sha256, range.clone()).await.map_err(blob_error)?;
            (record.sha256.clone(), record.content_type.clone(), Body::from_stream(stream))
        }
        Some((sha, bytes)) => {
            let content_type = natter_media::sniff(&bytes).content_type.to_owned();
            let part = match &range {
                Some(r) => bytes.slice(r.start as usize..r.end as usize),
                None => bytes,
            };
            (sha, content_type, Body::from(part))
        }
    };
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    let len = range.as_ref().map_or(size, |r| r.end - r.start);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(r) = &range {
        let value = format!("bytes {}-{}/{size}", r.start, r.end - 1);
        h.insert(header::CONTENT_RANGE, header_value(&value));
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_TYPE, header_value(&content_type));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Even if a browser did render it, nothing in it may run or load anything.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert(header::ETAG, header_value(&format!("\"{sha}\"")));
    let max_age = (grant.expires - now_ms() / 1000).max(0);
    h.insert(
        header::CACHE_CONTROL,
        header_value(&format!("private, max-age={max_age}, immutable")),
    );
    let disposition = disposition(natter_media::inline_safe(&content_type), record.name.as_deref());
    h.insert(header::CONTENT_DISPOSITION, header_value(&disposition));
    Ok(res)
}

/// The media, if `user` may read it; `not_found` otherwise (as for a missing id).
async fn readable(state: &AppState, user: UserId, id: &str) -> ApiResult<MediaRecord> {
    let store = state.store();
    if !store.media_access(user, id).await? {
        return Err(ApiError::not_found("media"));
    }
    store.media(id).await?.ok_or_else(|| ApiError::not_found("media"))
}

fn uploaded(media: &Media, record: &MediaRecord, reader: UserId) -> Uploaded {
    let mut attachment = record.attachment();
    media.sign(&mut attachment, reader, media.signer.expiry(now_ms() / 1000));
    Uploaded { attachment, sha256: record.sha256.clone() }
}

/// `inline` only for types a browser shows without running anything; the name in both
/// the plain (ASCII) and the RFC 8187 (UTF-8) forms.
fn disposition(inline: bool, name: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let Some(name) = name else { return kind.to_owned() };
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let utf8 = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{utf8}")
}

/// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n` within `size` bytes, as a half-open
/// range; `None` if it cannot be satisfied. Several ranges are not served (`None`).
fn byte_range(spec: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let n: u64 = end.parse().ok()?;
        size.saturating_sub(n)..size
    } else {
        let start: u64 = start.parse().ok()?;
        let end = if end.is_empty() {
            size
        } else {
            end.parse::<u64>().ok()?.saturating_add(1).min(size)
        };
        start..end
    };
    (range.start < range.end).then_some(range)
}

fn unsatisfiable(size: u64) -> Response {
    let err = ApiError::bad_request("the Range cannot be satisfied (one range of bytes=a-b)");
    let mut res = (StatusCode::RANGE_NOT_SATISFIABLE, Json(err.body())).into_response();
    res.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes */{size}")));
    res
}

fn check_name(name: Option<String>) -> ApiResult<Option<String>> {
    let Some(name) = name else { return Ok(None) };
    if name.len() > MAX_NAME_BYTES {
        return Err(ApiError::too_large(format!("file names have at most {MAX_NAME_BYTES} bytes")));
    }
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a file name is non-empty and has no control characters",
        ));
    }
    Ok(Some(name))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn declared_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.to_owned())
}

fn quota(state: &AppState) -> u64 {
    state.cfg().limits.media_quota_bytes
}

/// Refuses early an upload that cannot fit (the store checks again when it records it).
async fn check_quota(state: &AppState, user: UserId, size: u64) -> ApiResult<()> {
    let used = state.store().media_usage(user).await?;
    if used.saturating_add(size) > quota(state) {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("media storage quota exceeded ({used} of {} bytes used)", quota(state)),
        ));
    }
    Ok(())
}

fn too_large(cap: u64) -> ApiError {
    ApiError::too_large(format!("the upload exceeds its cap of {cap} bytes"))
}

fn body_error(err: StageError) -> ApiError {
    match err {
        StageError::TooLarge => ApiError::too_large("upload too large"),
        StageError::Body(msg) if msg.contains("did not arrive") => {
            ApiError::new(ErrorCode::RequestTimeout, "the upload stalled")
        }
        StageError::Body(_) => ApiError::bad_request("the upload's body broke off"),
        StageError::Io(err) => io_error(err),
    }
}

fn io_error(err: std::io::Error) -> ApiError {
    tracing::error!(error = %err, "staging an upload failed");
    ApiError::new(ErrorCode::Unavailable, "cannot stage the upload; retry")
}

fn blob_error(err: object_store::Error) -> ApiError {
    if matches!(err, object_store::Error::NotFound { .. }) {
        tracing::error!(error = %err, "a recorded blob is missing");
        return ApiError::not_found("media");
    }
    tracing::warn!(error = %err, "blob storage failed");
    ApiError::new(ErrorCode::Unavailable, "blob storage unavailable; retry")
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(byte_range("bytes=90-", 100), Some(90..100));
        assert_eq!(byte_range("bytes=-10", 100), Some(90..100));
        assert_eq!(byte_range("bytes=95-200", 100), Some(95..100));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-2", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(byte_range("bytes=-0", 100), None);
    }

    #[test]
    fn dispositions() {
        assert_eq!(disposition(true, None), "inline");
        assert_eq!(
            disposition(false, Some("a\"b é.html")),
            "attachment; filename=\"a_b _.html\"; filename*=UTF-8''a%22b%20%C3%A9%2Ehtml"
        );
    }
}
