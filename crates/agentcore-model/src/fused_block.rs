//! One whole transformer block of a training pass as a single op with a hand-written backward
//! pass, for the plain Llama block that the built-in models train in full (pre-norm RMSNorm,
//! multi-head attention with rotary embeddings and a causal mask, SwiGLU MLP, no biases, no
//! adapters), in f32 on the CPU.
//!
//! The composed block is about 25 tensor ops; in candle's backward pass each one allocates its
//! gradient, zero-fills an accumulator and adds the two, and the attention runs one small
//! matmul per (batch row, head) on both threads in turn. Here the forward pass keeps exactly
//! what the backward pass reads, every matmul is one `gemm` call on strided views (no
//! transposed or head-split copies), the attention of each (batch row, head) runs on its own
//! thread, and the weights' gradients are written once. The values and gradients equal the
//! composed block's within f32 rounding (`tests/it/fused_block.rs`).
//!
//! A custom op takes at most three tensors, so the block's nine weights enter as one tensor,
//! their concatenation (a graph op: its backward pass hands each weight its part of the
//! gradient), and every caller's `backward()` sees the weights' gradients as usual.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::fused::{RotaryAngles, contiguous_slice, with_data};

/// The block's trained tensors, each (out, in) as candle stores a linear layer's weight.
#[derive(Clone)]
pub(crate) struct PlainBlock {
    pub input_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub pre_mlp_norm: Tensor,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl PlainBlock {
    /// The nine tensors, in the order of the concatenation.
    pub(crate) fn all(&self) -> [&Tensor; 9] {
        [
            &self.input_norm,
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.pre_mlp_norm,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }
}

/// Sizes of one pass.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    hd: usize,
    ff: usize,
}

impl Dims {
    fn n(&self) -> usize {
        self.b * self.t
    }
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    r1: Vec<f32>,
    n1: Vec<f32>,
    /// q, k (rotated) and v side by side: (n, 3d).
    qkv: Vec<f32>,
    /// Attention probabilities, (b, heads, t, t), zero above the diagonal.
    p: Vec<f32>,
    ctx: Vec<f32>,
    x1: Vec<f32>,
    r2: Vec<f32>,
    n2: Vec<f32>,
    /// gate and up side by side: (n, 2ff).
    gu: Vec<f32>,
    act: Vec<f32>,
}

struct FusedBlock {
    angles: RotaryAngles,
    dims: Dims,
    scale: f32,
    eps: f32,
    saved: Mutex<Option<Saved>>,
}

/// Where each weight lies in the concatenation: input_norm, q, k, v, o, pre_mlp_norm, gate,
/// up, down.
#[derive(Clone, Copy)]
struct Offsets {
    wn1: usize,
    q: usize,
    k: usize,
    v: usize,
    o: usize,
    wn2: usize,
    gate: usize,
    up: usize,
    down: usize,
    len: usize,
}

impl Dims {
    fn offsets(&self) -> Offsets {
        let (d, ff) = (self.d, self.ff);
        let wn1 = 0;
        let q = wn1 + d;
        let k = q + d * d;
        let v = k + d * d;
        let o = v + d * d;
        let wn2 = o + d * d;
        let gate = wn2 + d;
        let up = gate + ff * d;
        let down = up + ff * d;
        Offsets { wn1, q, k, v, o, wn2, gate, up, down, len: down + d * ff }
    }
}

/// A strided read-only matrix view: element (i, j) is `data[off + i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    off: usize,
    rs: usize,
    cs: usize,
}

fn view(data: &[f32], off: usize, rs: usize, cs: usize) -> View<'_> {
    View { data, off, rs, cs }
}

fn parallelism(work: usize) -> Parallelism {
    let threads = candle_core::utils::get_num_threads();
    // Below about a million multiply-adds the threads' start-up costs more than they save.
    if threads > 1 && work >= 1 << 20 { Parallelism::Rayon(threads) } else { Parallelism::None }
}

/// `dst[off + i * rs + j] (+)= sum_l a(i, l) * b(l, j)` for an (m, n) destination.
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_off, dst_rs): (usize, usize),
    accumulate: bool,
    a: View<'_>,
    b: View<'_>,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |v: &View<'_>, rows: usize, cols: usize| {
        v.off + (rows.max(1) - 1) * v.rs + (cols.max(1) - 1) * v.cs
    };
    // The bounds that make the raw call below sound.
    assert!(dst_off + (m - 1) * dst_rs + n - 1 < dst.len(), "matmul: destination too small");
    assert!(k == 0 || last(&a, m, k) < a.data.len(), "matmul: left operand too small");
    assert!(k == 0 || last(&b, k, n) < b.data.len(), "matmul: right operand too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[dst_off + i * dst_rs..dst_off + i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    let as_isize = |x: usize| isize::try_from(x).expect("stride fits isize");
    #[expect(unsafe_code, reason = "gemm takes raw strided pointers; the asserts above bound them")]
    // SAFETY: every element gemm reads or writes lies inside the slices (the asserts above: the
    // last index of each view is in bounds and strides are non-negative); `dst` is borrowed
    // mutably and does not alias `a` or `b` (shared borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dst_off),
            1,
            as_isize(dst_rs),
            accumulate,
            a.data.as_ptr().add(a.off),
            as_isize(a.cs),
            as_isize(a.rs),
            b.data.as_ptr().add(b.off),
            as_isize(b.cs),
            as_isize(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows of `cols` in parallel chunks: `f(row, row_slice)`.
fn rows_mut(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    const ROWS_PER_TASK: usize = 32;
    out.par_chunks_mut(ROWS_PER_TASK * cols).enumerate().for_each(|(task, chunk)| {
        for (i, row) in chunk.chunks_mut(cols).enumerate() {
            f(task * ROWS_PER_TASK + i, row);
        }
    });
}

/// RMSNorm forward: `n = x * r * w` with `r = 1 / sqrt(mean(x^2) + eps)` per row.
fn rms_forward(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let r: Vec<f32> = x
        .par_chunks(d)
        .map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            (ms + eps).sqrt().recip()
        })
        .collect();
    let mut n = vec![0.0; x.len()];
    rows_mut(&mut n, d, |i, out| {
        let row = &x[i * d..(i + 1) * d];
        for j in 0..d {
            out[j] = row[j] * r[i] * w[j];
        }
    });
    (r, n)
}

/// RMSNorm backward: adds the input's gradient to `dx`, returns the weight's.
fn rms_backward(dn: &[f32], x: &[f32], r: &[f32], w: &[f32], dx: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    rows_mut(dx, d, |i, out| {
        let (g, xr, ri) = (&dn[i * d..(i + 1) * d], &x[i * d..(i + 1) * d], r[i]);
        let gx: f32 = (0..d).map(|j| g[j] * w[j] * xr[j]).sum();
        let c = ri * ri * ri * gx / d as f32;
        for j in 0..d {
            out[j] += ri * g[j] * w[j] - xr[j] * c;
        }
    });
    // Partial sums over fixed chunks of rows, added in chunk order: the same rounding on every
    // run, whatever the threads did (a parallel `reduce` would pair them as work was stolen).
    const ROWS_PER_TASK: usize = 64;
    let rows = r.len();
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0.0f32; d];
            for i in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                for j in 0..d {
                    acc[j] += dn[i * d + j] * x[i * d + j] * r[i];
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0.0f32; d];
    for part in partials {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    dw
}

/// Rotates the `heads` head slices at `col0` of every (n, width) row, by minus the angle when
/// `inverse` (the backward pass).
fn rotate(
    m: &mut [f32],
    width: usize,
    col0: usize,
    dims: Dims,
    angles: &RotaryAngles,
    inverse: bool,
) {
    let (hd, half) = (dims.hd, dims.hd / 2);
    rows_mut(m, width, |row, out| {
        let (cos, sin) = angles.at(row / dims.t, row % dims.t);
        for h in 0..dims.heads {
            let s0 = col0 + h * hd;
            for i in 0..half {
                let (c, s) = (cos[i] as f32, if inverse { -sin[i] } else { sin[i] } as f32);
                let (a, b) = (out[s0 + i], out[s0 + i + half]);
                out[s0 + i] = a * c - b * s;
                out[s0 + i + half] = b * c + a * s;
            }
        }
    });
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl FusedBlock {
    fn forward(&self, x: &[f32], wt: &[f32]) -> (Vec<f32>, Saved) {
        let Dims { b, t, d, heads, hd, ff } = self.dims;
        let n = self.dims.n();
        let of = self.dims.offsets();
        let (r1, n1) = rms_forward(x, &wt[of.wn1..of.wn1 + d], self.eps);
        let mut qkv = vec![0.0; n * 3 * d];
        for (i, off) in [of.q, of.k, of.v].into_iter().enumerate() {
            // n1 (n, d) @ W^T, W (d_out, d_in) row-major.
            matmul(
                (n, d, d),
                &mut qkv,
                (i * d, 3 * d),
                false,
                view(&n1, 0, d, 1),
                view(wt, off, 1, d),
                parallelism(n * d * d),
            );
        }
        rotate(&mut qkv, 3 * d, 0, self.dims, &self.angles, false);
        rotate(&mut qkv, 3 * d, d, self.dims, &self.angles, false);
        // Attention, one (batch row, head) per task.
        let scale = self.scale;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..b * heads)
            .into_par_iter()
            .map(|bh| {
                let (bi, h) = (bh / heads, bh % heads);
                let base = bi * t * 3 * d + h * hd;
                let mut p = vec![0.0; t * t];
                matmul(
                    (t, t, hd),
                    &mut p,
                    (0, t),
                    false,
                    view(&qkv, base, 3 * d, 1),
                    view(&qkv, base + d, 1, 3 * d),
                    Parallelism::None,
                );
                for i in 0..t {
                    let row = &mut p[i * t..(i + 1) * t];
                    let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                    let mut sum = 0.0;
                    for v in &mut row[..=i] {
                        *v = (*v * scale - max).exp();
                        sum += *v;
                    }
                    row[..=i].iter_mut().for_each(|v| *v /= sum);
                    row[i + 1..].fill(0.0);
                }
                let mut o = vec![0.0; t * hd];
                matmul(
                    (t, hd, t),
                    &mut o,
                    (0, hd),
                    false,
                    view(&p, 0, t, 1),
                    view(&qkv, base + 2 * d, 3 * d, 1),
                    Parallelism::None,
                );
                (p, o)
            })
            .collect();
        let mut p = Vec::with_capacity(b * heads * t * t);
        let mut ctx = vec![0.0; n * d];
        for (bh, (ph, oh)) in per_head.into_iter().enumerate() {
            let (bi, h) = (bh / heads, bh % heads);
            p.extend_from_slice(&ph);
            for ti in 0..t {
                let dst = (bi * t + ti) * d + h * hd;
                ctx[dst..dst + hd].copy_from_slice(&oh[ti * hd..(ti + 1) * hd]);
            }
        }
        let mut x1 = x.to_vec();
        matmul(
            (n, d, d),
            &mut x1,
            (0, d),
            true,
            view(&ctx, 0, d, 1),
            view(wt, of.o, 1, d),
            parallelism(n * d * d),
        );
        let (r2, n2) = rms_forward(&x1, &wt[of.wn2..of.wn2 + d], self.eps);
        let mut gu = vec![0.0; n * 2 * ff];
        for (i, off) in [of.gate, of.up].into_iter().enumerate() {
            matmul(
                (n, ff, d),
                &mut gu,
                (i * ff, 2 * ff),
                false,
                view(&n2, 0, d, 1),
                view(wt, off, 1, d),
                parallelism(n * ff * d),
            );
        }
        let mut act = vec![0.0; n * ff];
        rows_mut(&mut act, ff, |i, out| {
            let row = &gu[i * 2 * ff..(i + 1) * 2 * ff];
            for j in 0..ff {
                let g = row[j];
                out[j] = g * sigmoid(g) * row[ff + j];
            }
        });
        let mut y = x1.clone();
        matmul(
            (n, d, ff),
            &mut y,
            (0, d),
            true,
            view(&act, 0, ff, 1),
            view(wt, of.down, 1, ff),
            parallelism(n * ff * d),
        );
        let saved = Saved { r1, n1, qkv, p, ctx, x1, r2, n2, gu, act };
        (y, saved)
    }

    /// The gradients of the input and of the concatenated weights.
    fn backward(&self, s: &Saved, x: &[f32], wt: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let Dims { b, t, d, heads, hd, ff } = self.dims;
        let n = self.dims.n();
        let of = self.dims.offsets();
        let mut dw = vec![0.0; of.len];
        // y = x1 + act @ Wd^T.
        matmul(
            (d, ff, n),
            &mut dw,
            (of.down, ff),
            false,
            view(dy, 0, 1, d),
            view(&s.act, 0, ff, 1),
            parallelism(n * ff * d),
        );
        let mut da = vec![0.0; n * ff];
        matmul(
            (n, ff, d),
            &mut da,
            (0, ff),
            false,
            view(dy, 0, d, 1),
            view(wt, of.down, ff, 1),
            parallelism(n * ff * d),
        );
        // act = silu(g) * u.
        let mut dgu = vec![0.0; n * 2 * ff];
        rows_mut(&mut dgu, 2 * ff, |i, out| {
            let row = &s.gu[i * 2 * ff..(i + 1) * 2 * ff];
            let dar = &da[i * ff..(i + 1) * ff];
            for j in 0..ff {
                let (g, u) = (row[j], row[ff + j]);
                let sg = sigmoid(g);
                out[j] = dar[j] * u * sg * (1.0 + g * (1.0 - sg));
                out[ff + j] = dar[j] * g * sg;
            }
        });
        drop(da);
        let mut dn2 = vec![0.0; n * d];
        for (i, off) in [of.gate, of.up].into_iter().enumerate() {
            matmul(
                (ff, d, n),
                &mut dw,
                (off, d),
                false,
                view(&dgu, i * ff, 1, 2 * ff),
                view(&s.n2, 0, d, 1),
                parallelism(n * ff * d),
            );
            matmul(
                (n, d, ff),
                &mut dn2,
                (0, d),
                i > 0,
                view(&dgu, i * ff, 2 * ff, 1),
                view(wt, off, d, 1),
                parallelism(n * ff * d),
            );
        }
        drop(dgu);
        let mut dx1 = dy.to_vec();
        let dwn2 = rms_backward(&dn2, &s.x1, &s.r2, &wt[of.wn2..of.wn2 + d], &mut dx1);
        dw[of.wn2..of.wn2 + d].copy_from_slice(&dwn2);
        drop(dn2);
        // x1 = x + ctx @ Wo^T.
        matmul(
            (d, d, n),
            &mut dw,
            (of.o, d),
            false,
            view(&dx1, 0, 1, d),
            view(&s.ctx, 0, d, 1),
            parallelism(n * d * d),
        );
        let mut dctx = vec![0.0; n * d];
        matmul(
            (n, d, d),
            &mut dctx,
            (0, d),
            false,
            view(&dx1, 0, d, 1),
            view(wt, of.o, d, 1),
            parallelism(n * d * d),
        );
        // Attention backward, one (batch row, head) per task: dq, dk, dv of each, (t, hd).
        let scale = self.scale;
        let per_head: Vec<[Vec<f32>; 3]> = (0..b * heads)
            .into_par_iter()
            .map(|bh| {
                let (bi, h) = (bh / heads, bh % heads);
                let base = bi * t * 3 * d + h * hd;
                let cbase = bi * t * d + h * hd;
                let p = &s.p[bh * t * t..(bh + 1) * t * t];
                // dP = dO @ V^T.
                let mut ds = vec![0.0; t * t];
                matmul(
                    (t, t, hd),
                    &mut ds,
                    (0, t),
                    false,
                    view(&dctx, cbase, d, 1),
                    view(&s.qkv, base + 2 * d, 1, 3 * d),
                    Parallelism::None,
                );
                // dV = P^T @ dO.
                let mut dv = vec![0.0; t * hd];
                matmul(
                    (t, hd, t),
                    &mut dv,
                    (0, hd),
                    false,
                    view(p, 0, 1, t),
                    view(&dctx, cbase, d, 1),
                    Parallelism::None,
                );
                // dS = P * (dP - rowsum(dP * P)) * scale (zero above the diagonal, as P).
                for i in 0..t {
                    let (pr, dr) = (&p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                    let dot: f32 = (0..=i).map(|j| pr[j] * dr[j]).sum();
                    for j in 0..t {
                        dr[j] = pr[j] * (dr[j] - dot) * scale;
                    }
                }
                // dQ = dS @ K, dK = dS^T @ Q.
                let mut dq = vec![0.0; t * hd];
                matmul(
                    (t, hd, t),
                    &mut dq,
                    (0, hd),
                    false,
                    view(&ds, 0, t, 1),
                    view(&s.qkv, base + d, 3 * d, 1),
                    Parallelism::None,
                );
                let mut dk = vec![0.0; t * hd];
                matmul(
                    (t, hd, t),
                    &mut dk,
                    (0, hd),
                    false,
                    view(&ds, 0, 1, t),
                    view(&s.qkv, base, 3 * d, 1),
                    Parallelism::None,
                );
                [dq, dk, dv]
            })
            .collect();
        drop(dctx);
        let mut dqkv = vec![0.0; n * 3 * d];
        for (bh, parts) in per_head.iter().enumerate() {
            let (bi, h) = (bh / heads, bh % heads);
            for (pi, part) in parts.iter().enumerate() {
                for ti in 0..t {
                    let dst = (bi * t + ti) * 3 * d + pi * d + h * hd;
                    dqkv[dst..dst + hd].copy_from_slice(&part[ti * hd..(ti + 1) * hd]);
                }
            }
        }
        drop(per_head);
        rotate(&mut dqkv, 3 * d, 0, self.dims, &self.angles, true);
        rotate(&mut dqkv, 3 * d, d, self.dims, &self.angles, true);
        let mut dn1 = vec![0.0; n * d];
        for (i, off) in [of.q, of.k, of.v].into_iter().enumerate() {
            matmul(
                (d, d, n),
                &mut dw,
                (off, d),
                false,
                view(&dqkv, i * d, 1, 3 * d),
                view(&s.n1, 0, d, 1),
                parallelism(n * d * d),
            );
            matmul(
                (n, d, d),
                &mut dn1,
                (0, d),
                i > 0,
                view(&dqkv, i * d, 3 * d, 1),
                view(wt, off, d, 1),
                parallelism(n * d * d),
            );
        }
        let dwn1 = rms_backward(&dn1, x, &s.r1, &wt[of.wn1..of.wn1 + d], &mut dx1);
        dw[of.wn1..of.wn1 + d].copy_from_slice(&dwn1);
        (dx1, dw)
    }
}

impl CustomOp2 for FusedBlock {
    fn name(&self) -> &'static str {
        "agentcore-fused-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, wt) = (contiguous_slice::<f32>(s1, l1)?, contiguous_slice::<f32>(s2, l2)?);
        let Dims { b, t, d, .. } = self.dims;
        if x.len() != b * t * d || wt.len() != self.dims.offsets().len {
            candle_core::bail!("fused block: input or weights of the wrong size")
        }
        let (y, saved) = self.forward(x, wt);
        *self.saved.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Some(saved);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let saved = saved
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("fused block: no forward".into()))?;
        let (dx, dw) = with_data::<f32, _>(grad, |dy| {
            with_data(x, |xs| with_data(weights, |wt| Ok(self.backward(saved, xs, wt, dy))))
        })?;
        let dx = x.track_op().then(|| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?;
        let dw = weights
            .track_op()
            .then(|| Tensor::from_vec(dw, weights.shape(), weights.device()))
            .transpose()?;
        Ok((dx, dw))
    }
}

/// Whether `t` is an f32 tensor in CPU memory.
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.dtype() == candle_core::DType::F32 && matches!(&*t.storage_and_layout().0, Storage::Cpu(_))
}

/// The block on `x` (b, t, d) of a causal training pass from position 0 (rotary `angles` of
/// positions 0..t), in one op.
pub(crate) fn plain_block(
    w: &PlainBlock,
    x: &Tensor,
    angles: &RotaryAngles,
    (heads, head_dim): (usize, usize),
    scale: f64,
    eps: f64,
) -> crate::error::Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let ff = w.gate.dim(0)?;
    let parts =
        w.all().into_iter().map(Tensor::flatten_all).collect::<candle_core::Result<Vec<_>>>()?;
    let weights = Tensor::cat(&parts, 0)?;
    let op = FusedBlock {
        angles: angles.clone(),
        dims: Dims { b, t, d, heads, hd: head_dim, ff },
        scale: scale as f32,
        eps: eps as f32,
        saved: Mutex::new(None),
    };
    Ok(x.contiguous()?.apply_op2(&weights, op)?)
}
