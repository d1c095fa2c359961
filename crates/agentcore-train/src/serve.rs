//! Serving a checkpoint: the policy of one checkpoint of a job, loaded once, answers queries
//! as it was evaluated (greedy, the job's tools, limits and system prompt; a prompt policy's
//! rendering per query), in batches; an answer with an expected outcome is verified and
//! rewarded by the job's own verifier and reward. The server's `agents.invoke` keeps one
//! [`Served`] per deployed checkpoint on its own thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use agentcore_agent::rollout::run_batch_with;
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::Trajectory;
use agentcore_tasks::Task;
use agentcore_tasks::judge::{RewardInput, RewardRegistry, Verifiers};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::TrainError;
use crate::cost::usd;
use crate::policy::{self, Policy};
use crate::settings::{JobSettings, read_job_settings};

/// One query to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeRequest {
    /// The query.
    pub query: String,
    /// What a correct run produces (then the answer is verified).
    pub expected_outcome: Option<Map<String, Value>>,
}

/// One answered query.
#[derive(Debug, Clone)]
pub struct ServeOutcome {
    /// The run.
    pub trajectory: Trajectory,
    /// The verifier's verdict (with an expected outcome).
    pub passed: Option<bool>,
    /// The job's reward (with an expected outcome).
    pub reward: Option<f64>,
    /// This query's share of the batch's machine time at the job's price, plus its API spend.
    pub cost_usd: Decimal,
}

/// A checkpoint's policy, ready to answer.
pub struct Served {
    settings: JobSettings,
    policy: Box<dyn Policy>,
    sandbox: Arc<PythonSandbox>,
    verifiers: Verifiers,
    rewards: RewardRegistry,
}

impl Served {
    /// Loads the checkpoint in `dir` of job `job_id` (its manifest is verified first).
    ///
    /// # Errors
    /// No such job, a corrupt checkpoint, model errors.
    pub fn load(
        data_dir: &Path,
        job_id: &str,
        dir: &Path,
        sandbox: Arc<PythonSandbox>,
    ) -> Result<Self, TrainError> {
        let settings = read_job_settings(data_dir, job_id)?;
        crate::checkpoints::verify(dir)
            .map_err(|message| TrainError::CorruptState { path: dir.to_path_buf(), message })?;
        let (policy, _) = policy::from_checkpoint(&settings, dir)?;
        let rewards = settings.rewards()?;
        let verifiers = Verifiers { sandbox: Some(Arc::clone(&sandbox)), ..Verifiers::default() };
        Ok(Self { settings, policy, sandbox, verifiers, rewards })
    }

    /// What is served.
    #[must_use]
    pub fn describe(&self) -> String {
        self.policy.describe()
    }

    /// Answers `requests` in one batch; outcome `i` answers `requests[i]`. Model and tool
    /// failures are recorded in the trajectories.
    ///
    /// # Errors
    /// The backend cannot run, a reward fails.
    pub fn answer(&self, requests: &[ServeRequest]) -> Result<Vec<ServeOutcome>, TrainError> {
        let started = Instant::now();
        let backend = self.policy.backend()?;
        let rt = self.settings.runtime(&self.sandbox, self.settings.eval_sampling());
        // Greedy decoding draws nothing; the RNG is there for the loop's signature.
        let mut rng = ChaCha8Rng::seed_from_u64(self.settings.config.seed);
        let queries: Vec<String> = requests.iter().map(|r| r.query.clone()).collect();
        let contexts = self.policy.contexts(&queries, false, &mut rng);
        let trajectories =
            run_batch_with(&rt, backend.as_ref(), &queries, contexts.as_deref(), &mut rng);
        let share = started.elapsed().as_secs_f64() / requests.len().max(1) as f64;
        let machine = usd(share, self.settings.price_per_hour_usd);
        let max_steps = self.settings.config.max_steps_per_trajectory;
        let mut out = Vec::with_capacity(requests.len());
        for (r, trajectory) in requests.iter().zip(trajectories) {
            let (passed, reward) = match &r.expected_outcome {
                None => (None, None),
                Some(expected) => {
                    let task = Task {
                        query: r.query.clone(),
                        expected_outcome: expected.clone(),
                        metadata: None,
                    };
                    let verdict = self.verifiers.verify(&task, &trajectory);
                    let reward = self
                        .rewards
                        .reward(
                            self.settings.agent_type(),
                            &RewardInput {
                                task: &task,
                                trajectory: &trajectory,
                                verdict: &verdict,
                                max_steps,
                            },
                        )
                        .map_err(|e| TrainError::Reward(e.to_string()))?;
                    (Some(verdict.passed), Some(reward))
                }
            };
            let cost_usd = machine + trajectory.cost_usd;
            out.push(ServeOutcome { trajectory, passed, reward, cost_usd });
        }
        Ok(out)
    }
}
