//! Fused CPU kernels with a backward pass, for the hot ops of training: RMSNorm, softmax over
//! the last dimension, SwiGLU (`silu(gate) * up`), rotary position embeddings, and the log-prob
//! of target tokens (log-softmax + gather); and decode attention over a KV cache (no gradient).
//!
//! candle's own fused ops (`rms_norm`, `softmax_last_dim`) have no backward; the composed
//! versions (the reference implementations in `decoder.rs` and `generate.rs`) are correct but
//! run 5-15 tensor ops, each a pass over memory with an allocation, forward and again backward.
//! These run one pass each way, row-parallel on rayon, for f32 and f64 (the gradient checks
//! run in f64). Each is checked against its composed twin, values and gradients (tests in
//! `tests/it/fused.rs`), and the finite-difference check of the whole model runs through them.
#![expect(
    clippy::needless_range_loop,
    reason = "the kernels index several slices of one row by the same column"
)]

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

use crate::error::Result;

/// Rows below this size are not worth a task each.
const MIN_PARALLEL_ELEMS: usize = 16 * 1024;

trait Elem: WithDType + Float + num_traits::NumAssignOps + Send + Sync + std::iter::Sum {}
impl Elem for f32 {}
impl Elem for f64 {}

pub(crate) fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> candle_core::Result<&'a [T]> {
    if !l.is_contiguous() {
        candle_core::bail!("fused op: input must be contiguous")
    }
    let data = s.as_slice::<T>()?;
    Ok(&data[l.start_offset()..l.start_offset() + l.shape().elem_count()])
}

/// Runs `f` on the contiguous data of `t` (CPU only).
pub(crate) fn with_data<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous_slice(cpu, layout)?),
        _ => candle_core::bail!("fused ops run on the CPU"),
    }
}

fn from_vec<T: WithDType>(
    data: Vec<T>,
    shape: &Shape,
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), like.device())
}

/// Splits `out` into rows of `cols` and runs `f(row_index, row)` on each, in parallel when big.
fn for_rows<T: Send>(out: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if out.len() >= MIN_PARALLEL_ELEMS {
        let rows_per_task = (MIN_PARALLEL_ELEMS / cols.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * cols).enumerate().for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_mut(cols).enumerate() {
                f(task * rows_per_task + i, row);
            }
        });
    } else {
        for (i, row) in out.chunks_mut(cols).enumerate() {
            f(i, row);
        }
    }
}

macro_rules! dispatch {
    ($dtype:expr, $name:literal, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            other => candle_core::bail!(concat!($name, ": f32 or f64 only, got {:?}"), other),
        }
    };
}

/// `sum_i a_i * b_i` over eight independent partial sums, so the compiler vectorizes it (a
/// single running sum must keep its order and stays scalar); the lanes are then added in a
/// fixed order, so the result is deterministic.
#[inline]
fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

// ---------------------------------------------------------------- RMSNorm

struct RmsNorm {
    eps: f64,
}

fn rms_fwd<T: Elem>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let cols = w.len();
    let mut out = vec![T::zero(); x.len()];
    let eps = T::from(eps).unwrap_or_else(T::zero);
    let n = T::from(cols).unwrap_or_else(T::one);
    for_rows(&mut out, cols, |r, y| {
        let xr = &x[r * cols..(r + 1) * cols];
        let ms = dot(xr, xr) / n;
        let s = (ms + eps).sqrt().recip();
        for ((y, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
            *y = xv * s * wv;
        }
    });
    out
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "agentcore-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            eps: f64,
        ) -> candle_core::Result<CpuStorage> {
            let (x, w) = (contiguous_slice::<T>(s1, l1)?, contiguous_slice::<T>(s2, l2)?);
            Ok(T::to_cpu_storage_owned(rms_fwd(x, w, eps)))
        }
        let storage = dispatch!(s1.dtype(), "rms_norm", go(s1, l1, s2, l2, self.eps))?;
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Elem>(
            x: &Tensor,
            w: &Tensor,
            grad: &Tensor,
            eps: f64,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let cols = w.elem_count();
            let (gx, gw) = with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(grad, |gs| {
                        let rows = xs.len() / cols;
                        let n = T::from(cols).unwrap_or_else(T::one);
                        let eps = T::from(eps).unwrap_or_else(T::zero);
                        // Per row: s = rstd, dot = sum_j g_j w_j x_j.
                        let stats: Vec<(T, T)> = (0..rows)
                            .map(|r| {
                                let xr = &xs[r * cols..(r + 1) * cols];
                                let gr = &gs[r * cols..(r + 1) * cols];
                                let ms = dot(xr, xr) / n;
                                let s = (ms + eps).sqrt().recip();
                                let dot = xr
                                    .iter()
                                    .zip(gr)
                                    .zip(ws)
                                    .map(|((&xv, &gv), &wv)| xv * gv * wv)
                                    .sum::<T>();
                                (s, dot)
                            })
                            .collect();
                        let mut gx = vec![T::zero(); xs.len()];
                        for_rows(&mut gx, cols, |r, out| {
                            let (s, dot) = stats[r];
                            let c = s * s * s * dot / n;
                            let xr = &xs[r * cols..(r + 1) * cols];
                            let gr = &gs[r * cols..(r + 1) * cols];
                            for j in 0..cols {
                                out[j] = s * gr[j] * ws[j] - c * xr[j];
                            }
                        });
                        let mut gw = vec![T::zero(); cols];
                        for r in 0..rows {
                            let s = stats[r].0;
                            let xr = &xs[r * cols..(r + 1) * cols];
                            let gr = &gs[r * cols..(r + 1) * cols];
                            for j in 0..cols {
                                gw[j] += gr[j] * xr[j] * s;
                            }
                        }
                        Ok((gx, gw))
                    })
                })
            })?;
            Ok((Some(from_vec(gx, x.shape(), x)?), Some(from_vec(gw, w.shape(), w)?)))
        }
        dispatch!(x.dtype(), "rms_norm backward", go(x, w, grad, self.eps))
    }
}

/// RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`, with a backward pass.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::rms_norm(x, weight, eps);
    }
    Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps })?)
}

// ---------------------------------------------------------------- softmax

struct Softmax;

fn softmax_row<T: Elem>(x: &[T], y: &mut [T]) {
    let max = x.iter().copied().fold(T::neg_infinity(), Float::max);
    let mut sum = T::zero();
    for (y, &v) in y.iter_mut().zip(x) {
        *y = (v - max).exp();
        sum += *y;
    }
    let inv = sum.recip();
    for y in y.iter_mut() {
        *y *= inv;
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "agentcore-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
            let x = contiguous_slice::<T>(s, l)?;
            let cols = l.dims().last().copied().unwrap_or(1);
            let mut out = vec![T::zero(); x.len()];
            for_rows(&mut out, cols, |r, y| softmax_row(&x[r * cols..(r + 1) * cols], y));
            Ok(T::to_cpu_storage_owned(out))
        }
        Ok((dispatch!(s.dtype(), "softmax", go(s, l))?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        fn go<T: Elem>(y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
            let cols = y.dims().last().copied().unwrap_or(1);
            let gx = with_data::<T, _>(y, |ys| {
                with_data::<T, _>(grad, |gs| {
                    let mut out = vec![T::zero(); ys.len()];
                    for_rows(&mut out, cols, |r, o| {
                        let yr = &ys[r * cols..(r + 1) * cols];
                        let gr = &gs[r * cols..(r + 1) * cols];
                        let d = dot(yr, gr);
                        for j in 0..cols {
                            o[j] = yr[j] * (gr[j] - d);
                        }
                    });
                    Ok(out)
                })
            })?;
            Ok(Some(from_vec(gx, y.shape(), y)?))
        }
        dispatch!(y.dtype(), "softmax backward", go(y, grad))
    }
}

/// Softmax over the last dimension, with a backward pass.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::softmax_last(x);
    }
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

// ---------------------------------------------------------------- SwiGLU

struct SwiGlu;

fn sigmoid<T: Elem>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "agentcore-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let (g, u) = (contiguous_slice::<T>(s1, l1)?, contiguous_slice::<T>(s2, l2)?);
            let cols = l1.dims().last().copied().unwrap_or(1);
            let mut out = vec![T::zero(); g.len()];
            for_rows(&mut out, cols, |r, y| {
                let (gr, ur) = (&g[r * cols..(r + 1) * cols], &u[r * cols..(r + 1) * cols]);
                for j in 0..cols {
                    y[j] = gr[j] * sigmoid(gr[j]) * ur[j];
                }
            });
            Ok(T::to_cpu_storage_owned(out))
        }
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape())
        }
        Ok((dispatch!(s1.dtype(), "swiglu", go(s1, l1, s2, l2))?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Elem>(
            gate: &Tensor,
            up: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let cols = gate.dims().last().copied().unwrap_or(1);
            let (d_gate, d_up) = with_data::<T, _>(gate, |gs| {
                with_data::<T, _>(up, |us| {
                    with_data::<T, _>(grad, |os| {
                        let mut d_gate = vec![T::zero(); gs.len()];
                        let mut d_up = vec![T::zero(); gs.len()];
                        for_rows(&mut d_gate, cols, |r, out| {
                            for j in 0..cols {
                                let i = r * cols + j;
                                let s = sigmoid(gs[i]);
                                out[j] = os[i] * us[i] * s * (T::one() + gs[i] * (T::one() - s));
                            }
                        });
                        for_rows(&mut d_up, cols, |r, out| {
                            for j in 0..cols {
                                let i = r * cols + j;
                                out[j] = os[i] * gs[i] * sigmoid(gs[i]);
                            }
                        });
                        Ok((d_gate, d_up))
                    })
                })
            })?;
            Ok((Some(from_vec(d_gate, gate.shape(), gate)?), Some(from_vec(d_up, up.shape(), up)?)))
        }
        dispatch!(gate.dtype(), "swiglu backward", go(gate, up, grad))
    }
}

/// `silu(gate) * up`, with a backward pass.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.device().is_cpu() {
        return composed::swiglu(gate, up);
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?)
}

// ---------------------------------------------------------------- target log-probs

struct TargetLogProbs;

impl CustomOp2 for TargetLogProbs {
    fn name(&self) -> &'static str {
        "agentcore-target-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(
            s1: &CpuStorage,
            l1: &Layout,
            targets: &[u32],
        ) -> candle_core::Result<CpuStorage> {
            let logits = contiguous_slice::<T>(s1, l1)?;
            let cols = l1.dims().last().copied().unwrap_or(1);
            let mut out = vec![T::zero(); targets.len()];
            let compute = |r: usize| -> T {
                let row = &logits[r * cols..(r + 1) * cols];
                let max = row.iter().copied().fold(T::neg_infinity(), Float::max);
                let log_z = max + row.iter().map(|&v| (v - max).exp()).sum::<T>().ln();
                row[targets[r] as usize] - log_z
            };
            if logits.len() >= MIN_PARALLEL_ELEMS {
                out.par_iter_mut().enumerate().for_each(|(r, o)| *o = compute(r));
            } else {
                out.iter_mut().enumerate().for_each(|(r, o)| *o = compute(r));
            }
            Ok(T::to_cpu_storage_owned(out))
        }
        let targets = contiguous_slice::<u32>(s2, l2)?;
        let cols = l1.dims().last().copied().unwrap_or(1);
        let rows = l1.shape().elem_count() / cols.max(1);
        if targets.len() != rows {
            candle_core::bail!("target_logprobs: {} targets for {rows} rows", targets.len())
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= cols) {
            candle_core::bail!("target_logprobs: target {bad} >= vocabulary {cols}")
        }
        let storage = dispatch!(s1.dtype(), "target_logprobs", go(s1, l1, targets))?;
        Ok((storage, l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        fn go<T: Elem>(
            logits: &Tensor,
            targets: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let cols = logits.dims().last().copied().unwrap_or(1);
            let gl = with_data::<T, _>(logits, |ls| {
                with_data::<u32, _>(targets, |ts| {
                    with_data::<T, _>(grad, |gs| {
                        let mut out = vec![T::zero(); ls.len()];
                        // d logp[t] / d logit_j = 1{j = t} - softmax_j.
                        for_rows(&mut out, cols, |r, o| {
                            let g = gs[r];
                            if g == T::zero() {
                                return;
                            }
                            softmax_row(&ls[r * cols..(r + 1) * cols], o);
                            for v in o.iter_mut() {
                                *v = -g * *v;
                            }
                            o[ts[r] as usize] += g;
                        });
                        Ok(out)
                    })
                })
            })?;
            Ok((Some(from_vec(gl, logits.shape(), logits)?), None))
        }
        dispatch!(logits.dtype(), "target_logprobs backward", go(logits, targets, grad))
    }
}

/// `log_softmax(logits)[..., target]`: logits (..., vocab), targets (...) u32; the result has
/// the targets' shape. Differentiable in the logits.
pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        return composed::target_logprobs(logits, targets);
    }
    Ok(logits.contiguous()?.apply_op2(&targets.contiguous()?, TargetLogProbs)?)
}

// ---------------------------------------------------------------- frozen matmul

/// `x @ weight^T` for a weight that is not trained (a LoRA base, a frozen head): candle's matmul
/// backward also computes the weight's gradient (one more matmul per layer, kept until the
/// backward pass ends, for a tensor nothing reads); this one's backward is `grad @ weight` only.
struct FrozenMatmul {
    weight: Tensor,
}

/// Copies a candle tensor's contiguous values out as CPU storage.
fn to_cpu_storage(t: &Tensor) -> candle_core::Result<CpuStorage> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => match cpu {
            CpuStorage::F32(_) => {
                Ok(CpuStorage::F32(contiguous_slice::<f32>(cpu, layout)?.to_vec()))
            }
            CpuStorage::F64(_) => {
                Ok(CpuStorage::F64(contiguous_slice::<f64>(cpu, layout)?.to_vec()))
            }
            other => candle_core::bail!("fused op: f32 or f64 only, got {:?}", other.dtype()),
        },
        _ => candle_core::bail!("fused ops run on the CPU"),
    }
}

/// The storage of values computed before their graph node was made: the forward of nodes
/// that only carry a result and a backward pass.
pub(crate) fn carry_values(values: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    Ok((to_cpu_storage(values)?, values.shape().clone()))
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "agentcore-frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = match s {
            CpuStorage::F32(_) => Tensor::from_slice(
                contiguous_slice::<f32>(s, l)?,
                l.shape(),
                &candle_core::Device::Cpu,
            )?,
            CpuStorage::F64(_) => Tensor::from_slice(
                contiguous_slice::<f64>(s, l)?,
                l.shape(),
                &candle_core::Device::Cpu,
            )?,
            other => candle_core::bail!("frozen_matmul: f32 or f64 only, got {:?}", other.dtype()),
        };
        let y = x.matmul(&self.weight.t()?)?;
        Ok((to_cpu_storage(&y)?, y.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x @ weight^T` for x (rows, in) and a weight (out, in) that is not trained: differentiable
/// in x only (its backward is `grad @ weight`, no gradient for the weight).
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return Ok(x.matmul(&weight.detach().t()?)?);
    }
    Ok(x.apply_op1(FrozenMatmul { weight: weight.detach() })?)
}

// ------------------------------------------------ output projection + log-probs, in chunks

/// `log_softmax(hidden @ weight^T / temperature)[row, target]` without the (rows x vocabulary)
/// logits: they are made `chunk_rows` rows at a time, forward and again in the backward pass
/// (recomputed, as gradient checkpointing does), so memory grows with the chunk, not with
/// rows x vocabulary. The forward values are computed before the node is made (`values`); the
/// node only carries them and the backward.
struct HeadLogProbs {
    targets: Tensor,
    temperature: f64,
    chunk_rows: usize,
    /// Whether the weight is trained (an untied head, full fine-tuning): its gradient is a
    /// (vocabulary x d_model) matrix, made only when something will read it.
    weight_grad: bool,
    values: Tensor,
}

/// One chunk's logits, temperature-scaled, without a graph.
fn chunk_logits(hidden: &Tensor, weight: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let logits = hidden.matmul(&weight.t()?)?;
    // Dividing by exactly 1 would only cost a pass over the logits.
    #[expect(clippy::float_cmp, reason = "exactly 1.0 is the identity")]
    if temperature == 1.0 { Ok(logits) } else { logits / temperature }
}

/// `(start, len)` of the chunks of `rows` rows.
fn row_chunks(rows: usize, chunk_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = chunk_rows.max(1);
    (0..rows).step_by(step).map(move |s| (s, step.min(rows - s)))
}

impl CustomOp2 for HeadLogProbs {
    fn name(&self) -> &'static str {
        "agentcore-head-logprobs"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        carry_values(&self.values)
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (hidden, weight) = (hidden.detach(), weight.detach());
        let rows = hidden.dim(0)?;
        let mut d_hidden = Vec::new();
        let mut d_weight: Option<Tensor> = None;
        for (start, len) in row_chunks(rows, self.chunk_rows) {
            let h = hidden.narrow(0, start, len)?;
            let logits = chunk_logits(&h, &weight, self.temperature)?;
            let targets = self.targets.narrow(0, start, len)?;
            let g = grad.narrow(0, start, len)?;
            let (Some(d_logits), _) = TargetLogProbs.bwd(&logits, &targets, &g, &g)? else {
                candle_core::bail!("head_logprobs: no gradient of the logits")
            };
            #[expect(clippy::float_cmp, reason = "exactly 1.0 is the identity")]
            let d_logits =
                if self.temperature == 1.0 { d_logits } else { (d_logits / self.temperature)? };
            d_hidden.push(d_logits.matmul(&weight)?);
            if self.weight_grad {
                let dw = d_logits.t()?.matmul(&h)?;
                d_weight = Some(match d_weight {
                    Some(acc) => (acc + dw)?,
                    None => dw,
                });
            }
        }
        Ok((Some(Tensor::cat(&d_hidden, 0)?), d_weight))
    }
}

/// `log_softmax(hidden @ weight^T / temperature)[r, targets[r]]` for hidden (rows, d), weight
/// (vocabulary, d), targets (rows) u32, computed `chunk_rows` rows at a time, forward and
/// again in the backward pass: the same values and gradients as [`target_logprobs`] of the full logits,
/// with at most `chunk_rows` x vocabulary logits alive at once. Differentiable in `hidden` and,
/// where it is trained, in `weight`.
pub fn head_target_logprobs(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk_rows: usize,
) -> Result<Tensor> {
    let (rows, _) = hidden.dims2()?;
    let targets = targets.contiguous()?;
    if !hidden.device().is_cpu() {
        return composed::head_target_logprobs(hidden, weight, &targets, temperature, chunk_rows);
    }
    let (h, w) = (hidden.detach(), weight.detach());
    let mut values = Vec::new();
    for (start, len) in row_chunks(rows, chunk_rows) {
        let logits = chunk_logits(&h.narrow(0, start, len)?, &w, temperature)?;
        values.push(target_logprobs(&logits, &targets.narrow(0, start, len)?)?);
    }
    let op = HeadLogProbs {
        targets,
        temperature,
        chunk_rows,
        weight_grad: weight.track_op(),
        values: Tensor::cat(&values, 0)?,
    };
    Ok(hidden.contiguous()?.apply_op2(weight, op)?)
}

/// The same functions composed from candle's differentiable tensor ops: the reference the
/// fused kernels are tested against.
/// On devices other than the CPU the public functions above run these.
pub mod composed {
    use candle_core::{D, Tensor};

    use super::{RotaryAngles, row_chunks};
    use crate::error::Result;

    /// [`super::head_target_logprobs`] from candle's ops: the chunks' logits stay in the graph
    /// for the backward pass.
    pub fn head_target_logprobs(
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        temperature: f64,
        chunk_rows: usize,
    ) -> Result<Tensor> {
        let mut parts = Vec::new();
        for (start, len) in row_chunks(hidden.dim(0)?, chunk_rows) {
            let logits = super::chunk_logits(&hidden.narrow(0, start, len)?, weight, temperature)?;
            parts.push(target_logprobs(&logits, &targets.narrow(0, start, len)?)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// [`super::rotary`] from candle's ops, with the pass's angles as tables on `x`'s device.
    pub fn rotary_angles(x: &Tensor, angles: &RotaryAngles) -> Result<Tensor> {
        let table = |v: &[f64]| -> Result<Tensor> {
            let data: Vec<f32> = v.iter().map(|&a| a as f32).collect();
            let t = Tensor::from_vec(data, (angles.b, angles.t, angles.half), x.device())?;
            Ok(t.to_dtype(x.dtype())?)
        };
        rotary(x, &table(&angles.cos)?, &table(&angles.sin)?)
    }

    /// RMSNorm from `sqr`/`mean`/`sqrt`.
    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?.broadcast_mul(weight)?)
    }

    /// Softmax from `max`/`exp`/`sum`.
    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    }

    /// `silu(gate) * up`.
    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((gate.silu()? * up)?)
    }

    /// Rotary embedding ("rotate half") of x (b, heads, t, hd) with `cos`/`sin` (b, t, hd/2).
    pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
    }

    /// Log-softmax and gather.
    pub fn target_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let max = logits.max_keepdim(D::Minus1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&log_z)?;
        Ok(logp.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?)
    }
}

// ---------------------------------------------------------------- attention (inference)

/// Attention for decoding, without gradients: one pass over the cached keys and values per
/// query row, instead of two batched matmuls of (batch x heads) tiny matrices.
struct DecodeAttention {
    /// Additive mask, (batch, t, keys) row-major (broadcast over heads).
    mask: Vec<f32>,
    /// Queries per head.
    t: usize,
    scale: f64,
}

impl candle_core::CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "agentcore-decode-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(
            op: &DecodeAttention,
            sq: &CpuStorage,
            lq: &Layout,
            sk: &CpuStorage,
            lk: &Layout,
            sv: &CpuStorage,
            lv: &Layout,
        ) -> candle_core::Result<CpuStorage> {
            let q = contiguous_slice::<T>(sq, lq)?;
            let (k, v) = (sk.as_slice::<T>()?, sv.as_slice::<T>()?);
            let (_, g, rows, hd) = lq.shape().dims4()?;
            let n_keys = lk.dims()[2];
            let (ks, vs) = (lk.stride(), lv.stride());
            if ks[3] != 1 || vs[3] != 1 {
                candle_core::bail!(
                    "decode attention: keys and values need unit stride in the head dim"
                )
            }
            let scale = T::from(op.scale).unwrap_or_else(T::one);
            let mut out = vec![T::zero(); q.len()];
            let work = |index: usize, o: &mut [T]| {
                let (bg, row) = (index / rows, index % rows);
                let (bi, gi) = (bg / g, bg % g);
                let qi = &q[index * hd..(index + 1) * hd];
                let mask = &op.mask[(bi * op.t + row % op.t) * n_keys..][..n_keys];
                let k0 = lk.start_offset() + bi * ks[0] + gi * ks[1];
                let v0 = lv.start_offset() + bi * vs[0] + gi * vs[1];
                let mut scores: Vec<T> = (0..n_keys)
                    .map(|j| {
                        let kj = &k[k0 + j * ks[2]..][..hd];
                        dot(qi, kj) * scale + T::from(mask[j]).unwrap_or_else(T::zero)
                    })
                    .collect();
                let max = scores.iter().copied().fold(T::neg_infinity(), Float::max);
                let mut sum = T::zero();
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = sum.recip();
                for (j, &p) in scores.iter().enumerate() {
                    let p = p * inv;
                    let vj = &v[v0 + j * vs[2]..][..hd];
                    for (o, &x) in o.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            };
            if q.len() * n_keys >= MIN_PARALLEL_ELEMS * 4 {
                out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| work(i, o));
            } else {
                out.chunks_mut(hd).enumerate().for_each(|(i, o)| work(i, o));
            }
            Ok(T::to_cpu_storage_owned(out))
        }
        let storage = dispatch!(sq.dtype(), "decode attention", go(self, sq, lq, sk, lk, sv, lv))?;
        Ok((storage, lq.shape().clone()))
    }
}

/// softmax(q k^T * scale + mask) v without gradients. `q` is (b, groups, rows, hd) where row r
/// is query `r % t` of its head; `k`, `v` are (b, groups, keys, hd), any batch/head/key strides
/// (views into a KV cache); `mask` is additive, (b, 1, t, keys).
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    t: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, _, _, n_keys) = mask.dims4()?;
    let mask = mask
        .broadcast_as((b, 1, t, n_keys))?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(q.contiguous()?.apply_op3_no_bwd(k, v, &DecodeAttention { mask, t, scale })?)
}

// ---------------------------------------------------------------- rotary embeddings

/// Angles of one forward pass: cos and sin per (batch row, position, pair), shared by the
/// heads. Built once per forward, used by every layer's q and k.
#[derive(Debug, Clone)]
pub struct RotaryAngles {
    cos: std::sync::Arc<Vec<f64>>,
    sin: std::sync::Arc<Vec<f64>>,
    b: usize,
    t: usize,
    half: usize,
}

impl RotaryAngles {
    /// From tables `cos`/`sin` (max_len, half) at `positions` (b, t).
    pub fn new(cos: &Tensor, sin: &Tensor, positions: &Tensor) -> Result<Self> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = cos.dim(1)?;
        let take = |table: &Tensor| -> Result<Vec<f64>> {
            Ok(table
                .index_select(&flat, 0)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?)
        };
        Ok(Self { cos: take(cos)?.into(), sin: take(sin)?.into(), b, t, half })
    }

    /// cos and sin of batch row `bi` at its `pos`-th position, one per pair.
    pub(crate) fn at(&self, bi: usize, pos: usize) -> (&[f64], &[f64]) {
        let base = (bi * self.t + pos) * self.half;
        (&self.cos[base..base + self.half], &self.sin[base..base + self.half])
    }
}

struct Rotary {
    angles: RotaryAngles,
    /// Rotate by -angle (the backward pass).
    inverse: bool,
}

fn rotate_rows<T: Elem>(x: &[T], angles: &RotaryAngles, heads: usize, inverse: bool) -> Vec<T> {
    let (t, half) = (angles.t, angles.half);
    let hd = 2 * half;
    let mut out = vec![T::zero(); x.len()];
    // Rows are (batch, head, position); the angles depend on batch and position.
    for_rows(&mut out, hd, |row, y| {
        let (bi, pos) = (row / (heads * t), row % t);
        let base = (bi * t + pos) * half;
        let xr = &x[row * hd..(row + 1) * hd];
        for i in 0..half {
            let c = T::from(angles.cos[base + i]).unwrap_or_else(T::one);
            let s = T::from(angles.sin[base + i]).unwrap_or_else(T::zero);
            let s = if inverse { -s } else { s };
            let (a, b) = (xr[i], xr[i + half]);
            y[i] = a * c - b * s;
            y[i + half] = b * c + a * s;
        }
    });
    out
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "agentcore-rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn go<T: Elem>(op: &Rotary, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
            let (b, h, t, hd) = l.shape().dims4()?;
            let a = &op.angles;
            if b != a.b || t != a.t || hd != 2 * a.half {
                candle_core::bail!(
                    "rotary: input {:?} does not fit angles ({}, {}, {})",
                    l.dims(),
                    a.b,
                    a.t,
                    a.half
                )
            }
            let x = contiguous_slice::<T>(s, l)?;
            Ok(T::to_cpu_storage_owned(rotate_rows(x, a, h, op.inverse)))
        }
        Ok((dispatch!(s.dtype(), "rotary", go(self, s, l))?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // A rotation's transpose is the rotation by minus the angle.
        let inverse = Rotary { angles: self.angles.clone(), inverse: !self.inverse };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}

/// Rotary position embedding ("rotate half" layout) of `x` (b, heads, t, hd), with a backward
/// pass.
pub fn rotary(x: &Tensor, angles: &RotaryAngles) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return composed::rotary_angles(x, angles);
    }
    Ok(x.contiguous()?.apply_op1(Rotary { angles: angles.clone(), inverse: false })?)
}
