//! Sync replies (`sync` frame, `POST /v1/sync`, SSE catch-up, long-poll): the client gives
//! its last seen `seq` per conversation; the reply holds, for each of its conversations with
//! something new, the entries after that cursor (a page, `has_more` when more follow).
//! Conversations the client did not list are new to it and come with their latest page. A
//! session's deliverer runs this against its sequencer, so that the reply and the live stream
//! are one ordered sequence; REST runs it without one.
//!
//! A reply is bounded: at most `max_reply_bytes` of JSON entries and summaries (but at least
//! one entry, so paging always moves on) and `max_sync_conversations` conversations with
//! entries. Where the budget runs out the conversation is cut short (`has_more`) and the
//! ones after it are left for the next sync (`more`); the store is read in chunks sized to
//! what the budget still holds, so a sync of large messages never holds much more than its
//! reply in memory.

use std::collections::BTreeMap;

use natter_proto::{ConversationId, ConversationSummary, Entry, Seq, SyncConversation, UserId};
use natter_store::Range;
use serde::Serialize;

use crate::error::{ApiResult, check_seq};
use crate::sequencer::{Sequencer, SyncRead, Synced};
use crate::state::AppState;

/// Entries the first store read of a conversation asks for; later reads are sized to the
/// budget left at the sizes seen.
const FIRST_CHUNK: u32 = 16;
/// A reply item's JSON around its summary and entries (`{"conversation":…,"entries":[…],
/// "has_more":false},`).
const ITEM_OVERHEAD: usize = 64;

/// A sync reply.
pub(crate) struct SyncReply {
    pub(crate) conversations: Vec<SyncConversation>,
    /// The budget ran out before everything: sync again with the updated cursors.
    pub(crate) more: bool,
}

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
) -> ApiResult<SyncReply> {
    for &seq in cursors.values() {
        check_seq("cursor", seq)?;
    }
    let limits = &state.cfg().limits;
    let limit = limits.page(limit);
    let store = state.store();
    let memberships = match listed {
        Some(list) => list,
        None => store.memberships(user).await?,
    };
    let mut budget = Budget { left: limits.max_reply_bytes, empty: true, full: false };
    let mut out = Vec::new();
    let mut more = false;
    // Recorded only if every read succeeds: a failed sync replies with an error, so the
    // client got none of its pages.
    let mut outcomes = Vec::new();
    for mut summary in memberships {
        state.media().sign_summary(&mut summary);
        let conv = summary.id;
        let last_seq = summary.last_seq;
        let client = cursors.get(&conv).copied();
        let read = match sequencer.as_deref() {
            Some(s) => s.sync_read(conv, client, last_seq),
            None => SyncRead::new(client, last_seq),
        };
        // The latest page is read forwards from where it starts (seqs have no gaps), so that
        // it can be read in chunks and cut short like any other.
        let (cursor, after) = match read {
            SyncRead::UpToDate => {
                outcomes.push((conv, Synced::UpToDate { last_seq }));
                continue;
            }
            SyncRead::After(c) => (Some(c), c),
            SyncRead::Latest => (None, last_seq.saturating_sub(Seq::from(limit))),
        };
        if out.len() >= limits.max_sync_conversations || budget.full {
            outcomes.push((conv, Synced::Unreached));
            more = true;
            continue;
        }
        let overhead = json_len(&summary) + ITEM_OVERHEAD;
        let reader = (state, user);
        let page = read_page(reader, conv, after, limit, &mut budget, overhead).await?;
        if page.cut && page.entries.is_empty() {
            // Not even its first entry fits: the next sync starts with it.
            outcomes.push((conv, Synced::Unreached));
            more = true;
            continue;
        }
        // A latest page has nothing older to page to: it has more only when it was cut.
        let has_more = page.cut || (cursor.is_some() && page.store_more);
        more |= has_more;
        let last = page.entries.last().map(|e| e.seq);
        outcomes.push((conv, Synced::Page { cursor, last, has_more }));
        out.push(SyncConversation { conversation: summary, entries: page.entries, has_more });
    }
    if let Some(s) = sequencer {
        s.sync_ran(outcomes);
    }
    Ok(SyncReply { conversations: out, more })
}

/// The bytes a reply may still take.
struct Budget {
    left: usize,
    /// Nothing in the reply yet: its first entry goes in whatever its size.
    empty: bool,
    /// An entry did not fit: the reply is complete (later conversations are not even read).
    full: bool,
}

impl Budget {
    fn take(&mut self, size: usize) -> bool {
        if size > self.left && !self.empty {
            self.full = true;
            return false;
        }
        self.left = self.left.saturating_sub(size);
        self.empty = false;
        true
    }
}

/// One conversation's part of a reply.
struct Page {
    entries: Vec<Entry>,
    /// The budget ran out before the page's limit, with entries left.
    cut: bool,
    /// The store has entries after the last one read.
    store_more: bool,
}

/// Up to `limit` entries after `after`, their attachments signed for `reader`, as many as
/// `budget` holds; `overhead`: what the conversation's item costs besides its entries.
async fn read_page(
    (state, reader): (&AppState, UserId),
    conv: ConversationId,
    mut after: Seq,
    limit: u32,
    budget: &mut Budget,
    mut overhead: usize,
) -> ApiResult<Page> {
    let mut entries = Vec::new();
    let mut spent = 0;
    let mut chunk = limit.min(FIRST_CHUNK);
    loop {
        let mut page = state.store().entries(conv, Range::After(after), chunk).await?;
        state.media().sign_entries(&mut page.entries, reader);
        for entry in page.entries {
            // One comma between entries.
            let size = json_len(&entry) + 1 + overhead;
            if !budget.take(size) {
                return Ok(Page { entries, cut: true, store_more: true });
            }
            overhead = 0;
            spent += size;
            after = entry.seq;
            entries.push(entry);
        }
        let left = limit - u32::try_from(entries.len()).expect("at most a page");
        if !page.has_more || left == 0 {
            return Ok(Page { entries, cut: false, store_more: page.has_more });
        }
        let average = (spent / entries.len().max(1)).max(1);
        let fits = u32::try_from(budget.left / average + 1).unwrap_or(u32::MAX);
        chunk = left.min(fits);
    }
}

/// The length of `value`'s JSON, counted without building it.
pub(crate) fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("wire types always serialize");
    count.0
}
