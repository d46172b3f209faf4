-- Message search (issue 15). One row per live message: its current text and attachment
-- names (for snippets and re-indexing on edit) and what the filters need; `search_index`
-- holds the folded tokens (natter_store::search) of each, by the row's id. Kept in the
-- transaction of the entry that writes, edits or deletes the message.
CREATE TABLE search_docs (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    sender          INTEGER NOT NULL,
    ts              INTEGER NOT NULL,
    has_attachment  INTEGER NOT NULL,
    body            TEXT    NOT NULL,
    names           TEXT    NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE VIRTUAL TABLE search_index USING fts5(
    tokens, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 0'
);
