//! Loading data: JSON arrays, JSONL, dataset folders; every bad item is named with the rule.

use agentcore_tasks::data::{MIN_TRAINING_TASKS, load_tasks, to_jsonl, validate_training};
use agentcore_tasks::seed::generate;

#[test]
fn json_jsonl_and_dataset_folders_load_the_same_tasks() {
    let dir = tempfile::tempdir().expect("dir");
    let tasks = generate(150, 1, None).expect("tasks");
    let array = dir.path().join("train.json");
    std::fs::write(&array, serde_json::to_string(&tasks).expect("json")).expect("write");
    let lines = dir.path().join("train.jsonl");
    std::fs::write(&lines, to_jsonl(&tasks)).expect("write");
    assert_eq!(load_tasks(&array, "train").expect("json"), tasks);
    assert_eq!(load_tasks(&lines, "train").expect("jsonl"), tasks);

    // A Hugging Face folder with sharded split files under data/.
    let folder = dir.path().join("dataset");
    std::fs::create_dir_all(folder.join("data")).expect("mkdir");
    std::fs::write(folder.join("data/train-00000-of-00002.jsonl"), to_jsonl(&tasks[..100]))
        .expect("w");
    std::fs::write(folder.join("data/train-00001-of-00002.jsonl"), to_jsonl(&tasks[100..]))
        .expect("w");
    std::fs::write(folder.join("data/test-00000-of-00001.jsonl"), to_jsonl(&tasks[..10]))
        .expect("w");
    assert_eq!(load_tasks(&folder, "train").expect("folder"), tasks);
    assert_eq!(load_tasks(&folder, "test").expect("folder").len(), 10);
    let err = load_tasks(&folder, "validation").expect_err("no such split");
    assert!(err.to_string().contains("validation"), "{err}");
    validate_training(&tasks, MIN_TRAINING_TASKS).expect("150 >= 100");
    let err = validate_training(&tasks[..99], MIN_TRAINING_TASKS).expect_err("too few");
    assert!(err.to_string().contains("at least 100") && err.to_string().contains("99"), "{err}");
}

#[test]
fn bad_items_are_refused_with_index_line_and_rule() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            r#"[{"query": "ok", "expected_outcome": {}}, {"query": "", "expected_outcome": {}}]"#,
            "task 1: `query` must be a non-empty string",
        ),
        (
            r#"[{"query": "q", "expected_outcome": [1, 2]}]"#,
            "task 0: `expected_outcome` must be an object, got an array",
        ),
        (r#"[{"expected_outcome": {}}]"#, "task 0: `query` is missing"),
        (
            r#"[{"query": 3, "expected_outcome": {}}]"#,
            "task 0: `query` must be a string, got a number",
        ),
        (r#"{"query": "q"}"#, "must hold a JSON array"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.json"));
        std::fs::write(&path, text).expect("write");
        let err = load_tasks(&path, "train").expect_err("refused").to_string();
        assert!(err.contains(want), "case {i}: {err}");
    }
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, "{\"query\": \"q\", \"expected_outcome\": {}}\n\nnot json\n")
        .expect("write");
    let err = load_tasks(&path, "train").expect_err("refused").to_string();
    assert!(err.contains("bad.jsonl") && err.contains("line 3"), "{err}");
    let path = dir.path().join("train.parquet");
    std::fs::write(&path, b"PAR1").expect("write");
    let err = load_tasks(&path, "train").expect_err("refused").to_string();
    assert!(err.contains("train.parquet"), "{err}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn parquet_files_as_datasets_writes_them_load() {
    // Written by scripts/make_parquet_fixtures.py (pyarrow, snappy).
    let tasks = load_tasks(&fixture("struct_outcome.parquet"), "train").expect("struct outcome");
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].query, "Sort the list [5, 2, 8, 1]");
    assert_eq!(tasks[0].expected_result(), Some(&serde_json::json!([1, 2, 5, 8])));
    assert_eq!(tasks[1].expected_outcome["test_passed"], serde_json::json!(true));

    let tasks = load_tasks(&fixture("json_outcome.parquet"), "train").expect("json outcome");
    let results: Vec<_> = tasks.iter().map(|t| t.expected_result().cloned()).collect();
    assert_eq!(
        results,
        vec![
            Some(serde_json::json!(10)),
            Some(serde_json::json!(true)),
            Some(serde_json::json!("Paris"))
        ]
    );
    let meta = tasks[1].metadata.as_ref().expect("metadata");
    assert_eq!((meta.family.as_str(), meta.difficulty), ("prime", 2));

    // As a split file of a dataset folder.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir_all(dir.path().join("data")).expect("mkdir");
    std::fs::copy(
        fixture("json_outcome.parquet"),
        dir.path().join("data/train-00000-of-00001.parquet"),
    )
    .expect("copy");
    assert_eq!(load_tasks(dir.path(), "train").expect("folder"), tasks);
}
