//! Turns from the in-process model engine, token-exact.

use agentcore_model::generate::{FinishReason, SamplingParams, SequenceCache, generate_cached};
use agentcore_model::hub::{ChatMessage, ChatTemplate, LoadedModel};
use agentcore_model::tokenizer::SpecialToken;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

use super::{Backend, BackendError, Conversation, Message, Sampling, ToolSchema, Turn, TurnEnd};
use crate::trajectory::{TokenTrace, Usage};

/// How conversations become tokens.
#[derive(Debug, Clone)]
pub enum TurnFormat {
    /// The built-in transcript: `<bos>query`, then the model writes `<call>...</call>` or
    /// `<ans>...</ans>`; tool output comes back as `<out>...</out>`. Special tokens of the byte
    /// tokenizer.
    Tags,
    /// A chat template; tool calls in the Hermes convention (`<tool_call>{...}</tool_call>`).
    Chat(ChatTemplate),
}

/// The in-process model as a [`Backend`].
pub struct InProcessBackend<'m> {
    model: &'m LoadedModel,
    format: TurnFormat,
    stop_sequences: Vec<Vec<u32>>,
    pad: u32,
    tool_role: &'static str,
}

impl std::fmt::Debug for InProcessBackend<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBackend").field("format", &self.format).finish_non_exhaustive()
    }
}

/// Placeholder for the last assistant message while rendering what follows it.
const SENTINEL: &str = "\u{E000}agentcore-assistant\u{E001}";

fn err(e: impl std::fmt::Display) -> BackendError {
    BackendError(e.to_string())
}

impl<'m> InProcessBackend<'m> {
    /// A backend over `model`: the tags format when it has no chat template (the built-in model),
    /// else its template.
    ///
    /// # Errors
    /// When the stop tokens cannot be encoded.
    pub fn new(model: &'m LoadedModel) -> Result<Self, BackendError> {
        let format = match &model.chat_template {
            Some(t) => TurnFormat::Chat(t.clone()),
            None => TurnFormat::Tags,
        };
        Self::with_format(model, format)
    }

    /// A backend with an explicit format.
    ///
    /// # Errors
    /// When the stop tokens cannot be encoded.
    pub fn with_format(model: &'m LoadedModel, format: TurnFormat) -> Result<Self, BackendError> {
        let tok = &model.tokenizer;
        let mut stop_sequences: Vec<Vec<u32>> =
            model.stop_token_ids.iter().map(|&id| vec![id]).collect();
        let tool_role = match &format {
            TurnFormat::Tags => {
                for t in ["</call>", "</ans>", "<eos>"] {
                    if let Some(id) = tok.token_id(t) {
                        stop_sequences.push(vec![id]);
                    }
                }
                "tool"
            }
            TurnFormat::Chat(t) => {
                stop_sequences.push(tok.encode("</tool_call>").map_err(err)?);
                if t.source.contains("'tool'") || t.source.contains("\"tool\"") {
                    "tool"
                } else {
                    "user"
                }
            }
        };
        stop_sequences.retain(|s| !s.is_empty());
        stop_sequences.sort();
        stop_sequences.dedup();
        let pad = tok
            .token_id(SpecialToken::Pad.text())
            .or_else(|| model.stop_token_ids.first().copied())
            .unwrap_or(0);
        Ok(Self { model, format, stop_sequences, pad, tool_role })
    }

    /// The format in use.
    #[must_use]
    pub fn format(&self) -> &TurnFormat {
        &self.format
    }

    fn chat_messages(
        messages: &[Message],
        tools: &[ToolSchema],
        template: &ChatTemplate,
    ) -> Vec<ChatMessage> {
        let mut out: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() })
            .collect();
        // Templates that do not render `tools` get them in the system prompt, Hermes style.
        if !tools.is_empty() && !template.source.contains("tools") {
            let listing: Vec<String> = tools.iter().map(|t| t.openai().to_string()).collect();
            let block = format!(
                "You may call tools. Available tools:\n{}\nTo call one, write <tool_call>{{\"name\": \
                 <tool name>, \"arguments\": <arguments object>}}</tool_call> and end your turn. When \
                 you know the answer, reply with it inside <answer></answer>.",
                listing.join("\n")
            );
            match out.first_mut() {
                Some(m) if m.role == "system" => m.content = format!("{}\n\n{block}", m.content),
                _ => out.insert(0, ChatMessage { role: "system".into(), content: block }),
            }
        }
        out
    }

    fn render(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        tools: &[ToolSchema],
        generation_prompt: bool,
    ) -> Result<String, BackendError> {
        let msgs = Self::chat_messages(messages, tools, template);
        let schemas: Vec<serde_json::Value> = tools.iter().map(ToolSchema::openai).collect();
        let tools_value = (!schemas.is_empty()).then_some(serde_json::Value::Array(schemas));
        template.render(&msgs, generation_prompt, tools_value.as_ref()).map_err(err)
    }
}

impl Backend for InProcessBackend<'_> {
    fn start(&self, conv: &mut Conversation, tools: &[ToolSchema]) -> Result<(), BackendError> {
        let tok = &self.model.tokenizer;
        let ids = match &self.format {
            TurnFormat::Tags => {
                let query: Vec<&str> = conv
                    .messages
                    .iter()
                    .filter(|m| m.role == "user")
                    .map(|m| m.content.as_str())
                    .collect();
                let mut ids: Vec<u32> = tok.token_id("<bos>").into_iter().collect();
                ids.extend(tok.encode(&query.join("\n")).map_err(err)?);
                ids
            }
            TurnFormat::Chat(t) => {
                let text = self.render(t, &conv.messages, tools, true)?;
                tok.encode(&text).map_err(err)?
            }
        };
        self.model.model.check_length(ids.len() + 1).map_err(err)?;
        let mut trace = TokenTrace::default();
        trace.push_context(&ids, 0);
        conv.tokens = Some(trace);
        Ok(())
    }

    fn turns(
        &self,
        convs: &mut [&mut Conversation],
        _tools: &[ToolSchema],
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Result<Turn, BackendError>> {
        let max_len = self.model.model.config().max_seq_len;
        let mut results: Vec<Option<Result<Turn, BackendError>>> = vec![None; convs.len()];
        let mut rows = Vec::new();
        let mut prompts = Vec::new();
        for (i, c) in convs.iter().enumerate() {
            match &c.tokens {
                Some(t) if t.ids.len() < max_len => {
                    rows.push(i);
                    prompts.push(t.ids.clone());
                }
                Some(t) => {
                    results[i] = Some(Err(BackendError(format!(
                        "the conversation has {} tokens, the model's limit is {max_len}",
                        t.ids.len()
                    ))));
                }
                None => results[i] = Some(Err(BackendError("conversation not started".into()))),
            }
        }
        if !prompts.is_empty() {
            let params = SamplingParams {
                temperature: sampling.temperature,
                top_p: sampling.top_p,
                top_k: sampling.top_k,
                max_new_tokens: sampling.max_tokens_per_turn,
                stop_sequences: self.stop_sequences.clone(),
                pad_token: self.pad,
            };
            // Each conversation's earlier tokens come from its cache: only the new ones (the
            // last observation) are prefilled.
            let caches: Vec<Option<SequenceCache>> =
                rows.iter().map(|&i| convs[i].kv_cache.take()).collect();
            let cache_refs: Vec<Option<&SequenceCache>> =
                caches.iter().map(Option::as_ref).collect();
            match generate_cached(&self.model.model, &prompts, &cache_refs, &params, rng) {
                Ok((gens, kept)) => {
                    for (((&i, g), prompt), kv) in rows.iter().zip(gens).zip(&prompts).zip(kept) {
                        convs[i].kv_cache = Some(kv);
                        results[i] = Some(self.finish_turn(convs[i], prompt.len(), g));
                    }
                }
                Err(e) => {
                    for &i in &rows {
                        results[i] = Some(Err(err(&e)));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(BackendError("no turn".into()))))
            .collect()
    }

    fn observe(
        &self,
        conv: &mut Conversation,
        messages: Vec<Message>,
        tools: &[ToolSchema],
    ) -> Result<(), BackendError> {
        let tok = &self.model.tokenizer;
        let text = match &self.format {
            TurnFormat::Tags => {
                messages.iter().map(|m| format!("<out>{}</out>", m.content)).collect::<String>()
            }
            TurnFormat::Chat(t) => {
                let mut with_sentinel = conv.messages.clone();
                if let Some(last) = with_sentinel.iter_mut().rev().find(|m| m.role == "assistant") {
                    last.content = SENTINEL.to_owned();
                }
                with_sentinel.extend(messages.iter().cloned());
                let rendered = self.render(t, &with_sentinel, tools, true)?;
                let at = rendered.find(SENTINEL).ok_or_else(|| {
                    BackendError("the chat template dropped the assistant message".into())
                })?;
                let mut suffix = &rendered[at + SENTINEL.len()..];
                // If the model already ended its turn with a stop token, do not add it twice.
                if let Some(last) = conv.tokens.as_ref().and_then(|t| t.ids.last())
                    && self.model.stop_token_ids.contains(last)
                {
                    let stop_text = tok.decode(&[*last]).map_err(err)?;
                    suffix = suffix.strip_prefix(stop_text.as_str()).unwrap_or(suffix);
                }
                suffix.to_owned()
            }
        };
        let ids = tok.encode(&text).map_err(err)?;
        let step = conv.step;
        conv.tokens.get_or_insert_with(TokenTrace::default).push_context(&ids, step);
        conv.messages.extend(messages);
        Ok(())
    }

    fn tool_role(&self) -> &'static str {
        self.tool_role
    }
}

impl InProcessBackend<'_> {
    fn finish_turn(
        &self,
        conv: &mut Conversation,
        context_len: usize,
        g: agentcore_model::generate::Generation,
    ) -> Result<Turn, BackendError> {
        let tok = &self.model.tokenizer;
        let step = conv.step;
        let trace = conv.tokens.get_or_insert_with(TokenTrace::default);
        trace.push_sampled(&g.tokens, &g.logprobs, step);
        // The message text: without a trailing end-of-turn / EOS token (kept in the trace).
        let mut visible = g.tokens.as_slice();
        if let Some((last, rest)) = visible.split_last()
            && self.model.stop_token_ids.contains(last)
        {
            visible = rest;
        }
        let text = tok.decode(visible).map_err(err)?;
        conv.messages.push(Message::new("assistant", text.clone()));
        Ok(Turn {
            text,
            native_tool_calls: None,
            usage: Usage { input_tokens: context_len as u64, output_tokens: g.tokens.len() as u64 },
            cost_usd: Decimal::ZERO,
            end: match g.finish_reason {
                FinishReason::Stop => TurnEnd::Stop,
                FinishReason::Length => TurnEnd::Length,
            },
        })
    }
}
