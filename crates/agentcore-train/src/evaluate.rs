//! Held-out evaluation inside a job (the baseline, every `eval_interval`, the end) and in
//! `agentcore eval`: the policy answers each query greedily under the job's own limits, the
//! verifier judges it, and the job's reward registry scores it.

use std::sync::Arc;

use agentcore_agent::rollout::run_batch_with;
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_tasks::Task;
use agentcore_tasks::judge::{RewardInput, RewardRegistry, Verifiers};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::TrainError;
use crate::defaults::EVAL_BATCH_QUERIES;
use crate::policy::Policy;
use crate::settings::JobSettings;

/// One evaluated query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalOutcome {
    /// The verifier accepted the answer.
    pub passed: bool,
    /// The job's reward.
    pub reward: f64,
    /// Agent steps taken.
    pub steps: usize,
    /// Tool calls.
    pub tool_calls: u32,
    /// Tool calls without error.
    pub successful_tool_calls: u32,
    /// What the trajectory's API turns cost (zero for in-process models).
    pub cost_usd: rust_decimal::Decimal,
}

/// What an evaluation's trajectories cost.
#[must_use]
pub fn cost(xs: &[EvalOutcome]) -> rust_decimal::Decimal {
    xs.iter().map(|o| o.cost_usd).sum()
}

/// What an evaluation needs besides the policy and the tasks, built once per job.
pub struct Evaluator<'a> {
    settings: &'a JobSettings,
    sandbox: Arc<PythonSandbox>,
    verifiers: Verifiers,
    rewards: RewardRegistry,
}

impl<'a> Evaluator<'a> {
    /// The evaluator of a job: its tool sandbox, verifiers and rewards.
    ///
    /// # Errors
    /// An unknown reward.
    pub fn new(
        settings: &'a JobSettings,
        sandbox: &Arc<PythonSandbox>,
    ) -> Result<Self, TrainError> {
        Ok(Self {
            settings,
            sandbox: Arc::clone(sandbox),
            verifiers: Verifiers { sandbox: Some(Arc::clone(sandbox)), ..Verifiers::default() },
            rewards: settings.rewards()?,
        })
    }

    /// The verifiers.
    #[must_use]
    pub fn verifiers(&self) -> &Verifiers {
        &self.verifiers
    }

    /// The job's reward registry.
    #[must_use]
    pub fn rewards(&self) -> &RewardRegistry {
        &self.rewards
    }

    /// Greedy evaluation of `tasks` by `policy`.
    ///
    /// # Errors
    /// Backend or reward errors.
    pub fn evaluate(
        &self,
        policy: &dyn Policy,
        tasks: &[Task],
    ) -> Result<Vec<EvalOutcome>, TrainError> {
        let backend = policy.backend()?;
        let rt = self.settings.runtime(&self.sandbox, self.settings.eval_sampling());
        let max_steps = self.settings.config.max_steps_per_trajectory;
        // Greedy decoding draws nothing; the RNG is there for the loop's signature.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut out = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(EVAL_BATCH_QUERIES) {
            let queries: Vec<String> = chunk.iter().map(|t| t.query.clone()).collect();
            let contexts = policy.contexts(&queries, false, &mut rng);
            let trajs =
                run_batch_with(&rt, backend.as_ref(), &queries, contexts.as_deref(), &mut rng);
            for (t, tr) in chunk.iter().zip(&trajs) {
                let verdict = self.verifiers.verify(t, tr);
                let reward = self
                    .rewards
                    .reward(
                        self.settings.agent_type(),
                        &RewardInput { task: t, trajectory: tr, verdict: &verdict, max_steps },
                    )
                    .map_err(|e| TrainError::Reward(e.to_string()))?;
                out.push(EvalOutcome {
                    passed: verdict.passed,
                    reward,
                    steps: tr.steps.len(),
                    tool_calls: tr.tool_calls,
                    successful_tool_calls: tr.successful_tool_calls,
                    cost_usd: tr.cost_usd,
                });
            }
        }
        Ok(out)
    }
}

/// Which queries passed.
#[must_use]
pub fn passed(xs: &[EvalOutcome]) -> Vec<bool> {
    xs.iter().map(|o| o.passed).collect()
}

/// The share of `true`.
#[must_use]
pub fn rate(xs: &[bool]) -> f64 {
    xs.iter().filter(|&&x| x).count() as f64 / xs.len().max(1) as f64
}
