//! The OpenAI-compatible backend: a multi-step tool trajectory against llama.cpp's server
//! (llama-cpp-python, `scripts/setup_llamacpp_server.sh`) serving Gemma 3 270M on loopback, and
//! the error paths (429/5xx retries, 4xx, timeouts) against a scripted loopback server.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentcore_agent::backend::{
    Backend, Conversation, Message, OpenAiBackend, OpenAiSettings, Sampling,
};
use agentcore_agent::rollout::{AgentRuntime, CallFormat, run_batch};
use agentcore_agent::sandbox::{PythonSandbox, SandboxConfig};
use agentcore_agent::tools::{PythonTool, Toolbox};
use agentcore_agent::trajectory::StopReason;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

/// llama.cpp's server on a free loopback port; killed on drop.
struct LlamaServer {
    child: Child,
    base_url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required() -> bool {
    std::env::var_os("AGENTCORE_REQUIRE_LLAMACPP").is_some()
}

fn llama_server() -> Option<LlamaServer> {
    llama_server_with(&[])
}

/// The server with extra arguments (e.g. `--embedding true`).
fn llama_server_with(extra: &[&str]) -> Option<LlamaServer> {
    let python = std::env::var_os("AGENTCORE_LLAMACPP_PYTHON").map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("AGENTCORE_CACHE").map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentcore"))
        })?;
        Some(cache.join("llamacpp-venv/bin/python"))
    });
    let model = agentcore_model::hub::default_gemma_gguf_path();
    let (Some(python), Some(model)) = (python, model) else {
        assert!(!required(), "no llama.cpp python or model path");
        return None;
    };
    if !python.exists() || !model.exists() {
        assert!(
            !required(),
            "AGENTCORE_REQUIRE_LLAMACPP is set but {} or {} is missing (run scripts/setup_llamacpp_server.sh and scripts/fetch_gemma3.sh)",
            python.display(),
            model.display()
        );
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&python)
        .args(["-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--model")
        .arg(&model)
        .args(["--n_threads", "2", "--n_ctx", "2048", "--chat_format", "gemma"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama.cpp server");
    let server = LlamaServer { child, base_url: format!("http://127.0.0.1:{port}/v1") };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if ureq::get(&format!("{}/models", server.base_url)).call().is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("llama.cpp server did not come up within 120 s");
}

const INSTRUCTIONS: &str = r#"You can run Python code. To run code, reply with exactly <tool_call>{"name": "python", "arguments": {"code": "<code>"}}</tool_call> and nothing else. After you see the result, reply with <answer>result</answer>.

Example:
Question: Reverse the list [1, 2, 3].
You: <tool_call>{"name": "python", "arguments": {"code": "print(list(reversed([1, 2, 3])))"}}</tool_call>
Result: [3, 2, 1]
You: <answer>[3, 2, 1]</answer>"#;

#[test]
fn multi_step_tool_trajectory_against_llama_cpp() {
    let Some(server) = llama_server() else { return };
    let mut settings = OpenAiSettings::new(&server.base_url, "gemma-3-270m");
    settings.native_tools = false;
    // llama-cpp-python computes log-probs in Python over the 262k vocabulary (~0.45 s a token
    // here): off for the trajectory, checked on a 3-token turn below.
    settings.logprobs = false;
    settings.system_in_user = true;
    settings.stop = vec!["</tool_call>".into(), "</answer>".into()];
    settings.input_usd_per_million = Decimal::new(15, 2); // $0.15 / M
    settings.output_usd_per_million = Decimal::new(60, 2); // $0.60 / M
    let backend = OpenAiBackend::new(settings.clone());
    let mut c = SandboxConfig::detect().expect("python3 and the launcher");
    c.launcher = vec![env!("CARGO_BIN_EXE_agentcore-sandbox").into()];
    let mut toolbox = Toolbox::new();
    toolbox
        .add(Arc::new(PythonTool::new(Arc::new(PythonSandbox::new(c).expect("sandbox")))))
        .unwrap();
    let mut rt = AgentRuntime::new(toolbox, CallFormat::Hermes);
    rt.system_prompt = INSTRUCTIONS.into();
    rt.sampling = Sampling { temperature: 0.0, top_p: 1.0, top_k: None, max_tokens_per_turn: 60 };
    rt.max_steps = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let trajs = run_batch(&rt, &backend, &["Question: Sort the list [7, 3, 9].".into()], &mut rng);
    let t = &trajs[0];
    assert!(t.error.is_none(), "{t:#?}");
    assert!(t.steps.len() >= 2, "multi-step: {t:#?}");
    // Step 1: the model called python; the sandbox ran the code.
    assert_eq!(t.steps[0].action["type"], "tool_call", "{t:#?}");
    assert_eq!(t.steps[0].action["name"], "python", "{t:#?}");
    assert_eq!(t.steps[0].result["ok"], true, "{t:#?}");
    assert!(t.successful_tool_calls >= 1);
    // The run ended with an answer after seeing the observation.
    assert_eq!(t.stop_reason, StopReason::Answer, "{t:#?}");
    assert_eq!(t.steps.last().unwrap().action["type"], "answer");
    assert!(t.final_answer.is_some());
    // Usage from the server, priced per million tokens.
    assert!(t.usage.input_tokens > 0 && t.usage.output_tokens > 0);
    let want = (Decimal::from(t.usage.input_tokens) * settings.input_usd_per_million
        + Decimal::from(t.usage.output_tokens) * settings.output_usd_per_million)
        / Decimal::from(1_000_000);
    assert_eq!(t.cost_usd, want);
    // The sandbox really ran the model's code: python printed the sorted list.
    assert_eq!(t.steps[0].result["output"], "[3, 7, 9]", "{t:#?}");
    // The same request again gives the same first turn. (Not the same whole trajectory:
    // llama-cpp-python reuses the previous request's cached prefix, so later turns run from KV
    // states computed in other batch shapes, and the 270M model's greedy pick can flip; on the
    // machine of 2026-12-01 the second answer was "result" for the same requests.)
    let again = run_batch(
        &rt,
        &backend,
        &["Question: Sort the list [7, 3, 9].".into()],
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    assert_eq!(again[0].steps[0].action, t.steps[0].action);
    // Log-probs of the sampled tokens when asked for.
    settings.logprobs = true;
    let backend = OpenAiBackend::new(settings);
    let mut conv =
        Conversation { messages: vec![Message::new("user", "Say hi.")], ..Conversation::default() };
    let sampling = Sampling { temperature: 1.0, top_p: 1.0, top_k: None, max_tokens_per_turn: 3 };
    let turn = backend.turns(&mut [&mut conv], &[], &sampling, &mut rng).remove(0).expect("turn");
    assert_eq!(turn.usage.output_tokens, 3);
    assert_eq!(conv.api_tokens.len(), 1);
    let lp = &conv.api_tokens[0].logprobs;
    assert_eq!(lp.len(), 3, "{lp:?}");
    assert!(lp.iter().all(|&l| l <= 0.0 && l.is_finite()), "{lp:?}");
}

/// A loopback server that answers each request with the next scripted (status, body, delay).
fn scripted_server(script: Vec<(u16, &'static str, Duration)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for (stream, (status, body, delay)) in listener.incoming().zip(script) {
            let mut stream = stream.unwrap();
            let _ = agentcore_agent::testing::read_request_body(&stream);
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
            let extra = if status == 429 { "Retry-After: 0\r\n" } else { "" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, hits)
}

const OK_BODY: &str = r#"{"choices":[{"message":{"role":"assistant","content":"<answer>4</answer>"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#;

fn one_turn(settings: OpenAiSettings) -> Result<String, String> {
    let backend = OpenAiBackend::new(settings);
    let mut conv =
        Conversation { messages: vec![Message::new("user", "2+2?")], ..Conversation::default() };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    backend
        .turns(&mut [&mut conv], &[], &Sampling::default(), &mut rng)
        .remove(0)
        .map(|t| t.text)
        .map_err(|e| e.0)
}

#[test]
fn retries_429_and_5xx_then_succeeds() {
    let zero = Duration::ZERO;
    let (url, hits) = scripted_server(vec![
        (429, r#"{"error":"slow down"}"#, zero),
        (503, r#"{"error":"busy"}"#, zero),
        (200, OK_BODY, zero),
    ]);
    let mut s = OpenAiSettings::new(&url, "m");
    s.initial_backoff_s = 0.01;
    assert_eq!(one_turn(s).unwrap(), "<answer>4</answer>");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[test]
fn client_errors_are_not_retried_and_retries_are_bounded() {
    let zero = Duration::ZERO;
    let (url, hits) = scripted_server(vec![(400, r#"{"error":"bad model"}"#, zero); 3]);
    let mut s = OpenAiSettings::new(&url, "m");
    s.initial_backoff_s = 0.01;
    let e = one_turn(s).unwrap_err();
    assert!(e.contains("HTTP 400") && e.contains("bad model"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let (url, hits) = scripted_server(vec![(500, r#"{"error":"down"}"#, zero); 5]);
    let mut s = OpenAiSettings::new(&url, "m");
    s.initial_backoff_s = 0.01;
    s.max_retries = 2;
    let e = one_turn(s).unwrap_err();
    assert!(e.contains("HTTP 500") && e.contains("gave up after 2 retries"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[test]
fn slow_server_times_out() {
    let (url, _) = scripted_server(vec![(200, OK_BODY, Duration::from_secs(3)); 2]);
    let mut s = OpenAiSettings::new(&url, "m");
    s.timeout_s = 0.3;
    s.max_retries = 1;
    s.initial_backoff_s = 0.01;
    let t = Instant::now();
    let e = one_turn(s).unwrap_err();
    assert!(e.to_lowercase().contains("timeout") || e.to_lowercase().contains("timed out"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn missing_api_key_variable_is_an_error_naming_the_variable_not_a_value() {
    let mut s = OpenAiSettings::new("http://127.0.0.1:9/v1", "m");
    s.api_key_env = Some("AGENTCORE_TEST_SURELY_UNSET_KEY".into());
    let e = one_turn(s).unwrap_err();
    assert!(e.contains("AGENTCORE_TEST_SURELY_UNSET_KEY is not set"), "{e}");
}

#[test]
fn under_the_address_rule_a_loopback_endpoint_is_never_connected_to() {
    let (url, hits) = scripted_server(vec![(200, OK_BODY, Duration::ZERO); 2]);
    let mut s = OpenAiSettings::new(&url, "m");
    s.max_retries = 0;
    let backend = OpenAiBackend::with_address_rule(s.clone(), false);
    let mut conv =
        Conversation { messages: vec![Message::new("user", "2+2?")], ..Conversation::default() };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = backend.turns(&mut [&mut conv], &[], &Sampling::default(), &mut rng).remove(0);
    let e = e.expect_err("refused").0;
    assert!(e.contains("127.0.0.1") && e.contains("not allowed"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the server was reached");
    // The same endpoint with private addresses allowed (the CLI's backend) answers.
    assert_eq!(one_turn(s).unwrap(), "<answer>4</answer>");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// `/v1/embeddings` of llama.cpp's server started with `--embedding true` (it answers one
/// vector per token; the backend mean-pools them): one vector of the model's width per text,
/// the same text gives the same vector, and the tokens are the server's, priced.
#[test]
fn embeddings_from_llama_cpp() {
    let Some(server) = llama_server_with(&["--embedding", "true"]) else { return };
    let mut settings = OpenAiSettings::new(&server.base_url, "gemma-3-270m");
    settings.input_usd_per_million = Decimal::new(2, 2); // $0.02 / M
    let backend = OpenAiBackend::new(settings.clone());
    let texts: Vec<String> = ["Find the maximum value in [3, 17, 4]", "Sort the list [5, 0, 7]"]
        .map(String::from)
        .to_vec();
    let (vectors, usage) = backend.embeddings(&texts).expect("embeddings");
    assert_eq!(vectors.len(), 2);
    // Gemma 3 270M's hidden width.
    assert!(vectors.iter().all(|v| v.len() == 640), "{:?}", vectors.iter().map(Vec::len));
    assert!(vectors.iter().all(|v| v.iter().all(|x| x.is_finite())));
    assert_ne!(vectors[0], vectors[1]);
    assert!(usage.input_tokens >= 10, "{usage:?}");
    assert_eq!(
        settings.cost(usage),
        Decimal::from(usage.input_tokens) * Decimal::new(2, 2) / Decimal::from(1_000_000)
    );
    let (again, _) = backend.embeddings(&texts[..1]).expect("embeddings");
    assert_eq!(again[0], vectors[0]);
    assert!(backend.embeddings(&[]).expect("nothing to embed").0.is_empty());
}

/// OpenAI's answer shape (one vector per text, `index` giving the order, usage), and answers
/// that do not fit the request are errors that say why.
#[test]
fn embedding_answers_are_ordered_by_index_and_checked() {
    let zero = Duration::ZERO;
    let (url, _) = scripted_server(vec![
        (
            200,
            r#"{"data":[{"index":1,"embedding":[0.0,1.0]},{"index":0,"embedding":[1.0,0.0]}],"usage":{"prompt_tokens":7}}"#,
            zero,
        ),
        (200, r#"{"data":[{"index":0,"embedding":[1.0,0.0]}]}"#, zero),
        (200, r#"{"data":[{"embedding":[1.0]},{"embedding":[1.0,2.0]}]}"#, zero),
        (200, r#"{"data":[{"embedding":"no"},{"embedding":[1.0]}]}"#, zero),
        (200, r#"{"data":[{"embedding":[[1.0,3.0],[3.0,5.0]]},{"embedding":[1.0,1.0]}]}"#, zero),
    ]);
    let backend = OpenAiBackend::new(OpenAiSettings::new(&url, "embedder"));
    let two = ["a".to_owned(), "b".to_owned()];
    let (v, usage) = backend.embeddings(&two).unwrap();
    assert_eq!((v, usage.input_tokens), (vec![vec![1.0, 0.0], vec![0.0, 1.0]], 7));
    let e = backend.embeddings(&two).unwrap_err().0;
    assert!(e.contains("1 vectors for 2 texts"), "{e}");
    let e = backend.embeddings(&two).unwrap_err().0;
    assert!(e.contains("different widths"), "{e}");
    let e = backend.embeddings(&two).unwrap_err().0;
    assert!(e.contains("data[0].embedding is not a vector of numbers"), "{e}");
    // One vector per token: their mean; no usage: counted locally.
    let (v, usage) = backend.embeddings(&two).unwrap();
    assert_eq!((v[0].clone(), usage.input_tokens), (vec![2.0, 4.0], 2));
}

/// `replicas`: a replica that answers 5xx is passed over on the retry, and the turn is
/// answered by another.
#[test]
fn a_retry_moves_to_another_replica() {
    let (down, down_hits) =
        agentcore_agent::testing::serve(|_| (503, r#"{"error":"busy"}"#.to_owned()));
    let (up, up_hits) = agentcore_agent::testing::serve(|_| (200, OK_BODY.to_owned()));
    let mut s = OpenAiSettings::new(&format!("{down}/v1"), "m");
    s.replicas = vec![format!("{up}/v1")];
    s.initial_backoff_s = 0.01;
    s.max_retries = 1;
    assert_eq!(one_turn(s).unwrap(), "<answer>4</answer>");
    assert_eq!((down_hits.load(Ordering::SeqCst), up_hits.load(Ordering::SeqCst)), (1, 1));
}
