//! Verifiers: does a final answer equal `expected_outcome.result`?
//!
//! The answer is text (what the agent put in its final answer). It is read as JSON when it
//! parses (Python's `True`/`False`/`None` and single-quoted lists too), else as a plain string,
//! and compared with the expected value by the expected value's JSON type:
//! - numbers: within `abs + rel * |expected|` (defaults 1e-6 and 1e-6);
//! - strings: after normalising both (trim, surrounding quotes, case, runs of whitespace);
//! - booleans: `true`/`false`, `yes`/`no`, Python's `True`/`False`;
//! - lists and objects: element by element / key by key, with the same rules.
//!
//! ```
//! use agentcore_tasks::verify::{Tolerance, verify_result};
//! use serde_json::json;
//! assert!(verify_result("[1, 2, 5, 8]", &json!([1, 2, 5, 8]), Tolerance::default()).passed);
//! assert!(verify_result(" 18.3333333 ", &json!(18.333333333), Tolerance::default()).passed);
//! assert!(!verify_result("[1, 2, 8, 5]", &json!([1, 2, 5, 8]), Tolerance::default()).passed);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How close a number must be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub abs: f64,
    /// Relative tolerance (times |expected|).
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { abs: 1e-6, rel: 1e-6 }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the answer matches.
    pub passed: bool,
    /// Why not (empty when it passed).
    pub reason: String,
}

/// Compares an answer with the expected result.
pub fn verify_result(answer: &str, expected: &Value, tolerance: Tolerance) -> Verdict {
    let parsed = parse_answer(answer);
    match compare(&parsed, expected, tolerance, "result") {
        Ok(()) => Verdict { passed: true, reason: String::new() },
        Err(reason) => Verdict { passed: false, reason },
    }
}

/// Reads an answer as JSON where it can (also Python literals), else as a string.
pub fn parse_answer(answer: &str) -> Value {
    let text = answer.trim().trim_end_matches('.').trim();
    let text = text.strip_prefix("```").and_then(|t| t.strip_suffix("```")).unwrap_or(text).trim();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    // Python literals: True/False/None and single-quoted strings.
    let pythonic = text
        .replace('\'', "\"")
        .replace("True", "true")
        .replace("False", "false")
        .replace("None", "null");
    serde_json::from_str::<Value>(&pythonic).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn normalise(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        .unwrap_or(s);
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', "").parse::<f64>().ok(),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match normalise(s).as_str() {
            "true" | "yes" => Some(true),
            "false" | "no" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn compare(got: &Value, expected: &Value, tol: Tolerance, at: &str) -> Result<(), String> {
    let mismatch = || Err(format!("{at}: expected {}, got {}", short(expected), short(got)));
    match expected {
        Value::Number(n) => {
            let e = n.as_f64().unwrap_or(f64::NAN);
            match as_number(got) {
                Some(g) if (g - e).abs() <= tol.abs + tol.rel * e.abs() => Ok(()),
                _ => mismatch(),
            }
        }
        Value::String(e) => match got {
            Value::String(g) if normalise(g) == normalise(e) => Ok(()),
            Value::Number(_) | Value::Bool(_) if normalise(&got.to_string()) == normalise(e) => {
                Ok(())
            }
            _ => mismatch(),
        },
        Value::Bool(e) => match as_bool(got) {
            Some(g) if g == *e => Ok(()),
            _ => mismatch(),
        },
        Value::Null => match got {
            Value::Null => Ok(()),
            Value::String(s) if matches!(normalise(s).as_str(), "null" | "none") => Ok(()),
            _ => mismatch(),
        },
        Value::Array(e) => match got {
            Value::Array(g) if g.len() == e.len() => g
                .iter()
                .zip(e)
                .enumerate()
                .try_for_each(|(i, (g, e))| compare(g, e, tol, &format!("{at}[{i}]"))),
            Value::Array(g) => Err(format!("{at}: expected {} items, got {}", e.len(), g.len())),
            _ => mismatch(),
        },
        Value::Object(e) => match got {
            Value::Object(g) if g.len() == e.len() => {
                e.iter().try_for_each(|(k, ev)| match g.get(k) {
                    Some(gv) => compare(gv, ev, tol, &format!("{at}.{k}")),
                    None => Err(format!("{at}: missing key `{k}`")),
                })
            }
            _ => mismatch(),
        },
    }
}
