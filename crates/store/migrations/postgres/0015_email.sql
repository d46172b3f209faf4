-- Email digests (issue 14). An address is on file once verified (a signed link mailed to
-- it); `digests_off`: its one-click unsubscribe. `last_digest_at`: when the last digest went.
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
ALTER TABLE users ADD COLUMN digests_off BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN last_digest_at BIGINT;

-- Users owed a digest: one row each, due `digest_delay_ms` after the first message they
-- did not read (and no sooner than `digest_period_ms` after the last digest), claimed
-- under a lease like push jobs.
CREATE TABLE email_digests (
    user_id       BIGINT PRIMARY KEY,
    due_at        BIGINT NOT NULL,
    claimed_until BIGINT
);
CREATE INDEX email_digests_due ON email_digests (due_at);
