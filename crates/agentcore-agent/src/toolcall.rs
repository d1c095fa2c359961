//! Tool calls in model output.
//!
//! Two conventions:
//! - Hermes / Qwen: the model writes `<tool_call>{"name": "python", "arguments": {...}}</tool_call>`
//!   in its text, possibly several; the text outside the tags is the turn's content. A call left
//!   open (generation stopped on `</tool_call>`, or ran out, or the next call opened) ends there.
//! - OpenAI chat completions: `tool_calls: [{"id", "type": "function", "function": {"name",
//!   "arguments": "<JSON text>"}}]`.
//!
//! A malformed call is not an error of the run: it becomes a [`ToolCallError`] whose message is
//! written for the model ("tool call 1: not valid JSON: ..."), returned to it as an
//! observation so it can correct itself.
//!
//! ```
//! use agentcore_agent::toolcall::parse_hermes;
//! let turn = parse_hermes(r#"Let me check. <tool_call>{"name": "python", "arguments": {"code": "print(1+1)"}}</tool_call>"#);
//! assert_eq!(turn.content, "Let me check.");
//! let call = turn.calls[0].as_ref().unwrap();
//! assert_eq!(call.name, "python");
//! assert_eq!(call.arguments["code"], "print(1+1)");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Opening tag of a Hermes tool call.
pub const TOOL_CALL_START: &str = "<tool_call>";
/// Closing tag of a Hermes tool call.
pub const TOOL_CALL_END: &str = "</tool_call>";

/// A well-formed call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The id the backend gave it (OpenAI), or `call_<n>` (Hermes).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Map<String, Value>,
}

/// A call that could not be read; the message is meant for the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("tool call {index}: {message}")]
pub struct ToolCallError {
    /// 1-based position of the call in the turn.
    pub index: usize,
    /// What was wrong, and what the call must look like.
    pub message: String,
}

/// A model turn: its text and the calls it made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedTurn {
    /// The text outside the tool-call tags, trimmed.
    pub content: String,
    /// The calls, in order, each read or refused.
    pub calls: Vec<Result<ToolCall, ToolCallError>>,
}

const SHAPE: &str = r#"write {"name": "<tool>", "arguments": {...}}"#;

/// Reads one call's JSON (`{"name", "arguments"}`; `arguments` may be an object or a JSON
/// string holding one, as OpenAI sends it; `parameters` is accepted for `arguments`).
pub fn call_from_json(index: usize, id: String, text: &str) -> Result<ToolCall, ToolCallError> {
    let fail = |message: String| ToolCallError { index, message };
    let value: Value = serde_json::from_str(text.trim())
        .map_err(|e| fail(format!("not valid JSON ({e}); {SHAPE}")))?;
    let Value::Object(mut object) = value else {
        return Err(fail(format!("must be a JSON object; {SHAPE}")));
    };
    let name = match object.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n,
        Some(_) => return Err(fail(format!("`name` must be a non-empty string; {SHAPE}"))),
        None => return Err(fail(format!("`name` is missing; {SHAPE}"))),
    };
    let arguments = match object.remove("arguments").or_else(|| object.remove("parameters")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(a)) => a,
            Ok(_) => return Err(fail("`arguments` must be a JSON object".into())),
            Err(e) => return Err(fail(format!("`arguments` is not valid JSON ({e})"))),
        },
        Some(_) => return Err(fail("`arguments` must be a JSON object".into())),
    };
    Ok(ToolCall { id, name, arguments })
}

/// Splits a Hermes-style turn into its content and its calls.
pub fn parse_hermes(text: &str) -> ParsedTurn {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_CALL_START) {
        content.push_str(&rest[..start]);
        let after = &rest[start + TOOL_CALL_START.len()..];
        // A call ends at its closing tag, or where the next call opens, or with the text.
        let (body, next) = match (after.find(TOOL_CALL_END), after.find(TOOL_CALL_START)) {
            (Some(end), Some(open)) if open < end => (&after[..open], &after[open..]),
            (Some(end), _) => (&after[..end], &after[end + TOOL_CALL_END.len()..]),
            (None, Some(open)) => (&after[..open], &after[open..]),
            (None, None) => (after, ""),
        };
        let index = calls.len() + 1;
        calls.push(call_from_json(index, format!("call_{index}"), body));
        rest = next;
    }
    content.push_str(rest);
    ParsedTurn { content: content.trim().to_string(), calls }
}

/// Reads OpenAI `tool_calls` (the array of a chat completion message).
pub fn parse_openai(tool_calls: &Value) -> Vec<Result<ToolCall, ToolCallError>> {
    let Value::Array(items) = tool_calls else { return Vec::new() };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let index = i + 1;
            let id = item["id"].as_str().map_or_else(|| format!("call_{index}"), String::from);
            let function = &item["function"];
            let name = function["name"].as_str().unwrap_or_default();
            let arguments = match &function["arguments"] {
                Value::String(s) => s.clone(),
                Value::Null => "{}".to_string(),
                other => other.to_string(),
            };
            let json = serde_json::json!({ "name": name, "arguments": arguments }).to_string();
            call_from_json(index, id, &json)
        })
        .collect()
}

/// Checks a call's arguments against the tool's JSON Schema; the error lists each violation
/// with where it is, for the model to fix.
pub fn validate_arguments(
    call: &ToolCall,
    schema: &Value,
    index: usize,
) -> Result<(), ToolCallError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| ToolCallError {
        index,
        message: format!("the schema of tool `{}` is invalid: {e}", call.name),
    })?;
    let instance = Value::Object(call.arguments.clone());
    let problems: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("at `{at}`: {e}") }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ToolCallError {
            index,
            message: format!(
                "arguments of `{}` do not match its schema: {}",
                call.name,
                problems.join("; ")
            ),
        })
    }
}
