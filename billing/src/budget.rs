//! Monthly budgets per organisation: which alert thresholds a spend level reaches.
//!
//! A threshold of `p` percent is reached when `spend × 100 >= limit × p`, compared exactly in
//! integers, so a spend of exactly 80 % of the limit reaches the 80 % threshold.

use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// Highest threshold accepted: alerts at 10× the budget are still meaningful, beyond is a typo.
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub org: String,
    pub monthly_limit_micros: i64,
    /// Strictly increasing, each in 1..=[`MAX_THRESHOLD_PERCENT`].
    pub thresholds_percent: Vec<u32>,
    /// Stop the organisation's applications (with savepoints) once spend reaches the limit.
    pub hard_stop: bool,
}

impl Budget {
    pub fn new(
        org: impl Into<String>,
        monthly_limit_micros: i64,
        thresholds_percent: Vec<u32>,
        hard_stop: bool,
    ) -> Result<Self> {
        let budget = Budget {
            org: org.into(),
            monthly_limit_micros,
            thresholds_percent,
            hard_stop,
        };
        budget.validate()?;
        Ok(budget)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| BillingError::InvalidBudget {
            org: self.org.clone(),
            reason,
        };
        if self.monthly_limit_micros <= 0 {
            return Err(bad(format!(
                "monthly_limit_micros must be positive, got {}",
                self.monthly_limit_micros
            )));
        }
        for (index, &pct) in self.thresholds_percent.iter().enumerate() {
            if !(1..=MAX_THRESHOLD_PERCENT).contains(&pct) {
                return Err(bad(format!(
                    "thresholds_percent[{index}] must be in 1..={MAX_THRESHOLD_PERCENT}, got {pct}"
                )));
            }
            if index > 0 && self.thresholds_percent[index - 1] >= pct {
                return Err(bad(format!(
                    "thresholds_percent must be strictly increasing, {} then {pct}",
                    self.thresholds_percent[index - 1]
                )));
            }
        }
        Ok(())
    }

    fn reaches(&self, spend_micros: i64, pct: u32) -> bool {
        i128::from(spend_micros) * 100 >= i128::from(self.monthly_limit_micros) * i128::from(pct)
    }

    /// Every threshold reached at `spend_micros`, ascending.
    pub fn reached(&self, spend_micros: i64) -> Vec<u32> {
        self.thresholds_percent
            .iter()
            .copied()
            .filter(|&pct| self.reaches(spend_micros, pct))
            .collect()
    }

    /// The thresholds reached at `current_micros` but not at `previous_micros`: the alerts to
    /// raise now. Spend going down (a corrected ledger) raises nothing.
    pub fn newly_crossed(&self, previous_micros: i64, current_micros: i64) -> Vec<u32> {
        self.thresholds_percent
            .iter()
            .copied()
            .filter(|&pct| self.reaches(current_micros, pct) && !self.reaches(previous_micros, pct))
            .collect()
    }

    /// Whether applications must be stopped: hard stop is on and spend reached the limit.
    pub fn hard_stop_due(&self, spend_micros: i64) -> bool {
        self.hard_stop && self.reaches(spend_micros, 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget::new("org_a", 100_000_000, vec![50, 80, 100, 120], true).unwrap()
    }

    #[test]
    fn thresholds_are_reached_at_exactly_their_level() {
        let b = budget();
        assert_eq!(b.reached(0), Vec::<u32>::new());
        assert_eq!(b.reached(49_999_999), Vec::<u32>::new());
        assert_eq!(b.reached(50_000_000), vec![50]);
        assert_eq!(b.reached(100_000_000), vec![50, 80, 100]);
        assert_eq!(b.reached(i64::MAX), vec![50, 80, 100, 120]);
        assert!(!b.hard_stop_due(99_999_999));
        assert!(b.hard_stop_due(100_000_000));
        let soft = Budget::new("org_a", 100, vec![100], false).unwrap();
        assert!(!soft.hard_stop_due(1_000));
    }

    #[test]
    fn only_newly_crossed_thresholds_alert() {
        let b = budget();
        assert_eq!(b.newly_crossed(10, 85_000_000), vec![50, 80]);
        assert_eq!(b.newly_crossed(85_000_000, 85_000_001), Vec::<u32>::new());
        assert_eq!(b.newly_crossed(85_000_000, 130_000_000), vec![100, 120]);
        assert_eq!(b.newly_crossed(130_000_000, 10), Vec::<u32>::new());
    }

    #[test]
    fn malformed_budgets_name_the_org_and_field() {
        let err = Budget::new("org_a", 0, vec![], false).unwrap_err();
        assert!(err.to_string().contains("org_a") && err.to_string().contains("monthly_limit"));
        let err = Budget::new("org_a", 1, vec![80, 50], false).unwrap_err();
        assert!(err.to_string().contains("strictly increasing"), "{err}");
        assert!(Budget::new("org_a", 1, vec![0], false).is_err());
        assert!(Budget::new("org_a", 1, vec![1001], false).is_err());
    }
}
