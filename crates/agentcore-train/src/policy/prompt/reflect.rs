//! Reflection (Training-Free GRPO, arXiv 2510.08191): for a group with a reward spread, the
//! reflector model is shown the better and the worse trajectory (never the expected outcome)
//! and the current lessons, and answers with operations on the library as JSON. Operations are
//! validated (ids exist, length caps, no duplicates); a malformed answer is recorded and skipped.

use agentcore_agent::backend::OpenAiBackend;
use agentcore_agent::trajectory::Trajectory;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::state::{Lesson, PromptState, demonstration};

/// One operation on the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new lesson.
    Add(String),
    /// A lesson rewritten.
    Update(String, String),
    /// A lesson removed.
    Delete(String),
}

/// A transcript of a trajectory for the reflector.
fn transcript(t: &Trajectory) -> String {
    match demonstration(t) {
        Some(messages) => {
            messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
        }
        None => {
            let mut s: Vec<String> = t
                .steps
                .iter()
                .map(|st| {
                    let text = st.action["text"].as_str().unwrap_or("").trim().to_owned();
                    let out = st.result["output"].as_str().unwrap_or("").trim().to_owned();
                    if out.is_empty() {
                        text
                    } else {
                        format!("{text}\n<tool_response>\n{out}\n</tool_response>")
                    }
                })
                .collect();
            if let Some(e) = &t.error {
                s.push(format!("(error: {e})"));
            }
            if s.is_empty() { "(no answer)".into() } else { s.join("\n") }
        }
    }
}

/// The reflector's request.
#[must_use]
pub fn prompt(
    query: &str,
    better: (&Trajectory, f64),
    worse: (&Trajectory, f64),
    lessons: &[Lesson],
    max_ops: usize,
    max_chars: usize,
) -> String {
    let library = if lessons.is_empty() {
        "(none yet)".to_owned()
    } else {
        lessons.iter().map(|l| format!("[{}] {}", l.id, l.text)).collect::<Vec<_>>().join("\n")
    };
    format!(
        "You improve the instructions of an AI agent that solves tasks with tools. It tried the \
         same task twice; the better attempt earned a higher reward.\n\nTask: {query}\n\n\
         Better attempt (reward {:.2}):\n{}\n\nWorse attempt (reward {:.2}):\n{}\n\n\
         Current lessons:\n{library}\n\nWrite general lessons (not the answer to this task) that \
         would make the agent behave like the better attempt. Reply with only a JSON array of at \
         most {max_ops} operations, each at most {max_chars} characters:\n\
         [{{\"op\": \"add\", \"text\": \"...\"}}, {{\"op\": \"update\", \"id\": \"L1\", \"text\": \"...\"}}, \
         {{\"op\": \"delete\", \"id\": \"L1\"}}]",
        better.1,
        transcript(better.0),
        worse.1,
        transcript(worse.0),
    )
}

/// The operations of an answer, each checked against the library; the rejected ones with why.
#[must_use]
pub fn parse_ops(
    answer: &str,
    state: &PromptState,
    max_chars: usize,
) -> (Vec<Op>, Vec<(Value, String)>) {
    let (Some(start), Some(end)) = (answer.find('['), answer.rfind(']')) else {
        return (Vec::new(), vec![(json!(clip(answer)), "no JSON array in the answer".into())]);
    };
    let items: Vec<Value> = match serde_json::from_str(&answer[start..=end.max(start)]) {
        Ok(Value::Array(items)) => items,
        Ok(_) | Err(_) => {
            return (Vec::new(), vec![(json!(clip(answer)), "the array is not valid JSON".into())]);
        }
    };
    let mut ops = Vec::new();
    let mut rejected = Vec::new();
    let mut texts: Vec<String> = state.lessons.iter().map(|l| normal(&l.text)).collect();
    for item in items {
        let id = item["id"].as_str().map(str::to_owned);
        let text = item["text"].as_str().map(|t| t.trim().to_owned());
        let exists = |id: &str| state.lessons.iter().any(|l| l.id == id);
        let check_text = |t: &Option<String>, texts: &[String]| -> Result<String, String> {
            let t = t.clone().filter(|t| !t.is_empty()).ok_or("text must be a non-empty string")?;
            if t.chars().count() > max_chars {
                return Err(format!(
                    "text must be at most {max_chars} characters, got {}",
                    t.chars().count()
                ));
            }
            if texts.contains(&normal(&t)) {
                return Err("duplicates a lesson".into());
            }
            Ok(t)
        };
        let op = match item["op"].as_str() {
            Some("add") => check_text(&text, &texts).map(Op::Add),
            Some("update") => match &id {
                Some(i) if exists(i) => check_text(&text, &texts).map(|t| Op::Update(i.clone(), t)),
                other => Err(format!("update needs the id of a lesson, got {other:?}")),
            },
            Some("delete") => match &id {
                Some(i) if exists(i) => Ok(Op::Delete(i.clone())),
                other => Err(format!("delete needs the id of a lesson, got {other:?}")),
            },
            other => Err(format!("op must be add, update or delete, got {other:?}")),
        };
        match op {
            Ok(op) => {
                if let Op::Add(t) | Op::Update(_, t) = &op {
                    texts.push(normal(t));
                }
                ops.push(op);
            }
            Err(why) => rejected.push((item, why)),
        }
    }
    (ops, rejected)
}

fn normal(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn clip(s: &str) -> String {
    s.chars().take(500).collect()
}

/// Asks the reflector; returns its answer's text and what it cost.
///
/// # Errors
/// The endpoint's error after its retries.
pub fn ask(
    reflector: &OpenAiBackend,
    request: &str,
    max_tokens: usize,
    temperature: f64,
) -> Result<(String, Decimal), String> {
    let s = reflector.settings();
    let body = json!({
        "model": s.model,
        "messages": [{"role": "user", "content": request}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    });
    let resp = reflector.post("/chat/completions", &body).map_err(|e| e.0)?;
    let text = resp["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    let usage = agentcore_agent::trajectory::Usage {
        input_tokens: resp["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap_or_else(|| super::state::tokens(request) as u64),
        output_tokens: resp["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or_else(|| super::state::tokens(&text) as u64),
    };
    Ok((text, s.cost(usage)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PromptState {
        let mut s = PromptState::new("p");
        s.lessons.push(Lesson {
            id: "L1".into(),
            text: "Print the result.".into(),
            sources: vec![],
            added_iteration: 1,
            shown: 0,
            credit: 0.0,
        });
        s
    }

    #[test]
    fn valid_operations_are_kept_and_bad_ones_rejected_with_a_reason() {
        let answer = r#"Sure! [{"op": "add", "text": "Use sorted() to sort a list."},
            {"op": "update", "id": "L1", "text": "Print only the final value."},
            {"op": "delete", "id": "L9"},
            {"op": "add", "text": "print the result."},
            {"op": "add", "text": ""},
            {"op": "rename", "id": "L1"}]"#;
        let (ops, rejected) = parse_ops(answer, &state(), 300);
        assert_eq!(
            ops,
            vec![
                Op::Add("Use sorted() to sort a list.".into()),
                Op::Update("L1".into(), "Print only the final value.".into())
            ]
        );
        let reasons: Vec<&str> = rejected.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(rejected.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("id of a lesson"), "{reasons:?}");
        assert!(reasons[1].contains("duplicates"), "{reasons:?}");
        assert!(reasons[2].contains("non-empty"), "{reasons:?}");
        assert!(reasons[3].contains("op must be"), "{reasons:?}");
    }

    #[test]
    fn malformed_answers_are_recorded_not_fatal() {
        for answer in
            ["I think the agent should try harder.", "[{\"op\": \"add\", \"text\": ", "[1, 2"]
        {
            let (ops, rejected) = parse_ops(answer, &state(), 300);
            assert!(ops.is_empty(), "{answer}");
            assert_eq!(rejected.len(), 1, "{answer}");
        }
        let long = format!(r#"[{{"op": "add", "text": "{}"}}]"#, "x".repeat(400));
        let (ops, rejected) = parse_ops(&long, &state(), 300);
        assert!(ops.is_empty());
        assert!(rejected[0].1.contains("at most 300"), "{:?}", rejected[0].1);
    }
}
