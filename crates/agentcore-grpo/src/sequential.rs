//! The A/B test's statistics: an always-valid sequential test of two success rates, valid
//! however often it is read (a user may look after every outcome without inflating the
//! false-positive rate), and, for contrast only, the naive fixed-sample test that is not.
//!
//! The test is a likelihood ratio of a mixture alternative against the null's maximum
//! likelihood (universal inference, Wasserman, Ramdas and Balakrishnan 2020):
//! - each arm's outcomes are scored by the Krichevsky-Trofimov mixture, the Beta(1/2, 1/2)
//!   marginal likelihood `B(s + 1/2, f + 1/2) / B(1/2, 1/2)`;
//! - the null (both arms share one unknown rate `p`) by its maximum likelihood over the pooled
//!   outcomes, `p^S (1 - p)^F` at `p = S / N`.
//!
//! Under the null, with the true rate `p0`, the ratio is at most the mixture over the likelihood
//! at `p0`, a non-negative martingale of mean 1; by Ville's inequality the ratio ever reaches
//! `1 / alpha` with probability at most `alpha`, at whatever times it is read and whatever the
//! split of traffic (the arm of an outcome is decided before the outcome). The always-valid
//! p-value is `min(1, 1 / max ratio so far)`; [`SequentialTest`] keeps that running minimum.
//! The ratio depends only on the four counts, so it is the same in whatever order the outcomes
//! arrived.
//!
//! ```
//! use agentcore_grpo::sequential::{ArmCounts, Decision, SequentialTest};
//! let mut test = SequentialTest::new(0.05)?;
//! // 60% against 40% after 600 outcomes each: decided.
//! let d = test.observe(ArmCounts::new(240, 360), ArmCounts::new(360, 240));
//! assert_eq!(d, Decision::ExperimentBetter);
//! assert!(test.p_value() < 1e-6);
//! # Ok::<(), agentcore_grpo::GrpoError>(())
//! ```

use rand::Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::gamma::ln_gamma;

use crate::error::GrpoError;

/// Outcomes of one arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArmCounts {
    /// Successful outcomes.
    pub successes: u64,
    /// Failed outcomes.
    pub failures: u64,
}

impl ArmCounts {
    /// Counts of `successes` and `failures`.
    #[must_use]
    pub const fn new(successes: u64, failures: u64) -> Self {
        Self { successes, failures }
    }

    /// Outcomes in all.
    #[must_use]
    pub const fn total(self) -> u64 {
        self.successes + self.failures
    }

    /// The success rate (0 without outcomes).
    #[must_use]
    pub fn rate(self) -> f64 {
        if self.total() == 0 { 0.0 } else { self.successes as f64 / self.total() as f64 }
    }
}

/// What an A/B test says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Not significant yet.
    Continue,
    /// The experiment's rate is significantly higher.
    ExperimentBetter,
    /// The experiment's rate is significantly lower.
    ExperimentWorse,
}

impl Decision {
    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::ExperimentBetter => "experiment_better",
            Self::ExperimentWorse => "experiment_worse",
        }
    }
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// `ln` of the KT mixture's likelihood of one arm's outcomes.
fn ln_mixture(c: ArmCounts) -> f64 {
    ln_beta(c.successes as f64 + 0.5, c.failures as f64 + 0.5) - ln_beta(0.5, 0.5)
}

/// `x ln(x / n)`, 0 at `x = 0`.
fn x_ln(x: f64, n: f64) -> f64 {
    if x == 0.0 { 0.0 } else { x * (x / n).ln() }
}

/// `ln` of the evidence against "both arms have the same rate" from these counts: the mixture
/// likelihood of the two arms over the pooled maximum likelihood. Never below `ln` of the
/// mixture of a single arm's worth of evidence; 0 without outcomes.
#[must_use]
pub fn ln_evidence(baseline: ArmCounts, experiment: ArmCounts) -> f64 {
    let s = (baseline.successes + experiment.successes) as f64;
    let f = (baseline.failures + experiment.failures) as f64;
    let n = s + f;
    if n == 0.0 {
        return 0.0;
    }
    let ln_null = x_ln(s, n) + x_ln(f, n);
    ln_mixture(baseline) + ln_mixture(experiment) - ln_null
}

/// The always-valid sequential test of one A/B test: feed it the counts after each outcome (or
/// as often as is convenient: reading less often only makes it more conservative).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    alpha: f64,
    p_value: f64,
    decision: Decision,
}

impl SequentialTest {
    /// A test at level `alpha` (0 < alpha < 1) that has seen nothing.
    ///
    /// # Errors
    /// `alpha` outside (0, 1).
    pub fn new(alpha: f64) -> Result<Self, GrpoError> {
        check_alpha(alpha)?;
        Ok(Self { alpha, p_value: 1.0, decision: Decision::Continue })
    }

    /// A test resumed from its stored running p-value and decision.
    ///
    /// # Errors
    /// `alpha` outside (0, 1), a p-value outside [0, 1].
    pub fn resume(alpha: f64, p_value: f64, decision: Decision) -> Result<Self, GrpoError> {
        check_alpha(alpha)?;
        if !(0.0..=1.0).contains(&p_value) {
            return Err(GrpoError::invalid_input("p_value", "must be in [0, 1]", p_value));
        }
        Ok(Self { alpha, p_value, decision })
    }

    /// Reads the counts now; the decision once the always-valid p-value is below alpha (it then
    /// stays: the direction is the one seen when the test first crossed).
    pub fn observe(&mut self, baseline: ArmCounts, experiment: ArmCounts) -> Decision {
        let p = (-ln_evidence(baseline, experiment)).exp().min(1.0);
        self.p_value = self.p_value.min(p);
        if self.decision == Decision::Continue && self.p_value < self.alpha {
            self.decision = if experiment.rate() > baseline.rate() {
                Decision::ExperimentBetter
            } else {
                Decision::ExperimentWorse
            };
        }
        self.decision
    }

    /// The always-valid p-value so far.
    #[must_use]
    pub const fn p_value(&self) -> f64 {
        self.p_value
    }

    /// The decision so far.
    #[must_use]
    pub const fn decision(&self) -> Decision {
        self.decision
    }

    /// The level.
    #[must_use]
    pub const fn alpha(&self) -> f64 {
        self.alpha
    }
}

fn check_alpha(alpha: f64) -> Result<(), GrpoError> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(GrpoError::invalid_input("alpha", "must be in (0, 1)", alpha))
    }
}

/// The fixed-sample two-proportion z-test (pooled variance), two-sided: valid when read once at
/// a sample size fixed in advance, not when read repeatedly. Here only for contrast.
#[must_use]
pub fn naive_z_test_p_value(baseline: ArmCounts, experiment: ArmCounts) -> f64 {
    let (na, nb) = (baseline.total() as f64, experiment.total() as f64);
    if na == 0.0 || nb == 0.0 {
        return 1.0;
    }
    let pooled = (baseline.successes + experiment.successes) as f64 / (na + nb);
    let se = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (experiment.rate() - baseline.rate()) / se;
    2.0 * (1.0 - Normal::standard().cdf(z.abs()))
}

/// What [`aa_simulation`] found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AaResult {
    /// A/A tests run.
    pub tests: u32,
    /// Outcomes per test.
    pub outcomes: u32,
    /// Outcomes between two looks.
    pub look_every: u32,
    /// Share of tests where the sequential test ever said "significant".
    pub sequential_false_positive_rate: f64,
    /// Share of tests where the naive z-test was ever below alpha at a look.
    pub naive_false_positive_rate: f64,
    /// The level.
    pub alpha: f64,
}

/// `tests` A/A tests (both arms succeed with probability `rate`; each outcome goes to the
/// experiment with probability `split`), each of `outcomes` outcomes and looked at after every
/// `look_every`: how often each test declares a difference that is not there.
///
/// # Errors
/// Rates or split outside [0, 1], alpha outside (0, 1), `look_every` 0.
pub fn aa_simulation(
    tests: u32,
    outcomes: u32,
    look_every: u32,
    rate: f64,
    split: f64,
    alpha: f64,
    rng: &mut impl Rng,
) -> Result<AaResult, GrpoError> {
    check_alpha(alpha)?;
    for (field, v) in [("rate", rate), ("split", split)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(GrpoError::invalid_input(field, "must be in [0, 1]", v));
        }
    }
    if look_every == 0 {
        return Err(GrpoError::invalid_input("look_every", "must be >= 1", 0));
    }
    let (mut seq_hits, mut naive_hits) = (0u32, 0u32);
    for _ in 0..tests {
        let mut test = SequentialTest::new(alpha)?;
        let (mut a, mut b) = (ArmCounts::default(), ArmCounts::default());
        let mut naive = false;
        for i in 1..=outcomes {
            let arm = if rng.random_bool(split) { &mut b } else { &mut a };
            if rng.random_bool(rate) {
                arm.successes += 1;
            } else {
                arm.failures += 1;
            }
            if i % look_every == 0 {
                test.observe(a, b);
                naive |= naive_z_test_p_value(a, b) < alpha;
            }
        }
        seq_hits += u32::from(test.decision() != Decision::Continue);
        naive_hits += u32::from(naive);
    }
    let share = |k: u32| f64::from(k) / f64::from(tests.max(1));
    Ok(AaResult {
        tests,
        outcomes,
        look_every,
        sequential_false_positive_rate: share(seq_hits),
        naive_false_positive_rate: share(naive_hits),
        alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn evidence_grows_with_a_real_difference_and_not_without() {
        // Equal rates: little evidence; the same rates on 10x the data: still little.
        assert!(ln_evidence(ArmCounts::new(50, 50), ArmCounts::new(50, 50)) < 0.0);
        assert!(ln_evidence(ArmCounts::new(500, 500), ArmCounts::new(500, 500)) < 0.0);
        // 50% against 70%: more data, more evidence.
        let small = ln_evidence(ArmCounts::new(50, 50), ArmCounts::new(70, 30));
        let large = ln_evidence(ArmCounts::new(500, 500), ArmCounts::new(700, 300));
        assert!(large > small && large > 20.0, "{small} {large}");
        // Symmetric in the direction of the difference.
        let worse = ln_evidence(ArmCounts::new(700, 300), ArmCounts::new(500, 500));
        assert!((worse - large).abs() < 1e-9);
        assert!(ln_evidence(ArmCounts::default(), ArmCounts::default()).abs() < f64::EPSILON);
    }

    #[test]
    fn the_kt_mixture_matches_a_hand_computed_value() {
        // One success, one failure: B(3/2, 3/2) / B(1/2, 1/2) = (pi/8) / pi = 1/8.
        assert!((ln_mixture(ArmCounts::new(1, 1)) - (0.125f64).ln()).abs() < 1e-12);
        // Against the pooled MLE of 1/2 on two outcomes (1/4) and an empty arm: ln(0.5).
        let e = ln_evidence(ArmCounts::new(1, 1), ArmCounts::default());
        assert!((e - 0.5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn the_p_value_only_falls_and_the_decision_stays() {
        let mut t = SequentialTest::new(0.05).unwrap();
        assert_eq!(
            t.observe(ArmCounts::new(300, 300), ArmCounts::new(90, 10)),
            Decision::ExperimentBetter
        );
        let p = t.p_value();
        assert!(p < 0.05);
        // Later counts that look equal do not undo it.
        assert_eq!(
            t.observe(ArmCounts::new(600, 600), ArmCounts::new(200, 200)),
            Decision::ExperimentBetter
        );
        assert!(t.p_value() <= p);
        let mut w = SequentialTest::new(0.05).unwrap();
        assert_eq!(
            w.observe(ArmCounts::new(90, 10), ArmCounts::new(300, 300)),
            Decision::ExperimentWorse
        );
        assert!(SequentialTest::new(0.0).is_err() && SequentialTest::new(1.0).is_err());
    }

    #[test]
    fn a_and_a_tests_peeked_at_stay_within_alpha_while_the_naive_test_does_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let r = aa_simulation(300, 1000, 50, 0.5, 0.5, 0.05, &mut rng).unwrap();
        assert!(r.sequential_false_positive_rate <= 0.05, "{r:?}");
        // Twenty looks at a fixed-sample test: far above its nominal 5%.
        assert!(r.naive_false_positive_rate > 0.1, "{r:?}");
    }
}
