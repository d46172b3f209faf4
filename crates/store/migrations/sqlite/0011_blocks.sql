-- Blocks (issue 13, part 3): `blocker` blocks `blocked`. A block keeps the blocked user
-- from opening a direct conversation with the blocker, adding them to a group, writing in
-- their direct conversation, and seeing their presence or typing (either way).
CREATE TABLE blocks (
    blocker    INTEGER NOT NULL REFERENCES users(id),
    blocked    INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);
