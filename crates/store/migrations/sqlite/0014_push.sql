-- Push notifications (issue 14). A registration belongs to a device: logging the device out
-- (or revoking it, a password change, a suspension, deleting the account) deletes it.
CREATE TABLE push_registrations (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    device_id  INTEGER NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    provider   TEXT    NOT NULL,
    token      TEXT    NOT NULL,
    p256dh     TEXT,
    auth       TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (provider, token)
);
CREATE INDEX push_registrations_by_user ON push_registrations (user_id);

-- Do not disturb (per user) and muted notifications (per member), until a time in ms.
ALTER TABLE users ADD COLUMN dnd_until INTEGER;
ALTER TABLE members ADD COLUMN push_muted_until INTEGER;

-- The durable dispatch queue: at most one pending `notify` job per user and conversation
-- (later messages coalesce into it until it is due) and one `clear` job. A node claims due
-- jobs with a lease (`claimed_until`); a job whose lease lapsed (its node died) is claimed
-- again. `pushed_upto` on `push_state`: the last seq a notification covered, for the clear.
CREATE TABLE push_jobs (
    id              INTEGER PRIMARY KEY,
    user_id         INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('notify', 'clear')),
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    sender          INTEGER NOT NULL,
    preview         TEXT    NOT NULL,
    due_at          INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL,
    UNIQUE (user_id, conversation_id, kind)
);
CREATE INDEX push_jobs_due ON push_jobs (due_at);
CREATE TABLE push_state (
    user_id         INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    pushed_upto     INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
