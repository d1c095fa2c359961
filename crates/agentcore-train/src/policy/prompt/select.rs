//! Which library items a rendering shows: a Plackett-Luce choice over item logits (items picked
//! one after another, each with probability proportional to `exp(logit)` among the remaining
//! items that still fit the token budget). Training rollouts sample it; evaluation takes the
//! best items. The same function gives the log-probability of a rendering and its gradient with
//! respect to the logits, which the update follows (the policy gradient of the item choice).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An item that may be shown: its logit and its size in tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// `(credit + relevance_weight * relevance) / temperature`.
    pub logit: f64,
    /// Tokens it adds to the prompt.
    pub tokens: usize,
}

fn eligible(cands: &[Candidate], taken: &[usize], budget: usize) -> Vec<usize> {
    (0..cands.len()).filter(|i| !taken.contains(i) && cands[*i].tokens <= budget).collect()
}

/// Up to `k` picks, sampled; returns candidate indices in pick order and the budget left.
pub fn sample(
    cands: &[Candidate],
    k: usize,
    mut budget: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, usize) {
    let mut picks = Vec::new();
    while picks.len() < k {
        let pool = eligible(cands, &picks, budget);
        if pool.is_empty() {
            break;
        }
        let max = pool.iter().map(|&i| cands[i].logit).fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = pool.iter().map(|&i| (cands[i].logit - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        let mut chosen = pool[pool.len() - 1];
        for (&i, w) in pool.iter().zip(&weights) {
            if u < *w {
                chosen = i;
                break;
            }
            u -= w;
        }
        budget -= cands[chosen].tokens;
        picks.push(chosen);
    }
    (picks, budget)
}

/// Up to `k` picks, the highest logit first (the lower index on ties); and the budget left.
#[must_use]
pub fn greedy(cands: &[Candidate], k: usize, mut budget: usize) -> (Vec<usize>, usize) {
    let mut picks = Vec::new();
    while picks.len() < k {
        let pool = eligible(cands, &picks, budget);
        let Some(&best) = pool
            .iter()
            .max_by(|&&a, &&b| cands[a].logit.total_cmp(&cands[b].logit).then_with(|| b.cmp(&a)))
        else {
            break;
        };
        budget -= cands[best].tokens;
        picks.push(best);
    }
    (picks, budget)
}

/// The log-probability of `picks` (in order) under [`sample`] and its gradient with respect to
/// each candidate's logit: per pick, `1 - p` for the item picked and `-p` for the other eligible
/// ones. Picks that were not eligible (an item retired or resized since) end the sequence.
#[must_use]
pub fn log_prob_and_grad(cands: &[Candidate], budget: usize, picks: &[usize]) -> (f64, Vec<f64>) {
    let mut grad = vec![0.0; cands.len()];
    let mut logp = 0.0;
    let mut budget = budget;
    let mut taken: Vec<usize> = Vec::new();
    for &p in picks {
        let pool = eligible(cands, &taken, budget);
        if !pool.contains(&p) {
            break;
        }
        let max = pool.iter().map(|&i| cands[i].logit).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = pool.iter().map(|&i| (cands[i].logit - max).exp()).sum();
        let log_z = max + z.ln();
        logp += cands[p].logit - log_z;
        for &i in &pool {
            grad[i] -= (cands[i].logit - log_z).exp();
        }
        grad[p] += 1.0;
        budget -= cands[p].tokens;
        taken.push(p);
    }
    (logp, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn c(logit: f64, tokens: usize) -> Candidate {
        Candidate { logit, tokens }
    }

    #[test]
    fn greedy_takes_the_best_that_fit() {
        let cands = [c(0.1, 10), c(2.0, 50), c(1.0, 10), c(1.5, 10)];
        assert_eq!(greedy(&cands, 2, 100).0, vec![1, 3]);
        // Item 1 no longer fits.
        assert_eq!(greedy(&cands, 2, 30).0, vec![3, 2]);
        assert_eq!(greedy(&cands, 5, 30), (vec![3, 2, 0], 0));
        assert!(greedy(&[], 2, 100).0.is_empty());
    }

    #[test]
    fn log_prob_matches_the_sampling_frequencies() {
        let cands = [c(0.0, 1), c(1.0, 1), c(-0.5, 1)];
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 40_000;
        let mut count = 0;
        for _ in 0..n {
            if sample(&cands, 2, 10, &mut rng).0 == vec![1, 0] {
                count += 1;
            }
        }
        let (logp, _) = log_prob_and_grad(&cands, 10, &[1, 0]);
        let freq = f64::from(count) / f64::from(n);
        assert!((freq - logp.exp()).abs() < 0.01, "{freq} vs {}", logp.exp());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cands = [c(0.3, 5), c(-1.0, 5), c(0.8, 5), c(0.0, 20)];
        let picks = [2, 0];
        let (_, grad) = log_prob_and_grad(&cands, 15, &picks);
        for i in 0..cands.len() {
            let mut up = cands;
            up[i].logit += 1e-6;
            let mut down = cands;
            down[i].logit -= 1e-6;
            let numeric = (log_prob_and_grad(&up, 15, &picks).0
                - log_prob_and_grad(&down, 15, &picks).0)
                / 2e-6;
            assert!((numeric - grad[i]).abs() < 1e-6, "item {i}: {numeric} vs {}", grad[i]);
        }
        // Item 3 never fit: no gradient.
        assert!(grad[3].abs() < 1e-12);
    }
}
