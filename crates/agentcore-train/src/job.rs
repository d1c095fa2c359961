//! The GRPO job of the embedded default: warm start, baseline on the held-out split, GRPO
//! iterations with real rollouts (in-process model, sandboxed python, verifier, rewards), and the
//! final evaluation with McNemar's exact test.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use agentcore_agent::backend::{InProcessBackend, Sampling};
use agentcore_agent::rollout::{AgentRuntime, CallFormat, run_batch};
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::tools::{PythonTool, Toolbox};
use agentcore_agent::trajectory::Trajectory;
use agentcore_grpo::GRPOConfig;
use agentcore_grpo::advantages::group_advantages;
use agentcore_grpo::loss::LossSettings;
use agentcore_grpo::stats::{McNemarTest, mcnemar_exact, wilson_interval};
use agentcore_model::decoder::Decoder;
use agentcore_model::generate::token_logprobs;
use agentcore_model::hub::LoadedModel;
use agentcore_model::loss::{LossBatch, grpo_loss};
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken, TextTokenizer};
use agentcore_tasks::Task;
use agentcore_tasks::judge::{RewardInput, RewardRegistry, Verifiers};
use agentcore_tasks::seed::{self, SplitSpec};
use candle_core::Device;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::TrainError;
use crate::warmstart::{WarmStartProgress, WarmStartSettings, warm_start};

/// Everything the job needs.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The GRPO config (iterations, batch, group size, learning rate, sampling, loss, seed ...).
    pub config: GRPOConfig,
    /// The warm start.
    pub warm_start: WarmStartSettings,
    /// Seed tasks generated for the job (split into train and held-out).
    pub n_tasks: usize,
    /// Share of each family held out for evaluation.
    pub eval_fraction: f64,
    /// Hardest task difficulty (1..=3).
    pub max_difficulty: u8,
    /// Where the warm-start cache and runs live.
    pub data_dir: PathBuf,
}

/// Per-iteration metrics (TRL's names and the guide's).
#[derive(Debug, Clone, Serialize)]
pub struct IterationMetrics {
    /// 1-based.
    pub iteration: u32,
    /// The loss minimised.
    pub train_loss: f64,
    /// Mean reward.
    pub avg_reward: f64,
    /// Std of rewards over the batch.
    pub reward_std: f64,
    /// Share of groups whose rewards were all equal.
    pub frac_reward_zero_std: f64,
    /// Share of trajectories the verifier accepted.
    pub success_rate: f64,
    /// k3 KL to the reference (when `beta > 0`).
    pub kl: Option<f64>,
    /// Clip fractions.
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio: f64,
    /// Mean sampled tokens per trajectory.
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    /// Share of tool calls without error.
    pub tool_accuracy: f64,
    /// Sampled tokens per second of rollout.
    pub rollout_tokens_per_s: f64,
    /// Seconds generating and running tools.
    pub rollout_seconds: f64,
    /// Seconds scoring and updating.
    pub update_seconds: f64,
    /// Held-out success when evaluated this iteration.
    pub eval_success_rate: Option<f64>,
}

/// The job's result.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Held-out success of the warm-started model.
    pub baseline_success_rate: f64,
    /// Held-out success after GRPO.
    pub final_success_rate: f64,
    /// Wilson 95% interval of the baseline.
    pub baseline_interval: (f64, f64),
    /// Wilson 95% interval of the final.
    pub final_interval: (f64, f64),
    /// McNemar's exact p-value (paired, same queries).
    pub p_value: f64,
    /// The paired counts.
    pub mcnemar: McNemarTest,
    /// Held-out queries.
    pub eval_queries: usize,
    /// Training tasks.
    pub train_queries: usize,
    /// Iterations run.
    pub iterations: u32,
    /// Wall time of the whole job.
    pub wall_seconds: f64,
    /// Of which warm start (0 when cached).
    pub warm_start_seconds: f64,
    /// Whether the warm start came from the cache.
    pub warm_start_cached: bool,
    /// Held-out success per task family: (baseline, final).
    pub per_family: std::collections::BTreeMap<String, (f64, f64)>,
}

/// What the job reports as it runs.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A warm-start step.
    WarmStart(WarmStartProgress),
    /// The baseline evaluation.
    Baseline {
        /// Held-out success.
        success_rate: f64,
        /// Queries.
        eval_queries: usize,
    },
    /// An iteration.
    Iteration(IterationMetrics),
    /// The end.
    Done(Summary),
}

fn runtime(sandbox: &Arc<PythonSandbox>, sampling: Sampling, max_steps: u32) -> AgentRuntime {
    let mut toolbox = Toolbox::new();
    toolbox.add(Arc::new(PythonTool::new(Arc::clone(sandbox)))).expect("one tool");
    let mut rt = AgentRuntime::new(toolbox, CallFormat::Tags);
    rt.sampling = sampling;
    rt.max_steps = max_steps;
    rt.max_tokens = 200;
    // Tool output is context the small model must carry: keep it short (tracebacks keep their
    // last line, which names the error).
    rt.max_observation_chars = 100;
    rt
}

fn loaded(model: Decoder) -> LoadedModel {
    let tok = ByteTokenizer::new();
    LoadedModel {
        model,
        tokenizer: TextTokenizer::Byte(tok.clone()),
        chat_template: None,
        stop_token_ids: vec![tok.special(SpecialToken::Eos)],
        source: "built-in".into(),
    }
}

/// Greedy evaluation: which held-out tasks the model solves.
fn evaluate(
    model: &LoadedModel,
    sandbox: &Arc<PythonSandbox>,
    tasks: &[Task],
    verifiers: &Verifiers,
    max_steps: u32,
) -> Result<Vec<bool>, TrainError> {
    let backend = InProcessBackend::new(model).map_err(|e| TrainError::Job(e.0))?;
    let sampling = Sampling { temperature: 0.0, top_p: 1.0, top_k: None, max_tokens_per_turn: 96 };
    let rt = runtime(sandbox, sampling, max_steps);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut out = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(128) {
        let queries: Vec<String> = chunk.iter().map(|t| t.query.clone()).collect();
        let trajs = run_batch(&rt, &backend, &queries, &mut rng);
        out.extend(chunk.iter().zip(&trajs).map(|(t, tr)| verifiers.verify(t, tr).passed));
    }
    Ok(out)
}

/// `n` seed tasks with difficulties 1..=`max_difficulty` in equal shares.
///
/// # Errors
/// A difficulty outside 1..=3.
pub fn seed_tasks(n: usize, seed: u64, max_difficulty: u8) -> Result<Vec<Task>, TrainError> {
    let levels = usize::from(max_difficulty.max(1));
    let mut out = Vec::with_capacity(n);
    for (k, d) in (1..=max_difficulty.max(1)).enumerate() {
        let share = n / levels + usize::from(k < n % levels);
        out.extend(seed::generate(share, seed.wrapping_add(k as u64), Some(d))?);
    }
    Ok(out)
}

fn rate(xs: &[bool]) -> f64 {
    xs.iter().filter(|&&x| x).count() as f64 / xs.len().max(1) as f64
}

/// Runs the job.
///
/// # Errors
/// Bad settings, model errors, file errors.
pub fn run(
    settings: &JobSettings,
    sandbox: Arc<PythonSandbox>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let config = &settings.config;
    let tasks = seed_tasks(settings.n_tasks, config.seed, settings.max_difficulty)?;
    let split = seed::split(
        tasks,
        &SplitSpec::Stratified { eval_fraction: settings.eval_fraction, seed: config.seed },
    )?;
    let (train, eval) = (split.train, split.eval);
    if train.is_empty() || eval.is_empty() {
        return Err(TrainError::Job("the split left no training or no evaluation tasks".into()));
    }
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| TrainError::Job(format!("{}: {e}", settings.data_dir.display())))?;
    let ws_start = Instant::now();
    let (model, _dir, cached) =
        warm_start(&settings.warm_start, &settings.data_dir, &sandbox, &mut |p| {
            on_event(&Event::WarmStart(p));
        })?;
    let warm_start_seconds = if cached { 0.0 } else { ws_start.elapsed().as_secs_f64() };
    let model = loaded(model);
    let verifiers = Verifiers { sandbox: Some(Arc::clone(&sandbox)), ..Verifiers::default() };
    let max_steps = config.max_steps_per_trajectory.min(4);
    let baseline = evaluate(&model, &sandbox, &eval, &verifiers, max_steps)?;
    on_event(&Event::Baseline { success_rate: rate(&baseline), eval_queries: eval.len() });

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut opt = AdamW::new(
        model.model.params(),
        AdamWConfig {
            learning_rate: config.learning_rate,
            max_grad_norm: Some(config.max_grad_norm),
            ..AdamWConfig::default()
        },
    )?;
    let mut registry = RewardRegistry::with_builtins(config.reward_shaping.clone());
    if config.reward_shaping.enabled {
        registry.set_default("shaped").map_err(|e| TrainError::Job(e.to_string()))?;
    }
    let loss_settings = LossSettings::from(config);
    let sampling = Sampling {
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k.map(|k| k as usize),
        max_tokens_per_turn: config.max_completion_length as usize,
    };
    let group = config.n_trajectories_per_query as usize;
    let batch = (config.batch_size as usize).min(train.len());
    let pad = ByteTokenizer::new().special(SpecialToken::Pad);
    let max_len = model.model.config().max_seq_len;
    for iteration in 1..=config.n_iterations {
        // Rollouts.
        let t0 = Instant::now();
        let picked: Vec<usize> = sample(&mut rng, train.len(), batch).into_vec();
        let batch_tasks: Vec<&Task> = picked.iter().map(|&i| &train[i]).collect();
        let queries: Vec<String> =
            batch_tasks.iter().flat_map(|t| std::iter::repeat_n(t.query.clone(), group)).collect();
        let backend = InProcessBackend::new(&model).map_err(|e| TrainError::Job(e.0))?;
        let rt = runtime(&sandbox, sampling.clone(), max_steps);
        let trajs: Vec<Trajectory> = run_batch(&rt, &backend, &queries, &mut rng);
        let rollout_seconds = t0.elapsed().as_secs_f64();
        // Verification and rewards.
        let t1 = Instant::now();
        let mut rewards = Vec::with_capacity(trajs.len());
        let mut successes = 0usize;
        for (k, tr) in trajs.iter().enumerate() {
            let task = batch_tasks[k / group];
            let verdict = verifiers.verify(task, tr);
            successes += usize::from(verdict.passed);
            let r = registry
                .reward("seed", &RewardInput { task, trajectory: tr, verdict: &verdict, max_steps })
                .map_err(|e| TrainError::Job(e.to_string()))?;
            rewards.push(r);
        }
        let grouped: Vec<Vec<f64>> = rewards.chunks(group).map(<[f64]>::to_vec).collect();
        let adv = group_advantages(&grouped, config.advantage_estimator, config.scale_rewards)?;
        // The loss over sampled tokens only, one update per batch.
        let rows: Vec<(usize, &agentcore_agent::trajectory::TokenTrace)> = trajs
            .iter()
            .enumerate()
            .filter_map(|(k, t)| {
                t.tokens
                    .as_ref()
                    .filter(|tr| {
                        tr.ids.len() >= 2 && tr.ids.len() <= max_len && tr.sampled_len() > 0
                    })
                    .map(|tr| (k, tr))
            })
            .collect();
        let sequences: Vec<Vec<u32>> = rows.iter().map(|(_, t)| t.ids.clone()).collect();
        let old: Vec<Vec<f32>> = rows.iter().map(|(_, t)| t.logprobs.clone()).collect();
        let mask: Vec<Vec<bool>> =
            rows.iter().map(|(_, t)| t.mask.iter().map(|&m| m == 1).collect()).collect();
        let advantages: Vec<Vec<f32>> = rows
            .iter()
            .map(|(k, t)| vec![adv.advantages[k / group][k % group] as f32; t.ids.len()])
            .collect();
        let (train_loss, kl, clip) = if sequences.is_empty() {
            (0.0, None, 0.0)
        } else {
            let lb = LossBatch::from_rows(&old, None, &mask, &advantages, &Device::Cpu)?;
            let temperature = if config.temperature > 0.0 { config.temperature } else { 1.0 };
            let logp = token_logprobs(&model.model, &sequences, temperature, pad)?;
            let (loss, metrics) = grpo_loss(&logp, &lb, &loss_settings)?;
            opt.step(&loss.backward()?)?;
            (metrics.loss, metrics.kl, metrics.clip_ratio_region)
        };
        let update_seconds = t1.elapsed().as_secs_f64();
        let n = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        let sampled: usize =
            trajs.iter().filter_map(|t| t.tokens.as_ref()).map(|t| t.sampled_len()).sum();
        let (calls, ok_calls) = trajs
            .iter()
            .fold((0u32, 0u32), |(a, b), t| (a + t.tool_calls, b + t.successful_tool_calls));
        let eval_success_rate = if config.eval_interval > 0
            && iteration % config.eval_interval == 0
            && iteration < config.n_iterations
        {
            let e = rate(&evaluate(&model, &sandbox, &eval, &verifiers, max_steps)?);
            Some(e)
        } else {
            None
        };
        on_event(&Event::Iteration(IterationMetrics {
            iteration,
            train_loss,
            avg_reward: mean,
            reward_std: std,
            frac_reward_zero_std: adv.frac_reward_zero_std,
            success_rate: successes as f64 / n,
            kl,
            clip_ratio: clip,
            mean_length: sampled as f64 / n,
            tool_accuracy: if calls == 0 { 0.0 } else { f64::from(ok_calls) / f64::from(calls) },
            rollout_tokens_per_s: sampled as f64 / rollout_seconds.max(1e-9),
            rollout_seconds,
            update_seconds,
            eval_success_rate,
        }));
    }
    let final_results = evaluate(&model, &sandbox, &eval, &verifiers, max_steps)?;
    let mcnemar = mcnemar_exact(&baseline, &final_results)?;
    let count = |xs: &[bool]| xs.iter().filter(|&&x| x).count() as u64;
    let wilson = |xs: &[bool]| -> Result<(f64, f64), TrainError> {
        let w = wilson_interval(count(xs), xs.len() as u64, 0.95)?;
        Ok((w.low, w.high))
    };
    let mut per_family: std::collections::BTreeMap<String, (f64, f64, f64)> =
        std::collections::BTreeMap::new();
    for ((t, &b), &f) in eval.iter().zip(&baseline).zip(&final_results) {
        let family = t.metadata.as_ref().map_or_else(String::new, |m| m.family.clone());
        let e = per_family.entry(family).or_default();
        e.0 += f64::from(u8::from(b));
        e.1 += f64::from(u8::from(f));
        e.2 += 1.0;
    }
    let per_family = per_family.into_iter().map(|(k, (b, f, n))| (k, (b / n, f / n))).collect();
    let summary = Summary {
        baseline_success_rate: rate(&baseline),
        final_success_rate: rate(&final_results),
        baseline_interval: wilson(&baseline)?,
        final_interval: wilson(&final_results)?,
        p_value: mcnemar.p_value,
        mcnemar,
        eval_queries: eval.len(),
        train_queries: train.len(),
        iterations: config.n_iterations,
        wall_seconds: started.elapsed().as_secs_f64(),
        warm_start_seconds,
        warm_start_cached: cached,
        per_family,
    };
    on_event(&Event::Done(summary.clone()));
    Ok(summary)
}
