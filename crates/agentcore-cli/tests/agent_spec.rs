//! One agent spec for the CLI and the service: an agent with a local model (a tiny Llama
//! directory with its tokenizer, written here) in a definition file trains with
//! `agentcore train --agent FILE`, which registers it in the store; the same agent started over
//! JSON-RPC (`agentcore serve`, `agentcore jobs start --url`) on the same store trains that
//! model, and both jobs have the same settings (`job.json`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agentcore_model::decoder::{Architecture, Decoder, DecoderConfig};
use agentcore_model::hub::save_hf_dir;
use common::{ok, run};
use rand::SeedableRng;
use serde_json::Value;

/// A random two-layer Llama with a word-level tokenizer and a ChatML template.
fn write_tiny_llama(dir: &Path) {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let words = ["<unk>", "<|im_start|>", "<|im_end|>", "python", "print", "answer", "the"];
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).to_string(), i as u32);
    }
    for i in words.len()..64 {
        vocab.insert(format!("w{i}"), i as u32);
    }
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .expect("tokenizer model");
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tokenizer
        .add_special_tokens([
            tokenizers::AddedToken::from("<|im_start|>", true),
            tokenizers::AddedToken::from("<|im_end|>", true),
        ])
        .expect("specials");
    let config = DecoderConfig {
        architecture: Architecture::Llama,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        d_ff: 64,
        max_seq_len: 4096,
        rms_norm_eps: 1e-6,
        tie_embeddings: false,
        attention_bias: false,
        ..DecoderConfig::tiny(64)
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let decoder = Decoder::new(config, &mut rng, &candle_core::Device::Cpu).expect("model");
    save_hf_dir(&decoder, dir).expect("save");
    tokenizer.save(dir.join("tokenizer.json"), false).expect("save tokenizer");
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let tc = serde_json::json!({"chat_template": template, "eos_token": "<|im_end|>", "bos_token": null});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("write");
}

fn job_settings(data: &Path, job: &str) -> Value {
    let path = data.join("runs").join(job).join("job.json");
    serde_json::from_slice(&std::fs::read(&path).expect("job.json")).expect("json")
}

#[test]
fn a_local_model_agent_trains_the_same_from_the_cli_and_over_json_rpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("tiny-llama");
    write_tiny_llama(&model_dir);
    let agent_file = dir.path().join("tiny-local.yaml");
    std::fs::write(
        &agent_file,
        format!(
            "agent_id: tiny-local\nagent_type: code\n\
             model: {{kind: local, path: {:?}, lora: {{r: 2, lora_alpha: 4.0, target_modules: [q_proj, v_proj]}}}}\n\
             system_prompt: Solve the task with the python tool.\n\
             tools: [{{type: python}}]\n\
             sampling: {{temperature: 1.0, top_p: 1.0, max_tokens_per_turn: 6}}\n\
             max_steps_per_trajectory: 3\n",
            model_dir.display().to_string()
        ),
    )
    .expect("write agent");
    let tasks = run(&["tasks", "generate", "--n", "100", "--seed", "3", "--difficulty", "1"], &[]);
    let tasks_file = dir.path().join("tasks.jsonl");
    std::fs::write(&tasks_file, ok(&tasks)).expect("write tasks");
    let config_file = dir.path().join("grpo.json");
    std::fs::write(
        &config_file,
        r#"{"n_iterations": 1, "batch_size": 2, "n_trajectories_per_query": 2,
            "eval_interval": 1, "checkpoint_interval": 1, "seed": 5, "max_budget_usd": "5.00"}"#,
    )
    .expect("write config");
    let data = dir.path().join("home");
    let data_s = data.to_str().expect("utf-8");
    let (agent_s, tasks_s, config_s) = (
        agent_file.to_str().expect("utf-8"),
        tasks_file.to_str().expect("utf-8"),
        config_file.to_str().expect("utf-8"),
    );

    // The CLI: trains the agent of the file and registers it in the store.
    let out = run(
        &[
            "train",
            "--agent",
            agent_s,
            "--config",
            config_s,
            "--data",
            tasks_s,
            "--data-dir",
            data_s,
            "--json",
        ],
        &[],
    );
    let events: Vec<Value> =
        ok(&out).lines().map(|l| serde_json::from_str(l).expect("event")).collect();
    let started = events.iter().find(|e| e["event"] == "started").expect("started");
    let cli_job = started["job_id"].as_str().expect("id").to_string();
    let done = events.iter().find(|e| e["event"] == "done").expect("done");
    assert_eq!(done["agent_id"], "tiny-local");
    assert!(
        done["policy"].as_str().is_some_and(
            |p| p.contains("LoRA r=2") && p.contains(model_dir.to_str().expect("utf-8"))
        ),
        "the job trained LoRA adapters on the file's model: {}",
        done["policy"]
    );
    let cli_settings = job_settings(&data, &cli_job);
    // The agent's own sampling and limits reached the job, the config's keys too.
    assert_eq!(cli_settings["config"]["max_steps_per_trajectory"], 3);
    assert_eq!(cli_settings["config"]["max_completion_length"], 6);
    assert_eq!(cli_settings["config"]["n_iterations"], 1);
    assert_eq!(cli_settings["model"]["path"], model_dir.to_str().expect("utf-8"));
    assert_eq!(cli_settings["model"]["lora"]["r"], 2);
    assert_eq!(cli_settings["agent_type"], "code");

    // The service on the same store: the agent the CLI registered, started over JSON-RPC.
    let (_server, url, token, _) = common::serve(&["--workers", "1", "--data-dir", data_s]);
    let env = [("AGENTCORE_URL", url.as_str()), ("AGENTCORE_API_KEY", token.as_str())];
    let started: Value = serde_json::from_str(&ok(&run(
        &["jobs", "start", "--agent-id", "tiny-local", "--data", tasks_s, "--config", config_s],
        &env,
    )))
    .expect("start result");
    let rpc_job = started["job_id"].as_str().expect("job id").to_string();
    let t = Instant::now();
    let status = loop {
        let s: Value =
            serde_json::from_str(&ok(&run(&["jobs", "status", &rpc_job], &env))).expect("status");
        if matches!(s["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "the job did not finish: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["status"], "completed", "{status}");
    let mut rpc_settings = job_settings(&data, &rpc_job);
    let mut cli_settings = cli_settings;
    let (rpc_data, cli_data) = (rpc_settings["data"].take(), cli_settings["data"].take());
    assert_eq!(rpc_settings, cli_settings, "the CLI and the service made different jobs");
    assert!(rpc_data == cli_data && !cli_data.is_null(), "the jobs have different data");
    // It trained that model: its checkpoint is a PEFT adapter of the file's model.
    let adapter =
        data.join("runs").join(&rpc_job).join("checkpoints/ckpt-00001/adapter_config.json");
    let adapter: Value =
        serde_json::from_slice(&std::fs::read(&adapter).expect("adapter config")).expect("json");
    assert_eq!(adapter["base_model_name_or_path"], model_dir.to_str().expect("utf-8"));
    assert_eq!(adapter["r"], 2);
}
