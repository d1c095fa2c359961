//! The GRPO job: a new one, or the continuation of an interrupted one from its last complete
//! checkpoint. It does not know which kind of policy it trains ([`crate::policy`]).
//!
//! A job lives in `<data_dir>/runs/<job_id>/`: `job.json` (its settings), `checkpoints/ckpt-NNNNN/`
//! (the policy's files and `job_state.json`), and at the end `report.md` and the learning curves
//! (written by [`crate::report`]). The loop, between start and end:
//! budget check → [`crate::iteration::run_iteration`] (rollout, scoring, update, metrics) →
//! cancellation → held-out evaluation every `eval_interval` (early stopping) → budget events →
//! checkpoint every `checkpoint_interval`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_artifacts::Artifacts;
use agentcore_grpo::budget::Budget;
use rust_decimal::Decimal;

use crate::TrainError;
use crate::checkpoints::{self, JobState};
use crate::cost::{next_iteration_seconds, usd};
use crate::defaults::JOB_FILE;
use crate::evaluate::{EvalOutcome, Evaluator, passed, rate};
use crate::events::{Event, StopReason, Summary};
use crate::faults::FaultPoint;
use crate::iteration::run_iteration;
use crate::policy::Policy;
use crate::resume::{Start, prepare_run_dir, start};
use crate::settings::{JobSettings, run_dir};
use crate::summary::{SummaryInputs, summarize};

/// Where and as what the job runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The data directory (warm-start cache, `runs/`).
    pub data_dir: PathBuf,
    /// The job's id (a UUID for new jobs).
    pub job_id: String,
    /// Set to stop after the current iteration with a checkpoint (Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Faults a test injects (none in production).
    pub faults: crate::faults::Faults,
    /// Where checkpoints and reports go beyond this machine ([`Artifacts::local`]: nowhere).
    /// The caller brings the run directory up to date from it before [`run`]
    /// ([`crate::sync::restore_run`]).
    pub artifacts: Arc<Artifacts>,
    /// When set, the only checkpoints (by iteration) the job may continue from: those the job
    /// store records (a queue worker's takeover; a checkpoint a stale worker wrote after losing
    /// its lease is not among them). `None`: any complete checkpoint (the CLI).
    pub recorded_checkpoints: Option<Vec<u32>>,
}

impl JobContext {
    /// The run directory of the job.
    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.data_dir, &self.job_id)
    }

    /// Saves the checkpoint of `state.iteration` with this job's faults and artifact store.
    fn checkpoint(
        &self,
        run_dir: &std::path::Path,
        policy: &dyn crate::policy::Policy,
        rng: &rand_chacha::ChaCha8Rng,
        state: &mut JobState,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<(), TrainError> {
        checkpoints::save_with(
            run_dir,
            &self.job_id,
            policy,
            rng,
            state,
            on_event,
            &self.faults,
            &self.artifacts,
        )
    }
}

/// Records a held-out evaluation in the state: the best so far, early stopping.
fn record_eval(settings: &JobSettings, state: &mut JobState, iteration: u32, success: f64) {
    state.evals.push((iteration, success));
    if state.best_eval.is_none_or(|b| success > b) {
        state.best_eval = Some(success);
        state.evals_since_best = 0;
    } else {
        state.evals_since_best += 1;
        if settings.config.early_stopping_patience.is_some_and(|p| state.evals_since_best >= p) {
            state.stop_reason = Some(StopReason::EarlyStopped);
        }
    }
}

/// Runs the job: a new one, or (when its run directory has a checkpoint) the continuation of an
/// interrupted one from its last complete checkpoint; with the same settings both give the same
/// policy.
///
/// # Errors
/// Bad settings (before any work), model errors, file errors.
pub fn run(
    settings: &JobSettings,
    ctx: &JobContext,
    sandbox: Arc<PythonSandbox>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let problems = settings.violations();
    if !problems.is_empty() {
        return Err(TrainError::Settings { problems });
    }
    let config = &settings.config;
    let (train, eval) = settings.tasks()?;
    let run_dir = prepare_run_dir(settings, &ctx.data_dir, &ctx.job_id)?;
    crate::sync::publish_run_files(&ctx.artifacts, &ctx.data_dir, &ctx.job_id, &[JOB_FILE])?;
    let evaluator = Evaluator::new(settings, &sandbox)?;
    let mut trackers = crate::tracking::Trackers::open(settings, &run_dir, &ctx.job_id)?;
    let on_event = &mut |e: &Event| {
        trackers.observe(e);
        on_event(e);
    };
    let Start { mut policy, mut rng, mut state, resumed_from } =
        start(settings, ctx, &run_dir, &sandbox, on_event)?;
    tracing::info!(job_id = %ctx.job_id, resumed_from, policy = %policy.describe(), "job started");
    on_event(&Event::Started {
        job_id: ctx.job_id.clone(),
        run_dir: run_dir.clone(),
        resumed_from,
        total_iterations: config.n_iterations,
        settings: Box::new(settings.clone()),
    });
    let wall_before = state.wall_seconds;
    let wall = |started: &Instant| wall_before + started.elapsed().as_secs_f64();
    let spent = |seconds: f64, api: Decimal| usd(seconds, settings.price_per_hour_usd) + api;
    // Held-out evaluations spend like rollouts (an API agent's tokens): their cost counts.
    let evaluate =
        |policy: &dyn Policy, state: &mut JobState| -> Result<Vec<EvalOutcome>, TrainError> {
            let outcomes = evaluator.evaluate(policy, &eval)?;
            state.api_cost_usd += crate::evaluate::cost(&outcomes) + policy.take_api_cost();
            Ok(outcomes)
        };
    if state.baseline.is_empty() {
        state.baseline = passed(&evaluate(policy.as_ref(), &mut state)?);
    }
    on_event(&Event::Baseline { success_rate: rate(&state.baseline), eval_queries: eval.len() });

    let mut budget = Budget::with_spent(
        config.max_budget_usd,
        spent(wall(&started), state.api_cost_usd).min(config.max_budget_usd),
    )?;
    let mut last_eval: Option<(u32, Vec<EvalOutcome>)> = None;
    while state.stop_reason.is_none() && state.iteration < config.n_iterations {
        // Budget: the next iteration must fit (estimated from the mean iteration so far).
        let next = usd(next_iteration_seconds(&state.history), settings.price_per_hour_usd);
        if spent(wall(&started), state.api_cost_usd) + next > config.max_budget_usd {
            state.stop_reason = Some(StopReason::BudgetExhausted);
            break;
        }
        let iteration = state.iteration + 1;
        let span = tracing::info_span!("iteration", job_id = %ctx.job_id, iteration);
        let _entered = span.enter();
        let out = run_iteration(
            iteration,
            settings,
            policy.as_mut(),
            &evaluator,
            &sandbox,
            &train,
            &mut rng,
            &ctx.faults,
        )?;
        state.api_cost_usd += out.api_cost_usd;
        on_event(&Event::Rollouts { iteration, records: out.records });
        state.iteration = iteration;
        crate::faults::await_own_sigterm(iteration, &ctx.stop);
        if ctx.stop.load(Ordering::SeqCst) {
            state.stop_reason = Some(StopReason::Cancelled);
        }
        let last = iteration == config.n_iterations || state.stop_reason.is_some();
        let mut metrics = out.metrics;
        if iteration % config.eval_interval.max(1) == 0 || last {
            let outcomes = evaluate(policy.as_ref(), &mut state)?;
            let e = rate(&passed(&outcomes));
            last_eval = Some((iteration, outcomes));
            record_eval(settings, &mut state, iteration, e);
            metrics.eval_success_rate = Some(e);
            ctx.faults.hit(FaultPoint::Evaluation, iteration)?;
        }
        metrics.cost_usd = spent(wall(&started), state.api_cost_usd);
        let update = budget.record((metrics.cost_usd - budget.spent()).max(Decimal::ZERO))?;
        for crossed in update.crossed {
            on_event(&Event::Budget {
                state: crossed,
                spent_usd: metrics.cost_usd,
                budget_usd: config.max_budget_usd,
            });
        }
        tracing::debug!(
            success_rate = metrics.success_rate,
            avg_reward = metrics.avg_reward,
            loss = metrics.train_loss,
            "iteration done"
        );
        state.history.push(metrics.clone());
        ctx.faults.hit(FaultPoint::Record, iteration)?;
        on_event(&Event::Iteration(metrics));
        if state.stop_reason.is_some() || last || iteration % config.checkpoint_interval == 0 {
            state.wall_seconds = wall(&started);
            ctx.checkpoint(&run_dir, policy.as_ref(), &rng, &mut state, on_event)?;
        }
    }
    if state.stop_reason == Some(StopReason::BudgetExhausted) {
        // Stopped before an iteration: the last iteration's state may not be saved yet.
        state.wall_seconds = wall(&started);
        ctx.checkpoint(&run_dir, policy.as_ref(), &rng, &mut state, on_event)?;
    }
    let final_outcomes = match last_eval {
        Some((i, outcomes)) if i == state.iteration => outcomes,
        _ => evaluate(policy.as_ref(), &mut state)?,
    };
    let wall_seconds = wall(&started);
    let summary = summarize(
        SummaryInputs {
            job_id: &ctx.job_id,
            agent_id: settings.agent_id(),
            policy: policy.describe(),
            train_queries: train.len(),
            wall_seconds,
            cost_usd: spent(wall_seconds, state.api_cost_usd),
            budget_usd: config.max_budget_usd,
            run_dir: &run_dir,
            warm_starts: settings.warm_starts(),
        },
        &state,
        &eval,
        &passed(&final_outcomes),
    )?;
    crate::report::write(&run_dir, settings, &summary, &state.history, &state.evals)?;
    crate::sync::publish_run_files(
        &ctx.artifacts,
        &ctx.data_dir,
        &ctx.job_id,
        crate::report::FILES,
    )?;
    tracing::info!(job_id = %ctx.job_id, stop_reason = summary.stop_reason.as_str(),
        baseline = summary.baseline_success_rate, final_success = summary.final_success_rate,
        p_value = summary.p_value, "job finished");
    on_event(&Event::Done(Box::new(summary.clone())));
    Ok(summary)
}
