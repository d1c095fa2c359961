//! The agent loop end to end with the in-process model: a tiny model taught (by a few supervised
//! steps here) to write `<call>expression</call>`, the sandboxed `python` tool computing the
//! observation, the model answering, and the verifier scoring the answer.

use std::sync::{Arc, OnceLock};

use agentcore_agent::backend::{Backend, Conversation, InProcessBackend, Message};
use agentcore_agent::rollout::{AgentRuntime, CallFormat, run_batch};
use agentcore_agent::sandbox::{PythonSandbox, SandboxConfig};
use agentcore_agent::tools::{CalculatorTool, PythonTool, Toolbox};
use agentcore_agent::trajectory::StopReason;
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::generate::token_logprobs;
use agentcore_model::hub::LoadedModel;
use agentcore_model::loss::masked_nll;
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken, TextTokenizer};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Queries, the expression the model is taught to send, and the answer (what python prints).
const CASES: [(&str, &str, &str); 3] = [
    ("Sort [3, 1, 2]", "sorted([3, 1, 2])", "[1, 2, 3]"),
    ("Max of [4, 9, 2]", "max([4, 9, 2])", "9"),
    ("Sum of [5, 6]", "sum([5, 6])", "11"),
];

fn transcript(query: &str, expr: &str, out: &str) -> String {
    format!("<bos>{query}<call>{expr}</call><out>{out}</out><ans>{out}</ans>")
}

/// A 2-layer model that has memorised the three transcripts (greedy decoding reproduces them).
fn taught_model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tok = ByteTokenizer::new();
        let mut config = DecoderConfig::tiny(tok.vocab_size());
        config.d_model = 64;
        config.n_layers = 2;
        config.n_heads = 2;
        config.d_ff = 128;
        config.max_seq_len = 128;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let model = Decoder::new(config, &mut rng, &Device::Cpu).expect("model");
        let mut opt = AdamW::new(
            model.params(),
            AdamWConfig { learning_rate: 3e-3, ..AdamWConfig::default() },
        )
        .expect("optimizer");
        let seqs: Vec<Vec<u32>> =
            CASES.iter().map(|(q, e, o)| tok.encode(&transcript(q, e, o))).collect();
        let width = seqs.iter().map(Vec::len).max().expect("cases");
        let mask: Vec<f32> = seqs
            .iter()
            .flat_map(|s| (0..width).map(move |t| if t > 0 && t < s.len() { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (seqs.len(), width), &Device::Cpu).expect("mask");
        let pad = tok.special(SpecialToken::Pad);
        for _ in 0..300 {
            let loss = masked_nll(&model, &seqs, &mask, pad).expect("loss");
            let grads = loss.backward().expect("backward");
            opt.step(&grads).expect("step");
        }
        LoadedModel {
            model,
            tokenizer: TextTokenizer::Byte(tok.clone()),
            chat_template: None,
            stop_token_ids: vec![tok.special(SpecialToken::Eos)],
            source: "test".into(),
        }
    })
}

fn sandbox() -> Arc<PythonSandbox> {
    let mut c = SandboxConfig::detect().expect("python3 and the launcher");
    c.launcher = vec![env!("CARGO_BIN_EXE_agentcore-sandbox").into()];
    Arc::new(PythonSandbox::new(c).expect("sandbox"))
}

fn greedy_runtime(toolbox: Toolbox) -> AgentRuntime {
    let mut rt = AgentRuntime::new(toolbox, CallFormat::Tags);
    rt.sampling.temperature = 0.0;
    rt.sampling.max_tokens_per_turn = 40;
    rt.max_steps = 4;
    rt
}

#[test]
fn in_process_agent_calls_python_and_is_verified() {
    let model = taught_model();
    let backend = InProcessBackend::new(model).expect("backend");
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(PythonTool::new(sandbox()))).expect("tool");
    let rt = greedy_runtime(toolbox);
    let queries: Vec<String> = CASES.iter().map(|c| c.0.to_owned()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let trajs = run_batch(&rt, &backend, &queries, &mut rng);
    let tok = ByteTokenizer::new();
    for ((query, expr, out), t) in CASES.iter().zip(&trajs) {
        assert_eq!(t.stop_reason, StopReason::Answer, "{t:#?}");
        assert_eq!(t.steps.len(), 2, "a tool call, then the answer: {t:#?}");
        assert_eq!(t.steps[0].state, *query);
        assert_eq!(t.steps[0].action["input"], *expr);
        assert_eq!(t.steps[0].result["ok"], true);
        // The observation came from the sandbox: python printed the value.
        assert_eq!(t.steps[0].result["output"], *out);
        assert_eq!(t.steps[1].state, *out);
        assert_eq!(t.tool_calls, 1);
        assert_eq!(t.successful_tool_calls, 1);
        // The verifier, not the agent, decides.
        let expected: serde_json::Value = serde_json::from_str(out).expect("json");
        let answer = t.final_answer.as_deref().expect("answer");
        assert!(json_equal(answer, &expected), "{answer} vs {expected}");
        // Token-exact record: the whole transcript, tool output masked out.
        let trace = t.tokens.as_ref().expect("token trace");
        assert_eq!(tok.decode(&trace.ids), transcript(query, expr, out));
        let out_start = trace
            .ids
            .iter()
            .position(|&i| i == tok.special(SpecialToken::OutStart))
            .expect("<out>");
        let out_end =
            trace.ids.iter().position(|&i| i == tok.special(SpecialToken::OutEnd)).expect("</out>");
        let prompt_len = tok.encode(&format!("<bos>{query}")).len();
        for (k, &m) in trace.mask.iter().enumerate() {
            let env = k < prompt_len || (out_start..=out_end).contains(&k);
            assert_eq!(m, u8::from(!env), "token {k} mask");
            if env {
                assert!(trace.logprobs[k].abs() < f32::MIN_POSITIVE);
            } else {
                assert!(trace.logprobs[k] <= 0.0 && trace.logprobs[k].is_finite());
            }
        }
        // Assistant tokens of the answer belong to step 1, the call to step 0.
        assert_eq!(trace.step[trace.step.len() - 1], 1);
        assert_eq!(trace.step[prompt_len], 0);
    }
}

/// JSON equality of the answer; the real verifier runs on such trajectories in
/// `agentcore-tasks/tests/it/e2e.rs` (that crate depends on this one).
fn json_equal(answer: &str, expected: &serde_json::Value) -> bool {
    serde_json::from_str::<serde_json::Value>(answer.trim()).is_ok_and(|v| &v == expected)
}

#[test]
fn sampled_logprobs_match_rescoring_the_trace() {
    let model = taught_model();
    let backend = InProcessBackend::new(model).expect("backend");
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(PythonTool::new(sandbox()))).expect("tool");
    let mut rt = greedy_runtime(toolbox);
    rt.sampling.temperature = 1.0;
    let queries = vec!["Sort [3, 1, 2]".to_owned(); 4];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let trajs = run_batch(&rt, &backend, &queries, &mut rng);
    for t in &trajs {
        let trace = t.tokens.as_ref().expect("trace");
        let scored = token_logprobs(&model.model, std::slice::from_ref(&trace.ids), 1.0, 0)
            .expect("score")
            .squeeze(0)
            .expect("row")
            .to_vec1::<f32>()
            .expect("vec");
        for (k, (&m, &lp)) in trace.mask.iter().zip(&trace.logprobs).enumerate() {
            if m == 1 {
                assert!((scored[k] - lp).abs() < 1e-3, "token {k}: {} vs {lp}", scored[k]);
            }
        }
    }
}

#[test]
fn tool_errors_and_limits_are_recorded_not_raised() {
    let model = taught_model();
    let backend = InProcessBackend::new(model).expect("backend");
    // The model sends python expressions to a calculator: the error comes back as an observation.
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(CalculatorTool)).expect("tool");
    let mut rt = greedy_runtime(toolbox);
    rt.max_steps = 1;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let trajs = run_batch(&rt, &backend, &["Sort [3, 1, 2]".to_owned()], &mut rng);
    let t = &trajs[0];
    assert_eq!(t.stop_reason, StopReason::StepLimit, "{t:#?}");
    assert_eq!(t.tool_calls, 1);
    assert_eq!(t.successful_tool_calls, 0);
    assert_eq!(t.steps[0].result["ok"], false);
    // Token limit: the prompt alone fills it.
    let mut rt = greedy_runtime(Toolbox::new());
    rt.max_tokens = 5;
    let t = &run_batch(&rt, &backend, &["Sum of [5, 6]".to_owned()], &mut rng)[0];
    assert_eq!(t.stop_reason, StopReason::TokenLimit, "{t:#?}");
    // A prompt longer than the model's context is a recorded error.
    let t = &run_batch(&rt, &backend, &["x".repeat(500)], &mut rng)[0];
    assert_eq!(t.stop_reason, StopReason::Error);
    assert!(t.error.as_deref().is_some_and(|e| e.contains("128")), "{t:#?}");
}

#[test]
fn observe_appends_environment_tokens_only() {
    let model = taught_model();
    let backend = InProcessBackend::new(model).expect("backend");
    let mut conv =
        Conversation { messages: vec![Message::new("user", "hi")], ..Conversation::default() };
    backend.start(&mut conv, &[]).expect("start");
    let before = conv.tokens.clone().expect("trace");
    backend.observe(&mut conv, vec![Message::new("tool", "42")], &[]).expect("observe");
    let after = conv.tokens.expect("trace");
    assert_eq!(&after.ids[..before.ids.len()], &before.ids[..]);
    let tok = ByteTokenizer::new();
    assert_eq!(tok.decode(&after.ids[before.ids.len()..]), "<out>42</out>");
    assert!(after.mask.iter().all(|&m| m == 0));
}
