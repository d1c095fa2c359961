-- The job queue of the service (leases and heartbeats), organisations, webhooks.
-- Keep in step with ../sqlite/0002_queue.sql (a test compares them).
ALTER TABLE jobs ADD COLUMN org TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN metadata TEXT;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_ms BIGINT;
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN started_at TEXT;
CREATE INDEX jobs_queue ON jobs (status, created_at);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    subscription_id TEXT NOT NULL REFERENCES webhooks (id),
    message_id TEXT NOT NULL,
    event TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_by_message ON webhook_deliveries (message_id, attempt);

CREATE TABLE reward_endpoints (
    org TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (org, agent_type)
);
