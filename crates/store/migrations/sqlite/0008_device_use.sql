-- When each device (login) was last used: set by the server at most once a minute per device.
ALTER TABLE devices ADD COLUMN last_used_at INTEGER;
