//! Gradients: every parameter receives one (catches candle's fused ops, which drop them), and
//! they match finite differences.

use agentcore_model::decoder::Decoder;
use agentcore_model::generate::token_logprobs;
use candle_core::{DType, Tensor};

use crate::common::{assert_every_param_has_gradient, random_sequences, small_model, small_models};

fn loss_of(model: &Decoder, sequences: &[Vec<u32>]) -> Tensor {
    // Sum of the log-probs of all real tokens: a scalar every weight influences.
    let logp = token_logprobs(model, sequences, 1.0, 0).expect("scores");
    logp.sum_all().expect("sum")
}

#[test]
fn every_parameter_receives_a_non_zero_gradient() {
    for (arch, model) in small_models(1) {
        let sequences = random_sequences(&[12, 7, 9], 40, 2);
        let grads = loss_of(&model, &sequences).backward().expect("backward");
        let checked = assert_every_param_has_gradient(&model, &grads, arch);
        assert_eq!(checked, model.config().weight_shapes().len(), "{arch}");
    }
    // The tiny model: embed, 9 per layer x 2, final norm, head.
    assert_eq!(small_model(1).params().len(), 1 + 9 * 2 + 1 + 1);
}

#[test]
fn gradients_match_finite_differences() {
    for (_, model) in small_models(3) {
        check_finite_differences(&model.to_dtype(DType::F64).expect("f64 copy"));
    }
}

fn check_finite_differences(model: &Decoder) {
    // In f64, central differences with h = 1e-5 are accurate to ~1e-8 on these models.

    let sequences = random_sequences(&[6, 4], 40, 4);
    let grads = loss_of(model, &sequences).backward().expect("backward");
    let loss_value = |m: &Decoder| loss_of(m, &sequences).to_scalar::<f64>().expect("scalar");
    let arch = format!("{:?}", model.config().architecture);
    let h = 1e-5;
    let mut compared = 0;
    for (name, var) in model.params().iter() {
        let analytic = grads
            .get(var.as_tensor())
            .expect("gradient")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f64>()
            .expect("vec");
        let original = var.as_tensor().copy().expect("copy");
        let flat = original.flatten_all().expect("flat").to_vec1::<f64>().expect("vec");
        // Three coordinates per tensor, spread over it.
        for &i in &[0, flat.len() / 2, flat.len() - 1] {
            let mut bumped = flat.clone();
            bumped[i] += h;
            var.set(
                &Tensor::from_vec(bumped.clone(), original.shape(), original.device()).expect("t"),
            )
            .expect("set");
            let up = loss_value(model);
            bumped[i] -= 2.0 * h;
            var.set(&Tensor::from_vec(bumped, original.shape(), original.device()).expect("t"))
                .expect("set");
            let down = loss_value(model);
            var.set(&original).expect("restore");
            let numeric = (up - down) / (2.0 * h);
            let tolerance = 1e-6 + 1e-4 * numeric.abs().max(analytic[i].abs());
            assert!(
                (numeric - analytic[i]).abs() <= tolerance,
                "{arch} `{name}`[{i}]: analytic {} vs numeric {numeric}",
                analytic[i]
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * model.params().len());
}

#[test]
fn chunked_logits_give_the_same_log_probs_loss_and_every_gradient() {
    // Every architecture (the Gemma-like one ties its head to the embedding), chunks of 3
    // positions (uneven: 3 sequences x 13 positions) against the whole logits at once.
    use agentcore_model::generate::token_logprobs_chunked;
    for (arch, model) in small_models(3) {
        let sequences = random_sequences(&[14, 6, 10], 40, 4);
        let vocab = model.config().vocab_size;
        let three_rows = 3 * vocab * 4;
        let chunked = token_logprobs_chunked(&model, &sequences, 0.8, 0, three_rows).expect("c");
        let whole = token_logprobs_chunked(&model, &sequences, 0.8, 0, usize::MAX).expect("w");
        let flat = |t: &Tensor| {
            t.to_dtype(DType::F32).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).expect("v")
        };
        let diff = crate::common::max_abs_diff(&flat(&chunked), &flat(&whole));
        assert!(diff < 1e-5, "{arch}: log-probs differ by {diff}");
        let (lc, lw) = (chunked.sum_all().expect("sum"), whole.sum_all().expect("sum"));
        let (vc, vw) = (flat(&lc)[0], flat(&lw)[0]);
        assert!((vc - vw).abs() < 1e-5 * vw.abs().max(1.0), "{arch}: loss {vc} vs {vw}");
        let (gc, gw) = (lc.backward().expect("bwd"), lw.backward().expect("bwd"));
        for (name, var) in model.params().iter() {
            let (a, b) = (gc.get(var.as_tensor()), gw.get(var.as_tensor()));
            let (a, b) = (a.expect("chunked grad"), b.unwrap_or_else(|| panic!("{name}")));
            let diff = crate::common::max_abs_diff(&flat(a), &flat(b));
            let scale = flat(b).iter().fold(1f32, |m, v| m.max(v.abs()));
            assert!(diff < 1e-5 * scale, "{arch} {name}: gradients differ by {diff} ({scale})");
        }
    }
}

#[test]
fn activation_checkpointing_gives_the_same_log_probs_and_every_gradient() {
    // Every architecture trained whole, and one with LoRA adapters (a frozen base, the first
    // block's input untracked): checkpointed blocks against the plain graph.
    use agentcore_model::decoder::LoraConfig;
    let mut models = small_models(5);
    let mut lora = small_model(6);
    let all = agentcore_model::decoder::LORA_MODULES.map(String::from).to_vec();
    let config = LoraConfig { target_modules: all, ..LoraConfig::default() };
    lora.enable_lora(&config, &mut crate::common::rng(7)).expect("lora");
    models.push(("llama+lora", lora));
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F32).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).expect("v")
    };
    for (arch, mut model) in models {
        let sequences = random_sequences(&[11, 5, 8], 40, 8);
        let mut runs = Vec::new();
        for on in [false, true] {
            model.set_activation_checkpointing(on);
            let logp = token_logprobs(&model, &sequences, 1.0, 0).expect("scores");
            // A loss whose gradient is not all-equal per position.
            let probe = Tensor::arange(0f32, logp.elem_count() as f32, logp.device())
                .and_then(|p| p.reshape(logp.shape()))
                .and_then(|p| p.sin())
                .expect("probe");
            let loss = (&logp * probe).and_then(|l| l.sum_all()).expect("loss");
            let grads = model.backward(&loss).expect("backward");
            runs.push((flat(&logp), grads));
        }
        let diff = crate::common::max_abs_diff(&runs[0].0, &runs[1].0);
        assert!(diff < 1e-5, "{arch}: log-probs differ by {diff}");
        let mut compared = 0;
        for (name, var) in model.params().iter() {
            let plain = runs[0].1.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch} {name}"));
            let ckpt =
                runs[1].1.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch} {name}: none"));
            let (a, b) = (flat(ckpt), flat(plain));
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = crate::common::max_abs_diff(&a, &b);
            assert!(diff < 1e-5 * scale, "{arch} {name}: gradients differ by {diff}");
            compared += 1;
        }
        assert_eq!(compared, model.params().len(), "{arch}");
        assert!(compared > 0);
    }
}
