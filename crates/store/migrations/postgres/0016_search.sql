-- Message search (issue 15). One row per live message: its current text and attachment
-- names (for snippets and re-indexing on edit), what the filters need, and the tsvector of
-- its folded tokens (natter_store::search) under the configured text search configuration.
-- Kept in the transaction of the entry that writes, edits or deletes the message.
CREATE TABLE search_docs (
    conversation_id BIGINT  NOT NULL,
    seq             BIGINT  NOT NULL,
    sender          BIGINT  NOT NULL,
    ts              BIGINT  NOT NULL,
    has_attachment  BOOLEAN NOT NULL,
    body            TEXT    NOT NULL,
    names           TEXT    NOT NULL,
    tsv             TSVECTOR NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX search_docs_tsv ON search_docs USING GIN (tsv);
