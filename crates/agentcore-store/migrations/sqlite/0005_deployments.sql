-- Deployments of checkpoints to an agent's environments, the evaluations they rest on, A/B
-- tests and invocations. Keep in step with ../postgres/0005_deployments.sql.
CREATE TABLE evaluations (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    checkpoint_id TEXT NOT NULL,
    report TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, checkpoint_id)
);

-- One row per deployment; at most one is active per (org, agent, environment). A rollback makes
-- the active row rolled_back and its predecessor active again.
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    version BIGINT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    checkpoint_id TEXT NOT NULL,
    previous_id TEXT,
    evaluation TEXT,
    forced BIGINT NOT NULL,
    status TEXT NOT NULL,
    deployed_by TEXT NOT NULL,
    note TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (org, agent_id, environment, version)
);
CREATE UNIQUE INDEX deployments_active ON deployments (org, agent_id, environment)
    WHERE status = 'active';

-- At most one running A/B test per (org, agent, environment).
CREATE TABLE ab_tests (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    baseline_job_id TEXT NOT NULL REFERENCES jobs (id),
    baseline_checkpoint TEXT NOT NULL,
    experiment_job_id TEXT NOT NULL REFERENCES jobs (id),
    experiment_checkpoint TEXT NOT NULL,
    traffic_split DOUBLE PRECISION NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    decision TEXT NOT NULL,
    p_value DOUBLE PRECISION NOT NULL,
    raised_at_outcomes BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX ab_tests_running ON ab_tests (org, agent_id, environment)
    WHERE status = 'running';

CREATE TABLE invocations (
    id TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    deployment_id TEXT,
    ab_test_id TEXT,
    arm TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    checkpoint_id TEXT NOT NULL,
    user_key_hash TEXT,
    query TEXT NOT NULL,
    answer TEXT,
    trajectory TEXT NOT NULL,
    success BIGINT,
    reward DOUBLE PRECISION,
    outcome_source TEXT,
    latency_ms BIGINT NOT NULL,
    cost_usd TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX invocations_by_test ON invocations (ab_test_id, arm);
CREATE INDEX invocations_by_agent ON invocations (org, agent_id, created_at);
