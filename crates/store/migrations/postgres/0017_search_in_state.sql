-- Message search reads `message_state`, which already holds each message's current text,
-- instead of a copy of it (0016's `search_docs` cost the append path a row and a primary
-- key per message, and the database a third copy of every body). `tsv` is the tsvector of
-- a live message's folded tokens (natter_store::search) under the configured text search
-- configuration, NULL once it is deleted; it is filled when the messages are backfilled
-- after this migration.
DROP TABLE search_docs;
ALTER TABLE message_state
    ADD COLUMN ts             BIGINT   NOT NULL DEFAULT 0,
    ADD COLUMN has_attachment BOOLEAN  NOT NULL DEFAULT false,
    ADD COLUMN names          TEXT     NOT NULL DEFAULT '',
    ADD COLUMN tsv            TSVECTOR;
UPDATE message_state s SET ts = e.ts
FROM entries e WHERE e.conversation_id = s.conversation_id AND e.seq = s.seq;
CREATE INDEX message_state_tsv ON message_state USING GIN (tsv);
