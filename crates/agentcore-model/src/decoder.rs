//! One decoder-only transformer for every model we train: the built-in tiny model of the
//! embedded default, the Llama / Qwen2 family (Hugging Face directories) and Gemma 3 (GGUF).
//!
//! The architectures differ in a few switches, all in [`DecoderConfig`]: grouped-query attention
//! (`n_kv_heads`), biases on q/k/v (Qwen2), tied embeddings, the MLP activation (SwiGLU or
//! GELU-tanh), and for Gemma 3 the q/k RMSNorms, the "sandwich" norms after attention and MLP,
//! the sqrt(d_model) embedding scale, the attention scale from `query_pre_attn_scalar`, and
//! sliding-window layers with their own rotary base.
//!
//! Every op on the training path has a backward pass: RMSNorm, softmax, SwiGLU and the rotary
//! embedding are our fused kernels with their own backward ([`crate::fused`]; never candle's
//! `rms_norm`, `softmax_last_dim` or `rope`, which have none). A test asserts that every trainable tensor receives a non-zero gradient, which
//! catches an op without a backward slipping in.
//!
//! Weights use Hugging Face names (`model.layers.0.self_attn.q_proj.weight`). Trainable weights
//! live in a [`ParamStore`]: all of them for full fine-tuning, only the LoRA matrices after
//! [`Decoder::enable_lora`] (the base weights are then constants that backward skips).
//!
//! Attention masks use a large finite negative number rather than -inf, so that a padded query
//! row whose keys are all masked gives a uniform (finite) distribution instead of NaN.

use std::collections::{BTreeMap, HashMap};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Uniform};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::fused::{RotaryAngles, rms_norm, rotary, softmax_last, swiglu};
use crate::params::ParamStore;
use crate::qmatmul::{Kernel, Q8Matrix};

/// Most rows a quantized matmul takes; more go through the f32 weights.
const MAX_QUANTIZED_ROWS: usize = 16;

/// Added to masked attention scores: exp() of it underflows to exactly 0 in f32.
const MASKED: f32 = -1e9;

/// Which family a model belongs to: decides the block structure and the weight names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Llama (and the built-in tiny model): pre-norm blocks, SwiGLU.
    #[default]
    Llama,
    /// Qwen2: Llama with biases on the q/k/v projections.
    Qwen2,
    /// Gemma 3: q/k norms, norms before and after attention and MLP, scaled embeddings,
    /// sliding-window layers.
    Gemma3,
}

/// The gate activation of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x * sigmoid(x) (SwiGLU; Llama, Qwen2).
    #[default]
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluPytorchTanh,
}

/// Sizes and switches of a decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// The family.
    #[serde(default)]
    pub architecture: Architecture,
    /// Vocabulary size (the tokenizer's, or more).
    pub vocab_size: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means `n_heads`.
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Head size; `None` means `d_model / n_heads`. Must be even (rotary pairs).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// MLP inner size.
    pub d_ff: usize,
    /// Longest sequence (prompt + generation) the rotary tables cover.
    pub max_seq_len: usize,
    /// Rotary base (of the global-attention layers).
    pub rope_theta: f64,
    /// Rotary base of the sliding-window layers (Gemma 3: 10,000).
    #[serde(default)]
    pub rope_local_theta: Option<f64>,
    /// Window of the sliding-window layers: a query sees keys less than this many positions back.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Every this-many-th layer attends globally, the others use the window (Gemma 3: 6).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// The output head is the embedding matrix.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2).
    #[serde(default)]
    pub attention_bias: bool,
    /// The MLP gate activation.
    #[serde(default)]
    pub activation: Activation,
    /// Attention scores are scaled by this^-0.5; `None` means `head_dim` (Gemma 3 sets it).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
}

impl DecoderConfig {
    /// The embedded default's model: Llama-style, 4 layers, d_model 256, 4 heads, SwiGLU 768,
    /// untied head.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size,
            d_model: 256,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: None,
            head_dim: None,
            d_ff: 768,
            max_seq_len: 512,
            rope_theta: 10_000.0,
            rope_local_theta: None,
            sliding_window: None,
            sliding_window_pattern: None,
            rms_norm_eps: 1e-5,
            tie_embeddings: false,
            attention_bias: false,
            activation: Activation::Silu,
            query_pre_attn_scalar: None,
        }
    }

    /// The reference architecture of the PyTorch benchmark anchor (vocab 512).
    pub fn bench_reference() -> Self {
        Self::tiny(512)
    }

    /// Head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Whether layer `i` uses the sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        match (self.sliding_window, self.sliding_window_pattern) {
            (Some(_), Some(p)) if p > 0 => !(layer + 1).is_multiple_of(p),
            (Some(_), None) => true,
            _ => false,
        }
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
            ("n_kv_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::invalid(format!("model.{name}"), "must be >= 1", v));
            }
        }
        if self.head_dim.is_none() && !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ModelError::invalid(
                "model.n_heads",
                format!("must divide d_model ({})", self.d_model),
                self.n_heads,
            ));
        }
        if !self.n_heads.is_multiple_of(self.kv_heads()) {
            return Err(ModelError::invalid(
                "model.n_kv_heads",
                format!("must divide n_heads ({})", self.n_heads),
                self.kv_heads(),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::invalid(
                "model.head_dim",
                "must be even (rotary embeddings rotate pairs)",
                self.head_dim(),
            ));
        }
        Ok(())
    }

    /// Names and shapes of every weight, in Hugging Face naming.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f, v) = (self.d_model, self.d_ff, self.vocab_size);
        let (q_out, kv_out, hd) =
            (self.n_heads * self.head_dim(), self.kv_heads() * self.head_dim(), self.head_dim());
        let gemma = self.architecture == Architecture::Gemma3;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
        for i in 0..self.n_layers {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), vec![d]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q_out, d]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv_out, d]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv_out, d]));
            if self.attention_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q_out]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv_out]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv_out]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q_out]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            if gemma {
                out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
                out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
                out.push((format!("{p}.pre_feedforward_layernorm.weight"), vec![d]));
                out.push((format!("{p}.post_feedforward_layernorm.weight"), vec![d]));
            }
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![f, d]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![f, d]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![d, f]));
        }
        out.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tie_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, d]));
        }
        out
    }
}

/// LoRA settings (PEFT's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of the update B A.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r`.
    pub lora_alpha: f64,
    /// Linear layers to adapt, by their last name (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
        }
    }
}

/// The linear layers LoRA can adapt.
pub const LORA_MODULES: [&str; 7] =
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl LoraConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::invalid("lora.r", "must be >= 1", 0));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err(ModelError::invalid("lora.lora_alpha", "must be > 0", self.lora_alpha));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::invalid("lora.target_modules", "must not be empty", "[]"));
        }
        if let Some(bad) = self.target_modules.iter().find(|m| !LORA_MODULES.contains(&m.as_str()))
        {
            return Err(ModelError::invalid(
                "lora.target_modules",
                format!("must be among {LORA_MODULES:?}"),
                bad,
            ));
        }
        Ok(())
    }
}

/// x @ W^T (+ b) (+ scale * x @ A^T @ B^T).
#[derive(Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<(Tensor, Tensor, f64)>,
    /// The same frozen W, quantized (from a GGUF file): used when decoding, where no gradient
    /// is needed and reading 4-8x fewer bytes per token is what sets the speed.
    quantized: Option<DecodeWeight>,
}

/// The decoding form of a frozen matrix: our 8-bit blocks where a SIMD kernel runs (every
/// weight block read once for all rows of a batch), else candle's quantized matmul.
#[derive(Clone)]
enum DecodeWeight {
    Int8(std::sync::Arc<Q8Matrix>),
    Candle(SplitQMatMul),
}

impl DecodeWeight {
    fn new(q: &std::sync::Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        if Kernel::detect().is_simd() && cols.is_multiple_of(crate::qmatmul::BLOCK) {
            let dense = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(m) = Q8Matrix::quantize(&dense, rows, cols) {
                return Ok(Self::Int8(std::sync::Arc::new(m)));
            }
        }
        Ok(Self::Candle(SplitQMatMul::new(q)?))
    }

    /// x is (m, cols), f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(q) => q.forward(x),
            Self::Int8(q) => {
                let m = x.dim(0)?;
                let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let out = Tensor::from_vec(q.matmul(&data, m), (m, q.rows()), x.device())?;
                Ok(out.to_dtype(x.dtype())?)
            }
        }
    }
}

/// A quantized matrix cut into row blocks, one per rayon thread, multiplied in parallel.
/// candle's quantized matmul parallelises on its own spinning worker pool, which the CLI turns
/// off (it slows training); this keeps decoding on all cores without it.
#[derive(Clone)]
struct SplitQMatMul {
    parts: Vec<QMatMul>,
}

impl SplitQMatMul {
    fn new(q: &std::sync::Arc<QTensor>) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let dtype = q.dtype();
        let n_parts = rayon::current_num_threads().clamp(1, rows.max(1));
        if n_parts == 1 || !cols.is_multiple_of(dtype.block_size()) {
            return Ok(Self { parts: vec![QMatMul::from_arc(q.clone())?] });
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let data = q.data()?;
        let per_part = rows.div_ceil(n_parts);
        let mut parts = Vec::with_capacity(n_parts);
        for start in (0..rows).step_by(per_part) {
            let n = per_part.min(rows - start);
            let bytes = &data[start * row_bytes..(start + n) * row_bytes];
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(bytes),
                &Device::Cpu,
                dtype,
            )?;
            parts.push(QMatMul::from_qtensor(QTensor::new(storage, (n, cols))?)?);
        }
        Ok(Self { parts })
    }

    /// x is (m, cols).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use rayon::prelude::*;
        if self.parts.len() == 1 {
            return Ok(self.parts[0].forward(x)?);
        }
        let outs =
            self.parts.par_iter().map(|p| p.forward(x)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, D::Minus1)?)
    }
}

impl Linear {
    /// On (..., in): flattened to one 2-D matmul, whose backward is two plain matmuls (a
    /// broadcast batched matmul would materialise one weight-sized gradient per batch row).
    fn forward(&self, x: &Tensor, decoding: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, input) = dims.split_at(dims.len() - 1);
        let x2 = x.reshape((lead.iter().product::<usize>(), input[0]))?;
        // Quantized for decoding steps (a few rows: reading the weights is the cost); the f32
        // weights for prompts (many rows: the arithmetic is the cost, and f32 gemm is fastest).
        let rows = x2.dim(0)?;
        let mut y = match &self.quantized {
            Some(q) if decoding && rows <= MAX_QUANTIZED_ROWS => q.forward(&x2)?,
            // A frozen weight (a LoRA base) under a graph: no gradient made for it.
            _ if !decoding && !self.weight.track_op() && x2.track_op() => {
                crate::fused::frozen_matmul(&x2, &self.weight)?
            }
            _ => x2.matmul(&self.weight.t()?)?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some((a, b, scale)) = &self.lora {
            let delta = x2.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (delta * *scale)?)?;
        }
        let mut out_dims = lead.to_vec();
        out_dims.push(y.dim(1)?);
        Ok(y.reshape(out_dims)?)
    }
}

#[derive(Clone)]
struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Gemma 3: norm of the attention output before the residual add.
    post_attn_norm: Option<Tensor>,
    pre_mlp_norm: Tensor,
    /// Gemma 3: norm of the MLP output before the residual add.
    post_mlp_norm: Option<Tensor>,
    gate: Linear,
    up: Linear,
    down: Linear,
    sliding: bool,
}

/// What a block's forward pass needs besides its input: the same for every block of a pass.
#[derive(Clone)]
struct PassContext {
    global: RotaryAngles,
    local: RotaryAngles,
    mask: Tensor,
    local_mask: Tensor,
    b: usize,
    t: usize,
    /// Query heads, key/value heads, head size.
    heads: (usize, usize, usize),
    scale: f64,
    eps: f64,
    activation: Activation,
}

impl Block {
    /// Its weights, when this is the plain Llama block trained in full on the CPU in f32: no
    /// biases, adapters, q/k or sandwich norms, SwiGLU, every query head its own key head, not
    /// sliding ([`crate::fused_block`] runs it as one op).
    fn plain(&self, ctx: &PassContext) -> Option<crate::fused_block::PlainBlock> {
        let (h, kvh, hd) = ctx.heads;
        let linears = [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down];
        let plain = !self.sliding
            && ctx.activation == Activation::Silu
            && h == kvh
            && self.q.weight.dims() == [h * hd, h * hd]
            && self.q_norm.is_none()
            && self.k_norm.is_none()
            && self.post_attn_norm.is_none()
            && self.post_mlp_norm.is_none()
            && linears.iter().all(|l| l.bias.is_none() && l.lora.is_none());
        let w = crate::fused_block::PlainBlock {
            input_norm: self.input_norm.clone(),
            q: self.q.weight.clone(),
            k: self.k.weight.clone(),
            v: self.v.weight.clone(),
            o: self.o.weight.clone(),
            pre_mlp_norm: self.pre_mlp_norm.clone(),
            gate: self.gate.weight.clone(),
            up: self.up.weight.clone(),
            down: self.down.weight.clone(),
        };
        let all = w.all();
        let trained = all.iter().all(|t| t.track_op() && crate::fused_block::is_cpu_f32(t));
        (plain && trained).then_some(w)
    }

    /// Its tensors that are trained (variables or built from them): LoRA adapters, or every
    /// weight when the whole model is.
    fn trainable(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        let mut add = |t: &Tensor| {
            if t.track_op() {
                out.push(t.clone());
            }
        };
        for l in [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down] {
            add(&l.weight);
            if let Some(b) = &l.bias {
                add(b);
            }
            if let Some((a, b, _)) = &l.lora {
                add(a);
                add(b);
            }
        }
        add(&self.input_norm);
        add(&self.pre_mlp_norm);
        for n in [&self.q_norm, &self.k_norm, &self.post_attn_norm, &self.post_mlp_norm]
            .into_iter()
            .flatten()
        {
            add(n);
        }
        out
    }

    /// The block on x (b, t, d_model); with a cache (decoding), this layer's keys and values
    /// are appended to it.
    fn forward(
        &self,
        x: &Tensor,
        ctx: &PassContext,
        mut cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, t, (h, kvh, hd), eps) = (ctx.b, ctx.t, ctx.heads, ctx.eps);
        let decoding = cache.is_some();
        let angles = if self.sliding { &ctx.local } else { &ctx.global };
        let mask = if self.sliding { &ctx.local_mask } else { &ctx.mask };
        let normed = rms_norm(x, &self.input_norm, eps)?;
        let heads = |l: &Linear, n: usize, norm: &Option<Tensor>| -> Result<Tensor> {
            let y = l
                .forward(&normed, decoding)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            match norm {
                Some(w) => rms_norm(&y, w, eps),
                None => Ok(y),
            }
        };
        let q = rotary(&heads(&self.q, h, &self.q_norm)?, angles)?;
        let mut k = rotary(&heads(&self.k, kvh, &self.k_norm)?, angles)?;
        let mut v = heads(&self.v, kvh, &None)?;
        if let Some((cache, li)) = cache.as_mut() {
            (k, v) = cache.append(*li, &k, &v)?;
        }
        // Grouped-query attention without copying keys and values per query head: the
        // `rep` query heads of a group are stacked along time, (b, kvh, rep * t, hd).
        let rep = h / kvh;
        let n_keys = k.dim(2)?;
        let q = q.reshape((b, kvh, rep * t, hd))?;
        let out = if decoding && q.device().is_cpu() {
            // Decoding never needs gradients: one fused pass over the cache.
            crate::fused::decode_attention(&q, &k, &v, mask, t, ctx.scale)?
        } else {
            // Off the CPU, the cache's views are made contiguous for the device's matmul.
            let (k, v) =
                if q.device().is_cpu() { (k, v) } else { (k.contiguous()?, v.contiguous()?) };
            let scores = (q.matmul(&k.t()?)? * ctx.scale)?
                .reshape((b, h, t, n_keys))?
                .broadcast_add(mask)?;
            let attn = softmax_last(&scores)?.reshape((b, kvh, rep * t, n_keys))?;
            attn.matmul(&v)?
        };
        let out = out.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b, t, h * hd))?;
        let mut out = self.o.forward(&out, decoding)?;
        if let Some(w) = &self.post_attn_norm {
            out = rms_norm(&out, w, eps)?;
        }
        let x = (x + out)?;
        let normed = rms_norm(&x, &self.pre_mlp_norm, eps)?;
        let gate = self.gate.forward(&normed, decoding)?;
        let up = self.up.forward(&normed, decoding)?;
        let gated = match ctx.activation {
            Activation::Silu => swiglu(&gate, &up)?,
            Activation::GeluPytorchTanh => (gate.gelu()? * up)?,
        };
        let mut out = self.down.forward(&gated, decoding)?;
        if let Some(w) = &self.post_mlp_norm {
            out = rms_norm(&out, w, eps)?;
        }
        Ok((x + out)?)
    }
}

/// Gradients of trained tensors that checkpointed blocks computed in the backward pass, to be
/// added to the pass's own ([`Decoder::backward`]).
type CheckpointGrads = std::sync::Arc<std::sync::Mutex<Vec<(Tensor, Tensor)>>>;

/// A block whose activations are not kept for the backward pass (activation checkpointing):
/// its output is computed without a graph, and the backward pass runs the block again on the
/// saved input, with a graph, to get the input's gradient and its trained tensors' (those go
/// to `grads`, as a custom op returns gradients of its arguments only). The node's second
/// argument, one of the block's trained tensors, puts it in the graph even where its input is
/// not (the first block of a LoRA model).
struct CheckpointedBlock {
    block: Block,
    ctx: PassContext,
    values: Tensor,
    grads: CheckpointGrads,
}

impl candle_core::CustomOp2 for CheckpointedBlock {
    fn name(&self) -> &'static str {
        "agentcore-checkpointed-block"
    }

    fn cpu_fwd(
        &self,
        _s1: &candle_core::CpuStorage,
        _l1: &candle_core::Layout,
        _s2: &candle_core::CpuStorage,
        _l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        crate::fused::carry_values(&self.values)
    }

    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let input = candle_core::Var::from_tensor(&x.detach())?;
        let y = self
            .block
            .forward(input.as_tensor(), &self.ctx, None)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let inner = (y * grad.detach())?.sum_all()?.backward()?;
        let mut store =
            self.grads.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        for t in self.block.trainable() {
            if let Some(g) = inner.get(&t) {
                store.push((t, g.clone()));
            }
        }
        let dx = if x.track_op() { inner.get(input.as_tensor()).cloned() } else { None };
        Ok((dx, None))
    }
}

fn checkpointed_block(
    block: &Block,
    x: &Tensor,
    anchor: &Tensor,
    ctx: &PassContext,
    grads: &CheckpointGrads,
) -> Result<Tensor> {
    let values = block.forward(&x.detach(), ctx, None)?.detach();
    let op =
        CheckpointedBlock { block: block.clone(), ctx: ctx.clone(), values, grads: grads.clone() };
    Ok(x.apply_op2(anchor, op)?)
}

/// A decoder. Its weights are held by name; the trainable ones are variables of its
/// [`ParamStore`], sharing storage with the tensors used here, so optimizer updates are seen by
/// the next forward pass.
pub struct Decoder {
    config: DecoderConfig,
    weights: BTreeMap<String, Tensor>,
    params: ParamStore,
    lora: Option<LoraConfig>,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    lm_head: Linear,
    quantized: BTreeMap<String, DecodeWeight>,
    rotary_global: (Tensor, Tensor),
    rotary_local: (Tensor, Tensor),
    device: Device,
    /// Bytes of logits the training forward pass makes at once (see
    /// [`Decoder::target_logprobs`]); [`crate::generate::LOGIT_CHUNK_BYTES`] unless set.
    logit_chunk_bytes: usize,
    /// Whether training passes keep only each block's input (see [`CheckpointedBlock`]).
    activation_checkpointing: bool,
    checkpoint_grads: CheckpointGrads,
    /// Whether training passes run each plain block as one fused op ([`crate::fused_block`]).
    fused_blocks: bool,
}

/// One layer's keys and values of a sequence, each (1, kv_heads, len, head_dim).
pub type LayerKv = (Tensor, Tensor);

/// Keys and values of earlier positions, per layer, for incremental decoding. The buffers are
/// allocated once for `capacity` positions (grown by doubling if exceeded) and written in
/// place, so a decoding step neither copies nor reallocates the cache.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    capacity: usize,
    layers: Vec<Option<LayerCache>>,
}

#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache that grows as needed.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache with room for `capacity` positions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity, layers: Vec::new() }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(layer)) => layer.len,
            _ => 0,
        }
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends keys and values (b, kv_heads, t, hd) of layer `li`; returns views of every cached
    /// position (b, kv_heads, len, hd).
    fn append(&mut self, li: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kvh, t, hd) = k.dims4()?;
        let layer = &mut self.layers[li];
        let len = layer.as_ref().map_or(0, |l| l.len);
        let capacity = layer.as_ref().map_or(self.capacity, |l| l.k.dim(2).unwrap_or(0));
        if layer.is_none() || len + t > capacity {
            let new_capacity = (len + t).max(2 * capacity).max(self.capacity);
            let alloc = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, kvh, new_capacity, hd), k.dtype(), k.device())?;
                if let Some(old) = old
                    && len > 0
                {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let (nk, nv) =
                (alloc(layer.as_ref().map(|l| &l.k))?, alloc(layer.as_ref().map(|l| &l.v))?);
            *layer = Some(LayerCache { k: nk, v: nv, len });
        }
        let layer = layer.as_mut().expect("allocated above");
        layer.k.slice_set(&k.contiguous()?, 2, len)?;
        layer.v.slice_set(&v.contiguous()?, 2, len)?;
        layer.len = len + t;
        Ok((layer.k.narrow(2, 0, layer.len)?, layer.v.narrow(2, 0, layer.len)?))
    }

    /// Fills an empty cache with `len` positions for `rows.len()` rows: row r, when given as
    /// `(start, layers)`, gets its first `len - start` cached keys and values (per layer,
    /// (1, kv_heads, >= len - start, hd)) at positions `start..len`; everything else is zero
    /// (padding, which the mask hides).
    pub(crate) fn prefill_rows(
        &mut self,
        rows: &[Option<(usize, &[LayerKv])>],
        len: usize,
        n_layers: usize,
    ) -> Result<()> {
        let Some((_, first)) = rows.iter().flatten().next() else { return Ok(()) };
        for (r, (start, layers)) in rows.iter().enumerate().filter_map(|(r, x)| Some((r, (*x)?))) {
            let fits = layers.len() == n_layers
                && layers.iter().zip(*first).all(|((k, v), (k0, _))| {
                    k.dims().len() == 4
                        && k.dim(0).ok() == Some(1)
                        && k.dim(1).ok() == k0.dim(1).ok()
                        && k.dim(3).ok() == k0.dim(3).ok()
                        && k.dim(2).is_ok_and(|n| n + start >= len)
                        && v.dims() == k.dims()
                });
            if start > len || !fits {
                return Err(ModelError::invalid(
                    format!("caches[{r}]"),
                    "must come from this model and hold the prompt's prefix",
                    format!("{} layers", layers.len()),
                ));
            }
        }
        self.layers = Vec::with_capacity(n_layers);
        for li in 0..n_layers {
            let (k0, _) = &first[li];
            let (kvh, hd) = (k0.dim(1)?, k0.dim(3)?);
            let zeros = |n: usize| Tensor::zeros((1, kvh, n, hd), k0.dtype(), k0.device());
            let mut ks = Vec::with_capacity(rows.len());
            let mut vs = Vec::with_capacity(rows.len());
            for row in rows {
                match row {
                    Some((start, layers)) => {
                        let (k, v) = &layers[li];
                        let n = len - start;
                        ks.push(Tensor::cat(&[&zeros(*start)?, &k.narrow(2, 0, n)?], 2)?);
                        vs.push(Tensor::cat(&[&zeros(*start)?, &v.narrow(2, 0, n)?], 2)?);
                    }
                    None => {
                        ks.push(zeros(len)?);
                        vs.push(zeros(len)?);
                    }
                }
            }
            let capacity = self.capacity.max(len);
            let b = rows.len();
            let k = Tensor::zeros((b, kvh, capacity, hd), k0.dtype(), k0.device())?;
            let v = Tensor::zeros((b, kvh, capacity, hd), k0.dtype(), k0.device())?;
            k.slice_set(&Tensor::cat(&ks, 0)?, 2, 0)?;
            v.slice_set(&Tensor::cat(&vs, 0)?, 2, 0)?;
            self.layers.push(Some(LayerCache { k, v, len }));
        }
        Ok(())
    }

    /// Row `row`'s keys and values at positions `start..start + len`, per layer, each
    /// (1, kv_heads, len, hd), copied out of the cache.
    pub(crate) fn row(
        &self,
        row: usize,
        start: usize,
        len: usize,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers
            .iter()
            .map(|layer| {
                let layer = layer.as_ref().ok_or_else(|| {
                    ModelError::invalid("cache", "must have every layer filled", "an empty layer")
                })?;
                let cut = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, row, 1)?.narrow(2, start, len)?.contiguous()?)
                };
                Ok((cut(&layer.k)?, cut(&layer.v)?))
            })
            .collect()
    }
}

impl Decoder {
    /// A freshly initialised model, every weight trainable: weights N(0, 0.02) from `rng`
    /// (output projections of each block scaled by 1/sqrt(2 n_layers)), norms 1, biases 0.
    pub fn new<R: Rng + ?Sized>(
        config: DecoderConfig,
        rng: &mut R,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut params = ParamStore::new();
        let std = 0.02;
        let out_std = std / (2.0 * config.n_layers as f64).sqrt();
        for (name, shape) in config.weight_shapes() {
            if name.ends_with("norm.weight") {
                params.constant(&name, &shape, 1.0, device)?;
            } else if name.ends_with(".bias") {
                params.constant(&name, &shape, 0.0, device)?;
            } else {
                let is_out = name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight");
                params.normal(&name, &shape, if is_out { out_std } else { std }, rng, device)?;
            }
        }
        Self::from_params(config, params, device)
    }

    /// A model whose every weight is a trainable variable of `params`.
    pub fn from_params(config: DecoderConfig, params: ParamStore, device: &Device) -> Result<Self> {
        let weights = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        Self::build(config, weights, params, None, BTreeMap::new(), device)
    }

    /// A model over the given weights (e.g. loaded from safetensors or GGUF). With `trainable`
    /// every weight becomes a variable (full fine-tuning); without, they are constants (inference,
    /// or a base for [`Decoder::enable_lora`]). Every weight the config needs must be present
    /// with its shape; unexpected extra weights are an error.
    pub fn from_weights(
        config: DecoderConfig,
        mut weights: HashMap<String, Tensor>,
        trainable: bool,
        source: &str,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut ordered = BTreeMap::new();
        for (name, shape) in config.weight_shapes() {
            let w = weights.remove(&name).ok_or_else(|| ModelError::File {
                path: source.to_string(),
                message: format!("missing tensor `{name}`"),
            })?;
            if w.dims() != shape.as_slice() {
                return Err(ModelError::File {
                    path: source.to_string(),
                    message: format!(
                        "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                        w.dims()
                    ),
                });
            }
            ordered.insert(name, w.to_device(device)?);
        }
        if let Some(extra) = weights.keys().next() {
            return Err(ModelError::File {
                path: source.to_string(),
                message: format!("unexpected tensor `{extra}` for this config"),
            });
        }
        if trainable {
            let mut params = ParamStore::new();
            for (name, w) in ordered {
                params.insert(&name, w)?;
            }
            Self::from_params(config, params, device)
        } else {
            Self::build(config, ordered, ParamStore::new(), None, BTreeMap::new(), device)
        }
    }

    fn build(
        config: DecoderConfig,
        weights: BTreeMap<String, Tensor>,
        params: ParamStore,
        lora: Option<(&LoraConfig, &ParamStore)>,
        quantized: BTreeMap<String, DecodeWeight>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let q = |name: &str| -> Result<Option<DecodeWeight>> { Ok(quantized.get(name).cloned()) };
        let t = |name: &str| -> Result<Tensor> {
            weights
                .get(name)
                .cloned()
                .ok_or_else(|| ModelError::invalid("weight name", "must exist in the model", name))
        };
        let linear = |prefix: &str, module: &str, bias: bool| -> Result<Linear> {
            let adapter = match lora {
                Some((cfg, store)) if cfg.target_modules.iter().any(|m| m == module) => {
                    let a = store.get(&format!("{prefix}.lora_A.weight"))?.as_tensor().clone();
                    let b = store.get(&format!("{prefix}.lora_B.weight"))?.as_tensor().clone();
                    Some((a, b, cfg.lora_alpha / cfg.r as f64))
                }
                _ => None,
            };
            Ok(Linear {
                weight: t(&format!("{prefix}.weight"))?,
                bias: if bias { Some(t(&format!("{prefix}.bias"))?) } else { None },
                lora: adapter,
                quantized: q(&format!("{prefix}.weight"))?,
            })
        };
        let gemma = config.architecture == Architecture::Gemma3;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("model.layers.{i}");
            let attn = |m: &str, bias: bool| linear(&format!("{p}.self_attn.{m}"), m, bias);
            let mlp = |m: &str| linear(&format!("{p}.mlp.{m}"), m, false);
            let opt = |name: &str| -> Result<Option<Tensor>> {
                if gemma { Ok(Some(t(&format!("{p}.{name}"))?)) } else { Ok(None) }
            };
            blocks.push(Block {
                input_norm: t(&format!("{p}.input_layernorm.weight"))?,
                q: attn("q_proj", config.attention_bias)?,
                k: attn("k_proj", config.attention_bias)?,
                v: attn("v_proj", config.attention_bias)?,
                o: attn("o_proj", false)?,
                q_norm: opt("self_attn.q_norm.weight")?,
                k_norm: opt("self_attn.k_norm.weight")?,
                post_attn_norm: opt("post_attention_layernorm.weight")?,
                pre_mlp_norm: if gemma {
                    t(&format!("{p}.pre_feedforward_layernorm.weight"))?
                } else {
                    t(&format!("{p}.post_attention_layernorm.weight"))?
                },
                post_mlp_norm: opt("post_feedforward_layernorm.weight")?,
                gate: mlp("gate_proj")?,
                up: mlp("up_proj")?,
                down: mlp("down_proj")?,
                sliding: config.is_sliding(i),
            });
        }
        let embed = t("model.embed_tokens.weight")?;
        let dtype = embed.dtype();
        let head_name =
            if config.tie_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let lm_head =
            Linear { weight: t(head_name)?, bias: None, lora: None, quantized: q(head_name)? };
        let rotary_global = rotary_tables(&config, config.rope_theta, dtype, device)?;
        let rotary_local = match config.rope_local_theta {
            Some(theta) => rotary_tables(&config, theta, dtype, device)?,
            None => rotary_global.clone(),
        };
        Ok(Self {
            final_norm: t("model.norm.weight")?,
            embed,
            lm_head,
            blocks,
            rotary_global,
            rotary_local,
            lora: lora.map(|(c, _)| c.clone()),
            quantized,
            config,
            weights,
            params,
            device: device.clone(),
            logit_chunk_bytes: crate::generate::LOGIT_CHUNK_BYTES,
            activation_checkpointing: false,
            checkpoint_grads: CheckpointGrads::default(),
            fused_blocks: true,
        })
    }

    /// Activation checkpointing: training passes keep each block's input only and run the
    /// block again in the backward pass (one more forward pass of compute; the activations of
    /// one block instead of all). The same values and gradients; take them with
    /// [`Decoder::backward`].
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        self.activation_checkpointing = on;
    }

    /// Whether activation checkpointing is on.
    pub fn activation_checkpointing(&self) -> bool {
        self.activation_checkpointing
    }

    /// `loss.backward()` plus the gradients that checkpointed blocks computed on the way: use
    /// this instead of `loss.backward()` for a loss built on this model's forward pass.
    /// Backward passes of one model must not run concurrently.
    pub fn backward(&self, loss: &Tensor) -> Result<candle_core::backprop::GradStore> {
        let mut grads = loss.backward()?;
        let pending = std::mem::take(
            &mut *self
                .checkpoint_grads
                .lock()
                .map_err(|_| ModelError::invalid("checkpoint gradients", "lock poisoned", ""))?,
        );
        for (t, g) in pending {
            let sum = match grads.get(&t) {
                Some(a) => (a + g)?,
                None => g,
            };
            grads.insert(&t, sum);
        }
        Ok(grads)
    }

    /// Whether training passes run each plain Llama block as one fused op with a hand-written
    /// backward pass (the crate's `fused_block` module; on by default). Values and gradients are those of
    /// the composed block within f32 rounding; off runs the composed ops (the reference).
    pub fn set_fused_blocks(&mut self, on: bool) {
        self.fused_blocks = on;
    }

    /// Bytes of logits the training and scoring forward pass makes at once.
    pub fn logit_chunk_bytes(&self) -> usize {
        self.logit_chunk_bytes
    }

    /// Sets [`Decoder::logit_chunk_bytes`] (`usize::MAX`: the whole logits at once). Values and
    /// gradients are the same for any setting; only the peak memory differs.
    pub fn set_logit_chunk_bytes(&mut self, bytes: usize) {
        self.logit_chunk_bytes = bytes.max(1);
    }

    /// Freezes the current weights and adds LoRA adapters to the target modules: A (r, in)
    /// uniform in +-1/sqrt(in) (PEFT's Kaiming-uniform init) from `rng`, B (out, r) zero, so the
    /// model computes exactly what it did before. Afterwards only the adapters are trainable.
    pub fn enable_lora<R: Rng + ?Sized>(&mut self, config: &LoraConfig, rng: &mut R) -> Result<()> {
        config.validate()?;
        if self.lora.is_some() {
            return Err(ModelError::invalid("lora", "must not be enabled twice", "enabled"));
        }
        let frozen: BTreeMap<String, Tensor> =
            self.weights.iter().map(|(n, w)| (n.clone(), w.detach())).collect();
        let mut adapters = ParamStore::new();
        for (name, w) in &frozen {
            let Some(prefix) = name.strip_suffix(".weight") else { continue };
            let module = prefix.rsplit('.').next().unwrap_or_default();
            if !config.target_modules.iter().any(|m| m == module) {
                continue;
            }
            let (out_dim, in_dim) = w.dims2()?;
            let bound = 1.0 / (in_dim as f64).sqrt();
            let dist = Uniform::new(-bound, bound)
                .map_err(|e| ModelError::invalid("lora init", e.to_string(), bound))?;
            let a: Vec<f32> = (0..config.r * in_dim).map(|_| dist.sample(rng) as f32).collect();
            let a = Tensor::from_vec(a, (config.r, in_dim), &self.device)?.to_dtype(w.dtype())?;
            adapters.insert(&format!("{prefix}.lora_A.weight"), a)?;
            adapters.insert(
                &format!("{prefix}.lora_B.weight"),
                Tensor::zeros((out_dim, config.r), w.dtype(), &self.device)?,
            )?;
        }
        *self = Self::build(
            self.config.clone(),
            frozen,
            adapters.clone(),
            Some((config, &adapters)),
            self.quantized.clone(),
            &self.device,
        )?;
        Ok(())
    }

    /// Gives the frozen base weights quantized twins (e.g. the GGUF tensors they were
    /// dequantized from), used by the decoding path only: training and scoring keep the f32
    /// weights. Refused when the base weights are trainable (the twins would go stale).
    pub fn set_quantized_weights(
        &mut self,
        quantized: BTreeMap<String, std::sync::Arc<QTensor>>,
    ) -> Result<()> {
        for (name, q) in &quantized {
            let w = self.weights.get(name).ok_or_else(|| {
                ModelError::invalid("quantized weight", "must name a weight of the model", name)
            })?;
            if self.params.get(name).is_ok() {
                return Err(ModelError::invalid(
                    "quantized weights",
                    "need frozen base weights (load without `trainable`, or use LoRA)",
                    name,
                ));
            }
            if q.shape().dims() != w.dims() {
                return Err(ModelError::invalid(
                    format!("quantized `{name}`"),
                    format!("must have the weight's shape {:?}", w.dims()),
                    format!("{:?}", q.shape().dims()),
                ));
            }
        }
        let quantized = quantized
            .iter()
            .map(|(name, q)| Ok((name.clone(), DecodeWeight::new(q)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let lora_store = self.params.clone();
        let lora = self.lora.clone();
        *self = Self::build(
            self.config.clone(),
            self.weights.clone(),
            lora_store.clone(),
            lora.as_ref().map(|c| (c, &lora_store)),
            quantized,
            &self.device,
        )?;
        Ok(())
    }

    /// The sizes.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The trainable parameters (every weight, or only the LoRA adapters).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The LoRA settings, when adapters are enabled.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Every weight of the base model, by name (the adapters are in [`Decoder::params`]).
    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.weights
    }

    /// Every base weight with the LoRA updates merged in (W + alpha/r * B A): what an exported
    /// model holds. Without adapters, the weights as they are.
    pub fn merged_weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, w) in &self.weights {
            let merged = match (&self.lora, name.strip_suffix(".weight")) {
                (Some(cfg), Some(prefix)) => {
                    match (
                        self.params.get(&format!("{prefix}.lora_A.weight")),
                        self.params.get(&format!("{prefix}.lora_B.weight")),
                    ) {
                        (Ok(a), Ok(b)) => {
                            let delta = b.as_tensor().matmul(a.as_tensor())?;
                            (w + (delta * (cfg.lora_alpha / cfg.r as f64))?)?
                        }
                        _ => w.copy()?,
                    }
                }
                _ => w.copy()?,
            };
            out.insert(name.clone(), merged);
        }
        Ok(out)
    }

    /// A copy of this model with its weights in `dtype` (e.g. f64 for gradient checks); the
    /// copy's weights are all trainable.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut params = ParamStore::new();
        for (name, w) in &self.weights {
            params.insert(name, w.to_dtype(dtype)?)?;
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
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_positions(ids, positions, mask, cache, false)
    }

    /// Like [`Decoder::forward`], but the logits of the last position only, (batch, 1, vocab):
    /// what decoding needs, without the output projection of every prompt position.
    pub fn forward_last(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_positions(ids, positions, mask, cache, true)
    }

    fn forward_positions(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let decoding = cache.is_some();
        let (b, t) = ids.dims2()?;
        let t = if last_only { 1 } else { t };
        let x = self.hidden_states(ids, positions, mask, cache, last_only, false)?;
        Ok(self.lm_head.forward(&x, decoding)?.reshape((b, t, self.config.vocab_size))?)
    }

    /// The final-normed hidden states that the output projection reads, (batch * time, d_model)
    /// (time 1 with `last_only`).
    fn hidden_states(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        last_only: bool,
        causal_training: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        let (h, kvh, hd) = (cfg.n_heads, cfg.kv_heads(), cfg.head_dim());
        let dtype = self.embed.dtype();
        let mask = &mask.to_dtype(dtype)?;
        let cached = cache.as_deref().map_or(0, KvCache::len);
        // With a cache we are decoding: no gradient flows, quantized twins may be used.
        let decoding = cache.is_some();
        let keys = cached + t;
        // Sliding-window layers also hide keys `window` or more positions back. Rows advance in
        // lockstep (left padding), so key-index distance is position distance.
        let window_mask = match cfg.sliding_window {
            Some(w) if keys > w && self.blocks.iter().any(|bl| bl.sliding) => {
                let data: Vec<f32> = (0..t)
                    .flat_map(|qi| {
                        let qk = cached + qi;
                        (0..keys).map(move |j| if qk >= j + w { MASKED } else { 0.0 })
                    })
                    .collect();
                Some(Tensor::from_vec(data, (1, 1, t, keys), &self.device)?.to_dtype(dtype)?)
            }
            _ => None,
        };
        let local_mask = match &window_mask {
            Some(w) => mask.broadcast_add(w)?,
            None => mask.clone(),
        };
        let angles = |(cos, sin): &(Tensor, Tensor)| RotaryAngles::new(cos, sin, positions);
        let global = angles(&self.rotary_global)?;
        let local = if cfg.rope_local_theta.is_some() {
            angles(&self.rotary_local)?
        } else {
            global.clone()
        };

        let gemma = cfg.architecture == Architecture::Gemma3;
        let mut x =
            self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, cfg.d_model))?;
        if gemma {
            x = (x * (cfg.d_model as f64).sqrt())?;
        }
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.len() != self.blocks.len()
        {
            cache.layers = vec![None; self.blocks.len()];
        }
        let ctx = PassContext {
            global,
            local,
            mask: mask.clone(),
            local_mask,
            b,
            t,
            heads: (h, kvh, hd),
            scale: 1.0 / cfg.query_pre_attn_scalar.unwrap_or(hd as f64).sqrt(),
            eps: cfg.rms_norm_eps,
            activation: cfg.activation,
        };
        let checkpoint = self.activation_checkpointing && !decoding;
        for (li, block) in self.blocks.iter().enumerate() {
            let anchor = if checkpoint { block.trainable().into_iter().next() } else { None };
            let plain = if causal_training && anchor.is_none() && self.fused_blocks {
                block.plain(&ctx)
            } else {
                None
            };
            x = match (anchor, plain) {
                (Some(anchor), _) => {
                    checkpointed_block(block, &x, &anchor, &ctx, &self.checkpoint_grads)?
                }
                (None, Some(w)) => crate::fused_block::plain_block(
                    &w,
                    &x,
                    &ctx.global,
                    (h, hd),
                    ctx.scale,
                    ctx.eps,
                )?,
                (None, None) => block.forward(&x, &ctx, cache.as_deref_mut().map(|c| (c, li)))?,
            };
        }
        let (x, t) = if last_only { (x.narrow(1, t - 1, 1)?, 1) } else { (x, t) };
        Ok(rms_norm(&x, &self.final_norm, cfg.rms_norm_eps)?.reshape((b * t, cfg.d_model))?)
    }

    /// `log p(targets[r][t] | ids[r][..=t])` under the temperature-scaled model for right-padded
    /// `ids` and `targets` (batch, time) from position 0 (causal mask, no cache): (batch, time),
    /// differentiable. The output projection and log-softmax run `logit_chunk_bytes` of logits
    /// at a time ([`crate::fused::head_target_logprobs`]) where the whole (positions x
    /// vocabulary) logits would be larger, so a 262,144-token vocabulary costs a chunk, not
    /// positions x 1 MiB. A head with a bias or a LoRA adapter is projected whole.
    pub fn target_logprobs(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        temperature: f64,
        logit_chunk_bytes: usize,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let positions =
            Tensor::arange(0u32, t as u32, &self.device)?.unsqueeze(0)?.repeat((b, 1))?;
        let mask = causal_mask(t, &self.device)?;
        // Positions 0..t and the causal mask: the plain blocks may run fused.
        let x = self.hidden_states(ids, &positions, &mask, None, false, true)?;
        let targets = targets.flatten_all()?;
        let vocab = self.config.vocab_size;
        let row_bytes = vocab * x.dtype().size_in_bytes();
        let chunk_rows = (logit_chunk_bytes / row_bytes.max(1)).max(1);
        let plain_head = self.lm_head.bias.is_none() && self.lm_head.lora.is_none();
        let logp = if plain_head && chunk_rows < b * t {
            crate::fused::head_target_logprobs(
                &x,
                &self.lm_head.weight,
                &targets,
                temperature,
                chunk_rows,
            )?
        } else {
            let logits = self.lm_head.forward(&x, false)?;
            // Dividing by exactly 1 would only cost a pass over the logits.
            #[expect(clippy::float_cmp, reason = "exactly 1.0 is the identity")]
            let logits = if temperature == 1.0 { logits } else { (logits / temperature)? };
            crate::fused::target_logprobs(&logits, &targets)?
        };
        Ok(logp.reshape((b, t))?)
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
        Ok(logits.i((row, t - 1))?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

fn rotary_tables(
    config: &DecoderConfig,
    theta: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let hd = config.head_dim();
    let inv_freq: Vec<f32> =
        (0..hd / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64) as f32).collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
    let positions = Tensor::arange(0u32, config.max_seq_len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.max_seq_len, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
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
