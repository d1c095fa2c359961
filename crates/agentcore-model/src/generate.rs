//! Batched generation with a KV cache, and per-token log-probs of given sequences.
//!
//! Prompts of different lengths are left-padded so that they end at the same position; each
//! row has its own rotary positions (starting at 0 at its first real token) and its own key
//! mask, so a padded row computes exactly what it would compute alone. Sampling uses the
//! caller's seeded RNG (candle's CPU RNG cannot be seeded): same seed, same tokens.
//!
//! [`generate_cached`] also returns each row's keys and values and takes them back on the next
//! call, so an agent's next turn prefills only the tokens added since (its observation) instead
//! of the whole conversation.
//!
//! The log-prob reported for a sampled token is under the temperature-scaled distribution
//! before top-k/top-p truncation, which is what [`token_logprobs`] computes at the same
//! temperature; at temperature 0 (greedy) it is under the unscaled distribution.

use candle_core::{Device, Tensor};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decoder::{Decoder, KvCache, LayerKv, padded_causal_mask};
use crate::error::{ModelError, Result};

/// How to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    /// Most tokens generated per sequence.
    pub max_new_tokens: usize,
    /// Generation of a row stops after any of these token sequences (e.g. `[</call>]`,
    /// `[<eos>]`); the stop tokens are included in the output.
    pub stop_sequences: Vec<Vec<u32>>,
    /// Token fed to finished rows and used for left padding (never attended to).
    pub pad_token: u32,
}

impl SamplingParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::invalid(
                "temperature",
                "must be >= 0 and finite",
                self.temperature,
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::invalid("top_p", "must be > 0 and <= 1", self.top_p));
        }
        if self.top_k == Some(0) {
            return Err(ModelError::invalid("top_k", "must be >= 1 when given", 0));
        }
        if self.stop_sequences.iter().any(Vec::is_empty) {
            return Err(ModelError::invalid(
                "stop_sequences",
                "must not contain an empty sequence",
                "[]",
            ));
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It produced a stop sequence.
    Stop,
    /// It reached `max_new_tokens` (or the model's longest sequence).
    Length,
}

/// What one row generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The sampled token ids, exactly as sampled.
    pub tokens: Vec<u32>,
    /// Log-prob of each sampled token.
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// Keys and values of one sequence's tokens under one model, kept between calls so that the next
/// turn of a conversation prefills only its new tokens ([`generate_cached`]).
#[derive(Debug, Clone)]
pub struct SequenceCache {
    ids: Vec<u32>,
    /// Per layer: keys and values, (1, kv_heads, len, head_dim).
    layers: Vec<LayerKv>,
}

impl SequenceCache {
    /// The tokens whose keys and values are held.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Generates a continuation of every prompt, all rows at once.
pub fn generate<R: Rng + ?Sized>(
    model: &Decoder,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    rng: &mut R,
) -> Result<Vec<Generation>> {
    Ok(run(model, prompts, &vec![None; prompts.len()], false, params, rng)?.0)
}

/// [`generate`] that reuses earlier keys and values: row i skips the prefill of the longest
/// common prefix of `prompts[i]` and `caches[i]` (from an earlier call on the same model), and
/// every row's keys and values (prompt and generated tokens) come back for the next call.
/// Sampling draws from `rng` exactly as [`generate`] does; the logits agree with it up to
/// floating-point summation order.
///
/// # Errors
/// As [`generate`]; `caches` must have one entry per prompt.
pub fn generate_cached<R: Rng + ?Sized>(
    model: &Decoder,
    prompts: &[Vec<u32>],
    caches: &[Option<&SequenceCache>],
    params: &SamplingParams,
    rng: &mut R,
) -> Result<(Vec<Generation>, Vec<SequenceCache>)> {
    if caches.len() != prompts.len() {
        return Err(ModelError::invalid(
            "caches",
            format!("must have one entry per prompt ({})", prompts.len()),
            caches.len(),
        ));
    }
    run(model, prompts, caches, true, params, rng)
}

fn run<R: Rng + ?Sized>(
    model: &Decoder,
    prompts: &[Vec<u32>],
    caches: &[Option<&SequenceCache>],
    keep: bool,
    params: &SamplingParams,
    rng: &mut R,
) -> Result<(Vec<Generation>, Vec<SequenceCache>)> {
    params.validate()?;
    if prompts.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::invalid(
            format!("prompts[{i}]"),
            "must have at least one token",
            "[]",
        ));
    }
    let vocab = model.config().vocab_size as u32;
    for (i, p) in prompts.iter().enumerate() {
        if let Some(&bad) = p.iter().find(|&&id| id >= vocab) {
            return Err(ModelError::invalid(
                format!("prompts[{i}]"),
                format!("token ids must be < vocab_size ({vocab})"),
                bad,
            ));
        }
    }
    let device = model.device();
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().expect("non-empty");
    let max_total = model.config().max_seq_len;
    model.check_length(width)?;
    let max_new = params.max_new_tokens.min(max_total - width);

    // Tokens each row takes from its cache: the common prefix, leaving at least one token to
    // prefill (its logits start the generation).
    let reused: Vec<usize> = prompts
        .iter()
        .zip(caches)
        .map(|(p, c)| {
            c.map_or(0, |c| c.ids.iter().zip(p).take_while(|(a, b)| a == b).count())
                .min(p.len() - 1)
        })
        .collect();
    // Left padding: every row ends at `width`. The last `window` columns are prefilled (each
    // row's uncached tokens, and cached ones that fall inside); the columns before them are
    // copied from the caches.
    let window = prompts.iter().zip(&reused).map(|(p, r)| p.len() - r).max().expect("non-empty");
    let copied = width - window;
    let mut cache = KvCache::with_capacity(width + max_new);
    if copied > 0 {
        let rows: Vec<Option<(usize, &[LayerKv])>> = prompts
            .iter()
            .zip(caches)
            .map(|(p, c)| {
                let start = width - p.len();
                c.filter(|_| start < copied).map(|c| (start, c.layers.as_slice()))
            })
            .collect();
        cache.prefill_rows(&rows, copied, model.config().n_layers)?;
    }
    let mut ids = Vec::with_capacity(b * window);
    let mut positions = Vec::with_capacity(b * window);
    let mut key_valid: Vec<Vec<bool>> = Vec::with_capacity(b);
    let mut next_position = Vec::with_capacity(b);
    for p in prompts {
        let pad = width - p.len();
        for col in copied..width {
            ids.push(if col < pad { params.pad_token } else { p[col - pad] });
            positions.push(col.saturating_sub(pad) as u32);
        }
        key_valid.push((0..width).map(|t| t >= pad).collect());
        next_position.push(p.len() as u32);
    }
    let ids_t = Tensor::from_vec(ids, (b, window), device)?;
    let pos_t = Tensor::from_vec(positions, (b, window), device)?;
    let mask = padded_causal_mask(&key_valid, copied, window, device)?;
    let mut logits = model.forward_last(&ids_t, &pos_t, &mask, Some(&mut cache))?;

    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b];
    // Generated tokens of each row whose keys and values are in the cache.
    let mut fed = vec![0usize; b];
    for step in 0..max_new {
        let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.squeeze(1)?.to_vec2::<f32>()?;
        // One uniform draw per live row, in row order, from the job's RNG; the rows are then
        // sampled in parallel (a 262k vocabulary makes that worth it).
        let greedy = params.temperature <= 0.0;
        let draws: Vec<Option<f64>> =
            done.iter().map(|&d| (!d && !greedy).then(|| rng.random::<f64>())).collect();
        let sampled: Vec<Option<(u32, f32)>> = last
            .par_iter()
            .zip(&done)
            .zip(&draws)
            .map(|((row_logits, &d), &u)| {
                (!d).then(|| sample(row_logits, params, u.unwrap_or(0.0)))
            })
            .collect();
        let mut next = Vec::with_capacity(b);
        let mut sampled_rows = Vec::with_capacity(b);
        for (row, choice) in sampled.into_iter().enumerate() {
            let Some((token, logprob)) = choice else {
                next.push(params.pad_token);
                continue;
            };
            sampled_rows.push(row);
            let g = &mut out[row];
            g.tokens.push(token);
            g.logprobs.push(logprob);
            if params.stop_sequences.iter().any(|s| g.tokens.ends_with(s)) {
                g.finish_reason = FinishReason::Stop;
                done[row] = true;
            }
            next.push(token);
        }
        if done.iter().all(|d| *d) || step + 1 == max_new {
            break;
        }
        for row in sampled_rows {
            fed[row] += 1;
        }
        for row in &mut key_valid {
            row.push(true);
        }
        let pos: Vec<u32> = next_position.iter().map(|p| p + step as u32).collect();
        let ids_t = Tensor::from_vec(next, (b, 1), device)?;
        let pos_t = Tensor::from_vec(pos, (b, 1), device)?;
        let mask = padded_causal_mask(&key_valid, width + step, 1, device)?;
        logits = model.forward_last(&ids_t, &pos_t, &mask, Some(&mut cache))?;
    }
    if !keep {
        return Ok((out, Vec::new()));
    }
    let kept = prompts
        .iter()
        .zip(&out)
        .zip(&fed)
        .enumerate()
        .map(|(row, ((p, g), &n))| {
            let start = width - p.len();
            let mut ids = p.clone();
            ids.extend_from_slice(&g.tokens[..n]);
            let layers = cache.row(row, start, ids.len())?;
            Ok(SequenceCache { ids, layers })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((out, kept))
}

/// Samples one token from a row of logits with the uniform draw `u` in [0, 1); returns it with
/// its log-prob (under the temperature-scaled distribution, before truncation).
fn sample(logits: &[f32], params: &SamplingParams, u: f64) -> (u32, f32) {
    let greedy = params.temperature <= 0.0;
    let temperature = if greedy { 1.0 } else { params.temperature };
    let scaled = |i: usize| f64::from(logits[i]) / temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max) / temperature;
    let log_z = max + (0..logits.len()).map(|i| (scaled(i) - max).exp()).sum::<f64>().ln();
    let logprob = |i: usize| (scaled(i) - log_z) as f32;
    let prob = |i: usize| (scaled(i) - log_z).exp();
    if greedy {
        let best =
            (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best });
        return (best as u32, logprob(best));
    }
    if params.top_k.is_none() && params.top_p >= 1.0 {
        // Untruncated: inverse CDF over the ids, no sort.
        let mut u = u;
        let mut last = 0;
        for i in 0..logits.len() {
            let p = prob(i);
            if p > 0.0 {
                last = i;
            }
            if u < p {
                return (i as u32, logprob(i));
            }
            u -= p;
        }
        return (last as u32, logprob(last));
    }
    // Candidates by decreasing probability (ties by id, for determinism). Only tokens above a
    // tiny probability are sorted when that set alone reaches the nucleus and the top-k; else
    // every token is (the result is the same either way).
    let by_prob = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| prob(i) > 1e-9).collect();
    let enough_mass =
        params.top_p >= 1.0 || order.iter().map(|&i| prob(i)).sum::<f64>() >= params.top_p;
    let enough_count = params.top_k.is_none_or(|k| order.len() >= k);
    if !(enough_mass && enough_count) {
        order = (0..logits.len()).collect();
    }
    order.sort_by(by_prob);
    if let Some(k) = params.top_k {
        order.truncate(k.max(1));
    }
    let probs: Vec<f64> = order.iter().map(|&i| prob(i)).collect();
    let mut keep = probs.len();
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        for (n, p) in probs.iter().enumerate() {
            cumulative += p;
            if cumulative >= params.top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut u = u * total;
    for (n, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            return (order[n] as u32, logprob(order[n]));
        }
        u -= p;
    }
    let last = order[keep - 1];
    (last as u32, logprob(last))
}

/// Per-token log-probs of whole sequences (prompt and completion), batched: row r, column t is
/// `log p(seq[r][t] | seq[r][..t])` under the temperature-scaled model, for 1 <= t < len(r); column
/// 0 and padding are 0. Differentiable: the training loss is built on it. Shape (batch, longest).
pub fn token_logprobs(
    model: &Decoder,
    sequences: &[Vec<u32>],
    temperature: f64,
    pad_token: u32,
) -> Result<Tensor> {
    token_logprobs_chunked(model, sequences, temperature, pad_token, model.logit_chunk_bytes())
}

/// Bytes of logits made at once by the training and scoring forward pass (the default of
/// [`Decoder::logit_chunk_bytes`]): above this, the
/// output projection and log-softmax run in chunks of positions (see
/// [`Decoder::target_logprobs`]). 64 MiB is 64 positions of Gemma 3's 262,144-token vocabulary
/// in f32, and the whole batch of the tiny models.
pub const LOGIT_CHUNK_BYTES: usize = 64 << 20;

/// [`token_logprobs`] with the chunk size of the logits given: the same values and gradients
/// for any `logit_chunk_bytes`, only the peak memory differs.
pub fn token_logprobs_chunked(
    model: &Decoder,
    sequences: &[Vec<u32>],
    temperature: f64,
    pad_token: u32,
    logit_chunk_bytes: usize,
) -> Result<Tensor> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(ModelError::invalid("temperature", "must be > 0 for scoring", temperature));
    }
    let b = sequences.len();
    let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
    if b == 0 || width < 2 {
        return Err(ModelError::invalid(
            "sequences",
            "need at least one sequence of 2 or more tokens",
            width,
        ));
    }
    model.check_length(width)?;
    let device = model.device();
    let mut ids = Vec::with_capacity(b * width);
    for s in sequences {
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad_token, width - s.len())));
    }
    let ids = Tensor::from_vec(ids, (b, width), device)?;
    let inputs = ids.narrow(1, 0, width - 1)?;
    let targets = ids.narrow(1, 1, width - 1)?.contiguous()?;
    let logp = model.target_logprobs(&inputs, &targets, temperature, logit_chunk_bytes)?;
    let valid =
        padding_mask(sequences, width, device)?.narrow(1, 1, width - 1)?.to_dtype(logp.dtype())?;
    let logp = (logp * valid)?;
    Ok(Tensor::cat(&[&Tensor::zeros((b, 1), logp.dtype(), device)?, &logp], 1)?)
}

/// 1.0 for real tokens, 0.0 for right padding: (batch, width).
pub fn padding_mask(sequences: &[Vec<u32>], width: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = sequences
        .iter()
        .flat_map(|s| (0..width).map(move |t| if t < s.len() { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (sequences.len(), width), device)?)
}
