-- Reports and server administration (issue 13, parts 4 and 5).
-- Administrators; suspensions (`suspended_until` in ms, 9223372036854775807 for a ban).
ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended_until INTEGER;
ALTER TABLE users ADD COLUMN suspension_reason TEXT;

-- The moderation queue. `snapshot` is the JSON of what was reported, taken when it was
-- (the message entry with its state, or the user's profile), so a later edit cannot hide it.
-- `reporter` NULL: flagged by the server's content rules or moderation webhook.
CREATE TABLE reports (
    id              INTEGER PRIMARY KEY,
    reporter        INTEGER REFERENCES users(id),
    subject         INTEGER NOT NULL REFERENCES users(id),
    conversation_id INTEGER,
    seq             INTEGER,
    reason          TEXT    NOT NULL,
    snapshot        TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'resolved', 'dismissed')),
    note            TEXT,
    resolved_by     INTEGER,
    resolved_at     INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX reports_by_status ON reports (status, id);

-- Every server administrator's action; `actor` NULL: the command line or the config file.
CREATE TABLE audit_log (
    id              INTEGER PRIMARY KEY,
    actor           INTEGER,
    action          TEXT    NOT NULL,
    target_user     INTEGER,
    conversation_id INTEGER,
    seq             INTEGER,
    report_id       INTEGER,
    details         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
