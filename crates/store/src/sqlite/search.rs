//! Message search on SQLite (issue 15): FTS5 over the folded tokens, whose row ids
//! (`search::doc_id`) lead to the messages' `message_state` rows for the text and the
//! filters, joined with the caller's memberships for what they may read.

use natter_proto::{ConversationId, UserId};
use rusqlite::{Connection, params};

use super::internal;
use crate::search::{Cursor, doc_id};
use crate::{Result, SearchHit, SearchOrder, SearchPage, SearchRequest};

pub(super) fn search(c: &Connection, user: UserId, r: &SearchRequest) -> Result<SearchPage> {
    let cursor = Cursor::parse(r.cursor.as_deref(), r.order)?;
    let ((k_ts, k_conv, k_seq), offset) = Cursor::bounds(cursor);
    let order = match r.order {
        SearchOrder::Newest => "s.ts DESC, s.conversation_id DESC, s.seq DESC",
        SearchOrder::Relevance => {
            "bm25(search_index), s.ts DESC, s.conversation_id DESC, s.seq DESC"
        }
    };
    let sql = format!(
        "SELECT s.conversation_id, s.seq, s.sender, s.ts, s.body, s.names
         FROM search_index
         JOIN message_state s
             ON s.conversation_id = search_index.rowid >> 32
            AND s.seq = search_index.rowid & 4294967295
         JOIN members m ON m.conversation_id = s.conversation_id AND m.user_id = ?1
         WHERE search_index MATCH ?2 AND s.seq >= m.joined_seq
           AND (?3 IS NULL OR s.conversation_id = ?3)
           AND (?4 IS NULL OR s.sender = ?4)
           AND (?5 = 0 OR s.has_attachment = 1)
           AND (?6 IS NULL OR s.ts >= ?6)
           AND (?7 IS NULL OR s.ts < ?7)
           AND (?8 IS NULL OR (s.ts, s.conversation_id, s.seq) < (?8, ?9, ?10))
           AND search_index.rowid BETWEEN ?13 AND ?14
         ORDER BY {order} LIMIT ?11 OFFSET ?12"
    );
    // One conversation's rows are one range of the index's row ids, which FTS5 seeks to
    // instead of reading every match of the query (a common word's, all but a few of them
    // elsewhere).
    let (first, last) = match r.conversation {
        None => (0, i64::MAX),
        Some(conv) => match (doc_id(conv, 0), doc_id(conv, u64::from(u32::MAX))) {
            (Some(first), Some(last)) => (first, last),
            _ => (1, 0),
        },
    };
    let hits: Vec<SearchHit> = c
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_map(
                params![
                    user.0,
                    r.query.fts5(),
                    r.conversation.map(|c| c.0),
                    r.sender.map(|s| s.0),
                    r.has_attachment,
                    r.after,
                    r.before,
                    k_ts,
                    k_conv,
                    k_seq,
                    i64::from(r.limit),
                    offset,
                    first,
                    last
                ],
                |row| {
                    let body: String = row.get(4)?;
                    let names: String = row.get(5)?;
                    Ok(SearchHit {
                        conversation: ConversationId(row.get(0)?),
                        seq: row.get::<_, i64>(1)? as u64,
                        sender: UserId(row.get(2)?),
                        ts: row.get(3)?,
                        text: crate::search::document(body, &names),
                    })
                },
            )?
            .collect()
        })
        .map_err(internal)?;
    let next = Cursor::next(r.order, cursor, hits.len(), r.limit, hits.last());
    Ok(SearchPage { hits, next })
}
