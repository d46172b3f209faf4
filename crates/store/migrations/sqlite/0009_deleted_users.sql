-- Deleted accounts: the row stays (its messages keep their sender, shown as a deleted user),
-- with no password, profile, devices or invitations; its handle is freed a grace period
-- after `deleted_at` (renamed to `~deleted-<id>`, which no handle can be).
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
