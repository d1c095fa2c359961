//! Tools an agent can call: sandboxed Python, a calculator, an HTTP endpoint, MCP servers.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::backend::ToolSchema;
use crate::sandbox::PythonSandbox;
use crate::toolcall::{ToolCall, validate_arguments};

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolOutput {
    /// The call succeeded.
    pub ok: bool,
    /// Output, or the error for the model to read.
    pub content: String,
}

impl ToolOutput {
    /// A success.
    #[must_use]
    pub fn ok(content: impl Into<String>) -> Self {
        Self { ok: true, content: content.into() }
    }

    /// A failure.
    #[must_use]
    pub fn error(content: impl Into<String>) -> Self {
        Self { ok: false, content: content.into() }
    }
}

/// A tool.
pub trait Tool: Send + Sync {
    /// Name, description and argument schema.
    fn schema(&self) -> ToolSchema;

    /// Runs with arguments already checked against the schema.
    fn call(&self, arguments: &serde_json::Map<String, Value>) -> ToolOutput;

    /// Runs with raw text (the tags format's `<call>...</call>`); by default the text is given as
    /// the tool's only string argument.
    fn call_raw(&self, input: &str) -> ToolOutput {
        let schema = self.schema();
        let props = schema.parameters["properties"].as_object();
        match props.map(|p| p.keys().collect::<Vec<_>>()).as_deref() {
            Some([only]) => {
                let mut args = serde_json::Map::new();
                args.insert((*only).clone(), Value::String(input.to_owned()));
                self.call(&args)
            }
            _ => ToolOutput::error(format!("tool `{}` needs JSON arguments", schema.name)),
        }
    }
}

/// `python`: runs code in the sandbox; the value of a final expression is printed.
#[derive(Debug, Clone)]
pub struct PythonTool {
    sandbox: Arc<PythonSandbox>,
}

impl PythonTool {
    /// A tool over a (shared) sandbox pool.
    #[must_use]
    pub fn new(sandbox: Arc<PythonSandbox>) -> Self {
        Self { sandbox }
    }
}

impl Tool for PythonTool {
    fn schema(&self) -> ToolSchema {
        ToolSchema {
            name: "python".into(),
            description: "Run Python 3 code in a sandbox (no network, no files outside a scratch \
                          directory, limited time and memory). Printed output is returned; the \
                          value of a final expression is printed."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python source"}},
                "required": ["code"],
                "additionalProperties": false,
            }),
        }
    }

    fn call(&self, arguments: &serde_json::Map<String, Value>) -> ToolOutput {
        let code = arguments.get("code").and_then(Value::as_str).unwrap_or_default();
        let out = self.sandbox.run(code);
        ToolOutput { ok: out.ok(), content: out.observation() }
    }
}

/// `calculator`: arithmetic expressions (`evalexpr`: + - * / % ^, comparisons, `math::` functions).
#[derive(Debug, Clone, Copy, Default)]
pub struct CalculatorTool;

/// Longest expression accepted.
const MAX_EXPRESSION: usize = 2000;

impl Tool for CalculatorTool {
    fn schema(&self) -> ToolSchema {
        ToolSchema {
            name: "calculator".into(),
            description: "Evaluate an arithmetic expression such as (3 + 4.5) * 2 or 2 ^ 10."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
                "additionalProperties": false,
            }),
        }
    }

    fn call(&self, arguments: &serde_json::Map<String, Value>) -> ToolOutput {
        let expr = arguments.get("expression").and_then(Value::as_str).unwrap_or_default();
        if expr.len() > MAX_EXPRESSION {
            return ToolOutput::error(format!(
                "expression too long: {} characters, at most {MAX_EXPRESSION}",
                expr.len()
            ));
        }
        match evalexpr::eval(expr) {
            Ok(v) => ToolOutput::ok(v.to_string()),
            Err(e) => ToolOutput::error(format!("cannot evaluate {expr:?}: {e}")),
        }
    }
}

/// An HTTP tool: POSTs the arguments as JSON to a configured URL and returns the response body.
#[derive(Debug, Clone)]
pub struct HttpTool {
    schema: ToolSchema,
    url: String,
    timeout: Duration,
    allow_private: bool,
    max_response_bytes: u64,
}

impl HttpTool {
    /// A tool named `name` that POSTs to `url`.
    ///
    /// # Errors
    /// When the URL is not `http(s)://host...`.
    pub fn new(
        schema: ToolSchema,
        url: &str,
        timeout: Duration,
        allow_private: bool,
    ) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "tool `{}`: url must start with http:// or https://, got {url:?}",
                schema.name
            ));
        }
        Ok(Self {
            schema,
            url: url.to_owned(),
            timeout,
            allow_private,
            max_response_bytes: 1 << 20,
        })
    }
}

/// Loopback, private, link-local, unspecified, multicast or otherwise non-public addresses.
#[must_use]
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_non_public(IpAddr::V4(v4)))
        }
    }
}

/// Checks that every address `url`'s host resolves to is public (unless `allow_private`).
///
/// # Errors
/// Names the address that is not allowed.
pub fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = if url.starts_with("https://") { 443 } else { 80 };
    let has_port = if authority.starts_with('[') {
        // [v6]:port
        authority.contains("]:")
    } else {
        authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    };
    let host_port =
        if has_port { authority.to_owned() } else { format!("{authority}:{default_port}") };
    let addrs =
        host_port.to_socket_addrs().map_err(|e| format!("cannot resolve {authority:?}: {e}"))?;
    for a in addrs {
        if is_non_public(a.ip()) {
            return Err(format!(
                "{authority} resolves to {}, a loopback/private/link-local address; not allowed",
                a.ip()
            ));
        }
    }
    Ok(())
}

impl Tool for HttpTool {
    fn schema(&self) -> ToolSchema {
        self.schema.clone()
    }

    fn call(&self, arguments: &serde_json::Map<String, Value>) -> ToolOutput {
        use std::io::Read;
        if let Err(e) = check_target(&self.url, self.allow_private) {
            return ToolOutput::error(e);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        match agent.post(&self.url).send_json(Value::Object(arguments.clone())) {
            Ok(mut resp) => {
                let status = resp.status();
                let mut body = String::new();
                let read = resp
                    .body_mut()
                    .as_reader()
                    .take(self.max_response_bytes)
                    .read_to_string(&mut body);
                if let Err(e) = read {
                    return ToolOutput::error(format!("reading the response failed: {e}"));
                }
                if status.is_success() {
                    ToolOutput::ok(body)
                } else {
                    ToolOutput::error(format!("HTTP {status}: {body}"))
                }
            }
            Err(e) => ToolOutput::error(format!("request to {} failed: {e}", self.url)),
        }
    }
}

/// The tools of one agent, by name.
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: Vec<Arc<dyn Tool>>,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.iter().map(|t| t.schema().name)).finish()
    }
}

impl Toolbox {
    /// An empty toolbox.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool.
    ///
    /// # Errors
    /// When a tool of that name is already there.
    pub fn add(&mut self, tool: Arc<dyn Tool>) -> Result<(), String> {
        let name = tool.schema().name;
        if self.get(&name).is_some() {
            return Err(format!("two tools are named `{name}`"));
        }
        self.tools.push(tool);
        Ok(())
    }

    /// The tool named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.iter().find(|t| t.schema().name == name)
    }

    /// The first tool (the tags format sends every `<call>` to it).
    #[must_use]
    pub fn first(&self) -> Option<&Arc<dyn Tool>> {
        self.tools.first()
    }

    /// Schemas of all tools, for the prompt or the API.
    #[must_use]
    pub fn schemas(&self) -> Vec<ToolSchema> {
        self.tools.iter().map(|t| t.schema()).collect()
    }

    /// Runs a parsed call: unknown tools and arguments that break the schema come back as errors
    /// the model can read.
    #[must_use]
    pub fn execute(&self, call: &ToolCall, index: usize) -> ToolOutput {
        let Some(tool) = self.get(&call.name) else {
            let names: Vec<String> = self.tools.iter().map(|t| t.schema().name).collect();
            return ToolOutput::error(format!(
                "tool call {index}: there is no tool `{}`; available: {}",
                call.name,
                names.join(", ")
            ));
        };
        if let Err(e) = validate_arguments(call, &tool.schema().parameters, index) {
            return ToolOutput::error(e.to_string());
        }
        tool.call(&call.arguments)
    }
}
