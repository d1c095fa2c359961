//! Turns from an OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, ...).
//!
//! Retries 429 and 5xx answers and transport errors with exponential backoff (honouring
//! `Retry-After`), bounds every request with a timeout, prices tokens per million, and keeps the
//! sampled log-probs (and token ids, from servers that send `token_id:N` tokens) when the server
//! returns them. The API key is read from the named environment variable at request time and never
//! appears in errors or logs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Backend, BackendError, Conversation, Message, Sampling, ToolSchema, Turn, TurnEnd};
use crate::toolcall::parse_openai;
use crate::trajectory::Usage;

/// Connection, pricing and retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSettings {
    /// Base URL up to `/v1` (e.g. `http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Name of the environment variable holding the API key (none: no `Authorization` header).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// USD per million prompt tokens.
    #[serde(default)]
    pub input_usd_per_million: Decimal,
    /// USD per million completion tokens.
    #[serde(default)]
    pub output_usd_per_million: Decimal,
    /// Timeout of one request, seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Retries after a 429, a 5xx or a transport error.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First backoff, seconds (doubles per retry, at most 30 s).
    #[serde(default = "default_backoff_s")]
    pub initial_backoff_s: f64,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Ask for log-probs of the sampled tokens.
    #[serde(default = "yes")]
    pub logprobs: bool,
    /// Send the tools as OpenAI `tools` (servers with function calling); otherwise the model
    /// writes Hermes `<tool_call>` text, which the loop parses.
    #[serde(default = "yes")]
    pub native_tools: bool,
    /// Stop strings sent with each request (e.g. `</tool_call>` for Hermes text calls).
    #[serde(default)]
    pub stop: Vec<String>,
    /// Send the system prompt as the start of the first user message, for servers whose chat
    /// format drops system messages (llama.cpp's `gemma` format).
    #[serde(default)]
    pub system_in_user: bool,
    /// Use the text-completions endpoint (`/completions`) with this prompt instead of chat
    /// completions: `{system}` and `{user}` are replaced by the system prompt and the query, and
    /// the model's turn stays open across tool calls (each turn, a tag its stop string cut is
    /// closed, and the tool's result follow as text). Small models that follow a few-shot
    /// transcript but not multi-turn chat answer after a tool result this way. E.g. Gemma:
    /// `"<start_of_turn>user\n{system}\n\nTask: {user}<end_of_turn>\n<start_of_turn>model\n"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_prompt: Option<String>,
    /// More base URLs serving the same model (replicas without a load balancer in front, e.g.
    /// several llama.cpp or vLLM processes): each request goes to whichever of `base_url` and
    /// these has the fewest requests in flight, and each retry chooses again, so a failing
    /// replica is passed over while another is free.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
}

fn default_timeout_s() -> f64 {
    120.0
}
fn default_retries() -> u32 {
    4
}
fn default_backoff_s() -> f64 {
    0.5
}
fn default_concurrency() -> usize {
    8
}
fn yes() -> bool {
    true
}

impl OpenAiSettings {
    /// Settings for `base_url` and `model` with defaults elsewhere.
    #[must_use]
    pub fn new(base_url: &str, model: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key_env: None,
            input_usd_per_million: Decimal::ZERO,
            output_usd_per_million: Decimal::ZERO,
            timeout_s: default_timeout_s(),
            max_retries: default_retries(),
            initial_backoff_s: default_backoff_s(),
            concurrency: default_concurrency(),
            logprobs: true,
            native_tools: true,
            stop: Vec::new(),
            system_in_user: false,
            completion_prompt: None,
            replicas: Vec::new(),
        }
    }

    /// `base_url`, then the replicas.
    pub fn base_urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.base_url.as_str()).chain(self.replicas.iter().map(String::as_str))
    }

    /// The base URLs with their fields' names (`base_url`, `replicas[i]`).
    pub fn named_base_urls(&self) -> impl Iterator<Item = (String, &str)> {
        self.base_urls().enumerate().map(|(i, url)| {
            let field = if i == 0 { "base_url".to_owned() } else { format!("replicas[{}]", i - 1) };
            (field, url)
        })
    }

    /// The first base URL that is not `http://` or `https://`: its field and the URL.
    #[must_use]
    pub fn bad_url(&self) -> Option<(String, &str)> {
        self.named_base_urls()
            .find(|(_, url)| !(url.starts_with("http://") || url.starts_with("https://")))
    }

    /// The cost of a turn.
    #[must_use]
    pub fn cost(&self, usage: Usage) -> Decimal {
        let million = Decimal::from(1_000_000u32);
        (Decimal::from(usage.input_tokens) * self.input_usd_per_million
            + Decimal::from(usage.output_tokens) * self.output_usd_per_million)
            / million
    }
}

/// The backend.
#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    settings: OpenAiSettings,
    agent: ureq::Agent,
    /// Requests in flight per base URL (`base_url`, then the replicas), shared by clones.
    in_flight: Arc<Mutex<Vec<usize>>>,
}

/// One request in flight to a base URL, counted out when dropped.
struct InFlight {
    counts: Arc<Mutex<Vec<usize>>>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c[self.index] = c[self.index].saturating_sub(1);
        }
    }
}

/// Sampled tokens of one API turn, when the server returned log-probs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokens {
    /// Token ids, when the server sent them (`token_id:N` tokens).
    pub ids: Option<Vec<u32>>,
    /// Log-prob of each sampled token.
    pub logprobs: Vec<f32>,
}

impl OpenAiBackend {
    /// A backend with these settings that may connect to any address (the CLI: the user's own
    /// machine, where a local inference server on loopback is the common case).
    #[must_use]
    pub fn new(settings: OpenAiSettings) -> Self {
        Self::with_address_rule(settings, true)
    }

    /// A backend whose connections, unless `allow_private`, go only to public addresses that
    /// are not this host's, checked when each connection's address is resolved (the service:
    /// a tenant's agent must not reach the server's own network). Redirects are never
    /// followed: a prompt (and the API key) go only where the agent says.
    #[must_use]
    pub fn with_address_rule(settings: OpenAiSettings, allow_private: bool) -> Self {
        let timeout = Duration::from_secs_f64(settings.timeout_s.max(0.001));
        let agent = crate::tools::outbound_agent(allow_private, timeout);
        let in_flight = Arc::new(Mutex::new(vec![0; settings.replicas.len() + 1]));
        Self { settings, agent, in_flight }
    }

    /// The base URL with the fewest requests in flight (the first on ties), other than `avoid`
    /// (the one the previous attempt failed on) when there is another; counted in until the
    /// guard is dropped.
    fn choose(&self, avoid: Option<usize>) -> (usize, &str, InFlight) {
        let mut counts = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = (0..counts.len())
            .filter(|&i| counts.len() == 1 || Some(i) != avoid)
            .min_by_key(|&i| counts[i])
            .unwrap_or(0);
        counts[index] += 1;
        let url = self.settings.base_urls().nth(index).unwrap_or(&self.settings.base_url);
        (index, url, InFlight { counts: Arc::clone(&self.in_flight), index })
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &OpenAiSettings {
        &self.settings
    }

    /// The text-completion prompt of a conversation: the template with the system prompt and
    /// the query, then every later message as text (model turns with the tag their stop string
    /// cut closed again).
    #[must_use]
    pub fn completion_text(&self, template: &str, conv: &Conversation) -> String {
        let mut system = String::new();
        let mut user: Option<&str> = None;
        let mut rest = String::new();
        for m in &conv.messages {
            match (m.role.as_str(), user) {
                ("system", None) => system = m.content.clone(),
                ("user", None) => user = Some(&m.content),
                ("assistant", _) => {
                    rest.push_str(&m.content);
                    rest.push_str(&self.closing(&m.content));
                    rest.push('\n');
                }
                _ => {
                    rest.push_str(&m.content);
                    rest.push('\n');
                }
            }
        }
        let head = template.replace("{system}", &system).replace("{user}", user.unwrap_or(""));
        head + &rest
    }

    /// The stop strings a turn was cut at are not in its text: a `</tag>` stop whose `<tag>` is
    /// open in the text is written back.
    fn closing(&self, text: &str) -> String {
        self.settings
            .stop
            .iter()
            .filter_map(|stop| {
                let open = format!("<{}", stop.strip_prefix("</")?);
                let opened = text.matches(open.as_str()).count();
                let closed = text.matches(stop.as_str()).count();
                (opened > closed).then(|| stop.clone())
            })
            .collect()
    }

    /// What every request sends: the model, the turn's sampling, its seed and the stop strings.
    fn request(&self, sampling: &Sampling, seed: u64) -> Value {
        let mut body = json!({
            "model": self.settings.model,
            "max_tokens": sampling.max_tokens_per_turn,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
        });
        if let Some(k) = sampling.top_k {
            body["top_k"] = json!(k);
        }
        if !self.settings.stop.is_empty() {
            body["stop"] = json!(self.settings.stop);
        }
        body
    }

    fn completion_body(
        &self,
        template: &str,
        conv: &Conversation,
        sampling: &Sampling,
        seed: u64,
    ) -> Value {
        let mut body = self.request(sampling, seed);
        body["prompt"] = json!(self.completion_text(template, conv));
        if self.settings.logprobs {
            body["logprobs"] = json!(1);
        }
        body
    }

    fn body(
        &self,
        conv: &Conversation,
        tools: &[ToolSchema],
        sampling: &Sampling,
        seed: u64,
    ) -> Value {
        if let Some(template) = &self.settings.completion_prompt {
            return self.completion_body(template, conv, sampling, seed);
        }
        let mut messages = conv.messages.clone();
        if self.settings.system_in_user
            && let Some(pos) = messages.iter().position(|m| m.role == "system")
        {
            let system = messages.remove(pos);
            if let Some(user) = messages.iter_mut().find(|m| m.role == "user") {
                user.content = format!("{}\n\n{}", system.content, user.content);
            }
        }
        let mut body = self.request(sampling, seed);
        body["messages"] = json!(messages);
        if self.settings.logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(1);
        }
        if self.settings.native_tools && !tools.is_empty() {
            body["tools"] = Value::Array(tools.iter().map(ToolSchema::openai).collect());
        }
        body
    }

    /// One request with retries; returns the parsed response.
    ///
    /// # Errors
    /// After the last retry, or at once for other 4xx answers.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, BackendError> {
        use std::io::Read;
        let mut backoff = self.settings.initial_backoff_s;
        let mut last_error = String::new();
        let mut failed_on = None;
        for attempt in 0..=self.settings.max_retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs_f64(backoff.min(30.0)));
                backoff *= 2.0;
            }
            let (index, base, _in_flight) = self.choose(failed_on);
            failed_on = Some(index);
            let url = format!("{base}{path}");
            let mut req = self.agent.post(&url).header("Content-Type", "application/json");
            if let Some(var) = &self.settings.api_key_env {
                match std::env::var(var) {
                    Ok(key) => req = req.header("Authorization", format!("Bearer {key}")),
                    Err(_) => {
                        return Err(BackendError(format!("the API key variable {var} is not set")));
                    }
                }
            }
            match req.send_json(body) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    let mut text = String::new();
                    let _ = resp.body_mut().as_reader().take(64 << 20).read_to_string(&mut text);
                    if (200..300).contains(&status) {
                        return serde_json::from_str(&text).map_err(|e| {
                            BackendError(format!("{url}: response is not JSON ({e})"))
                        });
                    }
                    let snippet: String = text.chars().take(500).collect();
                    last_error = format!("{url}: HTTP {status}: {snippet}");
                    if status == 429 || status >= 500 {
                        if let Some(s) = retry_after {
                            backoff = s.max(backoff);
                        }
                        continue;
                    }
                    return Err(BackendError(last_error));
                }
                Err(e) => {
                    last_error = format!("{url}: {e}");
                }
            }
        }
        Err(BackendError(format!(
            "{last_error} (gave up after {} retries)",
            self.settings.max_retries
        )))
    }

    /// Embeddings of `texts` from the endpoint's `/embeddings`, in one request, and the tokens
    /// it counted (counted locally when it sends no usage). A server that returns one vector per
    /// token (llama.cpp without pooling) gets them mean-pooled.
    ///
    /// # Errors
    /// The request's, or an answer without one vector of one width per text.
    pub fn embeddings(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), BackendError> {
        if texts.is_empty() {
            return Ok((Vec::new(), Usage::default()));
        }
        let body = json!({"model": self.settings.model, "input": texts});
        let resp = self.post("/embeddings", &body)?;
        let bad = |why: &str| BackendError(format!("/embeddings: {why}"));
        let data = resp["data"].as_array().ok_or_else(|| bad("the answer has no data array"))?;
        if data.len() != texts.len() {
            return Err(bad(&format!("{} vectors for {} texts", data.len(), texts.len())));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (k, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(k, |i| i as usize);
            let slot =
                out.get_mut(index).ok_or_else(|| bad(&format!("index {index} out of range")))?;
            *slot =
                Some(pooled(&item["embedding"]).ok_or_else(|| {
                    bad(&format!("data[{k}].embedding is not a vector of numbers"))
                })?);
        }
        let vectors: Vec<Vec<f32>> = out
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| bad(&format!("no vector for text {i}"))))
            .collect::<Result<_, _>>()?;
        let width = vectors[0].len();
        if width == 0 || vectors.iter().any(|v| v.len() != width) {
            return Err(bad("the vectors are empty or of different widths"));
        }
        let usage = Usage {
            input_tokens: resp["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap_or_else(|| texts.iter().map(|t| local_tokens(t)).sum()),
            output_tokens: 0,
        };
        Ok((vectors, usage))
    }

    fn read_turn(
        &self,
        request: &Value,
        resp: &Value,
    ) -> Result<(Turn, Message, Option<ApiTokens>), BackendError> {
        let choice = &resp["choices"][0];
        let message = &choice["message"];
        let completion = choice["text"].as_str();
        if message.is_null() && completion.is_none() {
            return Err(BackendError(format!("response has no choices[0].message: {resp}")));
        }
        let text =
            completion.or_else(|| message["content"].as_str()).unwrap_or_default().to_owned();
        let tool_calls =
            message.get("tool_calls").filter(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        // The endpoint's usage; counted locally (about four characters a token) when it sends
        // none, so that the cost and the budget still see every token.
        let usage = Usage {
            input_tokens: resp["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap_or_else(|| local_tokens(&request_text(request))),
            output_tokens: resp["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or_else(|| local_tokens(&text)),
        };
        let tokens = choice["logprobs"]["content"].as_array().map(|items| {
            let logprobs: Vec<f32> =
                items.iter().map(|t| t["logprob"].as_f64().unwrap_or(f64::NAN) as f32).collect();
            let ids: Option<Vec<u32>> = items
                .iter()
                .map(|t| t["token"].as_str()?.strip_prefix("token_id:")?.parse().ok())
                .collect();
            ApiTokens { ids, logprobs }
        });
        let assistant = Message {
            role: "assistant".into(),
            content: text.clone(),
            tool_calls: tool_calls.cloned(),
            tool_call_id: None,
        };
        Ok((
            Turn {
                text,
                native_tool_calls: tool_calls.map(parse_openai),
                usage,
                cost_usd: self.settings.cost(usage),
                end: if choice["finish_reason"] == "length" {
                    TurnEnd::Length
                } else {
                    TurnEnd::Stop
                },
            },
            assistant,
            tokens,
        ))
    }
}

/// One vector from an `embedding` value: a vector of numbers, or one per token (their mean).
fn pooled(v: &Value) -> Option<Vec<f32>> {
    let items = v.as_array()?;
    let numbers = |a: &Vec<Value>| -> Option<Vec<f32>> {
        a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect()
    };
    if items.first().is_some_and(Value::is_array) {
        let rows: Vec<Vec<f32>> =
            items.iter().map(|r| r.as_array().and_then(numbers)).collect::<Option<_>>()?;
        let width = rows.first()?.len();
        if rows.iter().any(|r| r.len() != width) {
            return None;
        }
        let n = rows.len() as f32;
        return Some((0..width).map(|i| rows.iter().map(|r| r[i]).sum::<f32>() / n).collect());
    }
    numbers(items)
}

/// Tokens of a text counted locally: about four characters a token.
fn local_tokens(text: &str) -> u64 {
    text.chars().count().div_ceil(4) as u64
}

/// The text a request sends (its prompt, or its messages' contents).
fn request_text(request: &Value) -> String {
    if let Some(p) = request["prompt"].as_str() {
        return p.to_owned();
    }
    request["messages"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

impl Backend for OpenAiBackend {
    fn start(&self, _conv: &mut Conversation, _tools: &[ToolSchema]) -> Result<(), BackendError> {
        Ok(())
    }

    fn turns(
        &self,
        convs: &mut [&mut Conversation],
        tools: &[ToolSchema],
        sampling: &Sampling,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Result<Turn, BackendError>> {
        // Seeds drawn in order from the job's RNG, so a rerun sends the same requests.
        let bodies: Vec<Value> =
            convs.iter().map(|c| self.body(c, tools, sampling, rng.next_u64() >> 1)).collect();
        let responses = crate::rollout::parallel_map(&bodies, self.settings.concurrency, |b| {
            let path = if self.settings.completion_prompt.is_some() {
                "/completions"
            } else {
                "/chat/completions"
            };
            self.post(path, b).and_then(|r| self.read_turn(b, &r))
        });
        convs
            .iter_mut()
            .zip(responses)
            .map(|(conv, r)| {
                r.map(|(turn, message, tokens)| {
                    conv.messages.push(message);
                    if let Some(t) = tokens {
                        conv.api_tokens.push(t);
                    }
                    turn
                })
            })
            .collect()
    }

    fn observe(
        &self,
        conv: &mut Conversation,
        messages: Vec<Message>,
        _tools: &[ToolSchema],
    ) -> Result<(), BackendError> {
        conv.messages.extend(messages);
        Ok(())
    }

    fn tool_role(&self) -> &'static str {
        "user"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_to_the_replica_with_the_fewest_in_flight_and_retries_move_on() {
        let mut s = OpenAiSettings::new("http://a/v1", "m");
        s.replicas = vec!["http://b/v1".into(), "http://c/v1".into()];
        let backend = OpenAiBackend::new(s);
        let (i0, url0, g0) = backend.choose(None);
        let (i1, url1, g1) = backend.choose(None);
        let (i2, _, g2) = backend.choose(None);
        assert_eq!((i0, url0, i1, url1, i2), (0, "http://a/v1", 1, "http://b/v1", 2));
        drop(g1);
        // b is free again; a and c still have one each.
        let (i3, _, g3) = backend.choose(None);
        assert_eq!(i3, 1);
        drop((g0, g2, g3));
        // All idle: the first, unless the previous attempt failed there.
        assert_eq!(backend.choose(None).0, 0);
        assert_eq!(backend.choose(Some(0)).0, 1);
        // Clones share the counts.
        let clone = backend.clone();
        let (_, _, held) = backend.choose(None);
        assert_eq!(clone.choose(None).0, 1);
        drop(held);
        // One URL: a retry goes where it must.
        let single = OpenAiBackend::new(OpenAiSettings::new("http://a/v1", "m"));
        assert_eq!(single.choose(Some(0)).0, 0);
    }
}
