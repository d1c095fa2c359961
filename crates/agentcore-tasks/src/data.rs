//! Loading training data in the guide's shape, `{query, expected_outcome}`:
//! - a `.json` file holding an array of tasks;
//! - a `.jsonl` file, one task per line (blank lines skipped);
//! - a Hugging Face dataset folder: split files `train.jsonl`, `test.jsonl`, ... directly in it
//!   or under `data/` (also sharded, `data/train-00000-of-00002.jsonl`), read in name order;
//! - Parquet files (what `datasets` writes), alone or as split files: columns `query` and
//!   `expected_outcome` (a struct, or a string holding a JSON object when the outcomes' types
//!   differ between rows), optionally `metadata`.
//!
//! Every item is checked: a non-empty string `query`, an object `expected_outcome`; the error
//! names the item's index (and file and line for JSONL) and the rule.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, TaskError};
use crate::task::{Task, TaskMetadata};

/// The guide's minimum number of training queries.
pub const MIN_TRAINING_TASKS: usize = 100;

fn file_error(path: &Path, message: impl ToString) -> TaskError {
    TaskError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Converts one item, checking the rules.
pub fn task_from_value(index: usize, value: Value) -> Result<Task> {
    let invalid = |rule: String| TaskError::InvalidTask { index, rule };
    let Value::Object(mut item) = value else {
        return Err(invalid(format!("must be an object, got {}", kind(&value))));
    };
    let query = match item.remove("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q,
        Some(Value::String(_)) => {
            return Err(invalid("`query` must be a non-empty string, got \"\"".into()));
        }
        Some(other) => {
            return Err(invalid(format!("`query` must be a string, got {}", kind(&other))));
        }
        None => return Err(invalid("`query` is missing".into())),
    };
    let expected_outcome = match item.remove("expected_outcome") {
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(invalid(format!(
                "`expected_outcome` must be an object, got {}",
                kind(&other)
            )));
        }
        None => return Err(invalid("`expected_outcome` is missing".into())),
    };
    let metadata = match item.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => serde_json::from_value::<TaskMetadata>(m.clone()).ok(),
    };
    Ok(Task { query, expected_outcome, metadata })
}

/// A value for an error message: its JSON kind and its text, cut to 40 characters
/// (`a string ("abc")`).
#[must_use]
pub fn kind(v: &Value) -> String {
    let s = v.to_string();
    let s = if s.chars().count() > 40 {
        format!("{}...", s.chars().take(37).collect::<String>())
    } else {
        s
    };
    let name = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{name} ({s})")
}

/// Reads a `.json` array, a `.jsonl` file or a `.parquet` file.
pub fn load_file(path: &Path) -> Result<Vec<Task>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "parquet" {
        return load_parquet(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    match ext.as_str() {
        "json" => {
            let value: Value = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
            let Value::Array(items) = value else {
                return Err(file_error(
                    path,
                    format!("must hold a JSON array of tasks, got {}", kind(&value)),
                ));
            };
            items.into_iter().enumerate().map(|(i, v)| task_from_value(i, v)).collect()
        }
        "jsonl" => {
            let mut tasks = Vec::new();
            for (line_no, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .map_err(|e| file_error(path, format!("line {}: {e}", line_no + 1)))?;
                let index = tasks.len();
                tasks.push(
                    task_from_value(index, value)
                        .map_err(|e| file_error(path, format!("line {}: {e}", line_no + 1)))?,
                );
            }
            Ok(tasks)
        }
        _ => Err(file_error(path, "must be a .json array, a .jsonl file or a dataset folder")),
    }
}

/// Reads a Parquet file row by row (snappy or uncompressed columns).
fn load_parquet(path: &Path) -> Result<Vec<Task>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| file_error(path, e))?;
    let rows = reader.get_row_iter(None).map_err(|e| file_error(path, e))?;
    let mut tasks = Vec::new();
    for (index, row) in rows.enumerate() {
        let row = row.map_err(|e| file_error(path, format!("row {index}: {e}")))?;
        let mut value = row.to_json_value();
        // An outcome stored as JSON text (mixed types across rows) is read as its object.
        if let Some(text) = value.get("expected_outcome").and_then(Value::as_str)
            && let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(text)
        {
            value["expected_outcome"] = parsed;
        }
        tasks.push(task_from_value(index, value).map_err(|e| file_error(path, e))?);
    }
    Ok(tasks)
}

/// The split files of `split` in a dataset folder, in name order.
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("data")] {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = name.split('.').next().unwrap_or("");
            let matches_split = stem == split || stem.starts_with(&format!("{split}-"));
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if path.is_file() && matches_split && matches!(ext, "jsonl" | "json" | "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(file_error(
            dir,
            format!("no `{split}` split: expected {split}.jsonl (or data/{split}-*.jsonl)"),
        ));
    }
    Ok(files)
}

/// Loads tasks from a file, or the `split` of a dataset folder.
pub fn load_tasks(path: &Path, split: &str) -> Result<Vec<Task>> {
    if path.is_dir() {
        let mut tasks = Vec::new();
        for file in split_files(path, split)? {
            tasks.extend(load_file(&file)?);
        }
        Ok(tasks)
    } else {
        load_file(path)
    }
}

/// Checks a training set: at least `min_tasks` tasks (the guide asks for 100+).
pub fn validate_training(tasks: &[Task], min_tasks: usize) -> Result<()> {
    if tasks.len() < min_tasks {
        return Err(TaskError::InvalidData(format!(
            "training data must have at least {min_tasks} queries, got {}",
            tasks.len()
        )));
    }
    Ok(())
}

/// Writes tasks as JSONL (one task per line).
pub fn to_jsonl(tasks: &[Task]) -> String {
    tasks.iter().map(|t| serde_json::to_string(t).unwrap_or_default() + "\n").collect()
}
