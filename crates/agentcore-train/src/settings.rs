//! A job's settings (`job.json` of its run directory), their validation, and what follows from
//! them: the agent's id, its train and held-out tasks, its rollout runtime and its rewards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentcore_agent::backend::{OpenAiSettings, Sampling};
use agentcore_agent::definition::PromptPolicySettings;
use agentcore_agent::rollout::{AgentRuntime, CallFormat};
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::tools::{PythonTool, Toolbox};
use agentcore_grpo::GRPOConfig;
use agentcore_model::decoder::LoraConfig;
use agentcore_tasks::Task;
use agentcore_tasks::judge::RewardRegistry;
use agentcore_tasks::seed::{self, SplitSpec};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::defaults;
use crate::tasks::seed_tasks;
use crate::tracking::{MlflowSettings, ReportTo};
use crate::warmstart::WarmStartSettings;

/// Everything the job needs: saved as `job.json` in the run directory, so `--resume` runs the
/// same job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSettings {
    /// The GRPO config (iterations, batch, group size, learning rate, sampling, loss, seed ...).
    pub config: GRPOConfig,
    /// The warm start (model size, demonstrations, steps).
    pub warm_start: WarmStartSettings,
    /// Seed tasks generated for the job (split into train and held-out).
    pub n_tasks: usize,
    /// Share of each family held out for evaluation.
    pub eval_fraction: f64,
    /// Hardest task difficulty (1..=3).
    pub max_difficulty: u8,
    /// Price of one hour of this machine in US dollars: the cost of a local model is this
    /// times the job's wall time.
    pub price_per_hour_usd: Decimal,
    /// A pretrained model (GGUF file or Hugging Face directory) trained with LoRA instead of
    /// the warm-started built-in model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ExternalModel>,
    /// The reward function by its registry name: `outcome` (1 when verified, else 0; `shaped`
    /// when `reward_shaping.enabled`), `shaped`, `response_accuracy` (partial credit for a
    /// close answer), `code_quality`, `task_efficiency`.
    #[serde(default = "default_reward")]
    pub reward: String,
    /// The caller's tasks instead of the generated seed suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JobData>,
    /// A reward computed by an HTTP endpoint (the remote-reward protocol of
    /// [`agentcore_tasks::judge::remote_reward`]) instead of `reward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_reward: Option<RemoteReward>,
    /// The agent trained (its registered id); derived from the model when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's type (picks its reward strategy); [`defaults::DEFAULT_AGENT_TYPE`] when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Conversation limits of rollouts and evaluation; the agent kind's defaults
    /// ([`RolloutLimits::for_agent`]) when unset (jobs written before the field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutLimits>,
    /// An agent behind an OpenAI-compatible endpoint, trained through its prompt (the prompt
    /// policy) instead of an in-process model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiAgent>,
    /// Experiment trackers that get the job's scalars as it runs (`tensorboard`, `mlflow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_to: Vec<ReportTo>,
    /// The MLflow tracking server of `report_to: [mlflow]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowSettings>,
}

/// An agent on an OpenAI-compatible endpoint (llama.cpp, vLLM, SGLang, a hosted API) whose
/// system prompt, lessons and exemplars the prompt policy trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAgent {
    /// The endpoint, its prices, retries, timeouts and concurrency.
    pub endpoint: OpenAiSettings,
    /// The agent's own system prompt (the baseline's whole prompt).
    pub system_prompt: String,
    /// Rendering and update settings.
    #[serde(default)]
    pub prompt_policy: PromptPolicySettings,
    /// Whether the endpoints (the agent's and the reflector's) may be loopback, private or
    /// link-local addresses, or this host's. The CLI allows them (the user's machine); the
    /// service sets its `--allow-private-endpoints` here, never the agent's definition.
    #[serde(default = "private_endpoints_allowed")]
    pub allow_private_endpoints: bool,
}

/// Jobs resolved before [`ApiAgent::allow_private_endpoints`] existed connect as they did.
fn private_endpoints_allowed() -> bool {
    true
}

/// Limits of one conversation besides the contract's `max_steps_per_trajectory` and
/// `max_completion_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutLimits {
    /// Most tokens of a whole conversation, prompt included.
    pub max_conversation_tokens: u64,
    /// Longest tool output shown to the model, characters (longer ones are cut and marked).
    pub max_observation_chars: usize,
}

impl RolloutLimits {
    /// The defaults of an agent kind: the built-in model's or a chat model's.
    #[must_use]
    pub fn for_agent(chat_model: bool) -> Self {
        Self {
            max_conversation_tokens: if chat_model {
                defaults::CHAT_MAX_CONVERSATION_TOKENS
            } else {
                defaults::BUILT_IN_MAX_CONVERSATION_TOKENS
            },
            max_observation_chars: defaults::MAX_OBSERVATION_CHARS,
        }
    }
}

/// A reward served over HTTP (e.g. a Python function registered with the SDK).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteReward {
    /// Its registry name.
    pub name: String,
    /// The endpoint: POST `{query, expected_outcome, final_answer, steps, success, ...}`,
    /// answer `{"score": number}`.
    pub url: String,
    /// The endpoint may be on a loopback or private address.
    #[serde(default)]
    pub allow_private: bool,
}

/// A job's own tasks (the guide's `training_data` / `evaluation_data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobData {
    /// Training tasks (at least [`agentcore_tasks::data::MIN_TRAINING_TASKS`]).
    pub train: Vec<Task>,
    /// Held-out tasks; when empty, a seeded `eval_fraction` of `train` (per family) is held out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<Task>,
}

fn default_reward() -> String {
    defaults::REWARD.into()
}

/// A pretrained policy: loaded dequantized to f32, frozen, with LoRA adapters trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalModel {
    /// A `.gguf` file or a Hugging Face model directory.
    pub path: PathBuf,
    /// The adapters.
    #[serde(default)]
    pub lora: LoraConfig,
    /// The system prompt of the agent.
    #[serde(default = "defaults::system_prompt")]
    pub system_prompt: String,
}

impl ExternalModel {
    /// `path` with default LoRA settings and the default system prompt.
    #[must_use]
    pub fn default_for(path: PathBuf) -> Self {
        Self { path, lora: LoraConfig::default(), system_prompt: defaults::system_prompt() }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            config: GRPOConfig::default(),
            warm_start: WarmStartSettings::default(),
            n_tasks: defaults::N_TASKS,
            eval_fraction: defaults::EVAL_FRACTION,
            max_difficulty: defaults::MAX_DIFFICULTY,
            price_per_hour_usd: defaults::price_per_hour_usd(),
            model: None,
            reward: default_reward(),
            data: None,
            remote_reward: None,
            agent_id: None,
            agent_type: None,
            rollout: None,
            api: None,
            report_to: Vec::new(),
            mlflow: None,
        }
    }
}

impl JobSettings {
    /// The embedded default: the built-in model, [`defaults::embedded_config`].
    #[must_use]
    pub fn embedded() -> Self {
        Self {
            config: defaults::embedded_config(),
            rollout: Some(RolloutLimits::for_agent(false)),
            ..Self::default()
        }
    }

    /// Whether the job's policy starts from a warm start: only the built-in model has one (a
    /// pretrained model and an agent behind an endpoint start as they are).
    #[must_use]
    pub fn warm_starts(&self) -> bool {
        self.api.is_none() && self.model.is_none()
    }

    /// Problems that stop the job before any work: each names the field, the rule and the value.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.config.violations().iter().map(ToString::to_string).collect();
        if self.n_tasks < 2 {
            out.push(format!("n_tasks must be >= 2, got {}", self.n_tasks));
        }
        if !(self.eval_fraction > 0.0 && self.eval_fraction < 1.0) {
            out.push(format!("eval_fraction must be in (0, 1), got {}", self.eval_fraction));
        }
        if !(1..=3).contains(&self.max_difficulty) {
            out.push(format!("max_difficulty must be in 1..=3, got {}", self.max_difficulty));
        }
        if self.report_to.contains(&ReportTo::Mlflow) {
            match &self.mlflow {
                None => out.push(
                    "report_to names mlflow: mlflow.tracking_uri must be set (the CLI's \
                     --mlflow-tracking-uri or MLFLOW_TRACKING_URI)"
                        .to_owned(),
                ),
                Some(m)
                    if !(m.tracking_uri.starts_with("http://")
                        || m.tracking_uri.starts_with("https://")) =>
                {
                    out.push(format!(
                        "mlflow.tracking_uri must be an http:// or https:// URL, got {:?}",
                        m.tracking_uri
                    ));
                }
                Some(_) => {}
            }
        }
        if self.price_per_hour_usd < Decimal::ZERO {
            out.push(format!("price_per_hour_usd must be >= 0, got {}", self.price_per_hour_usd));
        }
        let mut registry = RewardRegistry::with_builtins(self.config.reward_shaping.clone());
        if let Err(e) = registry.set_default(&self.reward) {
            out.push(format!("reward: {e}"));
        }
        if let Some(m) = &self.model {
            if !m.path.exists() {
                out.push(format!("model.path {} does not exist", m.path.display()));
            }
            if let Err(e) = m.lora.validate() {
                out.push(format!("model.lora: {e}"));
            }
        }
        if let Some(d) = &self.data {
            let min = agentcore_tasks::data::MIN_TRAINING_TASKS;
            if d.train.len() < min {
                out.push(format!(
                    "data.train must have at least {min} queries, got {}",
                    d.train.len()
                ));
            }
            for (name, tasks) in [("train", &d.train), ("eval", &d.eval)] {
                if let Some(i) = tasks.iter().position(|t| t.query.trim().is_empty()) {
                    out.push(format!("data.{name}[{i}].query must be a non-empty string"));
                }
            }
        }
        if let Some(a) = &self.api {
            if self.model.is_some() {
                out.push("api and model are exclusive: a job trains one agent".into());
            }
            if let Err(e) = a.prompt_policy.validate() {
                out.push(e.to_string());
            }
        }
        if let Some(r) = &self.rollout {
            if r.max_conversation_tokens < 2 {
                out.push(format!(
                    "rollout.max_conversation_tokens must be >= 2, got {}",
                    r.max_conversation_tokens
                ));
            }
            if r.max_observation_chars == 0 {
                out.push("rollout.max_observation_chars must be >= 1, got 0".into());
            }
        }
        out.extend(self.warm_start.violations());
        out
    }

    /// The job's conversation limits (saved ones, else the agent kind's defaults).
    #[must_use]
    pub fn rollout_limits(&self) -> RolloutLimits {
        self.rollout
            .unwrap_or_else(|| RolloutLimits::for_agent(self.model.is_some() || self.api.is_some()))
    }

    /// The agent type that picks the reward strategy.
    #[must_use]
    pub fn agent_type(&self) -> &str {
        self.agent_type.as_deref().unwrap_or(defaults::DEFAULT_AGENT_TYPE)
    }

    /// The agent a job trains: the one it was made of, else `seed-agent` (the built-in model) or
    /// `<model file stem>-agent` (a pretrained model).
    #[must_use]
    pub fn agent_id(&self) -> String {
        if let Some(id) = &self.agent_id {
            return id.clone();
        }
        if self.api.is_some() {
            return defaults::API_AGENT_ID.to_string();
        }
        match &self.model {
            None => defaults::SEED_AGENT_ID.to_string(),
            Some(m) => format!(
                "{}-agent",
                m.path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy())
            ),
        }
    }

    /// Sampling of training rollouts: the config's temperature, nucleus, top-k and
    /// `max_completion_length` per turn.
    #[must_use]
    pub fn sampling(&self) -> Sampling {
        let c = &self.config;
        Sampling {
            temperature: c.temperature,
            top_p: c.top_p,
            top_k: c.top_k.map(|k| k as usize),
            max_tokens_per_turn: c.max_completion_length as usize,
        }
    }

    /// Sampling of evaluation: greedy, with the same per-turn limit as training.
    #[must_use]
    pub fn eval_sampling(&self) -> Sampling {
        Sampling { temperature: 0.0, top_p: 1.0, top_k: None, ..self.sampling() }
    }

    /// The agent loop with the job's tool, call format, system prompt and limits.
    #[must_use]
    pub fn runtime(&self, sandbox: &Arc<PythonSandbox>, sampling: Sampling) -> AgentRuntime {
        let mut toolbox = Toolbox::new();
        toolbox.add(Arc::new(PythonTool::new(Arc::clone(sandbox)))).expect("one tool");
        let (format, system_prompt) = match (&self.model, &self.api) {
            (_, Some(a)) => (CallFormat::Hermes, a.system_prompt.clone()),
            (None, None) => (CallFormat::Tags, String::new()),
            (Some(m), None) => (CallFormat::Hermes, m.system_prompt.clone()),
        };
        let limits = self.rollout_limits();
        let mut rt = AgentRuntime::new(toolbox, format);
        rt.system_prompt = system_prompt;
        rt.sampling = sampling;
        rt.max_steps = self.config.max_steps_per_trajectory;
        rt.max_tokens = limits.max_conversation_tokens;
        rt.max_observation_chars = limits.max_observation_chars;
        rt
    }

    /// The reward registry of the job: the built-ins with the config's shaping, the job's reward
    /// (or its remote reward) as the default.
    ///
    /// # Errors
    /// An unknown reward name.
    pub fn rewards(&self) -> Result<RewardRegistry, TrainError> {
        let mut registry = RewardRegistry::with_builtins(self.config.reward_shaping.clone());
        let name = if self.config.reward_shaping.enabled && self.reward == defaults::REWARD {
            "shaped"
        } else {
            self.reward.as_str()
        };
        let bad = |e: agentcore_tasks::judge::RewardError| TrainError::Settings {
            problems: vec![format!("reward: {e}")],
        };
        match &self.remote_reward {
            Some(r) => {
                let f = agentcore_tasks::judge::remote_reward(
                    &r.url,
                    defaults::REMOTE_REWARD_TIMEOUT,
                    r.allow_private,
                );
                registry.register(&r.name, f).map_err(bad)?;
                registry.set_default(&r.name).map_err(bad)?;
            }
            None => registry.set_default(name).map_err(bad)?,
        }
        Ok(registry)
    }

    /// The job's train and held-out tasks.
    ///
    /// # Errors
    /// Bad task settings, an empty split.
    pub fn tasks(&self) -> Result<(Vec<Task>, Vec<Task>), TrainError> {
        let tasks = match &self.data {
            Some(d) if !d.eval.is_empty() => return Ok((d.train.clone(), d.eval.clone())),
            Some(d) => d.train.clone(),
            None => seed_tasks(self.n_tasks, self.config.seed, self.max_difficulty)?,
        };
        let split = seed::split(
            tasks,
            &SplitSpec::Stratified { eval_fraction: self.eval_fraction, seed: self.config.seed },
        )?;
        if split.train.is_empty() || split.eval.is_empty() {
            return Err(TrainError::Settings {
                problems: vec![format!(
                    "the split of n_tasks = {} with eval_fraction = {} left no training or no \
                     evaluation tasks",
                    self.n_tasks, self.eval_fraction
                )],
            });
        }
        Ok((split.train, split.eval))
    }
}

/// `<data_dir>/runs/<job_id>`.
#[must_use]
pub fn run_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("runs").join(job_id)
}

/// Reads `job.json` of a run directory.
///
/// # Errors
/// No such job, an unreadable file.
pub fn read_job_settings(data_dir: &Path, job_id: &str) -> Result<JobSettings, TrainError> {
    let path = run_dir(data_dir, job_id).join(defaults::JOB_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::NoSuchJob {
        job_id: job_id.to_string(),
        message: format!("no job `{job_id}` in {}: {e}", data_dir.join("runs").display()),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::CorruptState { path: path.clone(), message: e.to_string() })
}
