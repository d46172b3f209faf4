//! # `sync` frame and `POST /v1/sync`
//!
//! The client gives its last seen `seq` per conversation; the reply holds, for each of its
//! conversations with something new, the entries after that cursor (a page, `has_more` when
//! more follow). Conversations the client did not list are new to it and come with their
//! latest page. On a WebSocket the session's writer runs this, so that the reply and the live
//! stream are one ordered sequence (see ws/session.rs).

use std::collections::{BTreeMap, HashMap};

use natter_proto::{ConversationId, ConversationSummary, Seq, SyncConversation, UserId};
use natter_store::Range;

use crate::error::ApiResult;
use crate::state::AppState;

/// How far a session has delivered one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Everything up to this seq was sent; live entries continue from here.
    Live(Seq),
    /// The client is paging through a backlog (it got `has_more`) and has seen up to this
    /// seq; live entries wait until a sync reaches the end.
    Behind(Seq),
}

impl Delivery {
    pub(crate) fn upto(self) -> Seq {
        match self {
            Delivery::Live(s) | Delivery::Behind(s) => s,
        }
    }
}

/// Builds a sync reply. With `delivery` (a WebSocket session's state) it also records where
/// each conversation's live stream continues, and never repeats what the session sent.
/// `listed`: the user's memberships if the caller just read them (after the session became
/// routable), else they are read here.
pub(crate) async fn sync(
    state: &AppState,
    user: UserId,
    cursors: &BTreeMap<ConversationId, Seq>,
    limit: Option<u32>,
    mut delivery: Option<&mut HashMap<ConversationId, Delivery>>,
    listed: Option<Vec<ConversationSummary>>,
) -> ApiResult<Vec<SyncConversation>> {
    let limit = state.cfg().limits.page(limit);
    let store = state.store();
    let memberships = match listed {
        Some(list) => list,
        None => store.memberships(user).await?,
    };
    let mut out = Vec::new();
    for summary in memberships {
        let conv = summary.id;
        let sent = delivery.as_deref().and_then(|d| d.get(&conv)).map(|d| d.upto());
        let cursor = match (cursors.get(&conv).copied(), sent) {
            (Some(c), Some(s)) => Some(c.max(s)),
            (c, s) => c.or(s),
        };
        let (page, has_more) = match cursor {
            Some(c) if c >= summary.last_seq => {
                if let Some(d) = delivery.as_deref_mut() {
                    // Never below what this session already sent (the summary may be older).
                    let upto = c.min(summary.last_seq).max(sent.unwrap_or(0));
                    d.insert(conv, Delivery::Live(upto));
                }
                continue;
            }
            Some(c) => {
                let page = store.entries(conv, Range::After(c), limit).await?;
                (page.entries, page.has_more)
            }
            // New to the client: its latest page; older entries are a history call away.
            None => (store.entries(conv, Range::Latest, limit).await?.entries, false),
        };
        let upto = page.last().map(|e| e.seq).or(cursor).unwrap_or(0);
        if let Some(d) = delivery.as_deref_mut() {
            d.insert(conv, if has_more { Delivery::Behind(upto) } else { Delivery::Live(upto) });
        }
        out.push(SyncConversation { conversation: summary, entries: page, has_more });
    }
    Ok(out)
}
