//! Checkpoints: weights, optimizer state and RNG state in one directory, written atomically.
//!
//! Layout of a checkpoint directory:
//! - `model.safetensors`: the weights, Hugging Face names, metadata `format: pt`;
//! - `optimizer.safetensors`: AdamW's `exp_avg.*` and `exp_avg_sq.*`;
//! - `trainer_state.json`: step, model config, optimizer config, the job RNG's state.
//!
//! The directory is built under a temporary name and renamed into place
//! ([`agentcore_fs::write_dir_atomic`]): a checkpoint is complete or absent. Loading it and
//! taking one step gives exactly the step the uninterrupted run took (tested).

use std::collections::HashMap;
use std::path::Path;

use agentcore_fs::{write_atomic, write_dir_atomic};
use candle_core::Device;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::optim::{AdamW, AdamWConfig};

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

const MODEL_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version.
    pub format_version: u32,
    /// Optimizer steps taken.
    pub step: u64,
    /// Model sizes.
    pub model: DecoderConfig,
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

/// Writes a checkpoint directory at `dir` (replacing one that is there).
pub fn save_checkpoint(
    dir: &Path,
    model: &Decoder,
    optimizer: &AdamW,
    rng: &ChaCha8Rng,
) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = model.params().to_safetensors(metadata.clone())?;
    let moments = safetensors::serialize(optimizer.state_tensors(), Some(metadata))
        .map_err(|e| ModelError::invalid("optimizer state", e.to_string(), "serialization"))?;
    let state = TrainerState {
        format_version: CHECKPOINT_FORMAT_VERSION,
        step: optimizer.step_count(),
        model: model.config().clone(),
        optimizer: optimizer.config().clone(),
        rng: rng.clone(),
    };
    let state = serde_json::to_vec_pretty(&state)
        .map_err(|e| ModelError::invalid("trainer state", e.to_string(), "serialization"))?;
    write_dir_atomic(dir, |tmp| -> Result<()> {
        write_atomic(&tmp.join(MODEL_FILE), &weights)?;
        write_atomic(&tmp.join(OPTIMIZER_FILE), &moments)?;
        write_atomic(&tmp.join(STATE_FILE), &state)?;
        Ok(())
    })
}

/// Loads a checkpoint directory written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| ModelError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let state_path = dir.join(STATE_FILE).display().to_string();
    let state: TrainerState = serde_json::from_slice(&read(STATE_FILE)?)
        .map_err(|e| ModelError::File { path: state_path.clone(), message: e.to_string() })?;
    if state.format_version != CHECKPOINT_FORMAT_VERSION {
        return Err(ModelError::File {
            path: state_path,
            message: format!(
                "format_version {} is not supported (expected {CHECKPOINT_FORMAT_VERSION})",
                state.format_version
            ),
        });
    }
    // Build a model of the right shape (its initial values are overwritten), then load.
    let mut scratch = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = Decoder::new(state.model.clone(), &mut scratch, device)?;
    let weights = candle_core::safetensors::load_buffer(&read(MODEL_FILE)?, device)?;
    model.params().load_values(&weights, &dir.join(MODEL_FILE).display().to_string())?;
    let mut optimizer = AdamW::new(model.params(), state.optimizer.clone())?;
    let moments = candle_core::safetensors::load_buffer(&read(OPTIMIZER_FILE)?, device)?;
    optimizer.load_state(&moments, state.step, &dir.join(OPTIMIZER_FILE).display().to_string())?;
    Ok(Checkpoint { model, optimizer, rng: state.rng, step: state.step })
}
