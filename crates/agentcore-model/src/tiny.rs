//! The built-in tiny decoder of the embedded default: Llama-style (RMSNorm, rotary position
//! embeddings, SwiGLU MLP, untied output head), f32, sizes from [`TinyConfig`].
//!
//! Every op on the training path has a backward pass in candle: softmax is composed from
//! `max`/`exp`/`sum` (not `softmax_last_dim`), RMSNorm from `sqr`/`mean`/`sqrt` (not the fused
//! `rms_norm`), rotary embeddings from `mul`/`cat` (not the fused `rope`). A test asserts that
//! every parameter receives a non-zero gradient, which catches a fused op slipping back in.
//!
//! Attention masks use a large finite negative number rather than -inf, so that a padded query
//! row whose keys are all masked gives a uniform (finite) distribution instead of NaN.

use candle_core::{D, DType, Device, IndexOp, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::params::ParamStore;

/// Added to masked attention scores: exp() of it underflows to exactly 0 in f32.
const MASKED: f32 = -1e9;

/// Sizes of the tiny decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyConfig {
    /// Vocabulary size (the tokenizer's, or more).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Attention heads; must divide `d_model`, head size must be even (rotary pairs).
    pub n_heads: usize,
    /// SwiGLU inner size.
    pub d_ff: usize,
    /// Longest sequence (prompt + generation) the rotary tables cover.
    pub max_seq_len: usize,
    /// Rotary base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
}

impl TinyConfig {
    /// The embedded default's model: 4 layers, d_model 256, 4 heads, SwiGLU 768, for the
    /// built-in byte tokenizer (265 symbols).
    pub fn embedded_default(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            d_model: 256,
            n_layers: 4,
            n_heads: 4,
            d_ff: 768,
            max_seq_len: 512,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
        }
    }

    /// The reference architecture of the PyTorch benchmark anchor (vocab 512).
    pub fn bench_reference() -> Self {
        Self::embedded_default(512)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::invalid(format!("model.{name}"), "must be >= 1", v));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelError::invalid(
                "model.n_heads",
                format!("must divide d_model ({})", self.d_model),
                self.n_heads,
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::invalid(
                "model.d_model / model.n_heads",
                "must be even (rotary embeddings rotate pairs)",
                self.head_dim(),
            ));
        }
        Ok(())
    }
}

struct Block {
    input_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    post_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The tiny decoder. Its weights live in a [`ParamStore`]; the tensors held here share storage
/// with those variables, so optimizer updates are seen by the next forward pass.
pub struct TinyModel {
    config: TinyConfig,
    params: ParamStore,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// Keys and values of earlier positions, per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TinyModel {
    /// A freshly initialised model: weights N(0, 0.02) from `rng` (output projections of each
    /// block scaled by 1/sqrt(2 n_layers)), norms 1.
    pub fn new<R: Rng + ?Sized>(config: TinyConfig, rng: &mut R, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut params = ParamStore::new();
        let (d, f, v) = (config.d_model, config.d_ff, config.vocab_size);
        let std = 0.02;
        let out_std = std / (2.0 * config.n_layers as f64).sqrt();
        params.normal("model.embed_tokens.weight", &[v, d], std, rng, device)?;
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            params.constant(&format!("{p}.input_layernorm.weight"), &[d], 1.0, device)?;
            for name in ["q_proj", "k_proj", "v_proj"] {
                params.normal(
                    &format!("{p}.self_attn.{name}.weight"),
                    &[d, d],
                    std,
                    rng,
                    device,
                )?;
            }
            params.normal(
                &format!("{p}.self_attn.o_proj.weight"),
                &[d, d],
                out_std,
                rng,
                device,
            )?;
            params.constant(&format!("{p}.post_attention_layernorm.weight"), &[d], 1.0, device)?;
            params.normal(&format!("{p}.mlp.gate_proj.weight"), &[f, d], std, rng, device)?;
            params.normal(&format!("{p}.mlp.up_proj.weight"), &[f, d], std, rng, device)?;
            params.normal(&format!("{p}.mlp.down_proj.weight"), &[d, f], out_std, rng, device)?;
        }
        params.constant("model.norm.weight", &[d], 1.0, device)?;
        params.normal("lm_head.weight", &[v, d], std, rng, device)?;
        Self::from_params(config, params, device)
    }

    /// A model over existing parameters (e.g. loaded from a checkpoint).
    pub fn from_params(config: TinyConfig, params: ParamStore, device: &Device) -> Result<Self> {
        config.validate()?;
        let t = |name: &str| -> Result<Tensor> { Ok(params.get(name)?.as_tensor().clone()) };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Block {
                input_norm: t(&format!("{p}.input_layernorm.weight"))?,
                q: t(&format!("{p}.self_attn.q_proj.weight"))?,
                k: t(&format!("{p}.self_attn.k_proj.weight"))?,
                v: t(&format!("{p}.self_attn.v_proj.weight"))?,
                o: t(&format!("{p}.self_attn.o_proj.weight"))?,
                post_norm: t(&format!("{p}.post_attention_layernorm.weight"))?,
                gate: t(&format!("{p}.mlp.gate_proj.weight"))?,
                up: t(&format!("{p}.mlp.up_proj.weight"))?,
                down: t(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let dtype = params.get("model.embed_tokens.weight")?.dtype();
        let (cos, sin) = rotary_tables(&config, device)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        Ok(Self {
            embed: t("model.embed_tokens.weight")?,
            final_norm: t("model.norm.weight")?,
            lm_head: t("lm_head.weight")?,
            blocks,
            cos,
            sin,
            config,
            params,
            device: device.clone(),
        })
    }

    /// The sizes.
    pub fn config(&self) -> &TinyConfig {
        &self.config
    }

    /// The trainable parameters.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// A copy of this model with its weights in `dtype` (e.g. f64 for gradient checks).
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let mut params = ParamStore::new();
        for (name, var) in self.params.iter() {
            params.insert(name, var.as_tensor().to_dtype(dtype)?)?;
        }
        Self::from_params(self.config.clone(), params, &self.device)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits for `ids` (batch, time) at `positions` (batch, time; rotary positions) under an
    /// additive attention `mask` broadcastable to (batch, 1, time, cached + time). With a
    /// cache, the keys and values of these positions are appended to it.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let (h, hd) = (cfg.n_heads, cfg.head_dim());
        let mask = &mask.to_dtype(self.embed.dtype())?;
        let flat_pos = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat_pos, 0)?.reshape((b, 1, t, hd / 2))?;
        let sin = self.sin.index_select(&flat_pos, 0)?.reshape((b, 1, t, hd / 2))?;
        let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
        let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;

        let mut x =
            self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, cfg.d_model))?;
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.len() != self.blocks.len()
        {
            cache.layers = vec![None; self.blocks.len()];
        }
        let scale = 1.0 / (hd as f64).sqrt();
        for (li, block) in self.blocks.iter().enumerate() {
            let normed = rms_norm(&x, &block.input_norm, cfg.rms_norm_eps)?;
            let heads = |w: &Tensor| -> Result<Tensor> {
                Ok(linear(&normed, w)?.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = rotate(&heads(&block.q)?, &cos, &sin)?;
            let mut k = rotate(&heads(&block.k)?, &cos, &sin)?;
            let mut v = heads(&block.v)?;
            if let Some(cache) = cache.as_deref_mut() {
                if let Some((pk, pv)) = &cache.layers[li] {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                cache.layers[li] = Some((k.clone(), v.clone()));
            }
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
            let attn = softmax_last(&scores)?;
            let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, t, cfg.d_model))?;
            x = (x + linear(&out, &block.o)?)?;
            let normed = rms_norm(&x, &block.post_norm, cfg.rms_norm_eps)?;
            let gated = (linear(&normed, &block.gate)?.silu()? * linear(&normed, &block.up)?)?;
            x = (x + linear(&gated, &block.down)?)?;
        }
        let x = rms_norm(&x, &self.final_norm, cfg.rms_norm_eps)?;
        linear(&x, &self.lm_head)
    }

    /// Logits of right-padded sequences from position 0, causal mask, no cache: the
    /// training/scoring path. `ids` is (batch, time).
    pub fn forward_full(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions =
            Tensor::arange(0u32, t as u32, &self.device)?.unsqueeze(0)?.repeat((b, 1))?;
        let mask = causal_mask(t, &self.device)?;
        self.forward(ids, &positions, &mask, None)
    }

    /// Checks that a sequence of `len` tokens fits the rotary tables.
    pub fn check_length(&self, len: usize) -> Result<()> {
        if len > self.config.max_seq_len {
            return Err(ModelError::invalid(
                "sequence length",
                format!("must be <= model.max_seq_len ({})", self.config.max_seq_len),
                len,
            ));
        }
        Ok(())
    }

    /// One row of logits as plain numbers (for tests and sampling).
    pub fn last_logits(logits: &Tensor, row: usize) -> Result<Vec<f32>> {
        let t = logits.dim(1)?;
        Ok(logits.i((row, t - 1))?.to_vec1::<f32>()?)
    }
}

/// x @ w^T for x (..., in) and w (out, in).
fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_matmul(&w.t()?)?)
}

/// RMSNorm from differentiable ops (candle's fused `rms_norm` has no backward).
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?.broadcast_mul(weight)?)
}

/// Softmax over the last dimension from differentiable ops.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Rotary embedding in the Hugging Face "rotate half" layout; `cos`/`sin` are (b, 1, t, hd).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

fn rotary_tables(config: &TinyConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = config.head_dim();
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / hd as f64) as f32)
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
    let positions = Tensor::arange(0u32, config.max_seq_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.max_seq_len, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive causal mask (1, 1, t, t): 0 on and below the diagonal, a large negative above.
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { MASKED })).collect();
    Ok(Tensor::from_vec(data, (1, 1, t, t), device)?)
}

/// Additive mask (b, 1, q, k) for queries at key offsets `first_query..first_query + q` where
/// key j of row r is visible when `key_valid[r][j]` and j <= the query's key index. Every query
/// may always see its own key, so no row is fully masked.
pub fn padded_causal_mask(
    key_valid: &[Vec<bool>],
    first_query: usize,
    queries: usize,
    device: &Device,
) -> Result<Tensor> {
    let b = key_valid.len();
    let k = key_valid.first().map_or(0, Vec::len);
    let mut data = Vec::with_capacity(b * queries * k);
    for row in key_valid {
        for qi in 0..queries {
            let qk = first_query + qi;
            data.extend((0..k).map(|j| if j == qk || (j < qk && row[j]) { 0.0 } else { MASKED }));
        }
    }
    Ok(Tensor::from_vec(data, (b, 1, queries, k), device)?)
}
