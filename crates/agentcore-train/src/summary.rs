//! The end of a job: the final policy against the baseline on the same held-out queries
//! (Wilson intervals, McNemar's exact test, per-family rates) and the best checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use agentcore_grpo::stats::{mcnemar_exact, wilson_interval};
use agentcore_tasks::Task;
use rust_decimal::Decimal;

use crate::TrainError;
use crate::checkpoints::{JobState, best_checkpoint};
use crate::evaluate::rate;
use crate::events::{StopReason, Summary};

/// Everything of the summary that is not a statistic of the held-out results.
pub struct SummaryInputs<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The agent.
    pub agent_id: String,
    /// The policy's description.
    pub policy: String,
    /// Training tasks.
    pub train_queries: usize,
    /// Wall time of the whole job.
    pub wall_seconds: f64,
    /// Dollars spent.
    pub cost_usd: Decimal,
    /// The budget.
    pub budget_usd: Decimal,
    /// The run directory.
    pub run_dir: &'a Path,
    /// Whether the job's policy has a warm start ([`crate::settings::JobSettings::warm_starts`]):
    /// one without reports none, also from a checkpoint of an older version, which recorded its
    /// initial policy as "cached".
    pub warm_starts: bool,
}

/// The summary of a job whose held-out `eval` tasks the baseline and the final policy answered
/// as `baseline` and `final_results`.
///
/// # Errors
/// Results of different lengths.
pub fn summarize(
    inputs: SummaryInputs<'_>,
    state: &JobState,
    eval: &[Task],
    final_results: &[bool],
) -> Result<Summary, TrainError> {
    let baseline = &state.baseline;
    let mcnemar = mcnemar_exact(baseline, final_results)?;
    let count = |xs: &[bool]| xs.iter().filter(|&&x| x).count() as u64;
    let wilson = |xs: &[bool]| -> Result<(f64, f64), TrainError> {
        let w = wilson_interval(count(xs), xs.len() as u64, 0.95)?;
        Ok((w.low, w.high))
    };
    let mut families: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for ((t, &b), &f) in eval.iter().zip(baseline).zip(final_results) {
        let family = t.metadata.as_ref().map_or_else(String::new, |m| m.family.clone());
        let e = families.entry(family).or_default();
        e.0 += f64::from(u8::from(b));
        e.1 += f64::from(u8::from(f));
        e.2 += 1.0;
    }
    let per_family = families.into_iter().map(|(k, (b, f, n))| (k, (b / n, f / n))).collect();
    let best = best_checkpoint(&state.checkpoints);
    Ok(Summary {
        job_id: inputs.job_id.to_string(),
        agent_id: inputs.agent_id,
        policy: inputs.policy,
        baseline_success_rate: rate(baseline),
        final_success_rate: rate(final_results),
        baseline_interval: wilson(baseline)?,
        final_interval: wilson(final_results)?,
        p_value: mcnemar.p_value,
        mcnemar,
        eval_queries: eval.len(),
        train_queries: inputs.train_queries,
        iterations: state.iteration,
        stop_reason: state.stop_reason.unwrap_or(StopReason::Completed),
        wall_seconds: inputs.wall_seconds,
        warm_start_seconds: state.warm_start_seconds,
        warm_start_cached: state.warm_start_cached && inputs.warm_starts,
        cost_usd: inputs.cost_usd,
        budget_usd: inputs.budget_usd,
        best_checkpoint_id: best.map(|c| c.checkpoint_id.clone()),
        best_eval_success_rate: best.and_then(|c| c.eval_success_rate),
        per_family,
        run_dir: inputs.run_dir.to_path_buf(),
    })
}
