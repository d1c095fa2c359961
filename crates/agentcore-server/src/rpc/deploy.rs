//! Deployments, A/B tests and invocations: `training.deploy_checkpoint`,
//! `training.rollback_deployment`, `training.list_deployments`, `training.configure_ab_test`,
//! `training.get_ab_test`, `training.stop_ab_test`, `agents.invoke`, `agents.feedback`.
//!
//! - The gate: a deploy to `production` rests on the checkpoint's held-out evaluation (the one
//!   `training.evaluate` stored, or one run now); it is refused (-40006) unless McNemar's p is
//!   below [`SIGNIFICANCE_LEVEL`] and the success rate improved, or the call says `force`.
//! - Assignment: a user key goes to the experiment when the first 8 bytes of
//!   SHA-256(org, agent, environment, key), read as a fraction of 2^64, fall below the split; so
//!   the same key always gets the same arm, and raising the split moves only baseline users.
//! - The sequential test ([`agentcore_grpo::sequential`]) reads the arms' counts after every
//!   outcome; its decision fires `training.ab_test.decision` once, the guardrail rolls back.

use std::time::Instant;

use agentcore_api::params::{
    AbTestParams, ConfigureAbParams, DeployParams, ExportInvocationsParams, FeedbackParams,
    InvokeParams, ListDeploymentsParams, RaiseRule, RollbackParams, StopAbParams,
};
use agentcore_api::{
    AbArm, AbTest, Deployment, DeploymentEvaluation, DeploymentList, EventKind, FeedbackResult,
    InvocationExport, InvokeResult, RollbackResult,
};
use agentcore_grpo::sequential::{ArmCounts, Decision, SequentialTest};
use agentcore_grpo::stats::{SIGNIFICANCE_LEVEL, wilson_interval};
use agentcore_store::{
    AbTestRow, ArmAggregate, CheckpointRow, DeploymentRow, InvocationRow, NewDeployment, ab_status,
};
use agentcore_train::serve::ServeRequest;
use sha2::{Digest, Sha256};

use super::*;

/// The environment whose deploys the gate guards.
pub const PRODUCTION: &str = "production";

/// Longest environment name.
const MAX_ENVIRONMENT_LEN: usize = 64;

/// Most deployments one `training.list_deployments` page returns.
const MAX_DEPLOYMENTS_PAGE: u64 = 1000;

/// Default page of `training.list_deployments`.
const DEFAULT_DEPLOYMENTS_PAGE: u64 = 50;

/// Longest query of `agents.invoke`.
pub const MAX_INVOKE_QUERY_CHARS: usize = 100_000;

/// The sequential test's name in reports.
const TEST_NAME: &str = "mixture likelihood ratio (KT mixture / pooled MLE), always valid";

fn check_environment(env: &str) -> Result<(), ApiError> {
    let ok = !env.is_empty()
        && env.len() <= MAX_ENVIRONMENT_LEN
        && env.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::param(
            "environment",
            format!(
                "environment must be 1-{MAX_ENVIRONMENT_LEN} characters of letters, digits, \
                 '-', '_' or '.', got {env:?}"
            ),
        ))
    }
}

/// The stored checkpoint `checkpoint_id` of a job of the caller's organisation that trained
/// `agent_id`: (job, checkpoint directory).
async fn agent_checkpoint(
    state: &AppState,
    caller: &Caller,
    agent_id: &str,
    checkpoint_id: &str,
    field: &str,
) -> Result<(JobRow, std::path::PathBuf), ApiError> {
    let job = usable_checkpoint(state, caller, agent_id, checkpoint_id, field).await?;
    let dir = checkpoint_dir(state, &job.id, checkpoint_id).await?;
    Ok((job, dir))
}

/// The job of checkpoint `checkpoint_id` when the caller may use it for `agent_id` (its
/// organisation's, of that agent, not removed by retention).
async fn usable_checkpoint(
    state: &AppState,
    caller: &Caller,
    agent_id: &str,
    checkpoint_id: &str,
    field: &str,
) -> Result<JobRow, ApiError> {
    let (row, job) = org_checkpoint(state, caller, checkpoint_id).await?;
    if row.deleted {
        return Err(ApiError::param(
            field,
            format!("checkpoint {checkpoint_id} of job {} was removed by retention", job.id),
        ));
    }
    if job.agent_id != agent_id {
        return Err(ApiError::param(
            field,
            format!(
                "checkpoint {checkpoint_id} belongs to job {} of agent {:?}, not of agent {:?}",
                job.id, job.agent_id, agent_id
            ),
        ));
    }
    Ok(job)
}

/// The directory of checkpoint `checkpoint_id` of job `job_id` on this server's disk (checked
/// against its manifest), fetched from the artifact store when it is not there.
async fn checkpoint_dir(
    state: &AppState,
    job_id: &str,
    checkpoint_id: &str,
) -> Result<std::path::PathBuf, ApiError> {
    let (data_dir, job_id, id) =
        (state.config.data_dir.clone(), job_id.to_owned(), checkpoint_id.to_owned());
    let artifacts = std::sync::Arc::clone(&state.config.worker.artifacts);
    let dir = tokio::task::spawn_blocking(move || {
        let find = || {
            agentcore_train::checkpoints::list(&data_dir, &job_id)
                .map(|l| l.into_iter().find(|c| c.checkpoint_id == id).map(|c| c.path))
        };
        // A job trained on another machine: its checkpoints come from the artifact store, once
        // (an invocation of a checkpoint already here asks the store nothing).
        match find()? {
            Some(found) => Ok(Some(found)),
            None => {
                agentcore_train::sync::restore_run(&artifacts, &data_dir, &job_id)?;
                find()
            }
        }
    })
    .await?
    .map_err(|e| ApiError::internal("listing checkpoints", e))?
    .ok_or_else(|| checkpoint_not_found(checkpoint_id))?;
    Ok(dir)
}

fn checkpoint_not_found(checkpoint_id: &str) -> ApiError {
    ApiError::NotFound {
        what: "checkpoint",
        id: checkpoint_id.to_owned(),
        hint: " (training.get_status names a job's best_checkpoint_id)",
    }
}

/// The stored checkpoint `checkpoint_id` and its job, when the job is of the caller's
/// organisation (otherwise "not found", as for a checkpoint that does not exist).
async fn org_checkpoint(
    state: &AppState,
    caller: &Caller,
    checkpoint_id: &str,
) -> Result<(CheckpointRow, JobRow), ApiError> {
    let row = state
        .store
        .checkpoint(checkpoint_id)
        .await?
        .ok_or_else(|| checkpoint_not_found(checkpoint_id))?;
    match state.store.job(&row.job_id).await? {
        Some(j) if j.org == caller.org => Ok((row, j)),
        _ => Err(checkpoint_not_found(checkpoint_id)),
    }
}

fn evaluation_of(report: &Value) -> Option<DeploymentEvaluation> {
    let c = report.get("baseline_comparison")?;
    Some(DeploymentEvaluation {
        p_value: c.get("p_value")?.as_f64()?,
        success_rate_improvement: c.get("success_rate_improvement")?.as_f64()?,
        queries_evaluated: usize::try_from(report.get("queries_evaluated")?.as_u64()?).ok()?,
        success_rate: report.get("metrics")?.get("success_rate")?.as_f64()?,
        baseline_success_rate: report.get("baseline_metrics")?.get("success_rate")?.as_f64()?,
    })
}

fn deployment(d: &DeploymentRow) -> Deployment {
    Deployment {
        deployment_id: d.id.clone(),
        agent_id: d.agent_id.clone(),
        environment: d.environment.clone(),
        version: d.version,
        checkpoint_id: d.checkpoint_id.clone(),
        job_id: d.job_id.clone(),
        previous_deployment_id: d.previous_id.clone(),
        deployed_at: d.created_at.clone(),
        deployed_by: d.deployed_by.clone(),
        evaluation: d.evaluation.as_ref().and_then(evaluation_of),
        forced: d.forced,
        status: d.status.clone(),
        note: d.note.clone(),
    }
}

/// The stored held-out evaluation of a checkpoint, or one run (and stored) now.
async fn held_out_evaluation(
    state: &AppState,
    caller: &Caller,
    job_id: &str,
    checkpoint_id: &str,
) -> Result<Value, ApiError> {
    if let Some(v) = state.store.evaluation(job_id, checkpoint_id).await? {
        return Ok(v);
    }
    let params = EvaluateParams {
        job_id: job_id.to_owned(),
        checkpoint_id: Some(checkpoint_id.to_owned()),
        evaluation_queries: None,
    };
    Ok(serde_json::to_value(super::evaluate(state, caller, params).await?)?)
}

/// Deploys; `won_ab_test`: the checkpoint won an A/B test in this environment, which passes the
/// gate as a significant held-out evaluation does (the note says so).
async fn make_deployment(
    state: &AppState,
    caller: &Caller,
    params: DeployParams,
    note: Option<String>,
    won_ab_test: bool,
) -> Result<Deployment, ApiError> {
    let DeployParams { agent_id, checkpoint_id, environment, force } = params;
    check_environment(&environment)?;
    crate::agents::visible_agent(state, caller, &agent_id).await?;
    let (job, _) =
        agent_checkpoint(state, caller, &agent_id, &checkpoint_id, "checkpoint_id").await?;
    let production = environment == PRODUCTION;
    let report = if production {
        Some(held_out_evaluation(state, caller, &job.id, &checkpoint_id).await?)
    } else {
        state.store.evaluation(&job.id, &checkpoint_id).await?
    };
    if production && !force && !won_ab_test {
        let e = report.as_ref().and_then(evaluation_of).ok_or_else(|| {
            ApiError::internal("deployment gate", "the stored evaluation has no comparison")
        })?;
        if !(e.p_value < SIGNIFICANCE_LEVEL && e.success_rate_improvement > 0.0) {
            return Err(ApiError::DeploymentGate {
                checkpoint_id,
                p_value: e.p_value,
                improvement: e.success_rate_improvement,
                queries: e.queries_evaluated,
                alpha: SIGNIFICANCE_LEVEL,
            });
        }
    }
    let row = state
        .store
        .deploy(&NewDeployment {
            id: uuid::Uuid::new_v4().to_string(),
            org: caller.org.clone(),
            agent_id,
            environment,
            job_id: job.id.clone(),
            checkpoint_id,
            evaluation: report,
            forced: force,
            deployed_by: caller.subject.clone(),
            note,
        })
        .await?;
    let d = deployment(&row);
    let payload = json!({
        "deployment_id": d.deployment_id, "environment": d.environment, "version": d.version,
        "checkpoint_id": d.checkpoint_id, "previous_deployment_id": d.previous_deployment_id,
        "forced": d.forced, "evaluation": d.evaluation, "deployed_by": d.deployed_by,
    });
    state.store.record_event(&job.id, EventKind::DeploymentCreated, &payload).await?;
    tracing::info!(job_id = %job.id, deployment_id = %d.deployment_id, environment = %d.environment,
        checkpoint_id = %d.checkpoint_id, forced = d.forced, "deployed");
    Ok(d)
}

pub(super) async fn deploy(
    state: &AppState,
    caller: &Caller,
    params: DeployParams,
) -> Result<Deployment, ApiError> {
    make_deployment(state, caller, params, None, false).await
}

async fn rollback_to_previous(
    state: &AppState,
    caller: &Caller,
    agent_id: &str,
    environment: &str,
    note: &str,
) -> Result<RollbackResult, ApiError> {
    let Some((gone, back)) =
        state.store.rollback_deployment(&caller.org, agent_id, environment, note).await?
    else {
        let what = match state.store.active_deployment(&caller.org, agent_id, environment).await? {
            Some(d) => format!("deployment {} (version {}) has no earlier one", d.id, d.version),
            None => "nothing is deployed".to_owned(),
        };
        return Err(ApiError::NoDeployment(format!(
            "cannot roll back agent {agent_id:?} in environment {environment:?}: {what}"
        )));
    };
    let (gone, back) = (deployment(&gone), deployment(&back));
    let payload = json!({
        "deployment_id": gone.deployment_id, "environment": environment,
        "checkpoint_id": gone.checkpoint_id, "restored_deployment_id": back.deployment_id,
        "restored_checkpoint_id": back.checkpoint_id, "reason": note,
    });
    state.store.record_event(&gone.job_id, EventKind::DeploymentRolledBack, &payload).await?;
    tracing::info!(job_id = %gone.job_id, deployment_id = %gone.deployment_id,
        restored = %back.deployment_id, "deployment rolled back");
    Ok(RollbackResult { deployment: back, rolled_back: gone })
}

pub(super) async fn rollback(
    state: &AppState,
    caller: &Caller,
    params: RollbackParams,
) -> Result<RollbackResult, ApiError> {
    check_environment(&params.environment)?;
    crate::agents::visible_agent(state, caller, &params.agent_id).await?;
    let note = format!("rolled back by {}", caller.subject);
    rollback_to_previous(state, caller, &params.agent_id, &params.environment, &note).await
}

pub(super) async fn list_deployments(
    state: &AppState,
    caller: &Caller,
    params: ListDeploymentsParams,
) -> Result<DeploymentList, ApiError> {
    crate::agents::visible_agent(state, caller, &params.agent_id).await?;
    if let Some(e) = &params.environment {
        check_environment(e)?;
    }
    let limit = params.limit.unwrap_or(DEFAULT_DEPLOYMENTS_PAGE);
    if limit > MAX_DEPLOYMENTS_PAGE {
        return Err(ApiError::param(
            "limit",
            format!("limit must be <= {MAX_DEPLOYMENTS_PAGE}, got {limit}"),
        ));
    }
    let (rows, total) = state
        .store
        .deployments(
            &caller.org,
            &params.agent_id,
            params.environment.as_deref(),
            u32::try_from(limit).unwrap_or(u32::MAX),
            u32::try_from(params.offset.unwrap_or(0)).unwrap_or(u32::MAX),
        )
        .await?;
    let deployments: Vec<Deployment> = rows.iter().map(deployment).collect();
    Ok(DeploymentList { count: deployments.len(), deployments, total_count: total })
}

fn check_fraction(field: &str, v: f64) -> Result<(), ApiError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(ApiError::param(field, format!("{field} must be in [0, 1], got {v}")))
    }
}

fn check_ab_settings(p: &ConfigureAbParams) -> Result<(), ApiError> {
    check_fraction("traffic_split", p.traffic_split)?;
    if !(p.alpha > 0.0 && p.alpha < 1.0) {
        return Err(ApiError::param("alpha", format!("alpha must be in (0, 1), got {}", p.alpha)));
    }
    if let Some(r) = &p.auto_raise {
        check_fraction("auto_raise.min_improvement", r.min_improvement)?;
        if r.steps.is_empty() {
            return Err(ApiError::param("auto_raise.steps", "auto_raise.steps must not be empty"));
        }
        for (i, &s) in r.steps.iter().enumerate() {
            if !(s > 0.0 && s <= 1.0) {
                return Err(ApiError::param(
                    "auto_raise.steps",
                    format!("auto_raise.steps[{i}] must be in (0, 1], got {s}"),
                ));
            }
            if i > 0 && s <= r.steps[i - 1] {
                return Err(ApiError::param(
                    "auto_raise.steps",
                    format!("auto_raise.steps must increase, got {:?}", r.steps),
                ));
            }
        }
        if r.min_outcomes_per_step == 0 {
            return Err(ApiError::param(
                "auto_raise.min_outcomes_per_step",
                "auto_raise.min_outcomes_per_step must be >= 1, got 0",
            ));
        }
    }
    Ok(())
}

/// The settings of a test kept in its row.
fn settings_of(row: &AbTestRow) -> (f64, bool, Option<RaiseRule>) {
    let s = &row.settings;
    let alpha = s.get("alpha").and_then(Value::as_f64).unwrap_or(SIGNIFICANCE_LEVEL);
    let guardrail = s.get("guardrail").and_then(Value::as_bool).unwrap_or(false);
    let raise = s.get("auto_raise").and_then(|r| serde_json::from_value(r.clone()).ok());
    (alpha, guardrail, raise)
}

fn counts(a: &ArmAggregate) -> ArmCounts {
    ArmCounts::new(a.successes, a.outcomes - a.successes)
}

fn arm(checkpoint_id: &str, a: &ArmAggregate) -> AbArm {
    let cost: Decimal = a.costs.iter().filter_map(|c| Decimal::from_str(c).ok()).sum();
    let rate = (a.outcomes > 0).then(|| a.successes as f64 / a.outcomes as f64);
    let interval = wilson_interval(a.successes, a.outcomes, 0.95).ok().map(|w| [w.low, w.high]);
    AbArm {
        checkpoint_id: checkpoint_id.to_owned(),
        invocations: a.invocations,
        outcomes: a.outcomes,
        successes: a.successes,
        success_rate: rate,
        success_interval: interval,
        mean_latency_ms: (a.invocations > 0)
            .then(|| a.latency_ms_sum as f64 / a.invocations as f64),
        cost_usd: cost.normalize().to_string(),
    }
}

async fn report(state: &AppState, row: &AbTestRow) -> Result<AbTest, ApiError> {
    let [b, e] = state.store.ab_aggregates(&row.id).await?;
    let (alpha, guardrail, auto_raise) = settings_of(row);
    let difference =
        (b.outcomes > 0 && e.outcomes > 0).then(|| counts(&e).rate() - counts(&b).rate());
    Ok(AbTest {
        ab_test_id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        environment: row.environment.clone(),
        status: row.status.clone(),
        traffic_split: row.traffic_split,
        alpha,
        guardrail,
        auto_raise,
        baseline: arm(&row.baseline_checkpoint, &b),
        experiment: arm(&row.experiment_checkpoint, &e),
        difference,
        p_value: row.p_value,
        test: TEST_NAME.to_owned(),
        decision: row.decision.clone(),
        created_at: row.created_at.clone(),
        promoted: None,
    })
}

pub(super) async fn configure_ab_test(
    state: &AppState,
    caller: &Caller,
    params: ConfigureAbParams,
) -> Result<AbTest, ApiError> {
    check_environment(&params.environment)?;
    check_ab_settings(&params)?;
    let agent_id = match &params.agent_id {
        Some(a) => a.clone(),
        None => org_checkpoint(state, caller, &params.experiment_checkpoint).await?.1.agent_id,
    };
    crate::agents::visible_agent(state, caller, &agent_id).await?;
    let (agent, env) = (agent_id.as_str(), params.environment.as_str());
    let baseline = match &params.baseline_checkpoint {
        Some(c) => c.clone(),
        None => match state.store.active_deployment(&caller.org, agent, env).await? {
            Some(d) => d.checkpoint_id,
            None => {
                return Err(ApiError::NoDeployment(format!(
                    "agent {agent:?} has nothing deployed to {env:?}: deploy a baseline first or \
                     name baseline_checkpoint"
                )));
            }
        },
    };
    let (bjob, _) =
        agent_checkpoint(state, caller, agent, &baseline, "baseline_checkpoint").await?;
    let (ejob, _) = agent_checkpoint(
        state,
        caller,
        agent,
        &params.experiment_checkpoint,
        "experiment_checkpoint",
    )
    .await?;
    let settings = json!({
        "alpha": params.alpha, "guardrail": params.guardrail, "auto_raise": params.auto_raise,
    });
    // The same arms again: change the split and rules of the running test, keep its outcomes.
    if let Some(mut running) = state.store.ab_test(&caller.org, agent, env).await?.filter(|t| {
        t.status == ab_status::RUNNING
            && t.baseline_checkpoint == baseline
            && t.experiment_checkpoint == params.experiment_checkpoint
    }) {
        running.traffic_split = params.traffic_split;
        running.settings = settings;
        state.store.update_ab_settings(&running).await?;
        return report(state, &running).await;
    }
    let row = AbTestRow {
        id: uuid::Uuid::new_v4().to_string(),
        org: caller.org.clone(),
        agent_id: agent.to_owned(),
        environment: env.to_owned(),
        baseline_job_id: bjob.id,
        baseline_checkpoint: baseline,
        experiment_job_id: ejob.id,
        experiment_checkpoint: params.experiment_checkpoint.clone(),
        traffic_split: params.traffic_split,
        settings,
        status: ab_status::RUNNING.to_owned(),
        decision: Decision::Continue.as_str().to_owned(),
        p_value: 1.0,
        raised_at_outcomes: 0,
        created_by: caller.subject.clone(),
        created_at: String::new(),
        updated_at: String::new(),
    };
    state.store.create_ab_test(&row).await?;
    let row = state.store.ab_test_by_id(&row.id).await?.ok_or_else(|| {
        ApiError::internal("configure_ab_test", "the new test is not in the store")
    })?;
    tracing::info!(job_id = %row.experiment_job_id, ab_test_id = %row.id,
        traffic_split = row.traffic_split, "A/B test configured");
    report(state, &row).await
}

async fn find_ab_test(
    state: &AppState,
    caller: &Caller,
    agent: &str,
    env: &str,
) -> Result<AbTestRow, ApiError> {
    check_environment(env)?;
    crate::agents::visible_agent(state, caller, agent).await?;
    state.store.ab_test(&caller.org, agent, env).await?.ok_or_else(|| {
        ApiError::NoDeployment(format!("no A/B test for agent {agent:?} in {env:?}"))
    })
}

pub(super) async fn get_ab_test(
    state: &AppState,
    caller: &Caller,
    params: AbTestParams,
) -> Result<AbTest, ApiError> {
    let row = find_ab_test(state, caller, &params.agent_id, &params.environment).await?;
    report(state, &row).await
}

pub(super) async fn stop_ab_test(
    state: &AppState,
    caller: &Caller,
    params: StopAbParams,
) -> Result<AbTest, ApiError> {
    let mut row = find_ab_test(state, caller, &params.agent_id, &params.environment).await?;
    if row.status != ab_status::RUNNING {
        return Err(ApiError::NoDeployment(format!(
            "the A/B test {} of agent {:?} in {:?} is already {}",
            row.id, row.agent_id, row.environment, row.status
        )));
    }
    let promoted = if params.promote {
        // A test the experiment won is evidence enough; otherwise the deployment gate decides.
        let won = row.decision == Decision::ExperimentBetter.as_str();
        let note = format!(
            "promoted by A/B test {} (decision {}, p = {:.3e})",
            row.id, row.decision, row.p_value
        );
        let deploy = DeployParams {
            agent_id: row.agent_id.clone(),
            checkpoint_id: row.experiment_checkpoint.clone(),
            environment: row.environment.clone(),
            force: false,
        };
        Some(make_deployment(state, caller, deploy, Some(note), won).await?)
    } else {
        None
    };
    let status = row.status.clone();
    row.status = ab_status::STOPPED.to_owned();
    state.store.update_ab_test(&row, &status).await?;
    let mut out = report(state, &row).await?;
    out.promoted = promoted;
    Ok(out)
}

/// Which arm a user key gets at `split`.
#[must_use]
pub fn assign(org: &str, agent: &str, env: &str, key: &str, split: f64) -> bool {
    let mut h = Sha256::new();
    for part in [org, agent, env, key] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: an exact fraction in [0, 1).
    let u = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    u < split
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the test's counts after an outcome: the sequential test, then the guardrail and the
/// raise rule; events for what changed. Returns the decision.
pub(super) async fn observe(state: &AppState, ab_test_id: &str) -> Result<String, ApiError> {
    let _serial = state.ab_lock.lock().await;
    let Some(mut row) = state.store.ab_test_by_id(ab_test_id).await? else {
        return Ok(Decision::Continue.as_str().to_owned());
    };
    if row.status != ab_status::RUNNING {
        return Ok(row.decision);
    }
    let [b, e] = state.store.ab_aggregates(ab_test_id).await?;
    let (alpha, guardrail, raise) = settings_of(&row);
    let before: Decision =
        serde_json::from_value(json!(row.decision)).unwrap_or(Decision::Continue);
    let mut test = SequentialTest::resume(alpha, row.p_value, before)?;
    let decision = test.observe(counts(&b), counts(&e));
    row.p_value = test.p_value();
    row.decision = decision.as_str().to_owned();
    let difference = counts(&e).rate() - counts(&b).rate();
    let mut events = Vec::new();
    if decision != before {
        events.push(json!({
            "event_key": format!("{}:decision", row.id), "ab_test_id": row.id,
            "environment": row.environment, "decision": decision.as_str(),
            "p_value": row.p_value, "difference": difference,
            "baseline_outcomes": b.outcomes, "experiment_outcomes": e.outcomes,
            "traffic_split": row.traffic_split,
        }));
    }
    let mut rolled_back = false;
    if decision == Decision::ExperimentWorse && guardrail {
        row.status = ab_status::ROLLED_BACK.to_owned();
        rolled_back = true;
    } else if let (Decision::ExperimentBetter, Some(r)) = (decision, &raise) {
        let since = i64::try_from(e.outcomes).unwrap_or(i64::MAX) - row.raised_at_outcomes;
        let next = r.steps.iter().copied().find(|&s| s > row.traffic_split);
        if let Some(next) = next.filter(|_| {
            difference > r.min_improvement
                && since >= i64::try_from(r.min_outcomes_per_step).unwrap_or(i64::MAX)
        }) {
            events.push(json!({
                "event_key": format!("{}:raise:{next}", row.id), "ab_test_id": row.id,
                "environment": row.environment, "decision": decision.as_str(),
                "action": "raised", "from_split": row.traffic_split, "traffic_split": next,
                "p_value": row.p_value, "difference": difference,
            }));
            row.traffic_split = next;
            row.raised_at_outcomes = i64::try_from(e.outcomes).unwrap_or(i64::MAX);
        }
    }
    state.store.update_ab_test(&row, ab_status::RUNNING).await?;
    for payload in events {
        state
            .store
            .record_event(&row.experiment_job_id, EventKind::AbTestDecision, &payload)
            .await?;
    }
    if rolled_back {
        let payload = json!({
            "ab_test_id": row.id, "environment": row.environment,
            "checkpoint_id": row.experiment_checkpoint, "reason": "guardrail",
            "p_value": row.p_value, "difference": difference,
        });
        state
            .store
            .record_event(&row.experiment_job_id, EventKind::DeploymentRolledBack, &payload)
            .await?;
        tracing::warn!(job_id = %row.experiment_job_id, ab_test_id = %row.id,
            p_value = row.p_value, "A/B guardrail: the experiment is significantly worse; rolled back");
    }
    Ok(row.decision)
}

/// Runs one invocation (shared by `agents.invoke` and `POST /v1/chat/completions`).
pub async fn invoke(
    state: &AppState,
    caller: &Caller,
    params: InvokeParams,
) -> Result<InvokeResult, ApiError> {
    let started = Instant::now();
    let InvokeParams { agent_id, query, environment, user_key, expected_outcome } = params;
    check_environment(&environment)?;
    if query.trim().is_empty() {
        return Err(ApiError::param("query", "query must not be empty"));
    }
    if query.chars().count() > MAX_INVOKE_QUERY_CHARS {
        return Err(ApiError::param(
            "query",
            format!("query must be at most {MAX_INVOKE_QUERY_CHARS} characters"),
        ));
    }
    crate::agents::visible_agent(state, caller, &agent_id).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let test = state
        .store
        .ab_test(&caller.org, &agent_id, &environment)
        .await?
        .filter(|t| t.status == ab_status::RUNNING);
    let active = state.store.active_deployment(&caller.org, &agent_id, &environment).await?;
    let (arm_name, ab_test_id, deployment_id, checkpoint_id) = match (&test, &active) {
        (Some(t), _) => {
            let key = user_key.as_deref().unwrap_or(&id);
            let experiment = assign(&caller.org, &agent_id, &environment, key, t.traffic_split);
            let deployment = active
                .as_ref()
                .filter(|d| d.checkpoint_id == t.baseline_checkpoint && !experiment)
                .map(|d| d.id.clone());
            if experiment {
                ("experiment", Some(t.id.clone()), deployment, t.experiment_checkpoint.clone())
            } else {
                ("baseline", Some(t.id.clone()), deployment, t.baseline_checkpoint.clone())
            }
        }
        (None, Some(d)) => ("baseline", None, Some(d.id.clone()), d.checkpoint_id.clone()),
        (None, None) => {
            return Err(ApiError::NoDeployment(format!(
                "agent {agent_id:?} has nothing deployed to {environment:?} (deploy a checkpoint \
                 with training.deploy_checkpoint)"
            )));
        }
    };
    let job = usable_checkpoint(state, caller, &agent_id, &checkpoint_id, "checkpoint_id").await?;
    let request = ServeRequest { query: query.clone(), expected_outcome };
    let verified = request.expected_outcome.is_some();
    let locate = checkpoint_dir(state, &job.id, &checkpoint_id);
    let outcome = state.serving.answer(&job.id, &checkpoint_id, locate, request).await?;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let answer = outcome.trajectory.final_answer.clone();
    let row = InvocationRow {
        id: id.clone(),
        org: caller.org.clone(),
        agent_id: agent_id.clone(),
        environment: environment.clone(),
        deployment_id,
        ab_test_id: ab_test_id.clone(),
        arm: arm_name.to_owned(),
        job_id: job.id.clone(),
        checkpoint_id: checkpoint_id.clone(),
        user_key_hash: user_key.as_deref().map(sha256_hex),
        query,
        answer: answer.clone(),
        trajectory: serde_json::to_value(&outcome.trajectory)?,
        success: outcome.passed,
        reward: outcome.reward,
        outcome_source: verified.then(|| "verifier".to_owned()),
        latency_ms: i64::try_from(latency_ms).unwrap_or(i64::MAX),
        cost_usd: outcome.cost_usd.to_string(),
        created_at: String::new(),
    };
    state.store.record_invocation(&row).await?;
    state.metrics.observe_invocation(latency_ms as f64 / 1000.0);
    if let (Some(t), true) = (&ab_test_id, verified) {
        observe(state, t).await?;
    }
    tracing::debug!(job_id = %job.id, invocation_id = %id, arm = arm_name, latency_ms, "invoked");
    Ok(InvokeResult {
        invocation_id: id.clone(),
        answer,
        arm: arm_name.to_owned(),
        checkpoint_id,
        trajectory_id: id,
        success: outcome.passed,
        latency_ms,
        cost_usd: outcome.cost_usd.normalize().to_string(),
        environment,
        ab_test_id,
    })
}

/// An invocation as `agents.export_invocations` gives it (the user key's hash stays inside).
fn invocation_record(i: &InvocationRow) -> Value {
    json!({
        "invocation_id": i.id, "agent_id": i.agent_id, "environment": i.environment,
        "arm": i.arm, "deployment_id": i.deployment_id, "ab_test_id": i.ab_test_id,
        "job_id": i.job_id, "checkpoint_id": i.checkpoint_id, "query": i.query,
        "answer": i.answer, "trajectory": i.trajectory, "success": i.success, "reward": i.reward,
        "outcome_source": i.outcome_source, "latency_ms": i.latency_ms, "cost_usd": i.cost_usd,
        "has_user_key": i.user_key_hash.is_some(), "created_at": i.created_at,
    })
}

pub(super) async fn export_invocations(
    state: &AppState,
    caller: &Caller,
    params: ExportInvocationsParams,
) -> Result<InvocationExport, ApiError> {
    crate::agents::visible_agent(state, caller, &params.agent_id).await?;
    if let Some(e) = &params.environment {
        check_environment(e)?;
    }
    let limit = super::evaluation::export_limit(params.limit)?;
    let offset = params.offset.unwrap_or(0);
    let (rows, total) = state
        .store
        .invocations(
            &caller.org,
            &params.agent_id,
            params.environment.as_deref(),
            u32::try_from(limit).unwrap_or(u32::MAX),
            u32::try_from(offset).unwrap_or(u32::MAX),
        )
        .await?;
    let invocations: Vec<Value> = rows.iter().map(invocation_record).collect();
    let returned = invocations.len() as u64;
    Ok(InvocationExport {
        agent_id: params.agent_id,
        invocations,
        total_count: total,
        returned_count: returned,
        has_more: offset + returned < total,
    })
}

pub(super) async fn feedback(
    state: &AppState,
    caller: &Caller,
    params: FeedbackParams,
) -> Result<FeedbackResult, ApiError> {
    let FeedbackParams { invocation_id, success, reward } = params;
    if let Some(r) = reward.filter(|r| !r.is_finite()) {
        return Err(ApiError::param("reward", format!("reward must be a finite number, got {r}")));
    }
    let success = match (success, reward) {
        (Some(s), _) => s,
        (None, Some(r)) => r > 0.0,
        (None, None) => {
            return Err(ApiError::params("agents.feedback needs success or reward (or both)"));
        }
    };
    let not_found =
        || ApiError::NotFound { what: "invocation", id: invocation_id.clone(), hint: "" };
    let row = match state.store.invocation(&invocation_id).await? {
        Some(r) if r.org == caller.org => r,
        _ => return Err(not_found()),
    };
    if !state
        .store
        .set_invocation_outcome(&invocation_id, Some(success), reward, "feedback")
        .await?
    {
        return Err(ApiError::param(
            "invocation_id",
            format!(
                "invocation {invocation_id} already has an outcome (from the {})",
                row.outcome_source.as_deref().unwrap_or("verifier")
            ),
        ));
    }
    let decision = match &row.ab_test_id {
        Some(t) => Some(observe(state, t).await?),
        None => None,
    };
    Ok(FeedbackResult { invocation_id, success, reward, decision })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_sticky_and_a_raise_moves_only_baseline_users() {
        let keys: Vec<String> = (0..5000).map(|i| format!("user-{i}")).collect();
        let at = |split: f64| -> Vec<bool> {
            keys.iter().map(|k| assign("acme", "agent", "production", k, split)).collect()
        };
        let ten = at(0.1);
        assert_eq!(ten, at(0.1), "the same key gets the same arm");
        let share = ten.iter().filter(|&&x| x).count() as f64 / keys.len() as f64;
        assert!((share - 0.1).abs() < 0.015, "{share}");
        let half = at(0.5);
        assert!(ten.iter().zip(&half).all(|(&a, &b)| !a || b), "experiment users stay");
        assert!(at(0.0).iter().all(|&x| !x) && at(1.0).iter().all(|&x| x));
        // Another environment draws independently.
        let other: Vec<bool> =
            keys.iter().map(|k| assign("acme", "agent", "staging", k, 0.1)).collect();
        assert_ne!(ten, other);
    }

    #[test]
    fn environment_names_are_checked() {
        for ok in ["production", "staging", "eu-west.canary_2"] {
            check_environment(ok).unwrap();
        }
        for bad in ["", "prod env", "a/b", &"x".repeat(65)] {
            let e = check_environment(bad).unwrap_err();
            assert!(e.to_string().contains("environment must be"), "{e}");
        }
    }
}
