//! Judging a finished trajectory: did it succeed (verifiers), and what reward does it get
//! (the reward registry).
//!
//! Success comes only from checking the trajectory's final answer against the task's
//! `expected_outcome`: `result` by JSON type, `tests` run against the answer's code in the sandbox
//! when `test_passed` is expected, or a custom verifier named by `expected_outcome.verifier`.
//! Nothing the agent says about itself counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentcore_agent::sandbox::PythonSandbox;
use agentcore_agent::trajectory::Trajectory;
use agentcore_grpo::rewards::{RewardShaping, TrajectoryFacts};
use serde_json::{Value, json};

use crate::task::Task;
use crate::verify::{Tolerance, Verdict, parse_answer, verify_result};

/// A custom verifier: gets the task and the trajectory, says pass or fail with a reason.
pub type CustomVerifier = Arc<dyn Fn(&Task, &Trajectory) -> Verdict + Send + Sync>;

/// Everything verification may need.
#[derive(Clone, Default)]
pub struct Verifiers {
    /// Number tolerance of `result` comparisons.
    pub tolerance: Tolerance,
    /// Sandbox for `tests` (`test_passed` outcomes); without one such tasks fail with a reason.
    pub sandbox: Option<Arc<PythonSandbox>>,
    /// Custom verifiers by name.
    pub custom: BTreeMap<String, CustomVerifier>,
}

impl std::fmt::Debug for Verifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifiers")
            .field("tolerance", &self.tolerance)
            .field("sandbox", &self.sandbox.is_some())
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn fail(reason: impl Into<String>) -> Verdict {
    Verdict { passed: false, reason: reason.into() }
}

/// The code in an answer: the last fenced block if there is one, else the whole answer.
#[must_use]
pub fn answer_code(answer: &str) -> String {
    let mut blocks = Vec::new();
    let mut rest = answer;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map_or(0, |n| n + 1);
        let Some(end) = after[body_start..].find("```") else { break };
        blocks.push(&after[body_start..body_start + end]);
        rest = &after[body_start + end + 3..];
    }
    blocks.last().map_or_else(|| answer.trim().to_owned(), |b| (*b).to_owned())
}

impl Verifiers {
    /// Judges a trajectory against its task.
    #[must_use]
    pub fn verify(&self, task: &Task, trajectory: &Trajectory) -> Verdict {
        let outcome = &task.expected_outcome;
        if let Some(name) = outcome.get("verifier") {
            let Some(name) = name.as_str() else {
                return fail("expected_outcome.verifier must be a string");
            };
            return match self.custom.get(name) {
                Some(v) => v(task, trajectory),
                None => fail(format!("no custom verifier named `{name}` is registered")),
            };
        }
        let Some(answer) = trajectory.final_answer.as_deref() else {
            return fail(format!("no final answer ({:?})", trajectory.stop_reason));
        };
        if let Some(expected) = outcome.get("result") {
            let v = verify_result(answer, expected, self.tolerance);
            if !v.passed {
                return v;
            }
        }
        let wants_tests = outcome.get("test_passed") == Some(&Value::Bool(true));
        match (wants_tests, outcome.get("tests")) {
            (true, Some(Value::String(tests))) => {
                let Some(sandbox) = &self.sandbox else {
                    return fail("the task has tests but no sandbox is configured to run them");
                };
                let run = sandbox.run_tests(&answer_code(answer), tests);
                if run.passed {
                    Verdict { passed: true, reason: String::new() }
                } else {
                    fail(format!("tests failed: {}", run.exec.observation()))
                }
            }
            (true, Some(_)) => fail("expected_outcome.tests must be a string of Python code"),
            _ if outcome.get("result").is_some() => Verdict { passed: true, reason: String::new() },
            _ => fail("expected_outcome has neither `result`, `tests` nor `verifier`"),
        }
    }
}

/// What a reward function sees.
#[derive(Debug, Clone, Copy)]
pub struct RewardInput<'a> {
    /// The task.
    pub task: &'a Task,
    /// The trajectory.
    pub trajectory: &'a Trajectory,
    /// The verifier's verdict.
    pub verdict: &'a Verdict,
    /// The agent's step limit (for efficiency rewards).
    pub max_steps: u32,
}

impl RewardInput<'_> {
    /// The counted facts of the trajectory.
    #[must_use]
    pub fn facts(&self) -> TrajectoryFacts {
        TrajectoryFacts {
            success: self.verdict.passed,
            steps: self.trajectory.steps.len() as u32,
            successful_tool_calls: self.trajectory.successful_tool_calls,
            verification_steps: self.trajectory.verification_steps,
        }
    }
}

/// A reward function.
pub type RewardFn = Arc<dyn Fn(&RewardInput<'_>) -> Result<f64, String> + Send + Sync>;

struct Registered {
    f: RewardFn,
    /// Checked against [0, 1] when the registry validates.
    bounded: bool,
}

/// Reward functions by name, a strategy per `agent_type`, and a default.
pub struct RewardRegistry {
    functions: BTreeMap<String, Registered>,
    strategies: BTreeMap<String, String>,
    default: String,
    /// Reject values of bounded functions outside [0, 1] (and any non-finite value).
    pub validate: bool,
}

impl std::fmt::Debug for RewardRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardRegistry")
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("strategies", &self.strategies)
            .field("default", &self.default)
            .finish()
    }
}

/// Errors of the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewardError {
    /// A name is taken.
    #[error("a reward function named `{0}` is already registered")]
    Duplicate(String),
    /// A name is unknown.
    #[error("no reward function named `{name}`; registered: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A function returned a value outside its range, or failed.
    #[error("reward function `{name}`: {message}")]
    Invalid {
        /// The function.
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl RewardRegistry {
    /// A registry with the built-ins: `outcome` (the default: success 1, else 0), `shaped`
    /// (outcome plus the guide's shaping, from `shaping`), `code_quality`, `response_accuracy`,
    /// `task_efficiency`.
    #[must_use]
    pub fn with_builtins(shaping: RewardShaping) -> Self {
        let mut r = Self {
            functions: BTreeMap::new(),
            strategies: BTreeMap::new(),
            default: "outcome".into(),
            validate: true,
        };
        let outcome: RewardFn =
            Arc::new(|i: &RewardInput<'_>| Ok(if i.verdict.passed { 1.0 } else { 0.0 }));
        let mut on = shaping;
        on.enabled = true;
        let shaped: RewardFn = Arc::new(move |i: &RewardInput<'_>| Ok(on.reward(&i.facts()).total));
        r.insert("outcome", outcome, true);
        r.insert("shaped", shaped, false);
        r.insert("code_quality", Arc::new(code_quality), true);
        r.insert("response_accuracy", Arc::new(response_accuracy), true);
        r.insert("task_efficiency", Arc::new(task_efficiency), true);
        r
    }

    fn insert(&mut self, name: &str, f: RewardFn, bounded: bool) {
        self.functions.insert(name.to_owned(), Registered { f, bounded });
    }

    /// Registers a function (its values must lie in [0, 1] when the registry validates).
    ///
    /// # Errors
    /// [`RewardError::Duplicate`].
    pub fn register(&mut self, name: &str, f: RewardFn) -> Result<(), RewardError> {
        if self.functions.contains_key(name) {
            return Err(RewardError::Duplicate(name.to_owned()));
        }
        self.insert(name, f, true);
        Ok(())
    }

    fn known(&self, name: &str) -> Result<(), RewardError> {
        if self.functions.contains_key(name) {
            Ok(())
        } else {
            Err(RewardError::Unknown {
                name: name.to_owned(),
                known: self.functions.keys().cloned().collect::<Vec<_>>().join(", "),
            })
        }
    }

    /// Uses `name` for trajectories of agents of `agent_type`.
    ///
    /// # Errors
    /// [`RewardError::Unknown`].
    pub fn set_agent_strategy(&mut self, agent_type: &str, name: &str) -> Result<(), RewardError> {
        self.known(name)?;
        self.strategies.insert(agent_type.to_owned(), name.to_owned());
        Ok(())
    }

    /// Uses `name` for agent types without a strategy.
    ///
    /// # Errors
    /// [`RewardError::Unknown`].
    pub fn set_default(&mut self, name: &str) -> Result<(), RewardError> {
        self.known(name)?;
        self.default = name.to_owned();
        Ok(())
    }

    /// The function name used for `agent_type`.
    #[must_use]
    pub fn strategy(&self, agent_type: &str) -> &str {
        self.strategies.get(agent_type).unwrap_or(&self.default)
    }

    /// The reward of a trajectory of an agent of `agent_type`.
    ///
    /// # Errors
    /// [`RewardError::Invalid`] when the function fails, returns a non-finite value, or (bounded
    /// functions, validation on) a value outside [0, 1].
    pub fn reward(&self, agent_type: &str, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        let name = self.strategy(agent_type);
        let reg = self
            .functions
            .get(name)
            .ok_or_else(|| RewardError::Unknown { name: name.to_owned(), known: String::new() })?;
        let invalid = |message: String| RewardError::Invalid { name: name.to_owned(), message };
        let v = (reg.f)(input).map_err(invalid)?;
        if !v.is_finite() {
            return Err(invalid(format!("returned {v}, not a finite number")));
        }
        if self.validate && reg.bounded && !(0.0..=1.0).contains(&v) {
            return Err(invalid(format!("returned {v}, outside [0, 1]")));
        }
        Ok(v)
    }
}

/// `code_quality`: half for success, half for the share of tool calls that ran without error
/// (a trajectory without calls gets that half only when it succeeded).
fn code_quality(i: &RewardInput<'_>) -> Result<f64, String> {
    let s = if i.verdict.passed { 1.0 } else { 0.0 };
    let clean = i.trajectory.tool_accuracy().unwrap_or(s);
    Ok(0.5 * s + 0.5 * clean)
}

/// `response_accuracy`: partial credit for how close the answer is to `expected_outcome.result`:
/// 1 when the verifier passes; numbers `max(0, 1 - |a - e| / max(|e|, 1))`; lists the share of
/// positions that match; strings the normalised Levenshtein similarity; else 0.
fn response_accuracy(i: &RewardInput<'_>) -> Result<f64, String> {
    if i.verdict.passed {
        return Ok(1.0);
    }
    let (Some(answer), Some(expected)) =
        (i.trajectory.final_answer.as_deref(), i.task.expected_result())
    else {
        return Ok(0.0);
    };
    Ok(closeness(&parse_answer(answer), expected))
}

fn closeness(got: &Value, expected: &Value) -> f64 {
    match (got, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap_or(f64::NAN), e.as_f64().unwrap_or(f64::NAN));
            let v = 1.0 - (a - e).abs() / e.abs().max(1.0);
            if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 }
        }
        (Value::Array(a), Value::Array(e)) => {
            let n = a.len().max(e.len());
            if n == 0 {
                return 1.0;
            }
            let same = a.iter().zip(e).filter(|(x, y)| closeness(x, y) >= 1.0).count();
            same as f64 / n as f64
        }
        (Value::String(a), Value::String(e)) => {
            strsim::normalized_levenshtein(&a.trim().to_lowercase(), &e.trim().to_lowercase())
        }
        (a, e) if a == e => 1.0,
        _ => 0.0,
    }
}

/// `task_efficiency`: success discounted by the steps used: `1 - 0.5 (steps - 1) / max_steps` on
/// success, 0 otherwise.
fn task_efficiency(i: &RewardInput<'_>) -> Result<f64, String> {
    if !i.verdict.passed {
        return Ok(0.0);
    }
    let steps = i.trajectory.steps.len().max(1) as f64;
    let max = f64::from(i.max_steps.max(1));
    Ok((1.0 - 0.5 * (steps - 1.0) / max).clamp(0.0, 1.0))
}

/// A reward computed by an HTTP endpoint, so rewards can be written in any language: POSTs
/// `{query, expected_outcome, final_answer, steps, success, reason, tool_calls,
/// successful_tool_calls}` and reads `{"score": number}` from the answer.
#[must_use]
pub fn remote_reward(url: &str, timeout: Duration, allow_private: bool) -> RewardFn {
    let url = url.to_owned();
    // No redirects; the address connected to is the one checked (not a second lookup).
    let agent = agentcore_agent::tools::outbound_agent(allow_private, timeout);
    Arc::new(move |i: &RewardInput<'_>| {
        let body = json!({
            "query": i.task.query,
            "expected_outcome": i.task.expected_outcome,
            "final_answer": i.trajectory.final_answer,
            "steps": i.trajectory.steps,
            "success": i.verdict.passed,
            "reason": i.verdict.reason,
            "tool_calls": i.trajectory.tool_calls,
            "successful_tool_calls": i.trajectory.successful_tool_calls,
        });
        let mut resp = agent.post(&url).send_json(&body).map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{url}: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{url}: answer is not JSON ({e})"))?;
        v["score"].as_f64().ok_or_else(|| format!("{url}: answer has no numeric `score`: {v}"))
    })
}
