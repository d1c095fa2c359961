//! The built-in `seed` suite: the guide's kind of tasks ("Sort the list [5, 2, 8, 1]", "Find
//! the maximum value in [10, 3, 7]") from twelve seeded generator families, at three difficulty
//! levels (longer lists, wider numbers), with train / held-out splits.
//!
//! Same seed, same tasks: every draw comes from one ChaCha8 RNG seeded by the caller.
//!
//! ```
//! use agentcore_tasks::seed::generate;
//! let tasks = generate(24, 1, None).unwrap();
//! assert_eq!(tasks.len(), 24);
//! assert_eq!(tasks, generate(24, 1, None).unwrap());
//! ```

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

use crate::error::{Result, TaskError};
use crate::task::{Task, TaskMetadata};

/// The generator families, in a fixed order.
pub const FAMILIES: [&str; 12] = [
    "sort",
    "max",
    "min",
    "sum",
    "reverse",
    "length",
    "dedupe",
    "filter_even",
    "second_largest",
    "mean",
    "count",
    "word_problem",
];

/// Difficulty levels.
pub const DIFFICULTIES: std::ops::RangeInclusive<u8> = 1..=3;

fn list_text(xs: &[i64]) -> String {
    let items: Vec<String> = xs.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// A list for `difficulty`: 3-4 values in 0..20, 5-7 in 0..100, or 8-10 in -100..1000.
fn random_list(rng: &mut ChaCha8Rng, difficulty: u8) -> Vec<i64> {
    let (len, lo, hi) = match difficulty {
        1 => (rng.random_range(3..=4), 0, 20),
        2 => (rng.random_range(5..=7), 0, 100),
        _ => (rng.random_range(8..=10), -100, 1000),
    };
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// One task of `family` at `difficulty`.
pub fn generate_one(family: &str, difficulty: u8, rng: &mut ChaCha8Rng) -> Result<Task> {
    if !DIFFICULTIES.contains(&difficulty) {
        return Err(TaskError::Invalid {
            what: "difficulty".into(),
            rule: "must be in 1..=3".into(),
            value: difficulty.to_string(),
        });
    }
    let mut xs = random_list(rng, difficulty);
    let (query, result): (String, Value) = match family {
        "sort" => {
            let mut sorted = xs.clone();
            sorted.sort_unstable();
            (format!("Sort the list {}", list_text(&xs)), json!(sorted))
        }
        "max" => (
            format!("Find the maximum value in {}", list_text(&xs)),
            json!(xs.iter().max().copied().unwrap_or_default()),
        ),
        "min" => (
            format!("Find the minimum value in {}", list_text(&xs)),
            json!(xs.iter().min().copied().unwrap_or_default()),
        ),
        "sum" => (format!("Compute the sum of {}", list_text(&xs)), json!(xs.iter().sum::<i64>())),
        "reverse" => {
            let reversed: Vec<i64> = xs.iter().rev().copied().collect();
            (format!("Reverse the list {}", list_text(&xs)), json!(reversed))
        }
        "length" => {
            (format!("How many elements are in the list {}?", list_text(&xs)), json!(xs.len()))
        }
        "dedupe" => {
            // Repeat a few values so there is something to remove.
            for _ in 0..difficulty {
                let v = xs[rng.random_range(0..xs.len())];
                let at = rng.random_range(0..=xs.len());
                xs.insert(at, v);
            }
            let mut seen = Vec::new();
            for &x in &xs {
                if !seen.contains(&x) {
                    seen.push(x);
                }
            }
            (
                format!(
                    "Remove the duplicates from {}, keeping the first occurrence of each value",
                    list_text(&xs)
                ),
                json!(seen),
            )
        }
        "filter_even" => {
            let even: Vec<i64> = xs.iter().copied().filter(|x| x % 2 == 0).collect();
            (format!("Keep only the even numbers of {}", list_text(&xs)), json!(even))
        }
        "second_largest" => {
            let mut distinct = xs.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() < 2 {
                xs.push(distinct[0] + 1);
                distinct.push(distinct[0] + 1);
            }
            (
                format!("Find the second largest distinct value in {}", list_text(&xs)),
                json!(distinct[distinct.len() - 2]),
            )
        }
        "mean" => {
            let mean = xs.iter().sum::<i64>() as f64 / xs.len() as f64;
            (format!("Compute the mean of {}", list_text(&xs)), json!(mean))
        }
        "count" => {
            // Ask about a value that occurs (twice at least from difficulty 2) or, sometimes, not.
            let target = if rng.random_bool(0.8) { xs[rng.random_range(0..xs.len())] } else { -1 };
            for _ in 1..difficulty {
                if target >= 0 {
                    let at = rng.random_range(0..=xs.len());
                    xs.insert(at, target);
                }
            }
            let count = xs.iter().filter(|&&x| x == target).count();
            (format!("How many times does {target} occur in {}?", list_text(&xs)), json!(count))
        }
        "word_problem" => word_problem(rng, difficulty),
        other => {
            return Err(TaskError::Invalid {
                what: "family".into(),
                rule: format!("must be one of {FAMILIES:?}"),
                value: other.into(),
            });
        }
    };
    let mut expected_outcome = Map::new();
    expected_outcome.insert("result".into(), result);
    expected_outcome.insert("test_passed".into(), Value::Bool(true));
    Ok(Task {
        query,
        expected_outcome,
        metadata: Some(TaskMetadata { family: family.into(), difficulty }),
    })
}

fn word_problem(rng: &mut ChaCha8Rng, difficulty: u8) -> (String, Value) {
    const NAMES: [&str; 6] = ["Alice", "Bob", "Chen", "Dana", "Emeka", "Fatima"];
    const ITEMS: [&str; 6] = ["apple", "book", "marble", "pencil", "stamp", "coin"];
    let name = NAMES[rng.random_range(0..NAMES.len())];
    let item = ITEMS[rng.random_range(0..ITEMS.len())];
    let hi = [0, 20, 100, 1000][usize::from(difficulty)];
    let a = rng.random_range(2..hi);
    let b = rng.random_range(1..a);
    match rng.random_range(0..3) {
        0 => (
            format!(
                "{name} has {a} {item}s and buys {b} more. How many {item}s does {name} have now?"
            ),
            json!(a + b),
        ),
        1 => (
            format!("{name} has {a} {item}s and gives {b} away. How many {item}s are left?"),
            json!(a - b),
        ),
        _ => {
            let boxes = rng.random_range(2..=(2 + i64::from(difficulty) * 3));
            (
                format!(
                    "{name} buys {boxes} boxes with {b} {item}s in each. How many {item}s is that?"
                ),
                json!(boxes * b),
            )
        }
    }
}

/// `n` tasks from seed `seed`: families in turn (each family's share differs by at most one),
/// in a seeded order; difficulty `difficulty`, or drawn from 1..=3 when `None`.
pub fn generate(n: usize, seed: u64, difficulty: Option<u8>) -> Result<Vec<Task>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<&str> = FAMILIES.to_vec();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        if i % order.len() == 0 {
            order.shuffle(&mut rng);
        }
        let d = difficulty.unwrap_or_else(|| rng.random_range(DIFFICULTIES));
        tasks.push(generate_one(order[i % order.len()], d, &mut rng)?);
    }
    Ok(tasks)
}

/// How to hold tasks out for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitSpec {
    /// Within each family, a seeded `eval_fraction` of its tasks (rounded up) is held out, so
    /// every family is trained on and evaluated.
    Stratified {
        /// Share of each family held out, in (0, 1).
        eval_fraction: f64,
        /// Seed of the shuffle.
        seed: u64,
    },
    /// Whole families are held out (tests transfer to unseen kinds of task).
    HeldOutFamilies(Vec<String>),
}

/// Tasks split in two.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Training tasks.
    pub train: Vec<Task>,
    /// Held-out tasks.
    pub eval: Vec<Task>,
}

/// Splits tasks by family (tasks without metadata count as family `""`).
pub fn split(tasks: Vec<Task>, spec: &SplitSpec) -> Result<Split> {
    let family = |t: &Task| t.metadata.as_ref().map(|m| m.family.clone()).unwrap_or_default();
    let mut out = Split { train: Vec::new(), eval: Vec::new() };
    match spec {
        SplitSpec::Stratified { eval_fraction, seed } => {
            if !(*eval_fraction > 0.0 && *eval_fraction < 1.0) {
                return Err(TaskError::Invalid {
                    what: "eval_fraction".into(),
                    rule: "must be in (0, 1)".into(),
                    value: eval_fraction.to_string(),
                });
            }
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            let mut by_family: BTreeMap<String, Vec<Task>> = BTreeMap::new();
            for t in tasks {
                by_family.entry(family(&t)).or_default().push(t);
            }
            for (_, mut group) in by_family {
                group.shuffle(&mut rng);
                let n_eval = ((group.len() as f64) * eval_fraction).ceil() as usize;
                let n_eval = n_eval.min(group.len().saturating_sub(1));
                out.eval.extend(group.drain(..n_eval));
                out.train.extend(group);
            }
        }
        SplitSpec::HeldOutFamilies(held) => {
            if let Some(bad) = held.iter().find(|f| !FAMILIES.contains(&f.as_str())) {
                return Err(TaskError::Invalid {
                    what: "held-out family".into(),
                    rule: format!("must be one of {FAMILIES:?}"),
                    value: bad.clone(),
                });
            }
            for t in tasks {
                if held.contains(&family(&t)) {
                    out.eval.push(t);
                } else {
                    out.train.push(t);
                }
            }
        }
    }
    Ok(out)
}
