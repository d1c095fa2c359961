//! Group-relative advantages (`shared/grpo-math.md` A and F).
//!
//! Each query is answered G times; each answer's reward is compared with the others of its
//! group. With the default estimator ([`AdvantageEstimator::Grpo`]) the baseline is the group
//! mean, and [`ScaleRewards`] picks the divisor:
//!
//! - `group`: A_i = (r_i - mean) / (std + eps), std the group's sample std (Bessel, divides by
//!   G - 1). The seed's "normalized reward" divides by the population std instead; we follow
//!   TRL and grpo-math and use the sample std. For G = 4 the two differ by sqrt(4/3).
//! - `batch`: the group mean is subtracted, the std is that of all rewards in the batch.
//! - `none` (Dr. GRPO): A_i = r_i - mean.
//!
//! [`AdvantageEstimator::Rloo`] subtracts the mean of the *other* G - 1 rewards instead, and
//! is scaled the same way (`none` gives textbook RLOO).
//!
//! A group whose rewards are all equal teaches nothing: its advantages are exactly 0 whatever
//! the estimator or scale, and it is counted in `frac_reward_zero_std`.
//!
//! ```
//! use agentcore_grpo::advantages::{group_advantages, AdvantageEstimator, ScaleRewards};
//!
//! let out = group_advantages(&[vec![1.0, 0.0, 0.0, 0.0], vec![1.0; 4]],
//!                            AdvantageEstimator::Grpo, ScaleRewards::None)?;
//! assert_eq!(out.advantages[0], vec![0.75, -0.25, -0.25, -0.25]);
//! assert_eq!(out.advantages[1], vec![0.0; 4]);
//! assert_eq!(out.frac_reward_zero_std, 0.5);
//! # Ok::<(), agentcore_grpo::GrpoError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::error::GrpoError;
use crate::numeric::{all_equal, mean, sample_std};

/// Added to the std before dividing, so that tiny spreads do not explode (TRL uses 1e-4).
pub const ADVANTAGE_EPSILON: f64 = 1e-4;

/// How rewards are scaled after the baseline is subtracted (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's sample std (+ eps).
    #[default]
    Group,
    /// Divide by the sample std of every reward in the batch (+ eps).
    Batch,
    /// Do not divide (Dr. GRPO).
    None,
}

/// Which baseline is subtracted from each reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// The group mean (GRPO).
    #[default]
    Grpo,
    /// The mean of the other G - 1 rewards of the group (RLOO, leave-one-out).
    Rloo,
}

/// Advantages of a batch of groups, with the statistics TRL logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAdvantages {
    /// One advantage per reward, in the shape of the input.
    pub advantages: Vec<Vec<f64>>,
    /// Mean reward of each group.
    pub group_means: Vec<f64>,
    /// Sample std of each group's rewards (0 for a group of one).
    pub group_stds: Vec<f64>,
    /// Number of groups whose rewards are all equal (all-zero advantages).
    pub zero_std_groups: usize,
    /// `zero_std_groups` / number of groups (TRL's `frac_reward_zero_std`).
    pub frac_reward_zero_std: f64,
    /// Mean of all rewards (TRL's `reward`).
    pub reward_mean: f64,
    /// Mean of the group stds (TRL's `reward_std`).
    pub reward_std: f64,
}

/// Computes the advantage of every reward of every group.
///
/// Errors on an empty batch, an empty group, or a reward that is not finite (the error names
/// the group and the index).
pub fn group_advantages(
    groups: &[Vec<f64>],
    estimator: AdvantageEstimator,
    scale: ScaleRewards,
) -> Result<GroupAdvantages, GrpoError> {
    check_groups(groups, "rewards")?;
    let batch_std = match scale {
        ScaleRewards::Batch => {
            let all: Vec<f64> = groups.iter().flatten().copied().collect();
            sample_std(&all)
        }
        _ => 0.0,
    };

    let mut advantages = Vec::with_capacity(groups.len());
    let mut group_means = Vec::with_capacity(groups.len());
    let mut group_stds = Vec::with_capacity(groups.len());
    let mut zero_std_groups = 0;
    for rewards in groups {
        let g = rewards.len();
        let m = mean(rewards);
        let std = sample_std(rewards);
        group_means.push(m);
        group_stds.push(std);
        if all_equal(rewards) {
            zero_std_groups += 1;
            advantages.push(vec![0.0; g]);
            continue;
        }
        let divisor = match scale {
            ScaleRewards::Group => std + ADVANTAGE_EPSILON,
            ScaleRewards::Batch => batch_std + ADVANTAGE_EPSILON,
            ScaleRewards::None => 1.0,
        };
        let sum: f64 = rewards.iter().sum();
        let row = rewards
            .iter()
            .map(|&r| {
                let baseline = match estimator {
                    AdvantageEstimator::Grpo => m,
                    // g >= 2 here: a group of one is all-equal.
                    AdvantageEstimator::Rloo => (sum - r) / (g - 1) as f64,
                };
                (r - baseline) / divisor
            })
            .collect();
        advantages.push(row);
    }

    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    Ok(GroupAdvantages {
        advantages,
        zero_std_groups,
        frac_reward_zero_std: zero_std_groups as f64 / groups.len() as f64,
        reward_mean: mean(&all),
        reward_std: mean(&group_stds),
        group_means,
        group_stds,
    })
}

/// Discounted returns of one trajectory's step rewards: G_k = sum_{j>=k} gamma^(j-k) r_j.
///
/// ```
/// use agentcore_grpo::advantages::discounted_returns;
/// let g = discounted_returns(&[0.0, 0.0, 1.0], 0.5);
/// assert_eq!(g, vec![0.25, 0.5, 1.0]);
/// ```
pub fn discounted_returns(step_rewards: &[f64], gamma: f64) -> Vec<f64> {
    let mut out = vec![0.0; step_rewards.len()];
    let mut running = 0.0;
    for (k, r) in step_rewards.iter().enumerate().rev() {
        running = r + gamma * running;
        out[k] = running;
    }
    out
}

/// Per-step credit (`shared/grpo-math.md` F): each trajectory's step rewards are turned into
/// discounted returns with `gamma`, and the returns of all steps of all trajectories of a group
/// are normalised together (group mean subtracted, then scaled per `scale`, where `batch` uses
/// the std of all returns in the batch). Each assistant token of step k then takes the advantage
/// of step k. The outcome reward is usually the reward of the final step.
///
/// Input shape: batch -> group -> trajectory -> step rewards. Output: the same shape.
pub fn step_advantages(
    batch: &[Vec<Vec<f64>>],
    gamma: f64,
    scale: ScaleRewards,
) -> Result<Vec<Vec<Vec<f64>>>, GrpoError> {
    if !(0.0..=1.0).contains(&gamma) {
        return Err(GrpoError::invalid_input("gamma", "must be in 0..=1", gamma));
    }
    // Flatten each group's returns into one vector, normalise with the outcome code, unflatten.
    let mut flat_groups = Vec::with_capacity(batch.len());
    for (gi, group) in batch.iter().enumerate() {
        let mut flat = Vec::new();
        for (ti, steps) in group.iter().enumerate() {
            if steps.is_empty() {
                return Err(GrpoError::invalid_input(
                    format!("step_rewards[{gi}][{ti}]"),
                    "must have at least one step",
                    "an empty trajectory",
                ));
            }
            flat.extend(discounted_returns(steps, gamma));
        }
        flat_groups.push(flat);
    }
    let normalised = group_advantages(&flat_groups, AdvantageEstimator::Grpo, scale)?;
    let mut out = Vec::with_capacity(batch.len());
    for (group, flat) in batch.iter().zip(normalised.advantages) {
        let mut rest = flat.as_slice();
        let mut trajectories = Vec::with_capacity(group.len());
        for steps in group {
            let (head, tail) = rest.split_at(steps.len());
            trajectories.push(head.to_vec());
            rest = tail;
        }
        out.push(trajectories);
    }
    Ok(out)
}

fn check_groups(groups: &[Vec<f64>], name: &str) -> Result<(), GrpoError> {
    if groups.is_empty() {
        return Err(GrpoError::invalid_input(name, "must contain at least one group", "[]"));
    }
    for (gi, group) in groups.iter().enumerate() {
        if group.is_empty() {
            return Err(GrpoError::invalid_input(
                format!("{name}[{gi}]"),
                "must contain at least one reward",
                "[]",
            ));
        }
        if let Some((i, r)) = group.iter().enumerate().find(|(_, r)| !r.is_finite()) {
            return Err(GrpoError::invalid_input(
                format!("{name}[{gi}][{i}]"),
                "must be finite",
                r,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_of_one_is_zero_and_counted() {
        let out = group_advantages(&[vec![0.7]], AdvantageEstimator::Rloo, ScaleRewards::Group)
            .expect("valid input");
        assert_eq!(out.advantages, vec![vec![0.0]]);
        assert_eq!(out.zero_std_groups, 1);
    }

    #[test]
    fn bad_input_names_the_element() {
        let err = group_advantages(
            &[vec![1.0, 0.0], vec![0.0, f64::NAN]],
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid input: `rewards[1][1]` must be finite, got NaN");
        let err =
            group_advantages(&[vec![]], AdvantageEstimator::Grpo, ScaleRewards::Group).unwrap_err();
        assert!(err.to_string().contains("`rewards[0]` must contain at least one reward"));
    }
}
