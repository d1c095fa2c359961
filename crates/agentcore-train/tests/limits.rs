//! The contract's rollout limits reach rollouts and evaluation alike: a job with
//! `max_steps_per_trajectory: 6` lets a trajectory take 6 model turns (the loop used to cap it at
//! 4), and every turn of training and of evaluation gets `max_completion_length` tokens
//! (evaluation used to take 96 whatever the config said).
//!
//! The model is a scripted backend behind the [`Policy`] seam that calls the tool on every turn
//! and never answers, so only the step limit ends a trajectory; the agent loop, the sandboxed
//! python tool, the verifier and the rewards are the job's own.

use std::sync::{Arc, Mutex};

use agentcore_agent::backend::{
    Backend, BackendError, Conversation, Message, Sampling, ToolSchema, Turn, TurnEnd,
};
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::{StopReason, Usage};
use agentcore_train::TrainError;
use agentcore_train::evaluate::Evaluator;
use agentcore_train::policy::{Policy, ScoredBatch, UpdateStats};
use agentcore_train::rollout::{roll_out, sample_tasks};
use agentcore_train::settings::JobSettings;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;

/// Calls the tool on every turn; remembers each turn's token limit.
#[derive(Default)]
struct AlwaysCalls {
    turn_limits: Mutex<Vec<usize>>,
}

impl Backend for AlwaysCalls {
    fn start(&self, _conv: &mut Conversation, _tools: &[ToolSchema]) -> Result<(), BackendError> {
        Ok(())
    }

    fn turns(
        &self,
        convs: &mut [&mut Conversation],
        _tools: &[ToolSchema],
        sampling: &Sampling,
        _rng: &mut ChaCha8Rng,
    ) -> Vec<Result<Turn, BackendError>> {
        let mut limits = self.turn_limits.lock().expect("lock");
        convs
            .iter_mut()
            .map(|conv| {
                limits.push(sampling.max_tokens_per_turn);
                let text = "<call>print(6 * 7)</call>".to_string();
                conv.messages.push(Message::new("assistant", text.clone()));
                Ok(Turn {
                    text,
                    native_tool_calls: None,
                    usage: Usage { input_tokens: 1, output_tokens: 1 },
                    cost_usd: Decimal::ZERO,
                    end: TurnEnd::Stop,
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
}

struct Scripted(Arc<AlwaysCalls>);

impl Policy for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }
    fn backend(&self) -> Result<Box<dyn Backend + '_>, TrainError> {
        Ok(Box::new(&*self.0))
    }
    fn update(&mut self, _batch: &ScoredBatch<'_>) -> Result<UpdateStats, TrainError> {
        Ok(UpdateStats::default())
    }
    fn checkpoint_files(&self, _rng: &ChaCha8Rng) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        Ok(Vec::new())
    }
}

fn settings(max_steps: u32, max_completion_length: u32) -> JobSettings {
    let mut s = JobSettings::embedded();
    s.n_tasks = 20;
    s.config.batch_size = 2;
    s.config.n_trajectories_per_query = 2;
    s.config.max_steps_per_trajectory = max_steps;
    s.config.max_completion_length = max_completion_length;
    // Long enough that only the step limit ends a conversation.
    if let Some(r) = s.rollout.as_mut() {
        r.max_conversation_tokens = 100_000;
    }
    assert!(s.violations().is_empty(), "{:?}", s.violations());
    s
}

#[test]
fn rollouts_and_evaluation_take_as_many_steps_and_tokens_as_the_config_says() {
    let sandbox = Arc::new(PythonSandbox::detect().expect("python3 and the sandbox launcher"));
    for (max_steps, tokens) in [(6, 40), (2, 17)] {
        let settings = settings(max_steps, tokens);
        let (train, eval) = settings.tasks().expect("tasks");
        let backend = Arc::new(AlwaysCalls::default());
        let policy = Scripted(Arc::clone(&backend));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let tasks = sample_tasks(&settings, &train, &mut rng);
        let trajs = roll_out(&settings, &policy, &sandbox, &tasks, &mut rng).expect("rollout");
        assert_eq!(trajs.len(), 4);
        for t in &trajs {
            assert_eq!(t.steps.len(), max_steps as usize, "steps of {t:?}");
            assert_eq!(t.stop_reason, StopReason::StepLimit);
            assert_eq!(t.tool_calls, max_steps, "every turn called the tool");
            assert_eq!(t.successful_tool_calls, max_steps, "the sandbox ran every call");
        }
        let evaluator = Evaluator::new(&settings, &sandbox).expect("evaluator");
        let outcomes = evaluator.evaluate(&policy, &eval[..3]).expect("evaluation");
        for o in &outcomes {
            assert_eq!(o.steps, max_steps as usize);
            assert!(!o.passed, "no answer, no success");
        }
        let limits = backend.turn_limits.lock().expect("lock");
        assert_eq!(limits.len(), (4 + 3) * max_steps as usize, "one entry per turn");
        assert!(limits.iter().all(|&l| l == tokens as usize), "turn limits {limits:?}");
    }
}
