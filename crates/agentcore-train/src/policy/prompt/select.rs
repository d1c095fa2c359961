//! Which library items a rendering shows: a Plackett-Luce choice over item logits (items picked
//! one after another, each with probability proportional to `exp(logit)` among the remaining
//! items that still fit the token budget). With a stop logit, each pick may instead end the
//! rendering (show no more items), so "show nothing" is one of the choices a group compares
//! and an item that does worse than nothing can lose its place. Training rollouts sample it;
//! evaluation takes the best items (those whose logit beats the stop). The same function gives
//! the log-probability of a rendering and its gradient with respect to the logits, which the
//! update follows (the policy gradient of the item choice).

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

/// The choice among the items that may be shown.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// The items.
    pub cands: &'a [Candidate],
    /// The logit of ending the rendering at a pick (`None`: every pick shows an item while one
    /// fits).
    pub stop: Option<f64>,
    /// Most items shown.
    pub k: usize,
}

impl Choice<'_> {
    /// `log Z` of one pick among `pool` (and the stop, if any).
    fn log_z(&self, pool: &[usize]) -> f64 {
        let logits = pool.iter().map(|&i| self.cands[i].logit).chain(self.stop);
        let max = logits.clone().fold(f64::NEG_INFINITY, f64::max);
        max + logits.map(|l| (l - max).exp()).sum::<f64>().ln()
    }

    /// Up to `k` picks, sampled; returns candidate indices in pick order and the budget left.
    pub fn sample(&self, mut budget: usize, rng: &mut ChaCha8Rng) -> (Vec<usize>, usize) {
        let mut picks = Vec::new();
        while picks.len() < self.k {
            let pool = eligible(self.cands, &picks, budget);
            if pool.is_empty() {
                break;
            }
            let log_z = self.log_z(&pool);
            let mut u = rng.random::<f64>();
            // The stop takes what the items leave: `1 - sum p_i` (none when there is no stop).
            let mut chosen = if self.stop.is_some() { None } else { pool.last().copied() };
            for &i in &pool {
                let p = (self.cands[i].logit - log_z).exp();
                if u < p {
                    chosen = Some(i);
                    break;
                }
                u -= p;
            }
            let Some(chosen) = chosen else { break };
            budget -= self.cands[chosen].tokens;
            picks.push(chosen);
        }
        (picks, budget)
    }

    /// Up to `k` picks, the highest logit first (the lower index on ties), each only while it
    /// beats the stop; and the budget left.
    #[must_use]
    pub fn greedy(&self, mut budget: usize) -> (Vec<usize>, usize) {
        let mut picks = Vec::new();
        while picks.len() < self.k {
            let pool = eligible(self.cands, &picks, budget);
            let Some(&best) = pool.iter().max_by(|&&a, &&b| {
                self.cands[a].logit.total_cmp(&self.cands[b].logit).then_with(|| b.cmp(&a))
            }) else {
                break;
            };
            if self.stop.is_some_and(|s| self.cands[best].logit <= s) {
                break;
            }
            budget -= self.cands[best].tokens;
            picks.push(best);
        }
        (picks, budget)
    }

    /// The log-probability of `picks` (in order) under [`Choice::sample`] and its gradient with
    /// respect to each candidate's logit: per pick, `1 - p` for the item picked and `-p` for
    /// the other eligible ones; fewer than `k` picks while an item still fitted means the stop
    /// was chosen, which adds `log p(stop)` and `-p` for each eligible item. Picks that were not
    /// eligible (an item retired or resized since) end the sequence.
    #[must_use]
    pub fn log_prob_and_grad(&self, budget: usize, picks: &[usize]) -> (f64, Vec<f64>) {
        let mut grad = vec![0.0; self.cands.len()];
        let mut logp = 0.0;
        let mut budget = budget;
        let mut taken: Vec<usize> = Vec::new();
        let step = |pool: &[usize], grad: &mut [f64]| {
            let log_z = self.log_z(pool);
            for &i in pool {
                grad[i] -= (self.cands[i].logit - log_z).exp();
            }
            log_z
        };
        for &p in picks {
            let pool = eligible(self.cands, &taken, budget);
            if !pool.contains(&p) {
                return (logp, grad);
            }
            logp += self.cands[p].logit - step(&pool, &mut grad);
            grad[p] += 1.0;
            budget -= self.cands[p].tokens;
            taken.push(p);
        }
        if let Some(stop) = self.stop
            && taken.len() < self.k
        {
            let pool = eligible(self.cands, &taken, budget);
            if !pool.is_empty() {
                logp += stop - step(&pool, &mut grad);
            }
        }
        (logp, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn c(logit: f64, tokens: usize) -> Candidate {
        Candidate { logit, tokens }
    }

    fn choice(cands: &[Candidate], stop: Option<f64>, k: usize) -> Choice<'_> {
        Choice { cands, stop, k }
    }

    #[test]
    fn greedy_takes_the_best_that_fit() {
        let cands = [c(0.1, 10), c(2.0, 50), c(1.0, 10), c(1.5, 10)];
        assert_eq!(choice(&cands, None, 2).greedy(100).0, vec![1, 3]);
        // Item 1 no longer fits.
        assert_eq!(choice(&cands, None, 2).greedy(30).0, vec![3, 2]);
        assert_eq!(choice(&cands, None, 5).greedy(30), (vec![3, 2, 0], 0));
        assert!(choice(&[], None, 2).greedy(100).0.is_empty());
    }

    #[test]
    fn greedy_shows_only_the_items_that_beat_the_stop() {
        let cands = [c(0.1, 10), c(2.0, 10), c(1.0, 10)];
        assert_eq!(choice(&cands, Some(0.5), 3).greedy(100).0, vec![1, 2]);
        assert_eq!(choice(&cands, Some(1.0), 3).greedy(100).0, vec![1]);
        assert!(choice(&cands, Some(3.0), 3).greedy(100).0.is_empty());
    }

    /// Sampling frequencies of each rendering against `exp(log_prob)`.
    fn frequencies_match(
        cands: &[Candidate],
        stop: Option<f64>,
        k: usize,
        renderings: &[&[usize]],
    ) {
        let ch = choice(cands, stop, k);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 40_000;
        let mut counts = vec![0u32; renderings.len()];
        for _ in 0..n {
            let picks = ch.sample(10, &mut rng).0;
            if let Some(j) = renderings.iter().position(|r| *r == picks.as_slice()) {
                counts[j] += 1;
            }
        }
        for (r, count) in renderings.iter().zip(counts) {
            let p = ch.log_prob_and_grad(10, r).0.exp();
            let freq = f64::from(count) / f64::from(n);
            assert!((freq - p).abs() < 0.01, "{r:?}: {freq} vs {p}");
        }
    }

    #[test]
    fn log_prob_matches_the_sampling_frequencies() {
        frequencies_match(&[c(0.0, 1), c(1.0, 1), c(-0.5, 1)], None, 2, &[&[1, 0], &[2, 1]]);
    }

    #[test]
    fn with_a_stop_showing_fewer_items_or_none_is_sampled_as_often_as_its_log_prob_says() {
        let cands = [c(0.0, 1), c(1.0, 1), c(-0.5, 1)];
        // Nothing, one item, two; the probabilities of all renderings sum to one.
        let all: Vec<Vec<usize>> = std::iter::once(vec![])
            .chain((0..3).map(|a| vec![a]))
            .chain((0..3).flat_map(|a| (0..3).filter(move |b| *b != a).map(move |b| vec![a, b])))
            .collect();
        let ch = choice(&cands, Some(0.3), 2);
        let total: f64 = all.iter().map(|r| ch.log_prob_and_grad(10, r).0.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        let refs: Vec<&[usize]> = all.iter().map(Vec::as_slice).collect();
        frequencies_match(&cands, Some(0.3), 2, &refs);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cands = [c(0.3, 5), c(-1.0, 5), c(0.8, 5), c(0.0, 20)];
        for (stop, picks) in [(None, &[2, 0][..]), (Some(0.2), &[2][..]), (Some(-0.4), &[][..])] {
            let (_, grad) = choice(&cands, stop, 2).log_prob_and_grad(15, picks);
            for i in 0..cands.len() {
                let mut up = cands;
                up[i].logit += 1e-6;
                let mut down = cands;
                down[i].logit -= 1e-6;
                let numeric = (choice(&up, stop, 2).log_prob_and_grad(15, picks).0
                    - choice(&down, stop, 2).log_prob_and_grad(15, picks).0)
                    / 2e-6;
                assert!(
                    (numeric - grad[i]).abs() < 1e-6,
                    "{stop:?} {picks:?} item {i}: {numeric} vs {}",
                    grad[i]
                );
            }
            // Item 3 never fit: no gradient.
            assert!(grad[3].abs() < 1e-12);
        }
        // Stopping lowers every eligible item's logit's share: its gradient is negative.
        let (_, grad) = choice(&cands, Some(0.2), 2).log_prob_and_grad(15, &[]);
        assert!(grad[..3].iter().all(|g| *g < 0.0), "{grad:?}");
    }
}
