//! An API agent's job counts every token it pays for: rollouts and each held-out evaluation
//! (the baseline, the periodic ones, the final one) alike, at the endpoint's prices. (The
//! evaluations' tokens used to be left out of `cost_usd` and so of the budget.)
//!
//! The endpoint is a loopback OpenAI-compatible server that answers every chat completion with
//! `<answer>1</answer>` and a fixed usage, so every trajectory is one turn of known cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use agentcore_agent::definition::AgentDefinition;
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_train::events::Event;
use agentcore_train::job::{JobContext, run};
use rust_decimal::Decimal;
use serde_json::json;

/// The server's URL and the count of requests it answered.
fn endpoint() -> (String, Arc<AtomicUsize>) {
    let body = json!({
        "choices": [{"message": {"role": "assistant", "content": "<answer>1</answer>"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}
    })
    .to_string();
    let (url, hits) = agentcore_agent::testing::serve(move |_| (200, body.clone()));
    (format!("{url}/v1"), hits)
}

#[test]
fn rollouts_and_every_evaluation_are_priced_into_the_cost_and_the_budget() {
    let (url, hits) = endpoint();
    let agent = AgentDefinition::from_yaml(&format!(
        "agent_id: priced\npolicy: prompt\nsystem_prompt: Answer.\n\
         model: {{kind: openai, base_url: '{url}', model: m, input_usd_per_million: 1, \
         output_usd_per_million: 2, native_tools: false, logprobs: false, max_retries: 0}}\n\
         tools: [{{type: python}}]\nprompt_policy: {{reflection: {{enabled: false}}}}"
    ))
    .unwrap();
    let config = json!({"n_iterations": 3, "batch_size": 2, "n_trajectories_per_query": 2,
                        "eval_interval": 2, "checkpoint_interval": 1, "seed": 1});
    let mut settings =
        agentcore_train::spec::resolve(&agent, Some(config.as_object().unwrap()), None).unwrap();
    settings.n_tasks = 24;
    // Only the endpoint's tokens cost money here.
    settings.price_per_hour_usd = Decimal::ZERO;
    let eval_n = settings.tasks().unwrap().1.len();
    assert!(eval_n > 0);
    let dir = tempfile::tempdir().unwrap();
    let ctx = JobContext {
        data_dir: dir.path().to_path_buf(),
        job_id: "priced-job".into(),
        stop: Arc::new(AtomicBool::new(false)),
        faults: agentcore_train::faults::Faults::default(),
        artifacts: Arc::new(agentcore_artifacts::Artifacts::local()),
        recorded_checkpoints: None,
    };
    let sandbox = Arc::new(PythonSandbox::detect().expect("python3 and the sandbox launcher"));
    let mut iteration_costs = Vec::new();
    let summary = run(&settings, &ctx, sandbox, &mut |e| {
        if let Event::Iteration(m) = e {
            iteration_costs.push(m.cost_usd);
        }
    })
    .unwrap();
    // $1 / M in, $2 / M out: 100 + 20 micro-dollars a turn, one turn a trajectory.
    let turn = Decimal::new(120, 6);
    let turns = |n: usize| Decimal::from(n) * turn;
    // After iteration 1: the baseline and 4 rollouts; after 2: 4 more and the evaluation at 2;
    // after 3 (the last): 4 more and the final evaluation.
    assert_eq!(
        iteration_costs,
        [turns(eval_n + 4), turns(2 * eval_n + 8), turns(3 * eval_n + 12)],
        "{eval_n} held-out queries"
    );
    assert_eq!(summary.cost_usd, turns(3 * eval_n + 12));
    assert_eq!(hits.load(Ordering::SeqCst), 3 * eval_n + 12, "one request a trajectory");
}
