//! MCP tools over stdio through rmcp, against a small MCP server (`tests/fixtures/mcp_server.py`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentcore_agent::mcp::McpServer;
use agentcore_agent::toolcall::ToolCall;
use agentcore_agent::tools::{Tool, Toolbox};
use serde_json::json;

fn server(timeout: Duration, env: &BTreeMap<String, String>) -> Arc<McpServer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_server.py");
    McpServer::spawn("python3", &[script.to_owned()], env, timeout).expect("MCP server starts")
}

fn call(name: &str, args: serde_json::Value) -> ToolCall {
    ToolCall { id: "1".into(), name: name.into(), arguments: args.as_object().unwrap().clone() }
}

#[test]
fn tools_are_listed_validated_and_called() {
    let srv = server(Duration::from_secs(10), &BTreeMap::new());
    let mut tb = Toolbox::new();
    for t in srv.tools("mcp_") {
        tb.add(Arc::new(t)).unwrap();
    }
    let names: Vec<String> = tb.schemas().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["mcp_add", "mcp_fail", "mcp_sleep", "mcp_env"]);
    assert_eq!(tb.schemas()[0].parameters["required"], json!(["a", "b"]));
    let out = tb.execute(&call("mcp_add", json!({"a": 2, "b": 3.5})), 1);
    assert!(out.ok, "{out:?}");
    assert_eq!(out.content, "5.5");
    // The schema the server published is enforced before the call.
    let out = tb.execute(&call("mcp_add", json!({"a": "two"})), 1);
    assert!(!out.ok && out.content.contains("do not match its schema"), "{out:?}");
    let out = tb.execute(&call("mcp_fail", json!({})), 1);
    assert!(!out.ok && out.content.contains("always fails"), "{out:?}");
}

#[test]
fn the_server_sees_only_the_variables_it_is_given() {
    let env = BTreeMap::from([("MCP_TOKEN".to_owned(), "t".to_owned())]);
    let srv = server(Duration::from_secs(10), &env);
    let tools = srv.tools("");
    let env_tool = tools.iter().find(|t| t.schema().name == "env").unwrap();
    let has = |name: &str| env_tool.call(json!({"name": name}).as_object().unwrap()).content;
    assert_eq!(has("MCP_TOKEN"), "True");
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert_eq!(has("CARGO_MANIFEST_DIR"), "False");
}

#[test]
fn mcp_tools_from_a_definition() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_server.py");
    let yaml = format!(
        "agent_id: a\nmodel: {{kind: built_in}}\ntool_call_format: hermes\ntools:\n  - {{type: calculator}}\n  - {{type: mcp, command: python3, args: [{script:?}], prefix: 'm_', timeout_s: 10}}\n"
    );
    let def = agentcore_agent::definition::AgentDefinition::from_yaml(&yaml).expect("definition");
    let rt = def.runtime(None).expect("runtime");
    let names: Vec<String> = rt.toolbox.schemas().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["calculator", "m_add", "m_fail", "m_sleep", "m_env"]);
    let out = rt.toolbox.execute(&call("m_add", json!({"a": 1, "b": 2})), 1);
    assert_eq!(out.content, "3");
}

#[test]
fn slow_tools_time_out_and_bad_servers_fail_to_start() {
    let srv = server(Duration::from_millis(500), &BTreeMap::new());
    let tools = srv.tools("");
    let sleep = tools.iter().find(|t| t.schema().name == "sleep").unwrap();
    let t = Instant::now();
    let out = sleep.call(&serde_json::Map::new());
    assert!(!out.ok && out.content.contains("did not answer"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let e =
        McpServer::spawn("/nonexistent/mcp-server", &[], &BTreeMap::new(), Duration::from_secs(2))
            .unwrap_err();
    assert!(e.contains("/nonexistent/mcp-server"), "{e}");
    let e = McpServer::spawn(
        "python3",
        &["-c".into(), "import time; time.sleep(30)".into()],
        &BTreeMap::new(),
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert!(e.contains("no answer"), "{e}");
}
