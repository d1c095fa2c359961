//! The tasks crate's error type.

/// Everything that can go wrong loading or generating tasks.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A file could not be read or parsed; the path (and line, for JSONL) is in the message.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },

    /// A task breaks a rule; `index` is its position in the data (0-based).
    #[error("task {index}: {rule}")]
    InvalidTask {
        /// Position of the task.
        index: usize,
        /// The rule it breaks, with the value given.
        rule: String,
    },

    /// The data as a whole breaks a rule (too few tasks...).
    #[error("{0}")]
    InvalidData(String),

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
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TaskError>;
