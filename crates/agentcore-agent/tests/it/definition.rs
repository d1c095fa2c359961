//! Agent definitions and the calculator / HTTP tools.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentcore_agent::backend::ToolSchema;
use agentcore_agent::definition::{AgentDefinition, ModelSpec, PolicyKind};
use agentcore_agent::rollout::CallFormat;
use agentcore_agent::toolcall::ToolCall;
use agentcore_agent::tools::{CalculatorTool, HttpTool, Tool, Toolbox, check_target};
use serde_json::json;

#[test]
fn the_example_definition_loads() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents/python-sorter.yaml");
    let def = AgentDefinition::from_path(&path).expect("example");
    assert_eq!(def.agent_id, "python-sorter");
    assert_eq!(def.policy, PolicyKind::Prompt);
    assert_eq!(def.call_format(), CallFormat::Hermes);
    let ModelSpec::Openai(o) = &def.model else { panic!("openai model") };
    assert_eq!(o.input_usd_per_million.to_string(), "0.15");
    assert_eq!(o.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    assert_eq!(def.max_steps_per_trajectory, Some(6));
    // Without the sandbox the python tool cannot be built, and the error says so.
    let e = def.runtime(None).unwrap_err();
    assert_eq!(e.field, "tools[0]");
    // JSON works too; the built-in model defaults to the tags format.
    let def = AgentDefinition::from_yaml(
        r#"{"agent_id": "seed-agent", "model": {"kind": "built_in"}, "tools": [{"type": "calculator"}]}"#,
    )
    .unwrap();
    assert_eq!(def.call_format(), CallFormat::Tags);
    let rt = def.runtime(None).unwrap();
    assert_eq!(rt.toolbox.schemas()[0].name, "calculator");
    assert_eq!(rt.max_steps, 20);
}

#[test]
fn errors_name_the_field_the_rule_and_the_value() {
    let cases = [
        ("agent_id: a\nmodel: {kind: built_in}\nmax_step: 3", "max_step"),
        (
            "agent_id: a\nmodel: {kind: built_in}\nmax_steps_per_trajectory: 0",
            "max_steps_per_trajectory: must be in 1..=100, got 0",
        ),
        ("agent_id: 'a b'\nmodel: {kind: built_in}", "agent_id"),
        ("agent_id: a\nmodel: {kind: gpt}", "model"),
        (
            "agent_id: a\nmodel: {kind: built_in}\nsampling: {top_p: 0}",
            "sampling.top_p: must be in (0, 1], got 0",
        ),
        ("agent_id: a\nmodel: {kind: openai, base_url: 'http://x/v1', model: m}", "policy"),
        (
            "agent_id: a\nmodel: {kind: built_in}\ntools: [{type: calculator}, {type: calculator}]",
            "tools[1]",
        ),
        (
            "agent_id: a\nmodel: {kind: built_in}\ntools: [{type: http, name: h, description: d, url: 'ftp://x'}]",
            "tools[0].url",
        ),
        (
            "agent_id: a\nmodel: {kind: built_in}\ntools: [{type: python, memory_mb: 1}]",
            "tools[0].memory_mb",
        ),
        (
            "agent_id: a\npolicy: prompt\nsystem_prompt: p\nmodel: {kind: openai, base_url: 'http://x/v1', model: m}\nprompt_policy: {retrieval: {kind: embeddings, model: {base_url: 'ftp://x', model: e}}}",
            "prompt_policy.retrieval.model.base_url: must start with http:// or https://, got \"ftp://x\"",
        ),
        (
            "agent_id: a\npolicy: prompt\nsystem_prompt: p\nmodel: {kind: openai, base_url: 'http://x/v1', model: m, replicas: ['http://y/v1', 'y:8000']}",
            "model.replicas[1]: must start with http:// or https://, got \"y:8000\"",
        ),
        (
            "agent_id: a\npolicy: prompt\nsystem_prompt: p\nmodel: {kind: openai, base_url: 'http://x/v1', model: m}\nprompt_policy: {retrieval: {kind: dense}}",
            "unknown variant `dense`, expected `bm25` or `embeddings`",
        ),
    ];
    for (yaml, want) in cases {
        let e = AgentDefinition::from_yaml(yaml).expect_err(yaml);
        assert!(e.to_string().contains(want), "{yaml:?}: {e}");
    }
}

#[test]
fn calculator() {
    let mut tb = Toolbox::new();
    tb.add(Arc::new(CalculatorTool)).unwrap();
    let call = |args: serde_json::Value| ToolCall {
        id: "1".into(),
        name: "calculator".into(),
        arguments: args.as_object().unwrap().clone(),
    };
    let out = tb.execute(&call(json!({"expression": "(3 + 4.5) * 2"})), 1);
    assert!(out.ok);
    assert_eq!(out.content, "15");
    let out = tb.execute(&call(json!({"expression": "2 +"})), 1);
    assert!(!out.ok && out.content.contains("cannot evaluate"), "{out:?}");
    let out = tb.execute(&call(json!({"expr": "1"})), 2);
    assert!(
        !out.ok && out.content.contains("tool call 2") && out.content.contains("expression"),
        "{out:?}"
    );
    let out = tb.execute(&ToolCall { name: "nope".into(), ..call(json!({})) }, 1);
    assert!(!out.ok && out.content.contains("available: calculator"), "{out:?}");
    assert!(tb.add(Arc::new(CalculatorTool)).is_err());
}

/// A loopback server that echoes `{"got": <request body>}` or returns 500 for `{"fail": true}`.
fn echo_server() -> String {
    let (url, _) = agentcore_agent::testing::serve(|body| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        if v["fail"] == true {
            (500, "broken".to_owned())
        } else {
            (200, json!({"got": v}).to_string())
        }
    });
    format!("{url}/tool")
}

#[test]
fn http_tool_posts_json_and_refuses_private_targets_by_default() {
    let url = echo_server();
    let schema = ToolSchema {
        name: "lookup".into(),
        description: "d".into(),
        parameters: json!({"type": "object"}),
    };
    let tool = HttpTool::new(schema.clone(), &url, Duration::from_secs(5), true).unwrap();
    let args = json!({"city": "Paris"}).as_object().unwrap().clone();
    let out = tool.call(&args);
    assert!(out.ok, "{out:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out.content).unwrap(),
        json!({"got": {"city": "Paris"}})
    );
    let out = tool.call(json!({"fail": true}).as_object().unwrap());
    assert!(!out.ok && out.content.contains("HTTP 500"), "{out:?}");
    let strict = HttpTool::new(schema, &url, Duration::from_secs(5), false).unwrap();
    let out = strict.call(&args);
    assert!(!out.ok && out.content.contains("not allowed"), "{out:?}");
    for target in [
        "http://127.0.0.1/",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/",
        "http://192.168.0.1:80/x",
    ] {
        assert!(check_target(target, false).is_err(), "{target}");
    }
    assert!(check_target("http://8.8.8.8/", false).is_ok());
}

#[test]
fn the_local_model_example_loads_with_its_path_under_home() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agents/gemma-local.yaml");
    let def = AgentDefinition::from_path(&path).expect("example");
    let ModelSpec::Local { path, lora } = &def.model else { panic!("local model") };
    let home = std::env::var("HOME").expect("HOME");
    assert!(path.starts_with(&home), "{}", path.display());
    assert!(path.ends_with(".cache/agentcore/models/gemma-3-270m-q4_k_m.gguf"));
    assert_eq!(lora.as_ref().map(|l| l.r), Some(8));
    assert_eq!(def.call_format(), CallFormat::Hermes);
    assert_eq!(def.max_steps_per_trajectory, Some(4));
}
