//! What one run of an agent on one query leaves behind.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One step in the guide's shape: what the agent saw, what it did, what came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What the agent saw before acting: the query on the first step, else the last observation.
    pub state: String,
    /// What it did: `{"type": "tool_call", "name", "arguments"}`, `{"type": "answer", "text"}` or
    /// `{"type": "message", "text"}` (a turn with neither).
    pub action: Value,
    /// What came back: the tool's output or error, or the answer.
    pub result: Value,
    /// When the step started (RFC 3339, UTC).
    pub timestamp: String,
    /// Wall time of the step (model turn and tool calls).
    pub duration_ms: u64,
}

/// Why a trajectory ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The agent gave a final answer.
    Answer,
    /// `max_steps_per_trajectory` model turns without a final answer.
    StepLimit,
    /// The token budget of the trajectory ran out.
    TokenLimit,
    /// The backend failed (recorded in `error`).
    Error,
}

/// The exact token ids of an in-process trajectory: prompt and tool tokens (mask 0) and the
/// sampled assistant tokens (mask 1) with the log-probs they were sampled with. Never re-tokenized.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTrace {
    /// Token ids, in order.
    pub ids: Vec<u32>,
    /// 1 for sampled assistant tokens (in the loss), 0 for prompt and environment tokens.
    pub mask: Vec<u8>,
    /// Log-prob of each sampled token under the sampling policy; 0 where `mask` is 0.
    pub logprobs: Vec<f32>,
    /// The step each token belongs to (its model turn), for per-step credit; prompt tokens are
    /// step 0 as well.
    pub step: Vec<u32>,
}

impl TokenTrace {
    /// Appends environment tokens (mask 0).
    pub fn push_context(&mut self, ids: &[u32], step: u32) {
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(0, ids.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
        self.step.extend(std::iter::repeat_n(step, ids.len()));
    }

    /// Appends sampled tokens (mask 1) with their log-probs.
    pub fn push_sampled(&mut self, ids: &[u32], logprobs: &[f32], step: u32) {
        debug_assert_eq!(ids.len(), logprobs.len());
        self.ids.extend_from_slice(ids);
        self.mask.extend(std::iter::repeat_n(1, ids.len()));
        self.logprobs.extend_from_slice(logprobs);
        self.step.extend(std::iter::repeat_n(step, ids.len()));
    }

    /// Number of sampled (trainable) tokens.
    #[must_use]
    pub fn sampled_len(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }
}

/// Token counts and money of a trajectory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens sent (summed over turns for API backends; the prompt once in-process).
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens += rhs.input_tokens;
        self.output_tokens += rhs.output_tokens;
    }
}

/// A finished run of the agent on one query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The query.
    pub query: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The final answer, when the agent gave one.
    pub final_answer: Option<String>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// The backend's error when `stop_reason` is `error`.
    pub error: Option<String>,
    /// Token-exact record (in-process models; API backends when the server returns token ids).
    pub tokens: Option<TokenTrace>,
    /// Sampled tokens per model turn from API backends that return log-probs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_tokens: Vec<crate::backend::ApiTokens>,
    /// Tokens in and out.
    pub usage: Usage,
    /// Money spent on API tokens (local compute is priced by the job, per hour).
    pub cost_usd: Decimal,
    /// Wall time of the whole run.
    pub execution_time_ms: u64,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Tool calls that returned without error.
    pub successful_tool_calls: u32,
    /// Steps that ran the agent's result again to check it (a tool call after the first successful
    /// one whose input mentions a value an earlier call returned).
    pub verification_steps: u32,
    /// The prompt this run was given, when a prompt policy rendered one for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<PromptContext>,
}

/// What a prompt policy showed one run: the system prompt it rendered and the ids of the library
/// items (lessons, exemplars) in it, in the order they were picked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PromptContext {
    /// The whole system prompt sent.
    pub system_prompt: String,
    /// Ids of the items shown, in pick order.
    pub shown: Vec<String>,
}

impl Trajectory {
    /// Share of tool calls that succeeded (`None` without calls).
    #[must_use]
    pub fn tool_accuracy(&self) -> Option<f64> {
        (self.tool_calls > 0)
            .then(|| f64::from(self.successful_tool_calls) / f64::from(self.tool_calls))
    }
}
