//! Optimizer steps, checkpoints with exact resume, and a GRPO loop that really learns.

use agentcore_grpo::advantages::{AdvantageEstimator, ScaleRewards, group_advantages};
use agentcore_grpo::loss::{LossSettings, LossType};
use agentcore_model::checkpoint::{load_checkpoint, save_checkpoint};
use agentcore_model::decoder::Decoder;
use agentcore_model::generate::{generate, token_logprobs};
use agentcore_model::loss::{LossBatch, grpo_loss};
use agentcore_model::optim::{AdamW, AdamWConfig};
use agentcore_model::params::ParamStore;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::common::{rng, small_model};

#[test]
fn adamw_first_step_and_clipping() {
    let mut params = ParamStore::new();
    let w = params
        .insert("w", Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).expect("t"))
        .expect("insert");
    let c = Tensor::new(&[2.0f32, 0.0, -1.0], &Device::Cpu).expect("t");
    let config =
        AdamWConfig { learning_rate: 0.1, max_grad_norm: Some(1.0), ..AdamWConfig::default() };
    let mut opt = AdamW::new(&params, config).expect("optimizer");
    // loss = sum(w * c): gradient c, norm sqrt(5), clipped by 1/sqrt(5).
    let grads = (&w * &c).and_then(|x| x.sum_all()).expect("loss").backward().expect("backward");
    let stats = opt.step(&grads).expect("step");
    assert!((stats.grad_norm - 5f64.sqrt()).abs() < 1e-6);
    assert!((stats.clip_coefficient - 1.0 / (5f64.sqrt() + 1e-6)).abs() < 1e-9);
    // First Adam step moves each weight by lr * sign(g) (m_hat / sqrt(v_hat) = sign), 0 for g = 0.
    let after = params.get("w").expect("w").as_tensor().to_vec1::<f32>().expect("vec");
    let want = [1.0 - 0.1, -2.0, 0.5 + 0.1];
    for (a, b) in after.iter().zip(want) {
        assert!((a - b).abs() < 1e-5, "{after:?} vs {want:?}");
    }
    assert_eq!(opt.step_count(), 1);
}

#[test]
fn adamw_steps_with_weight_decay_follow_the_formula() {
    // Three steps of gradients c_k on w, against AdamW written out in f64.
    let mut params = ParamStore::new();
    let w0 = [0.3f32, -1.2, 2.0, 0.0, -0.7];
    let w = params.insert("w", Tensor::new(&w0, &Device::Cpu).expect("t")).expect("insert");
    let config = AdamWConfig {
        learning_rate: 0.05,
        weight_decay: 0.1,
        max_grad_norm: Some(2.0),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&params, config.clone()).expect("optimizer");
    let cs =
        [[1.0f32, -3.0, 0.5, 2.0, 0.0], [0.2, 0.1, -0.4, 1.0, -2.5], [-1.0, 2.0, 2.0, 0.3, 0.7]];
    let mut want: Vec<f64> = w0.iter().map(|&x| f64::from(x)).collect();
    let (mut m, mut v) = (vec![0.0f64; 5], vec![0.0f64; 5]);
    for (step, c) in cs.iter().enumerate() {
        let ct = Tensor::new(c, &Device::Cpu).expect("t");
        let grads = (&w * &ct).and_then(|x| x.sum_all()).expect("loss").backward().expect("bwd");
        opt.step(&grads).expect("step");
        let norm = c.iter().map(|&g| f64::from(g).powi(2)).sum::<f64>().sqrt();
        let clip = (2.0 / (norm + 1e-6)).min(1.0);
        let k = (step + 1) as i32;
        for i in 0..5 {
            let g = f64::from(c[i]) * clip;
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.999 * v[i] + 0.001 * g * g;
            let update =
                (m[i] / (1.0 - 0.9f64.powi(k))) / ((v[i] / (1.0 - 0.999f64.powi(k))).sqrt() + 1e-8);
            want[i] = want[i] * (1.0 - 0.05 * 0.1) - 0.05 * update;
        }
        let got = params.get("w").expect("w").as_tensor().to_vec1::<f32>().expect("vec");
        for (a, b) in got.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "step {step}: {got:?} vs {want:?}");
        }
    }
    // The moments are the state a checkpoint saves.
    let state = opt.state_tensors();
    let exp_avg = state.iter().find(|(n, _)| n == "exp_avg.w").expect("exp_avg").1.to_vec1::<f32>();
    for (a, b) in exp_avg.expect("vec").iter().zip(&m) {
        assert!((f64::from(*a) - b).abs() < 1e-6);
    }
}

/// One GRPO update on the small model: sample 2 groups of 4 completions, reward = fraction of
/// generated tokens with id < 20, group advantages, dapo loss, AdamW step. Returns mean reward.
pub(crate) fn grpo_step(
    model: &Decoder,
    opt: &mut AdamW,
    rng: &mut ChaCha8Rng,
    groups: usize,
    group_size: usize,
) -> f64 {
    let prompts: Vec<Vec<u32>> = (0..groups)
        .flat_map(|_| {
            let p: Vec<u32> = (0..4).map(|_| rng.random_range(3..40)).collect();
            std::iter::repeat_n(p, group_size)
        })
        .collect();
    let out = generate(model, &prompts, &crate::common::sampled(6), rng).expect("generate");
    let rewards: Vec<f64> = out
        .iter()
        .map(|g| g.tokens.iter().filter(|&&t| t < 20).count() as f64 / g.tokens.len() as f64)
        .collect();
    let grouped: Vec<Vec<f64>> = rewards.chunks(group_size).map(<[f64]>::to_vec).collect();
    let adv =
        group_advantages(&grouped, AdvantageEstimator::Grpo, ScaleRewards::Group).expect("adv");
    let sequences: Vec<Vec<u32>> =
        prompts.iter().zip(&out).map(|(p, g)| [p.clone(), g.tokens.clone()].concat()).collect();
    let old: Vec<Vec<f32>> = prompts
        .iter()
        .zip(&out)
        .map(|(p, g)| [vec![0.0; p.len()], g.logprobs.clone()].concat())
        .collect();
    let mask: Vec<Vec<bool>> = prompts
        .iter()
        .zip(&out)
        .map(|(p, g)| [vec![false; p.len()], vec![true; g.tokens.len()]].concat())
        .collect();
    let advantages: Vec<Vec<f32>> = sequences
        .iter()
        .enumerate()
        .map(|(i, s)| vec![adv.advantages[i / group_size][i % group_size] as f32; s.len()])
        .collect();
    let batch = LossBatch::from_rows(&old, None, &mask, &advantages, &Device::Cpu).expect("batch");
    let logp = token_logprobs(model, &sequences, 1.0, 0).expect("scores");
    let settings = LossSettings {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        max_completion_length: 6,
    };
    let (loss, _) = grpo_loss(&logp, &batch, &settings).expect("loss");
    opt.step(&loss.backward().expect("backward")).expect("step");
    rewards.iter().sum::<f64>() / rewards.len() as f64
}

pub(crate) fn weights(model: &Decoder) -> Vec<(String, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|(n, v)| {
            (n.clone(), v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("vec"))
        })
        .collect()
}

#[test]
fn resuming_from_a_checkpoint_takes_exactly_the_uninterrupted_step() {
    let config = AdamWConfig { learning_rate: 3e-3, ..AdamWConfig::default() };
    // Uninterrupted: three steps.
    let model = small_model(21);
    let mut opt = AdamW::new(model.params(), config.clone()).expect("optimizer");
    let mut job_rng = rng(99);
    for _ in 0..3 {
        grpo_step(&model, &mut opt, &mut job_rng, 2, 4);
    }
    let uninterrupted = weights(&model);

    // Interrupted: two steps, checkpoint, load into fresh objects, one more step.
    let model = small_model(21);
    let mut opt = AdamW::new(model.params(), config).expect("optimizer");
    let mut job_rng = rng(99);
    for _ in 0..2 {
        grpo_step(&model, &mut opt, &mut job_rng, 2, 4);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("checkpoint-2");
    save_checkpoint(&path, &model, &opt, &job_rng).expect("save");
    drop((model, opt, job_rng));
    let mut resumed = load_checkpoint(&path, &Device::Cpu).expect("load");
    assert_eq!(resumed.step, 2);
    grpo_step(&resumed.model, &mut resumed.optimizer, &mut resumed.rng, 2, 4);
    assert_eq!(weights(&resumed.model), uninterrupted, "bit-identical weights after resume");

    // The files are where the layout says, and the weights carry `format: pt`.
    for f in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(path.join(f).is_file(), "{f}");
    }
    let bytes = std::fs::read(path.join("model.safetensors")).expect("read");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    assert_eq!(
        meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str),
        Some("pt")
    );
}

/// Issue 14, finding 5: NaN (or all-NaN, or infinite) weights loaded silently and were trained on.
#[test]
fn non_finite_weights_are_refused() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().expect("temp dir");
    let model = small_model(1);
    let opt = AdamW::new(model.params(), AdamWConfig::default()).expect("optimizer");
    let path = dir.path().join("ckpt");
    save_checkpoint(&path, &model, &opt, &rng(0)).expect("save");
    load_checkpoint(&path, &Device::Cpu).expect("a finite checkpoint loads");
    let file = path.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).expect("read");
    for poison in [f32::NAN, f32::INFINITY] {
        let mut poisoned: HashMap<String, Tensor> = tensors.clone();
        let (name, t) = tensors.iter().max_by_key(|(_, t)| t.elem_count()).expect("a tensor");
        let mut values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = values.len().min(1024);
        values[..n].fill(poison);
        poisoned.insert(name.clone(), Tensor::from_vec(values, t.shape(), &Device::Cpu).unwrap());
        candle_core::safetensors::save(&poisoned, &file).expect("write");
        let err = load_checkpoint(&path, &Device::Cpu).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains(&format!("tensor {name} has {n} non-finite values")), "{text}");
        assert!(text.contains("model.safetensors"), "{text}");
    }
}

#[test]
fn a_corrupt_checkpoint_is_refused_with_its_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = small_model(1);
    let opt = AdamW::new(model.params(), AdamWConfig::default()).expect("optimizer");
    let path = dir.path().join("ckpt");
    save_checkpoint(&path, &model, &opt, &rng(0)).expect("save");
    std::fs::write(path.join("model.safetensors"), b"not safetensors").expect("corrupt");
    let err = load_checkpoint(&path, &Device::Cpu).err().expect("refused");
    assert!(!err.to_string().is_empty());
    std::fs::remove_file(path.join("trainer_state.json")).expect("remove");
    let err = load_checkpoint(&path, &Device::Cpu).err().expect("refused");
    assert!(err.to_string().contains("trainer_state.json"), "{err}");
}

#[test]
fn grpo_updates_raise_the_reward() {
    // Reward: the fraction of generated tokens with id < 20 (about half at random init).
    // Twenty GRPO updates must raise it clearly; the reward is measured on fresh samples.
    let model = small_model(31);
    let mut opt =
        AdamW::new(model.params(), AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() })
            .expect("optimizer");
    let mut job_rng = rng(5);
    let rewards: Vec<f64> =
        (0..20).map(|_| grpo_step(&model, &mut opt, &mut job_rng, 4, 8)).collect();
    let first = rewards[..3].iter().sum::<f64>() / 3.0;
    let last = rewards[17..].iter().sum::<f64>() / 3.0;
    assert!(last > first + 0.25 && last > 0.8, "reward did not rise: {rewards:?}");
}
