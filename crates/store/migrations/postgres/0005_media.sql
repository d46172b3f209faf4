-- Media attachments. `blobs`: the stored objects, content-addressed by SHA-256, one row per
-- object however many uploads share it; `orphaned_at` is set when nothing references the
-- object any more, and the object is deleted a grace period later (`collect_media`).
CREATE TABLE blobs (
    sha256      TEXT    PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    orphaned_at BIGINT  NULL
);

-- One row per upload: who owns it (the quota counts `size`), its object and thumbnail.
CREATE TABLE media (
    id           TEXT    PRIMARY KEY,
    owner        BIGINT  NOT NULL REFERENCES users(id),
    sha256       TEXT    NOT NULL,
    size         BIGINT  NOT NULL,
    content_type TEXT    NOT NULL,
    name         TEXT    NULL,
    width        BIGINT  NULL,
    height       BIGINT  NULL,
    placeholder  TEXT    NULL,
    thumb_sha256 TEXT    NULL,
    thumb_width  BIGINT  NULL,
    thumb_height BIGINT  NULL,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX media_by_owner ON media (owner);
CREATE INDEX media_by_sha256 ON media (sha256);
CREATE INDEX media_by_thumb ON media (thumb_sha256) WHERE thumb_sha256 IS NOT NULL;

-- Which message entries attach which media (access for members, and what keeps it alive).
CREATE TABLE media_refs (
    media_id        TEXT    NOT NULL,
    conversation_id BIGINT  NOT NULL,
    seq             BIGINT  NOT NULL,
    PRIMARY KEY (media_id, conversation_id, seq)
);
CREATE INDEX media_refs_by_entry ON media_refs (conversation_id, seq);
