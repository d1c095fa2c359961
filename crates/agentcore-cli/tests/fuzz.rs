//! Fuzz targets that run on stable Rust, in CI, for a bounded time: every parser that reads
//! outside input (the tool-call parsers, the JSON-RPC envelope, GRPO configs, warm-start
//! overrides and agent files, the checkpoint reader) is fed arbitrary bytes and mutations of
//! valid inputs (bit flips, inserted, deleted and truncated bytes). The property is the same for
//! all: an answer (a value or an error), never a panic. For checkpoints also: the manifest check
//! passes exactly when no byte changed.
//!
//! Cases per target: `AGENTCORE_FUZZ_CASES` (default 1000); a failure prints the input proptest
//! shrank it to.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::Value;

fn config() -> ProptestConfig {
    let cases =
        std::env::var("AGENTCORE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// One mutation step: (byte, position, operation).
type Mutation = (u8, usize, u8);

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for &(byte, at, op) in muts {
        let n = b.len();
        match op {
            0 if n > 0 => b[at % n] ^= byte | 1,
            1 => b.insert(at % (n + 1), byte),
            2 if n > 0 => b.truncate(at % n),
            3 if n > 0 => {
                b.remove(at % n);
            }
            _ => b.push(byte),
        }
    }
    b
}

/// Mutations of one of `seeds`, or arbitrary bytes.
fn input(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let mutated =
        (0..seeds.len(), prop::collection::vec((any::<u8>(), any::<usize>(), 0u8..5), 1..8))
            .prop_map(move |(i, muts)| mutate(seeds[i].as_bytes().to_vec(), &muts));
    prop_oneof![4 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

const TOOL_CALLS: &[&str] = &[
    r#"Let me compute.<tool_call>{"name": "python", "arguments": {"code": "print(sorted([3, 1]))"}}</tool_call>"#,
    r#"<tool_call>{"name": "calculator", "arguments": {"expression": "2 ^ 10"}}</tool_call><tool_call>{"name": "python", "arguments": "{\"code\": \"1\"}"}</tool_call>"#,
    r#"[{"id": "call_1", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"print(1)\"}"}}]"#,
    r#"{"name": "python", "arguments": {"code": "x = [1, 2]\nprint(x)"}}"#,
];

const ENVELOPES: &[&str] = &[
    r#"{"jsonrpc": "2.0", "method": "training.get_status", "params": {"job_id": "00000000-0000-4000-8000-000000000000"}, "id": 1}"#,
    r#"[{"jsonrpc": "2.0", "method": "rpc.discover", "id": "a"}, {"jsonrpc": "2.0", "method": "training.list_jobs", "params": {"limit": 5}}]"#,
    r#"{"jsonrpc": "2.0", "method": "training.start_grpo", "params": {"agent_id": "seed-agent", "config": {"n_iterations": 2}}, "id": null}"#,
];

const CONFIGS: &[&str] = &[
    r#"{"learning_rate": 0.0005, "n_trajectories_per_query": 16, "batch_size": 8, "max_steps_per_trajectory": 10, "max_budget_usd": "12.50"}"#,
    "learning_rate: 0.0001\nn_iterations: 30\nreward_shaping:\n  enabled: true\n  weights: {success: 1.0}\nloss_type: dr_grpo\n",
    r#"{"steps": 50, "model": {"d_model": 64, "n_heads": 2}, "weak_families": ["sort"]}"#,
];

const AGENTS: &[&str] = &[
    "agent_id: sorter\nmodel: {kind: built_in}\ntools: [{type: python}]\nsystem_prompt: Sort lists.\n",
    "agent_id: api\npolicy: prompt\nmodel:\n  kind: openai\n  base_url: http://127.0.0.1:8080/v1\n  model: gemma\ntools:\n  - type: python\nprompt_policy: {max_lessons: 8}\n",
    "agent_id: local\nmodel: {kind: local, path: /models/m.gguf, lora: {r: 8}}\ntools: [{type: python}]\nsampling: {temperature: 0.7}\n",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tool_call_parsers_answer_every_input(bytes in input(TOOL_CALLS)) {
        let text = String::from_utf8_lossy(&bytes);
        let turn = agentcore_agent::toolcall::parse_hermes(&text);
        let _ = format!("{turn:?}");
        let _ = agentcore_agent::toolcall::call_from_json(0, "call_0".into(), &text);
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let _ = agentcore_agent::toolcall::parse_openai(&v);
        }
    }

    #[test]
    fn the_json_rpc_envelope_answers_every_body(bytes in input(ENVELOPES)) {
        match agentcore_server::rpc::envelope(&bytes) {
            Ok((items, _batch)) => {
                prop_assert!(!items.is_empty() && items.len() <= agentcore_server::rpc::MAX_BATCH_LEN);
                for item in items {
                    let _ = agentcore_server::rpc::parse_call(item);
                }
            }
            Err(response) => prop_assert!(serde_json::to_value(&*response).is_ok()),
        }
    }

    #[test]
    fn config_parsers_answer_every_input(bytes in input(CONFIGS)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = agentcore_grpo::config::GRPOConfig::from_json_str(&text);
        let _ = agentcore_grpo::config::GRPOConfig::from_yaml_str(&text);
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes)
            && let Ok(ws) = agentcore_train::spec::warm_start(Some(&map))
        {
            let _ = ws.violations();
        }
    }

    #[test]
    fn the_agent_file_parser_answers_every_input(bytes in input(AGENTS)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(agent) = agentcore_agent::definition::AgentDefinition::from_yaml(&text) {
            let _ = agentcore_train::spec::resolve(&agent, None, None);
        }
    }

    #[test]
    fn the_checkpoint_reader_answers_every_corruption(
        file in 0usize..4,
        muts in prop::collection::vec((any::<u8>(), any::<usize>(), 0u8..5), 1..6),
    ) {
        let seed = checkpoint_seed();
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        copy_dir(&seed.run, &run);
        let ckpt = run.join("checkpoints").join("ckpt-00001");
        let name = ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "job_state.json"][file];
        let path = ckpt.join(name);
        let original = std::fs::read(&path).unwrap();
        let changed = mutate(original.clone(), &muts);
        std::fs::write(&path, &changed).unwrap();
        // The manifest check passes exactly when no byte changed.
        let verified = agentcore_train::checkpoints::verify(&ckpt).is_ok();
        prop_assert_eq!(verified, changed == original);
        prop_assert_eq!(agentcore_train::checkpoints::verified(&run).len(), usize::from(verified));
        // The model reader answers whatever the bytes.
        let _ = agentcore_model::checkpoint::load_checkpoint(&ckpt, &candle_core::Device::Cpu);
    }
}

/// A run directory with one checkpoint of a tiny model, written by the job's checkpoint writer.
struct Seed {
    _dir: tempfile::TempDir,
    run: std::path::PathBuf,
}

fn checkpoint_seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        use agentcore_model::decoder::{Decoder, DecoderConfig};
        use agentcore_model::optim::{AdamW, AdamWConfig};
        use rand::SeedableRng;
        let mut c = DecoderConfig::tiny(64);
        c.d_model = 16;
        c.n_layers = 1;
        c.n_heads = 2;
        c.d_ff = 32;
        c.max_seq_len = 32;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let model = Decoder::new(c, &mut rng, &candle_core::Device::Cpu).unwrap();
        let opt = AdamW::new(model.params(), AdamWConfig::default()).unwrap();
        let files: Vec<(String, Vec<u8>)> =
            agentcore_model::checkpoint::checkpoint_files(&model, &opt, &rng, "")
                .unwrap()
                .into_iter()
                .map(|(n, b)| (n.to_owned(), b))
                .collect();
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut state = agentcore_train::checkpoints::JobState::new(0.0, false);
        state.iteration = 1;
        agentcore_train::checkpoints::save(
            &run,
            "fuzz",
            &Files(files),
            &rng,
            &mut state,
            &mut |_| {},
        )
        .unwrap();
        Seed { _dir: dir, run }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A policy that is only its checkpoint files.
struct Files(Vec<(String, Vec<u8>)>);

impl agentcore_train::policy::Policy for Files {
    fn describe(&self) -> String {
        "files".into()
    }
    fn backend(
        &self,
    ) -> Result<Box<dyn agentcore_agent::backend::Backend + '_>, agentcore_train::TrainError> {
        Err(agentcore_train::TrainError::InvalidData("no backend".into()))
    }
    fn update(
        &mut self,
        _batch: &agentcore_train::policy::ScoredBatch<'_>,
    ) -> Result<agentcore_train::policy::UpdateStats, agentcore_train::TrainError> {
        Ok(agentcore_train::policy::UpdateStats::default())
    }
    fn checkpoint_files(
        &self,
        _rng: &rand_chacha::ChaCha8Rng,
    ) -> Result<Vec<(String, Vec<u8>)>, agentcore_train::TrainError> {
        Ok(self.0.clone())
    }
}
