//! A plain-`f64` reference of the GRPO loss (`shared/grpo-math.md` B-E).
//!
//! The tensor implementation in `agentcore-model` is tested against this file on random
//! inputs; this one is tested against the hand-checkable vectors of grpo-math. It favours
//! clarity over speed.
//!
//! Per generated token (mask 1) of sequence i: rho = exp(logp - oldlogp),
//! l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), plus `beta` times the k3 estimate
//! of KL(policy || reference), k3 = exp(x) - x - 1 with x = reflogp - logp clamped to [-20, 20].
//! The per-token losses are aggregated by [`LossType`]. GSPO replaces the token ratio with the
//! sequence ratio s_i = exp(mean_t (logp - oldlogp)).
//!
//! ```
//! use agentcore_grpo::loss::{clipped_surrogate, k3};
//!
//! // rho = e^0.5 = 1.65 with A = 1 is clipped at 1 + 0.2: the loss is -1.2.
//! let t = clipped_surrogate(0.5, 0.0, 1.0, 0.2, 0.2);
//! assert!((t.loss - -1.2).abs() < 1e-12 && t.clipped_high);
//! // k3 at x = 1: e - 2 = 0.718.
//! assert!((k3(0.0, 1.0) - (std::f64::consts::E - 2.0)).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

use crate::config::GRPOConfig;
use crate::error::GrpoError;

/// How per-token losses become one number (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over sequences of each sequence's token mean: (1/G) sum_i (1/|o_i|) sum_t l.
    /// Short sequences weigh more per token (length bias).
    Grpo,
    /// Token mean over the whole batch: sum_i sum_t l / sum_i |o_i| (DAPO).
    #[default]
    Dapo,
    /// Token sum over G x L_max, L_max = `max_completion_length`, a constant (Dr. GRPO).
    DrGrpo,
    /// Sequence-level ratio and clipping, mean over sequences (GSPO).
    Gspo,
}

/// The settings the loss needs, taken from a [`GRPOConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossSettings {
    /// Aggregation mode.
    pub loss_type: LossType,
    /// Lower clip range (`epsilon`).
    pub epsilon_low: f64,
    /// Upper clip range (`epsilon_high`, or `epsilon` when absent).
    pub epsilon_high: f64,
    /// KL weight.
    pub beta: f64,
    /// L_max of `dr_grpo`.
    pub max_completion_length: usize,
}

impl From<&GRPOConfig> for LossSettings {
    fn from(c: &GRPOConfig) -> Self {
        Self {
            loss_type: c.loss_type,
            epsilon_low: c.epsilon,
            epsilon_high: c.effective_epsilon_high(),
            beta: c.beta,
            max_completion_length: c.max_completion_length as usize,
        }
    }
}

/// The log-probs of one sequence (prompt, assistant and tool tokens) and its advantages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SequenceLogProbs {
    /// Log-prob of each token under the policy being trained.
    pub logp: Vec<f64>,
    /// Log-prob under the behaviour policy that sampled it.
    pub old_logp: Vec<f64>,
    /// Log-prob under the frozen reference; required when `beta > 0`.
    pub ref_logp: Option<Vec<f64>>,
    /// True for tokens the model generated (assistant turns); false for prompt, padding and
    /// tool output. Only masked-in tokens enter the loss.
    pub mask: Vec<bool>,
    /// Advantage of each token (the outcome advantage broadcast, or per-step credit).
    pub advantages: Vec<f64>,
}

/// The clipped surrogate of one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSurrogate {
    /// -min(rho A, clip(rho) A).
    pub loss: f64,
    /// rho = exp(logp - oldlogp).
    pub ratio: f64,
    /// rho < 1 - eps_low and A < 0: the clip removed the gradient on the low side.
    pub clipped_low: bool,
    /// rho > 1 + eps_high and A > 0: the clip removed the gradient on the high side.
    pub clipped_high: bool,
}

/// The clipped surrogate for a token (or, in GSPO, a sequence) with log-ratio `logp - old_logp`.
pub fn clipped_surrogate(
    logp: f64,
    old_logp: f64,
    advantage: f64,
    epsilon_low: f64,
    epsilon_high: f64,
) -> TokenSurrogate {
    surrogate_from_ratio((logp - old_logp).exp(), advantage, epsilon_low, epsilon_high)
}

fn surrogate_from_ratio(ratio: f64, advantage: f64, eps_low: f64, eps_high: f64) -> TokenSurrogate {
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high);
    TokenSurrogate {
        loss: -(ratio * advantage).min(clipped * advantage),
        ratio,
        clipped_low: ratio < 1.0 - eps_low && advantage < 0.0,
        clipped_high: ratio > 1.0 + eps_high && advantage > 0.0,
    }
}

/// Largest |reflogp - logp| used in k3; beyond it exp overflows to no purpose.
pub const K3_LOG_RATIO_CLAMP: f64 = 20.0;

/// The k3 estimator of KL(policy || reference) for one token: exp(x) - x - 1 with
/// x = reflogp - logp clamped to [-20, 20]. Never negative.
pub fn k3(logp: f64, ref_logp: f64) -> f64 {
    let x = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP);
    // exp(x) - x - 1 >= 0 in exact arithmetic; clamp the rounding error near x = 0.
    (x.exp_m1() - x).max(0.0)
}

/// Aggregates per-token values by `loss_type` (`grpo`, `dapo`, `dr_grpo`; `gspo` aggregates
/// like `grpo`). Masked-out tokens are ignored; a sequence without generated tokens adds 0 but
/// still counts in G, as in TRL.
///
/// ```
/// use agentcore_grpo::loss::{aggregate, LossType};
/// let l = vec![vec![1.0; 2], vec![-1.0; 8]];
/// let m = vec![vec![true; 2], vec![true; 8]];
/// assert!((aggregate(&l, &m, LossType::Dapo, 10) - -0.6).abs() < 1e-12);
/// assert!((aggregate(&l, &m, LossType::DrGrpo, 10) - -0.3).abs() < 1e-12);
/// ```
pub fn aggregate(
    per_token: &[Vec<f64>],
    masks: &[Vec<bool>],
    loss_type: LossType,
    max_completion_length: usize,
) -> f64 {
    let g = per_token.len().max(1) as f64;
    let masked_sum =
        |l: &[f64], m: &[bool]| l.iter().zip(m).filter(|(_, m)| **m).map(|(v, _)| v).sum::<f64>();
    let count = |m: &[bool]| m.iter().filter(|m| **m).count();
    match loss_type {
        LossType::Grpo | LossType::Gspo => {
            per_token
                .iter()
                .zip(masks)
                .map(|(l, m)| masked_sum(l, m) / count(m).max(1) as f64)
                .sum::<f64>()
                / g
        }
        LossType::Dapo => {
            let total: f64 = per_token.iter().zip(masks).map(|(l, m)| masked_sum(l, m)).sum();
            let tokens: usize = masks.iter().map(|m| count(m)).sum();
            total / tokens.max(1) as f64
        }
        LossType::DrGrpo => {
            let total: f64 = per_token.iter().zip(masks).map(|(l, m)| masked_sum(l, m)).sum();
            total / (g * max_completion_length.max(1) as f64)
        }
    }
}

/// The loss of a batch and the metrics TRL logs with it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossOutput {
    /// policy_loss + beta x kl_term: the number that is minimised.
    pub loss: f64,
    /// The aggregated clipped surrogate alone.
    pub policy_loss: f64,
    /// The aggregated k3 term (before multiplying by beta); 0 when no reference is given.
    pub kl_term: f64,
    /// Masked token mean of k3 (TRL's `kl`); `None` when no reference log-probs were given.
    pub kl: Option<f64>,
    /// Fraction of generated tokens (sequences, for GSPO) clipped on the low side.
    pub clip_ratio_low: f64,
    /// Fraction clipped on the high side.
    pub clip_ratio_high: f64,
    /// clip_ratio_low + clip_ratio_high (TRL's `clip_ratio/region_mean`).
    pub clip_ratio_region: f64,
    /// Number of generated (masked-in) tokens in the batch.
    pub generated_tokens: usize,
}

/// The loss of a batch of sequences, computed in `f64` for reference.
///
/// Errors when the vectors of a sequence differ in length, a log-prob or advantage is not
/// finite, `beta > 0` without reference log-probs, or GSPO gets advantages that vary within a
/// sequence (GSPO's ratio is per sequence, so its advantage must be too).
pub fn reference_loss(
    sequences: &[SequenceLogProbs],
    settings: &LossSettings,
) -> Result<LossOutput, GrpoError> {
    for (i, s) in sequences.iter().enumerate() {
        check_sequence(i, s, settings)?;
    }
    let masks: Vec<Vec<bool>> = sequences.iter().map(|s| s.mask.clone()).collect();
    let generated_tokens: usize = masks.iter().map(|m| m.iter().filter(|b| **b).count()).sum();
    let have_ref = sequences.iter().all(|s| s.ref_logp.is_some()) && !sequences.is_empty();

    let k3_tokens: Vec<Vec<f64>> = sequences
        .iter()
        .map(|s| match &s.ref_logp {
            Some(r) if have_ref => s.logp.iter().zip(r).map(|(&lp, &rp)| k3(lp, rp)).collect(),
            _ => vec![0.0; s.logp.len()],
        })
        .collect();
    let kl = have_ref.then(|| aggregate(&k3_tokens, &masks, LossType::Dapo, 1));
    let kl_term = aggregate(&k3_tokens, &masks, settings.loss_type, settings.max_completion_length);

    let (eps_low, eps_high) = (settings.epsilon_low, settings.epsilon_high);
    let (policy_loss, clipped_low, clipped_high, clip_units) = if settings.loss_type
        == LossType::Gspo
    {
        let mut total = 0.0;
        let (mut low, mut high, mut units) = (0usize, 0usize, 0usize);
        for s in sequences {
            let idx: Vec<usize> = (0..s.mask.len()).filter(|&t| s.mask[t]).collect();
            if idx.is_empty() {
                continue;
            }
            let mean_log_ratio =
                idx.iter().map(|&t| s.logp[t] - s.old_logp[t]).sum::<f64>() / idx.len() as f64;
            let advantage = s.advantages[idx[0]];
            let seq = surrogate_from_ratio(mean_log_ratio.exp(), advantage, eps_low, eps_high);
            total += seq.loss;
            units += 1;
            low += usize::from(seq.clipped_low);
            high += usize::from(seq.clipped_high);
        }
        (total / sequences.len().max(1) as f64, low, high, units)
    } else {
        let mut per_token = Vec::with_capacity(sequences.len());
        let (mut low, mut high) = (0usize, 0usize);
        for s in sequences {
            let mut row = Vec::with_capacity(s.logp.len());
            for t in 0..s.logp.len() {
                let tok =
                    clipped_surrogate(s.logp[t], s.old_logp[t], s.advantages[t], eps_low, eps_high);
                row.push(tok.loss);
                if s.mask[t] {
                    low += usize::from(tok.clipped_low);
                    high += usize::from(tok.clipped_high);
                }
            }
            per_token.push(row);
        }
        let policy =
            aggregate(&per_token, &masks, settings.loss_type, settings.max_completion_length);
        (policy, low, high, generated_tokens)
    };

    let frac = |n: usize| if clip_units == 0 { 0.0 } else { n as f64 / clip_units as f64 };
    Ok(LossOutput {
        loss: policy_loss + settings.beta * kl_term,
        policy_loss,
        kl_term,
        kl,
        clip_ratio_low: frac(clipped_low),
        clip_ratio_high: frac(clipped_high),
        clip_ratio_region: frac(clipped_low + clipped_high),
        generated_tokens,
    })
}

fn check_sequence(
    i: usize,
    s: &SequenceLogProbs,
    settings: &LossSettings,
) -> Result<(), GrpoError> {
    let n = s.logp.len();
    let lengths = [
        ("old_logp", s.old_logp.len()),
        ("mask", s.mask.len()),
        ("advantages", s.advantages.len()),
        ("ref_logp", s.ref_logp.as_ref().map_or(n, Vec::len)),
    ];
    for (name, len) in lengths {
        if len != n {
            return Err(GrpoError::LengthMismatch {
                what: format!("sequences[{i}].{name}"),
                expected: n,
                got: len,
            });
        }
    }
    let columns: [(&str, &[f64]); 4] = [
        ("logp", &s.logp),
        ("old_logp", &s.old_logp),
        ("advantages", &s.advantages),
        ("ref_logp", s.ref_logp.as_deref().unwrap_or(&[])),
    ];
    for (name, values) in columns {
        if let Some((t, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(GrpoError::invalid_input(
                format!("sequences[{i}].{name}[{t}]"),
                "must be finite",
                v,
            ));
        }
    }
    if settings.beta > 0.0 && s.ref_logp.is_none() {
        return Err(GrpoError::invalid_input(
            format!("sequences[{i}].ref_logp"),
            "is required when beta > 0",
            "none",
        ));
    }
    if settings.loss_type == LossType::Gspo {
        let mut generated = s.advantages.iter().zip(&s.mask).filter(|(_, m)| **m).map(|(a, _)| *a);
        if let Some(first) = generated.next()
            && let Some(other) = generated.find(|a| (a - first).abs() > 1e-12)
        {
            return Err(GrpoError::invalid_input(
                format!("sequences[{i}].advantages"),
                "must be the same for every generated token with loss_type gspo (its ratio is \
                 per sequence; per-step credit needs a token-level loss type)",
                format!("{first} and {other}"),
            ));
        }
    }
    Ok(())
}
