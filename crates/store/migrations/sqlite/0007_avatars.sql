-- A profile's avatar: the id of an image the user uploaded (`media`). A media row that is
-- someone's avatar is kept by the collection like an attached one.
ALTER TABLE users ADD COLUMN avatar TEXT;
