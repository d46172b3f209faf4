//! Message search on PostgreSQL (issue 15): `message_state`'s `tsvector` (GIN-indexed) under
//! the connection's text search configuration, joined with the caller's memberships for
//! what they may read.

use natter_proto::{ConversationId, UserId};

use super::write::query;
use super::{Conn, PgResult};
use crate::search::Cursor;
use crate::{SearchHit, SearchOrder, SearchPage, SearchRequest};

pub(crate) async fn search(c: &Conn, user: UserId, r: &SearchRequest) -> PgResult<SearchPage> {
    let cursor = Cursor::parse(r.cursor.as_deref(), r.order)?;
    let ((k_ts, k_conv, k_seq), offset) = Cursor::bounds(cursor);
    let order = match r.order {
        SearchOrder::Newest => "s.ts DESC, s.conversation_id DESC, s.seq DESC",
        SearchOrder::Relevance => {
            "ts_rank(s.tsv, q) DESC, s.ts DESC, s.conversation_id DESC, s.seq DESC"
        }
    };
    // Spelled out rather than `($3 IS NULL OR …)`, which a generic plan cannot use: one
    // conversation's messages come by its primary key instead of every match of the query.
    let in_conversation = match r.conversation {
        Some(_) => "s.conversation_id = $3",
        None => "$3::BIGINT IS NULL",
    };
    let sql = format!(
        "SELECT s.conversation_id, s.seq, s.sender, s.ts, s.body, s.names
         FROM message_state s
         JOIN members m ON m.conversation_id = s.conversation_id AND m.user_id = $1,
              to_tsquery($2) q
         WHERE s.tsv @@ q AND s.seq >= m.joined_seq
           AND {in_conversation}
           AND ($4::BIGINT IS NULL OR s.sender = $4)
           AND (NOT $5 OR s.has_attachment)
           AND ($6::BIGINT IS NULL OR s.ts >= $6)
           AND ($7::BIGINT IS NULL OR s.ts < $7)
           AND ($8::BIGINT IS NULL OR (s.ts, s.conversation_id, s.seq) < ($8, $9, $10))
         ORDER BY {order} LIMIT $11 OFFSET $12"
    );
    let rows = query(
        c,
        &sql,
        &[
            &user.0,
            &r.query.tsquery(),
            &r.conversation.map(|c| c.0),
            &r.sender.map(|s| s.0),
            &r.has_attachment,
            &r.after,
            &r.before,
            &k_ts,
            &k_conv,
            &k_seq,
            &i64::from(r.limit),
            &offset,
        ],
    )
    .await?;
    let hits: Vec<SearchHit> = rows
        .iter()
        .map(|row| {
            let body: String = row.get(4);
            let names: String = row.get(5);
            SearchHit {
                conversation: ConversationId(row.get(0)),
                seq: row.get::<_, i64>(1) as u64,
                sender: UserId(row.get(2)),
                ts: row.get(3),
                text: crate::search::document(body, &names),
            }
        })
        .collect();
    let next = Cursor::next(r.order, cursor, hits.len(), r.limit, hits.last());
    Ok(SearchPage { hits, next })
}
