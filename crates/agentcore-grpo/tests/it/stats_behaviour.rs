//! Statistics behaviour scipy does not pin: degenerate inputs, bad inputs, determinism, and the
//! paired baseline comparison used by evaluation.

use agentcore_grpo::GrpoError;
use agentcore_grpo::stats::{
    bootstrap_paired_mean_difference, compare_paired, mcnemar_exact, paired_t_test, welch_t_test,
    wilson_interval,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn paired_t_with_identical_differences() {
    // scipy returns NaN here; we return a decision.
    let none = paired_t_test(&[0.5, 0.7, 0.9], &[0.5, 0.7, 0.9], 0.95).expect("valid");
    assert!((none.p_value - 1.0).abs() < f64::EPSILON && none.statistic.abs() < f64::EPSILON);
    let all_better = paired_t_test(&[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0], 0.95).expect("valid");
    assert!(all_better.p_value.abs() < f64::EPSILON);
    assert!(all_better.statistic.is_infinite() && all_better.statistic > 0.0);
    assert!((all_better.confidence_interval.low - 1.0).abs() < f64::EPSILON);
    let welch = welch_t_test(&[2.0, 2.0], &[1.0, 1.0], 0.95).expect("valid");
    assert!(welch.p_value.abs() < f64::EPSILON);
}

#[test]
fn bad_inputs_name_the_rule_and_value() {
    let err = paired_t_test(&[1.0], &[0.0], 0.95).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: `pairs` needs at least 2, got 1");
    let err = paired_t_test(&[1.0, 2.0], &[0.0], 0.95).unwrap_err();
    assert_eq!(err, GrpoError::LengthMismatch { what: "treatment".into(), expected: 1, got: 2 });
    let err = paired_t_test(&[1.0, f64::NAN], &[0.0, 0.0], 0.95).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: `treatment[1]` must be finite, got NaN");
    let err = wilson_interval(3, 2, 0.95).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: `successes` must be <= trials (2), got 3");
    let err = wilson_interval(0, 0, 0.95).unwrap_err();
    assert!(err.to_string().contains("`trials` must be >= 1"));
    let err = welch_t_test(&[1.0, 2.0], &[1.0, 2.0], 1.0).unwrap_err();
    assert_eq!(err.to_string(), "invalid input: `confidence_level` must be > 0 and < 1, got 1");
    assert!(mcnemar_exact(&[true], &[true, false]).is_err());
}

#[test]
fn bootstrap_is_reproducible_from_the_seed() {
    let t = [0.9, 0.4, 0.8, 1.0, 0.3, 0.7, 0.6, 0.95];
    let b = [0.5, 0.5, 0.6, 0.7, 0.4, 0.3, 0.6, 0.50];
    let run = |seed| {
        bootstrap_paired_mean_difference(&t, &b, 2_000, 0.95, &mut ChaCha8Rng::seed_from_u64(seed))
            .expect("valid")
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
    let ci = run(3);
    let mean_diff = t.iter().zip(&b).map(|(x, y)| x - y).sum::<f64>() / t.len() as f64;
    assert!(ci.low < mean_diff && mean_diff < ci.high, "{ci:?} around {mean_diff}");
}

#[test]
fn compare_paired_reports_a_significant_improvement() {
    // 40 queries: baseline solves 12, trained solves 30; the trained agent loses none of the
    // baseline's 12 and fixes 18 more. McNemar: b = 0, c = 18, p = 2 / 2^18.
    let baseline: Vec<bool> = (0..40).map(|i| i < 12).collect();
    let trained: Vec<bool> = (0..40).map(|i| i < 30).collect();
    let reward = |s: &[bool]| s.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect::<Vec<_>>();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let c =
        compare_paired(&baseline, &trained, &reward(&baseline), &reward(&trained), 5_000, &mut rng)
            .expect("valid");
    assert_eq!(c.queries, 40);
    assert!((c.baseline_success_rate - 0.30).abs() < 1e-12);
    assert!((c.trained_success_rate - 0.75).abs() < 1e-12);
    assert!((c.success_rate_improvement - 0.45).abs() < 1e-12);
    assert_eq!((c.mcnemar.baseline_only, c.mcnemar.treatment_only), (0, 18));
    assert!((c.p_value - 2.0 / 2f64.powi(18)).abs() < 1e-15);
    assert!(c.statistically_significant);
    assert_eq!(c.test, "mcnemar_exact");
    assert!(
        c.confidence_interval.low > 0.25 && c.confidence_interval.high < 0.65,
        "{:?}",
        c.confidence_interval
    );
    assert!((c.avg_reward_improvement - 0.45).abs() < 1e-12);
    assert!(c.reward_t_test.expect("n >= 2").p_value < 1e-4);
    assert!(c.trained_success_interval.low > c.baseline_success_interval.high);
}

#[test]
fn compare_paired_is_not_significant_on_noise() {
    // Same success rate, different queries: 5 fixed, 5 broken. p = 1.
    let baseline: Vec<bool> = (0..30).map(|i| i < 15).collect();
    let trained: Vec<bool> = (0..30).map(|i| (5..20).contains(&i)).collect();
    let zeros = vec![0.0; 30];
    let c = compare_paired(
        &baseline,
        &trained,
        &zeros,
        &zeros,
        1_000,
        &mut ChaCha8Rng::seed_from_u64(2),
    )
    .expect("valid");
    assert!(!c.statistically_significant);
    assert!((c.p_value - 1.0).abs() < 1e-12);
    assert!(c.success_rate_improvement.abs() < 1e-12);
}
