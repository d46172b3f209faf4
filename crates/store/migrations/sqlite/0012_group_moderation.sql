-- Group moderation (issue 13, part 6): slow mode and locking per group, mutes per member
-- (with the time of the member's last message, stamped only while slow mode is on), and
-- bans (a banned user cannot be added or invited again until unbanned).
ALTER TABLE conversations ADD COLUMN slow_mode_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN muted_until INTEGER;
ALTER TABLE members ADD COLUMN last_post_at INTEGER;
CREATE TABLE group_bans (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    user_id         INTEGER NOT NULL REFERENCES users(id),
    banned_by       INTEGER NOT NULL,
    banned_at       INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
