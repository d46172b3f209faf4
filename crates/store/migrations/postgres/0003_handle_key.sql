-- Each handle's key (natter_store::handle_key: NFKC, lower case, UTS #39 confusable
-- skeleton), unique, so that look-alike handles ("аlice" in Cyrillic, "ａｌｉｃｅ") conflict
-- like equal ones. Accounts from before get theirs when the store opens.
ALTER TABLE users ADD COLUMN handle_key TEXT;
CREATE UNIQUE INDEX users_handle_key ON users (handle_key);
