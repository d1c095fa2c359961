//! The weights policy: an in-process model whose weights GRPO changes. The built-in model
//! (warm-started, every weight trained) or a pretrained model (frozen, LoRA adapters trained).
//! An update is the micro-batched GRPO loss over the sampled tokens and `num_iterations` AdamW
//! steps with the config's learning-rate warm-up.

use std::path::Path;

use agentcore_agent::backend::{Backend, InProcessBackend};
use agentcore_agent::sandbox::PythonSandbox;
use agentcore_grpo::GRPOConfig;
use agentcore_grpo::loss::LossSettings;
use agentcore_model::checkpoint::{checkpoint_files, load_checkpoint, restore_checkpoint};
use agentcore_model::decoder::Decoder;
use agentcore_model::hub::{LoadedModel, load_model};
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken, TextTokenizer};
use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Policy, ScoredBatch, UpdateStats};
use crate::TrainError;
use crate::defaults;
use crate::settings::{ExternalModel, JobSettings};
use crate::update::{UpdateRow, policy_update};
use crate::warmstart::{WarmStartProgress, warm_start};

/// An in-process model and its optimizer.
pub struct WeightsPolicy {
    model: LoadedModel,
    optimizer: AdamW,
    config: GRPOConfig,
    loss: LossSettings,
    /// Written into a LoRA adapter's `base_model_name_or_path`.
    base_model: String,
    /// Any id of the vocabulary (padding is masked out of the loss).
    pad: u32,
    /// Padded tokens of one micro-batch.
    token_budget: usize,
}

/// The built-in model with the byte tokenizer.
#[must_use]
pub fn loaded(model: Decoder) -> LoadedModel {
    let tok = ByteTokenizer::new();
    LoadedModel {
        model,
        tokenizer: TextTokenizer::Byte(tok.clone()),
        chat_template: None,
        stop_token_ids: vec![tok.special(SpecialToken::Eos)],
        source: "built-in".into(),
    }
}

/// The learning rate of optimizer step `step` (0-based): linear warm-up over `warmup_steps`,
/// then constant.
#[must_use]
pub fn learning_rate_at(config: &GRPOConfig, step: u64) -> f64 {
    let warmup = u64::from(config.warmup_steps);
    if step < warmup {
        config.learning_rate * (step + 1) as f64 / (warmup + 1) as f64
    } else {
        config.learning_rate
    }
}

/// The pretrained model, frozen, with fresh LoRA adapters (initial values from the job's seed;
/// B starts at 0 anyway).
fn lora_model(settings: &JobSettings, m: &ExternalModel) -> Result<LoadedModel, TrainError> {
    let mut model = load_model(&m.path, false, &Device::Cpu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.config.seed ^ defaults::LORA_INIT_SEED_SALT);
    model.model.enable_lora(&m.lora, &mut rng)?;
    model.model.set_activation_checkpointing(defaults::PRETRAINED_ACTIVATION_CHECKPOINTING);
    Ok(model)
}

impl WeightsPolicy {
    fn new(settings: &JobSettings, model: LoadedModel, optimizer: AdamW) -> Self {
        let pad = if settings.model.is_some() {
            model.stop_token_ids.first().copied().unwrap_or(0)
        } else {
            ByteTokenizer::new().special(SpecialToken::Pad)
        };
        let token_budget = defaults::update_token_budget(model.model.config().vocab_size);
        Self {
            model,
            optimizer,
            config: settings.config.clone(),
            loss: LossSettings::from(&settings.config),
            base_model: settings
                .model
                .as_ref()
                .map(|m| m.path.display().to_string())
                .unwrap_or_default(),
            pad,
            token_budget,
        }
    }

    /// The policy before training: the warm-started built-in model (trained, or from the cache),
    /// or the pretrained model with fresh LoRA adapters; with a fresh optimizer. Returns whether
    /// the warm start came from the cache.
    ///
    /// # Errors
    /// Model or file errors.
    pub fn initial(
        settings: &JobSettings,
        data_dir: &Path,
        sandbox: &PythonSandbox,
        progress: &mut dyn FnMut(
            WarmStartProgress,
        ) -> std::ops::ControlFlow<crate::warmstart::WarmStop>,
    ) -> Result<(Self, bool), TrainError> {
        let (model, cached) = match &settings.model {
            None => {
                let (model, _dir, cached) =
                    warm_start(&settings.warm_start, data_dir, sandbox, progress)?;
                (loaded(model), cached)
            }
            Some(m) => (lora_model(settings, m)?, true),
        };
        let c = &settings.config;
        let optimizer = AdamW::new(
            model.model.params(),
            AdamWConfig {
                learning_rate: c.learning_rate,
                max_grad_norm: Some(c.max_grad_norm),
                ..AdamWConfig::default()
            },
        )?;
        Ok((Self::new(settings, model, optimizer), cached))
    }

    /// The policy of a checkpoint directory, with the job's RNG at that point.
    ///
    /// # Errors
    /// Model or file errors, a checkpoint of another model.
    pub fn from_checkpoint(
        settings: &JobSettings,
        dir: &Path,
    ) -> Result<(Self, ChaCha8Rng), TrainError> {
        let (model, optimizer, rng) = match &settings.model {
            None => {
                let ck = load_checkpoint(dir, &Device::Cpu)?;
                (loaded(ck.model), ck.optimizer, ck.rng)
            }
            Some(m) => {
                let model = lora_model(settings, m)?;
                let (opt, rng, _) = restore_checkpoint(dir, &model.model)?;
                (model, opt, rng)
            }
        };
        Ok((Self::new(settings, model, optimizer), rng))
    }

    /// The model.
    #[must_use]
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }
}

impl Policy for WeightsPolicy {
    fn describe(&self) -> String {
        let m = &self.model.model;
        let trained: usize = m.params().iter().map(|(_, v)| v.elem_count()).sum();
        match m.lora() {
            Some(l) => format!(
                "weights: LoRA r={} alpha={} on {} ({trained} adapter parameters trained, base \
                 frozen)",
                l.r,
                l.lora_alpha,
                self.model.source.display()
            ),
            None => format!(
                "weights: {} model, all {trained} parameters trained",
                self.model.source.display()
            ),
        }
    }

    fn backend(&self) -> Result<Box<dyn Backend + '_>, TrainError> {
        let b = InProcessBackend::new(&self.model).map_err(|e| TrainError::Backend(e.0))?;
        Ok(Box::new(b))
    }

    fn update(&mut self, batch: &ScoredBatch<'_>) -> Result<UpdateStats, TrainError> {
        let max_len = self.model.model.config().max_seq_len;
        // The loss over sampled tokens only.
        let rows: Vec<UpdateRow> = batch
            .trajectories
            .iter()
            .zip(batch.advantages)
            .filter_map(|(t, &advantage)| {
                let tr = t.tokens.as_ref()?;
                (tr.ids.len() >= 2 && tr.ids.len() <= max_len && tr.sampled_len() > 0).then(|| {
                    UpdateRow {
                        ids: tr.ids.clone(),
                        old_logp: tr.logprobs.clone(),
                        mask: tr.mask.iter().map(|&m| m == 1).collect(),
                        advantage: advantage as f32,
                        ref_logp: None,
                    }
                })
            })
            .collect();
        let c = &self.config;
        let temperature = if c.temperature > 0.0 { c.temperature } else { 1.0 };
        // `num_iterations` steps on the same rollouts; the first one's loss and clip fraction
        // are the ones reported (later steps see a policy that moved).
        let mut stats = None;
        for _ in 0..c.num_iterations.max(1) {
            self.optimizer.set_learning_rate(learning_rate_at(c, self.optimizer.step_count()));
            let s = policy_update(
                &self.model.model,
                &mut self.optimizer,
                &rows,
                &self.loss,
                temperature,
                self.pad,
                self.token_budget,
            )?;
            stats.get_or_insert(s);
        }
        Ok(stats.unwrap_or_default())
    }

    fn checkpoint_files(&self, rng: &ChaCha8Rng) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        Ok(checkpoint_files(&self.model.model, &self.optimizer, rng, &self.base_model)?
            .into_iter()
            .map(|(name, bytes)| (name.to_string(), bytes))
            .collect())
    }
}
