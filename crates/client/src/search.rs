//! Message search (issue 15): [`Api::search`] and its options, kept apart from the
//! conversation calls.

use natter_proto::rest::SearchResults;
use natter_proto::{ConversationId, UserId};
use reqwest::Method;

use crate::{Api, Result};

/// Filters, order and page of one [`Api::search`] (all optional).
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    /// Only this conversation's messages.
    pub conversation: Option<ConversationId>,
    /// Only this user's messages.
    pub sender: Option<UserId>,
    /// Only messages with attachments.
    pub has_attachment: bool,
    /// Sent at or after this time (ms since the epoch).
    pub after: Option<i64>,
    /// Sent before this time (ms since the epoch).
    pub before: Option<i64>,
    /// By relevance rather than newest first.
    pub by_relevance: bool,
    /// The `next` of the page before.
    pub cursor: Option<String>,
    /// Hits per page (the server's default 20, at most 50).
    pub limit: Option<u32>,
}

impl Api {
    /// `GET /v1/search`: messages the caller may read that match `q` (words, `"phrases"`,
    /// `prefix*`), with marked snippets; `next` pages on.
    pub async fn search(&self, q: &str, options: &SearchOptions) -> Result<SearchResults> {
        let mut query = vec![("q", q.to_owned())];
        let o = options;
        if let Some(c) = o.conversation {
            query.push(("conversation", c.0.to_string()));
        }
        if let Some(s) = o.sender {
            query.push(("sender", s.0.to_string()));
        }
        if o.has_attachment {
            query.push(("has", "attachment".to_owned()));
        }
        if let Some(t) = o.after {
            query.push(("after", t.to_string()));
        }
        if let Some(t) = o.before {
            query.push(("before", t.to_string()));
        }
        if o.by_relevance {
            query.push(("order", "relevance".to_owned()));
        }
        if let Some(c) = &o.cursor {
            query.push(("cursor", c.clone()));
        }
        if let Some(n) = o.limit {
            query.push(("limit", n.to_string()));
        }
        self.call(Method::GET, "/v1/search", &query, None::<&()>).await
    }
}
