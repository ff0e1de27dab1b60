use chrono::{DateTime, Utc};

/// Everything the billing core can reject. Each variant names what was wrong and where, so the
/// HTTP layer can map [`BillingError::InvalidParameter`] to a 4xx with a per-field error and the
/// others to problem details without re-parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// A caller-supplied parameter (query string, CLI flag, function argument) is out of range.
    #[error("invalid parameter `{parameter}`: {reason}")]
    InvalidParameter {
        parameter: &'static str,
        reason: String,
    },
    /// The ledger violates an invariant (overlap, negative duration, mixed identities in a run).
    #[error("invalid ledger for run `{run_id}`: {reason}")]
    InvalidLedger { run_id: String, reason: String },
    /// A price book is malformed (unsorted versions, negative price, bad share).
    #[error("invalid price book for region `{region}`: {reason}")]
    InvalidPriceBook { region: String, reason: String },
    /// Usage falls in a region or at an instant that no price book version covers.
    #[error("no price for region `{region}` at {at}")]
    NoPrice { region: String, at: DateTime<Utc> },
    /// A budget is malformed.
    #[error("invalid budget for org `{org}`: {reason}")]
    InvalidBudget { org: String, reason: String },
    /// A rendering (JSON) could not be produced.
    #[error("could not encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    /// A figure left the integer range we store it in; the inputs are absurd, not the arithmetic.
    #[error("arithmetic overflow while computing {what}")]
    Overflow { what: &'static str },
}

impl BillingError {
    /// The offending parameter when the error is a caller's bad parameter.
    pub fn parameter(&self) -> Option<&'static str> {
        match self {
            BillingError::InvalidParameter { parameter, .. } => Some(parameter),
            _ => None,
        }
    }

    pub(crate) fn param(parameter: &'static str, reason: impl Into<String>) -> Self {
        BillingError::InvalidParameter {
            parameter,
            reason: reason.into(),
        }
    }

    pub(crate) fn ledger(run_id: &str, reason: impl Into<String>) -> Self {
        BillingError::InvalidLedger {
            run_id: run_id.to_owned(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = BillingError> = std::result::Result<T, E>;
