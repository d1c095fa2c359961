//! `agentcore eval`: the agent before training (the warm-started model) and a checkpoint of the
//! job on the same evaluation queries, paired: success rates with Wilson intervals, McNemar's
//! exact test, the mean reward difference with a paired t-test and a bootstrap interval, steps
//! and tool accuracy.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_grpo::stats::{PairedComparison, SIGNIFICANCE_LEVEL, compare_paired};
use agentcore_tasks::Task;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::TrainError;
use crate::checkpoints::{self, best_checkpoint};
use crate::defaults::EVAL_BOOTSTRAP_RESAMPLES;
use crate::evaluate::{EvalOutcome, Evaluator};
use crate::policy;
use crate::settings::read_job_settings;

/// Aggregates of one agent on the evaluation queries (the contract's `metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalMetrics {
    /// Share verified.
    pub success_rate: f64,
    /// Mean outcome reward.
    pub avg_reward: f64,
    /// Mean agent steps.
    pub avg_steps: f64,
    /// Share of tool calls without error.
    pub tool_accuracy: f64,
}

/// The result of `agentcore eval`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The job.
    pub job_id: String,
    /// The checkpoint evaluated.
    pub checkpoint_id: String,
    /// Its iteration.
    pub iteration: u32,
    /// The checkpoint.
    pub metrics: EvalMetrics,
    /// The agent before training.
    pub baseline_metrics: EvalMetrics,
    /// Paired comparison (McNemar on success; paired t-test and bootstrap on reward).
    pub baseline_comparison: PairedComparison,
    /// p < 0.05.
    pub statistically_significant: bool,
    /// Queries evaluated.
    pub queries_evaluated: usize,
    /// Where they came from.
    pub queries_source: String,
    /// Wall time of the evaluation.
    pub evaluation_duration_ms: u64,
}

fn metrics(outcomes: &[EvalOutcome]) -> EvalMetrics {
    let n = outcomes.len().max(1) as f64;
    let calls: u32 = outcomes.iter().map(|o| o.tool_calls).sum();
    let ok: u32 = outcomes.iter().map(|o| o.successful_tool_calls).sum();
    EvalMetrics {
        success_rate: outcomes.iter().filter(|o| o.passed).count() as f64 / n,
        avg_reward: outcomes.iter().map(|o| o.reward).sum::<f64>() / n,
        avg_steps: outcomes.iter().map(|o| o.steps as f64).sum::<f64>() / n,
        tool_accuracy: if calls == 0 { 0.0 } else { f64::from(ok) / f64::from(calls) },
    }
}

/// Evaluates `checkpoint_id` (default: the job's best) against the warm-started agent on
/// `tasks` (default: the job's held-out split).
///
/// # Errors
/// No such job ([`TrainError::NoSuchJob`]) or checkpoint ([`TrainError::NoSuchCheckpoint`]),
/// model errors.
pub fn compare(
    data_dir: &Path,
    job_id: &str,
    checkpoint_id: Option<&str>,
    tasks: Option<Vec<Task>>,
    sandbox: &Arc<PythonSandbox>,
) -> Result<EvalReport, TrainError> {
    let started = Instant::now();
    let settings = read_job_settings(data_dir, job_id)?;
    let checkpoints = checkpoints::list(data_dir, job_id)?;
    let no_such = |checkpoint_id: Option<&str>| TrainError::NoSuchCheckpoint {
        job_id: job_id.to_string(),
        checkpoint_id: checkpoint_id.map(String::from),
        kept: checkpoints.iter().map(|c| c.checkpoint_id.clone()).collect(),
    };
    let chosen = match checkpoint_id {
        Some(id) => {
            checkpoints.iter().find(|c| c.checkpoint_id == id).ok_or_else(|| no_such(Some(id)))?
        }
        None => {
            best_checkpoint(&checkpoints).or(checkpoints.last()).ok_or_else(|| no_such(None))?
        }
    };
    let (tasks, source) = match tasks {
        Some(t) if t.is_empty() => {
            return Err(TrainError::InvalidData("the evaluation data holds no tasks".into()));
        }
        Some(t) => (t, "file".to_string()),
        None => (settings.tasks()?.1, "the job's held-out split".to_string()),
    };
    let evaluator = Evaluator::new(&settings, sandbox)?;
    let (base, _) =
        policy::initial(
            &settings,
            data_dir,
            sandbox,
            &mut |_| std::ops::ControlFlow::Continue(()),
        )?;
    let baseline = evaluator.evaluate(base.as_ref(), &tasks)?;
    drop(base);
    checkpoints::verify(&chosen.path)
        .map_err(|message| TrainError::CorruptState { path: chosen.path.clone(), message })?;
    let (trained, _) = policy::from_checkpoint(&settings, &chosen.path)?;
    let outcomes = evaluator.evaluate(trained.as_ref(), &tasks)?;
    let pass = |xs: &[EvalOutcome]| xs.iter().map(|o| o.passed).collect::<Vec<_>>();
    let reward = |xs: &[EvalOutcome]| xs.iter().map(|o| o.reward).collect::<Vec<_>>();
    let mut rng = ChaCha8Rng::seed_from_u64(settings.config.seed);
    let comparison = compare_paired(
        &pass(&baseline),
        &pass(&outcomes),
        &reward(&baseline),
        &reward(&outcomes),
        EVAL_BOOTSTRAP_RESAMPLES,
        &mut rng,
    )?;
    Ok(EvalReport {
        job_id: job_id.to_string(),
        checkpoint_id: chosen.checkpoint_id.clone(),
        iteration: chosen.iteration,
        metrics: metrics(&outcomes),
        baseline_metrics: metrics(&baseline),
        statistically_significant: comparison.p_value < SIGNIFICANCE_LEVEL,
        baseline_comparison: comparison,
        queries_evaluated: tasks.len(),
        queries_source: source,
        evaluation_duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The report as a table.
#[must_use]
pub fn text(r: &EvalReport) -> String {
    let c = &r.baseline_comparison;
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    format!(
        "job {} checkpoint {} (iteration {}) on {} queries ({})\n\n\
         {:<14} {:>10} {:>10}\n\
         {:<14} {:>10} {:>10}\n{:<14} {:>10} {:>10}\n{:<14} {:>10.2} {:>10.2}\n{:<14} {:>10.3} {:>10.3}\n{:<14} {:>10} {:>10}\n\n\
         success: {:+.1} points, McNemar exact p = {:.3e} ({} improved, {} regressed), 95% CI [{:+.1}, {:+.1}] points\n\
         reward: {:+.3}, paired t-test p = {}, bootstrap 95% CI [{:+.3}, {:+.3}]\n\
         statistically significant (p < 0.05): {}\n",
        r.job_id,
        r.checkpoint_id,
        r.iteration,
        r.queries_evaluated,
        r.queries_source,
        "",
        "baseline",
        "checkpoint",
        "success rate",
        pct(r.baseline_metrics.success_rate),
        pct(r.metrics.success_rate),
        "Wilson 95%",
        format!(
            "{:.0}-{:.0}",
            c.baseline_success_interval.low * 100.0,
            c.baseline_success_interval.high * 100.0
        ),
        format!(
            "{:.0}-{:.0}",
            c.trained_success_interval.low * 100.0,
            c.trained_success_interval.high * 100.0
        ),
        "avg steps",
        r.baseline_metrics.avg_steps,
        r.metrics.avg_steps,
        "avg reward",
        r.baseline_metrics.avg_reward,
        r.metrics.avg_reward,
        "tool accuracy",
        pct(r.baseline_metrics.tool_accuracy),
        pct(r.metrics.tool_accuracy),
        c.success_rate_improvement * 100.0,
        c.mcnemar.p_value,
        c.mcnemar.treatment_only,
        c.mcnemar.baseline_only,
        c.confidence_interval.low * 100.0,
        c.confidence_interval.high * 100.0,
        c.avg_reward_improvement,
        c.reward_t_test.map_or("n/a".to_string(), |t| format!("{:.3e}", t.p_value)),
        c.reward_confidence_interval.low,
        c.reward_confidence_interval.high,
        r.statistically_significant,
    )
}
