//! LoRA: adapters start as the identity, only they train (the base stays bit-identical), every
//! adapter receives a gradient, they save and load in the PEFT layout, merge for export, and a
//! LoRA checkpoint resumes exactly.

use std::collections::HashMap;

use agentcore_model::checkpoint::{
    load_lora_adapter, read_lora_config, restore_checkpoint, save_checkpoint, save_lora_adapter,
};
use agentcore_model::decoder::{Decoder, LORA_MODULES, LoraConfig};
use agentcore_model::generate::token_logprobs;
use agentcore_model::optim::{AdamW, AdamWConfig};
use candle_core::{Device, Tensor};

use crate::common::{
    assert_every_param_has_gradient, max_abs_diff, random_sequences, rng, small_model,
};
use crate::training::{grpo_step, weights};

fn all_modules(r: usize) -> LoraConfig {
    LoraConfig {
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: LORA_MODULES.map(String::from).to_vec(),
    }
}

fn logits(model: &Decoder, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("input");
    let l = model.forward_full(&input).expect("forward");
    l.flatten_all().and_then(|l| l.to_vec1::<f32>()).expect("logits")
}

fn base_weights(model: &Decoder) -> Vec<(String, Vec<f32>)> {
    model
        .weights()
        .iter()
        .map(|(n, t)| (n.clone(), t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("vec")))
        .collect()
}

/// Mean negative log-likelihood of the sequences.
fn nll(model: &Decoder, sequences: &[Vec<u32>]) -> Tensor {
    let logp = token_logprobs(model, sequences, 1.0, 0).expect("scores");
    let n: usize = sequences.iter().map(|s| s.len() - 1).sum();
    (logp.sum_all().expect("sum").neg().expect("neg") / n as f64).expect("mean")
}

#[test]
fn lora_trains_only_the_adapters_and_round_trips_as_peft() {
    let mut model = small_model(1);
    let ids = [3u32, 9, 14, 2, 27, 31];
    let before = logits(&model, &ids);
    model.enable_lora(&all_modules(4), &mut rng(2)).expect("lora");
    assert_eq!(logits(&model, &ids), before, "B = 0: the adapted model computes the same");
    // 7 modules x 2 layers x (A, B).
    assert_eq!(model.params().len(), 28);
    assert!(
        model
            .params()
            .iter()
            .all(|(n, _)| n.ends_with("lora_A.weight") || n.ends_with("lora_B.weight"))
    );
    assert!(model.enable_lora(&all_modules(4), &mut rng(2)).is_err(), "twice is refused");

    let frozen = base_weights(&model);
    let data = random_sequences(&[12, 12, 12, 12], 40, 3);
    let mut opt =
        AdamW::new(model.params(), AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() })
            .expect("opt");
    let mut losses = Vec::new();
    for step in 0..15 {
        let loss = nll(&model, &data);
        losses.push(loss.to_scalar::<f32>().expect("scalar"));
        let grads = loss.backward().expect("backward");
        if step == 1 {
            // After the first step B != 0, so every adapter matrix has a gradient.
            assert_every_param_has_gradient(&model, &grads, "lora");
        }
        let stats = opt.step(&grads).expect("step");
        assert!(stats.without_gradient.is_empty() || step == 0, "{:?}", stats.without_gradient);
    }
    assert!(losses[14] < losses[0] - 0.3, "LoRA training lowers the loss: {losses:?}");
    assert_eq!(base_weights(&model), frozen, "the base weights never change");

    // PEFT layout.
    let dir = tempfile::tempdir().expect("dir");
    let adapter = dir.path().join("adapter");
    save_lora_adapter(&adapter, &model, "agentcore/tiny").expect("save");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).expect("read"))
            .expect("json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["base_model_name_or_path"], "agentcore/tiny");
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    assert_eq!(
        meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str),
        Some("pt")
    );
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 28);
    assert_eq!(names[0], "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
    assert_eq!(st.tensor(names[0]).expect("tensor").shape(), &[4, 64]);

    // Loading it into a fresh base reproduces the trained model.
    let trained = logits(&model, &ids);
    let mut fresh = small_model(1);
    let lora = read_lora_config(&adapter).expect("config");
    assert_eq!(&lora, model.lora().expect("lora"));
    fresh.enable_lora(&lora, &mut rng(77)).expect("lora");
    load_lora_adapter(&adapter, &fresh, &Device::Cpu).expect("load");
    assert_eq!(logits(&fresh, &ids), trained);

    // Merged weights (what an export holds) compute the same function.
    let merged: HashMap<String, Tensor> =
        model.merged_weights().expect("merge").into_iter().collect();
    let plain =
        Decoder::from_weights(model.config().clone(), merged, false, "merged", &Device::Cpu)
            .expect("model");
    let diff = max_abs_diff(&logits(&plain, &ids), &trained);
    assert!(diff < 1e-5, "merged differs by {diff}");
}

#[test]
fn lora_checkpoint_resumes_exactly() {
    let config = AdamWConfig { learning_rate: 3e-3, ..AdamWConfig::default() };
    let lora = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    let build = || {
        let mut m = small_model(21);
        m.enable_lora(&lora, &mut rng(8)).expect("lora");
        m
    };
    let model = build();
    let mut opt = AdamW::new(model.params(), config.clone()).expect("optimizer");
    let mut job_rng = rng(99);
    for _ in 0..3 {
        grpo_step(&model, &mut opt, &mut job_rng, 2, 4);
    }
    let uninterrupted = weights(&model);

    let model = build();
    let mut opt = AdamW::new(model.params(), config).expect("optimizer");
    let mut job_rng = rng(99);
    for _ in 0..2 {
        grpo_step(&model, &mut opt, &mut job_rng, 2, 4);
    }
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("checkpoint-2");
    save_checkpoint(&path, &model, &opt, &job_rng).expect("save");
    assert!(
        path.join("adapter_model.safetensors").is_file()
            && !path.join("model.safetensors").exists()
    );
    drop((model, opt, job_rng));

    let resumed = build();
    let (mut opt, mut job_rng, step) = restore_checkpoint(&path, &resumed).expect("restore");
    assert_eq!(step, 2);
    grpo_step(&resumed, &mut opt, &mut job_rng, 2, 4);
    assert_eq!(weights(&resumed), uninterrupted, "bit-identical adapters after resume");

    // A base without adapters, or with other settings, is refused.
    let err = restore_checkpoint(&path, &small_model(21)).err().expect("refused");
    assert!(err.to_string().contains("another model"), "{err}");
}

/// Writes a tiny Llama as a Hugging Face directory, a trained LoRA adapter for it in the PEFT
/// layout, and our logits for fixed inputs, into `AGENTCORE_INTEROP_DIR`;
/// `scripts/check_peft_interop.py` then loads both with transformers + PEFT and compares.
/// Ignored by default (the check needs torch); run it with
/// `AGENTCORE_INTEROP_DIR=/tmp/interop cargo test -p agentcore-model --test it -- --ignored interop`.
#[test]
#[ignore = "writes files for scripts/check_peft_interop.py"]
fn interop_export_for_transformers_and_peft() {
    let Some(out) = std::env::var_os("AGENTCORE_INTEROP_DIR").map(std::path::PathBuf::from) else {
        panic!("set AGENTCORE_INTEROP_DIR");
    };
    let mut model = small_model(4);
    agentcore_model::hub::save_hf_dir(&model, &out.join("base")).expect("base");
    model.enable_lora(&all_modules(4), &mut rng(5)).expect("lora");
    // Non-zero adapters: a few training steps.
    let data = random_sequences(&[12, 12], 40, 6);
    let mut opt =
        AdamW::new(model.params(), AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() })
            .expect("opt");
    for _ in 0..5 {
        let grads = nll(&model, &data).backward().expect("backward");
        opt.step(&grads).expect("step");
    }
    save_lora_adapter(&out.join("adapter"), &model, "base").expect("adapter");
    agentcore_model::hub::save_hf_dir(&model, &out.join("merged")).expect("merged");
    let ids: Vec<u32> = vec![3, 9, 14, 2, 27, 31, 5, 8];
    let expected = serde_json::json!({ "input_ids": ids, "logits": logits(&model, &ids) });
    std::fs::write(out.join("expected.json"), expected.to_string()).expect("write");
}
