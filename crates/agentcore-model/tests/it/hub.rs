//! Hugging Face directories: our export loads back bit-exactly, and the Llama and Qwen2 models
//! we load compute what candle-transformers' `llama` and `qwen2` compute on the same files.

use std::collections::HashMap;
use std::path::Path;

use agentcore_model::decoder::{Architecture, Decoder, DecoderConfig};
use agentcore_model::hub::{ChatMessage, load_hf_dir, load_model, save_hf_dir};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use crate::common::{max_abs_diff, random_sequences, rng};

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A word-level tokenizer with 48 entries: `<unk>`, the ChatML markers, 45 words.
fn write_tokenizer(dir: &Path) -> usize {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let words = ["<unk>", "<|im_start|>", "<|im_end|>", "hello", "world", "user", "assistant"];
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).to_string(), i as u32);
    }
    for i in words.len()..48 {
        vocab.insert(format!("w{i}"), i as u32);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .expect("model");
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer
        .add_special_tokens([
            tokenizers::AddedToken::from("<|im_start|>", true),
            tokenizers::AddedToken::from("<|im_end|>", true),
        ])
        .expect("specials");
    tokenizer.save(dir.join("tokenizer.json"), false).expect("save tokenizer");
    let tc = serde_json::json!({
        "chat_template": CHATML,
        "eos_token": "<|im_end|>",
        "bos_token": null,
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("write");
    48
}

fn config(architecture: Architecture, vocab: usize) -> DecoderConfig {
    DecoderConfig {
        architecture,
        d_model: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: Some(2),
        d_ff: 64,
        max_seq_len: 64,
        rms_norm_eps: 1e-6,
        tie_embeddings: architecture == Architecture::Qwen2,
        attention_bias: architecture == Architecture::Qwen2,
        ..DecoderConfig::tiny(vocab)
    }
}

/// A random model; norms and biases randomised too, so that every weight matters.
fn random_model(config: DecoderConfig, seed: u64) -> Decoder {
    let mut r = rng(seed);
    let model = Decoder::new(config, &mut r, &Device::Cpu).expect("model");
    for (name, var) in model.params().iter() {
        if name.ends_with("norm.weight") || name.ends_with(".bias") {
            let base = if name.ends_with(".bias") { 0.0 } else { 1.0 };
            let n = var.elem_count();
            let v: Vec<f32> = (0..n).map(|_| base + r.random_range(-0.3..0.3)).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).expect("t")).expect("set");
        }
    }
    model
}

fn last_logits(model: &Decoder, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("input");
    Decoder::last_logits(&model.forward_full(&input).expect("forward"), 0).expect("row")
}

#[test]
fn qwen2_directory_round_trips_and_matches_candle_transformers() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("qwen2-tiny");
    let original = random_model(config(Architecture::Qwen2, 48), 1);
    save_hf_dir(&original, &path).expect("save");
    write_tokenizer(&path);
    let loaded = load_model(&path, false, &Device::Cpu).expect("load");
    assert_eq!(loaded.model.config(), original.config());
    assert!(loaded.model.params().is_empty(), "loaded frozen: nothing trainable");

    let vb = unsafe_free_var_builder(&path);
    let cfg = candle_transformers::models::qwen2::Config {
        vocab_size: 48,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        sliding_window: 64,
        max_window_layers: 2,
        tie_word_embeddings: true,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let mut reference =
        candle_transformers::models::qwen2::ModelForCausalLM::new(&cfg, vb).expect("reference");
    for (i, ids) in random_sequences(&[5, 11, 17], 48, 2).iter().enumerate() {
        let ours = last_logits(&loaded.model, ids);
        assert!(max_abs_diff(&ours, &last_logits(&original, ids)) < 1e-6, "export round trip");
        reference.clear_kv_cache();
        let input =
            Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("t");
        let theirs = reference
            .forward(&input, 0)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .expect("reference forward");
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-4, "sequence {i}: logits differ from candle-transformers by {diff}");
    }

    // Tokenizer and chat template came along.
    assert_eq!(loaded.tokenizer.encode("hello world").expect("encode"), vec![3, 4]);
    assert_eq!(loaded.stop_token_ids, vec![2]);
    let text = loaded
        .chat_template
        .as_ref()
        .expect("template")
        .render(&[ChatMessage { role: "user".into(), content: " hello ".into() }], true, None)
        .expect("render");
    assert_eq!(text, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(loaded.tokenizer.encode(&text).expect("encode"), vec![1, 5, 3, 2, 1, 6]);
}

/// candle's `VarBuilder::from_mmaped_safetensors` is `unsafe` (mmap); load into memory instead.
fn unsafe_free_var_builder(dir: &Path) -> VarBuilder<'static> {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).expect("load");
    VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
}

#[test]
fn llama_directory_matches_candle_transformers() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("llama-tiny");
    let original = random_model(config(Architecture::Llama, 48), 3);
    save_hf_dir(&original, &path).expect("save");
    write_tokenizer(&path);
    let loaded = load_hf_dir(&path, true, &Device::Cpu).expect("load");
    assert_eq!(loaded.model.params().len(), original.params().len(), "trainable: every weight");

    let raw: candle_transformers::models::llama::LlamaConfig =
        serde_json::from_slice(&std::fs::read(path.join("config.json")).expect("read"))
            .expect("config");
    let cfg = raw.into_config(false);
    let reference =
        candle_transformers::models::llama::Llama::load(unsafe_free_var_builder(&path), &cfg)
            .expect("reference");
    for ids in random_sequences(&[4, 9, 20], 48, 5) {
        let mut cache =
            candle_transformers::models::llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu)
                .expect("cache");
        let input =
            Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("t");
        let theirs = reference
            .forward(&input, 0, &mut cache)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .expect("reference forward");
        let diff = max_abs_diff(&last_logits(&loaded.model, &ids), &theirs);
        assert!(diff < 1e-4, "logits differ from candle-transformers by {diff}");
    }
}

#[test]
fn bad_model_paths_and_configs_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let err =
        load_model(&dir.path().join("model.bin"), false, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("config.json") && err.to_string().contains(".gguf"), "{err}");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "bert"}"#).expect("write");
    let err = load_model(dir.path(), false, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("model_type `bert` is not supported"), "{err}");
    let path = dir.path().join("llama");
    save_hf_dir(&random_model(config(Architecture::Llama, 48), 1), &path).expect("save");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("config.json")).expect("read"))
            .expect("json");
    cfg["hidden_size"] = 64.into();
    std::fs::write(path.join("config.json"), cfg.to_string()).expect("write");
    let err = load_model(&path, false, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("has shape"), "{err}");
}
