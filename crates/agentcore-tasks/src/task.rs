//! A task in the guide's shape.
//!
//! ```
//! use agentcore_tasks::Task;
//! let task: Task = serde_json::from_str(
//!     r#"{"query": "Sort the list [5, 2, 8, 1]", "expected_outcome": {"result": [1, 2, 5, 8], "test_passed": true}}"#,
//! ).unwrap();
//! assert_eq!(task.expected_result(), Some(&serde_json::json!([1, 2, 5, 8])));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a generated task comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetadata {
    /// The generator family (`sort`, `max`, ...).
    pub family: String,
    /// Difficulty level, 1 (easiest) to 3.
    pub difficulty: u8,
}

/// One task: a query and what a correct run produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// What the agent is asked.
    pub query: String,
    /// What a correct run produces: `result` (compared with the final answer), optionally
    /// `test_passed` and other keys for custom verifiers.
    pub expected_outcome: Map<String, Value>,
    /// Family and difficulty of generated tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TaskMetadata>,
}

impl Task {
    /// `expected_outcome.result`, when present.
    pub fn expected_result(&self) -> Option<&Value> {
        self.expected_outcome.get("result")
    }
}
