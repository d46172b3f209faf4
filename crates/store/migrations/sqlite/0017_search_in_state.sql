-- Message search reads `message_state`, which already holds each message's current text,
-- instead of a copy of it (0016's `search_docs` cost the append path a row and a unique
-- index per message, and the data directory a third copy of every body). The FTS5 row of a
-- message is keyed by `(conversation_id << 32) | seq` (natter_store::search::doc_id); its
-- tokens are re-made from the text when the messages are backfilled after this migration.
DROP TABLE search_index;
DROP TABLE search_docs;
ALTER TABLE message_state ADD COLUMN ts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE message_state ADD COLUMN has_attachment INTEGER NOT NULL DEFAULT 0;
ALTER TABLE message_state ADD COLUMN names TEXT NOT NULL DEFAULT '';
UPDATE message_state SET ts = (
    SELECT e.ts FROM entries e
    WHERE e.conversation_id = message_state.conversation_id AND e.seq = message_state.seq
);
CREATE VIRTUAL TABLE search_index USING fts5(
    tokens, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 0'
);
