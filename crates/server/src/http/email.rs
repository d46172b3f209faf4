//! # Email (issue 14)
//!
//! `PUT /v1/me/email` sets (or with `null` removes) the caller's address and mails it a
//! verification link; `PUT /v1/me/email/digests` turns digests on or off. The links in
//! emails land on `GET /v1/email/verify` and `GET`/`POST /v1/email/unsubscribe` (the `GET`
//! only shows a button, so that a mail scanner following links unsubscribes nobody; the
//! `POST` is RFC 8058's one-click). A link whose signature does not check out, or that
//! expired, is refused with 403 and changes nothing.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use natter_proto::UserId;
use natter_proto::rest::{DigestsSetting, EmailUpdate};

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::push::email::{Action, Email};
use crate::state::AppState;

/// Longest address (RFC 5321's path limit).
const MAX_EMAIL_BYTES: usize = 254;

fn mailer(state: &AppState) -> ApiResult<&Email> {
    state.push().email().ok_or_else(|| ApiError::bad_request("email is not enabled on this server"))
}

/// `PUT /v1/me/email`.
#[utoipa::path(
    put, path = "/v1/me/email", tag = "email",
    request_body = EmailUpdate,
    responses((status = 202, description = "on file, a verification link was mailed"), (status = 204, description = "on file and verified already, or removed"))
)]
pub(super) async fn set(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<EmailUpdate>,
) -> ApiResult<StatusCode> {
    let JsonBody(req) = body;
    let mailer = mailer(&state)?;
    let user = auth.principal.user_id;
    let Some(email) = req.email.map(|e| e.trim().to_owned()) else {
        state.store().set_email(user, None).await?;
        return Ok(StatusCode::NO_CONTENT);
    };
    if email.len() > MAX_EMAIL_BYTES {
        return Err(ApiError::too_large(format!("email is over {MAX_EMAIL_BYTES} bytes")));
    }
    if email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::bad_request("not an email address"));
    }
    let before = state.store().email(user).await?;
    state.store().set_email(user, Some(email.clone())).await?;
    if before.is_some_and(|b| b.email == email && b.verified) {
        return Ok(StatusCode::NO_CONTENT);
    }
    let handle = state.store().user_handle(user).await?.ok_or_else(ApiError::unauthenticated)?;
    mailer.send_verification(user, &handle, &email).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `PUT /v1/me/email/digests`.
#[utoipa::path(
    put, path = "/v1/me/email/digests", tag = "email",
    request_body = DigestsSetting,
    responses((status = 204, description = "set"))
)]
pub(super) async fn digests(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<DigestsSetting>,
) -> ApiResult<StatusCode> {
    let JsonBody(req) = body;
    let user = auth.principal.user_id;
    let on_file = state.store().email(user).await?.ok_or_else(|| ApiError::not_found("email"))?;
    state.store().set_digests(user, &on_file.email, req.on).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Link {
    user: i64,
    email: String,
    exp: i64,
    sig: String,
}

fn page(status: StatusCode, title: &str, text: &str) -> (StatusCode, Html<String>) {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title>\
         <body style=\"font-family: sans-serif\"><h1>{title}</h1><p>{text}</p>"
    );
    (status, Html(body))
}

fn refused() -> (StatusCode, Html<String>) {
    page(StatusCode::FORBIDDEN, "Link not valid", "This link is not valid or has expired.")
}

/// The link's user and address, if this server signed it for `action` and it has not expired.
fn checked(
    state: &AppState,
    action: Action,
    link: Result<Query<Link>, QueryRejection>,
) -> Option<(UserId, String)> {
    let Query(link) = link.ok()?;
    let mailer = state.push().email()?;
    let user = UserId(link.user);
    mailer.check(action, user, &link.email, link.exp, &link.sig).then_some((user, link.email))
}

/// `GET /v1/email/verify`.
#[utoipa::path(
    get, path = "/v1/email/verify", tag = "email",
    security(()),
    params(Link),
    responses((status = 200, description = "confirmed", body = String, content_type = "text/html"), (status = 403, description = "the link is not valid or has expired", body = String, content_type = "text/html"), (status = 410, description = "the address is no longer on file", body = String, content_type = "text/html"))
)]
pub(super) async fn verify(
    State(state): State<AppState>,
    link: Result<Query<Link>, QueryRejection>,
) -> ApiResult<(StatusCode, Html<String>)> {
    let Some((user, email)) = checked(&state, Action::Verify, link) else { return Ok(refused()) };
    if !state.store().verify_email(user, &email, crate::now_ms()).await? {
        return Ok(page(StatusCode::GONE, "Address changed", "This address is no longer on file."));
    }
    Ok(page(StatusCode::OK, "Address confirmed", "You will get emails about messages you miss."))
}

/// `GET /v1/email/unsubscribe`: a button that posts the same link.
#[utoipa::path(
    get, path = "/v1/email/unsubscribe", tag = "email",
    security(()),
    params(Link),
    responses((status = 200, description = "a page asking to confirm", body = String, content_type = "text/html"), (status = 403, description = "the link is not valid or has expired", body = String, content_type = "text/html"))
)]
pub(super) async fn unsubscribe_page(
    State(state): State<AppState>,
    link: Result<Query<Link>, QueryRejection>,
    uri: axum::http::Uri,
) -> (StatusCode, Html<String>) {
    if checked(&state, Action::Unsubscribe, link).is_none() {
        return refused();
    }
    let action = uri.path_and_query().map(|p| p.as_str().replace('"', "%22")).unwrap_or_default();
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>\
         <body style=\"font-family: sans-serif\"><h1>No more emails about unread messages?</h1>\
         <form method=post action=\"{action}\"><button>Unsubscribe</button></form>"
    );
    (StatusCode::OK, Html(body))
}

/// `POST /v1/email/unsubscribe` (RFC 8058 one-click).
#[utoipa::path(
    post, path = "/v1/email/unsubscribe", tag = "email",
    security(()),
    params(Link),
    responses((status = 200, description = "unsubscribed", body = String, content_type = "text/html"), (status = 403, description = "the link is not valid or has expired", body = String, content_type = "text/html"))
)]
pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    link: Result<Query<Link>, QueryRejection>,
) -> ApiResult<(StatusCode, Html<String>)> {
    let Some((user, email)) = checked(&state, Action::Unsubscribe, link) else {
        return Ok(refused());
    };
    state.store().set_digests(user, &email, false).await?;
    Ok(page(StatusCode::OK, "Unsubscribed", "No more emails about unread messages will come."))
}
