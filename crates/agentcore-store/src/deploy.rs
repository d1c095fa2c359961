//! Deployments, the evaluations they rest on, A/B tests and invocations.
//!
//! A deployment puts one checkpoint into one environment of an agent of one organisation; at
//! most one deployment is active per (organisation, agent, environment), which a partial unique
//! index enforces, so two concurrent deploys cannot both be active. Deploying supersedes the
//! active one; a rollback marks the active one `rolled_back` and makes its predecessor active
//! again (rolling back twice goes two steps back). Versions count deployments per environment.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{CheckpointRow, Lock, Result, Store, StoreError, now, parse};

/// A deployment's status.
pub mod deployment_status {
    /// The one serving the environment.
    pub const ACTIVE: &str = "active";
    /// Replaced by a later deployment.
    pub const SUPERSEDED: &str = "superseded";
    /// Undone by a rollback.
    pub const ROLLED_BACK: &str = "rolled_back";
}

/// An A/B test's status.
pub mod ab_status {
    /// Splitting traffic.
    pub const RUNNING: &str = "running";
    /// Stopped by a call (or replaced by a new test).
    pub const STOPPED: &str = "stopped";
    /// Stopped by its guardrail: the experiment was significantly worse.
    pub const ROLLED_BACK: &str = "rolled_back";
}

/// A stored deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRow {
    /// Its id.
    pub id: String,
    /// The organisation.
    pub org: String,
    /// The agent.
    pub agent_id: String,
    /// The environment.
    pub environment: String,
    /// 1, 2, ... per environment.
    pub version: i64,
    /// The job of the checkpoint.
    pub job_id: String,
    /// The checkpoint.
    pub checkpoint_id: String,
    /// The deployment that was active before this one.
    pub previous_id: Option<String>,
    /// The evaluation it rests on (the `training.evaluate` result), if any.
    pub evaluation: Option<Value>,
    /// Deployed past the gate with `force`.
    pub forced: bool,
    /// `active`, `superseded` or `rolled_back`.
    pub status: String,
    /// Who deployed it (the token's subject).
    pub deployed_by: String,
    /// Why (e.g. `promoted by A/B test ...`).
    pub note: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339 of the last status change.
    pub updated_at: String,
}

/// A deployment to make.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeployment {
    /// Its id.
    pub id: String,
    /// The organisation.
    pub org: String,
    /// The agent.
    pub agent_id: String,
    /// The environment.
    pub environment: String,
    /// The job of the checkpoint.
    pub job_id: String,
    /// The checkpoint.
    pub checkpoint_id: String,
    /// The evaluation it rests on.
    pub evaluation: Option<Value>,
    /// Past the gate with `force`.
    pub forced: bool,
    /// Who.
    pub deployed_by: String,
    /// Why.
    pub note: Option<String>,
}

/// A stored A/B test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbTestRow {
    /// Its id.
    pub id: String,
    /// The organisation.
    pub org: String,
    /// The agent.
    pub agent_id: String,
    /// The environment whose traffic it splits.
    pub environment: String,
    /// The baseline's job.
    pub baseline_job_id: String,
    /// The baseline checkpoint.
    pub baseline_checkpoint: String,
    /// The experiment's job.
    pub experiment_job_id: String,
    /// The experiment checkpoint.
    pub experiment_checkpoint: String,
    /// Share of users sent to the experiment.
    pub traffic_split: f64,
    /// Alpha, guardrail, raise rule (JSON).
    pub settings: Value,
    /// `running`, `stopped`, `rolled_back`.
    pub status: String,
    /// `continue`, `experiment_better`, `experiment_worse`.
    pub decision: String,
    /// The always-valid p-value so far.
    pub p_value: f64,
    /// Experiment outcomes when the split was last raised.
    pub raised_at_outcomes: i64,
    /// Who configured it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A stored invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRow {
    /// Its id (also the trajectory's).
    pub id: String,
    /// The organisation.
    pub org: String,
    /// The agent.
    pub agent_id: String,
    /// The environment.
    pub environment: String,
    /// The deployment that served it (none for the experiment arm of an A/B test).
    pub deployment_id: Option<String>,
    /// The A/B test it belongs to.
    pub ab_test_id: Option<String>,
    /// `baseline` or `experiment` (`baseline` outside A/B tests).
    pub arm: String,
    /// The job of the checkpoint.
    pub job_id: String,
    /// The checkpoint that answered.
    pub checkpoint_id: String,
    /// SHA-256 of the user key (never the key).
    pub user_key_hash: Option<String>,
    /// The query.
    pub query: String,
    /// The final answer.
    pub answer: Option<String>,
    /// The trajectory (JSON).
    pub trajectory: Value,
    /// The outcome, once known.
    pub success: Option<bool>,
    /// The reward, once known.
    pub reward: Option<f64>,
    /// `verifier` or `feedback`.
    pub outcome_source: Option<String>,
    /// Wall time.
    pub latency_ms: i64,
    /// Cost (decimal string).
    pub cost_usd: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One arm's aggregates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmAggregate {
    /// Invocations.
    pub invocations: u64,
    /// Invocations with an outcome.
    pub outcomes: u64,
    /// Successful outcomes.
    pub successes: u64,
    /// Summed latency.
    pub latency_ms_sum: i64,
    /// Every invocation's cost (decimal strings, summed exactly by the caller).
    pub costs: Vec<String>,
}

fn deployment_row(r: &AnyRow) -> Result<DeploymentRow> {
    let evaluation: Option<String> = r.get("evaluation");
    Ok(DeploymentRow {
        id: r.get("id"),
        org: r.get("org"),
        agent_id: r.get("agent_id"),
        environment: r.get("environment"),
        version: r.get("version"),
        job_id: r.get("job_id"),
        checkpoint_id: r.get("checkpoint_id"),
        previous_id: r.get("previous_id"),
        evaluation: evaluation.map(|e| parse("deployment evaluation", &e)).transpose()?,
        forced: r.get::<i64, _>("forced") != 0,
        status: r.get("status"),
        deployed_by: r.get("deployed_by"),
        note: r.get("note"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

fn ab_row(r: &AnyRow) -> Result<AbTestRow> {
    Ok(AbTestRow {
        id: r.get("id"),
        org: r.get("org"),
        agent_id: r.get("agent_id"),
        environment: r.get("environment"),
        baseline_job_id: r.get("baseline_job_id"),
        baseline_checkpoint: r.get("baseline_checkpoint"),
        experiment_job_id: r.get("experiment_job_id"),
        experiment_checkpoint: r.get("experiment_checkpoint"),
        traffic_split: r.get("traffic_split"),
        settings: parse("A/B test settings", r.get("settings"))?,
        status: r.get("status"),
        decision: r.get("decision"),
        p_value: r.get("p_value"),
        raised_at_outcomes: r.get("raised_at_outcomes"),
        created_by: r.get("created_by"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// The tables [`Store::agent_page`] pages through.
#[derive(Debug, Clone, Copy)]
enum AgentTable {
    /// Newest first.
    Deployments,
    /// Oldest first.
    Invocations,
}

fn invocation_row(r: &AnyRow) -> Result<InvocationRow> {
    let success: Option<i64> = r.get("success");
    Ok(InvocationRow {
        id: r.get("id"),
        org: r.get("org"),
        agent_id: r.get("agent_id"),
        environment: r.get("environment"),
        deployment_id: r.get("deployment_id"),
        ab_test_id: r.get("ab_test_id"),
        arm: r.get("arm"),
        job_id: r.get("job_id"),
        checkpoint_id: r.get("checkpoint_id"),
        user_key_hash: r.get("user_key_hash"),
        query: r.get("query"),
        answer: r.get("answer"),
        trajectory: parse("invocation trajectory", r.get("trajectory"))?,
        success: success.map(|s| s != 0),
        reward: r.get("reward"),
        outcome_source: r.get("outcome_source"),
        latency_ms: r.get("latency_ms"),
        cost_usd: r.get("cost_usd"),
        created_at: r.get("created_at"),
    })
}

impl Store {
    /// A checkpoint by its id (ids are unique across jobs).
    ///
    /// # Errors
    /// Database errors.
    pub async fn checkpoint(&self, id: &str) -> Result<Option<CheckpointRow>> {
        let row = sqlx::query("SELECT * FROM checkpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.as_ref().map(crate::checkpoint_row))
    }

    /// Keeps the held-out evaluation of a checkpoint (the latest one replaces an earlier one).
    ///
    /// # Errors
    /// Database errors.
    pub async fn save_evaluation(
        &self,
        job_id: &str,
        checkpoint_id: &str,
        report: &Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO evaluations (job_id, checkpoint_id, report, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (job_id, checkpoint_id) DO UPDATE SET \
             report = excluded.report, created_at = excluded.created_at",
        )
        .bind(job_id)
        .bind(checkpoint_id)
        .bind(report.to_string())
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// The stored held-out evaluation of a checkpoint.
    ///
    /// # Errors
    /// Database errors, a corrupt JSON column.
    pub async fn evaluation(&self, job_id: &str, checkpoint_id: &str) -> Result<Option<Value>> {
        let row =
            sqlx::query("SELECT report FROM evaluations WHERE job_id = $1 AND checkpoint_id = $2")
                .bind(job_id)
                .bind(checkpoint_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.db())?;
        row.map(|r| parse("evaluation", &r.get::<String, _>(0))).transpose()
    }

    /// Makes `d` the active deployment of its environment (the one active before is
    /// superseded and becomes its `previous_id`), in one transaction.
    ///
    /// # Errors
    /// Database errors (among them a concurrent deploy to the same environment).
    pub async fn deploy(&self, d: &NewDeployment) -> Result<DeploymentRow> {
        let mut tx = self.begin_serialized(Lock::Deployments).await?;
        let active = sqlx::query(
            "SELECT id FROM deployments WHERE org = $1 AND agent_id = $2 AND environment = $3 \
             AND status = 'active'",
        )
        .bind(&d.org)
        .bind(&d.agent_id)
        .bind(&d.environment)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db())?
        .map(|r| r.get::<String, _>(0));
        let version: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) FROM deployments WHERE org = $1 AND agent_id = $2 \
             AND environment = $3",
        )
        .bind(&d.org)
        .bind(&d.agent_id)
        .bind(&d.environment)
        .fetch_one(&mut *tx)
        .await
        .map_err(self.db())?
        .get(0);
        let t = now();
        if let Some(id) = &active {
            sqlx::query(
                "UPDATE deployments SET status = 'superseded', updated_at = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(&t)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        sqlx::query(
            "INSERT INTO deployments (id, org, agent_id, environment, version, job_id, \
             checkpoint_id, previous_id, evaluation, forced, status, deployed_by, note, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', \
             $11, $12, $13, $13)",
        )
        .bind(&d.id)
        .bind(&d.org)
        .bind(&d.agent_id)
        .bind(&d.environment)
        .bind(version + 1)
        .bind(&d.job_id)
        .bind(&d.checkpoint_id)
        .bind(&active)
        .bind(d.evaluation.as_ref().map(Value::to_string))
        .bind(i64::from(d.forced))
        .bind(&d.deployed_by)
        .bind(&d.note)
        .bind(&t)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        self.deployment(&d.id).await?.ok_or_else(|| StoreError::Json {
            what: "deployment",
            message: format!("deployment {} vanished after its insert", d.id),
        })
    }

    /// One deployment.
    ///
    /// # Errors
    /// Database errors.
    pub async fn deployment(&self, id: &str) -> Result<Option<DeploymentRow>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.as_ref().map(deployment_row).transpose()
    }

    /// The active deployment of an environment.
    ///
    /// # Errors
    /// Database errors.
    pub async fn active_deployment(
        &self,
        org: &str,
        agent_id: &str,
        environment: &str,
    ) -> Result<Option<DeploymentRow>> {
        let row = sqlx::query(
            "SELECT * FROM deployments WHERE org = $1 AND agent_id = $2 AND environment = $3 \
             AND status = 'active'",
        )
        .bind(org)
        .bind(agent_id)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        row.as_ref().map(deployment_row).transpose()
    }

    /// Rolls the environment back: the active deployment becomes `rolled_back` and the one it
    /// replaced is active again. `None` when nothing is active or the active one has no
    /// predecessor; else (rolled back, restored).
    ///
    /// # Errors
    /// Database errors.
    pub async fn rollback_deployment(
        &self,
        org: &str,
        agent_id: &str,
        environment: &str,
        note: &str,
    ) -> Result<Option<(DeploymentRow, DeploymentRow)>> {
        let mut tx = self.begin_serialized(Lock::Deployments).await?;
        let active = sqlx::query(
            "SELECT id, previous_id FROM deployments WHERE org = $1 AND agent_id = $2 AND \
             environment = $3 AND status = 'active'",
        )
        .bind(org)
        .bind(agent_id)
        .bind(environment)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.db())?;
        let Some((id, Some(previous))) =
            active.map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
        else {
            return Ok(None);
        };
        let t = now();
        sqlx::query(
            "UPDATE deployments SET status = 'rolled_back', note = $2, updated_at = $3 \
             WHERE id = $1",
        )
        .bind(&id)
        .bind(note)
        .bind(&t)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        sqlx::query("UPDATE deployments SET status = 'active', updated_at = $2 WHERE id = $1")
            .bind(&previous)
            .bind(&t)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        let (Some(gone), Some(back)) =
            (self.deployment(&id).await?, self.deployment(&previous).await?)
        else {
            return Ok(None);
        };
        Ok(Some((gone, back)))
    }

    /// Deployments of an agent (newest first), optionally of one environment, and how many
    /// there are in all.
    ///
    /// # Errors
    /// Database errors.
    pub async fn deployments(
        &self,
        org: &str,
        agent_id: &str,
        environment: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<DeploymentRow>, u64)> {
        self.agent_page(
            AgentTable::Deployments,
            (org, agent_id, environment),
            (limit, offset),
            deployment_row,
        )
        .await
    }

    /// One page of an agent's rows of `table` (of one environment, or all) in the table's
    /// order, and how many match.
    async fn agent_page<T>(
        &self,
        table: AgentTable,
        (org, agent_id, environment): (&str, &str, Option<&str>),
        (limit, offset): (u32, u32),
        row: fn(&AnyRow) -> Result<T>,
    ) -> Result<(Vec<T>, u64)> {
        let (name, order) = match table {
            AgentTable::Deployments => ("deployments", "created_at DESC, version DESC"),
            AgentTable::Invocations => ("invocations", "created_at, id"),
        };
        let filter = "org = $1 AND agent_id = $2 AND ($3 = '' OR environment = $3)";
        let env = environment.unwrap_or("");
        // Built from constant fragments only; values are bound.
        let count = format!("SELECT COUNT(*) FROM {name} WHERE {filter}");
        let total: i64 = sqlx::query(sqlx::AssertSqlSafe(count))
            .bind(org)
            .bind(agent_id)
            .bind(env)
            .fetch_one(&self.pool)
            .await
            .map_err(self.db())?
            .get(0);
        let select =
            format!("SELECT * FROM {name} WHERE {filter} ORDER BY {order} LIMIT $4 OFFSET $5");
        let rows = sqlx::query(sqlx::AssertSqlSafe(select))
            .bind(org)
            .bind(agent_id)
            .bind(env)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        let rows = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// Starts an A/B test; a test still running on the environment is stopped first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_ab_test(&self, t: &AbTestRow) -> Result<()> {
        let mut tx = self.begin_serialized(Lock::Deployments).await?;
        sqlx::query(
            "UPDATE ab_tests SET status = 'stopped', updated_at = $4 WHERE org = $1 AND \
             agent_id = $2 AND environment = $3 AND status = 'running'",
        )
        .bind(&t.org)
        .bind(&t.agent_id)
        .bind(&t.environment)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        sqlx::query(
            "INSERT INTO ab_tests (id, org, agent_id, environment, baseline_job_id, \
             baseline_checkpoint, experiment_job_id, experiment_checkpoint, traffic_split, \
             settings, status, decision, p_value, raised_at_outcomes, created_by, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $16)",
        )
        .bind(&t.id)
        .bind(&t.org)
        .bind(&t.agent_id)
        .bind(&t.environment)
        .bind(&t.baseline_job_id)
        .bind(&t.baseline_checkpoint)
        .bind(&t.experiment_job_id)
        .bind(&t.experiment_checkpoint)
        .bind(t.traffic_split)
        .bind(t.settings.to_string())
        .bind(&t.status)
        .bind(&t.decision)
        .bind(t.p_value)
        .bind(t.raised_at_outcomes)
        .bind(&t.created_by)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        tx.commit().await.map_err(self.db())?;
        Ok(())
    }

    /// The running A/B test of an environment, else the latest one, if any.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ab_test(
        &self,
        org: &str,
        agent_id: &str,
        environment: &str,
    ) -> Result<Option<AbTestRow>> {
        let row = sqlx::query(
            "SELECT * FROM ab_tests WHERE org = $1 AND agent_id = $2 AND environment = $3 \
             ORDER BY CASE WHEN status = 'running' THEN 0 ELSE 1 END, created_at DESC LIMIT 1",
        )
        .bind(org)
        .bind(agent_id)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.db())?;
        row.as_ref().map(ab_row).transpose()
    }

    /// One A/B test by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ab_test_by_id(&self, id: &str) -> Result<Option<AbTestRow>> {
        let row = sqlx::query("SELECT * FROM ab_tests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.as_ref().map(ab_row).transpose()
    }

    /// Changes a test's split, status, decision, p-value and raise mark. The update applies only
    /// while the test's status is still `expected_status`; `false` when it no longer was (another
    /// caller changed it first).
    ///
    /// # Errors
    /// Database errors.
    pub async fn update_ab_test(&self, t: &AbTestRow, expected_status: &str) -> Result<bool> {
        // The p-value only falls and a decision, once made, stays, whatever order concurrent
        // observers write in.
        let done = sqlx::query(
            "UPDATE ab_tests SET traffic_split = $2, status = $3, \
             decision = CASE WHEN decision = 'continue' THEN $4 ELSE decision END, \
             p_value = CASE WHEN $5 < p_value THEN $5 ELSE p_value END, \
             raised_at_outcomes = $6, updated_at = $7 WHERE id = $1 AND status = $8",
        )
        .bind(&t.id)
        .bind(t.traffic_split)
        .bind(&t.status)
        .bind(&t.decision)
        .bind(t.p_value)
        .bind(t.raised_at_outcomes)
        .bind(now())
        .bind(expected_status)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes the split and the settings of a test (configuring the same arms again).
    ///
    /// # Errors
    /// Database errors.
    pub async fn update_ab_settings(&self, t: &AbTestRow) -> Result<()> {
        sqlx::query(
            "UPDATE ab_tests SET traffic_split = $2, settings = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(&t.id)
        .bind(t.traffic_split)
        .bind(t.settings.to_string())
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// Invocations per (agent, environment, arm), of one organisation or of all.
    ///
    /// # Errors
    /// Database errors.
    pub async fn invocation_counts(
        &self,
        org: Option<&str>,
    ) -> Result<Vec<(String, String, String, u64)>> {
        let rows = sqlx::query(
            "SELECT agent_id, environment, arm, COUNT(*) FROM invocations \
             WHERE ($1 = '' OR org = $1) GROUP BY agent_id, environment, arm \
             ORDER BY agent_id, environment, arm",
        )
        .bind(org.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), u64::try_from(r.get::<i64, _>(3)).unwrap_or(0)))
            .collect())
    }

    /// Stores an invocation.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_invocation(&self, i: &InvocationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO invocations (id, org, agent_id, environment, deployment_id, ab_test_id, \
             arm, job_id, checkpoint_id, user_key_hash, query, answer, trajectory, success, \
             reward, outcome_source, latency_ms, cost_usd, created_at) VALUES ($1, $2, $3, $4, \
             $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(&i.id)
        .bind(&i.org)
        .bind(&i.agent_id)
        .bind(&i.environment)
        .bind(&i.deployment_id)
        .bind(&i.ab_test_id)
        .bind(&i.arm)
        .bind(&i.job_id)
        .bind(&i.checkpoint_id)
        .bind(&i.user_key_hash)
        .bind(&i.query)
        .bind(&i.answer)
        .bind(i.trajectory.to_string())
        .bind(i.success.map(i64::from))
        .bind(i.reward)
        .bind(&i.outcome_source)
        .bind(i.latency_ms)
        .bind(&i.cost_usd)
        .bind(now())
        // Not a cached statement: sqlx 0.9's `Any` declares a null `f64` as `float4`, and a
        // statement PostgreSQL prepared with it refuses the next non-null `f64`.
        .persistent(false)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(())
    }

    /// One invocation.
    ///
    /// # Errors
    /// Database errors.
    pub async fn invocation(&self, id: &str) -> Result<Option<InvocationRow>> {
        let row = sqlx::query("SELECT * FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        row.as_ref().map(invocation_row).transpose()
    }

    /// An agent's invocations (of one environment, or all), oldest first, and how many match.
    ///
    /// # Errors
    /// Database errors.
    pub async fn invocations(
        &self,
        org: &str,
        agent_id: &str,
        environment: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<InvocationRow>, u64)> {
        self.agent_page(
            AgentTable::Invocations,
            (org, agent_id, environment),
            (limit, offset),
            invocation_row,
        )
        .await
    }

    /// Records the outcome of an invocation that has none yet; `false` when it already had one.
    ///
    /// # Errors
    /// Database errors.
    pub async fn set_invocation_outcome(
        &self,
        id: &str,
        success: Option<bool>,
        reward: Option<f64>,
        source: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE invocations SET success = $2, reward = $3, outcome_source = $4 \
             WHERE id = $1 AND outcome_source IS NULL",
        )
        .bind(id)
        .bind(success.map(i64::from))
        .bind(reward)
        .bind(source)
        // Not a cached statement: sqlx 0.9's `Any` declares a null `f64` as `float4`, and a
        // statement PostgreSQL prepared with it refuses the next non-null `f64`.
        .persistent(false)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Per arm (`baseline`, `experiment`) of an A/B test: invocations, outcomes, successes,
    /// latency and costs.
    ///
    /// # Errors
    /// Database errors.
    pub async fn ab_aggregates(&self, ab_test_id: &str) -> Result<[ArmAggregate; 2]> {
        let rows = sqlx::query(
            "SELECT arm, COUNT(*), COUNT(success), \
             CAST(SUM(CASE WHEN success = 1 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(latency_ms) AS BIGINT) FROM invocations WHERE ab_test_id = $1 GROUP BY arm",
        )
        .bind(ab_test_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.db())?;
        let mut out = [ArmAggregate::default(), ArmAggregate::default()];
        let slot = |arm: &str| usize::from(arm == "experiment");
        for r in &rows {
            let arm: String = r.get(0);
            let n = |i: usize| u64::try_from(r.get::<i64, _>(i)).unwrap_or(0);
            let a = &mut out[slot(&arm)];
            a.invocations = n(1);
            a.outcomes = n(2);
            a.successes = n(3);
            a.latency_ms_sum = r.get(4);
        }
        let costs = sqlx::query("SELECT arm, cost_usd FROM invocations WHERE ab_test_id = $1")
            .bind(ab_test_id)
            .fetch_all(&self.pool)
            .await
            .map_err(self.db())?;
        for r in &costs {
            let arm: String = r.get(0);
            out[slot(&arm)].costs.push(r.get(1));
        }
        Ok(out)
    }
}
