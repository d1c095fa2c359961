//! Persistence of agentcore: agents, jobs, per-iteration metrics, trajectories (with their
//! token-exact traces), checkpoints and events, in a SQLite file (the default; WAL journal) or
//! a PostgreSQL database (by URL, for a service whose workers run on several machines).
//!
//! Both go through sqlx's `Any` driver with the same SQL (`$N` placeholders, which SQLite
//! accepts too; integers as `BIGINT`, flags as 0/1, JSON as text); the two statements that
//! differ are chosen by [`Backend`]. The schemas are migrations in `migrations/sqlite` and
//! `migrations/postgres`, kept in step by a test. The store's tests run against both databases
//! (PostgreSQL from `AGENTCORE_TEST_POSTGRES_URL`, see `scripts/setup_postgres.sh`).
//!
//! [`Store`] is async (the server uses it as is); [`BlockingStore`] wraps it with its own
//! runtime for the synchronous training loop and the CLI. Queries are built at runtime (no
//! compile-time checked macros tied to one database).
#![deny(missing_docs)]

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{ConnectOptions, Connection, Executor, Row};

/// The WHERE clause of [`TrajectoryFilter`]: binds job id (`$1`), `success_only` as 0/1 (`$2`),
/// minimum reward (`$3`).
macro_rules! trajectory_filter {
    () => {
        "job_id = $1 AND ($2 = 0 OR success = 1) AND reward >= $3"
    };
}
pub(crate) use trajectory_filter;

/// PostgreSQL advisory lock keys of [`Store::begin_serialized`].
#[derive(Debug, Clone, Copy)]
#[repr(i64)]
pub(crate) enum Lock {
    /// Orders event inserts ("agentcore events").
    Events = 7_302_951_644,
    /// Orders the writes of deployments and A/B tests (the version and the one active row of an
    /// environment are read, then written).
    Deployments = 7_302_951_645,
}

mod deploy;
mod outbox;
mod queue;
pub use agentcore_api::{EventKind, JobStatus};
pub use deploy::{
    AbTestRow, ArmAggregate, DeploymentRow, InvocationRow, NewDeployment, ab_status,
    deployment_status,
};
pub use outbox::{AttemptOutcome, ClaimedMessage, OutboxMessage};
pub use queue::{CancelOutcome, JobFilter, Lease, MAX_JOB_ATTEMPTS, WebhookDelivery, WebhookRow};

/// The database behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database {path}: {source}")]
    Database {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("migrating database {path}: {source}")]
    Migrate {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A write of a worker that no longer holds the job's lease (another worker took the job
    /// over while this one was stopped or cut off): refused, so a stale worker never records
    /// anything.
    #[error("job {job_id}: worker {worker} no longer holds the lease; its write was refused")]
    LeaseLost {
        /// The job.
        job_id: String,
        /// The stale worker.
        worker: String,
    },
    /// A stored JSON column does not parse.
    #[error("stored {what} is not valid JSON: {message}")]
    Json {
        /// Which column.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// The runtime of the blocking wrapper could not start.
    #[error("starting the store's runtime: {0}")]
    Runtime(std::io::Error),
    /// A database URL this store cannot use.
    #[error("database URL {url}: {message}")]
    Url {
        /// The URL (password removed).
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// Result of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A closed-set name stored as text (a status, an event kind).
fn name<T: std::str::FromStr<Err = agentcore_api::UnknownName>>(
    what: &'static str,
    text: &str,
) -> Result<T> {
    text.parse()
        .map_err(|e: agentcore_api::UnknownName| StoreError::Json { what, message: e.to_string() })
}

fn parse(what: &'static str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Json { what, message: e.to_string() })
}

/// A job row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    /// The job id.
    pub id: String,
    /// The agent trained.
    pub agent_id: String,
    /// Where it stands.
    pub status: JobStatus,
    /// The job's settings (JSON).
    pub settings: Value,
    /// Iterations configured.
    pub total_iterations: u32,
    /// Iterations done.
    pub iterations_completed: u32,
    /// The budget (decimal string).
    pub budget_usd: String,
    /// Spent (decimal string).
    pub cost_usd: String,
    /// Best checkpoint.
    pub best_checkpoint_id: Option<String>,
    /// Why it stopped.
    pub stop_reason: Option<String>,
    /// The summary (JSON) when finished.
    pub summary: Option<Value>,
    /// The error when failed.
    pub error: Option<String>,
    /// Its run directory.
    pub run_dir: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// The organisation that owns the job (`""` for local jobs).
    #[serde(default)]
    pub org: String,
    /// Who started it (the token's subject; `""` for local jobs).
    #[serde(default)]
    pub owner: String,
    /// The caller's free-form metadata, echoed back.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// The worker holding the job's lease.
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// Times a worker claimed the job (more than 1 after a worker died).
    #[serde(default)]
    pub attempts: u32,
    /// A cancel was asked for while the job ran.
    #[serde(default)]
    pub cancel_requested: bool,
    /// RFC 3339: when a worker first took the job.
    #[serde(default)]
    pub started_at: Option<String>,
}

/// A new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The job id.
    pub id: String,
    /// The agent trained.
    pub agent_id: String,
    /// The job's settings.
    pub settings: Value,
    /// Iterations configured.
    pub total_iterations: u32,
    /// The budget (decimal string).
    pub budget_usd: String,
    /// Its run directory.
    pub run_dir: String,
}

/// One stored trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryRow {
    /// Row id (the export's `trajectory_id`); ignored on insert.
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// Iteration.
    pub iteration: u32,
    /// Query in the batch.
    pub query_index: u32,
    /// Sample in the group.
    pub sample_index: u32,
    /// The query.
    pub query: String,
    /// The expected outcome.
    pub expected_outcome: Value,
    /// Verified.
    pub success: bool,
    /// Reward.
    pub reward: f64,
    /// Advantage.
    pub advantage: f64,
    /// The whole trajectory (steps, tokens, usage) as JSON.
    pub trajectory: Value,
    /// RFC 3339.
    pub created_at: String,
}

/// Which trajectories to read.
#[derive(Debug, Clone, Default)]
pub struct TrajectoryFilter {
    /// Only verified ones.
    pub success_only: bool,
    /// Only rewards at least this.
    pub min_reward: Option<f64>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: u32,
}

/// A checkpoint row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    /// Its id.
    pub id: String,
    /// The job.
    pub job_id: String,
    /// Iteration.
    pub iteration: u32,
    /// Its directory.
    pub path: String,
    /// Validation success at that point.
    pub eval_success_rate: Option<f64>,
    /// Removed by retention.
    pub deleted: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// An event row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Order.
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// What happened.
    pub kind: EventKind,
    /// The payload.
    pub payload: Value,
    /// RFC 3339.
    pub created_at: String,
}

/// How long a PostgreSQL session may sit idle inside a transaction before the server ends it
/// (`idle_in_transaction_session_timeout`). The store's transactions run their statements back
/// to back, so only a stopped or stalled client ever reaches it; its locks then go with it.
pub const PG_IDLE_IN_TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The async store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    path: String,
    backend: Backend,
    /// Set on a worker's handle of a leased job ([`Store::fenced`]): its writes about the job
    /// happen only while it holds the lease.
    fence: Option<Arc<Fence>>,
}

/// The lease a fenced store's writes depend on.
#[derive(Debug)]
struct Fence {
    job_id: String,
    worker: String,
}

/// `url` without its password, for messages and logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` and applies pending migrations.
    ///
    /// # Errors
    /// The file cannot be opened or migrated.
    pub async fn open(path: &Path) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let name = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Database {
                path: name.clone(),
                source: sqlx::Error::Io(e),
            })?;
        }
        // The SQLite driver's own options give the URL (it percent-encodes the path).
        let sqlite =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
        let options = AnyConnectOptions::from_url(&sqlite.to_url_lossy())
            .map_err(|e| StoreError::Database { path: name.clone(), source: e })?;
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Readers never wait for the writer; writers wait their turn (10 s) rather
                    // than fail; references are checked.
                    conn.execute(
                        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                         PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database { path: name.clone(), source: e })?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate { path: name.clone(), source: e })?;
        Ok(Self { pool, path: name, backend: Backend::Sqlite, fence: None })
    }

    /// Opens the store a URL names: `postgres://` / `postgresql://` (the database must exist;
    /// pending migrations are applied), `sqlite://PATH` / `sqlite:PATH`, or a plain SQLite file
    /// path.
    ///
    /// # Errors
    /// The server cannot be reached, the file cannot be opened, migrations fail.
    pub async fn connect(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() || path.starts_with(':') || url.contains("://") && path == url {
                return Err(StoreError::Url {
                    url: url.to_owned(),
                    message: "expected postgres://..., sqlite://PATH or a file path".into(),
                });
            }
            return Self::open(Path::new(path)).await;
        }
        sqlx::any::install_default_drivers();
        let name = redact_url(url);
        let options = AnyConnectOptions::from_str(url)
            .map_err(|e| StoreError::Database { path: name.clone(), source: e })?;
        // One connection first: an unreachable server or a refused login fails at once with
        // the server's reason, rather than after the pool's retries.
        let probe = sqlx::AnyConnection::connect_with(&options)
            .await
            .map_err(|e| StoreError::Database { path: name.clone(), source: e })?;
        let _ = probe.close().await;
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // A process stopped mid-transaction (SIGSTOP, a stall) must not hold its
                    // row and advisory locks for ever: the server ends such a session, and the
                    // stopped process's writes fail when it continues.
                    let set = format!(
                        "SET idle_in_transaction_session_timeout = {}",
                        PG_IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
                    );
                    sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(set)).await.map(drop)
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database { path: name.clone(), source: e })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate { path: name.clone(), source: e })?;
        Ok(Self { pool, path: name, backend: Backend::Postgres, fence: None })
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The file path or the URL (without password) of the database.
    #[must_use]
    pub fn location(&self) -> &str {
        &self.path
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database { path: self.path.clone(), source }
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at `BEGIN
    /// IMMEDIATE`: a deferred transaction that reads and then writes fails at once with
    /// `SQLITE_BUSY` (the busy timeout does not apply) when another connection committed after
    /// its first read, which the server's concurrent requests and the worker's writes make
    /// routine. PostgreSQL takes row locks as it goes, so a plain `BEGIN` serves.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
        .map_err(self.db())
    }

    /// Begins a transaction that writes, serialized with the others that take `lock`: on
    /// PostgreSQL by a transaction-scoped advisory lock, on SQLite by the write lock that every
    /// writer takes.
    pub(crate) async fn begin_serialized(
        &self,
        lock: Lock,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.begin_write().await?;
        self.take_lock(&mut tx, lock).await?;
        Ok(tx)
    }

    /// Takes `lock` for the rest of `tx` (PostgreSQL; SQLite's write lock already serializes).
    async fn take_lock(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        lock: Lock,
    ) -> Result<()> {
        if self.backend == Backend::Postgres {
            // (Counted: the Any driver cannot decode the function's `void`.)
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(lock as i64)
                .execute(&mut **tx)
                .await
                .map_err(self.db())?;
        }
        Ok(())
    }

    /// This store as the worker `worker` holding the lease of `job_id`: every write about a
    /// job (trajectories, iterations, checkpoints, events, forgetting) first checks, in its own
    /// transaction, that the lease is still `worker`'s, and is refused with
    /// [`StoreError::LeaseLost`] otherwise. On PostgreSQL the check locks the job's row until
    /// the write commits, so a takeover cannot slip in between; SQLite's write lock does the
    /// same.
    #[must_use]
    pub fn fenced(&self, job_id: &str, worker: &str) -> Self {
        Self {
            fence: Some(Arc::new(Fence { job_id: job_id.to_owned(), worker: worker.to_owned() })),
            ..self.clone()
        }
    }

    /// The fence check of a write transaction (nothing for an unfenced store).
    async fn check_fence(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
        let Some(f) = &self.fence else { return Ok(()) };
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT id FROM jobs WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
                 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT id FROM jobs WHERE id = $1 AND lease_owner = $2 AND status = 'running'"
            }
        };
        let held = sqlx::query(sql)
            .bind(&f.job_id)
            .bind(&f.worker)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.db())?
            .is_some();
        if held {
            Ok(())
        } else {
            tracing::warn!(job_id = %f.job_id, worker = %f.worker,
                "a write of a worker that lost the job's lease was refused");
            Err(StoreError::LeaseLost { job_id: f.job_id.clone(), worker: f.worker.clone() })
        }
    }

    /// Registers (or replaces) an agent definition.
    ///
    /// # Errors
    /// Database errors.
    pub async fn register_agent(&self, id: &str, definition: &Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, definition, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET definition = excluded.definition",
        )
        .bind(id)
        .bind(definition.to_string())
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// An agent's definition.
    ///
    /// # Errors
    /// Database errors.
    pub async fn agent(&self, id: &str) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT definition FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.map(|r| parse("agent definition", &r.get::<String, _>(0))).transpose()
    }

    /// Records a new job as `running`, or marks an existing one (a resumed job) `running` again.
    ///
    /// # Errors
    /// Database errors.
    pub async fn start_job(&self, job: &NewJob) -> Result<()> {
        let t = now();
        sqlx::query(
            "INSERT INTO jobs (id, agent_id, status, settings, total_iterations, \
             iterations_completed, budget_usd, cost_usd, run_dir, created_at, updated_at) \
             VALUES ($1, $2, 'running', $3, $4, 0, $5, '0', $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET status = 'running', error = NULL, \
             finished_at = NULL, updated_at = excluded.updated_at",
        )
        .bind(&job.id)
        .bind(&job.agent_id)
        .bind(job.settings.to_string())
        .bind(i64::from(job.total_iterations))
        .bind(&job.budget_usd)
        .bind(&job.run_dir)
        .bind(&t)
        .bind(&t)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Records who runs a job outside the queue (a CLI process: `cli:<host>:<pid>`), so that a
    /// reader can tell a job whose process died from one still running. No lease is set: such a
    /// job is never claimed by a worker.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_job_owner(&self, job_id: &str, owner: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET lease_owner = $1 WHERE id = $2")
            .bind(owner)
            .bind(job_id)
            .execute(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(())
    }

    /// Forgets what a job recorded after `iteration` (its resume point): those iterations are
    /// run again.
    ///
    /// # Errors
    /// Database errors.
    pub async fn forget_after(&self, job_id: &str, iteration: u32) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        for statement in [
            "DELETE FROM iterations WHERE job_id = $1 AND iteration > $2",
            "DELETE FROM trajectories WHERE job_id = $1 AND iteration > $2",
        ] {
            sqlx::query(statement)
                .bind(job_id)
                .bind(i64::from(iteration))
                .execute(&mut *tx)
                .await
                .map_err(self.db())?;
        }
        sqlx::query("UPDATE jobs SET iterations_completed = $1 WHERE id = $2")
            .bind(i64::from(iteration))
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Stores an iteration's metrics and the job's progress, in one transaction.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_iteration(
        &self,
        job_id: &str,
        iteration: u32,
        metrics: &Value,
        cost_usd: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query(
            "INSERT INTO iterations (job_id, iteration, metrics, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id, iteration) DO UPDATE SET metrics = excluded.metrics",
        )
        .bind(job_id)
        .bind(i64::from(iteration))
        .bind(metrics.to_string())
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        sqlx::query(
            "UPDATE jobs SET iterations_completed = $1, cost_usd = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(i64::from(iteration))
        .bind(cost_usd)
        .bind(now())
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Stores the trajectories of an iteration (replacing those of an earlier attempt).
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_trajectories(&self, rows: &[TrajectoryRow]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        let t = now();
        for r in rows {
            sqlx::query(
                "INSERT INTO trajectories (job_id, iteration, query_index, sample_index, query, \
                 expected_outcome, success, reward, advantage, trajectory, created_at) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (job_id, iteration, \
                 query_index, sample_index) DO UPDATE SET query = excluded.query, \
                 expected_outcome = excluded.expected_outcome, success = excluded.success, \
                 reward = excluded.reward, advantage = excluded.advantage, \
                 trajectory = excluded.trajectory, created_at = excluded.created_at",
            )
            .bind(&r.job_id)
            .bind(i64::from(r.iteration))
            .bind(i64::from(r.query_index))
            .bind(i64::from(r.sample_index))
            .bind(&r.query)
            .bind(r.expected_outcome.to_string())
            .bind(i64::from(r.success))
            .bind(r.reward)
            .bind(r.advantage)
            .bind(r.trajectory.to_string())
            .bind(&t)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Records a checkpoint.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query(
            "INSERT INTO checkpoints (id, job_id, iteration, path, eval_success_rate, deleted, \
             created_at) VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (id) DO UPDATE SET \
             eval_success_rate = excluded.eval_success_rate, deleted = 0",
        )
        .bind(&c.id)
        .bind(&c.job_id)
        .bind(i64::from(c.iteration))
        .bind(&c.path)
        .bind(c.eval_success_rate)
        .bind(now())
        // Not a cached statement: sqlx 0.9's `Any` declares a null `f64` as `float4`, and a
        // statement PostgreSQL prepared with it refuses the next non-null `f64`.
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        // Progress: the crash-loop count starts again (this claim is the one since).
        sqlx::query(
            "UPDATE jobs SET claims_since_progress = 1 WHERE id = $1 AND claims_since_progress > 1",
        )
        .bind(&c.job_id)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Marks a checkpoint removed by retention.
    ///
    /// # Errors
    /// Database errors.
    pub async fn mark_checkpoint_deleted(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        sqlx::query("UPDATE checkpoints SET deleted = 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Appends an event.
    ///
    /// Readers tail events by id ([`Store::events_after`]), so an event must never become
    /// visible after one with a higher id. SQLite writes one transaction at a time; on
    /// PostgreSQL two workers' inserts could commit out of id order, so there each insert holds
    /// a transaction-scoped advisory lock until it commits.
    ///
    /// # Errors
    /// Database errors.
    /// An iteration's event (`training.iteration`, `training.checkpoint.saved`, keyed by the
    /// payload's `iteration`) and the baseline are recorded once per job: a resumed job that runs
    /// an iteration again does not record it again.
    pub async fn record_event(&self, job_id: &str, kind: EventKind, payload: &Value) -> Result<()> {
        // The fence's row lock before the events lock: the order every writer takes them in.
        let mut tx = self.begin_write().await?;
        self.check_fence(&mut tx).await?;
        self.take_lock(&mut tx, Lock::Events).await?;
        sqlx::query(
            "INSERT INTO events (job_id, kind, payload, created_at, dedupe_key) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id, dedupe_key) DO NOTHING",
        )
        .bind(job_id)
        .bind(kind.as_str())
        .bind(payload.to_string())
        .bind(now())
        .bind(dedupe_key(kind, payload))
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// Marks a job finished with `status`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn finish_job(
        &self,
        job_id: &str,
        status: JobStatus,
        stop_reason: Option<&str>,
        summary: Option<&Value>,
        best_checkpoint_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let t = now();
        sqlx::query(
            "UPDATE jobs SET status = $1, stop_reason = $2, summary = $3, best_checkpoint_id = $4, \
             error = $5, finished_at = $6, updated_at = $7, lease_owner = NULL, \
             lease_expires_ms = NULL WHERE id = $8",
        )
        .bind(status.as_str())
        .bind(stop_reason)
        .bind(summary.map(ToString::to_string))
        .bind(best_checkpoint_id)
        .bind(error)
        .bind(&t)
        .bind(&t)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// A job.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.map(|r| job_row(&r)).transpose()
    }

    /// All jobs, newest first.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        rows.iter().map(job_row).collect()
    }

    /// A job's iteration metrics in order.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn iterations(&self, job_id: &str) -> Result<Vec<(u32, Value)>> {
        let rows = sqlx::query(
            "SELECT iteration, metrics FROM iterations WHERE job_id = $1 ORDER BY iteration",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                Ok((
                    u32::try_from(r.get::<i64, _>(0)).unwrap_or(0),
                    parse("metrics", &r.get::<String, _>(1))?,
                ))
            })
            .collect()
    }

    /// A job's trajectories in insertion order, filtered and paged.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn trajectories(
        &self,
        job_id: &str,
        filter: &TrajectoryFilter,
    ) -> Result<Vec<TrajectoryRow>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM trajectories WHERE ",
            trajectory_filter!(),
            " ORDER BY iteration, query_index, sample_index LIMIT $4 OFFSET $5"
        ))
        .bind(job_id)
        .bind(i64::from(filter.success_only))
        .bind(filter.min_reward.unwrap_or(f64::MIN))
        .bind(filter.limit.map_or(i64::MAX, i64::from))
        .bind(i64::from(filter.offset))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                Ok(TrajectoryRow {
                    id: r.get("id"),
                    job_id: r.get("job_id"),
                    iteration: u32::try_from(r.get::<i64, _>("iteration")).unwrap_or(0),
                    query_index: u32::try_from(r.get::<i64, _>("query_index")).unwrap_or(0),
                    sample_index: u32::try_from(r.get::<i64, _>("sample_index")).unwrap_or(0),
                    query: r.get("query"),
                    expected_outcome: parse("expected_outcome", r.get("expected_outcome"))?,
                    success: r.get::<i64, _>("success") != 0,
                    reward: r.get("reward"),
                    advantage: r.get("advantage"),
                    trajectory: parse("trajectory", r.get("trajectory"))?,
                    created_at: r.get("created_at"),
                })
            })
            .collect()
    }

    /// A job's checkpoints (including those removed by retention, marked `deleted`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRow>> {
        let rows = sqlx::query("SELECT * FROM checkpoints WHERE job_id = $1 ORDER BY iteration")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(rows.iter().map(checkpoint_row).collect())
    }

    /// A job's events in order.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn events(&self, job_id: &str) -> Result<Vec<EventRow>> {
        let rows = sqlx::query("SELECT * FROM events WHERE job_id = $1 ORDER BY id")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        rows.iter().map(event_row).collect()
    }

    /// Closes the pool (flushes the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn checkpoint_row(r: &AnyRow) -> CheckpointRow {
    CheckpointRow {
        id: r.get("id"),
        job_id: r.get("job_id"),
        iteration: u32::try_from(r.get::<i64, _>("iteration")).unwrap_or(0),
        path: r.get("path"),
        eval_success_rate: r.get("eval_success_rate"),
        deleted: r.get::<i64, _>("deleted") != 0,
        created_at: r.get("created_at"),
    }
}

pub(crate) fn event_row(r: &AnyRow) -> Result<EventRow> {
    Ok(EventRow {
        id: r.get("id"),
        job_id: r.get("job_id"),
        kind: name("events.kind", r.get("kind"))?,
        payload: parse("event payload", r.get("payload"))?,
        created_at: r.get("created_at"),
    })
}

pub(crate) fn job_row(r: &AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        status: name("jobs.status", r.get("status"))?,
        settings: parse("job settings", r.get("settings"))?,
        total_iterations: u32::try_from(r.get::<i64, _>("total_iterations")).unwrap_or(0),
        iterations_completed: u32::try_from(r.get::<i64, _>("iterations_completed")).unwrap_or(0),
        budget_usd: r.get("budget_usd"),
        cost_usd: r.get("cost_usd"),
        best_checkpoint_id: r.get("best_checkpoint_id"),
        stop_reason: r.get("stop_reason"),
        summary: r
            .get::<Option<String>, _>("summary")
            .map(|s| parse("job summary", &s))
            .transpose()?,
        error: r.get("error"),
        run_dir: r.get("run_dir"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        finished_at: r.get("finished_at"),
        org: r.get("org"),
        owner: r.get("owner"),
        metadata: r
            .get::<Option<String>, _>("metadata")
            .map(|s| parse("job metadata", &s))
            .transpose()?,
        lease_owner: r.get("lease_owner"),
        attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(0),
        cancel_requested: r.get::<i64, _>("cancel_requested") != 0,
        started_at: r.get("started_at"),
    })
}

/// [`Store`] for synchronous code: owns a single-threaded runtime and blocks on each call.
#[derive(Debug)]
pub struct BlockingStore {
    runtime: Runtime,
    store: Store,
}

#[derive(Debug)]
enum Runtime {
    /// Its own single-threaded runtime (the CLI).
    Own(tokio::runtime::Runtime),
    /// A runtime owned elsewhere, entered from a blocking thread (a server's worker).
    Shared(tokio::runtime::Handle),
}

impl BlockingStore {
    /// Opens the SQLite file at `path` (see [`Store::open`]).
    ///
    /// # Errors
    /// The runtime cannot start, the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let store = runtime.block_on(Store::open(path))?;
        Ok(Self { runtime: Runtime::Own(runtime), store })
    }

    /// Opens the store a URL names (see [`Store::connect`]).
    ///
    /// # Errors
    /// The runtime cannot start, the database cannot be opened or migrated.
    pub fn connect(url: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let store = runtime.block_on(Store::connect(url))?;
        Ok(Self { runtime: Runtime::Own(runtime), store })
    }

    /// Wraps an open store for synchronous code on a blocking thread of `handle`'s runtime
    /// (`tokio::task::spawn_blocking`); never call it from async code.
    pub fn with_handle(store: Store, handle: tokio::runtime::Handle) -> Self {
        Self { runtime: Runtime::Shared(handle), store }
    }

    /// The async store, for [`BlockingStore::block_on`].
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs a future to completion; temporaries of the argument live until the statement
    /// ends: `db.block_on(db.store().record_event("job", "kind", &json!({})))`.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        match &self.runtime {
            Runtime::Own(r) => r.block_on(future),
            Runtime::Shared(h) => h.block_on(future),
        }
    }

    /// Runs one store call to completion: `store.call(|s| s.job("id"))`.
    pub fn call<'a, F, T>(&'a self, f: impl FnOnce(&'a Store) -> F) -> T
    where
        F: Future<Output = T> + 'a,
    {
        self.block_on(f(&self.store))
    }
}

impl Drop for BlockingStore {
    fn drop(&mut self) {
        // A shared store belongs to its runtime's owner, which closes it.
        if let Runtime::Own(r) = &self.runtime {
            r.block_on(self.store.close());
        }
    }
}

/// The key that makes an event happen once per job (see [`Store::record_event`]).
fn dedupe_key(kind: EventKind, payload: &Value) -> Option<String> {
    match kind {
        EventKind::Iteration | EventKind::CheckpointSaved => payload
            .get("iteration")
            .and_then(Value::as_u64)
            .map(|i| format!("{}:{i}", kind.as_str())),
        EventKind::Baseline => Some(kind.as_str().to_owned()),
        // An A/B test's decision (and each raise of its split) once, whoever observed it.
        EventKind::AbTestDecision => payload
            .get("event_key")
            .and_then(Value::as_str)
            .map(|k| format!("{}:{k}", kind.as_str())),
        _ => None,
    }
}

/// Databases for tests of this crate and the crates above it: each test gets its own SQLite
/// file, and its own schema on the PostgreSQL server of `AGENTCORE_TEST_POSTGRES_URL`
/// (`scripts/setup_postgres.sh` starts one on loopback and prints the URL).
pub mod testing {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use sqlx::{Connection, Executor};

    use crate::{Result, StoreError, redact_url};

    /// The PostgreSQL server for tests: `AGENTCORE_TEST_POSTGRES_URL`. `None` when it is unset,
    /// and the PostgreSQL half of a test is skipped with a note on stderr, unless
    /// `AGENTCORE_REQUIRE_POSTGRES=1` (CI sets it), where a missing server fails the test.
    ///
    /// # Panics
    /// When PostgreSQL is required and the variable is unset.
    #[must_use]
    pub fn postgres_server() -> Option<String> {
        match std::env::var("AGENTCORE_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("AGENTCORE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "AGENTCORE_REQUIRE_POSTGRES=1 but AGENTCORE_TEST_POSTGRES_URL is unset: run \
                     `export AGENTCORE_TEST_POSTGRES_URL=$(scripts/setup_postgres.sh)`"
                );
                #[expect(clippy::print_stderr, reason = "a skipped half of a test says so")]
                {
                    eprintln!(
                        "AGENTCORE_TEST_POSTGRES_URL is unset: the PostgreSQL half of this test is \
                         skipped (scripts/setup_postgres.sh starts a server)"
                    );
                }
                None
            }
        }
    }

    /// Creates an empty schema on the server at `server_url` and returns a URL whose
    /// connections use it (`options[search_path]=...`): a fresh store for one test.
    ///
    /// # Errors
    /// The server cannot be reached or refuses.
    pub async fn fresh_postgres_schema(server_url: &str) -> Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        sqlx::any::install_default_drivers();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "agentcore_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let err = |source| StoreError::Database { path: redact_url(server_url), source };
        let mut conn = sqlx::AnyConnection::connect(server_url).await.map_err(err)?;
        // The name is made of digits, underscores and ASCII letters only.
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await.map_err(err)?;
        conn.close().await.map_err(err)?;
        let separator = if server_url.contains('?') { '&' } else { '?' };
        Ok(format!("{server_url}{separator}options[search_path]={schema}"))
    }

    /// The stores a test runs against: a SQLite file in `dir`, and a fresh PostgreSQL schema
    /// when a server is configured (see [`postgres_server`]).
    ///
    /// # Errors
    /// The PostgreSQL server cannot be reached.
    pub async fn store_urls(dir: &Path) -> Result<Vec<String>> {
        let mut urls = vec![dir.join("agentcore.db").display().to_string()];
        if let Some(server) = postgres_server() {
            urls.push(fresh_postgres_schema(&server).await?);
        }
        Ok(urls)
    }
}
