//! The one error type of the crate.
//!
//! Every variant carries the values a caller needs to act on it (the field, the rule, the value
//! given, the index of the bad element), and every message states the rule and the value, so
//! that the API layer can turn it into a JSON-RPC error without re-wording it.

use rust_decimal::Decimal;

/// A configuration value that breaks its rule.
///
/// Displays as "`batch_size` must be in 1..=128, got 200".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {rule}, got {value}")]
pub struct FieldError {
    /// Dotted path of the field, e.g. `batch_size` or `reward_shaping.step_penalty`.
    pub field: String,
    /// The rule it breaks, phrased to follow the field name ("must be in 1..=128").
    pub rule: String,
    /// The value that was given, as text.
    pub value: String,
}

impl FieldError {
    /// A field error from its parts.
    pub fn new(field: impl Into<String>, rule: impl Into<String>, value: impl ToString) -> Self {
        Self { field: field.into(), rule: rule.into(), value: value.to_string() }
    }
}

/// Everything that can go wrong in the algorithm crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrpoError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid config: {0}")]
    InvalidConfig(FieldError),

    /// A configuration document names a field that does not exist.
    #[error("invalid config: unknown field `{field}`{}", suggestion_text(.suggestion))]
    UnknownConfigField {
        /// Dotted path of the unknown field.
        field: String,
        /// The closest known field name, when one is close.
        suggestion: Option<String>,
    },

    /// A configuration document could not be parsed, or a value has the wrong type.
    #[error("invalid {format} config{}: {message}", location_text(.field))]
    ConfigParse {
        /// The format being parsed (JSON, YAML, TOML).
        format: &'static str,
        /// Dotted path of the field where parsing failed, when known.
        field: Option<String>,
        /// What the parser said.
        message: String,
    },

    /// An input to an algorithm breaks its rule (empty group, non-finite reward, bad level...).
    #[error("invalid input: `{what}` {rule}, got {value}")]
    InvalidInput {
        /// The argument or element, e.g. `rewards[2][5]`.
        what: String,
        /// The rule it breaks.
        rule: String,
        /// The value given, as text.
        value: String,
    },

    /// Two inputs that must have the same length do not.
    #[error("length mismatch: `{what}` has {got} elements, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: String,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        got: usize,
    },

    /// A spend would take the total over the budget.
    #[error(
        "budget exceeded: spending ${planned} on top of ${spent} would exceed the budget of \
         ${limit} (${remaining} remaining)"
    )]
    BudgetExceeded {
        /// The planned or estimated spend.
        planned: Decimal,
        /// What was already spent.
        spent: Decimal,
        /// The budget.
        limit: Decimal,
        /// What is left of it (never negative).
        remaining: Decimal,
    },
}

impl GrpoError {
    /// Shorthand for [`GrpoError::InvalidInput`].
    pub fn invalid_input(
        what: impl Into<String>,
        rule: impl Into<String>,
        value: impl ToString,
    ) -> Self {
        Self::InvalidInput { what: what.into(), rule: rule.into(), value: value.to_string() }
    }

    /// The config field this error is about, if it is about one (for `data.field` in the API).
    pub fn config_field(&self) -> Option<&str> {
        match self {
            Self::InvalidConfig(e) => Some(&e.field),
            Self::UnknownConfigField { field, .. } => Some(field),
            Self::ConfigParse { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

fn location_text(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(" at `{f}`"),
        None => String::new(),
    }
}
