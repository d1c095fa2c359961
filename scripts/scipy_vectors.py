#!/usr/bin/env python3
"""Expected values for agentcore-grpo's statistics, computed with scipy.

Writes crates/agentcore-grpo/tests/data/scipy_vectors.json: fixed inputs and what scipy says
about them. The Rust tests (tests/it/scipy.rs) read the file and compare.

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
    .venv/bin/python scripts/scipy_vectors.py
"""

import json
import pathlib

import numpy as np
import scipy
from scipy import stats

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/agentcore-grpo/tests/data/scipy_vectors.json"
rng = np.random.default_rng(20261125)


def rounded(xs, digits=4):
    return [round(float(x), digits) for x in xs]


def mcnemar_cases():
    pairs = [(0, 0), (0, 1), (0, 5), (5, 0), (3, 3), (2, 12), (12, 2), (1, 30), (7, 9),
             (10, 25), (40, 85), (150, 200), (200, 300), (0, 60)]
    out = []
    for b, c in pairs:
        # McNemar's exact test: two-sided binomial test on b successes out of b + c at p = 1/2.
        p = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
        out.append({"b": b, "c": c, "p_value": float(p)})
    return out


def wilson_cases():
    cases = [(0, 10, 0.95), (10, 10, 0.95), (5, 10, 0.95), (8, 10, 0.95), (1, 100, 0.95),
             (99, 100, 0.95), (37, 120, 0.95), (37, 120, 0.90), (37, 120, 0.99), (1, 1, 0.95),
             (0, 1, 0.95), (550, 1000, 0.95)]
    out = []
    for k, n, level in cases:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
        out.append({"successes": k, "trials": n, "level": level,
                    "low": float(ci.low), "high": float(ci.high)})
    return out


def paired_samples():
    shapes = [(2, 0.5), (3, 0.1), (5, 0.3), (8, 0.0), (10, 0.2), (20, 0.05), (30, 0.15),
              (50, -0.1), (100, 0.02), (12, 1.0)]
    out = []
    for n, shift in shapes:
        base = rounded(rng.uniform(0, 1, n))
        treat = rounded(np.clip(np.array(base) + shift + rng.normal(0, 0.3, n), -1, 2))
        out.append((treat, base))
    # Binary rewards, as success indicators.
    base = [float(x) for x in rng.integers(0, 2, 40)]
    treat = [float(min(1, x + (rng.uniform() < 0.3))) for x in base]
    out.append((treat, base))
    return out


def paired_t_cases():
    out = []
    levels = [0.95, 0.90, 0.99]
    for i, (treat, base) in enumerate(paired_samples()):
        level = levels[i % 3]
        r = stats.ttest_rel(treat, base)
        ci = r.confidence_interval(confidence_level=level)
        out.append({"treatment": treat, "baseline": base, "level": level,
                    "statistic": float(r.statistic), "df": float(r.df), "p_value": float(r.pvalue),
                    "low": float(ci.low), "high": float(ci.high)})
    return out


def welch_cases():
    shapes = [(2, 2, 1.0), (3, 5, 0.5), (5, 5, 0.0), (10, 4, 2.0), (8, 30, 0.3), (20, 20, 0.1),
              (50, 12, 1.0), (100, 100, 0.05), (6, 60, 3.0), (15, 9, 0.7)]
    out = []
    levels = [0.95, 0.90, 0.99]
    for i, (nx, ny, scale) in enumerate(shapes):
        x = rounded(rng.normal(0.5, 1.0, nx))
        y = rounded(rng.normal(0.5 - 0.3 * scale, scale, ny))
        level = levels[i % 3]
        r = stats.ttest_ind(x, y, equal_var=False)
        ci = r.confidence_interval(confidence_level=level)
        out.append({"x": x, "y": y, "level": level, "statistic": float(r.statistic),
                    "df": float(r.df), "p_value": float(r.pvalue),
                    "low": float(ci.low), "high": float(ci.high)})
    return out


def bootstrap_cases():
    """Percentile bootstrap of the mean paired difference.

    The RNGs differ, so Rust cannot reproduce scipy's draws. What any correct implementation
    drawing `n_resamples` resamples gives for the alpha quantile is the value of the exact
    bootstrap distribution at a probability within a few standard errors of alpha,
    se = sqrt(alpha (1 - alpha) / n_resamples). The range written for each bound is that
    distribution's quantiles at alpha -/+ 4 se, estimated from 2,000,000 resamples; scipy's own
    answer (median of five seeds) is checked to fall inside it. For tiny n the distribution has
    few atoms, and the range is the atoms around the quantile.
    """
    out = []
    n_resamples = 50_000
    big = 2_000_000
    for i, (treat, base) in enumerate(paired_samples()):
        level = 0.95 if i % 2 == 0 else 0.90
        alpha = (1 - level) / 2
        d = np.array(treat) - np.array(base)
        n = len(d)
        local = np.random.default_rng(1000 + i)
        means = np.concatenate([
            d[local.integers(0, n, size=(big // 20, n))].mean(axis=1) for _ in range(20)
        ])
        se = np.sqrt(alpha * (1 - alpha) / n_resamples)
        low_range = np.quantile(means, [alpha - 4 * se, alpha + 4 * se])
        high_range = np.quantile(means, [1 - alpha - 4 * se, 1 - alpha + 4 * se])
        runs = []
        for seed in range(5):
            r = stats.bootstrap((treat, base), lambda a, b, axis: np.mean(a - b, axis=axis),
                                paired=True, vectorized=True, method="percentile",
                                n_resamples=n_resamples, confidence_level=level,
                                rng=np.random.default_rng(seed))
            runs.append((float(r.confidence_interval.low), float(r.confidence_interval.high)))
        lows, highs = zip(*runs)
        scipy_low, scipy_high = float(np.median(lows)), float(np.median(highs))
        assert low_range[0] - 1e-12 <= scipy_low <= low_range[1] + 1e-12, (i, scipy_low, low_range)
        assert high_range[0] - 1e-12 <= scipy_high <= high_range[1] + 1e-12, (i, scipy_high, high_range)
        out.append({"treatment": treat, "baseline": base, "level": level,
                    "n_resamples": n_resamples, "scipy_low": scipy_low, "scipy_high": scipy_high,
                    "low_range": [float(x) for x in low_range],
                    "high_range": [float(x) for x in high_range]})
    return out


def main():
    doc = {
        "generated_by": "scripts/scipy_vectors.py",
        "scipy_version": scipy.__version__,
        "numpy_version": np.__version__,
        "mcnemar_exact": mcnemar_cases(),
        "wilson": wilson_cases(),
        "paired_t": paired_t_cases(),
        "welch_t": welch_cases(),
        "bootstrap_paired_mean_difference": bootstrap_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    print(f"wrote {OUT} {counts}")


if __name__ == "__main__":
    main()
