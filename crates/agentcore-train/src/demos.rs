//! Demonstrations for the warm start of the built-in agent: for each task of the `seed` suite, the
//! Python expression that solves it and a plausible wrong one.
//!
//! The warm start is deliberately imperfect (see `design.md`): for some families the
//! demonstrations mostly use the wrong expression, and a few answers are miscopied, so the
//! warm-started agent starts at a middling success rate that GRPO can improve on, and only from
//! what the agent itself samples.

use agentcore_tasks::Task;
use rand::Rng;

/// Version of the demonstrations: part of the warm-start cache key, bumped whenever
/// [`expressions`] or the transcript format changes.
pub const DEMOS_VERSION: u32 = 2;

/// The right and a plausible wrong expression for a seed task, or `None` for other tasks.
#[must_use]
pub fn expressions(task: &Task) -> Option<(String, String)> {
    let family = task.metadata.as_ref()?.family.as_str();
    let q = &task.query;
    let list = || -> Option<String> { Some(q[q.find('[')?..=q.rfind(']')?].to_owned()) };
    let numbers: Vec<i64> = q
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|s| s.parse().ok())
        .collect();
    let pair = |right: String, wrong: String| Some((right, wrong));
    match family {
        "sort" => {
            let l = list()?;
            pair(format!("sorted({l})"), format!("sorted({l}, reverse=True)"))
        }
        "max" => {
            let l = list()?;
            pair(format!("max({l})"), format!("{l}[-1]"))
        }
        "min" => {
            let l = list()?;
            pair(format!("min({l})"), format!("{l}[0]"))
        }
        "sum" => {
            let l = list()?;
            pair(format!("sum({l})"), format!("len({l})"))
        }
        "reverse" => {
            let l = list()?;
            pair(format!("{l}[::-1]"), format!("sorted({l})"))
        }
        "length" => {
            let l = list()?;
            pair(format!("len({l})"), format!("max({l})"))
        }
        "dedupe" => {
            let l = list()?;
            pair(format!("list(dict.fromkeys({l}))"), format!("sorted(set({l}))"))
        }
        "filter_even" => {
            let l = list()?;
            pair(
                format!("[x for x in {l} if x % 2 == 0]"),
                format!("[x for x in {l} if x % 2 == 1]"),
            )
        }
        "second_largest" => {
            let l = list()?;
            pair(format!("sorted(set({l}))[-2]"), format!("sorted(set({l}))[1]"))
        }
        "mean" => {
            let l = list()?;
            pair(format!("sum({l}) / len({l})"), format!("sum({l}) // len({l})"))
        }
        "count" => {
            let l = list()?;
            let target = numbers.first()?;
            pair(format!("{l}.count({target})"), format!("len({l})"))
        }
        "word_problem" => {
            let (a, b) = (numbers.first()?, numbers.get(1)?);
            if q.contains("buys") && q.contains("boxes") {
                pair(format!("{a} * {b}"), format!("{a} + {b}"))
            } else if q.contains("gives") {
                pair(format!("{a} - {b}"), format!("{a} + {b}"))
            } else {
                pair(format!("{a} + {b}"), format!("{a} - {b}"))
            }
        }
        _ => None,
    }
}

/// How imperfect the demonstrations are.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoNoise {
    /// Families whose demonstrations mostly use the wrong expression.
    pub weak_families: Vec<String>,
    /// Probability of the wrong expression in a weak family.
    pub weak_wrong_rate: f64,
    /// Probability of the wrong expression elsewhere.
    pub wrong_rate: f64,
    /// Probability that one digit of the answer is miscopied.
    pub miscopy_rate: f64,
}

impl Default for DemoNoise {
    fn default() -> Self {
        Self {
            weak_families: ["max", "second_largest", "mean", "dedupe", "word_problem", "count"]
                .map(String::from)
                .to_vec(),
            weak_wrong_rate: 0.75,
            wrong_rate: 0.1,
            miscopy_rate: 0.05,
        }
    }
}

/// The expression a demonstration uses for `task`, with the noise applied.
pub fn demo_expression<R: Rng + ?Sized>(
    task: &Task,
    noise: &DemoNoise,
    rng: &mut R,
) -> Option<String> {
    let (right, wrong) = expressions(task)?;
    let family = task.metadata.as_ref().map(|m| m.family.as_str()).unwrap_or_default();
    let p = if noise.weak_families.iter().any(|f| f == family) {
        noise.weak_wrong_rate
    } else {
        noise.wrong_rate
    };
    Some(if rng.random_bool(p) { wrong } else { right })
}

/// Changes one digit of `answer` with probability `rate` (a miscopied answer).
pub fn miscopy<R: Rng + ?Sized>(answer: &str, rate: f64, rng: &mut R) -> String {
    let digits: Vec<usize> =
        answer.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
    if digits.is_empty() || !rng.random_bool(rate) {
        return answer.to_owned();
    }
    let at = digits[rng.random_range(0..digits.len())];
    let old = answer.as_bytes()[at] - b'0';
    let new = (old + rng.random_range(1..10u8)) % 10;
    let mut out = answer.to_owned();
    out.replace_range(at..=at, &new.to_string());
    out
}
