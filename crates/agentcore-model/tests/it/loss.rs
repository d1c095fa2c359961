//! The tensor GRPO loss equals the f64 reference of `agentcore-grpo` on random inputs, for every
//! `loss_type` and `scale_rewards`.

use agentcore_grpo::advantages::{AdvantageEstimator, ScaleRewards, group_advantages};
use agentcore_grpo::loss::{LossSettings, LossType, SequenceLogProbs, reference_loss};
use agentcore_model::loss::{LossBatch, grpo_loss};
use candle_core::{Device, Tensor, Var};
use rand::Rng;

use crate::common::rng;

struct Case {
    sequences: Vec<SequenceLogProbs>,
    logp_rows: Vec<Vec<f32>>,
    batch: LossBatch,
}

/// Two groups of four sequences of random lengths, log-probs in [-6, 0] (some far from the old
/// ones, so that clipping happens), binary rewards -> advantages with `scale`.
fn random_case(seed: u64, scale: ScaleRewards, with_reference: bool) -> Case {
    let mut r = rng(seed);
    let n = 8;
    let rewards: Vec<Vec<f64>> =
        (0..2).map(|_| (0..4).map(|_| f64::from(u8::from(r.random_bool(0.5)))).collect()).collect();
    let adv =
        group_advantages(&rewards, AdvantageEstimator::Grpo, scale).expect("valid").advantages;
    let mut sequences = Vec::new();
    for i in 0..n {
        let len = r.random_range(3..20);
        // Values rounded to f32 first, so both implementations see the same inputs.
        let mut draw = |lo: f64, hi: f64| {
            (0..len).map(|_| f64::from(r.random_range(lo..hi) as f32)).collect::<Vec<f64>>()
        };
        let old_logp = draw(-6.0, 0.0);
        let shift = draw(-0.6, 0.6);
        let logp: Vec<f64> =
            old_logp.iter().zip(&shift).map(|(o, s)| f64::from((o + s) as f32)).collect();
        let ref_logp = with_reference.then(|| draw(-6.0, 0.0));
        let prompt = r.random_range(1..len);
        let mask: Vec<bool> = (0..len).map(|t| t >= prompt && r.random_bool(0.9)).collect();
        let a = f64::from(adv[i / 4][i % 4] as f32);
        sequences.push(SequenceLogProbs {
            logp,
            old_logp,
            ref_logp,
            mask,
            advantages: vec![a; len],
        });
    }
    let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
    let old: Vec<Vec<f32>> = sequences.iter().map(|s| f32s(&s.old_logp)).collect();
    let reference: Option<Vec<Vec<f32>>> = with_reference
        .then(|| sequences.iter().map(|s| f32s(s.ref_logp.as_ref().expect("ref"))).collect());
    let masks: Vec<Vec<bool>> = sequences.iter().map(|s| s.mask.clone()).collect();
    let advs: Vec<Vec<f32>> = sequences.iter().map(|s| f32s(&s.advantages)).collect();
    let batch = LossBatch::from_rows(&old, reference.as_deref(), &masks, &advs, &Device::Cpu)
        .expect("batch");
    let logp_rows = sequences.iter().map(|s| f32s(&s.logp)).collect();
    Case { sequences, logp_rows, batch }
}

fn padded(rows: &[Vec<f32>]) -> Tensor {
    let width = rows.iter().map(Vec::len).max().expect("rows");
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, width - r.len())))
        .collect();
    Tensor::from_vec(data, (rows.len(), width), &Device::Cpu).expect("tensor")
}

#[test]
fn tensor_loss_matches_the_f64_reference() {
    let mut compared = 0;
    for seed in 0..12 {
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            let with_reference = seed % 2 == 0;
            let case = random_case(seed, scale, with_reference);
            for loss_type in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo, LossType::Gspo] {
                let settings = LossSettings {
                    loss_type,
                    epsilon_low: 0.2,
                    epsilon_high: 0.28,
                    beta: if with_reference { 0.04 } else { 0.0 },
                    max_completion_length: 24,
                };
                let want = reference_loss(&case.sequences, &settings).expect("reference");
                let (loss, got) = grpo_loss(&padded(&case.logp_rows), &case.batch, &settings)
                    .expect("tensor loss");
                let what = format!("seed {seed} {scale:?} {loss_type:?}");
                assert!(
                    (got.loss - want.loss).abs() < 1e-5,
                    "{what}: {} vs {}",
                    got.loss,
                    want.loss
                );
                assert!((loss.to_scalar::<f32>().expect("scalar") as f64 - want.loss).abs() < 1e-5);
                assert!((got.policy_loss - want.policy_loss).abs() < 1e-5, "{what}");
                assert_eq!(got.kl.is_some(), want.kl.is_some(), "{what}");
                if let (Some(a), Some(b)) = (got.kl, want.kl) {
                    assert!((a - b).abs() < 1e-5, "{what}: kl {a} vs {b}");
                }
                assert!((got.clip_ratio_low - want.clip_ratio_low).abs() < 1e-9, "{what}");
                assert!((got.clip_ratio_high - want.clip_ratio_high).abs() < 1e-9, "{what}");
                assert_eq!(got.generated_tokens, want.generated_tokens);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 12 * 3 * 4);
}

#[test]
fn at_ratio_one_the_gradient_is_reinforce_with_the_group_baseline() {
    // logp == old_logp: d loss / d logp[t] = -A * mask[t] / total_tokens for dapo.
    let old = vec![vec![-1.0f32, -2.0, -0.5], vec![-0.3, -0.7, -1.1]];
    let mask = vec![vec![false, true, true], vec![true, true, false]];
    let adv = vec![vec![1.5f32; 3], vec![-0.5; 3]];
    let batch = LossBatch::from_rows(&old, None, &mask, &adv, &Device::Cpu).expect("batch");
    let logp = Var::from_tensor(&padded(&old)).expect("var");
    let settings = LossSettings {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        max_completion_length: 3,
    };
    let (loss, _) = grpo_loss(logp.as_tensor(), &batch, &settings).expect("loss");
    let grad = loss
        .backward()
        .expect("backward")
        .get(logp.as_tensor())
        .expect("grad")
        .to_vec2::<f32>()
        .expect("vec");
    let want = [[0.0, -1.5 / 4.0, -1.5 / 4.0], [0.5 / 4.0, 0.5 / 4.0, 0.0]];
    for (g, w) in grad.iter().flatten().zip(want.iter().flatten()) {
        assert!((g - w).abs() < 1e-7, "{grad:?} vs {want:?}");
    }
}

#[test]
fn shape_mismatch_and_missing_reference_are_refused() {
    let batch = LossBatch::from_rows(
        &[vec![0.0; 3]],
        None,
        &[vec![true; 3]],
        &[vec![1.0; 3]],
        &Device::Cpu,
    )
    .expect("batch");
    let settings = LossSettings {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.1,
        max_completion_length: 3,
    };
    let err = grpo_loss(&padded(&[vec![0.0; 3]]), &batch, &settings).unwrap_err();
    assert!(err.to_string().contains("ref_logp"), "{err}");
    let settings = LossSettings { beta: 0.0, ..settings };
    let err = grpo_loss(&padded(&[vec![0.0; 4]]), &batch, &settings).unwrap_err();
    assert!(err.to_string().contains("must have the shape of logp"), "{err}");
    assert!(
        LossBatch::from_rows(
            &[vec![0.0; 3]],
            None,
            &[vec![true; 2]],
            &[vec![1.0; 3]],
            &Device::Cpu
        )
        .is_err()
    );
}
