//! Checkpoints: trainable weights, optimizer state and RNG state in one directory, written
//! atomically; and LoRA adapters in the PEFT layout.
//!
//! Layout of a checkpoint directory:
//! - full fine-tuning: `model.safetensors`, every weight, Hugging Face names, metadata
//!   `format: pt`;
//! - LoRA: `adapter_config.json` + `adapter_model.safetensors` (keys prefixed
//!   `base_model.model.`, metadata `format: pt`), the layout transformers' PEFT integration and
//!   vLLM load;
//! - `optimizer.safetensors`: AdamW's `exp_avg.*` and `exp_avg_sq.*`;
//! - `trainer_state.json`: step, model config, LoRA config, optimizer config, the job RNG's state.
//!
//! The directory is built under a temporary name and renamed into place
//! ([`agentcore_fs::write_dir_atomic`]): a checkpoint is complete or absent. Loading it and
//! taking one step gives exactly the step the uninterrupted run took (tested).

use std::collections::HashMap;
use std::path::Path;

use agentcore_fs::{write_atomic, write_dir_atomic};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, DecoderConfig, LoraConfig};
use crate::error::{ModelError, Result};
use crate::optim::{AdamW, AdamWConfig};

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 2;

/// Full weights of a checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
/// LoRA weights of a checkpoint (PEFT layout).
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
/// LoRA settings of a checkpoint (PEFT layout).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// Optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Step, configs and RNG.
pub const STATE_FILE: &str = "trainer_state.json";
/// PEFT's key prefix for the adapters of a causal LM.
const PEFT_PREFIX: &str = "base_model.model.";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version.
    pub format_version: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Model sizes.
    pub model: DecoderConfig,
    /// LoRA settings when the checkpoint holds adapters rather than full weights.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Optimizer settings.
    pub optimizer: AdamWConfig,
    /// The job RNG, exactly where it was.
    pub rng: ChaCha8Rng,
}

/// A loaded checkpoint, ready to continue training.
pub struct Checkpoint {
    /// The model with the saved weights.
    pub model: Decoder,
    /// The optimizer with the saved moments and step count.
    pub optimizer: AdamW,
    /// The job RNG.
    pub rng: ChaCha8Rng,
    /// Steps taken.
    pub step: u64,
}

fn safetensors_bytes(tensors: Vec<(String, Tensor)>, what: &str) -> Result<Vec<u8>> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| ModelError::invalid(what, e.to_string(), "serialization"))
}

fn json_bytes<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| ModelError::invalid(what, e.to_string(), "serialization"))
}

/// Safetensors of a checkpoint, refused when any value is NaN or infinite (a checkpoint of a
/// diverged run, or a corrupted one, must not be trained on or evaluated as if it were a model).
fn load_finite(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let source = path.display().to_string();
    let tensors = candle_core::safetensors::load_buffer(&read_file(path)?, device)
        .map_err(|e| ModelError::File { path: source.clone(), message: e.to_string() })?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let values: Vec<f32> = tensors[name]
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| ModelError::File { path: source.clone(), message: e.to_string() })?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(ModelError::File {
                path: source,
                message: format!(
                    "tensor {name} has {bad} non-finite values (NaN or infinity) of {}: refusing \
                     to load it",
                    values.len()
                ),
            });
        }
    }
    Ok(tensors)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| ModelError::File { path: path.display().to_string(), message: e.to_string() })
}

/// The files of a PEFT adapter for `model`'s LoRA adapters: (`adapter_config.json`,
/// `adapter_model.safetensors`).
fn peft_files(model: &Decoder, lora: &LoraConfig, base: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": lora.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "modules_to_save": null,
    });
    let tensors = model
        .params()
        .iter()
        .map(|(name, var)| (format!("{PEFT_PREFIX}{name}"), var.as_tensor().clone()))
        .collect();
    Ok((json_bytes(&config, "adapter_config.json")?, safetensors_bytes(tensors, "adapters")?))
}

/// Writes `model`'s LoRA adapters as a PEFT adapter directory at `dir` (atomically).
/// `base_model` is recorded as `base_model_name_or_path`.
pub fn save_lora_adapter(dir: &Path, model: &Decoder, base_model: &str) -> Result<()> {
    let lora = model
        .lora()
        .ok_or_else(|| ModelError::invalid("model", "must have LoRA adapters enabled", "none"))?;
    let (config, weights) = peft_files(model, lora, base_model)?;
    write_dir_atomic(dir, |tmp| -> Result<()> {
        write_atomic(&tmp.join(ADAPTER_CONFIG_FILE), &config)?;
        write_atomic(&tmp.join(ADAPTER_FILE), &weights)?;
        Ok(())
    })
}

/// Reads `adapter_config.json` of a PEFT adapter directory.
pub fn read_lora_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let bad = |message: String| ModelError::File { path: path.display().to_string(), message };
    let v: serde_json::Value =
        serde_json::from_slice(&read_file(&path)?).map_err(|e| bad(e.to_string()))?;
    if v["peft_type"] != "LORA" {
        return Err(bad(format!("peft_type must be \"LORA\", got {}", v["peft_type"])));
    }
    let r = v["r"].as_u64().ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
    let lora_alpha =
        v["lora_alpha"].as_f64().ok_or_else(|| bad("`lora_alpha` must be a number".into()))?;
    let target_modules = match &v["target_modules"] {
        serde_json::Value::Array(a) => {
            a.iter().filter_map(|m| m.as_str().map(String::from)).collect()
        }
        serde_json::Value::String(s) => vec![s.clone()],
        other => return Err(bad(format!("`target_modules` must be a list, got {other}"))),
    };
    let config = LoraConfig { r, lora_alpha, target_modules };
    config.validate()?;
    Ok(config)
}

/// Loads a PEFT adapter directory into `model`, whose adapters must be enabled with the same
/// settings (see [`read_lora_config`]).
pub fn load_lora_adapter(dir: &Path, model: &Decoder, device: &Device) -> Result<()> {
    let path = dir.join(ADAPTER_FILE);
    let source = path.display().to_string();
    let tensors = load_finite(&path, device)?;
    let stripped: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(PEFT_PREFIX).map(String::from).unwrap_or(k), v))
        .collect();
    model.params().load_values(&stripped, &source)
}

/// The files of a checkpoint, named as [`save_checkpoint`] writes them: the weights (or the
/// PEFT adapter), the optimizer moments and `trainer_state.json`. For callers that add files of
/// their own to the same atomic directory. `base_model` goes into a LoRA adapter's
/// `base_model_name_or_path`.
pub fn checkpoint_files(
    model: &Decoder,
    optimizer: &AdamW,
    rng: &ChaCha8Rng,
    base_model: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut files: Vec<(&'static str, Vec<u8>)> = match model.lora() {
        Some(lora) => {
            let (config, weights) = peft_files(model, lora, base_model)?;
            vec![(ADAPTER_CONFIG_FILE, config), (ADAPTER_FILE, weights)]
        }
        None => {
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            vec![(MODEL_FILE, model.params().to_safetensors(metadata)?)]
        }
    };
    files.push((OPTIMIZER_FILE, safetensors_bytes(optimizer.state_tensors(), "optimizer state")?));
    let state = TrainerState {
        format_version: CHECKPOINT_FORMAT_VERSION,
        step: optimizer.step_count(),
        model: model.config().clone(),
        lora: model.lora().cloned(),
        optimizer: optimizer.config().clone(),
        rng: rng.clone(),
    };
    files.push((STATE_FILE, json_bytes(&state, "trainer state")?));
    Ok(files)
}

/// Writes a checkpoint directory at `dir` (replacing one that is there).
pub fn save_checkpoint(
    dir: &Path,
    model: &Decoder,
    optimizer: &AdamW,
    rng: &ChaCha8Rng,
) -> Result<()> {
    let files = checkpoint_files(model, optimizer, rng, "")?;
    write_dir_atomic(dir, |tmp| -> Result<()> {
        for (name, bytes) in &files {
            write_atomic(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_trainer_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let source = path.display().to_string();
    let state: TrainerState = serde_json::from_slice(&read_file(&path)?)
        .map_err(|e| ModelError::File { path: source.clone(), message: e.to_string() })?;
    if state.format_version != CHECKPOINT_FORMAT_VERSION {
        return Err(ModelError::File {
            path: source,
            message: format!(
                "format_version {} is not supported (expected {CHECKPOINT_FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    Ok(state)
}

/// Restores a checkpoint into `model`, which must be built like the checkpointed one (same
/// config; for a LoRA checkpoint, the same base weights with adapters enabled with the same
/// settings): loads the trainable weights and returns the optimizer, RNG and step.
pub fn restore_checkpoint(dir: &Path, model: &Decoder) -> Result<(AdamW, ChaCha8Rng, u64)> {
    let state = read_trainer_state(dir)?;
    let state_path = dir.join(STATE_FILE).display().to_string();
    if &state.model != model.config() || state.lora.as_ref() != model.lora() {
        return Err(ModelError::File {
            path: state_path,
            message: "the checkpoint is of another model (config or LoRA settings differ)".into(),
        });
    }
    let device = model.device();
    if state.lora.is_some() {
        load_lora_adapter(dir, model, device)?;
    } else {
        let path = dir.join(MODEL_FILE);
        let weights = load_finite(&path, device)?;
        model.params().load_values(&weights, &path.display().to_string())?;
    }
    let mut optimizer = AdamW::new(model.params(), state.optimizer.clone())?;
    let path = dir.join(OPTIMIZER_FILE);
    let moments = load_finite(&path, device)?;
    optimizer.load_state(&moments, state.step, &path.display().to_string())?;
    Ok((optimizer, state.rng, state.step))
}

/// Loads a full-weights checkpoint of a model built from its config alone (the built-in tiny
/// model), written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let state = read_trainer_state(dir)?;
    if state.lora.is_some() {
        return Err(ModelError::File {
            path: dir.join(STATE_FILE).display().to_string(),
            message: "a LoRA checkpoint needs its base model: use restore_checkpoint".into(),
        });
    }
    // Build a model of the right shape (its initial values are overwritten), then load.
    let mut scratch = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = Decoder::new(state.model.clone(), &mut scratch, device)?;
    let (optimizer, rng, step) = restore_checkpoint(dir, &model)?;
    Ok(Checkpoint { model, optimizer, rng, step })
}
