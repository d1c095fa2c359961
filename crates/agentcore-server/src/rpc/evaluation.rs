//! `training.evaluate` and `training.export_trajectories`.

use super::jobs::tasks;
use super::*;

/// A statistic's JSON form (intervals and tests are plain serde structs).
fn value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(super) async fn evaluate(
    state: &AppState,
    caller: &Caller,
    params: EvaluateParams,
) -> Result<EvaluateResult, ApiError> {
    let EvaluateParams { job_id: id, checkpoint_id: checkpoint, evaluation_queries } = params;
    check_job_id(&id)?;
    let job = owned_job(state, caller, &id).await?;
    if job.iterations_completed == 0 && job.best_checkpoint_id.is_none() {
        let checkpoints = state.store.checkpoints(&id).await?;
        if checkpoints.iter().all(|c| c.deleted) {
            return Err(ApiError::EvaluationFailed(format!(
                "job {id} has no checkpoint yet (status {})",
                job.status
            )));
        }
    }
    if let Some(c) = &checkpoint {
        let known = state.store.checkpoints(&id).await?;
        if !known.iter().any(|k| &k.id == c && !k.deleted) {
            return Err(ApiError::NotFound { what: "checkpoint", id: c.clone(), hint: "" });
        }
    }
    let held_out = evaluation_queries.is_none();
    let queries = match evaluation_queries {
        None => None,
        Some(v) => Some(tasks("evaluation_queries", &Value::Array(v))?),
    };
    let data_dir = state.config.data_dir.clone();
    let artifacts = Arc::clone(&state.config.worker.artifacts);
    let report = tokio::task::spawn_blocking(move || {
        agentcore_train::sync::restore_run(&artifacts, &data_dir, &id)
            .map_err(|e| e.to_string())?;
        let sandbox =
            Arc::new(agentcore_agent::sandbox::PythonSandbox::detect().map_err(|e| e.to_string())?);
        agentcore_train::eval::compare(&data_dir, &id, checkpoint.as_deref(), queries, &sandbox)
            .map_err(|e| e.to_string())
    })
    .await?
    .map_err(ApiError::EvaluationFailed)?;
    let c = &report.baseline_comparison;
    let metrics = |m: &agentcore_train::eval::EvalMetrics| EvalMetrics {
        success_rate: m.success_rate,
        avg_reward: m.avg_reward,
        avg_steps: m.avg_steps,
        tool_accuracy: m.tool_accuracy,
    };
    let result = EvaluateResult {
        job_id: report.job_id.clone(),
        checkpoint_id: report.checkpoint_id.clone(),
        iteration: report.iteration,
        metrics: metrics(&report.metrics),
        baseline_metrics: metrics(&report.baseline_metrics),
        baseline_comparison: BaselineComparison {
            success_rate_improvement: c.success_rate_improvement,
            avg_reward_improvement: c.avg_reward_improvement,
            p_value: c.p_value,
            statistically_significant: c.statistically_significant,
            test: c.test.clone(),
            confidence_interval: value(&c.confidence_interval),
            baseline_success_rate: c.baseline_success_rate,
            trained_success_rate: c.trained_success_rate,
            reward_t_test: c.reward_t_test.as_ref().map(value),
            reward_confidence_interval: value(&c.reward_confidence_interval),
        },
        statistically_significant: report.statistically_significant,
        queries_evaluated: report.queries_evaluated,
        evaluation_duration_ms: report.evaluation_duration_ms,
    };
    // The held-out evaluation of a checkpoint is what a production deploy rests on.
    if held_out {
        let value = serde_json::to_value(&result)?;
        state.store.save_evaluation(&result.job_id, &result.checkpoint_id, &value).await?;
    }
    Ok(result)
}

/// Rows of an export page when the call gives no `limit`.
pub const DEFAULT_EXPORT_LIMIT: u64 = 1000;
/// The largest export page (the contract's -40005 past it).
pub const MAX_EXPORT_LIMIT: u64 = 10_000;

/// The page size an export call asks for: its `limit`, or the default; over the largest the
/// contract's -40005.
pub(super) fn export_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    match limit.unwrap_or(DEFAULT_EXPORT_LIMIT) {
        l if l > MAX_EXPORT_LIMIT => Err(ApiError::ExportLimit { max: MAX_EXPORT_LIMIT, got: l }),
        l => Ok(l),
    }
}

pub(super) async fn export(
    state: &AppState,
    caller: &Caller,
    params: ExportParams,
) -> Result<ExportResult, ApiError> {
    let id = params.job_id;
    check_job_id(&id)?;
    let job = owned_job(state, caller, &id).await?;
    let limit = export_limit(params.limit)?;
    let offset = params.offset.unwrap_or(0);
    let filter = TrajectoryFilter {
        success_only: params.success_only.unwrap_or(false),
        min_reward: params.min_reward,
        limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
        offset: u32::try_from(offset).unwrap_or(u32::MAX),
    };
    let total = state.store.count_trajectories(&id, &filter).await?;
    let rows = state.store.trajectories(&id, &filter).await?;
    let shaping = agentcore_train::record::reward_shaping(&job.settings);
    let trajectories: Vec<Value> = rows
        .iter()
        .map(|r| {
            agentcore_train::record::export_record(
                r,
                shaping.success_reward,
                shaping.failure_reward,
                false,
            )
        })
        .collect();
    let returned = trajectories.len() as u64;
    Ok(ExportResult {
        job_id: id,
        trajectories,
        total_count: total,
        returned_count: returned,
        has_more: offset + returned < total,
    })
}
