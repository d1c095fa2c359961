//! Outcome rewards and the guide's optional reward shaping.
//!
//! The outcome comes from checking the agent's final answer against `expected_outcome` (the
//! caller's verifier), never from the agent's own claim: this module only turns counted facts
//! about a finished trajectory into a number. With shaping on, the guide's constants apply:
//! +0.1 per successful tool call, +0.05 per verification step, -0.01 per step; all of them, and
//! the outcome values 1.0 / 0.0, are configurable.
//!
//! ```
//! use agentcore_grpo::rewards::{RewardShaping, TrajectoryFacts};
//!
//! let shaping = RewardShaping { enabled: true, ..RewardShaping::default() };
//! // A successful 3-step trajectory: a tool call, a verification, the final answer.
//! let facts = TrajectoryFacts { success: true, steps: 3, successful_tool_calls: 1, verification_steps: 1 };
//! assert!((shaping.reward(&facts).total - 1.12).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Outcome values and shaping constants (`reward_shaping` in [`crate::GRPOConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardShaping {
    /// Add the shaping terms to the outcome. Default off: the reward is the outcome alone.
    pub enabled: bool,
    /// Outcome reward of a trajectory whose answer matches the expected outcome. Default 1.0.
    pub success_reward: f64,
    /// Outcome reward of any other trajectory. Default 0.0.
    pub failure_reward: f64,
    /// Added per tool call that returned without error. Default 0.1.
    pub tool_call_bonus: f64,
    /// Added per verification step. Default 0.05.
    pub verification_bonus: f64,
    /// Subtracted per step (so it is given as a non-negative number). Default 0.01.
    pub step_penalty: f64,
}

impl Default for RewardShaping {
    fn default() -> Self {
        Self {
            enabled: false,
            success_reward: 1.0,
            failure_reward: 0.0,
            tool_call_bonus: 0.1,
            verification_bonus: 0.05,
            step_penalty: 0.01,
        }
    }
}

/// Counted facts about one finished trajectory; the agent runtime fills them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TrajectoryFacts {
    /// The verifier accepted the final answer.
    pub success: bool,
    /// Steps taken (model turns).
    pub steps: u32,
    /// Tool calls that returned without error.
    pub successful_tool_calls: u32,
    /// Steps that verified an intermediate or final result.
    pub verification_steps: u32,
}

/// A reward with its parts, so that reports can show where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardBreakdown {
    /// `success_reward` or `failure_reward`.
    pub outcome: f64,
    /// `tool_call_bonus` x successful tool calls (0 when shaping is off).
    pub tool_bonus: f64,
    /// `verification_bonus` x verification steps (0 when shaping is off).
    pub verification_bonus: f64,
    /// `step_penalty` x steps, as a non-negative number that is subtracted (0 when off).
    pub step_penalty: f64,
    /// outcome + tool_bonus + verification_bonus - step_penalty.
    pub total: f64,
}

impl RewardShaping {
    /// The reward of a trajectory with these facts.
    pub fn reward(&self, facts: &TrajectoryFacts) -> RewardBreakdown {
        let outcome = if facts.success { self.success_reward } else { self.failure_reward };
        let (tool_bonus, verification_bonus, step_penalty) = if self.enabled {
            (
                self.tool_call_bonus * f64::from(facts.successful_tool_calls),
                self.verification_bonus * f64::from(facts.verification_steps),
                self.step_penalty * f64::from(facts.steps),
            )
        } else {
            (0.0, 0.0, 0.0)
        };
        RewardBreakdown {
            outcome,
            tool_bonus,
            verification_bonus,
            step_penalty,
            total: outcome + tool_bonus + verification_bonus - step_penalty,
        }
    }

    /// The rules these settings break, with field names under `prefix`.
    pub fn violations(&self, prefix: &str) -> Vec<FieldError> {
        let mut out = Vec::new();
        let field = |name: &str| format!("{prefix}.{name}");
        for (name, value) in
            [("success_reward", self.success_reward), ("failure_reward", self.failure_reward)]
        {
            if !value.is_finite() {
                out.push(FieldError::new(field(name), "must be a finite number", value));
            }
        }
        if out.is_empty() && self.success_reward <= self.failure_reward {
            out.push(FieldError::new(
                field("success_reward"),
                format!(
                    "must be greater than `{}` ({}), or the policy is rewarded for failing",
                    field("failure_reward"),
                    self.failure_reward
                ),
                self.success_reward,
            ));
        }
        for (name, value) in [
            ("tool_call_bonus", self.tool_call_bonus),
            ("verification_bonus", self.verification_bonus),
            ("step_penalty", self.step_penalty),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                let rule = if name == "step_penalty" {
                    "must be >= 0 and finite (it is subtracted once per step)"
                } else {
                    "must be >= 0 and finite"
                };
                out.push(FieldError::new(field(name), rule, value));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped() -> RewardShaping {
        RewardShaping { enabled: true, ..RewardShaping::default() }
    }

    #[test]
    fn guide_vectors() {
        let success = TrajectoryFacts {
            success: true,
            steps: 3,
            successful_tool_calls: 1,
            verification_steps: 1,
        };
        let r = shaped().reward(&success);
        assert!((r.total - 1.12).abs() < 1e-12, "{r:?}");
        assert!((r.tool_bonus - 0.1).abs() < 1e-15);
        assert!((r.verification_bonus - 0.05).abs() < 1e-15);
        assert!((r.step_penalty - 0.03).abs() < 1e-15);

        let failed_one_step = TrajectoryFacts { success: false, steps: 1, ..Default::default() };
        assert!((shaped().reward(&failed_one_step).total - -0.01).abs() < 1e-15);

        let off = RewardShaping::default().reward(&success);
        assert!((off.total - 1.0).abs() < f64::EPSILON);
        assert!(off.tool_bonus.abs() < f64::EPSILON && off.step_penalty.abs() < f64::EPSILON);
    }

    #[test]
    fn constants_are_configurable() {
        let custom = RewardShaping {
            enabled: true,
            success_reward: 2.0,
            failure_reward: -1.0,
            tool_call_bonus: 0.5,
            verification_bonus: 0.0,
            step_penalty: 0.25,
        };
        let facts = TrajectoryFacts {
            success: false,
            steps: 2,
            successful_tool_calls: 2,
            verification_steps: 4,
        };
        // -1 + 2 * 0.5 + 0 - 2 * 0.25 = -0.5
        assert!((custom.reward(&facts).total - -0.5).abs() < 1e-15);
    }

    #[test]
    fn violations_name_field_rule_and_value() {
        let bad = RewardShaping { step_penalty: -0.01, ..RewardShaping::default() };
        let v = bad.violations("reward_shaping");
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].to_string(),
            "`reward_shaping.step_penalty` must be >= 0 and finite (it is subtracted once per \
             step), got -0.01"
        );
        let inverted = RewardShaping { success_reward: 0.0, ..RewardShaping::default() };
        assert_eq!(inverted.violations("r")[0].field, "r.success_reward");
    }
}
