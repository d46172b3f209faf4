-- The seq of each conversation's latest membership change (created, member_added,
-- member_removed): committed entries carry it, so a node routing an entry knows when its
-- member list is older than the entry.
ALTER TABLE conversations ADD COLUMN members_seq BIGINT NOT NULL DEFAULT 0;
UPDATE conversations SET members_seq = COALESCE(
    (SELECT max(seq) FROM entries e
     WHERE e.conversation_id = conversations.id
       AND e.kind IN ('created', 'member_added', 'member_removed')),
    0);
