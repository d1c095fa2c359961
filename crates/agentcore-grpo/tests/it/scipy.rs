//! Statistics against scipy on fixed vectors (`scripts/scipy_vectors.py` wrote the expected
//! values into `tests/data/scipy_vectors.json`).

use agentcore_grpo::stats::{
    bootstrap_paired_mean_difference, mcnemar_exact_p_value, paired_t_test, welch_t_test,
    wilson_interval,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../data/scipy_vectors.json")).expect("fixture is JSON")
}

fn cases(name: &str) -> Vec<Value> {
    let cases = vectors()[name].as_array().expect("a list of cases").clone();
    assert!(
        cases.len() >= 10,
        "{name}: the issue asks for at least 10 vectors, got {}",
        cases.len()
    );
    cases
}

fn f(case: &Value, key: &str) -> f64 {
    case[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {case}"))
}

fn u(case: &Value, key: &str) -> u64 {
    case[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {case}"))
}

fn floats(case: &Value, key: &str) -> Vec<f64> {
    case[key].as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

/// |got - want| <= abs + rel * |want|.
fn assert_close(what: &str, got: f64, want: f64, rel: f64, abs: f64) {
    assert!(
        (got - want).abs() <= abs + rel * want.abs(),
        "{what}: got {got:e}, scipy {want:e} (diff {:e})",
        (got - want).abs()
    );
}

#[test]
fn mcnemar_exact_matches_scipy_binomtest() {
    for case in cases("mcnemar_exact") {
        let (b, c) = (u(&case, "b"), u(&case, "c"));
        let got = mcnemar_exact_p_value(b, c);
        assert_close(&format!("mcnemar b={b} c={c}"), got, f(&case, "p_value"), 1e-9, 1e-15);
    }
}

#[test]
fn wilson_matches_scipy_proportion_ci() {
    for case in cases("wilson") {
        let (k, n, level) = (u(&case, "successes"), u(&case, "trials"), f(&case, "level"));
        let ci = wilson_interval(k, n, level).expect("valid input");
        let what = format!("wilson {k}/{n} @ {level}");
        assert_close(&what, ci.low, f(&case, "low"), 1e-9, 1e-12);
        assert_close(&what, ci.high, f(&case, "high"), 1e-9, 1e-12);
    }
}

#[test]
fn paired_t_matches_scipy_ttest_rel() {
    for (i, case) in cases("paired_t").into_iter().enumerate() {
        let (t, b, level) =
            (floats(&case, "treatment"), floats(&case, "baseline"), f(&case, "level"));
        let r = paired_t_test(&t, &b, level).expect("valid input");
        let what = format!("paired_t case {i} (n={})", t.len());
        assert_close(&what, r.statistic, f(&case, "statistic"), 1e-9, 1e-12);
        assert_close(&what, r.df, f(&case, "df"), 0.0, 1e-12);
        assert_close(&what, r.p_value, f(&case, "p_value"), 1e-7, 1e-14);
        assert_close(&what, r.confidence_interval.low, f(&case, "low"), 1e-7, 1e-10);
        assert_close(&what, r.confidence_interval.high, f(&case, "high"), 1e-7, 1e-10);
    }
}

#[test]
fn welch_matches_scipy_ttest_ind_unequal_var() {
    for (i, case) in cases("welch_t").into_iter().enumerate() {
        let (x, y, level) = (floats(&case, "x"), floats(&case, "y"), f(&case, "level"));
        let r = welch_t_test(&x, &y, level).expect("valid input");
        let what = format!("welch case {i} (nx={}, ny={})", x.len(), y.len());
        assert_close(&what, r.statistic, f(&case, "statistic"), 1e-9, 1e-12);
        assert_close(&what, r.df, f(&case, "df"), 1e-9, 1e-12);
        assert_close(&what, r.p_value, f(&case, "p_value"), 1e-7, 1e-14);
        assert_close(&what, r.confidence_interval.low, f(&case, "low"), 1e-7, 1e-10);
        assert_close(&what, r.confidence_interval.high, f(&case, "high"), 1e-7, 1e-10);
    }
}

#[test]
fn bootstrap_matches_scipy_percentile_bootstrap() {
    // Different RNGs cannot give identical draws. Each bound must fall where a correct
    // n_resamples-draw estimate falls: between the exact bootstrap distribution's quantiles at
    // alpha -/+ 4 standard errors (computed by the script, which checks scipy's answer against
    // the same range).
    let within = |what: &str, got: f64, range: &[f64]| {
        assert!(
            range[0] - 1e-9 <= got && got <= range[1] + 1e-9,
            "{what}: got {got}, a correct bootstrap gives a value in {range:?}"
        );
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (i, case) in cases("bootstrap_paired_mean_difference").into_iter().enumerate() {
        let (t, b, level) =
            (floats(&case, "treatment"), floats(&case, "baseline"), f(&case, "level"));
        let n_resamples = u(&case, "n_resamples") as usize;
        let ci = bootstrap_paired_mean_difference(&t, &b, n_resamples, level, &mut rng)
            .expect("valid input");
        within(
            &format!("bootstrap case {i} low (n={})", t.len()),
            ci.low,
            &floats(&case, "low_range"),
        );
        within(
            &format!("bootstrap case {i} high (n={})", t.len()),
            ci.high,
            &floats(&case, "high_range"),
        );
    }
}
