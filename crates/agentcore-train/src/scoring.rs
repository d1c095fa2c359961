//! Phase 2 of an iteration: the verifier judges each trajectory against its task's expected
//! outcome, the job's reward function scores it, and each group's rewards become group-relative
//! advantages (the config's estimator and scaling).

use agentcore_agent::trajectory::Trajectory;
use agentcore_grpo::advantages::group_advantages;
use agentcore_tasks::Task;
use agentcore_tasks::judge::RewardInput;

use crate::TrainError;
use crate::evaluate::Evaluator;
use crate::settings::JobSettings;

/// Verdicts, rewards and advantages of one iteration's trajectories (flat, group after group).
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// Whether the verifier accepted each trajectory.
    pub passed: Vec<bool>,
    /// Each trajectory's reward.
    pub rewards: Vec<f64>,
    /// Each trajectory's advantage within its group.
    pub advantages: Vec<f64>,
    /// Share of groups whose rewards were all equal (no learning signal).
    pub frac_reward_zero_std: f64,
}

/// Scores `trajectories` (group `g` answers `tasks[g]`).
///
/// # Errors
/// A reward function that fails, advantages of malformed groups.
pub fn score(
    settings: &JobSettings,
    evaluator: &Evaluator<'_>,
    tasks: &[&Task],
    trajectories: &[Trajectory],
) -> Result<Scores, TrainError> {
    let config = &settings.config;
    let group = config.n_trajectories_per_query as usize;
    let max_steps = config.max_steps_per_trajectory;
    let mut rewards = Vec::with_capacity(trajectories.len());
    let mut passed = Vec::with_capacity(trajectories.len());
    for (k, tr) in trajectories.iter().enumerate() {
        let task = tasks[k / group];
        let verdict = evaluator.verifiers().verify(task, tr);
        let r = evaluator
            .rewards()
            .reward(
                settings.agent_type(),
                &RewardInput { task, trajectory: tr, verdict: &verdict, max_steps },
            )
            .map_err(|e| TrainError::Reward(e.to_string()))?;
        passed.push(verdict.passed);
        rewards.push(r);
    }
    let grouped: Vec<Vec<f64>> = rewards.chunks(group).map(<[f64]>::to_vec).collect();
    let adv = group_advantages(&grouped, config.advantage_estimator, config.scale_rewards)?;
    Ok(Scores {
        passed,
        rewards,
        advantages: adv.advantages.into_iter().flatten().collect(),
        frac_reward_zero_std: adv.frac_reward_zero_std,
    })
}
