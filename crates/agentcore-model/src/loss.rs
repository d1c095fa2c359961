//! The GRPO loss on tensors: the differentiable twin of `agentcore_grpo::loss`.
//!
//! Same formulas, same aggregation modes, same metrics; a test compares the two within 1e-5 on
//! random inputs for every `loss_type` and `scale_rewards`. Inputs are (batch, time) tensors
//! aligned with the token positions of [`crate::generate::token_logprobs`]; `mask` is 1 for
//! generated tokens and 0 for prompt, tool output and padding.

use agentcore_grpo::loss::{K3_LOG_RATIO_CLAMP, LossSettings, LossType};
use candle_core::{D, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The constant inputs of the loss for one batch.
#[derive(Debug, Clone)]
pub struct LossBatch {
    /// Log-probs under the behaviour policy (batch, time).
    pub old_logp: Tensor,
    /// Log-probs under the reference policy, when `beta > 0`.
    pub ref_logp: Option<Tensor>,
    /// 1.0 for generated tokens, else 0.0.
    pub mask: Tensor,
    /// Advantage of each token.
    pub advantages: Tensor,
}

impl LossBatch {
    /// Builds the tensors from per-sequence rows, right-padded to the longest row.
    pub fn from_rows(
        old_logp: &[Vec<f32>],
        ref_logp: Option<&[Vec<f32>]>,
        mask: &[Vec<bool>],
        advantages: &[Vec<f32>],
        device: &Device,
    ) -> Result<Self> {
        let b = old_logp.len();
        let width = old_logp.iter().map(Vec::len).max().unwrap_or(0);
        for (name, lens) in [
            ("mask", mask.iter().map(Vec::len).collect::<Vec<_>>()),
            ("advantages", advantages.iter().map(Vec::len).collect()),
        ] {
            if lens.len() != b || lens.iter().zip(old_logp).any(|(l, o)| *l != o.len()) {
                return Err(ModelError::invalid(
                    name,
                    "must have the shape of old_logp",
                    format!("{lens:?}"),
                ));
            }
        }
        let pad = |rows: &[Vec<f32>]| -> Result<Tensor> {
            let data: Vec<f32> = rows
                .iter()
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, width - r.len())))
                .collect();
            Ok(Tensor::from_vec(data, (b, width), device)?)
        };
        let mask_rows: Vec<Vec<f32>> =
            mask.iter().map(|r| r.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect()).collect();
        Ok(Self {
            old_logp: pad(old_logp)?,
            ref_logp: ref_logp.map(pad).transpose()?,
            mask: pad(&mask_rows)?,
            advantages: pad(advantages)?,
        })
    }
}

/// The loss's value and the metrics TRL logs with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossMetrics {
    /// The minimised value.
    pub loss: f64,
    /// The aggregated clipped surrogate alone.
    pub policy_loss: f64,
    /// Masked token mean of k3 (`kl`), when reference log-probs were given.
    pub kl: Option<f64>,
    /// Fraction clipped low (tokens; sequences for GSPO).
    pub clip_ratio_low: f64,
    /// Fraction clipped high.
    pub clip_ratio_high: f64,
    /// low + high.
    pub clip_ratio_region: f64,
    /// Generated tokens in the batch.
    pub generated_tokens: usize,
}

/// The loss (a differentiable scalar) of `logp` (batch, time) under `batch`.
pub fn grpo_loss(
    logp: &Tensor,
    batch: &LossBatch,
    settings: &LossSettings,
) -> Result<(Tensor, LossMetrics)> {
    let (b, t) = logp.dims2()?;
    for (name, x) in
        [("old_logp", &batch.old_logp), ("mask", &batch.mask), ("advantages", &batch.advantages)]
    {
        if x.dims() != [b, t] {
            return Err(ModelError::invalid(
                name,
                format!("must have the shape of logp ({b}, {t})"),
                format!("{:?}", x.dims()),
            ));
        }
    }
    if settings.beta > 0.0 && batch.ref_logp.is_none() {
        return Err(ModelError::invalid("ref_logp", "is required when beta > 0", "none"));
    }
    let dtype = logp.dtype();
    let mask = batch.mask.to_dtype(dtype)?;
    let adv = batch.advantages.to_dtype(dtype)?;
    let counts = mask.sum(1)?; // (b)
    let counts_at_least_one = counts.maximum(1.0)?;
    let total_tokens = counts.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let (el, eh) = (settings.epsilon_low, settings.epsilon_high);

    let aggregate = |per_token: &Tensor, loss_type: LossType| -> Result<Tensor> {
        let masked = (per_token * &mask)?;
        Ok(match loss_type {
            LossType::Grpo | LossType::Gspo => {
                (masked.sum(1)? / &counts_at_least_one)?.mean_all()?
            }
            LossType::Dapo => (masked.sum_all()? / total_tokens.max(1.0))?,
            LossType::DrGrpo => {
                (masked.sum_all()? / (b as f64 * settings.max_completion_length.max(1) as f64))?
            }
        })
    };

    let log_ratio = (logp - batch.old_logp.to_dtype(dtype)?)?;
    let (policy, low, high, units) = if settings.loss_type == LossType::Gspo {
        let seq_log_ratio = ((&log_ratio * &mask)?.sum(1)? / &counts_at_least_one)?;
        let seq_ratio = seq_log_ratio.exp()?;
        let seq_adv = ((&adv * &mask)?.sum(1)? / &counts_at_least_one)?;
        let has_tokens = counts.gt(0.0)?.to_dtype(dtype)?;
        let unclipped = (&seq_ratio * &seq_adv)?;
        let clipped = (seq_ratio.clamp(1.0 - el, 1.0 + eh)? * &seq_adv)?;
        let per_seq = (unclipped.minimum(&clipped)?.neg()? * &has_tokens)?;
        let policy = (per_seq.sum_all()? / b as f64)?;
        let (ratios, advs, has) = (host1(&seq_ratio)?, host1(&seq_adv)?, host1(&has_tokens)?);
        let (mut low, mut high) = (0usize, 0usize);
        for i in 0..b {
            if has[i] > 0.0 {
                low += usize::from(ratios[i] < 1.0 - el && advs[i] < 0.0);
                high += usize::from(ratios[i] > 1.0 + eh && advs[i] > 0.0);
            }
        }
        (policy, low, high, has.iter().filter(|h| **h > 0.0).count())
    } else {
        let ratio = log_ratio.exp()?;
        let unclipped = (&ratio * &adv)?;
        let clipped = (ratio.clamp(1.0 - el, 1.0 + eh)? * &adv)?;
        let per_token = unclipped.minimum(&clipped)?.neg()?;
        let policy = aggregate(&per_token, settings.loss_type)?;
        let (ratios, advs, masks) = (host2(&ratio)?, host2(&adv)?, host2(&mask)?);
        let (mut low, mut high) = (0usize, 0usize);
        for ((r, a), m) in
            ratios.iter().flatten().zip(advs.iter().flatten()).zip(masks.iter().flatten())
        {
            if *m > 0.0 {
                low += usize::from(*r < 1.0 - el && *a < 0.0);
                high += usize::from(*r > 1.0 + eh && *a > 0.0);
            }
        }
        (policy, low, high, total_tokens as usize)
    };

    let (loss, kl) = match &batch.ref_logp {
        Some(reference) => {
            let x = (reference.to_dtype(dtype)? - logp)?
                .clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)?;
            let k3 = ((x.exp()? - &x)? - 1.0)?;
            let kl_mean = scalar(&((&k3 * &mask)?.sum_all()? / total_tokens.max(1.0))?)?;
            let kl_term = aggregate(&k3, settings.loss_type)?;
            ((&policy + (kl_term * settings.beta)?)?, Some(kl_mean))
        }
        None => (policy.clone(), None),
    };
    let frac = |n: usize| if units == 0 { 0.0 } else { n as f64 / units as f64 };
    let metrics = LossMetrics {
        loss: scalar(&loss)?,
        policy_loss: scalar(&policy)?,
        kl,
        clip_ratio_low: frac(low),
        clip_ratio_high: frac(high),
        clip_ratio_region: frac(low + high),
        generated_tokens: total_tokens as usize,
    };
    Ok((loss, metrics))
}

fn scalar(x: &Tensor) -> Result<f64> {
    Ok(x.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

fn host1(x: &Tensor) -> Result<Vec<f64>> {
    Ok(x.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
}

fn host2(x: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(x.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?)
}

/// Mean of `values` over `mask` along the last dimension (helper for metrics).
pub fn masked_mean_last(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let counts = mask.sum_keepdim(D::Minus1)?.maximum(1.0)?;
    Ok(((values * mask)?.sum_keepdim(D::Minus1)? / counts)?)
}

/// The supervised loss: mean negative log-likelihood of the tokens of `sequences` where `mask`
/// (batch, longest; 1.0 = in the loss) is set, a differentiable scalar. Used by the warm start.
pub fn masked_nll(
    model: &crate::decoder::Decoder,
    sequences: &[Vec<u32>],
    mask: &Tensor,
    pad_token: u32,
) -> Result<Tensor> {
    let n = f64::from(mask.sum_all()?.to_scalar::<f32>()?).max(1.0);
    let logp = crate::generate::token_logprobs(model, sequences, 1.0, pad_token)?;
    Ok(((logp * mask)?.sum_all()?.neg()? / n)?)
}
