//! Verifiers compare by JSON type; the agent's own claim never counts.

use agentcore_tasks::verify::{Tolerance, parse_answer, verify_result};
use proptest::prelude::*;
use serde_json::{Value, json};

fn passes(answer: &str, expected: Value) -> bool {
    verify_result(answer, &expected, Tolerance::default()).passed
}

#[test]
fn compares_by_json_type() {
    // Lists, element by element.
    assert!(passes("[1, 2, 5, 8]", json!([1, 2, 5, 8])));
    assert!(passes("[1,2,5,8]", json!([1, 2, 5, 8])));
    assert!(!passes("[1, 2, 8, 5]", json!([1, 2, 5, 8])));
    assert!(!passes("[1, 2, 5]", json!([1, 2, 5, 8])));
    assert!(passes("['a', 'b']", json!(["a", "b"])), "Python list of strings");
    // Numbers within tolerance.
    assert!(passes("10", json!(10)));
    assert!(passes("10.0000000001", json!(10)));
    assert!(!passes("10.01", json!(10)));
    assert!(passes("\"10\"", json!(10)), "a number written as a string");
    assert!(passes("18.333333333333332", json!(55.0 / 3.0)));
    assert!(verify_result("10.01", &json!(10), Tolerance { abs: 0.1, rel: 0.0 }).passed);
    // Strings, normalised.
    assert!(passes("  Hello   World ", json!("hello world")));
    assert!(passes("\"Paris\"", json!("paris")));
    assert!(!passes("Lyon", json!("Paris")));
    // Booleans.
    assert!(passes("True", json!(true)));
    assert!(passes("yes", json!(true)));
    assert!(!passes("false", json!(true)));
    // Objects, key by key.
    assert!(passes(r#"{"a": 1, "b": [2]}"#, json!({"b": [2], "a": 1})));
    assert!(!passes(r#"{"a": 1}"#, json!({"a": 1, "b": 2})));
    // A claim of success is not an answer.
    assert!(!passes("I sorted the list successfully, test passed: true", json!([1, 2, 3])));
    assert!(!passes("", json!([1, 2, 3])));
}

#[test]
fn the_reason_names_where_it_differs() {
    let v = verify_result("[1, 2, 9]", &json!([1, 2, 3]), Tolerance::default());
    assert!(!v.passed);
    assert!(
        v.reason.contains("result[2]") && v.reason.contains('9') && v.reason.contains('3'),
        "{}",
        v.reason
    );
}

proptest! {
    /// Any JSON value, written out, verifies against itself; with one number changed, it does not.
    #[test]
    fn a_value_verifies_against_itself(xs in proptest::collection::vec(-1_000_000i64..1_000_000, 0..12)) {
        let expected = json!(xs);
        prop_assert!(passes(&expected.to_string(), expected.clone()));
        prop_assert_eq!(parse_answer(&expected.to_string()), expected.clone());
        if !xs.is_empty() {
            let mut changed = xs.clone();
            changed[0] += 1;
            prop_assert!(!passes(&json!(changed).to_string(), expected));
        }
    }
}
