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

/// IPv4 ranges that are not globally reachable (IANA IPv4 Special-Purpose Address Registry, plus
/// multicast, the reserved 240/4 and broadcast): (network, prefix length).
const NON_GLOBAL_V4: [([u8; 4], u8); 17] = [
    ([0, 0, 0, 0], 8),          // "this network"
    ([10, 0, 0, 0], 8),         // private
    ([100, 64, 0, 0], 10),      // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),        // loopback
    ([169, 254, 0, 0], 16),     // link-local
    ([172, 16, 0, 0], 12),      // private
    ([192, 0, 0, 0], 24),       // IETF protocol assignments
    ([192, 0, 2, 0], 24),       // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),     // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),     // private
    ([198, 18, 0, 0], 15),      // benchmarking
    ([198, 51, 100, 0], 24),    // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),     // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),        // multicast
    ([240, 0, 0, 0], 4),        // reserved
    ([255, 255, 255, 255], 32), // limited broadcast
    ([192, 31, 196, 0], 24),    // AS112 (operational, not a service target)
];

/// IPv6 ranges that are not globally reachable (IANA IPv6 Special-Purpose Address Registry, plus
/// site-local and multicast); the forms that embed an IPv4 address are judged by that address.
const NON_GLOBAL_V6: [(u128, u8); 12] = [
    (0, 96),                      // ::/128, ::1/128 and IPv4-compatible ::a.b.c.d
    (0x0064_ff9b_0001 << 80, 48), // 64:ff9b:1::/48 local-use NAT64
    (0x0100 << 112, 64),          // 100::/64 discard
    (0x2001 << 112, 23),          // 2001::/23 IETF protocol assignments (Teredo, ...)
    (0x2001_0db8 << 96, 32),      // 2001:db8::/32 documentation
    (0x3fff << 112, 20),          // 3fff::/20 documentation
    (0x5f00 << 112, 16),          // 5f00::/16 segment routing SIDs
    (0xfc00 << 112, 7),           // unique local
    (0xfe80 << 112, 10),          // link-local
    (0xfec0 << 112, 10),          // site-local (deprecated)
    (0xff00 << 112, 8),           // multicast
    (0x0000_0000_0000_0000_0000_ffff_0000_0000, 96), // IPv4-mapped (judged by the IPv4 address too)
];

fn in_v6(ip: u128, (net, len): (u128, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    ip & mask == net & mask
}

/// Whether `ip` is not a public unicast address: loopback, private, link-local, shared,
/// documentation, benchmarking, reserved, multicast, and the IPv6 forms that embed such an IPv4
/// address (IPv4-mapped and -compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`).
#[must_use]
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let x = u32::from(v4);
            NON_GLOBAL_V4.iter().any(|&(net, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                x & mask == u32::from_be_bytes(net) & mask
            })
        }
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            // IPv4 addresses inside IPv6 ones: mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d.
            let low32 = std::net::Ipv4Addr::from((x & 0xffff_ffff) as u32);
            if in_v6(x, (0xffff << 32, 96)) || in_v6(x, (0x0064_ff9b << 96, 96)) {
                return is_non_public(IpAddr::V4(low32));
            }
            // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
            if in_v6(x, (0x2002 << 112, 16)) {
                let v4 = std::net::Ipv4Addr::from(((x >> 80) & 0xffff_ffff) as u32);
                return is_non_public(IpAddr::V4(v4));
            }
            NON_GLOBAL_V6.iter().any(|&r| in_v6(x, r))
        }
    }
}

/// The addresses of this machine's own interfaces (a public address of the host is still the
/// host: a request to it reaches services bound to every interface).
#[must_use]
pub fn own_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs().map(|v| v.into_iter().map(|i| i.ip()).collect()).unwrap_or_default()
}

/// Why `ip` may not be connected to, if it may not (`own`: this host's addresses, read once per
/// lookup).
fn forbidden(ip: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
    if is_non_public(ip) {
        Some("a loopback, private, link-local or otherwise non-public address")
    } else if own.contains(&ip) {
        Some("an address of this server")
    } else {
        None
    }
}

/// Checks that every address `url`'s host resolves to is public and not this host's (unless
/// `allow_private`). A pre-flight check (registering a webhook, say); the connection itself goes
/// through [`outbound_agent`], whose resolver applies the same rule to the addresses it connects
/// to.
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
    let own = own_addresses();
    for a in addrs {
        if let Some(why) = forbidden(a.ip(), &own) {
            return Err(format!("{authority} resolves to {}, {why}; not allowed", a.ip()));
        }
    }
    Ok(())
}

/// A resolver that refuses forbidden addresses. ureq connects only to the addresses its resolver
/// returns, so the address checked is the address connected to: no second lookup between the
/// check and the connection (DNS rebinding).
#[derive(Debug, Default)]
struct PublicOnly {
    inner: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let own = own_addresses();
        if let Some((a, why)) = addrs.iter().find_map(|a| forbidden(a.ip(), &own).map(|w| (a, w))) {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} resolves to {}, {why}; not allowed", uri.host().unwrap_or("?"), a.ip()),
            )));
        }
        Ok(addrs)
    }
}

/// The HTTP agent for URLs users give (webhooks, remote rewards, HTTP tools): redirects are never
/// followed, statuses are answers (not errors), and unless `allow_private` every connection goes
/// to an address checked by [`is_non_public`] and against this host's own addresses at the moment
/// it is resolved.
#[must_use]
pub fn outbound_agent(allow_private: bool, timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build();
    if allow_private {
        ureq::Agent::new_with_config(config)
    } else {
        ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            PublicOnly::default(),
        )
    }
}

impl Tool for HttpTool {
    fn schema(&self) -> ToolSchema {
        self.schema.clone()
    }

    fn call(&self, arguments: &serde_json::Map<String, Value>) -> ToolOutput {
        use std::io::Read;
        let agent = outbound_agent(self.allow_private, self.timeout);
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
