-- The data export reads a user's own messages by sender, conversation and seq.
CREATE INDEX message_state_by_sender ON message_state (sender, conversation_id, seq);
