//! What a job costs: the machine's price per hour times the job's wall time, plus API spend;
//! and whether the next iteration still fits the budget.

use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;

use crate::events::IterationMetrics;

/// Dollars of `seconds` of a machine at `price_per_hour`.
#[must_use]
pub fn usd(seconds: f64, price_per_hour: Decimal) -> Decimal {
    let hours = Decimal::from_f64(seconds / 3600.0).unwrap_or(Decimal::ZERO);
    (hours * price_per_hour).round_dp(6)
}

/// Seconds of the next iteration, estimated as the mean of those so far (0 before the first).
#[must_use]
pub fn next_iteration_seconds(history: &[IterationMetrics]) -> f64 {
    if history.is_empty() {
        0.0
    } else {
        history.iter().map(|m| m.rollout_seconds + m.update_seconds).sum::<f64>()
            / history.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_costs_the_price_and_half_an_hour_half() {
        let price = Decimal::new(10, 2);
        assert_eq!(usd(3600.0, price), Decimal::new(10, 2));
        assert_eq!(usd(1800.0, price), Decimal::new(5, 2));
        assert_eq!(usd(0.0, price), Decimal::ZERO);
    }
}
