//! Budget arithmetic in exact decimals (`max_budget_usd`).
//!
//! Money never touches `f64`. A [`Budget`] is a limit and what was spent; its
//! [`BudgetState`] is `ok` below 75% of the limit, `warning_75` from 75%, `warning_90` from
//! 90%, and `exceeded` only when the spend is *over* the limit: spending exactly the budget is
//! allowed, a cent more is not. A pre-flight check refuses a planned spend that would cross the
//! limit; [`Budget::record`] reports which warning thresholds a spend crossed, so that each
//! warning event fires once.
//!
//! ```
//! use agentcore_grpo::budget::{Budget, BudgetState};
//! use rust_decimal::Decimal;
//!
//! let mut budget = Budget::new(Decimal::new(5000, 2))?; // $50.00
//! let update = budget.record(Decimal::new(3800, 2))?;    // $38.00 spent: 76%
//! assert_eq!(update.crossed, vec![BudgetState::Warning75]);
//! assert!(budget.check_spend(Decimal::new(1200, 2)).is_ok()); // exactly $50.00: allowed
//! assert!(budget.check_spend(Decimal::new(1201, 2)).is_err()); // $50.01: refused
//! # Ok::<(), agentcore_grpo::GrpoError>(())
//! ```

use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::GrpoError;

/// Where a budget stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetState {
    /// Below 75% of the limit.
    Ok,
    /// At least 75% of the limit spent.
    #[serde(rename = "warning_75")]
    Warning75,
    /// At least 90% of the limit spent.
    #[serde(rename = "warning_90")]
    Warning90,
    /// More than the limit spent.
    Exceeded,
}

impl BudgetState {
    /// The wire name: `ok`, `warning_75`, `warning_90`, `exceeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning75 => "warning_75",
            Self::Warning90 => "warning_90",
            Self::Exceeded => "exceeded",
        }
    }
}

/// What a call to [`Budget::record`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetUpdate {
    /// State before the spend.
    pub previous: BudgetState,
    /// State after it.
    pub current: BudgetState,
    /// States entered by this spend, lowest first (e.g. both warnings for one big spend).
    pub crossed: Vec<BudgetState>,
}

/// A money limit and what has been spent against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    limit: Decimal,
    spent: Decimal,
}

impl Budget {
    /// A budget with nothing spent. The limit must be >= 0.
    pub fn new(limit: Decimal) -> Result<Self, GrpoError> {
        Self::with_spent(limit, Decimal::ZERO)
    }

    /// A budget with an amount already spent (e.g. restored from a checkpoint).
    pub fn with_spent(limit: Decimal, spent: Decimal) -> Result<Self, GrpoError> {
        if limit < Decimal::ZERO {
            return Err(GrpoError::invalid_input("max_budget_usd", "must be >= 0", limit));
        }
        if spent < Decimal::ZERO {
            return Err(GrpoError::invalid_input("spent", "must be >= 0", spent));
        }
        Ok(Self { limit, spent })
    }

    /// The limit.
    pub fn limit(&self) -> Decimal {
        self.limit
    }

    /// What has been spent.
    pub fn spent(&self) -> Decimal {
        self.spent
    }

    /// What is left, never negative.
    pub fn remaining(&self) -> Decimal {
        (self.limit - self.spent).max(Decimal::ZERO)
    }

    /// Percent of the limit left, in 0..=100 (a zero budget has 0% left).
    pub fn remaining_percent(&self) -> Decimal {
        if self.limit.is_zero() {
            return Decimal::ZERO;
        }
        (self.remaining() * Decimal::ONE_HUNDRED / self.limit).min(Decimal::ONE_HUNDRED)
    }

    /// The state for the current spend.
    pub fn state(&self) -> BudgetState {
        Self::state_for(self.limit, self.spent)
    }

    fn state_for(limit: Decimal, spent: Decimal) -> BudgetState {
        if spent > limit {
            BudgetState::Exceeded
        } else if spent * Decimal::TEN >= limit * Decimal::new(9, 0) {
            // A zero budget with nothing spent lands here: fully used, nothing left.
            BudgetState::Warning90
        } else if spent * Decimal::new(4, 0) >= limit * Decimal::new(3, 0) {
            BudgetState::Warning75
        } else {
            BudgetState::Ok
        }
    }

    /// Pre-flight check: may `planned` more be spent? Spending up to exactly the limit is
    /// allowed; an error states the planned spend, the amount spent and the limit.
    pub fn check_spend(&self, planned: Decimal) -> Result<(), GrpoError> {
        if planned < Decimal::ZERO {
            return Err(GrpoError::invalid_input("planned spend", "must be >= 0", planned));
        }
        if self.spent + planned > self.limit {
            return Err(GrpoError::BudgetExceeded {
                planned,
                spent: self.spent,
                limit: self.limit,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// Records money that was spent (it was, so it is always added, even past the limit) and
    /// reports the states the spend crossed.
    pub fn record(&mut self, cost: Decimal) -> Result<BudgetUpdate, GrpoError> {
        if cost < Decimal::ZERO {
            return Err(GrpoError::invalid_input("cost", "must be >= 0", cost));
        }
        let previous = self.state();
        self.spent += cost;
        let current = self.state();
        let crossed = [BudgetState::Warning75, BudgetState::Warning90, BudgetState::Exceeded]
            .into_iter()
            .filter(|s| previous < *s && *s <= current)
            .collect();
        Ok(BudgetUpdate { previous, current, crossed })
    }
}

/// Pre-flight check of a whole job: is the estimated total within the limit? (JSON-RPC
/// error -40001 when not.)
pub fn preflight(estimated_total: Decimal, limit: Decimal) -> Result<(), GrpoError> {
    Budget::new(limit)?.check_spend(estimated_total)
}

/// Cost of running for `elapsed` at `usd_per_hour` (local compute), to the nanosecond.
///
/// ```
/// use agentcore_grpo::budget::compute_cost;
/// use rust_decimal::Decimal;
/// use std::time::Duration;
/// // 90 minutes at $2.40/h = $3.60.
/// let cost = compute_cost(Decimal::new(240, 2), Duration::from_secs(5400));
/// assert_eq!(cost, Decimal::new(360, 2));
/// ```
pub fn compute_cost(usd_per_hour: Decimal, elapsed: Duration) -> Decimal {
    let nanos = Decimal::from(elapsed.as_secs()) * Decimal::from(1_000_000_000u64)
        + Decimal::from(elapsed.subsec_nanos());
    (usd_per_hour * nanos / Decimal::from(3_600_000_000_000u64)).normalize()
}

/// Cost of an API call from token counts and prices in USD per million tokens.
///
/// ```
/// use agentcore_grpo::budget::token_cost;
/// use rust_decimal::Decimal;
/// // 1,500 input tokens at $0.15/M plus 500 output tokens at $0.60/M = $0.000525.
/// let cost = token_cost(1500, 500, Decimal::new(15, 2), Decimal::new(60, 2));
/// assert_eq!(cost, Decimal::new(525, 6));
/// ```
pub fn token_cost(
    input_tokens: u64,
    output_tokens: u64,
    usd_per_million_input: Decimal,
    usd_per_million_output: Decimal,
) -> Decimal {
    let million = Decimal::from(1_000_000u64);
    ((Decimal::from(input_tokens) * usd_per_million_input
        + Decimal::from(output_tokens) * usd_per_million_output)
        / million)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(cents: i64) -> Decimal {
        Decimal::new(cents, 2)
    }

    #[test]
    fn states_at_the_thresholds() {
        let at = |spent| Budget::with_spent(usd(10000), usd(spent)).map(|b| b.state());
        assert_eq!(at(0), Ok(BudgetState::Ok));
        assert_eq!(at(7499), Ok(BudgetState::Ok));
        assert_eq!(at(7500), Ok(BudgetState::Warning75));
        assert_eq!(at(8999), Ok(BudgetState::Warning75));
        assert_eq!(at(9000), Ok(BudgetState::Warning90));
        assert_eq!(at(10000), Ok(BudgetState::Warning90));
        assert_eq!(at(10001), Ok(BudgetState::Exceeded));
    }

    #[test]
    fn exactly_the_budget_is_allowed_more_is_not() {
        let b = Budget::with_spent(usd(5000), usd(4000)).expect("valid");
        assert!(b.check_spend(usd(1000)).is_ok());
        let err = b.check_spend(usd(1001)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "budget exceeded: spending $10.01 on top of $40.00 would exceed the budget of $50.00 \
             ($10.00 remaining)"
        );
        assert!(preflight(usd(5000), usd(5000)).is_ok());
        assert!(preflight(usd(5001), usd(5000)).is_err());
    }

    #[test]
    fn one_big_spend_crosses_every_threshold_once() {
        let mut b = Budget::new(usd(100)).expect("valid");
        let u = b.record(usd(101)).expect("non-negative");
        assert_eq!(u.previous, BudgetState::Ok);
        assert_eq!(
            u.crossed,
            vec![BudgetState::Warning75, BudgetState::Warning90, BudgetState::Exceeded]
        );
        let again = b.record(usd(1)).expect("non-negative");
        assert!(again.crossed.is_empty());
        assert_eq!(b.remaining(), Decimal::ZERO);
        assert_eq!(b.remaining_percent(), Decimal::ZERO);
    }

    #[test]
    fn remaining_percent_is_exact() {
        let b = Budget::with_spent(usd(5000), usd(4520)).expect("valid");
        assert_eq!(b.remaining(), usd(480));
        assert_eq!(b.remaining_percent(), Decimal::new(96, 1));
    }

    #[test]
    fn zero_budget() {
        let b = Budget::new(Decimal::ZERO).expect("valid");
        assert!(b.check_spend(Decimal::ZERO).is_ok());
        assert!(b.check_spend(Decimal::new(1, 9)).is_err());
        assert_eq!(b.state(), BudgetState::Warning90);
    }

    #[test]
    fn negative_amounts_are_refused() {
        assert!(Budget::new(usd(-1)).is_err());
        let mut b = Budget::new(usd(100)).expect("valid");
        assert!(b.record(usd(-1)).is_err());
        assert!(b.check_spend(usd(-1)).is_err());
        assert_eq!(b.spent(), Decimal::ZERO);
    }

    #[test]
    fn compute_cost_counts_nanoseconds() {
        // 1 ns at $3600/h = $0.000000001.
        assert_eq!(compute_cost(Decimal::from(3600), Duration::from_nanos(1)), Decimal::new(1, 9));
    }
}
