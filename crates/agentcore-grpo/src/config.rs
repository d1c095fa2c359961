//! `GRPOConfig`: the training configuration of the guide, with TRL's names for the algorithm.
//!
//! The guide's fields (`n_iterations`, `batch_size`, `n_trajectories_per_query`,
//! `learning_rate`, `max_budget_usd`, `checkpoint_interval`, `max_steps_per_trajectory`, `gamma`)
//! keep the guide's defaults and the ranges of `shared/api-contract.md`; the algorithm fields use
//! TRL's names (`loss_type`, `scale_rewards`, `epsilon`, `epsilon_high`, `beta`, `temperature`,
//! `top_p`, `top_k`, `max_completion_length`, `seed`, `max_grad_norm`).
//!
//! A config is read from JSON, YAML or TOML text or from a JSON value (the `config` object of a
//! JSON-RPC call). Absent fields take their defaults; an unknown field is an error that names
//! it; a value of the wrong type is an error that names the field; every range error names the
//! field, the rule and the value given. Parsing never touches the file system: callers read the
//! file and pass the text.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::advantages::{AdvantageEstimator, ScaleRewards};
use crate::error::{FieldError, GrpoError};
use crate::loss::LossType;
use crate::rewards::RewardShaping;

/// The configuration of one GRPO training job.
///
/// ```
/// use agentcore_grpo::GRPOConfig;
///
/// let config = GRPOConfig::from_json_str(r#"{"n_iterations": 500, "max_budget_usd": 50.00}"#)?;
/// assert_eq!(config.n_iterations, 500);
/// assert_eq!(config.batch_size, 16); // absent fields take the guide's defaults
/// assert_eq!(config.max_budget_usd.to_string(), "50");
///
/// let err = GRPOConfig::from_json_str(r#"{"batch_size": 200}"#).unwrap_err();
/// assert_eq!(err.to_string(), "invalid config: `batch_size` must be in 1..=128, got 200");
/// # Ok::<(), agentcore_grpo::GrpoError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GRPOConfig {
    /// Number of training iterations (policy updates). 1..=10000, default 1000.
    pub n_iterations: u32,
    /// Queries sampled per iteration. 1..=128, default 16.
    pub batch_size: u32,
    /// Trajectories generated per query (the group size G). 1..=16, default 8; G = 1 learns
    /// nothing because a group of one has no spread.
    pub n_trajectories_per_query: u32,
    /// AdamW learning rate for weight policies. > 0 and <= 1, default 1e-4.
    pub learning_rate: f64,
    /// Money limit of the job in US dollars (exact decimal). >= 0, default 100.00.
    pub max_budget_usd: Decimal,
    /// Save a checkpoint every this many iterations. >= 1, default 10.
    pub checkpoint_interval: u32,
    /// Maximum agent steps (model turn + tool call) per trajectory. 1..=100, default 20.
    pub max_steps_per_trajectory: u32,
    /// Discount factor for per-step credit. 0..=1, default 0.99.
    pub gamma: f64,

    /// How per-token losses are aggregated: `grpo`, `dapo`, `dr_grpo` or `gspo`. Default `dapo`
    /// (token mean, TRL's default: no length bias from the per-sequence mean of `grpo`).
    pub loss_type: LossType,
    /// How advantages are scaled: `group` (group std), `batch` (batch std) or `none`
    /// (Dr. GRPO). Default `group`.
    pub scale_rewards: ScaleRewards,
    /// The baseline subtracted from each reward: `grpo` (the group mean) or `rloo` (the mean
    /// of the other rewards of the group). Default `grpo`.
    pub advantage_estimator: AdvantageEstimator,
    /// Lower clip range of the importance ratio: rho >= 1 - epsilon. In (0, 1), default 0.2.
    pub epsilon: f64,
    /// Upper clip range: rho <= 1 + epsilon_high. Absent means `epsilon`; DAPO's clip-higher
    /// uses 0.28. In (0, 10].
    pub epsilon_high: Option<f64>,
    /// Weight of the k3 KL penalty to the reference policy. >= 0, default 0 (no reference
    /// model is loaded).
    pub beta: f64,
    /// Sampling temperature. In (0, 10], default 1.0.
    pub temperature: f64,
    /// Nucleus sampling mass. In (0, 1], default 1.0 (off).
    pub top_p: f64,
    /// Sample only from the k most likely tokens. Absent means off; >= 1.
    pub top_k: Option<u32>,
    /// Maximum generated tokens per trajectory (all assistant turns together); also `L_max` of
    /// the `dr_grpo` loss. 1..=32768, default 256.
    pub max_completion_length: u32,
    /// Seed of the job's RNG: same seed and config, same run. Default 42.
    pub seed: u64,
    /// Evaluate on the held-out split every this many iterations. >= 1, default 10.
    pub eval_interval: u32,
    /// Stop after this many evaluations without a new best validation score. Absent means
    /// never stop early; >= 1.
    pub early_stopping_patience: Option<u32>,
    /// Gradient-norm clipping threshold for the optimizer. > 0, default 1.0.
    pub max_grad_norm: f64,
    /// Optimizer steps on each batch of rollouts (TRL's `num_iterations`, the mu of the GRPO
    /// paper; not to be confused with `n_iterations`, the number of batches). After the first
    /// step the policy differs from the one that sampled, which is what the clipped ratio is
    /// for. 1..=16, default 1.
    pub num_iterations: u32,
    /// Optimizer steps over which the learning rate rises linearly from 0 to `learning_rate`
    /// (TRL's `warmup_steps`). Adam's first steps move every weight by about the learning rate
    /// whatever the gradient's size; a warm-up keeps a noisy first batch from undoing a warm
    /// start. >= 0, default 0.
    pub warmup_steps: u32,
    /// Outcome reward values and optional shaping (the guide's constants).
    pub reward_shaping: RewardShaping,
}

impl Default for GRPOConfig {
    fn default() -> Self {
        Self {
            n_iterations: 1000,
            batch_size: 16,
            n_trajectories_per_query: 8,
            learning_rate: 1e-4,
            max_budget_usd: Decimal::new(10000, 2),
            checkpoint_interval: 10,
            max_steps_per_trajectory: 20,
            gamma: 0.99,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            advantage_estimator: AdvantageEstimator::Grpo,
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            max_completion_length: 256,
            seed: 42,
            eval_interval: 10,
            early_stopping_patience: None,
            max_grad_norm: 1.0,
            num_iterations: 1,
            warmup_steps: 0,
            reward_shaping: RewardShaping::default(),
        }
    }
}

/// The text formats a config can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// TOML.
    Toml,
}

impl ConfigFormat {
    /// The format for a file extension (`json`, `yaml`, `yml`, `toml`; case-insensitive).
    pub fn from_extension(extension: &str) -> Option<Self> {
        match extension.to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            "toml" => Some(Self::Toml),
            _ => None,
        }
    }

    /// The format's name as people write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Yaml => "YAML",
            Self::Toml => "TOML",
        }
    }
}

impl fmt::Display for ConfigFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every field name a config document may use, nested ones with their dotted path.
/// Used to suggest a correction for an unknown field; a test checks it against the struct.
pub const KNOWN_FIELDS: &[&str] = &[
    "n_iterations",
    "batch_size",
    "n_trajectories_per_query",
    "learning_rate",
    "max_budget_usd",
    "checkpoint_interval",
    "max_steps_per_trajectory",
    "gamma",
    "loss_type",
    "scale_rewards",
    "advantage_estimator",
    "epsilon",
    "epsilon_high",
    "beta",
    "temperature",
    "top_p",
    "top_k",
    "max_completion_length",
    "seed",
    "eval_interval",
    "early_stopping_patience",
    "max_grad_norm",
    "num_iterations",
    "warmup_steps",
    "reward_shaping",
    "reward_shaping.enabled",
    "reward_shaping.success_reward",
    "reward_shaping.failure_reward",
    "reward_shaping.tool_call_bonus",
    "reward_shaping.verification_bonus",
    "reward_shaping.step_penalty",
];

impl GRPOConfig {
    /// Parses and validates a JSON document.
    pub fn from_json_str(text: &str) -> Result<Self, GrpoError> {
        Self::from_str_format(text, ConfigFormat::Json)
    }

    /// Parses and validates a YAML document.
    pub fn from_yaml_str(text: &str) -> Result<Self, GrpoError> {
        Self::from_str_format(text, ConfigFormat::Yaml)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, GrpoError> {
        Self::from_str_format(text, ConfigFormat::Toml)
    }

    /// Parses and validates a document in the given format.
    pub fn from_str_format(text: &str, format: ConfigFormat) -> Result<Self, GrpoError> {
        let syntax = |message: String| GrpoError::ConfigParse {
            format: format.name(),
            field: None,
            message,
        };
        // Each format is read by its own deserializer (so that YAML's `.nan` or TOML's `inf`
        // reach validation as the numbers they are), wrapped to record unknown fields and the
        // path of a type error.
        let not_a_map = |got: &str| GrpoError::ConfigParse {
            format: format.name(),
            field: None,
            message: format!("a config must be a map of fields, got {got}"),
        };
        match format {
            ConfigFormat::Json => {
                let value: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?;
                Self::from_value(value)
            }
            ConfigFormat::Yaml => {
                // Read as a YAML value (not JSON: that would turn `.nan` into null).
                let value: serde_yaml_ng::Value =
                    serde_yaml_ng::from_str(text).map_err(|e| syntax(e.to_string()))?;
                match value {
                    serde_yaml_ng::Value::Null => Ok(Self::default()),
                    serde_yaml_ng::Value::Mapping(_) => Self::deserialize_checked(value, format),
                    other => Err(not_a_map(&format!("{other:?}"))),
                }
            }
            // A TOML document is always a table.
            ConfigFormat::Toml => {
                let de = toml::Deserializer::parse(text).map_err(|e| syntax(e.to_string()))?;
                Self::deserialize_checked(de, format)
            }
        }
    }

    /// Parses and validates a JSON value, such as the `config` object of a JSON-RPC call.
    /// `null` means all defaults.
    pub fn from_value(value: serde_json::Value) -> Result<Self, GrpoError> {
        match value {
            serde_json::Value::Null => Ok(Self::default()),
            serde_json::Value::Object(_) => Self::deserialize_checked(value, ConfigFormat::Json),
            other => Err(GrpoError::ConfigParse {
                format: ConfigFormat::Json.name(),
                field: None,
                message: format!("a config must be an object (a map of fields), got {other}"),
            }),
        }
    }

    /// Deserializes, refusing unknown fields (named, with a suggestion) and naming the field of
    /// a type error, then validates.
    fn deserialize_checked<'de, D: serde::Deserializer<'de>>(
        de: D,
        format: ConfigFormat,
    ) -> Result<Self, GrpoError> {
        let mut unknown: Vec<String> = Vec::new();
        let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
        let ignored = serde_ignored::Deserializer::new(de, &mut record_unknown);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(ignored);
        if let Some(field) = unknown.into_iter().next() {
            let suggestion = closest_known_field(&field);
            return Err(GrpoError::UnknownConfigField { field, suggestion });
        }
        let config = parsed.map_err(|e| {
            let path = e.path().to_string();
            GrpoError::ConfigParse {
                format: format.name(),
                field: (path != ".").then_some(path),
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The upper clip range in force: `epsilon_high`, or `epsilon` when that is absent.
    pub fn effective_epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// Checks every rule and returns the first violation.
    pub fn validate(&self) -> Result<(), GrpoError> {
        match self.violations().into_iter().next() {
            Some(e) => Err(GrpoError::InvalidConfig(e)),
            None => Ok(()),
        }
    }

    /// Every rule this config breaks, in field order (empty when valid).
    pub fn violations(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut check = |field: &str, ok: bool, rule: &str, value: &dyn fmt::Display| {
            if !ok {
                out.push(FieldError::new(field, rule, value));
            }
        };
        let int_range = |v: u32, lo: u32, hi: u32| (lo..=hi).contains(&v);

        check(
            "n_iterations",
            int_range(self.n_iterations, 1, 10_000),
            "must be in 1..=10000",
            &self.n_iterations,
        );
        check(
            "batch_size",
            int_range(self.batch_size, 1, 128),
            "must be in 1..=128",
            &self.batch_size,
        );
        check(
            "n_trajectories_per_query",
            int_range(self.n_trajectories_per_query, 1, 16),
            "must be in 1..=16",
            &self.n_trajectories_per_query,
        );
        check(
            "learning_rate",
            self.learning_rate > 0.0 && self.learning_rate <= 1.0,
            "must be > 0 and <= 1",
            &self.learning_rate,
        );
        check(
            "max_budget_usd",
            self.max_budget_usd >= Decimal::ZERO,
            "must be >= 0",
            &self.max_budget_usd,
        );
        check(
            "checkpoint_interval",
            self.checkpoint_interval >= 1,
            "must be >= 1",
            &self.checkpoint_interval,
        );
        check(
            "max_steps_per_trajectory",
            int_range(self.max_steps_per_trajectory, 1, 100),
            "must be in 1..=100",
            &self.max_steps_per_trajectory,
        );
        check("gamma", (0.0..=1.0).contains(&self.gamma), "must be in 0..=1", &self.gamma);
        check(
            "epsilon",
            self.epsilon > 0.0 && self.epsilon < 1.0,
            "must be > 0 and < 1",
            &self.epsilon,
        );
        if let Some(high) = self.epsilon_high {
            check(
                "epsilon_high",
                high > 0.0 && high <= 10.0,
                "must be > 0 and <= 10 when given",
                &high,
            );
        }
        check(
            "beta",
            self.beta >= 0.0 && self.beta.is_finite(),
            "must be >= 0 and finite",
            &self.beta,
        );
        check(
            "temperature",
            self.temperature > 0.0 && self.temperature <= 10.0,
            "must be > 0 and <= 10",
            &self.temperature,
        );
        check("top_p", self.top_p > 0.0 && self.top_p <= 1.0, "must be > 0 and <= 1", &self.top_p);
        if let Some(k) = self.top_k {
            check("top_k", k >= 1, "must be >= 1 when given (leave it out to disable)", &k);
        }
        check(
            "max_completion_length",
            int_range(self.max_completion_length, 1, 32_768),
            "must be in 1..=32768",
            &self.max_completion_length,
        );
        check("eval_interval", self.eval_interval >= 1, "must be >= 1", &self.eval_interval);
        if let Some(p) = self.early_stopping_patience {
            check(
                "early_stopping_patience",
                p >= 1,
                "must be >= 1 when given (leave it out to disable)",
                &p,
            );
        }
        check(
            "max_grad_norm",
            self.max_grad_norm > 0.0 && self.max_grad_norm.is_finite(),
            "must be > 0 and finite",
            &self.max_grad_norm,
        );
        check(
            "num_iterations",
            int_range(self.num_iterations, 1, 16),
            "must be in 1..=16",
            &self.num_iterations,
        );
        out.extend(self.reward_shaping.violations("reward_shaping"));
        out
    }

    /// Advice about valid but probably unintended settings (printed by the CLI, not errors).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.n_trajectories_per_query < 2 {
            out.push(
                "`n_trajectories_per_query` is 1: a group of one trajectory has no spread, so \
                 every advantage is 0 and the policy cannot learn; use 2 or more"
                    .to_string(),
            );
        }
        if self.checkpoint_interval > self.n_iterations {
            out.push(format!(
                "`checkpoint_interval` ({}) is larger than `n_iterations` ({}): only the final \
                 checkpoint will be saved",
                self.checkpoint_interval, self.n_iterations
            ));
        }
        if self.eval_interval > self.n_iterations {
            out.push(format!(
                "`eval_interval` ({}) is larger than `n_iterations` ({}): validation runs only \
                 at the end, so early stopping cannot trigger",
                self.eval_interval, self.n_iterations
            ));
        }
        if self.max_budget_usd.is_zero() {
            out.push(
                "`max_budget_usd` is 0: any job with a non-zero price stops before its first \
                 iteration"
                    .to_string(),
            );
        }
        out
    }

    /// Serializes the config in the given format (round-trips through the parser).
    pub fn to_string_format(&self, format: ConfigFormat) -> String {
        let expect_msg = "a GRPOConfig always serializes";
        match format {
            ConfigFormat::Json => serde_json::to_string_pretty(self).expect(expect_msg),
            ConfigFormat::Yaml => serde_yaml_ng::to_string(self).expect(expect_msg),
            ConfigFormat::Toml => toml::to_string_pretty(self).expect(expect_msg),
        }
    }
}

/// The known field closest to `field` by edit distance, when it is close enough to be a typo.
fn closest_known_field(field: &str) -> Option<String> {
    KNOWN_FIELDS
        .iter()
        .map(|known| (strsim::damerau_levenshtein(field, known), *known))
        .filter(|(distance, known)| *distance <= (known.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = GRPOConfig::default();
        assert!(c.violations().is_empty(), "{:?}", c.violations());
        assert_eq!(
            (c.n_iterations, c.batch_size, c.n_trajectories_per_query, c.checkpoint_interval),
            (1000, 16, 8, 10)
        );
        assert_eq!(c.max_steps_per_trajectory, 20);
        assert_eq!(c.max_budget_usd.to_string(), "100.00");
        assert!((c.learning_rate - 1e-4).abs() < 1e-18);
        assert!((c.gamma - 0.99).abs() < 1e-15);
    }

    #[test]
    fn typo_suggests_the_known_field() {
        assert_eq!(closest_known_field("batchsize").as_deref(), Some("batch_size"));
        assert_eq!(closest_known_field("learnig_rate").as_deref(), Some("learning_rate"));
        assert_eq!(closest_known_field("completely_different"), None);
    }
}
