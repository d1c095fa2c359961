//! Tool calls: well-formed ones are read, malformed ones become messages for the model, and no
//! input makes the parser panic.

use agentcore_agent::toolcall::{parse_hermes, parse_openai, validate_arguments};
use proptest::prelude::*;
use serde_json::json;

#[test]
fn several_hermes_calls_and_the_text_around_them() {
    let text = concat!(
        "First I sort. <tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"sorted([3,1,2])\"}}</tool_call>",
        " then <tool_call>\n{\"name\": \"calculator\", \"arguments\": \"{\\\"expression\\\": \\\"1+2\\\"}\"}\n</tool_call> done"
    );
    let turn = parse_hermes(text);
    assert_eq!(turn.content, "First I sort.  then  done");
    assert_eq!(turn.calls.len(), 2);
    let first = turn.calls[0].as_ref().expect("first");
    assert_eq!((first.id.as_str(), first.name.as_str()), ("call_1", "python"));
    assert_eq!(first.arguments["code"], "sorted([3,1,2])");
    let second = turn.calls[1].as_ref().expect("second: arguments given as a JSON string");
    assert_eq!(second.arguments["expression"], "1+2");
}

#[test]
fn an_unclosed_call_at_the_end_is_read() {
    let turn = parse_hermes("<tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"1\"}}");
    assert_eq!(turn.calls.len(), 1);
    assert!(turn.calls[0].is_ok());
    assert_eq!(turn.content, "");
}

#[test]
fn malformed_calls_become_messages_for_the_model() {
    let cases = [
        (
            "<tool_call>{\"name\": \"python\", \"arguments\": {\"code\": }</tool_call>",
            "tool call 1: not valid JSON",
        ),
        ("<tool_call>[1, 2]</tool_call>", "tool call 1: must be a JSON object"),
        ("<tool_call>{\"arguments\": {}}</tool_call>", "tool call 1: `name` is missing"),
        ("<tool_call>{\"name\": \"\"}</tool_call>", "`name` must be a non-empty string"),
        (
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
            "`arguments` must be a JSON object",
        ),
        (
            "<tool_call>{\"name\": \"f\", \"arguments\": \"{oops\"}</tool_call>",
            "`arguments` is not valid JSON",
        ),
    ];
    for (text, want) in cases {
        let turn = parse_hermes(text);
        let err = turn.calls[0].as_ref().expect_err("refused");
        assert!(err.to_string().contains(want), "{text}: {err}");
    }
    // The shape to use is in the message.
    let err = parse_hermes("<tool_call>nope</tool_call>").calls.remove(0).expect_err("refused");
    assert!(err.message.contains(r#"{"name": "<tool>", "arguments": {...}}"#), "{err}");
    // A good call after a bad one is still read, with its own index.
    let turn = parse_hermes("<tool_call>x</tool_call><tool_call>{\"name\": \"f\"}</tool_call>");
    assert!(turn.calls[0].is_err());
    assert_eq!(turn.calls[1].as_ref().expect("second").name, "f");
}

#[test]
fn openai_tool_calls_are_read_with_their_ids() {
    let calls = parse_openai(&json!([
        {"id": "call_abc", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"print(2)\"}"}},
        {"id": "call_def", "type": "function", "function": {"name": "calculator", "arguments": "not json"}}
    ]));
    let first = calls[0].as_ref().expect("first");
    assert_eq!((first.id.as_str(), first.name.as_str()), ("call_abc", "python"));
    assert_eq!(first.arguments["code"], "print(2)");
    assert!(
        calls[1]
            .as_ref()
            .expect_err("bad")
            .to_string()
            .contains("tool call 2: `arguments` is not valid JSON")
    );
    assert!(parse_openai(&json!(null)).is_empty());
}

#[test]
fn arguments_are_checked_against_the_tool_schema() {
    let schema = json!({
        "type": "object",
        "properties": {"code": {"type": "string"}, "timeout_s": {"type": "number", "maximum": 30}},
        "required": ["code"],
        "additionalProperties": false
    });
    let ok = parse_hermes(
        "<tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"1\"}}</tool_call>",
    );
    validate_arguments(ok.calls[0].as_ref().expect("call"), &schema, 1).expect("valid");
    let bad = parse_hermes(
        "<tool_call>{\"name\": \"python\", \"arguments\": {\"timeout_s\": 99, \"extra\": 1}}</tool_call>",
    );
    let err =
        validate_arguments(bad.calls[0].as_ref().expect("call"), &schema, 1).expect_err("invalid");
    let msg = err.to_string();
    assert!(msg.starts_with("tool call 1: arguments of `python` do not match its schema"), "{msg}");
    assert!(msg.contains("code") && msg.contains("timeout_s") && msg.contains("extra"), "{msg}");
}

proptest! {
    /// Any text, including broken tags and JSON fragments, parses without panicking, and the
    /// content never contains a complete call.
    #[test]
    fn no_input_panics(
        text in proptest::collection::vec(
            prop_oneof![
                Just("<tool_call>".to_string()),
                Just("</tool_call>".to_string()),
                Just("{\"name\": \"f\", \"arguments\": {}}".to_string()),
                Just("{".to_string()),
                "[ -~]{0,12}",
                "\\PC{0,4}",
            ],
            0..10,
        ).prop_map(|parts| parts.concat())
    ) {
        let turn = parse_hermes(&text);
        prop_assert!(!turn.content.contains("<tool_call>"));
        prop_assert_eq!(turn.calls.len(), text.matches("<tool_call>").count());
    }
}
