//! One policy update: the GRPO loss over the sampled tokens of a batch of trajectories and one
//! AdamW step.
//!
//! Two things make it cheaper than one padded forward pass over the whole batch, without changing
//! the gradient:
//! - with `beta = 0`, a trajectory whose advantage is 0 (every member of an all-equal group)
//!   contributes nothing to the gradient, so it is not scored at all;
//! - the rest are sorted by length and scored in micro-batches of similar length (padding costs
//!   compute), each micro-batch's loss weighted so the sum is exactly the loss of the whole
//!   batch under the configured aggregation (`dapo`: share of the batch's generated tokens;
//!   `grpo`, `gspo`, `dr_grpo`: share of the batch's sequences).

use agentcore_grpo::loss::{LossSettings, LossType};
use agentcore_model::decoder::Decoder;
use agentcore_model::generate::token_logprobs;
use agentcore_model::loss::{LossBatch, grpo_loss};
use agentcore_model::optim::AdamW;

use crate::TrainError;

/// One trajectory's tokens as the update sees them.
#[derive(Debug, Clone)]
pub struct UpdateRow {
    /// Token ids (prompt, sampled tokens, tool output).
    pub ids: Vec<u32>,
    /// Log-prob of each token under the policy that sampled it (0 where not sampled).
    pub old_logp: Vec<f32>,
    /// Which tokens the policy sampled.
    pub mask: Vec<bool>,
    /// The trajectory's advantage.
    pub advantage: f32,
    /// Log-probs under the reference policy, when `beta > 0`.
    pub ref_logp: Option<Vec<f32>>,
}

/// What a prompt policy's update measured (metrics of the same names).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PromptStats {
    /// Lessons in the library after the update.
    pub library_size: usize,
    /// Exemplars in the bank after the update.
    pub exemplar_bank_size: usize,
    /// Mean exemplars shown per rollout of the iteration.
    pub exemplars_shown: f64,
    /// Reflector operations applied.
    pub reflection_ops_applied: usize,
    /// Reflector operations rejected (malformed answers count as one).
    pub reflection_ops_rejected: usize,
}

/// What the update measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpdateStats {
    /// The loss of the whole batch.
    pub loss: f64,
    /// Token mean of k3 over the scored rows, when `beta > 0`.
    pub kl: Option<f64>,
    /// Share of scored generated tokens (sequences for GSPO) clipped.
    pub clip_ratio: f64,
    /// Gradient norm before clipping (0 when no step was taken).
    pub grad_norm: f64,
    /// Rows scored (the others had advantage 0).
    pub scored_rows: usize,
    /// Whether an optimizer step was taken.
    pub stepped: bool,
    /// The prompt policy's own measurements.
    pub prompt: Option<PromptStats>,
    /// API money the update spent (a reflector's tokens).
    pub api_cost_usd: rust_decimal::Decimal,
    /// Seconds of the update spent in the forward passes (log-probs and loss); the rest is
    /// backward passes and the optimizer step.
    pub forward_seconds: f64,
}

/// Splits `rows` (indices sorted by length) into micro-batches whose padded size stays within
/// `token_budget` (each holds at least one row).
fn micro_batches(rows: &[UpdateRow], order: &[usize], token_budget: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0usize;
    for &i in order {
        let w = width.max(rows[i].ids.len());
        if !current.is_empty() && w * (current.len() + 1) > token_budget {
            out.push(std::mem::take(&mut current));
            width = rows[i].ids.len();
        } else {
            width = w;
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Computes the loss of `rows` under `model`, backpropagates it and takes one optimizer step
/// (none when no row can change the loss). `token_budget` bounds the padded tokens of one
/// micro-batch.
///
/// # Errors
/// Model errors, a row of fewer than 2 tokens, a diverged loss.
pub fn policy_update(
    model: &Decoder,
    opt: &mut AdamW,
    rows: &[UpdateRow],
    settings: &LossSettings,
    temperature: f64,
    pad: u32,
    token_budget: usize,
) -> Result<UpdateStats, TrainError> {
    let total_rows = rows.len();
    let total_tokens: usize = rows.iter().map(|r| r.mask.iter().filter(|&&m| m).count()).sum();
    if total_rows == 0 || total_tokens == 0 {
        return Ok(UpdateStats::default());
    }
    let needs_all = settings.beta > 0.0;
    let mut order: Vec<usize> = (0..rows.len())
        .filter(|&i| needs_all || rows[i].advantage != 0.0)
        .filter(|&i| rows[i].mask.iter().any(|&m| m))
        .collect();
    if order.is_empty() {
        return Ok(UpdateStats::default());
    }
    order.sort_by_key(|&i| (rows[i].ids.len(), i));
    let device = model.device().clone();
    let mut total: Option<candle_core::backprop::GradStore> = None;
    let (mut loss, mut kl_sum, mut kl_tokens) = (0.0, 0.0, 0usize);
    let (mut clipped, mut units) = (0.0, 0usize);
    let mut forward_seconds = 0.0;
    for chunk in micro_batches(rows, &order, token_budget.max(1)) {
        let sequences: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].ids.clone()).collect();
        let old: Vec<Vec<f32>> = chunk.iter().map(|&i| rows[i].old_logp.clone()).collect();
        let mask: Vec<Vec<bool>> = chunk.iter().map(|&i| rows[i].mask.clone()).collect();
        let adv: Vec<Vec<f32>> =
            chunk.iter().map(|&i| vec![rows[i].advantage; rows[i].ids.len()]).collect();
        let reference: Option<Vec<Vec<f32>>> = if needs_all {
            Some(
                chunk
                    .iter()
                    .map(|&i| {
                        rows[i].ref_logp.clone().ok_or_else(|| {
                            TrainError::Update(format!(
                                "row {i} has no reference log-probs and beta is {}",
                                settings.beta
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            )
        } else {
            None
        };
        let batch = LossBatch::from_rows(&old, reference.as_deref(), &mask, &adv, &device)?;
        let forward = std::time::Instant::now();
        let logp = token_logprobs(model, &sequences, temperature, pad)?;
        let (chunk_loss, m) = grpo_loss(&logp, &batch, settings)?;
        forward_seconds += forward.elapsed().as_secs_f64();
        let weight = match settings.loss_type {
            LossType::Dapo => m.generated_tokens as f64 / total_tokens as f64,
            LossType::Grpo | LossType::Gspo | LossType::DrGrpo => {
                chunk.len() as f64 / total_rows as f64
            }
        };
        loss += m.loss * weight;
        if let Some(k) = m.kl {
            kl_sum += k * m.generated_tokens as f64;
            kl_tokens += m.generated_tokens;
        }
        let chunk_units =
            if settings.loss_type == LossType::Gspo { chunk.len() } else { m.generated_tokens };
        clipped += m.clip_ratio_region * chunk_units as f64;
        units += chunk_units;
        // Backward per micro-batch (its graph, with the logits, is freed before the next one:
        // that bounds memory for large vocabularies) and gradients summed.
        let grads = model.backward(&(chunk_loss * weight)?)?;
        total = Some(match total {
            None => grads,
            Some(mut acc) => {
                for (_, var) in model.params().iter() {
                    let t = var.as_tensor();
                    if let Some(g) = grads.get(t) {
                        let sum = match acc.get(t) {
                            Some(a) => (a + g)?,
                            None => g.clone(),
                        };
                        acc.insert(t, sum);
                    }
                }
                acc
            }
        });
    }
    let Some(total) = total else { return Ok(UpdateStats::default()) };
    let step = opt.step(&total)?;
    Ok(UpdateStats {
        loss,
        kl: (kl_tokens > 0).then(|| kl_sum / kl_tokens as f64),
        clip_ratio: if units == 0 { 0.0 } else { clipped / units as f64 },
        grad_norm: step.grad_norm,
        scored_rows: order.len(),
        stepped: true,
        forward_seconds,
        ..UpdateStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentcore_model::decoder::DecoderConfig;
    use agentcore_model::optim::AdamWConfig;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn model(seed: u64) -> Decoder {
        let mut c = DecoderConfig::tiny(64);
        c.n_layers = 1;
        c.d_model = 32;
        c.n_heads = 2;
        c.d_ff = 64;
        c.max_seq_len = 64;
        Decoder::new(c, &mut ChaCha8Rng::seed_from_u64(seed), &Device::Cpu).expect("model")
    }

    fn rows(rng: &mut ChaCha8Rng) -> Vec<UpdateRow> {
        (0..12)
            .map(|k| {
                let len = rng.random_range(4..40);
                let ids: Vec<u32> = (0..len).map(|_| rng.random_range(1..64)).collect();
                let mask: Vec<bool> = (0..len).map(|t| t >= 3 && rng.random_bool(0.8)).collect();
                let old_logp: Vec<f32> = mask
                    .iter()
                    .map(|&m| if m { -rng.random_range(1.0..6.0f32) } else { 0.0 })
                    .collect();
                // A third of the rows belong to all-equal groups.
                let advantage = if k % 3 == 0 { 0.0 } else { rng.random_range(-1.5..1.5f32) };
                UpdateRow { ids, old_logp, mask, advantage, ref_logp: None }
            })
            .collect()
    }

    fn settings(loss_type: LossType) -> LossSettings {
        LossSettings {
            loss_type,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            max_completion_length: 40,
        }
    }

    fn weights(m: &Decoder) -> Vec<f32> {
        m.params()
            .iter()
            .flat_map(|(_, v)| {
                v.as_tensor().flatten_all().expect("flat").to_vec1::<f32>().expect("host")
            })
            .collect()
    }

    /// Micro-batching and skipping zero-advantage rows change neither the loss nor the step,
    /// for every aggregation.
    #[test]
    fn micro_batched_update_equals_one_full_batch() {
        for loss_type in [LossType::Dapo, LossType::Grpo, LossType::DrGrpo, LossType::Gspo] {
            let settings = settings(loss_type);
            let rows = rows(&mut ChaCha8Rng::seed_from_u64(7));
            let config = AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() };
            let small = model(1);
            let mut opt_small = AdamW::new(small.params(), config.clone()).expect("opt");
            let a = policy_update(&small, &mut opt_small, &rows, &settings, 1.0, 0, 100)
                .expect("micro-batched");
            let full = model(1);
            let mut opt_full = AdamW::new(full.params(), config).expect("opt");
            let b = policy_update(&full, &mut opt_full, &rows, &settings, 1.0, 0, usize::MAX)
                .expect("one batch");
            assert!(a.stepped && b.stepped);
            assert_eq!(a.scored_rows, 8, "{loss_type:?}: zero-advantage rows are skipped");
            assert!((a.loss - b.loss).abs() < 1e-5, "{loss_type:?}: {} vs {}", a.loss, b.loss);
            assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * b.grad_norm.max(1.0));
            let (wa, wb) = (weights(&small), weights(&full));
            let diff = wa.iter().zip(&wb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "{loss_type:?}: weights differ by {diff}");
            assert!(wa != weights(&model(1)), "{loss_type:?}: the step changed the weights");
        }
    }

    /// The padded loss of a full batch including the zero-advantage rows is what the update
    /// reports (they change the denominator, not the gradient).
    #[test]
    fn reported_loss_counts_skipped_rows_in_the_denominator() {
        let settings = settings(LossType::Dapo);
        let rows = rows(&mut ChaCha8Rng::seed_from_u64(9));
        let m = model(3);
        let seqs: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        let old: Vec<Vec<f32>> = rows.iter().map(|r| r.old_logp.clone()).collect();
        let mask: Vec<Vec<bool>> = rows.iter().map(|r| r.mask.clone()).collect();
        let adv: Vec<Vec<f32>> = rows.iter().map(|r| vec![r.advantage; r.ids.len()]).collect();
        let batch = LossBatch::from_rows(&old, None, &mask, &adv, &Device::Cpu).expect("batch");
        let logp = token_logprobs(&m, &seqs, 1.0, 0).expect("logp");
        let (_, expected) = grpo_loss(&logp, &batch, &settings).expect("loss");
        let mut opt = AdamW::new(m.params(), AdamWConfig::default()).expect("opt");
        let got = policy_update(&m, &mut opt, &rows, &settings, 1.0, 0, 64).expect("update");
        assert!((got.loss - expected.loss).abs() < 1e-5, "{} vs {}", got.loss, expected.loss);
    }

    #[test]
    fn all_zero_advantages_take_no_step() {
        let settings = settings(LossType::Dapo);
        let mut rows = rows(&mut ChaCha8Rng::seed_from_u64(5));
        for r in &mut rows {
            r.advantage = 0.0;
        }
        let m = model(2);
        let before = weights(&m);
        let mut opt = AdamW::new(m.params(), AdamWConfig::default()).expect("opt");
        let s = policy_update(&m, &mut opt, &rows, &settings, 1.0, 0, 64).expect("update");
        assert!(!s.stepped);
        assert_eq!(opt.step_count(), 0);
        assert!(before == weights(&m));
    }

    #[test]
    fn micro_batches_respect_the_budget() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows = rows(&mut rng);
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].ids.len());
        let chunks = micro_batches(&rows, &order, 80);
        let flat: Vec<usize> = chunks.iter().flatten().copied().collect();
        assert_eq!(flat, order, "every row once, in order");
        for c in &chunks {
            let width = c.iter().map(|&i| rows[i].ids.len()).max().expect("non-empty");
            assert!(c.len() == 1 || width * c.len() <= 80, "{c:?} width {width}");
        }
    }
}
