//! The fused kernels equal their composed twins, in value and in gradient, on random inputs
//! (f32), including rows large enough to take the parallel path.

use agentcore_model::fused::{self, composed};
use candle_core::{DType, Device, Tensor, Var};

use crate::common::max_abs_diff;

fn randn(shape: &[usize], seed: u64) -> Var {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let d = Normal::new(0.0f32, 1.5).expect("normal");
    let data: Vec<f32> = (0..n).map(|_| d.sample(&mut r)).collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).expect("t")).expect("var")
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("vec")
}

/// Value and gradients (w.r.t. every input) of `sum(f(inputs) * probe)` for both versions.
fn compare(
    inputs: &[&Var],
    probe: &Tensor,
    fused_f: impl Fn() -> Tensor,
    composed_f: impl Fn() -> Tensor,
    tol: f32,
) {
    let (a, b) = (fused_f(), composed_f());
    let diff = max_abs_diff(&flat(&a), &flat(&b));
    assert!(diff < tol, "values differ by {diff}");
    let ga = (a * probe).and_then(|x| x.sum_all()).and_then(|x| x.backward()).expect("bwd");
    let gb = (b * probe).and_then(|x| x.sum_all()).and_then(|x| x.backward()).expect("bwd");
    for (i, v) in inputs.iter().enumerate() {
        let (x, y) = (ga.get(v.as_tensor()).expect("grad"), gb.get(v.as_tensor()).expect("grad"));
        let diff = max_abs_diff(&flat(x), &flat(y));
        let scale = flat(y).iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(diff < tol * scale, "input {i}: gradients differ by {diff} (scale {scale})");
    }
}

#[test]
fn fused_kernels_equal_composed_ops_in_value_and_gradient() {
    for (rows, cols) in [(3, 8), (256, 96)] {
        let x = randn(&[rows, cols], 1);
        let w = randn(&[cols], 2);
        let probe = randn(&[rows, cols], 3).as_tensor().clone();
        compare(
            &[&x, &w],
            &probe,
            || fused::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).expect("fused"),
            || composed::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).expect("composed"),
            1e-4,
        );
        compare(
            &[&x],
            &probe,
            || fused::softmax_last(x.as_tensor()).expect("fused"),
            || composed::softmax_last(x.as_tensor()).expect("composed"),
            1e-5,
        );
        let up = randn(&[rows, cols], 4);
        compare(
            &[&x, &up],
            &probe,
            || fused::swiglu(x.as_tensor(), up.as_tensor()).expect("fused"),
            || composed::swiglu(x.as_tensor(), up.as_tensor()).expect("composed"),
            1e-4,
        );
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7 + 3) % cols as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).expect("targets");
        let row_probe = randn(&[rows], 5).as_tensor().clone();
        compare(
            &[&x],
            &row_probe,
            || fused::target_logprobs(x.as_tensor(), &targets).expect("fused"),
            || composed::target_logprobs(x.as_tensor(), &targets).expect("composed"),
            1e-4,
        );
    }
}

#[test]
fn decode_attention_equals_matmul_softmax_matmul_on_cache_views() {
    // (b=2, groups=2, rows=3 (rep 3 x t 1), hd=8) against 5 keys taken as a view of a bigger cache.
    let (b, g, rep, t, hd, keys) = (2, 2, 3, 1, 8, 5);
    let q = randn(&[b, g, rep * t, hd], 1).as_tensor().clone();
    let cache_k = randn(&[b, g, 9, hd], 2).as_tensor().clone();
    let cache_v = randn(&[b, g, 9, hd], 3).as_tensor().clone();
    let (k, v) = (cache_k.narrow(2, 0, keys).expect("k"), cache_v.narrow(2, 0, keys).expect("v"));
    // Row 1 may not see its key 0.
    let mut mask = vec![0f32; b * t * keys];
    mask[keys] = -1e9;
    let mask = Tensor::from_vec(mask, (b, 1, t, keys), &Device::Cpu).expect("mask");
    let scale = 0.3;
    let ours = fused::decode_attention(&q, &k, &v, &mask, t, scale).expect("fused");
    let scores = (q.matmul(&k.t().expect("t")).expect("mm") * scale)
        .and_then(|s| s.reshape((b, g * rep, t, keys)))
        .and_then(|s| s.broadcast_add(&mask))
        .and_then(|s| s.reshape((b, g, rep * t, keys)))
        .expect("scores");
    let reference = composed::softmax_last(&scores).expect("softmax").matmul(&v).expect("mm");
    let diff = max_abs_diff(&flat(&ours), &flat(&reference));
    assert!(diff < 1e-5, "differs by {diff}");
}

#[test]
fn fused_rotary_equals_composed_rotary_in_value_and_gradient() {
    // Tables for 10 positions, 4 pairs; rows at arbitrary positions.
    let (b, h, t, half) = (2, 3, 5, 4);
    let angles: Vec<f32> = (0..10 * half).map(|i| (i as f32) * 0.37).collect();
    let table = Tensor::from_vec(angles, (10, half), &Device::Cpu).expect("t");
    let (cos_t, sin_t) = (table.cos().expect("cos"), table.sin().expect("sin"));
    let positions = Tensor::new(&[[0u32, 1, 2, 3, 4], [7, 8, 9, 2, 3]], &Device::Cpu).expect("pos");
    let rot = fused::RotaryAngles::new(&cos_t, &sin_t, &positions).expect("angles");
    let flat = positions.flatten_all().expect("flat");
    let pick = |tab: &Tensor| {
        tab.index_select(&flat, 0).and_then(|x| x.reshape((b, t, half))).expect("pick")
    };
    let (cos, sin) = (pick(&cos_t), pick(&sin_t));
    let x = randn(&[b, h, t, 2 * half], 11);
    let probe = randn(&[b, h, t, 2 * half], 12).as_tensor().clone();
    compare(
        &[&x],
        &probe,
        || fused::rotary(x.as_tensor(), &rot).expect("fused"),
        || composed::rotary(x.as_tensor(), &cos, &sin).expect("composed"),
        1e-5,
    );
    // What a GPU runs: the same angles as tables on the tensor's device.
    compare(
        &[&x],
        &probe,
        || fused::rotary(x.as_tensor(), &rot).expect("fused"),
        || composed::rotary_angles(x.as_tensor(), &rot).expect("composed"),
        1e-5,
    );
}

/// `log_softmax(hidden @ weight^T / temperature)[target]` from the full logits.
fn full_head_logprobs(hidden: &Tensor, weight: &Tensor, targets: &Tensor, t: f64) -> Tensor {
    let logits = (hidden.matmul(&weight.t().expect("t")).expect("mm") / t).expect("scale");
    composed::target_logprobs(&logits, targets).expect("composed")
}

#[test]
fn chunked_head_logprobs_equal_the_full_logits_in_value_and_every_gradient() {
    // Chunks of 1 row, uneven chunks (13 = 4 + 4 + 4 + 1), one chunk, a chunk past the end;
    // a trained head (its gradient checked too) at temperature 0.7.
    let (rows, d, vocab) = (13, 16, 50);
    let hidden = randn(&[rows, d], 11);
    let weight = randn(&[vocab, d], 12);
    let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 17 + 5) % vocab as u32).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).expect("targets");
    let probe = randn(&[rows], 13).as_tensor().clone();
    for chunk in [1, 4, rows, 100] {
        compare(
            &[&hidden, &weight],
            &probe,
            || {
                fused::head_target_logprobs(
                    hidden.as_tensor(),
                    weight.as_tensor(),
                    &targets,
                    0.7,
                    chunk,
                )
                .expect("chunked")
            },
            || full_head_logprobs(hidden.as_tensor(), weight.as_tensor(), &targets, 0.7),
            1e-5,
        );
        // What a GPU runs: the chunks composed from candle's ops.
        compare(
            &[&hidden, &weight],
            &probe,
            || {
                composed::head_target_logprobs(
                    hidden.as_tensor(),
                    weight.as_tensor(),
                    &targets,
                    0.7,
                    chunk,
                )
                .expect("composed chunks")
            },
            || full_head_logprobs(hidden.as_tensor(), weight.as_tensor(), &targets, 0.7),
            1e-5,
        );
    }
}

#[test]
fn a_gemma_shaped_head_is_chunked_with_the_same_values_and_hidden_gradient() {
    // Gemma 3 270M's tied head: 262,144 x 640, frozen under LoRA (a plain tensor, no gradient
    // asked for it). Deterministic weights of the embedding's scale, without a slow sampler.
    let (rows, d, vocab) = (6, 640, 262_144);
    let data: Vec<f32> = (0..vocab * d)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 2_001) as f32 / 1_000.0 - 1.0)
        .map(|v| v * 0.05)
        .collect();
    let weight = Tensor::from_vec(data, (vocab, d), &Device::Cpu).expect("weight");
    let hidden = randn(&[rows, d], 21);
    let targets = Tensor::new(&[0u32, 7, 262_143, 1_000, 131_072, 42], &Device::Cpu).expect("t");
    let probe = randn(&[rows], 22).as_tensor().clone();
    let chunked =
        fused::head_target_logprobs(hidden.as_tensor(), &weight, &targets, 1.0, 4).expect("chunk");
    // The unchunked computation the trainer ran before: the whole logits, then the fused
    // log-softmax (the same row reduction; candle's composed sum over 262,144 f32 terms rounds
    // differently, by ~1e-4).
    let logits = hidden.as_tensor().matmul(&weight.t().expect("t")).expect("logits");
    let full = fused::target_logprobs(&logits, &targets).expect("full");
    let diff = max_abs_diff(&flat(&chunked), &flat(&full));
    assert!(diff < 1e-5, "values differ by {diff}");
    let ga = (chunked * &probe).and_then(|x| x.sum_all()).and_then(|x| x.backward()).expect("b");
    let gb = (full * &probe).and_then(|x| x.sum_all()).and_then(|x| x.backward()).expect("b");
    let (x, y) =
        (ga.get(hidden.as_tensor()).expect("grad"), gb.get(hidden.as_tensor()).expect("g"));
    let diff = max_abs_diff(&flat(x), &flat(y));
    let scale = flat(y).iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(diff < 1e-5 * scale, "hidden gradients differ by {diff} (scale {scale})");
    // The frozen head gets no (vocabulary x d_model) gradient.
    assert!(ga.get(&weight).is_none());
}

#[test]
fn frozen_matmul_equals_matmul_and_leaves_the_weight_without_gradient() {
    let x = randn(&[7, 12], 31);
    let weight = randn(&[5, 12], 32).as_tensor().detach();
    let probe = randn(&[7, 5], 33).as_tensor().clone();
    let ours = fused::frozen_matmul(x.as_tensor(), &weight).expect("frozen");
    let reference = x.as_tensor().matmul(&weight.t().expect("t")).expect("mm");
    assert!(max_abs_diff(&flat(&ours), &flat(&reference)) < 1e-5);
    let ga = (ours * &probe).and_then(|v| v.sum_all()).and_then(|v| v.backward()).expect("b");
    let gb = (reference * &probe).and_then(|v| v.sum_all()).and_then(|v| v.backward()).expect("b");
    let (a, b) = (ga.get(x.as_tensor()).expect("grad"), gb.get(x.as_tensor()).expect("grad"));
    assert!(max_abs_diff(&flat(a), &flat(b)) < 1e-5);
    // candle's matmul also makes a (5 x 12) gradient for the constant weight's transpose,
    // kept in the store; the frozen one makes only x's (and the probe product's).
    let weight_sized = |g: &candle_core::backprop::GradStore| {
        g.get_ids().filter(|&&id| g.get_id(id).is_some_and(|t| t.dims() == [12, 5])).count()
    };
    assert_eq!(weight_sized(&gb), 1);
    assert_eq!(weight_sized(&ga), 0);
}
