//! The seed suite: deterministic, balanced, every task's answer is right, splits by family.

use std::collections::BTreeMap;

use agentcore_tasks::seed::{FAMILIES, SplitSpec, generate, generate_one, split};
use agentcore_tasks::verify::{Tolerance, verify_result};
use rand::SeedableRng;
use serde_json::json;

#[test]
fn same_seed_same_tasks_other_seed_other_tasks() {
    let a = generate(200, 1, None).expect("tasks");
    assert_eq!(a, generate(200, 1, None).expect("tasks"));
    assert_ne!(a, generate(200, 2, None).expect("tasks"));
    assert_eq!(a.len(), 200);
}

#[test]
fn families_are_balanced_and_difficulties_all_appear() {
    let tasks = generate(240, 7, None).expect("tasks");
    let mut per_family: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_difficulty: BTreeMap<u8, usize> = BTreeMap::new();
    for t in &tasks {
        let m = t.metadata.as_ref().expect("metadata");
        *per_family.entry(m.family.clone()).or_default() += 1;
        *per_difficulty.entry(m.difficulty).or_default() += 1;
    }
    assert_eq!(per_family.len(), FAMILIES.len());
    assert!(per_family.values().all(|&n| n == 20), "{per_family:?}");
    assert_eq!(per_difficulty.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// Reads the list out of a query: the text between the first `[` and the following `]`.
fn list_in(query: &str) -> Vec<i64> {
    let start = query.find('[').expect("[");
    let end = query[start..].find(']').expect("]") + start;
    serde_json::from_str(&query[start..=end]).expect("list")
}

#[test]
fn every_generated_answer_is_right() {
    // Recompute each family's answer from the query text alone.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for family in FAMILIES {
        for difficulty in 1..=3 {
            for _ in 0..20 {
                let t = generate_one(family, difficulty, &mut rng).expect("task");
                let expected = t.expected_result().expect("result").clone();
                if family == "word_problem" {
                    let nums: Vec<i64> = t
                        .query
                        .split(|c: char| !c.is_ascii_digit())
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse().expect("number"))
                        .collect();
                    let want = if t.query.contains("buys") && t.query.contains("more") {
                        nums[0] + nums[1]
                    } else if t.query.contains("away") {
                        nums[0] - nums[1]
                    } else {
                        nums[0] * nums[1]
                    };
                    assert_eq!(expected, json!(want), "{}", t.query);
                    continue;
                }
                let xs = list_in(&t.query);
                let want = match family {
                    "sort" => {
                        let mut s = xs.clone();
                        s.sort_unstable();
                        json!(s)
                    }
                    "max" => json!(xs.iter().max()),
                    "min" => json!(xs.iter().min()),
                    "sum" => json!(xs.iter().sum::<i64>()),
                    "reverse" => json!(xs.iter().rev().collect::<Vec<_>>()),
                    "length" => json!(xs.len()),
                    "dedupe" => {
                        let mut seen: Vec<i64> = Vec::new();
                        xs.iter().for_each(|x| {
                            if !seen.contains(x) {
                                seen.push(*x)
                            }
                        });
                        assert!(seen.len() < xs.len(), "a dedupe task has duplicates");
                        json!(seen)
                    }
                    "filter_even" => json!(xs.iter().filter(|x| *x % 2 == 0).collect::<Vec<_>>()),
                    "second_largest" => {
                        let mut d = xs.clone();
                        d.sort_unstable();
                        d.dedup();
                        json!(d[d.len() - 2])
                    }
                    "mean" => json!(xs.iter().sum::<i64>() as f64 / xs.len() as f64),
                    "count" => {
                        let target: i64 =
                            t.query.split_whitespace().nth(4).expect("n").parse().expect("int");
                        json!(xs.iter().filter(|&&x| x == target).count())
                    }
                    other => panic!("untested family {other}"),
                };
                let verdict = verify_result(&want.to_string(), &expected, Tolerance::default());
                assert!(verdict.passed, "{family}: {} -> {expected} vs {want}", t.query);
            }
        }
    }
}

#[test]
fn stratified_split_holds_out_part_of_every_family_and_loses_nothing() {
    let tasks = generate(120, 5, None).expect("tasks");
    let s = split(tasks.clone(), &SplitSpec::Stratified { eval_fraction: 0.25, seed: 9 })
        .expect("split");
    assert_eq!(s.train.len() + s.eval.len(), 120);
    assert_eq!(s.eval.len(), 12 * 3, "ceil(10 * 0.25) = 3 per family");
    for family in FAMILIES {
        let count = |ts: &[agentcore_tasks::Task]| {
            ts.iter().filter(|t| t.metadata.as_ref().is_some_and(|m| m.family == family)).count()
        };
        assert_eq!((count(&s.train), count(&s.eval)), (7, 3), "{family}");
    }
    for t in &s.eval {
        assert!(!s.train.contains(t));
    }
}

#[test]
fn held_out_families_go_to_eval_only_and_bad_specs_are_refused() {
    let tasks = generate(120, 5, None).expect("tasks");
    let held = vec!["mean".to_string(), "count".to_string()];
    let s = split(tasks.clone(), &SplitSpec::HeldOutFamilies(held.clone())).expect("split");
    assert_eq!(s.eval.len(), 20);
    assert!(s.eval.iter().all(|t| held.contains(&t.metadata.as_ref().expect("m").family)));
    assert!(s.train.iter().all(|t| !held.contains(&t.metadata.as_ref().expect("m").family)));
    let err = split(tasks.clone(), &SplitSpec::HeldOutFamilies(vec!["sorting".into()]))
        .expect_err("refused");
    assert!(err.to_string().contains("sorting"), "{err}");
    let err =
        split(tasks, &SplitSpec::Stratified { eval_fraction: 1.5, seed: 0 }).expect_err("refused");
    assert!(err.to_string().contains("(0, 1)") && err.to_string().contains("1.5"), "{err}");
    let err = generate(3, 0, Some(4)).expect_err("refused");
    assert!(err.to_string().contains("1..=3"), "{err}");
}
