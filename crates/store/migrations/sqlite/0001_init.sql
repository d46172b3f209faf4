-- Natter schema, version 1 (SQLite). Applied in one transaction; PRAGMA user_version tracks it.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    handle        TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

-- One row per login: the token is stored only as its SHA-256; logout deletes the row.
CREATE TABLE devices (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    name       TEXT    NOT NULL,
    token_hash BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE conversations (
    id            INTEGER PRIMARY KEY,
    kind          TEXT    NOT NULL CHECK (kind IN ('direct', 'group')),
    title         TEXT,
    -- 'min:max' of the two user ids of a direct conversation: one per pair.
    direct_key    TEXT    UNIQUE,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    last_activity INTEGER NOT NULL,
    n_members     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE members (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    user_id         INTEGER NOT NULL REFERENCES users(id),
    role            TEXT    NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    joined_seq      INTEGER NOT NULL,
    delivered_seq   INTEGER NOT NULL DEFAULT 0,
    read_seq        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, conversation_id);

-- The log. body is the JSON of the entry's kind-specific fields (proto::EntryBody); kind and
-- target repeat two of them for queries (unread counts, redaction of a deleted message).
CREATE TABLE entries (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    seq             INTEGER NOT NULL,
    id              TEXT    NOT NULL,
    sender          INTEGER NOT NULL,
    client_msg_id   TEXT,
    ts              INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    target          INTEGER,
    body            TEXT    NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE INDEX entries_by_target ON entries (conversation_id, target) WHERE target IS NOT NULL;
-- G4: one entry per (conversation, sender, client_msg_id).
CREATE UNIQUE INDEX entries_idempotency ON entries (conversation_id, sender, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- Current state of each message (a projection of the log, kept in the same transaction).
CREATE TABLE message_state (
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    sender          INTEGER NOT NULL,
    body            TEXT    NOT NULL,
    edited_seq      INTEGER,
    deleted         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;

CREATE TABLE reactions (
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    emoji           TEXT    NOT NULL,
    user_id         INTEGER NOT NULL,
    at_seq          INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq, emoji, user_id)
) WITHOUT ROWID;
