-- Media attachments. `blobs`: the stored objects, content-addressed by SHA-256, one row per
-- object however many uploads share it; `orphaned_at` is set when nothing references the
-- object any more, and the object is deleted a grace period later (`collect_media`).
CREATE TABLE blobs (
    sha256      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    orphaned_at INTEGER NULL
);

-- One row per upload: who owns it (the quota counts `size`), its object and thumbnail.
CREATE TABLE media (
    id           TEXT    PRIMARY KEY,
    owner        INTEGER NOT NULL REFERENCES users(id),
    sha256       TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT    NOT NULL,
    name         TEXT    NULL,
    width        INTEGER NULL,
    height       INTEGER NULL,
    placeholder  TEXT    NULL,
    thumb_sha256 TEXT    NULL,
    thumb_width  INTEGER NULL,
    thumb_height INTEGER NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX media_by_owner ON media (owner);
CREATE INDEX media_by_sha256 ON media (sha256);
CREATE INDEX media_by_thumb ON media (thumb_sha256) WHERE thumb_sha256 IS NOT NULL;

-- Which message entries attach which media (access for members, and what keeps it alive).
CREATE TABLE media_refs (
    media_id        TEXT    NOT NULL,
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    PRIMARY KEY (media_id, conversation_id, seq)
) WITHOUT ROWID;
CREATE INDEX media_refs_by_entry ON media_refs (conversation_id, seq);
