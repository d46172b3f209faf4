//! Sync replies (`sync` frame, `POST /v1/sync`, SSE catch-up, long-poll): the client gives
//! its last seen `seq` per conversation; the reply holds, for each of its conversations with
//! something new, the entries after that cursor (a page, `has_more` when more follow).
//! Conversations the client did not list are new to it and come with their latest page. A
//! session's deliverer runs this against its sequencer, so that the reply and the live stream
//! are one ordered sequence; REST runs it without one.

use std::collections::BTreeMap;

use natter_proto::{ConversationId, ConversationSummary, Seq, SyncConversation, UserId};
use natter_store::Range;

use crate::error::ApiResult;
use crate::sequencer::{Sequencer, SyncRead, Synced};
use crate::state::AppState;

/// Builds a sync reply. With `sequencer` (a session's delivery state) each conversation
/// starts after what the session already sent, and once the whole reply is read the
/// sequencer records where each live stream continues. `listed`: the user's memberships if
/// the caller just read them (after the session became routable), else they are read here.
pub(crate) async fn sync(
    state: &AppState,
    user: UserId,
    cursors: &BTreeMap<ConversationId, Seq>,
    limit: Option<u32>,
    sequencer: Option<&mut Sequencer>,
    listed: Option<Vec<ConversationSummary>>,
) -> ApiResult<Vec<SyncConversation>> {
    let limit = state.cfg().limits.page(limit);
    let store = state.store();
    let memberships = match listed {
        Some(list) => list,
        None => store.memberships(user).await?,
    };
    let mut out = Vec::new();
    // Recorded only if every read succeeds: a failed sync replies with an error, so the
    // client got none of its pages.
    let mut outcomes = Vec::new();
    for summary in memberships {
        let conv = summary.id;
        let last_seq = summary.last_seq;
        let client = cursors.get(&conv).copied();
        let read = match sequencer.as_deref() {
            Some(s) => s.sync_read(conv, client, last_seq),
            None => SyncRead::new(client, last_seq),
        };
        let (page, has_more, cursor) = match read {
            SyncRead::UpToDate => {
                outcomes.push((conv, Synced::UpToDate { last_seq }));
                continue;
            }
            SyncRead::After(c) => {
                let page = store.entries(conv, Range::After(c), limit).await?;
                (page.entries, page.has_more, Some(c))
            }
            SyncRead::Latest => {
                (store.entries(conv, Range::Latest, limit).await?.entries, false, None)
            }
        };
        let last = page.last().map(|e| e.seq);
        outcomes.push((conv, Synced::Page { cursor, last, has_more }));
        out.push(SyncConversation { conversation: summary, entries: page, has_more });
    }
    if let Some(s) = sequencer {
        s.sync_ran(outcomes);
    }
    Ok(out)
}
