//! Every default of a job in one place: the embedded default (the built-in model), the
//! real-model default (a pretrained model with LoRA), rollout limits and the job's fixed numbers.
//! Nothing else in the crate writes a number that a job's settings could mean.

use std::time::Duration;

use agentcore_grpo::GRPOConfig;
use rust_decimal::Decimal;

/// The id the built-in agent is registered under.
pub const SEED_AGENT_ID: &str = "seed-agent";
/// Checkpoints kept besides the latest: the best this many by validation success.
pub const KEEP_BEST_CHECKPOINTS: usize = 5;
/// The job-state file inside a checkpoint directory.
pub const JOB_STATE_FILE: &str = "job_state.json";
/// The file of a checkpoint directory that lists every other file with its size and SHA-256
/// (written last; a checkpoint whose files do not match it is not loaded).
pub const MANIFEST_FILE: &str = "manifest.json";
/// The settings file of a run directory.
pub const JOB_FILE: &str = "job.json";
/// The agent type whose reward strategy a job uses when its agent names none.
pub const DEFAULT_AGENT_TYPE: &str = "default";

/// Seed tasks generated for the embedded default (split into train and held-out).
pub const N_TASKS: usize = 1200;
/// Seed tasks of a pretrained model's job (generation on CPU is slow).
pub const REAL_MODEL_N_TASKS: usize = 48;
/// Share of each task family held out for evaluation.
pub const EVAL_FRACTION: f64 = 0.2;
/// Hardest seed-task difficulty of the embedded default.
pub const MAX_DIFFICULTY: u8 = 2;
/// Price of an hour of this machine, US cents (the cost of local compute): $0.10.
pub const PRICE_PER_HOUR_USD_CENTS: i64 = 10;
/// The reward function of a job that names none.
pub const REWARD: &str = "outcome";

/// Model turns per trajectory of the embedded default: the built-in agent's transcripts are a
/// call, its result and an answer, and its conversations end at
/// [`BUILT_IN_MAX_CONVERSATION_TOKENS`] anyway.
pub const BUILT_IN_MAX_STEPS: u32 = 4;
/// Most tokens of a built-in agent's conversation: a query, a call, a result, an answer.
pub const BUILT_IN_MAX_CONVERSATION_TOKENS: u64 = 200;
/// Most tokens of a chat model's conversation: its prompt (system prompt with examples, the
/// tool's schema) alone is some 330 tokens for Gemma 3.
pub const CHAT_MAX_CONVERSATION_TOKENS: u64 = 1024;
/// Longest tool output shown to the model, characters: tool output is context a small model
/// must carry (tracebacks keep their last line, which names the error).
pub const MAX_OBSERVATION_CHARS: usize = 100;

/// Padded tokens of one micro-batch of the update for a 512-token vocabulary (scaled down for
/// larger vocabularies: a micro-batch holds the logits of every position).
pub const UPDATE_TOKEN_BUDGET: usize = 4096;
/// The vocabulary size [`UPDATE_TOKEN_BUDGET`] is stated for.
pub const UPDATE_TOKEN_BUDGET_VOCAB: usize = 512;
/// The smallest micro-batch of the update, tokens.
pub const MIN_UPDATE_TOKEN_BUDGET: usize = 256;

/// Activation checkpointing in the update of a pretrained (LoRA) model: its blocks keep only
/// their input for the backward pass and run again there. Gemma 3 270M's update of 4
/// conversations of 1,024 tokens peaks at 8.8 GB without it (BENCHMARKS.md, "Memory of the
/// real-model update"); the tiny built-in model has activations too small to matter.
pub const PRETRAINED_ACTIVATION_CHECKPOINTING: bool = true;

/// Padded tokens of one micro-batch of the update for a model of `vocab` tokens.
pub fn update_token_budget(vocab: usize) -> usize {
    (UPDATE_TOKEN_BUDGET * UPDATE_TOKEN_BUDGET_VOCAB / vocab.max(1)).max(MIN_UPDATE_TOKEN_BUDGET)
}
/// Queries evaluated in one batch (bounds the memory of an evaluation of many queries).
pub const EVAL_BATCH_QUERIES: usize = 128;
/// Seconds one iteration of 128 trajectories took in the embedded default on a 2-core CPU
/// (BENCHMARKS.md: rollout 3.7 s + update 1.2 s), the basis of the pre-flight cost estimate.
pub const MEASURED_SECONDS_PER_128_TRAJECTORIES: f64 = 4.9;
/// Bootstrap resamples of `agentcore eval`'s reward interval.
pub const EVAL_BOOTSTRAP_RESAMPLES: usize = 10_000;
/// The timeout of one call to a remote reward endpoint.
pub const REMOTE_REWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Mixed into the job's seed for the initial LoRA values, so they are not the same stream as
/// the job's sampling RNG.
pub const LORA_INIT_SEED_SALT: u64 = 0x10_7a;
/// Mixed into the warm start's seed for the tasks its demonstrations are made from, so they
/// are not the job's tasks by construction.
pub const DEMO_TASKS_SEED_SALT: u64 = 0x5eed_de30;

/// The price per hour of the embedded default.
#[must_use]
pub fn price_per_hour_usd() -> Decimal {
    Decimal::new(PRICE_PER_HOUR_USD_CENTS, 2)
}

/// The embedded default's GRPO settings for the built-in model: 100 iterations of 16 queries x 8
/// samples, one update per batch, no KL, lr 1e-4 (measured in BENCHMARKS.md: validation still
/// rises slowly after 70 iterations; with rollouts reusing their keys and values 100 iterations
/// take about as long as 70 did).
#[must_use]
pub fn embedded_config() -> GRPOConfig {
    GRPOConfig {
        n_iterations: 100,
        batch_size: 16,
        n_trajectories_per_query: 8,
        learning_rate: 1e-4,
        beta: 0.0,
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        max_completion_length: 64,
        max_steps_per_trajectory: BUILT_IN_MAX_STEPS,
        eval_interval: 10,
        checkpoint_interval: 10,
        max_budget_usd: Decimal::new(100, 2),
        ..GRPOConfig::default()
    }
}

/// The agent id of a job on an API model whose settings name none.
pub const API_AGENT_ID: &str = "api-agent";

/// Credit step of the prompt policy (its `learning_rate`): items move this far along the
/// group-relative policy gradient of the item choice per iteration.
pub const PROMPT_LEARNING_RATE: f64 = 0.5;

/// Texts per `/v1/embeddings` request of the prompt policy's embedding retrieval.
pub const EMBEDDING_BATCH_TEXTS: usize = 64;

/// Seconds one API trajectory takes, for the pre-flight time estimate of a prompt job (measured:
/// Gemma 3 270M on llama.cpp, 2 cores, about 2 s per sampled trajectory).
pub const MEASURED_SECONDS_PER_API_TRAJECTORY: f64 = 2.0;

/// Prompt tokens of one API turn assumed by the pre-flight estimate when the agent's prompt is
/// not yet rendered (its system prompt, shown items and the conversation so far).
pub const ESTIMATED_PROMPT_TOKENS_PER_TURN: u64 = 1200;

/// The default config of a prompt-policy agent on an API model: the contract's, with the
/// credit step as `learning_rate`, groups of 4 and reward shaping (a call the sandbox ran
/// without error separates samples before any answers right).
pub fn apply_prompt_config(config: &mut GRPOConfig) {
    config.learning_rate = PROMPT_LEARNING_RATE;
    config.reward_shaping.enabled = true;
    config.max_steps_per_trajectory = BUILT_IN_MAX_STEPS;
}

/// What a pretrained model's job changes in a config (applied when the job file names no config
/// of its own).
pub fn apply_real_model_config(config: &mut GRPOConfig) {
    // A pretrained model rarely solves a task outright at first, and its first calls are often
    // malformed JSON or code that raises: the shaped outcome (a bonus per call the sandbox ran
    // without error, a small cost per step) separates the samples of a group before any of them
    // answers right. (Partial credit for a close answer, `response_accuracy`, left every Gemma
    // group at 0: its answers rarely parse.)
    config.reward_shaping.enabled = true;
    // A call in JSON takes it 30-60 tokens, the answer after the tool's result more: the built-in
    // model's 64 tokens cut every trajectory before its answer.
    config.max_completion_length = 192;
    config.max_steps_per_trajectory = BUILT_IN_MAX_STEPS;
    // Gemma's recommended sampling.
    config.temperature = 1.0;
    config.top_p = 0.95;
    config.top_k = Some(64);
}

/// Two worked examples of the call format. A small pretrained model (Gemma 3 270M) does not
/// follow instructions alone: told to call the tool, it wrote prose in 32 of 32 samples (0
/// calls, 0 correct); with these examples it called the tool in 10 of 32 and answered 2
/// correctly (llama.cpp, temperature 1, 8 seed-suite tasks x 4 samples), so groups get a
/// spread of rewards to learn from.
#[must_use]
pub fn system_prompt() -> String {
    r#"Solve each task with the python tool. Examples:

Task: Compute the product of [3, 4, 2]
<tool_call>{"name": "python", "arguments": {"code": "print(3 * 4 * 2)"}}</tool_call>
<tool_response>
24
</tool_response>
<answer>24</answer>

Task: Find the minimum value in [7, 1, 9]
<tool_call>{"name": "python", "arguments": {"code": "print(min([7, 1, 9]))"}}</tool_call>
<tool_response>
1
</tool_response>
<answer>1</answer>"#
        .into()
}
