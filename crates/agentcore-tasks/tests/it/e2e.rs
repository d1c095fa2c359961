//! End to end: seed-suite tasks, an in-process model that calls the sandboxed `python` tool, the
//! verifier against `expected_outcome`, and rewards from the registry.
//!
//! The model is a tiny decoder taught here (a few hundred supervised steps) to reproduce four
//! transcripts: three right tool calls and one plausible wrong one (`max` where the task asks for
//! the minimum), so the test shows the verdict comes from checking the answer, not from the model.

use std::sync::Arc;

use agentcore_agent::backend::InProcessBackend;
use agentcore_agent::rollout::{AgentRuntime, CallFormat, run_batch};
use agentcore_agent::tools::{PythonTool, Toolbox};
use agentcore_agent::trajectory::StopReason;
use agentcore_grpo::rewards::RewardShaping;
use agentcore_model::decoder::{Decoder, DecoderConfig};
use agentcore_model::hub::LoadedModel;
use agentcore_model::loss::masked_nll;
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken, TextTokenizer};
use agentcore_tasks::judge::{RewardInput, RewardRegistry, Verifiers};
use agentcore_tasks::{Task, seed};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn teach(transcripts: &[String]) -> LoadedModel {
    let tok = ByteTokenizer::new();
    let mut config = DecoderConfig::tiny(tok.vocab_size());
    config.d_model = 64;
    config.n_layers = 2;
    config.n_heads = 2;
    config.d_ff = 128;
    config.max_seq_len = 160;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let model = Decoder::new(config, &mut rng, &Device::Cpu).expect("model");
    let mut opt =
        AdamW::new(model.params(), AdamWConfig { learning_rate: 3e-3, ..AdamWConfig::default() })
            .expect("optimizer");
    let seqs: Vec<Vec<u32>> = transcripts.iter().map(|t| tok.encode(t)).collect();
    let width = seqs.iter().map(Vec::len).max().expect("transcripts");
    let mask: Vec<f32> = seqs
        .iter()
        .flat_map(|s| (0..width).map(move |t| if t > 0 && t < s.len() { 1.0 } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (seqs.len(), width), &Device::Cpu).expect("mask");
    for _ in 0..250 {
        let loss = masked_nll(&model, &seqs, &mask, tok.special(SpecialToken::Pad)).expect("loss");
        opt.step(&loss.backward().expect("backward")).expect("step");
    }
    LoadedModel {
        model,
        tokenizer: TextTokenizer::Byte(tok.clone()),
        chat_template: None,
        stop_token_ids: vec![tok.special(SpecialToken::Eos)],
        source: "taught in the test".into(),
    }
}

fn find(tasks: &[Task], family: &str) -> Task {
    tasks
        .iter()
        .find(|t| t.metadata.as_ref().is_some_and(|m| m.family == family))
        .cloned()
        .unwrap_or_else(|| panic!("a {family} task"))
}

#[test]
fn seed_tasks_solved_with_python_and_judged_by_the_verifier() {
    let all = seed::generate(24, 1, Some(1)).expect("seed tasks");
    let tasks =
        [find(&all, "min"), find(&all, "filter_even"), find(&all, "sum"), find(&all, "max")];
    let list = |t: &Task| {
        let q = &t.query;
        q[q.find('[').expect("list")..=q.rfind(']').expect("list")].to_owned()
    };
    // (expression taught, whether it is right for the task)
    let taught = [
        (format!("min({})", list(&tasks[0])), true),
        (format!("[x for x in {} if x % 2 == 0]", list(&tasks[1])), true),
        (format!("sum({})", list(&tasks[2])), true),
        (format!("min({})", list(&tasks[3])), false), // the task asks for the max
    ];
    // The demonstrations carry what python prints, computed by the sandbox itself.
    let sandbox = crate::judge::sandbox();
    let transcripts: Vec<String> = tasks
        .iter()
        .zip(&taught)
        .map(|(t, (expr, _))| {
            let out = sandbox.run(expr).stdout.trim().to_owned();
            format!("<bos>{}<call>{expr}</call><out>{out}</out><ans>{out}</ans>", t.query)
        })
        .collect();
    let model = teach(&transcripts);
    let backend = InProcessBackend::new(&model).expect("backend");
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(PythonTool::new(Arc::clone(&sandbox)))).expect("tool");
    let mut rt = AgentRuntime::new(toolbox, CallFormat::Tags);
    rt.sampling.temperature = 0.0;
    rt.sampling.max_tokens_per_turn = 64;
    rt.max_steps = 4;
    let queries: Vec<String> = tasks.iter().map(|t| t.query.clone()).collect();
    let trajs = run_batch(&rt, &backend, &queries, &mut ChaCha8Rng::seed_from_u64(5));

    let verifiers = Verifiers { sandbox: Some(sandbox), ..Verifiers::default() };
    let mut shaped = RewardRegistry::with_builtins(RewardShaping::default());
    shaped.set_default("shaped").expect("builtin");
    for ((task, (expr, right)), traj) in tasks.iter().zip(&taught).zip(&trajs) {
        assert_eq!(traj.stop_reason, StopReason::Answer, "{traj:#?}");
        assert_eq!(traj.steps[0].action["input"], *expr, "{traj:#?}");
        assert_eq!(traj.successful_tool_calls, 1);
        let verdict = verifiers.verify(task, traj);
        assert_eq!(verdict.passed, *right, "{}: {verdict:?} {traj:#?}", task.query);
        // Two steps (call, answer), one successful call: 1 + 0.1 - 0.02, or 0.1 - 0.02.
        let r = shaped
            .reward(
                "default",
                &RewardInput { task, trajectory: traj, verdict: &verdict, max_steps: 4 },
            )
            .expect("reward");
        let want = if *right { 1.08 } else { 0.08 };
        assert!((r - want).abs() < 1e-9, "{r} vs {want}");
    }
}
