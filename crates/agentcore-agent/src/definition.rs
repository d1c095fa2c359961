//! An agent definition file (YAML or JSON): who the agent is, which model it runs on, its
//! prompt, tools, policy kind and limits.
//!
//! ```
//! use agentcore_agent::definition::{AgentDefinition, ModelSpec};
//! let def = AgentDefinition::from_yaml(r#"
//! agent_id: sorter
//! agent_type: code
//! model: {kind: openai, base_url: "http://127.0.0.1:8000/v1", model: qwen, api_key_env: OPENAI_API_KEY}
//! policy: prompt
//! system_prompt: You sort lists.
//! tools: [{type: python}, {type: calculator}]
//! max_steps_per_trajectory: 5
//! "#).unwrap();
//! assert!(matches!(def.model, ModelSpec::Openai(_)));
//! assert_eq!(def.tools.len(), 2);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{OpenAiSettings, Sampling, ToolSchema};
use crate::rollout::{AgentRuntime, CallFormat};
use crate::sandbox::PythonSandbox;
use crate::tools::{CalculatorTool, HttpTool, PythonTool, Toolbox};

/// Which model runs the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// The built-in model of the embedded default (warm-started by `agentcore train`).
    BuiltIn {
        /// Overrides of the warm start (`agentcore_train::warmstart::WarmStartSettings`: model
        /// size, demonstrations, steps); checked, unknown keys refused, when a job is made of
        /// the agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warm_start: Option<serde_json::Map<String, Value>>,
    },
    /// A Hugging Face directory or a GGUF file, run in-process.
    Local {
        /// The directory or file.
        path: PathBuf,
        /// The LoRA adapters GRPO trains (default: rank 8 on the attention projections).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<serde_json::Map<String, Value>>")]
        lora: Option<agentcore_model::decoder::LoraConfig>,
    },
    /// An OpenAI-compatible endpoint.
    Openai(OpenAiSettings),
}

/// Whether training changes the weights or the prompt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// GRPO updates the weights (in-process models).
    #[default]
    Weights,
    /// Training-free GRPO: the system prompt plus an experience library (API models).
    Prompt,
}

/// A tool in a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolSpec {
    /// Sandboxed Python.
    Python {
        /// Wall time of one call, seconds.
        #[serde(default)]
        timeout_s: Option<f64>,
        /// Memory of the interpreter, MiB.
        #[serde(default)]
        memory_mb: Option<u64>,
    },
    /// Arithmetic.
    Calculator,
    /// POST JSON to a URL.
    Http {
        /// Tool name the model calls.
        name: String,
        /// What it does.
        description: String,
        /// Where to POST.
        url: String,
        /// JSON Schema of the arguments.
        #[serde(default = "any_object")]
        parameters: Value,
        /// Timeout, seconds.
        #[serde(default = "default_http_timeout")]
        timeout_s: f64,
        /// Allow loopback / private addresses (off by default).
        #[serde(default)]
        allow_private: bool,
    },
    /// The tools of an MCP server over stdio.
    Mcp {
        /// Program to start.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Environment variables given to it (nothing else of ours is).
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
        /// Prefix of the tool names it lists (e.g. `fs_`).
        #[serde(default)]
        prefix: String,
        /// Timeout of the handshake and of each call, seconds.
        #[serde(default = "default_http_timeout")]
        timeout_s: f64,
    },
}

fn any_object() -> Value {
    serde_json::json!({"type": "object"})
}
fn default_http_timeout() -> f64 {
    30.0
}
fn default_agent_type() -> String {
    "default".into()
}
/// Model turns per trajectory of an agent that sets none (the contract's default).
pub const DEFAULT_MAX_STEPS: u32 = 20;
/// Tokens per trajectory of an agent that sets none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    /// Identifier (letters, digits, `-`, `_`, `.`).
    pub agent_id: String,
    /// Selects the reward strategy in the registry.
    #[serde(default = "default_agent_type")]
    pub agent_type: String,
    /// The model.
    pub model: ModelSpec,
    /// System prompt.
    #[serde(default)]
    pub system_prompt: String,
    /// Tools, in order (the tags format sends calls to the first).
    #[serde(default)]
    pub tools: Vec<ToolSpec>,
    /// What training changes.
    #[serde(default)]
    pub policy: PolicyKind,
    /// Sampling of each turn ([`Sampling::default`] when unset; a job's config, where it sets
    /// these, wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// How tool calls are written (`hermes` for LLMs, `tags` for the built-in model).
    #[serde(default)]
    pub tool_call_format: Option<CallFormat>,
    /// Most model turns per trajectory (1..=100; [`DEFAULT_MAX_STEPS`] when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps_per_trajectory: Option<u32>,
    /// Most tokens per trajectory ([`DEFAULT_MAX_TOKENS`] when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_trajectory: Option<u64>,
    /// How the prompt policy renders and learns (`policy: prompt`; its defaults when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_policy: Option<PromptPolicySettings>,
}

/// Defaults of [`PromptPolicySettings`].
pub mod prompt_defaults {
    /// Exemplars shown per query.
    pub const EXEMPLARS_SHOWN: usize = 2;
    /// Lessons shown per query.
    pub const LESSONS_SHOWN: usize = 4;
    /// Largest exemplar bank (the lowest-credit exemplar is retired past it).
    pub const MAX_EXEMPLARS: usize = 48;
    /// Largest lesson library.
    pub const MAX_LESSONS: usize = 24;
    /// Most tokens the lessons and exemplars add to the system prompt (counted as characters / 4).
    pub const MAX_PROMPT_TOKENS: usize = 800;
    /// Temperature of the item choice in training rollouts (evaluation picks the best items).
    pub const SELECTION_TEMPERATURE: f64 = 1.0;
    /// Weight of the query's similarity to an item (0..1: BM25 scaled per query, or the
    /// embeddings' cosine) against the item's credit.
    pub const RELEVANCE_WEIGHT: f64 = 2.0;
    /// Least similarity of a shown item to the query (an exemplar of another kind of task
    /// misleads a small model more than none). With BM25 over words (numbers left out), tasks
    /// of different kinds that share a word ("How many times does 4 occur" and "How many
    /// elements are in the list") score 0.2-0.4. Gemma 3 270M trained at 0.15 lost its `count`
    /// tasks (40% -> 10%) while shown the other kind's exemplars; its checkpoint evaluated at
    /// 0.4 solved 48.3% of the held-out queries against 43.3% at 0.15 (`BENCHMARKS.md`).
    pub const MIN_SIMILARITY: f64 = 0.4;
    /// Whether an exemplar must answer what its last tool call printed (a small model often
    /// writes a right answer after a wrong call; shown, such a trajectory teaches the wrong call).
    pub const GROUNDED_EXEMPLARS: bool = true;
    /// Whether each pick of the item choice may instead stop (show no more items). Off: on
    /// Gemma 3 270M (seed 3, 37 minutes) it gave +2.5 points where the same run without it gave
    /// +11.7, the training rollouts were shown 0.6-1.4 exemplars instead of up to 3, and fewer
    /// length exemplars taught the right call (`BENCHMARKS.md`).
    pub const STOP_OPTION: bool = false;
    /// Tokens of one reflection answer.
    pub const REFLECTION_MAX_TOKENS: usize = 256;
    /// Library operations applied per iteration.
    pub const REFLECTION_MAX_OPS: usize = 4;
    /// Groups shown to the reflector per iteration (those with the largest reward spread).
    pub const REFLECTION_GROUPS: usize = 2;
    /// Longest lesson, characters.
    pub const MAX_LESSON_CHARS: usize = 300;
}

/// The prompt policy's rendering and update (see `agentcore_train::policy::prompt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PromptPolicySettings {
    /// Exemplars (the agent's own verified trajectories) shown per query.
    pub exemplars_shown: usize,
    /// Lessons shown per query.
    pub lessons_shown: usize,
    /// Largest exemplar bank.
    pub max_exemplars: usize,
    /// Largest lesson library.
    pub max_lessons: usize,
    /// Most tokens the shown items add to the system prompt (characters / 4).
    pub max_prompt_tokens: usize,
    /// Temperature of the item choice in training rollouts (> 0).
    pub selection_temperature: f64,
    /// Weight of query similarity against credit (>= 0).
    pub relevance_weight: f64,
    /// Least similarity (0..=1; with BM25 the share of the query's weighted words an item
    /// shares, with embeddings the cosine) of an item shown for a query.
    pub min_similarity: f64,
    /// Whether each pick of the item choice may instead stop, showing no more items, with the
    /// logit of an item of no credit at the similarity threshold (`relevance_weight *
    /// min_similarity / selection_temperature`). The rollouts of a group then also differ in
    /// whether they show an item at all, so an item that does worse than showing nothing loses
    /// credit, and evaluation (which shows the items whose logit beats the stop) leaves it out.
    /// Off, every pick shows an item while one fits: a lone item is shown to every rollout of
    /// its queries and its credit cannot learn that it misleads.
    pub stop_option: bool,
    /// Whether a trajectory that called tools becomes an exemplar only when its final answer is
    /// what its last tool call printed (the whole output or one of its lines, whitespace and
    /// case ignored, numbers compared as numbers), that call succeeded, and the answer is not a
    /// literal of the call's own arguments that the query lacks (a printed guess). Turn it off
    /// for agents whose answers rephrase their tools' output.
    pub grounded_exemplars: bool,
    /// How an item's similarity to the query is measured.
    pub retrieval: RetrievalSettings,
    /// Reflection on groups with a reward spread.
    pub reflection: ReflectionSettings,
}

/// How the prompt policy measures an item's similarity to a query.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RetrievalKind {
    /// BM25 over the items' texts and the query, divided by the query's score against itself
    /// (0..1: the share of the query's weighted words an item shares). Needs no endpoint.
    #[default]
    Bm25,
    /// The cosine of the endpoint's `/v1/embeddings` vectors of the query and the item, below 0
    /// counted as 0 (a server that returns one vector per token is mean-pooled). Each text is
    /// embedded once per job; its tokens are priced at the embedding endpoint's input price.
    Embeddings,
}

/// Retrieval of the items shown for a query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetrievalSettings {
    /// `bm25` (the default) or `embeddings`.
    pub kind: RetrievalKind,
    /// The embeddings endpoint, its model and prices (default: the agent's own endpoint and
    /// model). A dedicated embedding model (OpenAI's `text-embedding-3-small`, a BGE model on
    /// vLLM or a llama.cpp server started with `--embedding true`) is what this is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<OpenAiSettings>,
}

/// The reflector: shown the better and the worse trajectories of a group, it proposes library
/// operations as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReflectionSettings {
    /// Whether to reflect at all.
    pub enabled: bool,
    /// The reflector's endpoint and prices (default: the agent's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<OpenAiSettings>,
    /// Tokens of one answer.
    pub max_tokens: usize,
    /// Operations applied per iteration (the rest are recorded as rejected).
    pub max_ops_per_iteration: usize,
    /// Groups reflected on per iteration.
    pub groups_per_iteration: usize,
    /// Longest lesson, characters.
    pub max_lesson_chars: usize,
}

impl Default for ReflectionSettings {
    fn default() -> Self {
        use prompt_defaults as d;
        Self {
            enabled: true,
            model: None,
            max_tokens: d::REFLECTION_MAX_TOKENS,
            max_ops_per_iteration: d::REFLECTION_MAX_OPS,
            groups_per_iteration: d::REFLECTION_GROUPS,
            max_lesson_chars: d::MAX_LESSON_CHARS,
        }
    }
}

impl Default for PromptPolicySettings {
    fn default() -> Self {
        use prompt_defaults as d;
        Self {
            exemplars_shown: d::EXEMPLARS_SHOWN,
            lessons_shown: d::LESSONS_SHOWN,
            max_exemplars: d::MAX_EXEMPLARS,
            max_lessons: d::MAX_LESSONS,
            max_prompt_tokens: d::MAX_PROMPT_TOKENS,
            selection_temperature: d::SELECTION_TEMPERATURE,
            relevance_weight: d::RELEVANCE_WEIGHT,
            min_similarity: d::MIN_SIMILARITY,
            stop_option: d::STOP_OPTION,
            grounded_exemplars: d::GROUNDED_EXEMPLARS,
            retrieval: RetrievalSettings::default(),
            reflection: ReflectionSettings::default(),
        }
    }
}

impl PromptPolicySettings {
    /// The rules, each naming the field.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let f = "prompt_policy";
        if self.exemplars_shown > 16 {
            return Err(bad(
                format!("{f}.exemplars_shown"),
                format!("must be <= 16, got {}", self.exemplars_shown),
            ));
        }
        if self.lessons_shown > 32 {
            return Err(bad(
                format!("{f}.lessons_shown"),
                format!("must be <= 32, got {}", self.lessons_shown),
            ));
        }
        for (name, v) in [("max_exemplars", self.max_exemplars), ("max_lessons", self.max_lessons)]
        {
            if !(1..=10_000).contains(&v) {
                return Err(bad(format!("{f}.{name}"), format!("must be in 1..=10000, got {v}")));
            }
        }
        if !(16..=100_000).contains(&self.max_prompt_tokens) {
            return Err(bad(
                format!("{f}.max_prompt_tokens"),
                format!("must be in 16..=100000, got {}", self.max_prompt_tokens),
            ));
        }
        if !(self.selection_temperature > 0.0 && self.selection_temperature.is_finite()) {
            return Err(bad(
                format!("{f}.selection_temperature"),
                format!("must be > 0, got {}", self.selection_temperature),
            ));
        }
        if !(self.relevance_weight >= 0.0 && self.relevance_weight.is_finite()) {
            return Err(bad(
                format!("{f}.relevance_weight"),
                format!("must be >= 0, got {}", self.relevance_weight),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_similarity) {
            return Err(bad(
                format!("{f}.min_similarity"),
                format!("must be in 0..=1, got {}", self.min_similarity),
            ));
        }
        let r = &self.reflection;
        if !(16..=8192).contains(&r.max_tokens) {
            return Err(bad(
                format!("{f}.reflection.max_tokens"),
                format!("must be in 16..=8192, got {}", r.max_tokens),
            ));
        }
        if !(20..=4000).contains(&r.max_lesson_chars) {
            return Err(bad(
                format!("{f}.reflection.max_lesson_chars"),
                format!("must be in 20..=4000, got {}", r.max_lesson_chars),
            ));
        }
        if r.max_ops_per_iteration > 100 || r.groups_per_iteration > 100 {
            return Err(bad(
                format!("{f}.reflection"),
                format!(
                    "max_ops_per_iteration and groups_per_iteration must be <= 100, got {} and {}",
                    r.max_ops_per_iteration, r.groups_per_iteration
                ),
            ));
        }
        for (name, model) in
            [("reflection", r.model.as_ref()), ("retrieval", self.retrieval.model.as_ref())]
        {
            if let Some((field, url)) = model.and_then(OpenAiSettings::bad_url) {
                return Err(bad(
                    format!("{f}.{name}.model.{field}"),
                    format!("must start with http:// or https://, got {url:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// A definition error: the field, the rule and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DefinitionError {
    /// Path of the field (`tools[1].url`), or the file.
    pub field: String,
    /// The rule broken and the value given.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError { field: field.into(), message: message.into() }
}

impl AgentDefinition {
    /// Parses YAML (JSON is YAML too) and checks the ranges.
    ///
    /// # Errors
    /// Unknown fields, wrong types and broken rules, each naming the field.
    pub fn from_yaml(text: &str) -> Result<Self, DefinitionError> {
        Self::checked(serde_yaml_ng::Deserializer::from_str(text))
    }

    /// Deserializes, names the field of an error, expands `~/`, checks the rules.
    fn checked<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Self, DefinitionError>
    where
        D::Error: std::fmt::Display,
    {
        let mut def: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            bad(
                if path == "." { "agent definition".to_owned() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        def.expand_home();
        def.validate()?;
        Ok(def)
    }

    /// A local model path that starts with `~/` is under `$HOME` (definition files name the
    /// model that `scripts/fetch_gemma3.sh` puts in `~/.cache/agentcore/models/` that way).
    fn expand_home(&mut self) {
        if let ModelSpec::Local { path, .. } = &mut self.model
            && let Ok(rest) = path.strip_prefix("~")
            && let Some(home) = std::env::var_os("HOME")
        {
            *path = PathBuf::from(home).join(rest);
        }
    }

    /// Parses a JSON value (what `agents.register` stores) and checks the ranges.
    ///
    /// # Errors
    /// Unknown fields, wrong types and broken rules, each naming the field.
    pub fn from_value(value: Value) -> Result<Self, DefinitionError> {
        Self::checked(value)
    }

    /// Reads a `.yaml`, `.yml` or `.json` file.
    ///
    /// # Errors
    /// As [`AgentDefinition::from_yaml`], or when the file cannot be read.
    pub fn from_path(path: &Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(path.display().to_string(), e.to_string()))?;
        Self::from_yaml(&text)
            .map_err(|e| bad(format!("{}: {}", path.display(), e.field), e.message))
    }

    /// Checks the rules.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.agent_id.is_empty()
            || !self.agent_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "agent_id",
                format!(
                    "must be non-empty letters, digits, '-', '_' or '.', got {:?}",
                    self.agent_id
                ),
            ));
        }
        if let Some(n) = self.max_steps_per_trajectory
            && !(1..=100).contains(&n)
        {
            return Err(bad("max_steps_per_trajectory", format!("must be in 1..=100, got {n}")));
        }
        if self.max_tokens_per_trajectory == Some(0) {
            return Err(bad("max_tokens_per_trajectory", "must be >= 1, got 0"));
        }
        let s = &self.sampling.clone().unwrap_or_default();
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(bad(
                "sampling.temperature",
                format!("must be >= 0, got {}", s.temperature),
            ));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(bad("sampling.top_p", format!("must be in (0, 1], got {}", s.top_p)));
        }
        if s.top_k == Some(0) {
            return Err(bad("sampling.top_k", "must be >= 1 when given, got 0"));
        }
        if s.max_tokens_per_turn == 0 {
            return Err(bad("sampling.max_tokens_per_turn", "must be >= 1, got 0"));
        }
        if let Some(p) = &self.prompt_policy {
            if self.policy != PolicyKind::Prompt {
                return Err(bad("prompt_policy", "is for `policy: prompt` agents only"));
            }
            p.validate()?;
        }
        if self.policy == PolicyKind::Weights && matches!(self.model, ModelSpec::Openai(_)) {
            return Err(bad(
                "policy",
                "`weights` needs an in-process model (built_in or local); use `prompt` with an openai model",
            ));
        }
        if let ModelSpec::Openai(o) = &self.model {
            if let Some((field, url)) = o.bad_url() {
                return Err(bad(
                    format!("model.{field}"),
                    format!("must start with http:// or https://, got {url:?}"),
                ));
            }
            if o.input_usd_per_million.is_sign_negative()
                || o.output_usd_per_million.is_sign_negative()
            {
                return Err(bad("model", "token prices must be >= 0"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            let name = match t {
                ToolSpec::Python { timeout_s, memory_mb } => {
                    if timeout_s.is_some_and(|t| !(t > 0.0 && t <= 600.0)) {
                        return Err(bad(
                            format!("tools[{i}].timeout_s"),
                            format!("must be in (0, 600], got {timeout_s:?}"),
                        ));
                    }
                    if memory_mb.is_some_and(|m| !(32..=65536).contains(&m)) {
                        return Err(bad(
                            format!("tools[{i}].memory_mb"),
                            format!("must be in 32..=65536, got {memory_mb:?}"),
                        ));
                    }
                    "python".to_owned()
                }
                ToolSpec::Calculator => "calculator".to_owned(),
                ToolSpec::Mcp { command, timeout_s, prefix, .. } => {
                    if command.trim().is_empty() {
                        return Err(bad(format!("tools[{i}].command"), "must not be empty"));
                    }
                    if !(timeout_s.is_finite() && *timeout_s > 0.0) {
                        return Err(bad(
                            format!("tools[{i}].timeout_s"),
                            format!("must be > 0, got {timeout_s}"),
                        ));
                    }
                    format!("mcp:{prefix}:{command}")
                }
                ToolSpec::Http { name, url, timeout_s, .. } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(bad(
                            format!("tools[{i}].url"),
                            format!("must start with http:// or https://, got {url:?}"),
                        ));
                    }
                    if !(timeout_s.is_finite() && *timeout_s > 0.0) {
                        return Err(bad(
                            format!("tools[{i}].timeout_s"),
                            format!("must be > 0, got {timeout_s}"),
                        ));
                    }
                    name.clone()
                }
            };
            if !names.insert(name.clone()) {
                return Err(bad(
                    format!("tools[{i}]"),
                    format!("a tool named `{name}` is already defined"),
                ));
            }
        }
        Ok(())
    }

    /// The call format: as given, else `tags` for the built-in model and `hermes` otherwise.
    #[must_use]
    pub fn call_format(&self) -> CallFormat {
        self.tool_call_format.unwrap_or(match self.model {
            ModelSpec::BuiltIn { .. } => CallFormat::Tags,
            _ => CallFormat::Hermes,
        })
    }

    /// The runtime of this agent; `sandbox` is the shared pool for `python` tools (its limits are
    /// adjusted per tool when the definition sets them).
    ///
    /// # Errors
    /// When a python tool is defined but no sandbox given, or a tool cannot be built.
    pub fn runtime(
        &self,
        sandbox: Option<Arc<PythonSandbox>>,
    ) -> Result<AgentRuntime, DefinitionError> {
        let mut toolbox = Toolbox::new();
        for (i, t) in self.tools.iter().enumerate() {
            if let ToolSpec::Mcp { command, args, env, prefix, timeout_s } = t {
                let server = crate::mcp::McpServer::spawn(
                    command,
                    args,
                    env,
                    Duration::from_secs_f64(*timeout_s),
                )
                .map_err(|e| bad(format!("tools[{i}]"), e))?;
                for tool in server.tools(prefix) {
                    toolbox.add(Arc::new(tool)).map_err(|e| bad(format!("tools[{i}]"), e))?;
                }
                continue;
            }
            let tool: Arc<dyn crate::tools::Tool> = match t {
                ToolSpec::Mcp { .. } => unreachable!("handled above"),
                ToolSpec::Python { timeout_s, memory_mb } => {
                    let Some(pool) = &sandbox else {
                        return Err(bad(
                            format!("tools[{i}]"),
                            "the python tool needs the sandbox, which is not available",
                        ));
                    };
                    let pool = if timeout_s.is_some() || memory_mb.is_some() {
                        let mut config = pool.config().clone();
                        if let Some(t) = timeout_s {
                            config.limits.wall = Duration::from_secs_f64(*t);
                        }
                        if let Some(m) = memory_mb {
                            config.limits.memory_bytes = m << 20;
                        }
                        Arc::new(
                            PythonSandbox::new(config)
                                .map_err(|e| bad(format!("tools[{i}]"), e.to_string()))?,
                        )
                    } else {
                        Arc::clone(pool)
                    };
                    Arc::new(PythonTool::new(pool))
                }
                ToolSpec::Calculator => Arc::new(CalculatorTool),
                ToolSpec::Http { name, description, url, parameters, timeout_s, allow_private } => {
                    let schema = ToolSchema {
                        name: name.clone(),
                        description: description.clone(),
                        parameters: parameters.clone(),
                    };
                    Arc::new(
                        HttpTool::new(
                            schema,
                            url,
                            Duration::from_secs_f64(*timeout_s),
                            *allow_private,
                        )
                        .map_err(|e| bad(format!("tools[{i}]"), e))?,
                    )
                }
            };
            toolbox.add(tool).map_err(|e| bad(format!("tools[{i}]"), e))?;
        }
        let mut rt = AgentRuntime::new(toolbox, self.call_format());
        rt.system_prompt = self.system_prompt.clone();
        rt.sampling = self.sampling.clone().unwrap_or_default();
        rt.max_steps = self.max_steps_per_trajectory.unwrap_or(DEFAULT_MAX_STEPS);
        rt.max_tokens = self.max_tokens_per_trajectory.unwrap_or(DEFAULT_MAX_TOKENS);
        Ok(rt)
    }
}
