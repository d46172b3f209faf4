//! # Message search (issue 15)
//!
//! `GET /v1/search?q=…` finds messages the caller may read (natter_store::search for the
//! query language and how text is folded): in the conversations they are a member of, from
//! the `seq` they joined at. Filters: `conversation`, `sender`, `has=attachment`, `after`
//! and `before` (ms since the epoch); `order=newest` (default) or `relevance`; `limit` (20,
//! at most 50) and `cursor` (the `next` of the page before). Each hit has a snippet of the
//! message as it reads now, its hits marked. Searches share the per-user `search_per_min`
//! budget of user search.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use natter_proto::rest::{SearchHit, SearchResults, SnippetPart};
use natter_proto::{ConversationId, UserId};
use natter_store::search::{Query as SearchQuery, snippet};
use natter_store::{SearchOrder, SearchRequest};

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 50;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Params {
    q: String,
    conversation: Option<i64>,
    sender: Option<i64>,
    has: Option<String>,
    after: Option<i64>,
    before: Option<i64>,
    order: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/search", tag = "search",
    params(Params),
    responses((status = 200, description = "the hits", body = SearchResults))
)]
pub(super) async fn search(
    State(state): State<AppState>,
    auth: Auth,
    params: Result<Query<Params>, QueryRejection>,
) -> ApiResult<Json<SearchResults>> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let user = auth.principal.user_id;
    state.rate().check(crate::rate::Action::Search, user)?;
    let query = SearchQuery::parse(&p.q)?;
    let order = match p.order.as_deref() {
        None | Some("newest") => SearchOrder::Newest,
        Some("relevance") => SearchOrder::Relevance,
        Some(_) => return Err(ApiError::bad_request("order is newest or relevance")),
    };
    let has_attachment = match p.has.as_deref() {
        None => false,
        Some("attachment") => true,
        Some(_) => return Err(ApiError::bad_request("has is attachment")),
    };
    if p.cursor.as_ref().is_some_and(|c| c.len() > 64) {
        return Err(ApiError::bad_request("not a cursor of this search"));
    }
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit is 1 to {MAX_LIMIT}")));
    }
    let request = SearchRequest {
        query: query.clone(),
        conversation: p.conversation.map(ConversationId),
        sender: p.sender.map(UserId),
        has_attachment,
        after: p.after,
        before: p.before,
        order,
        cursor: p.cursor,
        limit,
    };
    let page = state.store().search(user, request).await?;
    let hits = page
        .hits
        .into_iter()
        .map(|h| SearchHit {
            conversation: h.conversation,
            seq: h.seq,
            sender: h.sender,
            ts: h.ts,
            snippet: snippet(&h.text, &query)
                .into_iter()
                .map(|(text, hit)| SnippetPart { text, hit })
                .collect(),
        })
        .collect();
    metrics::counter!("natter_searches_total").increment(1);
    Ok(Json(SearchResults { hits, next: page.next }))
}
