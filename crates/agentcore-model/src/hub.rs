//! Loading models from disk: Hugging Face directories of the Llama / Qwen2 family
//! (`config.json`, `*.safetensors`, `tokenizer.json`, the chat template of
//! `tokenizer_config.json`) and Gemma 3 GGUF files (weights dequantized to f32 for training,
//! tokenizer from the GGUF metadata); and writing a [`Decoder`] back as a Hugging Face directory.
//!
//! Loaded weights are constants unless `trainable` is set (full fine-tuning); for LoRA, load
//! them frozen and call [`Decoder::enable_lora`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decoder::{Activation, Architecture, Decoder, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::tokenizer::{TextTokenizer, tokenizer_from_gguf};

/// Longest sequence the rotary tables of a loaded model cover (the tables of a 128K-context
/// model would cost memory for lengths no agent trajectory here reaches).
pub const MAX_LOADED_SEQ_LEN: usize = 8192;

/// Gemma's turn format, for GGUF files that carry no `tokenizer.chat_template` (the Gemma 3
/// 270M file does not). A system message is prepended to the first user turn, as Gemma's own
/// template does.
pub const GEMMA_CHAT_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}\
{%- for message in loop_messages -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// Where `scripts/fetch_gemma3.sh` puts the Gemma 3 270M GGUF:
/// `$AGENTCORE_CACHE/models/gemma-3-270m-q4_k_m.gguf`, the cache defaulting to
/// `~/.cache/agentcore`. `None` when neither variable is set. The file may not exist.
pub fn default_gemma_gguf_path() -> Option<PathBuf> {
    let cache = std::env::var_os("AGENTCORE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/agentcore")))?;
    Some(cache.join("models/gemma-3-270m-q4_k_m.gguf"))
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A Jinja chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// The template source.
    pub source: String,
    /// Text of the BOS token (`bos_token` in the template).
    pub bos_token: String,
    /// Text of the EOS token (`eos_token` in the template).
    pub eos_token: String,
}

impl ChatTemplate {
    /// Renders the conversation; `tools` (JSON schemas) is passed as the template's `tools`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&Value>,
    ) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, _> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let bad =
            |e: minijinja::Error| ModelError::invalid("chat template", e.to_string(), "render");
        env.add_template("chat", &self.source).map_err(bad)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools,
        };
        env.get_template("chat").and_then(|t| t.render(ctx)).map_err(bad)
    }
}

/// A model ready to run: weights, tokenizer, chat template and the ids that end a turn.
pub struct LoadedModel {
    /// The network.
    pub model: Decoder,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, when it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation (EOS, end of turn).
    pub stop_token_ids: Vec<u32>,
    /// Where it came from.
    pub source: PathBuf,
}

/// Loads a model from a path: a directory with `config.json` (Hugging Face) or a `.gguf` file.
pub fn load_model(path: &Path, trainable: bool, device: &Device) -> Result<LoadedModel> {
    if path.is_dir() {
        load_hf_dir(path, trainable, device)
    } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        load_gguf(path, trainable, device)
    } else {
        Err(ModelError::File {
            path: path.display().to_string(),
            message: "must be a Hugging Face model directory (with config.json) or a .gguf file"
                .into(),
        })
    }
}

fn file_error(path: &Path, message: impl ToString) -> ModelError {
    ModelError::File { path: path.display().to_string(), message: message.to_string() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, e))
}

/// The decoder config of a Hugging Face `config.json` (model_type `llama` or `qwen2`).
pub fn config_from_hf(config: &Value, source: &Path) -> Result<DecoderConfig> {
    let model_type = config["model_type"].as_str().unwrap_or("");
    let architecture = match model_type {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(file_error(
                source,
                format!(
                    "model_type `{other}` is not supported (supported: llama, qwen2; Gemma 3 loads from GGUF)"
                ),
            ));
        }
    };
    let usize_of = |key: &str| -> Result<usize> {
        config[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| file_error(source, format!("`{key}` must be a positive integer")))
    };
    let opt_usize = |key: &str| config[key].as_u64().map(|v| v as usize);
    if let Some(scaling) = config.get("rope_scaling").filter(|v| !v.is_null()) {
        return Err(file_error(
            source,
            format!("rope_scaling {scaling} is not supported (only plain RoPE)"),
        ));
    }
    let activation = match config["hidden_act"].as_str().unwrap_or("silu") {
        "silu" => Activation::Silu,
        "gelu_pytorch_tanh" => Activation::GeluPytorchTanh,
        other => {
            return Err(file_error(source, format!("hidden_act `{other}` is not supported")));
        }
    };
    Ok(DecoderConfig {
        architecture,
        vocab_size: usize_of("vocab_size")?,
        d_model: usize_of("hidden_size")?,
        n_layers: usize_of("num_hidden_layers")?,
        n_heads: usize_of("num_attention_heads")?,
        n_kv_heads: opt_usize("num_key_value_heads"),
        // Recorded only where it differs from d_model / n_heads, as in our own configs.
        head_dim: opt_usize("head_dim").filter(|&h| {
            Some(h)
                != usize_of("hidden_size")
                    .ok()
                    .zip(usize_of("num_attention_heads").ok())
                    .map(|(d, n)| d / n.max(1))
        }),
        d_ff: usize_of("intermediate_size")?,
        max_seq_len: opt_usize("max_position_embeddings")
            .unwrap_or(MAX_LOADED_SEQ_LEN)
            .min(MAX_LOADED_SEQ_LEN),
        rope_theta: config["rope_theta"].as_f64().unwrap_or(10_000.0),
        rope_local_theta: None,
        sliding_window: None,
        sliding_window_pattern: None,
        rms_norm_eps: config["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        tie_embeddings: config["tie_word_embeddings"].as_bool().unwrap_or(false),
        attention_bias: architecture == Architecture::Qwen2
            || config["attention_bias"].as_bool().unwrap_or(false),
        activation,
        query_pre_attn_scalar: None,
    })
}

/// Loads a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, trainable: bool, device: &Device) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let raw_config = read_json(&config_path)?;
    let config = config_from_hf(&raw_config, &config_path)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| file_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(file_error(dir, "no *.safetensors weights"));
    }
    let mut weights = HashMap::new();
    for file in &files {
        for (name, t) in
            candle_core::safetensors::load(file, device).map_err(|e| file_error(file, e))?
        {
            weights.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    if config.tie_embeddings {
        weights.remove("lm_head.weight");
    }
    let model =
        Decoder::from_weights(config, weights, trainable, &dir.display().to_string(), device)?;

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| file_error(&tokenizer_path, e))?;
    let tokenizer = TextTokenizer::Hf(Box::new(tokenizer));

    let token_text = |v: &Value| -> Option<String> {
        v.as_str().map(String::from).or_else(|| v["content"].as_str().map(String::from))
    };
    let tc_path = dir.join("tokenizer_config.json");
    let (chat_template, eos_token) = if tc_path.is_file() {
        let tc = read_json(&tc_path)?;
        let source = match &tc["chat_template"] {
            Value::String(s) => Some(s.clone()),
            // A list of named templates: take `default`, else the first.
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str().map(String::from)),
            _ => None,
        };
        let bos = token_text(&tc["bos_token"]).unwrap_or_default();
        let eos = token_text(&tc["eos_token"]).unwrap_or_default();
        (
            source.map(|source| ChatTemplate { source, bos_token: bos, eos_token: eos.clone() }),
            Some(eos),
        )
    } else {
        (None, None)
    };
    let mut stop_token_ids: Vec<u32> =
        eos_token.iter().filter_map(|t| tokenizer.token_id(t)).collect();
    match &raw_config["eos_token_id"] {
        Value::Number(n) => stop_token_ids.extend(n.as_u64().map(|v| v as u32)),
        Value::Array(list) => {
            stop_token_ids.extend(list.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
        }
        _ => {}
    }
    stop_token_ids.sort_unstable();
    stop_token_ids.dedup();
    Ok(LoadedModel { model, tokenizer, chat_template, stop_token_ids, source: dir.to_path_buf() })
}

/// GGUF tensor names to Hugging Face names (Gemma 3).
fn hf_name_of_gguf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "post_attention_norm.weight" => "post_attention_layernorm.weight",
        "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

/// The decoder config from the metadata of a Gemma 3 GGUF file.
pub fn config_from_gguf(
    content: &candle_core::quantized::gguf_file::Content,
    source: &Path,
) -> Result<DecoderConfig> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "gemma3" {
        return Err(file_error(
            source,
            format!(
                "GGUF architecture `{arch}` is not supported (supported: gemma3; Llama and Qwen2 load from Hugging Face directories)"
            ),
        ));
    }
    let u = |key: &str| -> Result<usize> {
        md.get(&format!("gemma3.{key}"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
            .ok_or_else(|| file_error(source, format!("missing metadata `gemma3.{key}`")))
    };
    let f = |key: &str, default: f64| -> f64 {
        md.get(&format!("gemma3.{key}")).and_then(|v| v.to_f32().ok()).map_or(default, f64::from)
    };
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| file_error(source, "missing tensor `token_embd.weight`"))?;
    let vocab_size = embd.shape.dims()[0];
    Ok(DecoderConfig {
        architecture: Architecture::Gemma3,
        vocab_size,
        d_model: u("embedding_length")?,
        n_layers: u("block_count")?,
        n_heads: u("attention.head_count")?,
        n_kv_heads: Some(u("attention.head_count_kv")?),
        head_dim: Some(u("attention.key_length")?),
        d_ff: u("feed_forward_length")?,
        max_seq_len: u("context_length").unwrap_or(MAX_LOADED_SEQ_LEN).min(MAX_LOADED_SEQ_LEN),
        rope_theta: f("rope.freq_base", 1_000_000.0),
        // Not in the 270M file's metadata; Gemma 3's value (as llama.cpp and candle assume).
        rope_local_theta: Some(f("rope.local_freq_base", 10_000.0)),
        sliding_window: Some(u("attention.sliding_window")?),
        sliding_window_pattern: Some(u("attention.sliding_window_type").unwrap_or(6)),
        rms_norm_eps: f("attention.layer_norm_rms_epsilon", 1e-6),
        tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: false,
        activation: Activation::GeluPytorchTanh,
        query_pre_attn_scalar: None,
    })
}

/// Loads a Gemma 3 GGUF file: every weight dequantized to f32 (quantized matmul has no
/// backward), the tokenizer from the metadata, Gemma's chat template. Loaded frozen (for
/// inference or LoRA), the matrices also keep their quantized form, which decoding uses.
pub fn load_gguf(path: &Path, trainable: bool, device: &Device) -> Result<LoadedModel> {
    let mut file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| file_error(path, e))?;
    let config = config_from_gguf(&content, path)?;
    let mut weights = HashMap::new();
    let mut quantized = std::collections::BTreeMap::new();
    for name in content.tensor_infos.keys() {
        let hf = hf_name_of_gguf(name)
            .ok_or_else(|| file_error(path, format!("unexpected tensor `{name}`")))?;
        let q = content.tensor(&mut file, name, device).map_err(|e| file_error(path, e))?;
        let dense = q.dequantize(device)?;
        // The matrices keep their quantized form for decoding (frozen weights only). candle's
        // CPU kernels for Q4_1/Q5_0/Q5_1 are scalar (Gemma 3 270M's q/k/gate/up are Q5_0: 80%
        // of decoding time): those are requantized to Q8_0, which has a SIMD kernel.
        if q.shape().rank() == 2 {
            let q = match q.dtype() {
                GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                    QTensor::quantize(&dense, GgmlDType::Q8_0)?
                }
                _ => q,
            };
            quantized.insert(hf.clone(), std::sync::Arc::new(q));
        }
        weights.insert(hf, dense);
    }
    let mut model =
        Decoder::from_weights(config, weights, trainable, &path.display().to_string(), device)?;
    // The quantized twins are CPU kernels; on a GPU the dense weights serve decoding.
    if !trainable && device.is_cpu() {
        model.set_quantized_weights(quantized)?;
    }
    let tokenizer =
        TextTokenizer::Hf(Box::new(tokenizer_from_gguf(&content, &path.display().to_string())?));
    let token_of = |key: &str| -> Option<String> {
        let id = content.metadata.get(key)?.to_u32().ok()?;
        let tokens = content.metadata.get("tokenizer.ggml.tokens")?.to_vec().ok()?;
        tokens.get(id as usize)?.to_string().ok().cloned()
    };
    let bos = token_of("tokenizer.ggml.bos_token_id").unwrap_or_default();
    let eos = token_of("tokenizer.ggml.eos_token_id").unwrap_or_default();
    let source = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| GEMMA_CHAT_TEMPLATE.to_string());
    let mut stop_token_ids: Vec<u32> =
        [eos.as_str(), "<end_of_turn>"].iter().filter_map(|t| tokenizer.token_id(t)).collect();
    stop_token_ids.sort_unstable();
    stop_token_ids.dedup();
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template: Some(ChatTemplate { source, bos_token: bos, eos_token: eos }),
        stop_token_ids,
        source: path.to_path_buf(),
    })
}

/// Writes `model` as a Hugging Face directory (`config.json`, `model.safetensors` with
/// metadata `format: pt`) that transformers' `AutoModelForCausalLM` loads; Llama and Qwen2 only.
/// LoRA adapters are merged into the written weights.
pub fn save_hf_dir(model: &Decoder, dir: &Path) -> Result<()> {
    let c = model.config();
    let model_type = match c.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Gemma3 => {
            return Err(ModelError::invalid(
                "architecture",
                "must be llama or qwen2 to export as a Hugging Face directory",
                "gemma3",
            ));
        }
    };
    let config = serde_json::json!({
        "architectures": [if model_type == "llama" { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads(),
        "head_dim": c.head_dim(),
        "intermediate_size": c.d_ff,
        "max_position_embeddings": c.max_seq_len,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": c.attention_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    let tensors: Vec<(String, Tensor)> = model.merged_weights()?.into_iter().collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| ModelError::invalid("safetensors serialization", e.to_string(), "weights"))?;
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| ModelError::invalid("config.json", e.to_string(), "serialization"))?;
    agentcore_fs::write_dir_atomic(dir, |tmp| -> Result<()> {
        agentcore_fs::write_atomic(&tmp.join("config.json"), &config)?;
        agentcore_fs::write_atomic(&tmp.join("model.safetensors"), &bytes)?;
        Ok(())
    })
}
