//! # `GET /v1/me/export`: one's data as a JSON archive
//!
//! The archive is one JSON object, streamed page by page so that its size costs the server
//! one page of memory whatever the account holds:
//!
//! ```text
//! {"format":"natter-export/1","exported_at":…,"user":{…},"devices":[…],
//!  "conversations":[…],"messages":[…],"media":[…]}
//! ```
//!
//! `conversations` are the caller's memberships (summaries), `messages` every message the
//! caller sent that is not deleted (its current text, by conversation then seq, attachments
//! signed for the caller), `media` the caller's uploads with signed download URLs.
//! Exports are rate-limited per user (`exports_per_hour`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use natter_proto::{ConversationId, Seq, UserId};
use serde::Serialize;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The archive's format, its first field.
const FORMAT: &str = "natter-export/1";
/// Rows read from the store per page (messages or media).
const PAGE: u32 = 500;

/// Where the stream is: the part of the archive still to write.
enum Part {
    Messages(Option<(ConversationId, Seq)>),
    Media(Option<String>),
    Done,
}

#[utoipa::path(
    get, path = "/v1/me/export", tag = "accounts",
    responses((status = 200, description = "your data as one JSON archive (a download)", body = Object, content_type = "application/json"))
)]
pub(super) async fn export(State(state): State<AppState>, auth: Auth) -> ApiResult<Response> {
    let me = auth.principal.user_id;
    state.rate().check(crate::rate::Action::Export, me)?;
    // The head (profile, devices, memberships) is read before the answer starts, so that a
    // failure there is a clean error rather than a cut archive.
    let mut user = state.store().users(&[me]).await?.pop().ok_or_else(ApiError::unauthenticated)?;
    state.media().sign_user(&mut user);
    let devices = state.store().devices(me).await?;
    let mut conversations = state.store().memberships(me).await?;
    conversations.iter_mut().for_each(|s| state.media().sign_summary(s));
    let head = format!(
        "{{\"format\":{},\"exported_at\":{},\"user\":{},\"devices\":{},\"conversations\":{},\"messages\":[",
        json(&FORMAT)?,
        crate::now_ms(),
        json(&user)?,
        json(&devices)?,
        json(&conversations)?,
    );
    tracing::info!(user_id = me.0, "data export");
    let head = stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    let pages = stream::unfold(Part::Messages(None), move |part| {
        let state = state.clone();
        async move { next(&state, me, part).await }
    });
    let body = Body::from_stream(head.chain(pages));
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"natter-export.json\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The next piece of the archive after `part`, and the part after it; `None` at the end.
/// A store failure mid-stream ends the body with an error, so the client sees a cut
/// response (no closing brace), never an archive that looks whole.
async fn next(
    state: &AppState,
    me: UserId,
    part: Part,
) -> Option<(Result<Bytes, std::io::Error>, Part)> {
    match part {
        Part::Messages(after) => {
            let mut page = match state.store().messages_by(me, after, PAGE).await {
                Ok(page) => page,
                Err(err) => return Some((Err(cut(err)), Part::Done)),
            };
            state.media().sign_entries(&mut page, me);
            let last = page.last().map(|e| (e.conversation, e.seq));
            let mut out = items(&page, after.is_none());
            let next = match last {
                Some(last) if page.len() == PAGE as usize => Part::Messages(Some(last)),
                _ => {
                    out.push_str("],\"media\":[");
                    Part::Media(None)
                }
            };
            Some((Ok(out.into()), next))
        }
        Part::Media(after) => {
            let first = after.is_none();
            let rows = match state.store().media_of(me, after, PAGE).await {
                Ok(rows) => rows,
                Err(err) => return Some((Err(cut(err)), Part::Done)),
            };
            let expires = state.media().url_expiry();
            let media: Vec<ExportedMedia> = rows
                .iter()
                .map(|r| {
                    let mut attachment = r.attachment();
                    state.media().sign(&mut attachment, me, expires);
                    ExportedMedia { attachment, created_at: r.created_at }
                })
                .collect();
            let mut out = items(&media, first);
            let next = match rows.last() {
                Some(last) if rows.len() == PAGE as usize => Part::Media(Some(last.id.clone())),
                _ => {
                    out.push_str("]}");
                    Part::Done
                }
            };
            Some((Ok(out.into()), next))
        }
        Part::Done => None,
    }
}

/// Ends the body after a store failure (logged; the client sees the response cut).
fn cut(err: natter_store::StoreError) -> std::io::Error {
    tracing::warn!(%err, "data export cut short");
    std::io::Error::other("the export was cut short")
}

/// An upload as the archive lists it.
#[derive(Serialize)]
struct ExportedMedia {
    #[serde(flatten)]
    attachment: natter_proto::Attachment,
    created_at: i64,
}

/// `items` as the members of a JSON array, after a comma unless they are its first.
fn items<T: Serialize>(items: &[T], first: bool) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !first {
            out.push(',');
        }
        // Serializing our own types into a string cannot fail.
        out.push_str(&serde_json::to_string(item).unwrap_or_else(|_| "null".to_owned()));
    }
    out
}

fn json<T: Serialize + ?Sized>(value: &T) -> ApiResult<String> {
    serde_json::to_string(value)
        .map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "internal error"))
}
