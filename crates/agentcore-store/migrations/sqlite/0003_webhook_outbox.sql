-- Durable webhook delivery: messages wait in an outbox until delivered (or out of attempts), so
-- a server that stops, or crashes, mid-retry leaves them to the next one; a cursor records which
-- events were already turned into messages. Keep in step with ../postgres/0003_webhook_outbox.sql.
CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    subscription_id TEXT NOT NULL REFERENCES webhooks (id),
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_ms BIGINT,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_ms);

CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
-- Events from before this migration were handled (or not) by the old in-memory deliverer.
INSERT INTO cursors (name, position) SELECT 'webhooks', COALESCE(MAX(id), 0) FROM events;
