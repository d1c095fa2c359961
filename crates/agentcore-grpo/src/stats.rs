//! Statistics that decide whether training helped (`shared/grpo-math.md` I).
//!
//! The baseline agent and the trained agent answer the *same* evaluation queries, so every
//! comparison is paired:
//! - success (binary): McNemar's exact test, i.e. a two-sided binomial test with p = 1/2 on the
//!   discordant pairs ([`mcnemar_exact`]);
//! - per-query reward: a paired t-test ([`paired_t_test`]) and a seeded percentile bootstrap
//!   interval of the mean difference ([`bootstrap_paired_mean_difference`]);
//! - each success rate gets a Wilson score interval ([`wilson_interval`]).
//!
//! [`welch_t_test`] compares two unpaired samples (e.g. two jobs on different query sets).
//! Every p-value and interval is checked against scipy on fixed vectors
//! (`scripts/scipy_vectors.py`). Distribution functions come from `statrs`.
//!
//! ```
//! use agentcore_grpo::stats::{mcnemar_exact_p_value, wilson_interval};
//! // 12 queries fixed by training, 2 broken: p = 0.0129 (scipy.stats.binomtest(2, 14)).
//! assert!((mcnemar_exact_p_value(2, 12) - 0.012939).abs() < 1e-6);
//! let ci = wilson_interval(8, 10, 0.95)?;
//! assert!((ci.low - 0.4902).abs() < 1e-4 && (ci.high - 0.9433).abs() < 1e-4);
//! # Ok::<(), agentcore_grpo::GrpoError>(())
//! ```

use rand::Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

use crate::error::GrpoError;
use crate::numeric::{mean, quantile_sorted, sample_variance};

/// The seed's threshold for "statistically significant".
pub const SIGNIFICANCE_LEVEL: f64 = 0.05;

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceInterval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
}

/// McNemar's exact test on paired binary outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemarTest {
    /// Number of pairs.
    pub n_pairs: usize,
    /// Pairs where both succeeded.
    pub both_succeeded: usize,
    /// Pairs where only the baseline succeeded (b).
    pub baseline_only: usize,
    /// Pairs where only the treatment succeeded (c).
    pub treatment_only: usize,
    /// Pairs where both failed.
    pub neither_succeeded: usize,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

/// Result of a t-test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    /// The t statistic (±infinity when the differences have no spread but a non-zero mean).
    pub statistic: f64,
    /// Degrees of freedom (fractional for Welch).
    pub df: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// mean(treatment - baseline) for the paired test; mean(x) - mean(y) for Welch.
    pub mean_difference: f64,
    /// Interval for the mean difference.
    pub confidence_interval: ConfidenceInterval,
}

/// Two-sided exact McNemar p-value from the discordant counts b and c:
/// min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2). No discordant pairs gives 1.
pub fn mcnemar_exact_p_value(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 0.5 is a valid probability");
    (2.0 * binomial.cdf(b.min(c))).min(1.0)
}

/// McNemar's exact test on paired outcomes (same query, baseline vs treatment).
pub fn mcnemar_exact(baseline: &[bool], treatment: &[bool]) -> Result<McNemarTest, GrpoError> {
    check_same_length("treatment", treatment.len(), baseline.len())?;
    let count = |f: &dyn Fn(bool, bool) -> bool| {
        baseline.iter().zip(treatment).filter(|&(&b, &t)| f(b, t)).count()
    };
    let baseline_only = count(&|b, t| b && !t);
    let treatment_only = count(&|b, t| !b && t);
    Ok(McNemarTest {
        n_pairs: baseline.len(),
        both_succeeded: count(&|b, t| b && t),
        baseline_only,
        treatment_only,
        neither_succeeded: count(&|b, t| !b && !t),
        p_value: mcnemar_exact_p_value(baseline_only as u64, treatment_only as u64),
    })
}

/// Paired t-test on `treatment[i] - baseline[i]` (scipy's `ttest_rel(treatment, baseline)`).
///
/// Needs at least 2 pairs. When every difference is equal scipy returns NaN; we return
/// p = 1 (statistic 0) if they are all 0, and p = 0 (statistic ±inf) otherwise.
pub fn paired_t_test(
    treatment: &[f64],
    baseline: &[f64],
    confidence_level: f64,
) -> Result<TTest, GrpoError> {
    check_same_length("treatment", treatment.len(), baseline.len())?;
    check_level(confidence_level)?;
    check_finite("treatment", treatment)?;
    check_finite("baseline", baseline)?;
    check_min_len("pairs", treatment.len(), 2)?;
    let diffs: Vec<f64> = treatment.iter().zip(baseline).map(|(t, b)| t - b).collect();
    let n = diffs.len() as f64;
    let d = mean(&diffs);
    let se = (sample_variance(&diffs) / n).sqrt();
    t_test_from(d, se, n - 1.0, confidence_level)
}

/// Welch's unequal-variance t-test on two independent samples (scipy's
/// `ttest_ind(x, y, equal_var=False)`). Each sample needs at least 2 values.
pub fn welch_t_test(x: &[f64], y: &[f64], confidence_level: f64) -> Result<TTest, GrpoError> {
    check_level(confidence_level)?;
    check_finite("x", x)?;
    check_finite("y", y)?;
    check_min_len("x", x.len(), 2)?;
    check_min_len("y", y.len(), 2)?;
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let (vx, vy) = (sample_variance(x) / nx, sample_variance(y) / ny);
    let se = (vx + vy).sqrt();
    let df = (vx + vy).powi(2) / (vx * vx / (nx - 1.0) + vy * vy / (ny - 1.0));
    // With no spread at all the Welch df is 0/0; any df gives the same degenerate answer.
    let df = if df.is_finite() { df } else { nx + ny - 2.0 };
    t_test_from(mean(x) - mean(y), se, df, confidence_level)
}

fn t_test_from(diff: f64, se: f64, df: f64, level: f64) -> Result<TTest, GrpoError> {
    let interval = |half: f64| ConfidenceInterval { low: diff - half, high: diff + half, level };
    if se <= 0.0 {
        let (statistic, p_value) =
            if diff.abs() <= 0.0 { (0.0, 1.0) } else { (diff.signum() * f64::INFINITY, 0.0) };
        return Ok(TTest {
            statistic,
            df,
            p_value,
            mean_difference: diff,
            confidence_interval: interval(0.0),
        });
    }
    let dist = StudentsT::new(0.0, 1.0, df).map_err(|e| {
        GrpoError::invalid_input("degrees of freedom", format!("must be > 0 ({e})"), df)
    })?;
    let statistic = diff / se;
    let p_value = (2.0 * dist.sf(statistic.abs())).min(1.0);
    let critical = dist.inverse_cdf(0.5 + level / 2.0);
    Ok(TTest {
        statistic,
        df,
        p_value,
        mean_difference: diff,
        confidence_interval: interval(critical * se),
    })
}

/// Wilson score interval for a success rate (scipy's
/// `binomtest(k, n).proportion_ci(method="wilson")`).
pub fn wilson_interval(
    successes: u64,
    trials: u64,
    confidence_level: f64,
) -> Result<ConfidenceInterval, GrpoError> {
    check_level(confidence_level)?;
    if trials == 0 {
        return Err(GrpoError::invalid_input("trials", "must be >= 1", 0));
    }
    if successes > trials {
        return Err(GrpoError::invalid_input(
            "successes",
            format!("must be <= trials ({trials})"),
            successes,
        ));
    }
    let z = Normal::standard().inverse_cdf(0.5 + confidence_level / 2.0);
    let n = trials as f64;
    let p = successes as f64 / n;
    let denom = 2.0 * (n + z * z);
    let center = (2.0 * n * p + z * z) / denom;
    let half = z * (z * z + 4.0 * n * p * (1.0 - p)).sqrt() / denom;
    Ok(ConfidenceInterval {
        low: (center - half).max(0.0),
        high: (center + half).min(1.0),
        level: confidence_level,
    })
}

/// Percentile bootstrap interval of mean(treatment - baseline), resampling pairs with
/// replacement `n_resamples` times from `rng` (the job's seeded RNG: same seed, same interval).
/// Quantiles interpolate linearly, as scipy's `bootstrap(..., method="percentile")` does.
pub fn bootstrap_paired_mean_difference<R: Rng + ?Sized>(
    treatment: &[f64],
    baseline: &[f64],
    n_resamples: usize,
    confidence_level: f64,
    rng: &mut R,
) -> Result<ConfidenceInterval, GrpoError> {
    check_same_length("treatment", treatment.len(), baseline.len())?;
    check_level(confidence_level)?;
    check_finite("treatment", treatment)?;
    check_finite("baseline", baseline)?;
    check_min_len("pairs", treatment.len(), 1)?;
    check_min_len("n_resamples", n_resamples, 1)?;
    let diffs: Vec<f64> = treatment.iter().zip(baseline).map(|(t, b)| t - b).collect();
    let n = diffs.len();
    let mut means: Vec<f64> = (0..n_resamples)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence_level) / 2.0;
    Ok(ConfidenceInterval {
        low: quantile_sorted(&means, alpha),
        high: quantile_sorted(&means, 1.0 - alpha),
        level: confidence_level,
    })
}

/// Baseline vs trained agent on the same evaluation queries: the numbers behind
/// `training.evaluate`'s `baseline_comparison`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    /// Number of evaluation queries.
    pub queries: usize,
    /// Baseline success rate.
    pub baseline_success_rate: f64,
    /// Trained success rate.
    pub trained_success_rate: f64,
    /// Wilson interval of the baseline success rate.
    pub baseline_success_interval: ConfidenceInterval,
    /// Wilson interval of the trained success rate.
    pub trained_success_interval: ConfidenceInterval,
    /// trained - baseline success rate (a fraction: 0.12 is +12 points).
    pub success_rate_improvement: f64,
    /// Bootstrap interval of the success rate improvement.
    pub confidence_interval: ConfidenceInterval,
    /// McNemar's exact test on per-query success.
    pub mcnemar: McNemarTest,
    /// The p-value that decides significance (McNemar's).
    pub p_value: f64,
    /// p_value < 0.05.
    pub statistically_significant: bool,
    /// The test that produced `p_value`.
    pub test: String,
    /// trained - baseline mean reward.
    pub avg_reward_improvement: f64,
    /// Paired t-test on per-query reward (absent with fewer than 2 queries).
    pub reward_t_test: Option<TTest>,
    /// Bootstrap interval of the mean reward improvement.
    pub reward_confidence_interval: ConfidenceInterval,
}

/// Compares baseline and trained outcomes on the same queries (index i is query i for all four
/// slices), at 95% confidence with `n_resamples` bootstrap resamples drawn from `rng`.
pub fn compare_paired<R: Rng + ?Sized>(
    baseline_success: &[bool],
    trained_success: &[bool],
    baseline_reward: &[f64],
    trained_reward: &[f64],
    n_resamples: usize,
    rng: &mut R,
) -> Result<PairedComparison, GrpoError> {
    let n = baseline_success.len();
    check_min_len("queries", n, 1)?;
    check_same_length("trained_success", trained_success.len(), n)?;
    check_same_length("baseline_reward", baseline_reward.len(), n)?;
    check_same_length("trained_reward", trained_reward.len(), n)?;
    let level = 0.95;
    let successes = |s: &[bool]| s.iter().filter(|b| **b).count() as u64;
    let (base_k, trained_k) = (successes(baseline_success), successes(trained_success));
    let as_f64 = |s: &[bool]| s.iter().map(|&b| f64::from(u8::from(b))).collect::<Vec<_>>();
    let mcnemar = mcnemar_exact(baseline_success, trained_success)?;
    let confidence_interval = bootstrap_paired_mean_difference(
        &as_f64(trained_success),
        &as_f64(baseline_success),
        n_resamples,
        level,
        rng,
    )?;
    let reward_confidence_interval =
        bootstrap_paired_mean_difference(trained_reward, baseline_reward, n_resamples, level, rng)?;
    let reward_t_test =
        if n >= 2 { Some(paired_t_test(trained_reward, baseline_reward, level)?) } else { None };
    let baseline_success_rate = base_k as f64 / n as f64;
    let trained_success_rate = trained_k as f64 / n as f64;
    Ok(PairedComparison {
        queries: n,
        baseline_success_rate,
        trained_success_rate,
        baseline_success_interval: wilson_interval(base_k, n as u64, level)?,
        trained_success_interval: wilson_interval(trained_k, n as u64, level)?,
        success_rate_improvement: trained_success_rate - baseline_success_rate,
        confidence_interval,
        p_value: mcnemar.p_value,
        statistically_significant: mcnemar.p_value < SIGNIFICANCE_LEVEL,
        test: "mcnemar_exact".to_string(),
        mcnemar,
        avg_reward_improvement: mean(trained_reward) - mean(baseline_reward),
        reward_t_test,
        reward_confidence_interval,
    })
}

fn check_level(level: f64) -> Result<(), GrpoError> {
    if level > 0.0 && level < 1.0 {
        Ok(())
    } else {
        Err(GrpoError::invalid_input("confidence_level", "must be > 0 and < 1", level))
    }
}

fn check_same_length(what: &str, got: usize, expected: usize) -> Result<(), GrpoError> {
    if got == expected {
        Ok(())
    } else {
        Err(GrpoError::LengthMismatch { what: what.to_string(), expected, got })
    }
}

fn check_min_len(what: &str, got: usize, min: usize) -> Result<(), GrpoError> {
    if got >= min {
        Ok(())
    } else {
        Err(GrpoError::invalid_input(what, format!("needs at least {min}"), got))
    }
}

fn check_finite(what: &str, values: &[f64]) -> Result<(), GrpoError> {
    match values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(GrpoError::invalid_input(format!("{what}[{i}]"), "must be finite", v)),
        None => Ok(()),
    }
}
