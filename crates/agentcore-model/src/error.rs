//! The model crate's error type.

/// Everything that can go wrong in the model engine.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch, device error...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written; the path is in the message.
    #[error(transparent)]
    Fs(#[from] agentcore_fs::FsError),

    /// A file that must exist or parse did not.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What was wrong with it.
        message: String,
    },

    /// An argument breaks its rule; the message names the argument, the rule and the value.
    #[error("invalid {what}: {rule}, got {value}")]
    Invalid {
        /// The argument.
        what: String,
        /// The rule.
        rule: String,
        /// The value given.
        value: String,
    },

    /// An error from the algorithm crate (config, loss inputs).
    #[error(transparent)]
    Grpo(#[from] agentcore_grpo::GrpoError),
}

impl ModelError {
    /// Shorthand for [`ModelError::Invalid`].
    pub fn invalid(what: impl Into<String>, rule: impl Into<String>, value: impl ToString) -> Self {
        Self::Invalid { what: what.into(), rule: rule.into(), value: value.to_string() }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, ModelError>;
