-- Invitations to groups. Adding someone who shares no conversation with the adder (or naming
-- them when creating a group) makes a row here instead of a member: nothing enters the log
-- until they accept (a `member_added` entry), and declining deletes the row. One per group
-- and invitee; the store caps how many one invitee may have pending (counted under a lock on
-- the invitee's `users` row, so that nodes inviting at once cannot pass the cap).
CREATE TABLE invitations (
    conversation_id BIGINT NOT NULL REFERENCES conversations(id),
    user_id         BIGINT NOT NULL REFERENCES users(id),
    inviter         BIGINT NOT NULL REFERENCES users(id),
    role            TEXT   NOT NULL CHECK (role IN ('member', 'admin')),
    invited_at      BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
-- An invitee's list (oldest first) and their pending count.
CREATE INDEX invitations_by_user ON invitations (user_id, invited_at);
