//! `training.start_grpo`, `training.get_status`, `training.list_jobs`, `training.cancel`.

use super::*;

pub(super) fn tasks(name: &str, value: &Value) -> Result<Vec<Task>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::DataValidation {
            message: format!(
                "{name} must be an array of {{query, expected_outcome}}, got {}",
                kind(value)
            ),
            data: Some(json!({"field": name})),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            agentcore_tasks::data::task_from_value(i, v.clone()).map_err(|e| {
                ApiError::DataValidation {
                    message: format!("{name}[{i}]: {e}"),
                    data: Some(json!({"field": name, "index": i})),
                }
            })
        })
        .collect()
}

use agentcore_train::tracking::{MlflowSettings, ReportTo};

pub(super) async fn start(
    state: &Arc<AppState>,
    caller: &Caller,
    params: StartParams,
) -> Result<StartResult, ApiError> {
    let StartParams { agent_id, config, training_data, evaluation_data, metadata, report_to } =
        params;
    let stored = crate::agents::visible_agent(state, caller, &agent_id).await?;
    let agent = crate::agents::definition(&stored)?;
    // Checked again: the server's rule (or the address) may have changed since registration.
    crate::agents::check_endpoints(&agent, state.config.allow_private_endpoints)?;
    let data = training_data.ok_or_else(|| ApiError::DataValidation {
        message: "training_data is required (at least 100 queries)".into(),
        data: Some(json!({"field": "training_data"})),
    })?;
    let train = tasks("training_data", &Value::Array(data))?;
    let min = agentcore_tasks::data::MIN_TRAINING_TASKS;
    if train.len() < min {
        return Err(ApiError::DataValidation {
            message: format!("training_data must have at least {min} queries, got {}", train.len()),
            data: Some(json!({"field": "training_data", "count": train.len()})),
        });
    }
    let eval = match evaluation_data {
        None => Vec::new(),
        Some(v) => tasks("evaluation_data", &Value::Array(v))?,
    };
    let metadata = metadata.map(Value::Object);
    let mut settings =
        agentcore_train::spec::resolve(&agent, config.as_ref(), Some(JobData { train, eval }))
            .map_err(|source| ApiError::Settings { agent_id: agent_id.clone(), source })?;
    if let Some(api) = &mut settings.api {
        api.allow_private_endpoints = state.config.allow_private_endpoints;
    }
    if let Some((name, url)) =
        state.store.reward_endpoint(&caller.org, settings.agent_type()).await?
    {
        settings.remote_reward = Some(agentcore_train::settings::RemoteReward {
            name,
            url,
            allow_private: state.config.webhooks.allow_private,
        });
    }
    for name in report_to.unwrap_or_default() {
        let tracker = ReportTo::parse(&name).map_err(|e| ApiError::param("report_to", e))?;
        if tracker == ReportTo::Mlflow {
            let Some(uri) = &state.config.mlflow_tracking_uri else {
                return Err(ApiError::param(
                    "report_to",
                    "report_to mlflow: this server has no MLflow tracking server (start it with \
                     agentcore serve --mlflow-tracking-uri URL)",
                ));
            };
            settings.mlflow = Some(MlflowSettings {
                tracking_uri: uri.clone(),
                experiment: Some(format!("{}/{agent_id}", caller.org)),
            });
        }
        if !settings.report_to.contains(&tracker) {
            settings.report_to.push(tracker);
        }
    }
    // Pre-flight: the local compute this job would take at the configured price.
    let c = &settings.config;
    let estimate = agentcore_train::spec::estimated_cost_usd(&settings);
    let trajectories = c.batch_size * c.n_trajectories_per_query;
    if estimate > c.max_budget_usd {
        return Err(ApiError::BudgetExceeded {
            estimate,
            max: c.max_budget_usd,
            detail: format!(
                "{} iterations x {} trajectories at ${}/hour",
                c.n_iterations, trajectories, settings.price_per_hour_usd
            ),
        });
    }
    let id = uuid::Uuid::new_v4().to_string();
    let run_dir = agentcore_train::settings::run_dir(&state.config.data_dir, &id);
    let new_job = NewJob {
        id: id.clone(),
        agent_id: agent_id.clone(),
        settings: serde_json::to_value(&settings)?,
        total_iterations: settings.config.n_iterations,
        budget_usd: settings.config.max_budget_usd.to_string(),
        run_dir: run_dir.display().to_string(),
    };
    state.store.enqueue_job(&new_job, &caller.org, &caller.subject, metadata.as_ref()).await?;
    let row = state.store.job(&id).await?;
    Ok(StartResult {
        job_id: id,
        status: JobStatus::Queued,
        agent_id,
        total_iterations: new_job.total_iterations,
        budget_usd: new_job.budget_usd,
        created_at: row.map(|r| r.created_at).unwrap_or_default(),
    })
}

/// The status of a job as the contract shapes it.
///
/// # Errors
/// Database errors.
pub async fn status(store: &Store, job: &JobRow) -> Result<StatusResult, ApiError> {
    let last = store.last_iteration(&job.id).await?;
    let validation = store.last_validation(&job.id).await?;
    let per_iteration = job
        .settings
        .get("config")
        .map(|c| {
            c.get("batch_size").and_then(Value::as_u64).unwrap_or(0)
                * c.get("n_trajectories_per_query").and_then(Value::as_u64).unwrap_or(0)
        })
        .unwrap_or(0);
    let mut metrics = last.clone().unwrap_or_else(|| json!({}));
    if let Some(m) = metrics.as_object_mut() {
        m.insert(
            "train_loss".into(),
            last.as_ref().and_then(|l| l.get("train_loss").cloned()).unwrap_or(Value::Null),
        );
        let final_rate =
            job.summary.as_ref().and_then(|s| s.get("final_success_rate")).and_then(Value::as_f64);
        m.insert("validation_accuracy".into(), json!(final_rate.or(validation)));
        m.insert(
            "trajectories_generated".into(),
            json!(u64::from(job.iterations_completed) * per_iteration),
        );
        if let Some(s) = &job.summary {
            m.insert(
                "baseline_success_rate".into(),
                s.get("baseline_success_rate").cloned().unwrap_or(Value::Null),
            );
            m.insert("p_value".into(), s.get("p_value").cloned().unwrap_or(Value::Null));
        }
    }
    let cost = Decimal::from_str(&job.cost_usd).unwrap_or_default();
    let budget = Decimal::from_str(&job.budget_usd).unwrap_or_default();
    let remaining = (budget - cost).max(Decimal::ZERO);
    let remaining_percent = if budget > Decimal::ZERO {
        (remaining / budget * Decimal::from(100)).to_f64().unwrap_or(0.0)
    } else {
        0.0
    };
    let total = job.total_iterations.max(1);
    let percent = f64::from(job.iterations_completed.min(total)) / f64::from(total) * 100.0;
    let percent = if job.status == JobStatus::Completed { 100.0 } else { percent };
    let estimated_completion = match (&job.started_at, job.status) {
        (Some(started), JobStatus::Running) if job.iterations_completed > 0 => {
            chrono::DateTime::parse_from_rfc3339(started).ok().map(|s| {
                let elapsed = chrono::Utc::now().signed_duration_since(s);
                let per = elapsed / i32::try_from(job.iterations_completed).unwrap_or(1);
                let left =
                    i32::try_from(job.total_iterations.saturating_sub(job.iterations_completed))
                        .unwrap_or(0);
                (chrono::Utc::now() + per * left).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
        }
        _ => job.finished_at.clone(),
    };
    Ok(StatusResult {
        job_id: job.id.clone(),
        agent_id: job.agent_id.clone(),
        status: job.status,
        current_iteration: job.iterations_completed,
        total_iterations: job.total_iterations,
        progress_percent: (percent * 10.0).round() / 10.0,
        metrics,
        cost_usd: job.cost_usd.clone(),
        budget_usd: job.budget_usd.clone(),
        budget_remaining_percent: (remaining_percent * 10.0).round() / 10.0,
        started_at: job.started_at.clone(),
        estimated_completion,
        best_checkpoint_id: job.best_checkpoint_id.clone(),
        error_message: job.error.clone(),
        stop_reason: job.stop_reason.clone(),
        progress: Progress {
            current_iteration: job.iterations_completed,
            total_iterations: job.total_iterations,
            percent_complete: (percent * 10.0).round() / 10.0,
        },
        cost: Cost {
            cost_usd: job.cost_usd.clone(),
            budget_usd: job.budget_usd.clone(),
            budget_remaining_usd: remaining.to_string(),
        },
        metadata: job.metadata.clone(),
        created_at: job.created_at.clone(),
    })
}

pub(super) async fn list(
    state: &AppState,
    caller: &Caller,
    params: ListParams,
) -> Result<ListResult, ApiError> {
    let limit = params.limit.unwrap_or(50).min(1000);
    let offset = params.offset.unwrap_or(0);
    let filter = JobFilter {
        org: Some(caller.org.clone()),
        agent_id: params.agent_id,
        status: params.status,
        limit: u32::try_from(limit).unwrap_or(50),
        offset: u32::try_from(offset).unwrap_or(u32::MAX),
    };
    let (rows, total) = state.store.list_jobs(&filter).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        jobs.push(status(&state.store, r).await?);
    }
    Ok(ListResult { count: jobs.len(), jobs, total_count: total })
}

pub(super) async fn cancel(
    state: &AppState,
    caller: &Caller,
    params: CancelParams,
) -> Result<CancelResult, ApiError> {
    let CancelParams { job_id: id, reason } = params;
    check_job_id(&id)?;
    owned_job(state, caller, &id).await?;
    match state.store.request_cancel(&id, reason.as_deref()).await? {
        CancelOutcome::NotFound => return Err(ApiError::no_job(&id)),
        CancelOutcome::Finished(s) => {
            return Err(ApiError::CannotCancel { job_id: id, status: s.to_string() });
        }
        // A queued job is cancelled at once. A running one is asked to stop: its worker sees
        // the request at its next heartbeat, finishes the iteration, checkpoints and ends as
        // `cancelled` (status, WebSocket and the `training.job.cancelled` webhook say when); the
        // answer does not wait for that.
        CancelOutcome::Cancelled | CancelOutcome::Requested => {}
    }
    let job = owned_job(state, caller, &id).await?;
    let checkpoints = state.store.checkpoints(&id).await?;
    let latest = checkpoints.iter().filter(|c| !c.deleted).max_by_key(|c| c.iteration);
    Ok(CancelResult {
        job_id: id,
        status: if job.status == JobStatus::Running {
            "cancelling".into()
        } else {
            job.status.to_string()
        },
        cancelled_at: job.finished_at.clone().unwrap_or_else(|| chrono::Utc::now().to_rfc3339()),
        iterations_completed: job.iterations_completed,
        checkpoint_saved: latest.is_some(),
        checkpoint_id: latest.map(|c| c.id.clone()),
    })
}
