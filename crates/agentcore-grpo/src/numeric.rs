//! Small numeric helpers shared by the advantage and statistics code.

/// Arithmetic mean; 0 for an empty slice.
pub(crate) fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample variance with Bessel's correction (divides by n - 1); 0 when n < 2.
pub(crate) fn sample_variance(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64
}

/// Sample standard deviation with Bessel's correction; 0 when n < 2.
pub(crate) fn sample_std(values: &[f64]) -> f64 {
    sample_variance(values).sqrt()
}

/// True when every value equals the first (an empty or one-element slice counts as equal).
#[expect(clippy::float_cmp, reason = "exact equality is what makes a group teach nothing")]
pub(crate) fn all_equal(values: &[f64]) -> bool {
    values.windows(2).all(|w| w[0] == w[1])
}

/// The `q` quantile of sorted data with linear interpolation between order statistics
/// (numpy's default `linear` method, which scipy's percentile bootstrap uses).
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_std_uses_bessel_correction() {
        // (1,0,0,0): mean 0.25, squared deviations sum 0.75, / 3 = 0.25, sqrt = 0.5.
        assert!((sample_std(&[1.0, 0.0, 0.0, 0.0]) - 0.5).abs() < 1e-15);
        assert!(sample_std(&[3.0]).abs() < f64::EPSILON);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let data = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], 25) == 1.75
        assert!((quantile_sorted(&data, 0.25) - 1.75).abs() < 1e-15);
        assert!((quantile_sorted(&data, 1.0) - 4.0).abs() < 1e-15);
        assert!((quantile_sorted(&data, 0.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn all_equal_detects_spread() {
        assert!(all_equal(&[0.5, 0.5, 0.5]));
        assert!(!all_equal(&[0.5, 0.5, 0.5000001]));
        assert!(all_equal(&[]));
    }
}
