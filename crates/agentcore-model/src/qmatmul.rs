//! Int8 matrix products for decoding: a few activation rows against a large frozen matrix.
//!
//! Weights are held as blocks of 32 signed 8-bit values with one f32 scale each (GGUF's Q8_0
//! scheme, with an f32 scale instead of an f16 one); the activations are quantized the same way
//! on every call. Each weight block is loaded once for up to 8 activation rows, so decoding 8
//! sequences reads the weights once per step, as decoding one does (candle's quantized matmul
//! walks the weights once per row, which made batch 8 barely faster than batch 1).
//!
//! On x86-64 the kernel is picked at run time: AVX-512 VNNI (on 256-bit vectors) where present,
//! else AVX2 + FMA; elsewhere a portable kernel. The SIMD kernels compute the same integer block
//! dot products as the portable one; only the order of the f32 sums differs.

use rayon::prelude::*;

/// Values per quantization block (as in GGUF's Q8_0).
pub const BLOCK: usize = 32;

/// Activation rows one kernel call takes at once; more are processed in groups.
const MAX_GROUP: usize = 8;

/// A matrix of `rows x cols` in 8-bit blocks; multiplies `x @ W^T`.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// One per block, row-major: `rows * cols / BLOCK`.
    scales: Vec<f32>,
    /// Row-major, `rows * cols`.
    quants: Vec<i8>,
}

/// Quantizes one block: the scale maps the largest magnitude to 127.
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        // |v * inv| <= 127 by construction, so the cast cannot wrap.
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Quantizes row-major values whose rows are `cols` long (a multiple of [`BLOCK`]).
fn quantize_rows(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut quants = vec![0i8; x.len()];
    let scales = x
        .chunks_exact(BLOCK)
        .zip(quants.chunks_exact_mut(BLOCK))
        .map(|(x, q)| quantize_block(x, q))
        .collect();
    (quants, scales)
}

/// Which kernel runs the block dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512 VNNI on 256-bit vectors (with AVX2 + FMA).
    Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let all = Self::available();
            *all.last().unwrap_or(&Self::Portable)
        })
    }

    /// Every kernel this CPU runs, slowest first (the portable one always).
    pub fn available() -> Vec<Self> {
        #[cfg_attr(
            not(target_arch = "x86_64"),
            expect(unused_mut, reason = "only x86-64 adds SIMD kernels")
        )]
        let mut out = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Self::Avx2);
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    out.push(Self::Vnni);
                }
            }
        }
        out
    }

    /// Whether this is a SIMD kernel (faster than candle's quantized matmul for every row count).
    pub fn is_simd(self) -> bool {
        self != Self::Portable
    }
}

impl Q8Matrix {
    /// Quantizes a row-major `rows x cols` matrix; `None` when `cols` is not a multiple of
    /// [`BLOCK`] or the length does not match.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || w.len() != rows.checked_mul(cols)? {
            return None;
        }
        let (quants, scales) = quantize_rows(w);
        Some(Self { rows, cols, scales, quants })
    }

    /// Output size (rows of W).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input size (columns of W).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x @ W^T` for row-major `x` of `m x cols`: row-major `m x rows`, on the fastest kernel.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(Kernel::detect(), x, m)
    }

    /// [`Self::matmul`] on a given kernel (one from [`Kernel::available`]).
    ///
    /// # Panics
    /// When `x` is not `m x cols`, or the kernel does not run on this CPU.
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        assert_eq!(x.len(), m * self.cols, "x must be m x cols");
        assert!(Kernel::available().contains(&kernel), "{kernel:?} does not run on this CPU");
        let mut out = vec![0f32; m * self.rows];
        if m == 0 || self.rows == 0 {
            return out;
        }
        let (xq, xd) = quantize_rows(x);
        // Tasks take contiguous runs of weight rows; each writes its columns of every output row.
        let chunk = (self.rows / (rayon::current_num_threads() * 8)).clamp(16, 2048);
        let mut columns: Vec<_> = out.chunks_mut(self.rows).map(|r| r.chunks_mut(chunk)).collect();
        let tasks: Vec<Vec<&mut [f32]>> = (0..self.rows.div_ceil(chunk))
            .map(|_| columns.iter_mut().filter_map(Iterator::next).collect())
            .collect();
        let (cols, nb) = (self.cols, self.cols / BLOCK);
        tasks.into_par_iter().enumerate().for_each(|(t, mut outs)| {
            let j0 = t * chunk;
            let n = outs[0].len();
            let wq = &self.quants[j0 * cols..(j0 + n) * cols];
            let wd = &self.scales[j0 * nb..(j0 + n) * nb];
            for (g, outs) in outs.chunks_mut(MAX_GROUP).enumerate() {
                let rows = g * MAX_GROUP..g * MAX_GROUP + outs.len();
                let xq = &xq[rows.start * cols..rows.end * cols];
                let xd = &xd[rows.start * nb..rows.end * nb];
                run(kernel, Rows { wq, wd, cols, xq, xd }, outs);
            }
        });
        out
    }
}

/// One kernel call: `n` weight rows (quants and scales) against up to [`MAX_GROUP`] activation
/// rows; writes `outs[i][j]` for activation row i and weight row j.
#[derive(Clone, Copy)]
struct Rows<'a> {
    wq: &'a [i8],
    wd: &'a [f32],
    cols: usize,
    xq: &'a [i8],
    xd: &'a [f32],
}

fn run(kernel: Kernel, r: Rows<'_>, outs: &mut [&mut [f32]]) {
    match kernel {
        Kernel::Portable => portable(r, outs),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Vnni => x86::run(kernel, r, outs),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2 | Kernel::Vnni => unreachable!("not available off x86-64"),
    }
}

fn portable(r: Rows<'_>, outs: &mut [&mut [f32]]) {
    let nb = r.cols / BLOCK;
    for (j, (wq, wd)) in r.wq.chunks_exact(r.cols).zip(r.wd.chunks_exact(nb)).enumerate() {
        for (out, (xq, xd)) in outs.iter_mut().zip(r.xq.chunks_exact(r.cols).zip(r.xd.chunks(nb))) {
            let mut acc = 0f32;
            for ((w, x), (dw, dx)) in
                wq.chunks_exact(BLOCK).zip(xq.chunks_exact(BLOCK)).zip(wd.iter().zip(xd))
            {
                let dot: i32 = w.iter().zip(x).map(|(a, b)| i32::from(*a) * i32::from(*b)).sum();
                acc += dot as f32 * (dw * dx);
            }
            out[j] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256i, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehdup_ps, _mm_movehl_ps,
        _mm256_castps256_ps128, _mm256_cvtepi32_ps, _mm256_dpbusd_epi32, _mm256_extractf128_ps,
        _mm256_fmadd_ps, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16,
        _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_sign_epi8,
    };

    use super::{BLOCK, Kernel, MAX_GROUP, Rows};

    /// Dispatches on the group size (a constant in each kernel instance, so its accumulators
    /// stay in registers).
    #[expect(
        unsafe_code,
        reason = "calls #[target_feature] kernels; `Kernel::available` checked the CPU has them"
    )]
    pub(super) fn run(kernel: Kernel, r: Rows<'_>, outs: &mut [&mut [f32]]) {
        macro_rules! dispatch {
            ($f:ident) => {
                match outs.len() {
                    // SAFETY: the caller only passes kernels from `Kernel::available`, which
                    // detected the features these functions enable.
                    1 => unsafe { $f::<1>(r, outs) },
                    2 => unsafe { $f::<2>(r, outs) },
                    3 => unsafe { $f::<3>(r, outs) },
                    4 => unsafe { $f::<4>(r, outs) },
                    5 => unsafe { $f::<5>(r, outs) },
                    6 => unsafe { $f::<6>(r, outs) },
                    7 => unsafe { $f::<7>(r, outs) },
                    8 => unsafe { $f::<8>(r, outs) },
                    n => unreachable!("groups have 1..={MAX_GROUP} rows, not {n}"),
                }
            };
        }
        match kernel {
            Kernel::Vnni => dispatch!(vnni),
            _ => dispatch!(avx2),
        }
    }

    #[inline]
    fn load(q: &[i8]) -> __m256i {
        let block: [i8; BLOCK] = q.try_into().expect("a block is 32 values");
        bytemuck::cast(block)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Generates one kernel; `$dot(aw, sx)` gives eight i32 sums of unsigned |w| x signed x.
    macro_rules! kernel {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            fn $name<const M: usize>(r: Rows<'_>, outs: &mut [&mut [f32]]) {
                let nb = r.cols / BLOCK;
                let xq: [&[i8]; M] = std::array::from_fn(|i| &r.xq[i * r.cols..(i + 1) * r.cols]);
                let xd: [&[f32]; M] = std::array::from_fn(|i| &r.xd[i * nb..(i + 1) * nb]);
                for (j, (wq, wd)) in
                    r.wq.chunks_exact(r.cols).zip(r.wd.chunks_exact(nb)).enumerate()
                {
                    let mut acc = [_mm256_setzero_ps(); M];
                    for (b, (w, dw)) in wq.chunks_exact(BLOCK).zip(wd).enumerate() {
                        let w = load(w);
                        // |w| as unsigned bytes, and x with w's sign: their products are w * x.
                        let aw = _mm256_sign_epi8(w, w);
                        for i in 0..M {
                            let x = load(&xq[i][b * BLOCK..(b + 1) * BLOCK]);
                            let dot = $dot(aw, _mm256_sign_epi8(x, w));
                            let scale = _mm256_set1_ps(dw * xd[i][b]);
                            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[i]);
                        }
                    }
                    for (out, acc) in outs.iter_mut().zip(acc) {
                        out[j] = hsum(acc);
                    }
                }
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(aw: __m256i, sx: __m256i) -> __m256i {
        // Pairs of u8 x i8 products in i16 (at most 2 x 128 x 127: no saturation), then i32.
        _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    fn dot_vnni(aw: __m256i, sx: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
    }

    kernel!(avx2, "avx2,fma", dot_avx2);
    kernel!(vnni, "avx2,fma,avx512vnni,avx512vl", dot_vnni);
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn dense(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let m = x.len() / cols;
        let mut out = vec![0f32; m * rows];
        for i in 0..m {
            for j in 0..rows {
                out[i * rows + j] =
                    (0..cols).map(|k| x[i * cols + k] * w[j * cols + k]).sum::<f32>();
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_f32_product_for_every_row_count() {
        let (rows, cols) = (75, 96);
        let w = random(rows * cols, 1);
        let q = Q8Matrix::quantize(&w, rows, cols).unwrap();
        for m in [1, 2, 3, 7, 8, 9, 16, 17] {
            let x = random(m * cols, 100 + m as u64);
            let want = dense(&w, &x, rows, cols);
            let portable = q.matmul_with(Kernel::Portable, &x, m);
            for kernel in Kernel::available() {
                let got = q.matmul_with(kernel, &x, m);
                for (k, ((g, p), w)) in got.iter().zip(&portable).zip(&want).enumerate() {
                    // Same integer block sums as the portable kernel: only the f32 order differs.
                    assert!((g - p).abs() <= 1e-4 * (1.0 + p.abs()), "{kernel:?} m={m} [{k}]");
                    // 8-bit weights and activations: about 1% of the typical magnitude (~5.7).
                    assert!((g - w).abs() < 0.1, "{kernel:?} m={m} [{k}]: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // All weights -1 and activations +1 (and the reverse): every product is -127 * 127,
        // the case where 16-bit pair sums could overflow.
        let cols = 64;
        for (wv, xv) in [(-1.0f32, 1.0f32), (1.0, -1.0), (1.0, 1.0)] {
            let q = Q8Matrix::quantize(&vec![wv; 3 * cols], 3, cols).unwrap();
            let x = vec![xv; 2 * cols];
            for kernel in Kernel::available() {
                let got = q.matmul_with(kernel, &x, 2);
                for g in got {
                    assert!((g - wv * xv * cols as f32).abs() < 1e-3, "{kernel:?}: {g}");
                }
            }
        }
    }

    #[test]
    fn zero_blocks_and_bad_shapes() {
        let q = Q8Matrix::quantize(&[0.0; 64], 2, 32).unwrap();
        assert_eq!(q.matmul(&[1.0; 32], 1), [0.0, 0.0]);
        assert!(Q8Matrix::quantize(&[0.0; 60], 2, 30).is_none(), "30 columns is not whole blocks");
        assert!(Q8Matrix::quantize(&[0.0; 63], 2, 32).is_none(), "length must be rows x cols");
    }
}
