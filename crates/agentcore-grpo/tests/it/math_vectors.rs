//! Every vector of `shared/grpo-math.md`, section by section, plus hand-computed ones for the
//! sections that give only formulas.

use agentcore_grpo::advantages::{
    ADVANTAGE_EPSILON, AdvantageEstimator, ScaleRewards, discounted_returns, group_advantages,
    step_advantages,
};
use agentcore_grpo::loss::{
    LossSettings, LossType, SequenceLogProbs, aggregate, clipped_surrogate, k3, reference_loss,
};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn assert_all_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(close(*g, *w, tol), "{got:?} vs {want:?}");
    }
}

// ---- A. Group-relative advantage --------------------------------------------------------

#[test]
fn a_group_scaling_one_success_in_four() {
    let out = group_advantages(
        &[vec![1.0, 0.0, 0.0, 0.0]],
        AdvantageEstimator::Grpo,
        ScaleRewards::Group,
    )
    .expect("valid");
    assert!(close(out.group_means[0], 0.25, 1e-15));
    assert!(close(out.group_stds[0], 0.5, 1e-15));
    // "before eps": the exact value divides by 0.5 + 1e-4.
    let d = 0.5 + ADVANTAGE_EPSILON;
    assert_all_close(&out.advantages[0], &[0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d], 1e-12);
    assert_all_close(&out.advantages[0], &[1.5, -0.5, -0.5, -0.5], 1e-3);
    assert!(close(out.frac_reward_zero_std, 0.0, 0.0));
}

#[test]
fn a_all_equal_group_teaches_nothing_and_is_counted() {
    for estimator in [AdvantageEstimator::Grpo, AdvantageEstimator::Rloo] {
        for scale in [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None] {
            let out = group_advantages(&[vec![1.0; 4], vec![1.0, 0.0, 1.0, 0.0]], estimator, scale)
                .expect("valid");
            assert_eq!(out.advantages[0], vec![0.0; 4], "{estimator:?} {scale:?}");
            assert_eq!(out.zero_std_groups, 1);
            assert!(close(out.frac_reward_zero_std, 0.5, 0.0));
            assert!(out.advantages[1].iter().any(|a| a.abs() > 0.1));
        }
    }
}

#[test]
fn a_dr_grpo_none_scaling() {
    let out =
        group_advantages(&[vec![1.0, 0.0, 0.0, 0.0]], AdvantageEstimator::Grpo, ScaleRewards::None)
            .expect("valid");
    assert_all_close(&out.advantages[0], &[0.75, -0.25, -0.25, -0.25], 1e-15);
}

#[test]
fn a_rloo_leave_one_out_baseline() {
    // A_1 = 1 - mean(0,0,0) = 1; A_2 = 0 - mean(1,0,0) = -1/3.
    let out =
        group_advantages(&[vec![1.0, 0.0, 0.0, 0.0]], AdvantageEstimator::Rloo, ScaleRewards::None)
            .expect("valid");
    assert_all_close(&out.advantages[0], &[1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0], 1e-15);
    // Scaled by the group std (0.5): (2, -2/3, -2/3, -2/3) before eps.
    let scaled = group_advantages(
        &[vec![1.0, 0.0, 0.0, 0.0]],
        AdvantageEstimator::Rloo,
        ScaleRewards::Group,
    )
    .expect("valid");
    assert_all_close(&scaled.advantages[0], &[2.0, -2.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0], 1e-3);
}

#[test]
fn a_batch_scaling_uses_group_mean_and_batch_std() {
    // Batch (1,0,0,0, 1,1,0,0): sample std over 8 values = sqrt(8/7 * 0.234375) = 0.5175.
    let groups = vec![vec![1.0, 0.0, 0.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
    let out =
        group_advantages(&groups, AdvantageEstimator::Grpo, ScaleRewards::Batch).expect("valid");
    let all = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let m = all.iter().sum::<f64>() / 8.0;
    let std = (all.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / 7.0).sqrt();
    assert!(close(std, 0.517_549_5, 1e-6));
    let d = std + ADVANTAGE_EPSILON;
    assert_all_close(&out.advantages[0], &[0.75 / d, -0.25 / d, -0.25 / d, -0.25 / d], 1e-12);
    assert_all_close(&out.advantages[1], &[0.5 / d, 0.5 / d, -0.5 / d, -0.5 / d], 1e-12);
    // TRL's logged stats: reward is the batch mean, reward_std the mean of the group stds.
    assert!(close(out.reward_mean, 0.375, 1e-15));
    let g2_std = (4.0 * 0.25_f64 / 3.0).sqrt();
    assert!(close(out.reward_std, (0.5 + g2_std) / 2.0, 1e-12));
}

// ---- B. Ratio and clipped surrogate --------------------------------------------------------

#[test]
fn b_ratio_one_is_reinforce_with_the_group_baseline() {
    // One update per batch: rho = 1 exactly, l = -A.
    for a in [1.5, -0.5, 0.0] {
        let t = clipped_surrogate(-2.3, -2.3, a, 0.2, 0.2);
        assert!(close(t.ratio, 1.0, 0.0) && close(t.loss, -a, 0.0));
        assert!(!t.clipped_low && !t.clipped_high);
    }
}

#[test]
fn b_clipping_on_both_sides() {
    let high = 0.5_f64.exp(); // 1.6487
    let t = clipped_surrogate(0.5, 0.0, 1.0, 0.2, 0.2);
    assert!(close(t.ratio, high, 1e-15) && close(t.loss, -1.2, 1e-15) && t.clipped_high);
    // DAPO clip-higher: eps_high 0.28.
    assert!(close(clipped_surrogate(0.5, 0.0, 1.0, 0.2, 0.28).loss, -1.28, 1e-15));
    // A < 0 and rho far below 1 - eps: loss = -min(rho A, 0.8 A) = 0.8.
    let t = clipped_surrogate(-0.5, 0.0, -1.0, 0.2, 0.2);
    assert!(close(t.loss, 0.8, 1e-15) && t.clipped_low && !t.clipped_high);
    // A > 0 and rho low: the unclipped term is smaller, no clip.
    let t = clipped_surrogate(-0.5, 0.0, 1.0, 0.2, 0.2);
    assert!(close(t.loss, -(-0.5_f64).exp(), 1e-15) && !t.clipped_low && !t.clipped_high);
    // A < 0 and rho high: the unclipped term -rho|A| is smaller (pessimistic), no clip flag.
    let t = clipped_surrogate(0.5, 0.0, -1.0, 0.2, 0.2);
    assert!(close(t.loss, high, 1e-15) && !t.clipped_high);
}

#[test]
fn b_clip_fractions_over_generated_tokens() {
    let seq = SequenceLogProbs {
        logp: vec![0.5, -0.5, 0.0, 0.5, 9.0],
        old_logp: vec![0.0; 5],
        ref_logp: None,
        mask: vec![true, true, true, true, false],
        advantages: vec![1.0, -1.0, 1.0, -1.0, 1.0],
    };
    let settings = LossSettings {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        max_completion_length: 8,
    };
    let out = reference_loss(&[seq], &settings).expect("valid");
    // Token 0 clipped high, token 1 clipped low, token 4 is masked out (ignored).
    assert!(close(out.clip_ratio_high, 0.25, 0.0));
    assert!(close(out.clip_ratio_low, 0.25, 0.0));
    assert!(close(out.clip_ratio_region, 0.5, 0.0));
    assert_eq!(out.generated_tokens, 4);
    let want = (-1.2 + 0.8 + -1.0 + 0.5_f64.exp()) / 4.0;
    assert!(close(out.loss, want, 1e-15), "{} vs {want}", out.loss);
}

// ---- C. KL to the reference ------------------------------------------------------------------

#[test]
fn c_k3_values() {
    assert!(close(k3(-1.0, -1.0), 0.0, 0.0));
    assert!(close(k3(0.0, 1.0), std::f64::consts::E - 2.0, 1e-15));
    assert!(close(k3(1.0, 0.0), (-1.0_f64).exp(), 1e-15));
    // x = 50 is clamped to 20.
    assert!(close(k3(-50.0, 0.0), 20.0_f64.exp() - 21.0, 1e-6));
    assert!(close(k3(0.0, -50.0), (-20.0_f64).exp() + 19.0, 1e-12));
}

#[test]
fn c_kl_enters_the_loss_with_beta() {
    let seq = |ref_logp| SequenceLogProbs {
        logp: vec![0.0, 0.0],
        old_logp: vec![0.0, 0.0],
        ref_logp: Some(ref_logp),
        mask: vec![true, true],
        advantages: vec![0.0, 0.0],
    };
    let settings = LossSettings {
        loss_type: LossType::Dapo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.5,
        max_completion_length: 4,
    };
    let out = reference_loss(&[seq(vec![1.0, -1.0])], &settings).expect("valid");
    let mean_k3 = ((std::f64::consts::E - 2.0) + (-1.0_f64).exp()) / 2.0;
    assert!(close(out.kl.expect("reference given"), mean_k3, 1e-15));
    assert!(close(out.policy_loss, 0.0, 0.0));
    assert!(close(out.loss, 0.5 * mean_k3, 1e-15));
    // beta > 0 without a reference is refused.
    let mut no_ref = seq(vec![0.0, 0.0]);
    no_ref.ref_logp = None;
    let err = reference_loss(&[no_ref], &settings).unwrap_err();
    assert!(err.to_string().contains("`sequences[0].ref_logp` is required when beta > 0"), "{err}");
}

// ---- D. Loss aggregation ---------------------------------------------------------------------

fn two_sequences(short: f64, long: f64) -> (Vec<Vec<f64>>, Vec<Vec<bool>>) {
    (vec![vec![short; 2], vec![long; 8]], vec![vec![true; 2], vec![true; 8]])
}

#[test]
fn d_aggregation_vectors() {
    let (l, m) = two_sequences(1.0, 1.0);
    assert!(close(aggregate(&l, &m, LossType::Grpo, 10), 1.0, 1e-15));
    assert!(close(aggregate(&l, &m, LossType::Dapo, 10), 1.0, 1e-15));
    assert!(close(aggregate(&l, &m, LossType::DrGrpo, 10), 0.5, 1e-15));
    let (l, m) = two_sequences(1.0, -1.0);
    assert!(close(aggregate(&l, &m, LossType::Grpo, 10), 0.0, 1e-15));
    assert!(close(aggregate(&l, &m, LossType::Dapo, 10), -0.6, 1e-15));
    assert!(close(aggregate(&l, &m, LossType::DrGrpo, 10), -0.3, 1e-15));
}

#[test]
fn d_aggregation_through_the_full_loss() {
    // l = -A at rho = 1, so A = -1 gives l = +1 and A = +1 gives l = -1.
    let seq = |n: usize, a: f64| SequenceLogProbs {
        logp: vec![-1.0; n + 3],
        old_logp: vec![-1.0; n + 3],
        ref_logp: None,
        // Three prompt/tool tokens (mask 0) that must not count.
        mask: [vec![false; 2], vec![true; n], vec![false]].concat(),
        advantages: vec![a; n + 3],
    };
    let batch = [seq(2, -1.0), seq(8, 1.0)];
    let settings = |loss_type| LossSettings {
        loss_type,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        max_completion_length: 10,
    };
    let loss = |t| reference_loss(&batch, &settings(t)).expect("valid").loss;
    assert!(close(loss(LossType::Grpo), 0.0, 1e-15));
    assert!(close(loss(LossType::Dapo), -0.6, 1e-15));
    assert!(close(loss(LossType::DrGrpo), -0.3, 1e-15));
}

#[test]
fn d_sequence_without_generated_tokens_counts_in_g_but_adds_nothing() {
    let l = vec![vec![1.0; 2], vec![5.0; 3]];
    let m = vec![vec![true; 2], vec![false; 3]];
    assert!(close(aggregate(&l, &m, LossType::Grpo, 10), 0.5, 1e-15));
    assert!(close(aggregate(&l, &m, LossType::Dapo, 10), 1.0, 1e-15));
}

// ---- E. GSPO -------------------------------------------------------------------------------

#[test]
fn e_gspo_sequence_ratio() {
    // Sequence 1: log-ratios (0.1, 0.3) -> s = exp(0.2) = 1.2214 > 1.2: clipped, A = 1 -> -1.2.
    // Sequence 2: log-ratios (-0.1, 0.0, 0.1) -> s = 1, A = -0.5 -> +0.5.
    let batch = [
        SequenceLogProbs {
            logp: vec![0.1, 0.3, 7.0],
            old_logp: vec![0.0, 0.0, 0.0],
            ref_logp: None,
            mask: vec![true, true, false],
            advantages: vec![1.0; 3],
        },
        SequenceLogProbs {
            logp: vec![-0.1, 0.0, 0.1],
            old_logp: vec![0.0; 3],
            ref_logp: None,
            mask: vec![true; 3],
            advantages: vec![-0.5; 3],
        },
    ];
    let settings = LossSettings {
        loss_type: LossType::Gspo,
        epsilon_low: 0.2,
        epsilon_high: 0.2,
        beta: 0.0,
        max_completion_length: 10,
    };
    let out = reference_loss(&batch, &settings).expect("valid");
    assert!(close(out.loss, (-1.2 + 0.5) / 2.0, 1e-12), "{}", out.loss);
    assert!(close(out.clip_ratio_high, 0.5, 0.0) && close(out.clip_ratio_low, 0.0, 0.0));
    // Per-token advantages that vary within a sequence are refused for GSPO.
    let mut varying = batch[1].clone();
    varying.advantages = vec![0.1, 0.2, 0.3];
    let err = reference_loss(&[varying], &settings).unwrap_err();
    assert!(err.to_string().contains("loss_type gspo"), "{err}");
}

// ---- F. Multi-step credit ---------------------------------------------------------------

#[test]
fn f_discounted_returns() {
    let g = discounted_returns(&[-0.01, -0.01, 1.0], 0.99);
    assert!(close(g[2], 1.0, 1e-15));
    assert!(close(g[1], -0.01 + 0.99, 1e-15));
    assert!(close(g[0], -0.01 + 0.99 * (-0.01 + 0.99), 1e-15));
    assert_eq!(discounted_returns(&[1.0, 2.0], 0.0), vec![1.0, 2.0]);
}

#[test]
fn f_step_advantages_normalise_over_the_groups_steps() {
    // Group: a 2-step success (0, 1) and a 1-step failure (0), gamma 1: returns (1, 1) and (0).
    // Over the group's 3 steps: mean 2/3, sample std sqrt(1/3).
    let batch = vec![vec![vec![0.0, 1.0], vec![0.0]]];
    let out = step_advantages(&batch, 1.0, ScaleRewards::Group).expect("valid");
    let d = (1.0_f64 / 3.0).sqrt() + ADVANTAGE_EPSILON;
    assert_eq!(out[0].len(), 2);
    assert_all_close(&out[0][0], &[(1.0 / 3.0) / d, (1.0 / 3.0) / d], 1e-12);
    assert_all_close(&out[0][1], &[(-2.0 / 3.0) / d], 1e-12);
    let none = step_advantages(&batch, 1.0, ScaleRewards::None).expect("valid");
    assert_all_close(&none[0][0], &[1.0 / 3.0, 1.0 / 3.0], 1e-15);
    // gamma 0.5 discounts the first step of the success: returns (0.5, 1) and (0).
    let half = step_advantages(&batch, 0.5, ScaleRewards::None).expect("valid");
    assert_all_close(&half[0][0], &[0.0, 0.5], 1e-15);
    assert_all_close(&half[0][1], &[-0.5], 1e-15);
    assert!(step_advantages(&batch, 1.5, ScaleRewards::None).is_err());
    assert!(step_advantages(&[vec![vec![]]], 1.0, ScaleRewards::None).is_err());
}
