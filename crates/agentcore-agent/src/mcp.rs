//! MCP servers over stdio, through the official `rmcp` SDK: each tool the server lists becomes a
//! [`crate::tools::Tool`] of the agent.
//!
//! The server is a program the user configured (trusted like any tool they install): it is not
//! sandboxed, but it starts with an empty environment apart from `PATH`, `HOME`, `LANG` and the
//! variables the definition names, so the trainer's secrets do not reach it. Calls time out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use serde_json::{Map, Value};

use crate::backend::ToolSchema;
use crate::tools::{Tool, ToolOutput};

/// A running MCP server and its client.
pub struct McpServer {
    runtime: tokio::runtime::Runtime,
    client: Option<RunningService<RoleClient, ()>>,
    tools: Vec<rmcp::model::Tool>,
    timeout: Duration,
    label: String,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("server", &self.label)
            .field("tools", &self.tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl McpServer {
    /// Starts `command args...`, performs the MCP handshake and lists its tools.
    ///
    /// # Errors
    /// When the program cannot start, the handshake fails or times out.
    pub fn spawn(
        command: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Arc<Self>, String> {
        let label = std::iter::once(command)
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agentcore-mcp")
            .enable_all()
            .build()
            .map_err(|e| format!("MCP server `{label}`: {e}"))?;
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(args).env_clear();
        for key in ["PATH", "HOME", "LANG"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(env);
        let (client, tools) = runtime
            .block_on(async {
                let transport =
                    TokioChildProcess::new(cmd).map_err(|e| format!("cannot start: {e}"))?;
                let start = async {
                    let client =
                        ().serve(transport).await.map_err(|e| format!("handshake failed: {e}"))?;
                    let tools = client
                        .list_all_tools()
                        .await
                        .map_err(|e| format!("tools/list failed: {e}"))?;
                    Ok::<_, String>((client, tools))
                };
                tokio::time::timeout(timeout, start)
                    .await
                    .map_err(|_| format!("no answer within {:.1} s", timeout.as_secs_f64()))?
            })
            .map_err(|e: String| format!("MCP server `{label}`: {e}"))?;
        Ok(Arc::new(Self { runtime, client: Some(client), tools, timeout, label }))
    }

    /// The tools the server offers, named `prefix` + the server's name for each.
    #[must_use]
    pub fn tools(self: &Arc<Self>, prefix: &str) -> Vec<McpTool> {
        self.tools
            .iter()
            .map(|t| McpTool {
                server: Arc::clone(self),
                tool: t.clone(),
                name: format!("{prefix}{}", t.name),
            })
            .collect()
    }

    fn call(&self, name: &str, arguments: &Map<String, Value>) -> ToolOutput {
        let Some(client) = &self.client else {
            return ToolOutput::error("the MCP server is closed");
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments.clone());
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, client.call_tool(params)).await });
        match result {
            Err(_) => ToolOutput::error(format!(
                "MCP tool `{name}` did not answer within {:.1} s",
                self.timeout.as_secs_f64()
            )),
            Ok(Err(e)) => ToolOutput::error(format!("MCP tool `{name}` failed: {e}")),
            Ok(Ok(r)) => {
                let mut text: Vec<String> =
                    r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
                if text.is_empty()
                    && let Some(s) = &r.structured_content
                {
                    text.push(s.to_string());
                }
                ToolOutput { ok: r.is_error != Some(true), content: text.join("\n") }
            }
        }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), client.cancel()).await
            });
        }
    }
}

/// One tool of an MCP server.
#[derive(Debug, Clone)]
pub struct McpTool {
    server: Arc<McpServer>,
    tool: rmcp::model::Tool,
    name: String,
}

impl Tool for McpTool {
    fn schema(&self) -> ToolSchema {
        ToolSchema {
            name: self.name.clone(),
            description: self.tool.description.as_deref().unwrap_or_default().to_owned(),
            parameters: Value::Object((*self.tool.input_schema).clone()),
        }
    }

    fn call(&self, arguments: &Map<String, Value>) -> ToolOutput {
        self.server.call(&self.tool.name, arguments)
    }
}
