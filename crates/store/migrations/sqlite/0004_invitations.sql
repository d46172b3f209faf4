-- Invitations to groups. Adding someone who shares no conversation with the adder (or naming
-- them when creating a group) makes a row here instead of a member: nothing enters the log
-- until they accept (a `member_added` entry), and declining deletes the row. One per group
-- and invitee; the store caps how many one invitee may have pending.
CREATE TABLE invitations (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
    user_id         INTEGER NOT NULL REFERENCES users(id),
    inviter         INTEGER NOT NULL REFERENCES users(id),
    role            TEXT    NOT NULL CHECK (role IN ('member', 'admin')),
    invited_at      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
-- An invitee's list (oldest first) and their pending count.
CREATE INDEX invitations_by_user ON invitations (user_id, invited_at);
