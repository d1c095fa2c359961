//! The agent loop: model turn, tool calls, observations, until a final answer, the step limit, the
//! token limit or an error. Many trajectories advance together so that in-process models generate
//! one batch per step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{Backend, Conversation, Message, Sampling, ToolSchema};
use crate::toolcall::{ToolCall, ToolCallError, parse_hermes};
use crate::tools::{ToolOutput, Toolbox};
use crate::trajectory::{PromptContext, Step, StopReason, Trajectory, Usage};

/// How tool calls and answers are written in model output.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (or OpenAI `tool_calls`); a turn
    /// without calls is the final answer (the inside of `<answer>...</answer>` when present).
    #[default]
    Hermes,
    /// The built-in transcript: `<call>input</call>` goes to the first tool as raw text,
    /// `<ans>...</ans>` is the final answer.
    Tags,
}

/// Everything the loop needs besides the backend.
#[derive(Debug, Clone)]
pub struct AgentRuntime {
    /// System prompt (empty: none).
    pub system_prompt: String,
    /// The tools.
    pub toolbox: Toolbox,
    /// How calls are written.
    pub format: CallFormat,
    /// Sampling of each turn.
    pub sampling: Sampling,
    /// Most model turns per trajectory.
    pub max_steps: u32,
    /// Most tokens per trajectory (the conversation's length for in-process models, input plus
    /// output tokens summed over turns for API backends).
    pub max_tokens: u64,
    /// Tool calls running at once across trajectories.
    pub tool_concurrency: usize,
    /// Longest observation shown to the model, in characters (longer outputs are cut and marked).
    pub max_observation_chars: usize,
}

impl AgentRuntime {
    /// A runtime with the given tools and defaults elsewhere.
    #[must_use]
    pub fn new(toolbox: Toolbox, format: CallFormat) -> Self {
        Self {
            system_prompt: String::new(),
            toolbox,
            format,
            sampling: Sampling::default(),
            max_steps: 20,
            max_tokens: 4096,
            tool_concurrency: 8,
            max_observation_chars: 4000,
        }
    }
}

/// What the model did in one turn.
enum Action {
    Calls(Vec<Result<ToolCall, ToolCallError>>),
    /// Tags format: raw text for the first tool.
    RawCall(String),
    Answer(String),
}

fn inner<'t>(text: &'t str, open: &str, close: &str) -> Option<&'t str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close).map_or(text.len(), |e| start + e);
    Some(&text[start..end])
}

fn read_action(
    format: CallFormat,
    text: &str,
    native: Option<Vec<Result<ToolCall, ToolCallError>>>,
) -> Action {
    match format {
        CallFormat::Tags => {
            if let Some(call) = inner(text, "<call>", "</call>")
                && text.find("<call>") < text.find("<ans>").or(Some(usize::MAX))
            {
                return Action::RawCall(call.to_owned());
            }
            let answer = inner(text, "<ans>", "</ans>").unwrap_or(text);
            Action::Answer(answer.trim().to_owned())
        }
        CallFormat::Hermes => {
            if let Some(calls) = native.filter(|c| !c.is_empty()) {
                return Action::Calls(calls);
            }
            let parsed = parse_hermes(text);
            if !parsed.calls.is_empty() {
                return Action::Calls(parsed.calls);
            }
            let answer = inner(&parsed.content, "<answer>", "</answer>").unwrap_or(&parsed.content);
            Action::Answer(answer.trim().to_owned())
        }
    }
}

/// Cuts an output to `max` characters, keeping its end (where tracebacks say what went wrong).
fn truncate_output(mut out: ToolOutput, max: usize) -> ToolOutput {
    let n = out.content.chars().count();
    if n > max {
        let tail: String = out.content.chars().skip(n - max).collect();
        out.content = format!("[...{} characters cut] {tail}", n - max);
    }
    out
}

/// Runs `f` over `items` on at most `threads` threads, results in order.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = Vec::with_capacity(items.len());
    out.resize_with(items.len(), || None);
    let results = std::sync::Mutex::new(out);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

struct Run {
    traj: Trajectory,
    conv: Conversation,
    done: bool,
    started: Instant,
    state: String,
    /// Outputs of earlier successful calls, to recognise verification steps.
    seen_outputs: Vec<String>,
}

impl Run {
    fn finish(&mut self, reason: StopReason, error: Option<String>) {
        self.done = true;
        // The model's keys and values are only needed for further turns.
        self.conv.kv_cache = None;
        self.traj.stop_reason = reason;
        self.traj.error = error;
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A pending tool call of one trajectory.
struct Pending {
    run: usize,
    index: usize,
    call: Result<ToolCall, ToolCallError>,
    raw: Option<String>,
    native_id: Option<String>,
}

/// Runs the agent on every query; trajectory `i` answers `queries[i]`. Failures of the model or
/// the tools are recorded in the trajectories, never returned as errors.
pub fn run_batch(
    runtime: &AgentRuntime,
    backend: &dyn Backend,
    queries: &[String],
    rng: &mut ChaCha8Rng,
) -> Vec<Trajectory> {
    run_batch_with(runtime, backend, queries, None, rng)
}

/// [`run_batch`] where run `i` gets the system prompt of `contexts[i]` instead of the runtime's
/// (a prompt policy's rendering), recorded in its trajectory.
///
/// # Panics
/// When `contexts` is not one per query.
pub fn run_batch_with(
    runtime: &AgentRuntime,
    backend: &dyn Backend,
    queries: &[String],
    contexts: Option<&[PromptContext]>,
    rng: &mut ChaCha8Rng,
) -> Vec<Trajectory> {
    if let Some(c) = contexts {
        assert_eq!(c.len(), queries.len(), "one prompt context per query");
    }
    let schemas: Vec<ToolSchema> = runtime.toolbox.schemas();
    let mut runs: Vec<Run> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let context = contexts.map(|c| c[i].clone());
            let system = context.as_ref().map_or(&runtime.system_prompt, |c| &c.system_prompt);
            let mut messages = Vec::new();
            if !system.is_empty() {
                messages.push(Message::new("system", system.clone()));
            }
            messages.push(Message::new("user", q.clone()));
            Run {
                traj: Trajectory {
                    query: q.clone(),
                    steps: Vec::new(),
                    final_answer: None,
                    stop_reason: StopReason::StepLimit,
                    error: None,
                    tokens: None,
                    api_tokens: Vec::new(),
                    usage: Usage::default(),
                    cost_usd: Decimal::ZERO,
                    execution_time_ms: 0,
                    tool_calls: 0,
                    successful_tool_calls: 0,
                    verification_steps: 0,
                    context,
                },
                conv: Conversation { messages, ..Conversation::default() },
                done: false,
                started: Instant::now(),
                state: q.clone(),
                seen_outputs: Vec::new(),
            }
        })
        .collect();
    for r in &mut runs {
        if let Err(e) = backend.start(&mut r.conv, &schemas) {
            r.finish(StopReason::Error, Some(e.0));
        }
    }
    for step in 0..runtime.max_steps {
        let active: Vec<usize> = (0..runs.len()).filter(|&i| !runs[i].done).collect();
        if active.is_empty() {
            break;
        }
        let step_start = Instant::now();
        let timestamp = now_rfc3339();
        let turns = {
            let mut convs: Vec<&mut Conversation> = Vec::with_capacity(active.len());
            let mut it = runs.iter_mut().enumerate();
            for &i in &active {
                let r = it.by_ref().find(|(j, _)| *j == i).map(|(_, r)| r).expect("active index");
                r.conv.step = step;
                convs.push(&mut r.conv);
            }
            backend.turns(&mut convs, &schemas, &runtime.sampling, rng)
        };
        // Read each turn; collect the tool calls of all trajectories to run them together.
        let mut pending: Vec<Pending> = Vec::new();
        let mut actions: Vec<(usize, Value)> = Vec::new();
        for (&i, turn) in active.iter().zip(turns) {
            let r = &mut runs[i];
            let turn = match turn {
                Ok(t) => t,
                Err(e) => {
                    r.finish(StopReason::Error, Some(e.0));
                    continue;
                }
            };
            r.traj.usage += turn.usage;
            r.traj.cost_usd += turn.cost_usd;
            let native_ids: Vec<Option<String>> = turn
                .native_tool_calls
                .as_ref()
                .map(|c| c.iter().map(|c| c.as_ref().ok().map(|c| c.id.clone())).collect())
                .unwrap_or_default();
            match read_action(runtime.format, &turn.text, turn.native_tool_calls) {
                Action::Answer(answer) => {
                    r.traj.steps.push(Step {
                        state: std::mem::take(&mut r.state),
                        action: json!({"type": "answer", "text": answer}),
                        result: json!({"final_answer": answer}),
                        timestamp: timestamp.clone(),
                        duration_ms: step_start.elapsed().as_millis() as u64,
                    });
                    r.traj.final_answer = Some(answer);
                    r.finish(StopReason::Answer, None);
                }
                Action::RawCall(input) => {
                    actions.push((i, json!({"type": "tool_call", "input": input})));
                    pending.push(Pending {
                        run: i,
                        index: 1,
                        call: Err(ToolCallError { index: 1, message: String::new() }),
                        raw: Some(input),
                        native_id: None,
                    });
                }
                Action::Calls(calls) => {
                    let described: Vec<Value> = calls
                        .iter()
                        .map(|c| match c {
                            Ok(c) => json!({"name": c.name, "arguments": c.arguments}),
                            Err(e) => json!({"malformed": e.message}),
                        })
                        .collect();
                    let mut action = if described.len() == 1 {
                        let mut a = described[0].clone();
                        a["type"] = json!("tool_call");
                        a
                    } else {
                        json!({"type": "tool_calls", "calls": described})
                    };
                    action["text"] = json!(turn.text);
                    actions.push((i, action));
                    for (k, call) in calls.into_iter().enumerate() {
                        pending.push(Pending {
                            run: i,
                            index: k + 1,
                            call,
                            raw: None,
                            native_id: native_ids.get(k).cloned().flatten(),
                        });
                    }
                }
            }
        }
        let toolbox = &runtime.toolbox;
        let outputs: Vec<ToolOutput> = parallel_map(&pending, runtime.tool_concurrency, |p| {
            let out = match (&p.raw, &p.call) {
                (Some(raw), _) => match toolbox.first() {
                    Some(tool) => tool.call_raw(raw),
                    None => ToolOutput::error("this agent has no tools"),
                },
                (None, Ok(call)) => toolbox.execute(call, p.index),
                (None, Err(e)) => ToolOutput::error(format!(
                    "{e}. Write each call as <tool_call>{{\"name\": \"<tool>\", \"arguments\": {{...}}}}</tool_call>."
                )),
            };
            truncate_output(out, runtime.max_observation_chars)
        });
        // Record the step and feed the observations back, per trajectory.
        for (i, action) in actions {
            let r = &mut runs[i];
            let mine: Vec<(&Pending, &ToolOutput)> =
                pending.iter().zip(&outputs).filter(|(p, _)| p.run == i).collect();
            let mut messages = Vec::new();
            let mut results = Vec::new();
            for (p, out) in &mine {
                r.traj.tool_calls += 1;
                if out.ok {
                    r.traj.successful_tool_calls += 1;
                    let input = p.raw.clone().unwrap_or_else(|| {
                        p.call
                            .as_ref()
                            .map(|c| Value::Object(c.arguments.clone()).to_string())
                            .unwrap_or_default()
                    });
                    let trimmed = out.content.trim();
                    if r.seen_outputs.iter().any(|s| input.contains(s.as_str())) {
                        r.traj.verification_steps += 1;
                    }
                    if !trimmed.is_empty() {
                        r.seen_outputs.push(trimmed.to_owned());
                    }
                }
                results.push(json!({"ok": out.ok, "output": out.content}));
                let msg = match (&p.native_id, runtime.format) {
                    (Some(id), _) => Message {
                        role: "tool".into(),
                        content: out.content.clone(),
                        tool_calls: None,
                        tool_call_id: Some(id.clone()),
                    },
                    (None, CallFormat::Tags) => Message::new("tool", out.content.clone()),
                    (None, CallFormat::Hermes) if backend.tool_role() == "tool" => {
                        Message::new("tool", out.content.clone())
                    }
                    (None, CallFormat::Hermes) => Message::new(
                        "user",
                        format!("<tool_response>\n{}\n</tool_response>", out.content),
                    ),
                };
                messages.push(msg);
            }
            let observation: String =
                mine.iter().map(|(_, o)| o.content.as_str()).collect::<Vec<_>>().join("\n");
            r.traj.steps.push(Step {
                state: std::mem::replace(&mut r.state, observation),
                action,
                result: if results.len() == 1 { results.remove(0) } else { Value::Array(results) },
                timestamp: timestamp.clone(),
                duration_ms: step_start.elapsed().as_millis() as u64,
            });
            if let Err(e) = backend.observe(&mut r.conv, messages, &schemas) {
                r.finish(StopReason::Error, Some(e.0));
            }
        }
        for &i in &active {
            let r = &mut runs[i];
            if r.done {
                continue;
            }
            let used = match &r.conv.tokens {
                Some(t) => t.ids.len() as u64,
                None => r.traj.usage.input_tokens + r.traj.usage.output_tokens,
            };
            if used >= runtime.max_tokens {
                r.finish(StopReason::TokenLimit, None);
            }
        }
    }
    runs.into_iter()
        .map(|mut r| {
            if !r.done {
                r.traj.stop_reason = StopReason::StepLimit;
            }
            r.traj.tokens = r.conv.tokens.take();
            r.traj.api_tokens = std::mem::take(&mut r.conv.api_tokens);
            r.traj.execution_time_ms = r.started.elapsed().as_millis() as u64;
            r.traj
        })
        .collect()
}
