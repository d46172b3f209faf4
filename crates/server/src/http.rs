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
mod openapi;
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
use axum::routing::get;
use axum::{Extension, Router};
use natter_proto::ErrorCode;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) use poll::PollStreams;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{auth, ws};

/// Every route; `polls` holds the long-poll streams between requests. The REST routes come
/// from their handlers' `#[utoipa::path]` attributes, which also describe them in
/// `/v1/openapi.json` ([`openapi`]).
pub(crate) fn router(state: AppState, polls: Arc<PollStreams>) -> Router {
    let body_limit = state.cfg().limits.max_http_body_bytes;
    let (api, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(ws::upgrade))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::ticket))
        .routes(routes!(accounts::me, accounts::delete_account))
        .routes(routes!(accounts::set_profile))
        .routes(routes!(accounts::devices))
        .routes(routes!(accounts::revoke_device))
        .routes(routes!(accounts::change_password))
        .routes(routes!(export::export))
        .routes(routes!(search::search))
        .routes(routes!(push::config))
        .routes(routes!(email::set))
        .routes(routes!(email::digests))
        .routes(routes!(email::verify))
        .routes(routes!(email::unsubscribe_page, email::unsubscribe))
        .routes(routes!(push::register, push::list))
        .routes(routes!(push::unregister))
        .routes(routes!(push::dnd))
        .routes(routes!(push::mute))
        .routes(routes!(blocks::list))
        .routes(routes!(blocks::block, blocks::unblock))
        .routes(routes!(accounts::users))
        .routes(routes!(accounts::user))
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::get, conversations::update))
        .routes(routes!(conversations::members, conversations::add_member))
        .routes(routes!(conversations::update_member, conversations::remove_member))
        .routes(routes!(conversations::history, conversations::post_entry))
        .routes(routes!(moderation::settings))
        .routes(routes!(moderation::mute, moderation::unmute))
        .routes(routes!(moderation::bans))
        .routes(routes!(moderation::ban, moderation::unban))
        .routes(routes!(conversations::set_cursors))
        .routes(routes!(conversations::receipts))
        .routes(routes!(ephemeral::typing))
        .routes(routes!(media::upload))
        .routes(routes!(media::create_upload))
        .routes(routes!(media::upload_offset, media::append_upload, media::delete_upload))
        .routes(routes!(media::get))
        .routes(routes!(media::content))
        .routes(routes!(media::thumbnail))
        .routes(routes!(invitations::list))
        .routes(routes!(invitations::decline))
        .routes(routes!(invitations::accept))
        .routes(routes!(conversations::sync))
        .routes(routes!(sse::events))
        .routes(routes!(poll::poll))
        .routes(routes!(ephemeral::subscribe_presence))
        .routes(routes!(ephemeral::set_status))
        .routes(routes!(admin::report))
        .routes(routes!(admin::users))
        .routes(routes!(admin::suspend))
        .routes(routes!(admin::restore))
        .routes(routes!(admin::remove_message))
        .routes(routes!(admin::reports))
        .routes(routes!(admin::resolve))
        .routes(routes!(admin::audit))
        .split_for_parts();
    let doc = OpenApiJson(Arc::from(openapi::document(doc)));
    Router::new()
        .route("/", get(webapp::index))
        .route("/app/{file}", get(webapp::file))
        .merge(api)
        .fallback(|| async { admin::no_such_route() })
        .layer(axum::middleware::from_fn(observe_request))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(polls))
        .layer(Extension(doc))
        .layer(cors(state.cfg()))
        .with_state(state)
}

/// The rendered OpenAPI document.
#[derive(Clone)]
struct OpenApiJson(Arc<str>);

/// This API's description.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "operations",
    security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object))
)]
async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc.0.to_string()).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    security(()),
    responses((status = 200, description = "alive", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
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
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    security(()),
    responses(
        (status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "draining, or the store does not answer", body = String, content_type = "text/plain"),
    )
)]
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
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    security(("metrics" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
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
