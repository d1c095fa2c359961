//! The service's side of the store: a job queue with leases and heartbeats, job listing with
//! filters, cancellation, webhook subscriptions and their delivery log, and event tails.
//!
//! A worker claims the oldest `queued` job, or a `running` one whose lease expired (its worker
//! died), in one `UPDATE ... WHERE id = (SELECT ...) RETURNING` statement: SQLite runs writes one
//! at a time, so two workers never both get the job; on PostgreSQL the same statement takes the
//! row with `FOR UPDATE SKIP LOCKED`. The holder renews the lease with heartbeats; a heartbeat
//! that finds the lease gone tells the worker to stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use crate::{EventRow, JobRow, JobStatus, NewJob, Result, Store, event_row, job_row, now, parse};

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this organisation's.
    pub org: Option<String>,
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only with this status.
    pub status: Option<JobStatus>,
    /// At most this many.
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
}

/// Claims of a job since it last made progress (recorded a checkpoint) whose worker then
/// stopped without finishing it (died, lost its lease), after which the job fails rather than
/// being claimed again: a crash loop. Preemptions of a job that moves on between them do not
/// add up.
pub const MAX_JOB_ATTEMPTS: u32 = 3;

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The caller still holds the lease (now renewed).
    pub held: bool,
    /// Someone asked to cancel the job.
    pub cancel_requested: bool,
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was queued: it is cancelled now.
    Cancelled,
    /// The job runs: its worker stops it after the current iteration, with a checkpoint.
    Requested,
    /// The job already ended with this status.
    Finished(JobStatus),
    /// No such job.
    NotFound,
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRow {
    /// `subscription_id`.
    pub id: String,
    /// The organisation whose jobs it hears about.
    pub org: String,
    /// Where deliveries go.
    pub url: String,
    /// Event names (`training.job.completed`, ...); empty means all.
    pub events: Vec<String>,
    /// The signing secret (`whsec_...`).
    pub secret: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The subscription.
    pub subscription_id: String,
    /// The message id (`webhook-id`), the same on every attempt.
    pub message_id: String,
    /// The event name.
    pub event: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl Store {
    /// Puts a new job in the queue (`queued`), owned by `org` / `owner`.
    ///
    /// # Errors
    /// Database errors (an id used twice).
    pub async fn enqueue_job(
        &self,
        job: &NewJob,
        org: &str,
        owner: &str,
        metadata: Option<&Value>,
    ) -> Result<()> {
        let t = now();
        sqlx::query(
            "INSERT INTO jobs (id, agent_id, status, settings, total_iterations, \
             iterations_completed, budget_usd, cost_usd, run_dir, created_at, updated_at, org, \
             owner, metadata) VALUES ($1, $2, 'queued', $3, $4, 0, $5, '0', $6, $7, $8, $9, $10, $11)",
        )
        .bind(&job.id)
        .bind(&job.agent_id)
        .bind(job.settings.to_string())
        .bind(i64::from(job.total_iterations))
        .bind(&job.budget_usd)
        .bind(&job.run_dir)
        .bind(&t)
        .bind(&t)
        .bind(org)
        .bind(owner)
        .bind(metadata.map(ToString::to_string))
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Claims the oldest queued job, or a running one whose lease expired, for `worker` with a
    /// lease of `lease`; `None` when there is nothing to do.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_job(&self, worker: &str, lease: Duration) -> Result<Option<JobRow>> {
        let t = now();
        let now = now_ms();
        // A running job whose lease expired after MAX_JOB_ATTEMPTS claims had its worker die that
        // many times (a crash loop, such as a job that exhausts the machine): it fails instead of
        // being claimed again. (A worker that stops cleanly hands its claim back: see
        // `release_lease`.)
        // (On PostgreSQL rows another transaction holds, such as a worker's fenced write, are
        // skipped rather than waited for: a stalled holder must not stall every claim.)
        let skip = match self.backend {
            crate::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            crate::Backend::Sqlite => "",
        };
        let capped = format!(
            "UPDATE jobs SET status = 'failed', stop_reason = 'failed', error = $1, \
             finished_at = $2, updated_at = $2, lease_owner = NULL, lease_expires_ms = NULL \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_ms IS \
             NOT NULL AND lease_expires_ms < $3 AND claims_since_progress >= $4{skip})"
        );
        // Built from constant fragments only; values are bound.
        sqlx::query(sqlx::AssertSqlSafe(capped))
        .bind(format!(
            "the job's worker stopped without finishing it {MAX_JOB_ATTEMPTS} times without a new \
             checkpoint in between (the attempt cap): it is not retried; see the worker logs for why (out of memory, a crash)"
        ))
        .bind(&t)
        .bind(now)
        .bind(i64::from(MAX_JOB_ATTEMPTS))
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        let claimable = "(status = 'queued' OR (status = 'running' AND lease_expires_ms IS NOT \
                         NULL AND lease_expires_ms < $4))";
        // PostgreSQL runs claims side by side: the candidate row is locked, and one that
        // another claim holds is skipped. (SQLite runs writes one at a time.)
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            crate::Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_ms = $2, \
             attempts = attempts + 1, claims_since_progress = claims_since_progress + 1, \
             started_at = COALESCE(started_at, $3), updated_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE {claimable} ORDER BY created_at, id LIMIT 1\
             {lock}) AND {claimable} RETURNING *"
        );
        // Built from constant fragments only; values are bound.
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker)
            .bind(now.saturating_add(millis(lease)))
            .bind(&t)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.map(|r| job_row(&r)).transpose()
    }

    /// Renews `worker`'s lease on a job; tells whether it still holds it and whether a cancel
    /// was asked for.
    ///
    /// # Errors
    /// Database errors.
    pub async fn heartbeat(&self, job_id: &str, worker: &str, lease: Duration) -> Result<Lease> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_ms = $1 WHERE id = $2 AND lease_owner = $3 AND \
             status = 'running' RETURNING cancel_requested",
        )
        .bind(now_ms().saturating_add(millis(lease)))
        .bind(job_id)
        .bind(worker)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(match row {
            Some(r) => Lease { held: true, cancel_requested: r.get::<i64, _>(0) != 0 },
            None => Lease { held: false, cancel_requested: false },
        })
    }

    /// Gives a running job's lease up at once (its worker shuts down): the next claim takes the
    /// job and continues it from its last checkpoint.
    ///
    /// # Errors
    /// Database errors.
    pub async fn release_lease(&self, job_id: &str, worker: &str) -> Result<()> {
        // A clean hand-over is not a failed attempt: the claim is given back.
        sqlx::query(
            "UPDATE jobs SET lease_expires_ms = 0, attempts = attempts - 1, \
             claims_since_progress = claims_since_progress - 1 WHERE id = $1 AND \
             lease_owner = $2 AND status = 'running'",
        )
        .bind(job_id)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Ends a job as `worker`: only while `worker` holds its lease, so a worker that lost the
    /// job (and another took it over) cannot overwrite the new run's status. Returns whether it
    /// did.
    ///
    /// # Errors
    /// Database errors.
    #[expect(
        clippy::too_many_arguments,
        reason = "one column each; a struct would only rename them"
    )]
    pub async fn finish_leased_job(
        &self,
        job_id: &str,
        worker: &str,
        status: JobStatus,
        stop_reason: Option<&str>,
        summary: Option<&Value>,
        best_checkpoint_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool> {
        let t = now();
        let done = sqlx::query(
            "UPDATE jobs SET status = $1, stop_reason = $2, summary = $3, best_checkpoint_id = $4, \
             error = $5, finished_at = $6, updated_at = $7, lease_owner = NULL, \
             lease_expires_ms = NULL WHERE id = $8 AND lease_owner = $9",
        )
        .bind(status.as_str())
        .bind(stop_reason)
        .bind(summary.map(ToString::to_string))
        .bind(best_checkpoint_id)
        .bind(error)
        .bind(&t)
        .bind(&t)
        .bind(job_id)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Cancels a queued job at once, or asks the worker of a running one to stop.
    ///
    /// # Errors
    /// Database errors.
    pub async fn request_cancel(
        &self,
        job_id: &str,
        reason: Option<&str>,
    ) -> Result<CancelOutcome> {
        let t = now();
        let queued = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', stop_reason = 'cancelled', error = $1, \
             finished_at = $2, updated_at = $3 WHERE id = $4 AND status = 'queued'",
        )
        .bind(reason)
        .bind(&t)
        .bind(&t)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        if queued.rows_affected() == 1 {
            return Ok(CancelOutcome::Cancelled);
        }
        let running = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND \
             status = 'running'",
        )
        .bind(&t)
        .bind(job_id)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        if running.rows_affected() == 1 {
            return Ok(CancelOutcome::Requested);
        }
        Ok(match self.job(job_id).await? {
            Some(j) => CancelOutcome::Finished(j.status),
            None => CancelOutcome::NotFound,
        })
    }

    /// Jobs matching `filter`, newest first, and how many match in all.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<(Vec<JobRow>, u64)> {
        let mut clauses = Vec::new();
        let mut binds: Vec<&str> = Vec::new();
        let status = filter.status.map(JobStatus::as_str);
        for (column, value) in [
            ("org", filter.org.as_deref()),
            ("agent_id", filter.agent_id.as_deref()),
            ("status", status),
        ] {
            if let Some(v) = value {
                binds.push(v);
                clauses.push(format!("{column} = ${}", binds.len()));
            }
        }
        let wheres = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let count_sql = format!("SELECT COUNT(*) FROM jobs {wheres}");
        // Column names from a fixed list; values are bound.
        let mut count = sqlx::query(sqlx::AssertSqlSafe(count_sql));
        for b in &binds {
            count = count.bind(*b);
        }
        let total: i64 = count.fetch_one(&self.pool).await.map_err(self.db())?.get(0);
        let sql = format!(
            "SELECT * FROM jobs {wheres} ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}",
            binds.len() + 1,
            binds.len() + 2
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            query = query.bind(*b);
        }
        let rows = query
            .bind(i64::from(filter.limit))
            .bind(i64::from(filter.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        let jobs = rows.iter().map(job_row).collect::<Result<Vec<_>>>()?;
        Ok((jobs, u64::try_from(total).unwrap_or(0)))
    }

    /// Counts of jobs by status.
    ///
    /// # Errors
    /// Database errors.
    pub async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>> {
        self.counts_by_status("jobs")
            .await?
            .into_iter()
            .map(|(s, n)| Ok((crate::name("jobs.status", &s)?, n)))
            .collect()
    }

    /// Rows of `table` (a constant name) by their `status` column, in status order.
    pub(crate) async fn counts_by_status(&self, table: &'static str) -> Result<Vec<(String, u64)>> {
        // The table name is a constant of this crate.
        let sql = format!("SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(self.db())?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), u64::try_from(r.get::<i64, _>(1)).unwrap_or(0)))
            .collect())
    }

    /// Events with an id above `after`, in order, at most `limit`; of one job or of all.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn events_after(
        &self,
        job_id: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let rows = match job_id {
            Some(job) => {
                sqlx::query(
                    "SELECT * FROM events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(job)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(self.db())?;
        rows.iter().map(event_row).collect()
    }

    /// The id of the newest event (0 when there is none).
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_event_id(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.get(0))
    }

    /// How many trajectories of a job match `filter` (its limit and offset ignored).
    ///
    /// # Errors
    /// Database errors.
    pub async fn count_trajectories(
        &self,
        job_id: &str,
        filter: &crate::TrajectoryFilter,
    ) -> Result<u64> {
        let row = sqlx::query(concat!(
            "SELECT COUNT(*) FROM trajectories WHERE ",
            crate::trajectory_filter!()
        ))
        .bind(job_id)
        .bind(i64::from(filter.success_only))
        .bind(filter.min_reward.unwrap_or(f64::MIN))
        .fetch_one(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(u64::try_from(row.get::<i64, _>(0)).unwrap_or(0))
    }

    /// All agents: `(id, definition)`, by id.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn agents(&self) -> Result<Vec<(String, Value)>> {
        let rows = sqlx::query("SELECT id, definition FROM agents ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        rows.iter()
            .map(|r| {
                Ok((r.get::<String, _>(0), parse("agent definition", &r.get::<String, _>(1))?))
            })
            .collect()
    }

    /// The latest iteration's metrics of a job, if any.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn last_iteration(&self, job_id: &str) -> Result<Option<Value>> {
        let row = sqlx::query(
            "SELECT metrics FROM iterations WHERE job_id = $1 ORDER BY iteration DESC LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        row.map(|r| parse("iteration metrics", &r.get::<String, _>(0))).transpose()
    }

    /// The latest validation success of a job (`eval_success_rate` of its iterations).
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn last_validation(&self, job_id: &str) -> Result<Option<f64>> {
        // One row, found by the index on (job_id, iteration) and read from the end.
        let value = match self.backend {
            crate::Backend::Sqlite => "json_extract(metrics, '$.eval_success_rate')",
            crate::Backend::Postgres => {
                "CAST(metrics::jsonb ->> 'eval_success_rate' AS DOUBLE PRECISION)"
            }
        };
        let sql = format!(
            "SELECT {value} FROM iterations WHERE job_id = $1 AND {value} IS NOT NULL ORDER BY \
             iteration DESC LIMIT 1"
        );
        // Built from constant fragments only; the job id is bound.
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map(|r| r.get::<f64, _>(0)))
    }

    /// Serves the rewards of `org`'s agents of `agent_type` from `url` (replacing an earlier
    /// endpoint).
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_reward_endpoint(
        &self,
        org: &str,
        agent_type: &str,
        name: &str,
        url: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO reward_endpoints (org, agent_type, name, url, created_at) VALUES ($1, $2, $3, \
             $4, $5) ON CONFLICT (org, agent_type) DO UPDATE SET name = excluded.name, \
             url = excluded.url, created_at = excluded.created_at",
        )
        .bind(org)
        .bind(agent_type)
        .bind(name)
        .bind(url)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// The reward endpoint of `org`'s agents of `agent_type`: `(name, url)`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn reward_endpoint(
        &self,
        org: &str,
        agent_type: &str,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT name, url FROM reward_endpoints WHERE org = $1 AND agent_type = $2",
        )
        .bind(org)
        .bind(agent_type)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Adds a webhook subscription.
    ///
    /// # Errors
    /// Database errors.
    pub async fn add_webhook(&self, hook: &WebhookRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhooks (id, org, url, events, secret, created_at) VALUES ($1, $2, $3, $4, \
             $5, $6)",
        )
        .bind(&hook.id)
        .bind(&hook.org)
        .bind(&hook.url)
        .bind(Value::from(hook.events.clone()).to_string())
        .bind(&hook.secret)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// The subscriptions of an organisation.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn webhooks(&self, org: &str) -> Result<Vec<WebhookRow>> {
        let rows = sqlx::query("SELECT * FROM webhooks WHERE org = $1 ORDER BY created_at, id")
            .bind(org)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        rows.iter().map(webhook_row).collect()
    }

    /// One subscription.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRow>> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.as_ref().map(webhook_row).transpose()
    }

    /// Logs one delivery attempt.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_delivery(&self, d: &WebhookDelivery) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (subscription_id, message_id, event, attempt, \
             status_code, error, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&d.subscription_id)
        .bind(&d.message_id)
        .bind(&d.event)
        .bind(i64::from(d.attempt))
        .bind(d.status_code.map(i64::from))
        .bind(&d.error)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// The delivery log of a subscription, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn deliveries(&self, subscription_id: &str) -> Result<Vec<WebhookDelivery>> {
        let rows =
            sqlx::query("SELECT * FROM webhook_deliveries WHERE subscription_id = $1 ORDER BY id")
                .bind(subscription_id)
                .fetch_all(&self.pool)
                .await
                .map_err(self.db())?;
        Ok(rows
            .iter()
            .map(|r| WebhookDelivery {
                subscription_id: r.get("subscription_id"),
                message_id: r.get("message_id"),
                event: r.get("event"),
                attempt: u32::try_from(r.get::<i64, _>("attempt")).unwrap_or(0),
                status_code: r
                    .get::<Option<i64>, _>("status_code")
                    .and_then(|c| u16::try_from(c).ok()),
                error: r.get("error"),
                created_at: r.get("created_at"),
            })
            .collect())
    }
}

fn webhook_row(r: &sqlx::any::AnyRow) -> Result<WebhookRow> {
    let events = parse("webhook events", r.get("events"))?;
    Ok(WebhookRow {
        id: r.get("id"),
        org: r.get("org"),
        url: r.get("url"),
        events: serde_json::from_value(events).unwrap_or_default(),
        secret: r.get("secret"),
        created_at: r.get("created_at"),
    })
}
