//! One GRPO iteration, phase by phase:
//! 1. [`crate::rollout`]: sample tasks, roll out a group per task;
//! 2. [`crate::scoring`]: verify, reward, group advantages;
//! 3. [`crate::policy::Policy::update`]: the policy learns from the scored batch;
//! 4. [`metrics`]: what the iteration measured (TRL's names and the guide's).
//!
//! Evaluation, the budget and checkpoints happen between iterations, in [`crate::job`].

use std::sync::Arc;
use std::time::Instant;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::Trajectory;
use agentcore_tasks::Task;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

use crate::TrainError;
use crate::evaluate::Evaluator;
use crate::events::{IterationMetrics, RolloutRecord};
use crate::faults::{FaultPoint, Faults};
use crate::policy::{Policy, ScoredBatch, UpdateStats};
use crate::rollout::{roll_out, sample_tasks};
use crate::scoring::{Scores, score};
use crate::settings::JobSettings;

/// What an iteration produced.
#[derive(Debug)]
pub struct IterationOutput {
    /// Its metrics (`eval_success_rate` and `cost_usd` are the job's to fill in).
    pub metrics: IterationMetrics,
    /// Its trajectories with verdicts, rewards and advantages.
    pub records: Vec<RolloutRecord>,
    /// What the rollouts cost at API prices.
    pub api_cost_usd: Decimal,
}

/// Runs iteration `iteration` (1-based).
///
/// # Errors
/// Backend, reward or update errors.
#[expect(
    clippy::too_many_arguments,
    reason = "the iteration's inputs, each used once; a struct would only rename them"
)]
pub fn run_iteration(
    iteration: u32,
    settings: &JobSettings,
    policy: &mut dyn Policy,
    evaluator: &Evaluator<'_>,
    sandbox: &Arc<PythonSandbox>,
    train: &[Task],
    rng: &mut ChaCha8Rng,
    faults: &Faults,
) -> Result<IterationOutput, TrainError> {
    let t0 = Instant::now();
    let tasks = sample_tasks(settings, train, rng);
    let trajectories = roll_out(settings, policy, sandbox, &tasks, rng)?;
    faults.hit(FaultPoint::Rollout, iteration)?;
    let rollout_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let scores = score(settings, evaluator, &tasks, &trajectories)?;
    let group_size = settings.config.n_trajectories_per_query as usize;
    let stats = policy.update(&ScoredBatch {
        iteration,
        tasks: &tasks,
        group_size,
        trajectories: &trajectories,
        rewards: &scores.rewards,
        advantages: &scores.advantages,
        passed: &scores.passed,
    })?;
    faults.hit(FaultPoint::Update, iteration)?;
    let update_seconds = t1.elapsed().as_secs_f64();

    let metrics =
        metrics(iteration, &trajectories, &scores, &stats, rollout_seconds, update_seconds);
    let api_cost_usd =
        trajectories.iter().map(|t| t.cost_usd).sum::<Decimal>() + stats.api_cost_usd;
    let records = trajectories
        .into_iter()
        .enumerate()
        .map(|(k, trajectory)| RolloutRecord {
            query_index: k / group_size,
            sample_index: k % group_size,
            expected_outcome: serde_json::Value::Object(
                tasks[k / group_size].expected_outcome.clone(),
            ),
            success: scores.passed[k],
            reward: scores.rewards[k],
            advantage: scores.advantages[k],
            trajectory,
        })
        .collect();
    Ok(IterationOutput { metrics, records, api_cost_usd })
}

/// The metrics of an iteration from its trajectories, scores and update.
#[must_use]
pub fn metrics(
    iteration: u32,
    trajectories: &[Trajectory],
    scores: &Scores,
    stats: &UpdateStats,
    rollout_seconds: f64,
    update_seconds: f64,
) -> IterationMetrics {
    let rewards = &scores.rewards;
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    // Sampled tokens: the token trace of in-process models, the endpoint's usage otherwise.
    let sampled: usize = trajectories
        .iter()
        .map(|t| t.tokens.as_ref().map_or(t.usage.output_tokens as usize, |t| t.sampled_len()))
        .sum();
    let (calls, ok_calls) = trajectories
        .iter()
        .fold((0u32, 0u32), |(a, b), t| (a + t.tool_calls, b + t.successful_tool_calls));
    let successes = scores.passed.iter().filter(|&&p| p).count();
    IterationMetrics {
        iteration,
        train_loss: stats.loss,
        avg_reward: mean,
        reward_std: std,
        frac_reward_zero_std: scores.frac_reward_zero_std,
        success_rate: successes as f64 / n,
        kl: stats.kl,
        clip_ratio: stats.clip_ratio,
        mean_length: sampled as f64 / n,
        tool_accuracy: if calls == 0 { 0.0 } else { f64::from(ok_calls) / f64::from(calls) },
        grad_norm: stats.grad_norm,
        rollout_tokens_per_s: sampled as f64 / rollout_seconds.max(1e-9),
        rollout_seconds,
        update_seconds,
        eval_success_rate: None,
        cost_usd: Decimal::ZERO,
        prompt: stats.prompt,
    }
}
