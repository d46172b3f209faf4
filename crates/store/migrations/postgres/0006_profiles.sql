-- Profiles: a display name and a short status text, both optional. The display name has a
-- lower-case copy for prefix search among one's contacts.
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN display_key TEXT;
ALTER TABLE users ADD COLUMN status_text TEXT;
CREATE INDEX users_display_key ON users (display_key text_pattern_ops) WHERE display_key IS NOT NULL;
