-- An event that belongs to an iteration (its metrics, its checkpoint) or happens once per job
-- (the baseline) carries a key; a resumed job that runs an iteration again writes the key again
-- and the insert is skipped, so followers and webhooks see each such event once.
-- Keep in step with ../postgres/0004_event_keys.sql.
ALTER TABLE events ADD COLUMN dedupe_key TEXT;
CREATE UNIQUE INDEX events_dedupe ON events (job_id, dedupe_key);
