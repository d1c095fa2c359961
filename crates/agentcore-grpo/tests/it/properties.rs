//! Property tests (proptest) for the math and the budget state machine.

use agentcore_grpo::advantages::{
    AdvantageEstimator, ScaleRewards, group_advantages, step_advantages,
};
use agentcore_grpo::budget::{Budget, BudgetState};
use agentcore_grpo::loss::{LossSettings, LossType, SequenceLogProbs, k3, reference_loss};
use agentcore_grpo::stats::{mcnemar_exact_p_value, wilson_interval};
use proptest::prelude::*;
use rust_decimal::Decimal;

const ESTIMATORS: [AdvantageEstimator; 2] = [AdvantageEstimator::Grpo, AdvantageEstimator::Rloo];
const SCALES: [ScaleRewards; 3] = [ScaleRewards::Group, ScaleRewards::Batch, ScaleRewards::None];
const LOSS_TYPES: [LossType; 4] =
    [LossType::Grpo, LossType::Dapo, LossType::DrGrpo, LossType::Gspo];

/// A batch of 1..8 groups of 1..16 rewards. Rewards are either binary outcomes (the common
/// case, with many all-equal groups) or shaped values in [-1000, 1000].
fn batches() -> impl Strategy<Value = Vec<Vec<f64>>> {
    let binary = prop::collection::vec(
        prop::collection::vec(prop::bool::ANY.prop_map(f64::from), 1..=16),
        1..=8,
    );
    let real = prop::collection::vec(prop::collection::vec(-1000.0..1000.0f64, 1..=16), 1..=8);
    prop_oneof![binary, real]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn advantages_are_finite_and_shaped_like_the_input(groups in batches()) {
        for estimator in ESTIMATORS {
            for scale in SCALES {
                let out = group_advantages(&groups, estimator, scale).expect("valid input");
                prop_assert_eq!(out.advantages.len(), groups.len());
                for (a, r) in out.advantages.iter().zip(&groups) {
                    prop_assert_eq!(a.len(), r.len());
                    prop_assert!(a.iter().all(|x| x.is_finite()));
                }
                prop_assert!((0.0..=1.0).contains(&out.frac_reward_zero_std));
            }
        }
    }

    #[test]
    fn group_mean_of_advantages_is_zero(groups in batches()) {
        for estimator in ESTIMATORS {
            for scale in [ScaleRewards::Group, ScaleRewards::None] {
                let out = group_advantages(&groups, estimator, scale).expect("valid input");
                for a in &out.advantages {
                    let mean = a.iter().sum::<f64>() / a.len() as f64;
                    // Rewards up to 1e3 unscaled: allow for their rounding error.
                    let tol = if scale == ScaleRewards::None { 1e-9 * 1000.0 } else { 1e-6 };
                    prop_assert!(mean.abs() <= tol, "{:?} {:?}: mean {}", estimator, scale, mean);
                }
            }
        }
    }

    #[test]
    fn adding_a_constant_to_a_group_changes_nothing(
        groups in batches(),
        which in any::<prop::sample::Index>(),
        shift in -100.0..100.0f64,
    ) {
        let g = which.index(groups.len());
        let mut shifted = groups.clone();
        shifted[g].iter_mut().for_each(|r| *r += shift);
        for estimator in ESTIMATORS {
            for scale in [ScaleRewards::Group, ScaleRewards::None] {
                let a = group_advantages(&groups, estimator, scale).expect("valid input");
                let b = group_advantages(&shifted, estimator, scale).expect("valid input");
                for (x, y) in a.advantages[g].iter().zip(&b.advantages[g]) {
                    prop_assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()), "{:?} {:?}: {} vs {}", estimator, scale, x, y);
                }
            }
        }
        // Batch scaling uses the batch std: invariant when the whole batch shifts.
        let all_shifted: Vec<Vec<f64>> =
            groups.iter().map(|g| g.iter().map(|r| r + shift).collect()).collect();
        let a = group_advantages(&groups, AdvantageEstimator::Grpo, ScaleRewards::Batch).expect("valid");
        let b = group_advantages(&all_shifted, AdvantageEstimator::Grpo, ScaleRewards::Batch).expect("valid");
        for (x, y) in a.advantages.iter().flatten().zip(b.advantages.iter().flatten()) {
            prop_assert!((x - y).abs() <= 1e-6 * (1.0 + x.abs()));
        }
    }

    #[test]
    fn all_equal_groups_give_exact_zeros(value in -1000.0..1000.0f64, size in 1usize..=16) {
        for estimator in ESTIMATORS {
            for scale in SCALES {
                let out = group_advantages(&[vec![value; size], vec![0.0, 1.0]], estimator, scale)
                    .expect("valid input");
                prop_assert!(out.advantages[0].iter().all(|a| *a == 0.0));
                prop_assert_eq!(out.zero_std_groups, 1);
            }
        }
    }

    #[test]
    fn step_advantages_are_finite(
        batch in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(-1.0..1.0f64, 1..=10), 1..=8), 1..=4),
        gamma in 0.0..=1.0f64,
    ) {
        for scale in SCALES {
            let out = step_advantages(&batch, gamma, scale).expect("valid input");
            for (group_in, group_out) in batch.iter().zip(&out) {
                for (steps_in, steps_out) in group_in.iter().zip(group_out) {
                    prop_assert_eq!(steps_in.len(), steps_out.len());
                    prop_assert!(steps_out.iter().all(|a| a.is_finite()));
                }
            }
        }
    }

    #[test]
    fn k3_is_never_negative(logp in -1e4..1e4f64, ref_logp in -1e4..1e4f64) {
        let v = k3(logp, ref_logp);
        prop_assert!(v >= 0.0 && v.is_finite(), "k3({}, {}) = {}", logp, ref_logp, v);
    }

    #[test]
    fn losses_are_finite_for_log_probs_down_to_minus_100(
        seqs in prop::collection::vec(
            (1usize..=12).prop_flat_map(|n| (
                prop::collection::vec(-100.0..=0.0f64, n),
                prop::collection::vec(-100.0..=0.0f64, n),
                prop::collection::vec(-100.0..=0.0f64, n),
                prop::collection::vec(any::<bool>(), n),
                -10.0..10.0f64,
            )),
            1..=6),
        beta in 0.0..1.0f64,
        eps in 0.01..0.5f64,
    ) {
        let sequences: Vec<SequenceLogProbs> = seqs
            .into_iter()
            .map(|(logp, old_logp, ref_logp, mask, advantage)| SequenceLogProbs {
                advantages: vec![advantage; logp.len()],
                logp,
                old_logp,
                ref_logp: Some(ref_logp),
                mask,
            })
            .collect();
        for loss_type in LOSS_TYPES {
            let settings = LossSettings {
                loss_type,
                epsilon_low: eps,
                epsilon_high: eps * 1.4,
                beta,
                max_completion_length: 12,
            };
            let out = reference_loss(&sequences, &settings).expect("valid input");
            prop_assert!(out.loss.is_finite(), "{:?}: {:?}", loss_type, out);
            prop_assert!(out.kl.is_some_and(f64::is_finite));
            prop_assert!((0.0..=1.0).contains(&out.clip_ratio_region));
        }
    }

    #[test]
    fn budget_state_is_monotone_and_spending_exactly_the_rest_is_allowed(
        limit_cents in 0i64..1_000_000,
        spends in prop::collection::vec(0i64..50_000, 0..20),
    ) {
        let limit = Decimal::new(limit_cents, 2);
        let mut budget = Budget::new(limit).expect("non-negative");
        let mut last = budget.state();
        for cents in spends {
            let spend = Decimal::new(cents, 2);
            let allowed = budget.check_spend(spend).is_ok();
            prop_assert_eq!(allowed, budget.spent() + spend <= limit);
            let update = budget.record(spend).expect("non-negative");
            prop_assert!(update.current >= last);
            prop_assert_eq!(update.current == BudgetState::Exceeded, budget.spent() > limit);
            last = update.current;
        }
        prop_assert!(budget.check_spend(budget.remaining()).is_ok() || budget.spent() > limit);
    }

    #[test]
    fn wilson_interval_contains_the_estimate(k in 0u64..500, extra in 0u64..500, level in 0.5..0.999f64) {
        let n = k + extra + 1;
        let ci = wilson_interval(k, n, level).expect("valid input");
        let p = k as f64 / n as f64;
        prop_assert!(0.0 <= ci.low && ci.low <= p + 1e-12 && p <= ci.high + 1e-12 && ci.high <= 1.0);
    }

    #[test]
    fn mcnemar_p_value_is_a_symmetric_probability(b in 0u64..300, c in 0u64..300) {
        let p = mcnemar_exact_p_value(b, c);
        prop_assert!((0.0..=1.0).contains(&p));
        prop_assert!((p - mcnemar_exact_p_value(c, b)).abs() < 1e-15);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The config parser reads untrusted text (files, API calls): it must answer Ok or Err,
    /// never panic, whatever it is given.
    #[test]
    fn config_parser_never_panics(text in "\\PC{0,200}") {
        for format in [agentcore_grpo::ConfigFormat::Json, agentcore_grpo::ConfigFormat::Yaml, agentcore_grpo::ConfigFormat::Toml] {
            let _ = agentcore_grpo::GRPOConfig::from_str_format(&text, format);
        }
    }

    /// Near-valid documents: known keys with arbitrary scalar values.
    #[test]
    fn config_parser_handles_any_value_for_a_known_key(
        key in prop::sample::select(agentcore_grpo::config::KNOWN_FIELDS),
        value in prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            "\"[a-z_]{0,10}\"",
            Just("null".to_string()),
            Just("true".to_string()),
        ],
    ) {
        let doc = if let Some((outer, inner)) = key.split_once('.') {
            format!("{{\"{outer}\": {{\"{inner}\": {value}}}}}")
        } else {
            format!("{{\"{key}\": {value}}}")
        };
        if let Ok(config) = agentcore_grpo::GRPOConfig::from_json_str(&doc) {
            // Whatever parses is valid.
            prop_assert!(config.violations().is_empty());
        }
    }
}
