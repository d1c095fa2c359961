//! From an agent to a job: the one function that turns an agent definition (the typed
//! [`AgentDefinition`] that `agents.register` stores and `agentcore train --agent FILE` reads), a
//! GRPO config and the caller's data into the job's settings, with the embedded and the
//! real-model defaults; and the pre-flight cost estimate. The CLI and the server both call it.
//!
//! Precedence, lowest first: the agent kind's defaults (when the caller gives no config, and
//! always for a prompt agent) or the contract's `GRPOConfig` defaults (when it gives one), then what the agent definition sets
//! (`sampling`, `max_steps_per_trajectory`, `max_tokens_per_trajectory`), then the keys of the
//! caller's config.

use agentcore_agent::definition::{
    AgentDefinition, ModelSpec, PolicyKind, RetrievalKind, ToolSpec,
};
use agentcore_agent::rollout::CallFormat;
use agentcore_grpo::GRPOConfig;
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde_json::{Map, Value, json};

use crate::TrainError;
use crate::defaults;
use crate::settings::{ApiAgent, ExternalModel, JobData, JobSettings, RolloutLimits};
use crate::warmstart::WarmStartSettings;

fn invalid(problem: String) -> TrainError {
    TrainError::Settings { problems: vec![problem] }
}

/// The default config of an agent's kind of model: the embedded default for the built-in
/// model, the real-model default for a pretrained one.
fn kind_config(agent: &AgentDefinition) -> GRPOConfig {
    match agent.model {
        ModelSpec::BuiltIn { .. } => defaults::embedded_config(),
        ModelSpec::Openai(_) => {
            let mut c = GRPOConfig::default();
            defaults::apply_prompt_config(&mut c);
            c
        }
        _ => {
            let mut c = GRPOConfig::default();
            defaults::apply_real_model_config(&mut c);
            c
        }
    }
}

/// The warm start of a built-in agent: the defaults with the agent's overrides (nested objects
/// merged key by key), unknown keys refused with their name.
///
/// # Errors
/// An unknown key (named, with the known ones), a value of the wrong type.
pub fn warm_start(overrides: Option<&Map<String, Value>>) -> Result<WarmStartSettings, TrainError> {
    let mut base = serde_json::to_value(WarmStartSettings::default())
        .map_err(|e| invalid(format!("model.warm_start: {e}")))?;
    let known: Vec<String> =
        base.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    for (k, v) in overrides.into_iter().flatten() {
        let Some(slot) = base.get_mut(k) else {
            return Err(invalid(format!(
                "model.warm_start.{k}: unknown field (expected one of {})",
                known.join(", ")
            )));
        };
        match (slot, v) {
            (Value::Object(b), Value::Object(o)) => {
                for (k2, v2) in o {
                    if !b.contains_key(k2) {
                        return Err(invalid(format!(
                            "model.warm_start.{k}.{k2}: unknown field (expected one of {})",
                            b.keys().cloned().collect::<Vec<_>>().join(", ")
                        )));
                    }
                    b.insert(k2.clone(), v2.clone());
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }
    serde_path_to_error::deserialize(base).map_err(|e| {
        let path = e.path().to_string();
        invalid(format!("model.warm_start.{path}: {}", e.into_inner()))
    })
}

/// The job settings of training `agent` with `config` (the caller's GRPOConfig keys; `None`: the
/// agent kind's default config) on `data` (`None`: the generated seed suite).
///
/// # Errors
/// [`TrainError::Settings`] naming the field: an agent the job cannot train (a prompt policy or
/// an API model, tools other than `python`, a call format its model does not write), unknown or
/// out-of-range config keys, bad warm-start overrides, and everything
/// [`JobSettings::violations`] finds.
pub fn resolve(
    agent: &AgentDefinition,
    config: Option<&Map<String, Value>>,
    data: Option<JobData>,
) -> Result<JobSettings, TrainError> {
    agent.validate().map_err(|e| invalid(format!("agent {}: {e}", agent.agent_id)))?;
    if agent.policy == PolicyKind::Prompt && !matches!(agent.model, ModelSpec::Openai(_)) {
        return Err(invalid(format!(
            "agent {}: policy `prompt` trains an agent behind an OpenAI-compatible endpoint \
             (model.kind openai); in-process models train with `weights`",
            agent.agent_id
        )));
    }
    if agent.tools.is_empty() {
        return Err(invalid(format!(
            "agent {}: tools: a job's agent needs the python tool ({{type: python}}), got none",
            agent.agent_id
        )));
    }
    if let Some((i, t)) =
        agent.tools.iter().enumerate().find(|(_, t)| !matches!(t, ToolSpec::Python { .. }))
    {
        return Err(invalid(format!(
            "agent {}: tools[{i}]: jobs train agents with the sandboxed `python` tool only, got {}",
            agent.agent_id,
            serde_json::to_value(t).map_or_else(|_| "?".into(), |v| v["type"].to_string())
        )));
    }
    if let Some((i, _)) = agent.tools.iter().enumerate().find(|(_, t)| {
        matches!(t, ToolSpec::Python { timeout_s, memory_mb } if timeout_s.is_some() || memory_mb.is_some())
    }) {
        return Err(invalid(format!(
            "agent {}: tools[{i}]: a job's python tool runs under the server's sandbox limits; \
             per-agent timeout_s / memory_mb are not applied to jobs yet, so leave them out",
            agent.agent_id
        )));
    }
    let mut settings = match &agent.model {
        ModelSpec::BuiltIn { warm_start: overrides } => JobSettings {
            warm_start: warm_start(overrides.as_ref())?,
            rollout: Some(RolloutLimits::for_agent(false)),
            ..JobSettings::default()
        },
        ModelSpec::Local { path, lora } => JobSettings {
            n_tasks: defaults::REAL_MODEL_N_TASKS,
            model: Some(ExternalModel {
                path: path.clone(),
                lora: lora.clone().unwrap_or_default(),
                system_prompt: if agent.system_prompt.trim().is_empty() {
                    defaults::system_prompt()
                } else {
                    agent.system_prompt.clone()
                },
            }),
            rollout: Some(RolloutLimits::for_agent(true)),
            ..JobSettings::default()
        },
        ModelSpec::Openai(endpoint) => JobSettings {
            n_tasks: defaults::REAL_MODEL_N_TASKS,
            api: Some(ApiAgent {
                endpoint: endpoint.clone(),
                system_prompt: agent.system_prompt.clone(),
                prompt_policy: agent.prompt_policy.clone().unwrap_or_default(),
                allow_private_endpoints: true,
            }),
            rollout: Some(RolloutLimits::for_agent(true)),
            ..JobSettings::default()
        },
    };
    let expected = match agent.model {
        ModelSpec::BuiltIn { .. } => CallFormat::Tags,
        _ => CallFormat::Hermes,
    };
    if agent.call_format() != expected {
        return Err(invalid(format!(
            "agent {}: tool_call_format must be {expected:?} for this model, got {:?}",
            agent.agent_id,
            agent.call_format()
        )));
    }
    // The config: its base, the agent's own sampling and limits, the caller's keys.
    // A prompt agent keeps its kind's defaults under a caller's config: the contract's
    // `learning_rate` (0.0001) is an AdamW step, far too small a credit step.
    let base = match (config, &agent.model) {
        (None, _) | (Some(_), ModelSpec::Openai(_)) => kind_config(agent),
        (Some(_), _) => GRPOConfig::default(),
    };
    let mut merged = serde_json::to_value(&base).map_err(|e| invalid(format!("config: {e}")))?;
    if let Some(s) = &agent.sampling {
        merged["temperature"] = json!(s.temperature);
        merged["top_p"] = json!(s.top_p);
        merged["top_k"] = json!(s.top_k);
        merged["max_completion_length"] = json!(s.max_tokens_per_turn);
    }
    if let Some(n) = agent.max_steps_per_trajectory {
        merged["max_steps_per_trajectory"] = json!(n);
    }
    for (k, v) in config.into_iter().flatten() {
        merged[k] = v.clone();
    }
    settings.config = GRPOConfig::from_value(merged).map_err(TrainError::Config)?;
    if let (Some(n), Some(r)) = (agent.max_tokens_per_trajectory, settings.rollout.as_mut()) {
        r.max_conversation_tokens = n;
    }
    settings.agent_id = Some(agent.agent_id.clone());
    settings.agent_type = Some(agent.agent_type.clone());
    settings.data = data;
    let problems = settings.violations();
    if !problems.is_empty() {
        return Err(TrainError::Settings { problems });
    }
    Ok(settings)
}

/// The agent a job's settings train, as `agents.register` stores it: the built-in agent (its
/// warm start when it is not the default) or a local model with its adapters and prompt.
#[must_use]
pub fn agent_of(settings: &JobSettings) -> AgentDefinition {
    if let Some(a) = &settings.api {
        return AgentDefinition {
            agent_id: settings.agent_id(),
            agent_type: settings.agent_type().to_string(),
            model: ModelSpec::Openai(a.endpoint.clone()),
            system_prompt: a.system_prompt.clone(),
            tools: vec![ToolSpec::Python { timeout_s: None, memory_mb: None }],
            policy: PolicyKind::Prompt,
            sampling: None,
            tool_call_format: None,
            max_steps_per_trajectory: None,
            max_tokens_per_trajectory: None,
            prompt_policy: Some(a.prompt_policy.clone()),
        };
    }
    let (model, system_prompt) = match &settings.model {
        None => {
            let ws = (settings.warm_start != WarmStartSettings::default())
                .then(|| serde_json::to_value(&settings.warm_start).ok())
                .flatten()
                .and_then(|v| v.as_object().cloned());
            (ModelSpec::BuiltIn { warm_start: ws }, String::new())
        }
        Some(m) => (
            ModelSpec::Local { path: m.path.clone(), lora: Some(m.lora.clone()) },
            m.system_prompt.clone(),
        ),
    };
    AgentDefinition {
        agent_id: settings.agent_id(),
        agent_type: settings.agent_type().to_string(),
        model,
        system_prompt,
        tools: vec![ToolSpec::Python { timeout_s: None, memory_mb: None }],
        policy: PolicyKind::Weights,
        sampling: None,
        tool_call_format: None,
        max_steps_per_trajectory: None,
        max_tokens_per_trajectory: None,
        prompt_policy: None,
    }
}

/// Pre-flight: the local compute a job would take at its price per hour, from the measured
/// seconds per trajectory of the embedded default
/// ([`defaults::MEASURED_SECONDS_PER_128_TRAJECTORIES`]) or of an API agent
/// ([`defaults::MEASURED_SECONDS_PER_API_TRAJECTORY`]); plus, for an API agent, the tokens of
/// every turn at the endpoint's prices (each turn at most `max_completion_length` tokens out and
/// [`defaults::ESTIMATED_PROMPT_TOKENS_PER_TURN`] in, every trajectory taking all its steps, the
/// held-out set evaluated twice), the reflector's requests at its prices and, with embedding
/// retrieval, every query and every lesson reflection could write at the embedding endpoint's.
#[must_use]
pub fn estimated_cost_usd(settings: &JobSettings) -> Decimal {
    let c = &settings.config;
    let trajectories = f64::from(c.batch_size) * f64::from(c.n_trajectories_per_query);
    let rollouts = f64::from(c.n_iterations) * trajectories;
    let seconds = match &settings.api {
        None => rollouts / 128.0 * defaults::MEASURED_SECONDS_PER_128_TRAJECTORIES,
        Some(_) => rollouts * defaults::MEASURED_SECONDS_PER_API_TRAJECTORY,
    };
    let compute =
        settings.price_per_hour_usd * Decimal::from_f64(seconds / 3600.0).unwrap_or_default();
    let api = settings.api.as_ref().map_or(Decimal::ZERO, |a| {
        let eval_runs = settings.tasks().map_or(0, |(_, eval)| eval.len()) as u64
            * (u64::from(c.n_iterations / c.eval_interval.max(1)) + 2);
        let turns = (rollouts as u64 + eval_runs) * u64::from(c.max_steps_per_trajectory);
        let usage = agentcore_agent::trajectory::Usage {
            input_tokens: turns * defaults::ESTIMATED_PROMPT_TOKENS_PER_TURN,
            output_tokens: turns * u64::from(c.max_completion_length),
        };
        let r = &a.prompt_policy.reflection;
        let reflections =
            if r.enabled { u64::from(c.n_iterations) * r.groups_per_iteration as u64 } else { 0 };
        let reflector = r.model.as_ref().unwrap_or(&a.endpoint);
        let retrieval = &a.prompt_policy.retrieval;
        let embeddings = if retrieval.kind == RetrievalKind::Embeddings {
            // Every query once (an exemplar's text is its query), and every lesson reflection
            // could add, at its longest.
            let queries: u64 = settings.tasks().map_or(0, |(train, eval)| {
                train.iter().chain(&eval).map(|t| t.query.chars().count().div_ceil(4) as u64).sum()
            });
            let lessons = u64::from(c.n_iterations)
                * r.max_ops_per_iteration as u64
                * r.max_lesson_chars.div_ceil(4) as u64;
            let tokens = if r.enabled { queries + lessons } else { queries };
            retrieval
                .model
                .as_ref()
                .unwrap_or(&a.endpoint)
                .cost(agentcore_agent::trajectory::Usage { input_tokens: tokens, output_tokens: 0 })
        } else {
            Decimal::ZERO
        };
        a.endpoint.cost(usage)
            + reflector.cost(agentcore_agent::trajectory::Usage {
                input_tokens: reflections * 2 * defaults::ESTIMATED_PROMPT_TOKENS_PER_TURN,
                output_tokens: reflections * r.max_tokens as u64,
            })
            + embeddings
    });
    (compute + api).round_dp(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(yaml: &str) -> AgentDefinition {
        AgentDefinition::from_yaml(yaml).expect("definition")
    }

    fn built_in() -> AgentDefinition {
        agent("agent_id: a\nmodel: {kind: built_in}\ntools: [{type: python}]")
    }

    /// Issue 14, finding 2: warm-start sizes are checked before a job exists (the server aborted
    /// allocating 1 TB for `d_model: 1000000000`, and `steps: 100000000` was accepted).
    #[test]
    fn warm_start_sizes_are_checked_with_the_rule_and_the_value() {
        let with = |ws: &str| {
            let a = agent(&format!(
                "agent_id: a\nmodel: {{kind: built_in, warm_start: {ws}}}\ntools: [{{type: python}}]"
            ));
            resolve(&a, None, None).map(|_| ()).map_err(|e| e.to_string())
        };
        let huge = with("{model: {d_model: 1000000000, n_layers: 4, n_heads: 4, d_ff: 384, max_seq_len: 256}, steps: 1}")
            .unwrap_err();
        assert!(
            huge.contains("warm_start.model.d_model must be in 8..=2048, got 1000000000"),
            "{huge}"
        );
        let steps = with("{steps: 100000000}").unwrap_err();
        assert!(steps.contains("warm_start.steps must be in 0..=20000, got 100000000"), "{steps}");
        let batch = with("{batch_size: 0}").unwrap_err();
        assert!(batch.contains("warm_start.batch_size must be in 1..=1024, got 0"), "{batch}");
        let typo = with("{stepz: 5}").unwrap_err();
        assert!(typo.contains("model.warm_start.stepz: unknown field"), "{typo}");
        let heads = with("{model: {n_heads: 3}}").unwrap_err();
        assert!(heads.contains("must divide d_model (128), got 3"), "{heads}");
        // Each size is in range, but together they would need tens of GiB.
        let memory = with(
            "{model: {d_model: 2048, n_layers: 48, n_heads: 16, d_ff: 8192, max_seq_len: 4096}, batch_size: 64}",
        )
        .unwrap_err();
        assert!(memory.contains("GiB to train, at most 16 GiB"), "{memory}");
        let rate = with("{learning_rate: -1.0, wrong_rate: 2.0, weak_families: [sort, nope]}")
            .unwrap_err();
        for want in [
            "warm_start.learning_rate must be in (0, 1], got -1",
            "warm_start.wrong_rate must be in [0, 1], got 2",
            "warm_start.weak_families[1] must be one of",
        ] {
            assert!(rate.contains(want), "{want} not in {rate}");
        }
        // The defaults and modest overrides pass.
        with("{steps: 50, model: {d_model: 64, n_heads: 2}}").unwrap();
    }

    #[test]
    fn the_built_in_agent_without_a_config_is_the_embedded_default() {
        let s = resolve(&built_in(), None, None).expect("settings");
        let e = JobSettings::embedded();
        assert_eq!(s.config, e.config);
        assert_eq!((s.warm_start, s.rollout, s.n_tasks), (e.warm_start, e.rollout, e.n_tasks));
        assert_eq!(s.agent_id.as_deref(), Some("a"));
        assert_eq!(s.config.max_steps_per_trajectory, defaults::BUILT_IN_MAX_STEPS);
    }

    #[test]
    fn the_callers_keys_win_over_the_agent_which_wins_over_the_defaults() {
        let a = agent(
            "agent_id: a\nmodel: {kind: built_in}\ntools: [{type: python}]\n\
             sampling: {temperature: 0.7, top_p: 0.9, max_tokens_per_turn: 40}\n\
             max_steps_per_trajectory: 6\nmax_tokens_per_trajectory: 300",
        );
        let s = resolve(&a, None, None).expect("settings");
        assert_eq!(s.config.max_steps_per_trajectory, 6);
        assert_eq!(s.config.max_completion_length, 40);
        assert!((s.config.temperature - 0.7).abs() < 1e-12);
        assert_eq!(s.rollout.map(|r| r.max_conversation_tokens), Some(300));
        // An explicit config: the contract's defaults under the agent's values, its keys on top.
        let config = json!({"max_completion_length": 12, "n_iterations": 3});
        let s = resolve(&a, config.as_object(), None).expect("settings");
        assert_eq!(s.config.max_completion_length, 12);
        assert_eq!(s.config.max_steps_per_trajectory, 6);
        assert_eq!(s.config.n_iterations, 3);
        assert_eq!(s.config.batch_size, GRPOConfig::default().batch_size);
    }

    #[test]
    fn what_a_job_cannot_do_is_refused_with_the_field() {
        let message = |a: &AgentDefinition, c: Option<Value>| {
            resolve(a, c.as_ref().and_then(Value::as_object), None).unwrap_err().to_string()
        };
        let m = message(&built_in(), Some(json!({"n_iterationz": 3})));
        assert!(m.contains("n_iterationz"), "{m}");
        let m = message(&built_in(), Some(json!({"max_steps_per_trajectory": 500})));
        assert!(m.contains("max_steps_per_trajectory"), "{m}");
        let a = agent(
            "agent_id: a\nmodel: {kind: built_in, warm_start: {stepz: 3}}\ntools: [{type: python}]",
        );
        let m = message(&a, None);
        assert!(m.contains("model.warm_start.stepz: unknown field"), "{m}");
        let a = agent(
            "agent_id: a\nmodel: {kind: built_in, warm_start: {model: {d_modl: 8}}}\ntools: [{type: python}]",
        );
        assert!(message(&a, None).contains("model.warm_start.model.d_modl"));
        let a = agent("agent_id: a\nmodel: {kind: built_in}\ntools: [{type: calculator}]");
        assert!(message(&a, None).contains("tools[0]"));
        let a = agent("agent_id: a\nmodel: {kind: built_in}");
        assert!(message(&a, None).contains("tools: a job's agent needs the python tool"));
        let a =
            agent("agent_id: a\nmodel: {kind: built_in}\npolicy: prompt\ntools: [{type: python}]");
        assert!(message(&a, None).contains("policy `prompt`"));
        let a = agent(
            "agent_id: a\nmodel: {kind: built_in}\ntool_call_format: hermes\ntools: [{type: python}]",
        );
        assert!(message(&a, None).contains("tool_call_format"));
    }

    #[test]
    fn warm_start_overrides_merge_key_by_key() {
        let a = agent(
            "agent_id: a\nmodel: {kind: built_in, warm_start: {steps: 6, model: {d_model: 32}}}\n\
             tools: [{type: python}]",
        );
        let s = resolve(&a, None, None).expect("settings");
        assert_eq!(s.warm_start.steps, 6);
        assert_eq!(s.warm_start.model.d_model, 32);
        assert_eq!(s.warm_start.model.n_layers, WarmStartSettings::default().model.n_layers);
        // And back: the agent of these settings carries the same warm start.
        let ModelSpec::BuiltIn { warm_start: Some(w) } = agent_of(&s).model else {
            panic!("built-in with overrides")
        };
        assert_eq!(w["steps"], 6);
    }

    #[test]
    fn the_estimate_is_iterations_times_trajectories_at_the_price() {
        let mut s = JobSettings::embedded();
        s.config.n_iterations = 100;
        s.config.batch_size = 16;
        s.config.n_trajectories_per_query = 8;
        s.price_per_hour_usd = Decimal::new(36, 0);
        // 100 x 128 trajectories = 100 x 4.9 s = 490 s at $36/h = $4.90.
        assert_eq!(estimated_cost_usd(&s), Decimal::new(490, 2));
    }

    #[test]
    fn a_prompt_agent_resolves_to_an_api_job_whose_estimate_counts_tokens() {
        let a = agent(
            "agent_id: api\nmodel: {kind: openai, base_url: 'http://127.0.0.1:1/v1', model: m, \
             input_usd_per_million: 1.0, output_usd_per_million: 2.0}\npolicy: prompt\n\
             system_prompt: Solve it.\ntools: [{type: python}]\nmax_steps_per_trajectory: 3\n\
             prompt_policy: {reflection: {enabled: false}}",
        );
        let train = agentcore_tasks::seed::generate(100, 1, Some(1)).unwrap();
        let eval = agentcore_tasks::seed::generate(3, 2, Some(1)).unwrap();
        let config = json!({"n_iterations": 2, "batch_size": 2, "n_trajectories_per_query": 2,
            "eval_interval": 2, "max_completion_length": 96});
        let mut s = resolve(&a, config.as_object(), Some(JobData { train, eval })).unwrap();
        s.price_per_hour_usd = Decimal::ZERO;
        let api = s.api.as_ref().expect("an API job");
        assert_eq!(api.system_prompt, "Solve it.");
        // A prompt agent keeps its credit step under a caller's config.
        assert!((s.config.learning_rate - defaults::PROMPT_LEARNING_RATE).abs() < 1e-12);
        assert_eq!(agent_of(&s).policy, PolicyKind::Prompt);
        // (2 x 2 x 2 rollouts + 3 held-out x (1 + 2) evaluations) x 3 turns = 51 turns of
        // 1200 tokens in at $1/M and 96 out at $2/M: $0.0612 + $0.009792.
        assert_eq!(estimated_cost_usd(&s), Decimal::new(710, 4));
        // With embedding retrieval at $1000/M: every query's tokens once more.
        let (train, eval) = s.tasks().unwrap();
        let tokens: usize =
            train.iter().chain(&eval).map(|t| t.query.chars().count().div_ceil(4)).sum();
        let mut e = s.clone();
        let p = &mut e.api.as_mut().unwrap().prompt_policy;
        p.retrieval.kind = RetrievalKind::Embeddings;
        let mut m = agentcore_agent::backend::OpenAiSettings::new("http://127.0.0.1:2/v1", "e");
        m.input_usd_per_million = Decimal::from(1000);
        p.retrieval.model = Some(m);
        let want = Decimal::new(710, 4) + Decimal::from(tokens) / Decimal::from(1000);
        assert_eq!(estimated_cost_usd(&e), want.round_dp(4));
        assert!(estimated_cost_usd(&e) > Decimal::new(710, 4));
    }
}
