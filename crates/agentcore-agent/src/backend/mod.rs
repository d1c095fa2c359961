//! Where model turns come from: the in-process engine or an OpenAI-compatible server.

mod inprocess;
pub mod openai;

pub use inprocess::{InProcessBackend, TurnFormat};
pub use openai::{ApiTokens, OpenAiBackend, OpenAiSettings};

use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::toolcall::{ToolCall, ToolCallError};
use crate::trajectory::{TokenTrace, Usage};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// OpenAI `tool_calls` of an assistant message (API backends), as the server sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers (API backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with just a role and text.
    #[must_use]
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// One conversation as a backend sees it.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// Messages so far.
    pub messages: Vec<Message>,
    /// Token-exact record, kept by backends that have token ids.
    pub tokens: Option<TokenTrace>,
    /// The current step (model turn), 0-based.
    pub step: u32,
    /// Sampled tokens per turn from API backends that return log-probs.
    pub api_tokens: Vec<openai::ApiTokens>,
    /// Keys and values of the conversation's tokens, kept by in-process backends so that each
    /// turn prefills only its new tokens.
    pub kv_cache: Option<agentcore_model::generate::SequenceCache>,
}

/// Sampling settings of one turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Top-k cut, if any.
    pub top_k: Option<usize>,
    /// Most tokens per model turn.
    pub max_tokens_per_turn: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: None, max_tokens_per_turn: 256 }
    }
}

/// Why a model turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnEnd {
    /// End of turn, a stop sequence, or tool calls.
    Stop,
    /// The per-turn token limit.
    Length,
}

/// What a backend returns for one turn.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The assistant's text.
    pub text: String,
    /// Tool calls the server returned as structured `tool_calls` (API backends); `None` when the
    /// calls, if any, are in `text`.
    pub native_tool_calls: Option<Vec<Result<ToolCall, ToolCallError>>>,
    /// Tokens in and out of this turn.
    pub usage: Usage,
    /// What the turn cost.
    pub cost_usd: Decimal,
    /// Why it ended.
    pub end: TurnEnd,
}

/// A backend error, recorded in the trajectory (never a crash).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A source of model turns.
pub trait Backend: Send + Sync {
    /// Prepares a new conversation (system prompt and query are already in `messages`):
    /// in-process backends tokenize the prompt here.
    ///
    /// # Errors
    /// When the prompt cannot be rendered or is too long.
    fn start(&self, conv: &mut Conversation, tools: &[ToolSchema]) -> Result<(), BackendError>;

    /// One assistant turn for each conversation (batched where the backend can); each turn's
    /// assistant message (and its tokens) is appended to its conversation.
    fn turns(
        &self,
        convs: &mut [&mut Conversation],
        tools: &[ToolSchema],
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Result<Turn, BackendError>>;

    /// Appends the environment's messages (tool results) to a conversation, and their tokens.
    ///
    /// # Errors
    /// When they cannot be rendered.
    fn observe(
        &self,
        conv: &mut Conversation,
        messages: Vec<Message>,
        tools: &[ToolSchema],
    ) -> Result<(), BackendError>;

    /// Role of tool results in [`Backend::observe`]: `tool` where the format has one, else `user`
    /// (wrapped in `<tool_response>`).
    fn tool_role(&self) -> &'static str {
        "tool"
    }
}

/// A borrowed backend is a backend (a policy lends the one it owns for a rollout).
impl<B: Backend + ?Sized> Backend for &B {
    fn start(&self, conv: &mut Conversation, tools: &[ToolSchema]) -> Result<(), BackendError> {
        (**self).start(conv, tools)
    }
    fn turns(
        &self,
        convs: &mut [&mut Conversation],
        tools: &[ToolSchema],
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Result<Turn, BackendError>> {
        (**self).turns(convs, tools, sampling, rng)
    }
    fn observe(
        &self,
        conv: &mut Conversation,
        messages: Vec<Message>,
        tools: &[ToolSchema],
    ) -> Result<(), BackendError> {
        (**self).observe(conv, messages, tools)
    }
    fn tool_role(&self) -> &'static str {
        (**self).tool_role()
    }
}

/// A tool as the model is told about it: OpenAI's function schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    /// Name the model calls.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

impl ToolSchema {
    /// `{"type": "function", "function": {...}}`, as chat templates and APIs expect.
    #[must_use]
    pub fn openai(&self) -> Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            }
        })
    }
}
