//! The HTTP surface: REST under `/v1/`, the WebSocket upgrade, health and metrics, and the
//! web client at `/`.

mod accounts;
mod admin;
mod blocks;
mod conversations;
mod email;
mod ephemeral;
mod export;
mod invitations;
mod media;
mod moderation;
mod poll;
mod push;
mod search;
mod sse;
mod webapp;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use natter_proto::ErrorCode;

pub(crate) use poll::PollStreams;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, ws};

/// Every route; `polls` holds the long-poll streams between requests.
pub(crate) fn router(state: AppState, polls: Arc<PollStreams>) -> Router {
    let body_limit = state.cfg().limits.max_http_body_bytes;
    Router::new()
        .route("/", get(webapp::index))
        .route("/app/{file}", get(webapp::file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/accounts", post(accounts::register))
        .route("/v1/sessions", post(accounts::login))
        .route("/v1/sessions/current", axum::routing::delete(accounts::logout))
        .route("/v1/tickets", post(accounts::ticket))
        .route("/v1/me", get(accounts::me).delete(accounts::delete_account))
        .route("/v1/me/profile", axum::routing::patch(accounts::set_profile))
        .route("/v1/me/devices", get(accounts::devices))
        .route("/v1/me/devices/{id}", axum::routing::delete(accounts::revoke_device))
        .route("/v1/me/password", put(accounts::change_password))
        .route("/v1/me/export", get(export::export))
        .route("/v1/search", get(search::search))
        .route("/v1/push/config", get(push::config))
        .route("/v1/me/email", put(email::set))
        .route("/v1/me/email/digests", put(email::digests))
        .route("/v1/email/verify", get(email::verify))
        .route("/v1/email/unsubscribe", get(email::unsubscribe_page).post(email::unsubscribe))
        .route("/v1/me/push", post(push::register).get(push::list))
        .route("/v1/me/push/{id}", axum::routing::delete(push::unregister))
        .route("/v1/me/notifications", put(push::dnd))
        .route("/v1/conversations/{id}/notifications", put(push::mute))
        .route("/v1/me/blocks", get(blocks::list))
        .route("/v1/me/blocks/{id}", put(blocks::block).delete(blocks::unblock))
        .route("/v1/users", get(accounts::users))
        .route("/v1/users/{handle}", get(accounts::user))
        .route("/v1/conversations", post(conversations::create).get(conversations::list))
        .route("/v1/conversations/{id}", get(conversations::get).patch(conversations::update))
        .route(
            "/v1/conversations/{id}/members",
            get(conversations::members).post(conversations::add_member),
        )
        .route(
            "/v1/conversations/{id}/members/{user_id}",
            axum::routing::patch(conversations::update_member).delete(conversations::remove_member),
        )
        .route(
            "/v1/conversations/{id}/entries",
            get(conversations::history).post(conversations::post_entry),
        )
        .route("/v1/conversations/{id}/settings", put(moderation::settings))
        .route(
            "/v1/conversations/{id}/members/{user_id}/mute",
            put(moderation::mute).delete(moderation::unmute),
        )
        .route("/v1/conversations/{id}/bans", get(moderation::bans))
        .route(
            "/v1/conversations/{id}/bans/{user_id}",
            put(moderation::ban).delete(moderation::unban),
        )
        .route("/v1/conversations/{id}/cursors", put(conversations::set_cursors))
        .route("/v1/conversations/{id}/receipts", get(conversations::receipts))
        .route("/v1/conversations/{id}/typing", post(ephemeral::typing))
        .route("/v1/media", post(media::upload))
        .route("/v1/media/uploads", post(media::create_upload))
        .route(
            "/v1/media/uploads/{id}",
            axum::routing::head(media::upload_offset)
                .patch(media::append_upload)
                .delete(media::delete_upload),
        )
        .route("/v1/media/{id}", get(media::get))
        .route("/v1/media/{id}/content", get(media::content))
        .route("/v1/media/{id}/thumbnail", get(media::thumbnail))
        .route("/v1/invitations", get(invitations::list))
        .route("/v1/invitations/{id}", axum::routing::delete(invitations::decline))
        .route("/v1/invitations/{id}/accept", post(invitations::accept))
        .route("/v1/sync", post(conversations::sync))
        .route("/v1/events", get(sse::events))
        .route("/v1/poll", post(poll::poll))
        .route("/v1/streams/{id}/presence", put(ephemeral::subscribe_presence))
        .route("/v1/streams/{id}/status", put(ephemeral::set_status))
        .route("/v1/reports", post(admin::report))
        .route("/v1/admin/users", get(admin::users))
        .route("/v1/admin/users/{id}/suspend", post(admin::suspend))
        .route("/v1/admin/users/{id}/restore", post(admin::restore))
        .route(
            "/v1/admin/conversations/{id}/entries/{seq}",
            axum::routing::delete(admin::remove_message),
        )
        .route("/v1/admin/reports", get(admin::reports))
        .route("/v1/admin/reports/{id}/resolve", post(admin::resolve))
        .route("/v1/admin/audit", get(admin::audit))
        .fallback(|| async { admin::no_such_route() })
        .layer(axum::middleware::from_fn(observe_request))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(polls))
        .layer(cors(state.cfg()))
        .with_state(state)
}

/// CORS for web apps on other origins: those of `allowed_origins` (the list that also lets
/// them open WebSockets; `*`: any). Credentials are bearer tokens and tickets, never
/// cookies, so no `Allow-Credentials`; an origin off the list gets no CORS headers, and the
/// browser keeps the answer from its page.
fn cors(cfg: &crate::config::Config) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = if cfg.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = cfg.allowed_origins.iter().filter_map(|o| o.parse().ok()).collect::<Vec<_>>();
        AllowOrigin::list(list)
    };
    let upload_offset = HeaderName::from_static("upload-offset");
    let upload_length = HeaderName::from_static("upload-length");
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::RANGE,
            HeaderName::from_static("last-event-id"),
            upload_offset.clone(),
        ])
        .expose_headers([
            header::LOCATION,
            header::CONTENT_RANGE,
            header::RETRY_AFTER,
            upload_offset,
            upload_length,
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Each request runs in a `request{id, method, route}` span, so every log line it causes
/// carries its id: the caller's `X-Request-Id` (1 to 64 of `A-Za-z0-9._-`), else a new
/// UUIDv7, echoed in the response. Counts each request and the time to its answer's headers,
/// by route (the route's template: bounded, unlike paths), method and status.
async fn observe_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::{HeaderValue, Method};
    use tracing::Instrument;
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).filter(|id| {
        (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    let id = given.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let span = tracing::info_span!(
        "request",
        id = %id,
        method,
        route = %route,
        trace_id = tracing::field::Empty
    );
    crate::telemetry::link(&span, req.headers());
    let started = std::time::Instant::now();
    let mut res = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", value);
    }
    let status = res.status().as_u16().to_string();
    metrics::histogram!("natter_http_request_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("natter_http_requests_total", "route" => route, "method" => method, "status" => status)
        .increment(1);
    res
}

/// Ready when the store answers a read, and not draining.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.draining().is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    match state.store().user_handle(natter_proto::UserId(0)).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
    }
}

/// `GET /metrics`, for callers with `Authorization: Bearer <metrics_token>`; off (404)
/// without a configured token.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(want) = &state.cfg().metrics_token else {
        return ApiError::new(ErrorCode::NotFound, "metrics are off: set metrics_token")
            .into_response();
    };
    let given = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
    // Compared as digests, so the time taken says nothing about the token's prefix.
    let matches = given.is_some_and(|given| auth::token_hash(given) == auth::token_hash(want));
    if !matches {
        return ApiError::unauthenticated().into_response();
    }
    let text = crate::metrics::render(state.metrics());
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}
