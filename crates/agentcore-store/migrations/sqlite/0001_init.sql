-- agentcore store, SQLite. Keep in step with ../postgres/0001_init.sql (a test compares them).
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    settings TEXT NOT NULL,
    total_iterations INTEGER NOT NULL,
    iterations_completed INTEGER NOT NULL,
    budget_usd TEXT NOT NULL,
    cost_usd TEXT NOT NULL,
    best_checkpoint_id TEXT,
    stop_reason TEXT,
    summary TEXT,
    error TEXT,
    run_dir TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);

CREATE TABLE iterations (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    iteration INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, iteration)
);

CREATE TABLE trajectories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    iteration INTEGER NOT NULL,
    query_index INTEGER NOT NULL,
    sample_index INTEGER NOT NULL,
    query TEXT NOT NULL,
    expected_outcome TEXT NOT NULL,
    success INTEGER NOT NULL,
    reward DOUBLE PRECISION NOT NULL,
    advantage DOUBLE PRECISION NOT NULL,
    trajectory TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (job_id, iteration, query_index, sample_index)
);
CREATE INDEX trajectories_by_job ON trajectories (job_id, id);

CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    iteration INTEGER NOT NULL,
    path TEXT NOT NULL,
    eval_success_rate DOUBLE PRECISION,
    deleted INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX checkpoints_by_job ON checkpoints (job_id, iteration);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_by_job ON events (job_id, id);
