//! The prompt policy's state, as each checkpoint saves it (`prompt_policy.json`, a versioned
//! document) with its diff to the previous checkpoint (`prompt_policy.diff.json`); and how a
//! rendering turns the system prompt and the chosen items into the prompt the model sees.

use std::collections::BTreeSet;

use agentcore_agent::backend::Message;
use agentcore_agent::trajectory::Trajectory;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `format` of the state document.
pub const FORMAT: &str = "agentcore.prompt_policy";
/// Its version (a newer one is refused on load).
pub const VERSION: u32 = 1;
/// File of the state in a checkpoint.
pub const STATE_FILE: &str = "prompt_policy.json";
/// File of the diff to the previous checkpoint.
pub const DIFF_FILE: &str = "prompt_policy.diff.json";
/// File of the job's RNG in a checkpoint.
pub const RNG_FILE: &str = "rng.json";

/// A lesson of the experience library (written by the reflector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lesson {
    /// `L<n>`.
    pub id: String,
    /// What the prompt says.
    pub text: String,
    /// The trajectories it came from (`it<iteration>-q<group>-s<sample>`).
    pub sources: Vec<String>,
    /// Iteration it was added (or last rewritten).
    pub added_iteration: u32,
    /// Training rollouts that showed it.
    pub shown: u64,
    /// Its credit: the policy gradient of the group-relative advantages of the rollouts that
    /// showed it, accumulated.
    pub credit: f64,
}

/// A demonstration from one of the agent's own verified, high-advantage trajectories, kept as
/// the messages the model wrote and saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exemplar {
    /// `E<n>`.
    pub id: String,
    /// The query it answered.
    pub query: String,
    /// After the query: the model's turns and the tools' results.
    pub messages: Vec<Message>,
    /// The trajectory (`it<iteration>-q<group>-s<sample>`).
    pub source: String,
    /// Its reward and advantage when it was taken.
    pub reward: f64,
    /// Advantage in its group.
    pub advantage: f64,
    /// Iteration it was added.
    pub added_iteration: u32,
    /// Training rollouts that showed it.
    pub shown: u64,
    /// Its credit (as for lessons).
    pub credit: f64,
}

/// The policy: the agent's system prompt, the library and the bank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptState {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The agent's system prompt (unchanged by training: items are added after it).
    pub system_prompt: String,
    /// Lessons.
    pub lessons: Vec<Lesson>,
    /// Exemplars.
    pub exemplars: Vec<Exemplar>,
    /// The next item number.
    pub next_id: u64,
    /// Updates applied.
    pub iteration: u32,
}

impl PromptState {
    /// The state before training: the agent's prompt, nothing learned.
    #[must_use]
    pub fn new(system_prompt: &str) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            system_prompt: system_prompt.to_owned(),
            lessons: Vec::new(),
            exemplars: Vec::new(),
            next_id: 1,
            iteration: 0,
        }
    }

    /// A fresh item id with `prefix`.
    pub fn new_id(&mut self, prefix: char) -> String {
        let id = format!("{prefix}{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Checks a loaded document.
    ///
    /// # Errors
    /// Another format, a newer version, duplicate ids.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format must be {FORMAT:?}, got {:?}", self.format));
        }
        if self.version == 0 || self.version > VERSION {
            return Err(format!("version must be in 1..={VERSION}, got {}", self.version));
        }
        let mut ids = BTreeSet::new();
        for id in self.lessons.iter().map(|l| &l.id).chain(self.exemplars.iter().map(|e| &e.id)) {
            if !ids.insert(id) {
                return Err(format!("item id {id:?} appears twice"));
            }
        }
        Ok(())
    }
}

/// What changed between two states (the checkpoint's diff file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDiff {
    /// [`FORMAT`] + `.diff`.
    pub format: String,
    /// Iteration of the previous checkpoint (0: the initial policy).
    pub from_iteration: u32,
    /// Iteration of this one.
    pub to_iteration: u32,
    /// Items added, with their text (lessons) or query (exemplars).
    pub added: Vec<(String, String)>,
    /// Ids retired or deleted.
    pub removed: Vec<String>,
    /// Lessons whose text changed: id, old, new.
    pub rewritten: Vec<(String, String, String)>,
    /// Whether the system prompt changed.
    pub system_prompt_changed: bool,
    /// The reflector's answers since the previous checkpoint: applied and rejected operations.
    pub reflections: Vec<Value>,
}

impl StateDiff {
    /// `new` against `old`.
    #[must_use]
    pub fn between(old: &PromptState, new: &PromptState, reflections: Vec<Value>) -> Self {
        let items = |s: &PromptState| -> Vec<(String, String)> {
            s.lessons
                .iter()
                .map(|l| (l.id.clone(), l.text.clone()))
                .chain(s.exemplars.iter().map(|e| (e.id.clone(), e.query.clone())))
                .collect()
        };
        let (before, after) = (items(old), items(new));
        let had = |id: &str, xs: &[(String, String)]| xs.iter().find(|(i, _)| i == id).cloned();
        Self {
            format: format!("{FORMAT}.diff"),
            from_iteration: old.iteration,
            to_iteration: new.iteration,
            added: after.iter().filter(|(id, _)| had(id, &before).is_none()).cloned().collect(),
            removed: before
                .iter()
                .filter(|(id, _)| had(id, &after).is_none())
                .map(|(id, _)| id.clone())
                .collect(),
            rewritten: after
                .iter()
                .filter_map(|(id, text)| {
                    let (_, old_text) = had(id, &before)?;
                    (&old_text != text).then(|| (id.clone(), old_text, text.clone()))
                })
                .collect(),
            system_prompt_changed: old.system_prompt != new.system_prompt,
            reflections,
        }
    }
}

/// Tokens of a text as counted locally (about four characters a token for English and code).
#[must_use]
pub fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The trajectory id of sample `k` of an iteration with groups of `group_size`.
#[must_use]
pub fn trajectory_id(iteration: u32, k: usize, group_size: usize) -> String {
    let g = group_size.max(1);
    format!("it{iteration}-q{}-s{}", k / g, k % g)
}

/// The model's turns and the tools' results of a trajectory, as the model wrote and saw them
/// (calls in the `<tool_call>` JSON form, results in `<tool_response>`, the answer in
/// `<answer>`); `None` without a final answer.
#[must_use]
pub fn demonstration(t: &Trajectory) -> Option<Vec<Message>> {
    let answer = t.final_answer.as_ref()?;
    let mut out = Vec::new();
    for step in &t.steps {
        let a = &step.action;
        let calls: Vec<&Value> = match a["type"].as_str() {
            Some("tool_call") => vec![a],
            Some("tool_calls") => a["calls"].as_array().map(|c| c.iter().collect())?,
            _ => continue,
        };
        // The model's own text of the turn (its stop string written back), else the calls in
        // the `<tool_call>` form.
        let text = match a["text"].as_str().map(str::trim).filter(|t| t.contains("<tool_call>")) {
            Some(t) if t.matches("<tool_call>").count() > t.matches("</tool_call>").count() => {
                format!("{t}</tool_call>")
            }
            Some(t) => t.to_owned(),
            None => {
                let mut text = String::new();
                for c in calls {
                    let name = serde_json::to_string(c["name"].as_str()?).ok()?;
                    text.push_str(&format!(
                        "<tool_call>{{\"name\": {name}, \"arguments\": {}}}</tool_call>",
                        c["arguments"]
                    ));
                }
                text
            }
        };
        out.push(Message::new("assistant", text));
        let outputs: Vec<String> = match &step.result {
            Value::Array(rs) => {
                rs.iter().map(|r| r["output"].as_str().unwrap_or("").into()).collect()
            }
            r => vec![r["output"].as_str().unwrap_or("").into()],
        };
        for o in outputs {
            out.push(Message::new(
                "user",
                format!("<tool_response>\n{}\n</tool_response>", o.trim()),
            ));
        }
    }
    out.push(Message::new("assistant", format!("<answer>{answer}</answer>")));
    Some(out)
}

/// Whether `t`'s final answer is what its last tool call computed: the last step with tool calls
/// succeeded, the answer equals its output or one of the output's lines (whitespace and case
/// ignored; two numbers compare as numbers), and the answer is not a literal that the call's own
/// arguments hold and the query does not (`print(12) or 1` prints 1, but the 1 is the model's
/// guess, not the tool's work). A trajectory without tool calls is grounded; one without an answer
/// is not.
#[must_use]
pub fn grounded(t: &Trajectory) -> bool {
    let Some(answer) = t.final_answer.as_deref() else { return false };
    let Some(step) = t
        .steps
        .iter()
        .rev()
        .find(|s| matches!(s.action["type"].as_str(), Some("tool_call" | "tool_calls")))
    else {
        return true;
    };
    let results: Vec<&Value> = match &step.result {
        Value::Array(rs) => rs.iter().collect(),
        r => vec![r],
    };
    let same = |a: &str, b: &str| -> bool {
        let (a, b) = (squash(a), squash(b));
        !a.is_empty() && same_literal(&a, &b)
    };
    let printed = results.iter().any(|r| {
        let output = r["output"].as_str().unwrap_or_default();
        r["ok"].as_bool() != Some(false)
            && (same(answer, output) || output.lines().any(|line| same(answer, line)))
    });
    printed && !echoed(answer, &step.action, &t.query)
}

/// Whether `answer` is a literal written into the arguments of `action`'s calls that `query`
/// does not hold: the call then only printed the model's own guess. A one-word answer is looked
/// for among the words and numbers (numbers compared as numbers, a sign ignored), a longer one
/// in the text with whitespace removed.
fn echoed(answer: &str, action: &Value, query: &str) -> bool {
    let calls: Vec<&Value> = match action["calls"].as_array() {
        Some(calls) => calls.iter().map(|c| &c["arguments"]).collect(),
        None => vec![&action["arguments"]],
    };
    let arguments: String = calls.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
    let words = literals(answer.trim().trim_start_matches('-'));
    match words.as_slice() {
        [] => false,
        [word] => {
            let holds = |text: &str| literals(text).iter().any(|w| same_literal(word, w));
            holds(&arguments) && !holds(query)
        }
        _ => {
            let a = squash(answer);
            squash(&arguments).contains(&a) && !squash(query).contains(&a)
        }
    }
}

/// `s` without whitespace, lowercased.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).flat_map(char::to_lowercase).collect()
}

/// The words and numbers of `text`, lowercased.
fn literals(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .map(|w| w.trim_matches('.').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Two words are the same literal: equal numbers, or equal text.
fn same_literal(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// An exemplar as text in the prompt.
#[must_use]
pub fn exemplar_text(e: &Exemplar) -> String {
    let mut s = format!("Task: {}", e.query);
    for m in &e.messages {
        s.push('\n');
        s.push_str(&m.content);
    }
    s
}

/// A lesson as a line of the prompt.
#[must_use]
pub fn lesson_text(l: &Lesson) -> String {
    format!("- {}", l.text)
}

/// The system prompt of a rendering: the agent's prompt, then the lessons, then the exemplars.
#[must_use]
pub fn render(system_prompt: &str, lessons: &[&Lesson], exemplars: &[&Exemplar]) -> String {
    let mut s = system_prompt.trim_end().to_owned();
    if !lessons.is_empty() {
        s.push_str("\n\nLessons from earlier tasks:");
        for l in lessons {
            s.push('\n');
            s.push_str(&lesson_text(l));
        }
    }
    if !exemplars.is_empty() {
        s.push_str("\n\nMore solved tasks:");
        for e in exemplars {
            s.push_str("\n\n");
            s.push_str(&exemplar_text(e));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(answer: Option<&str>, results: Vec<Value>) -> Trajectory {
        use super::super::tests::{finished, step};
        let mut steps: Vec<_> = results
            .into_iter()
            .map(|r| step("", serde_json::json!({"type": "tool_call", "name": "python"}), r))
            .collect();
        steps.push(step("", serde_json::json!({"type": "answer"}), Value::Null));
        let mut t = finished("", steps);
        t.final_answer = answer.map(str::to_owned);
        t
    }

    #[test]
    fn an_answer_is_grounded_when_the_last_call_printed_it() {
        use serde_json::json;
        let out = |o: &str| json!({"ok": true, "output": o});
        assert!(grounded(&answered(Some("[1, 3, 9]"), vec![out("[1,3,9]\n")])));
        assert!(grounded(&answered(Some("7"), vec![out("7.0")])));
        assert!(grounded(&answered(Some("True"), vec![out("checking\ntrue")])));
        // Multiple calls in one turn: any of them.
        assert!(grounded(&answered(Some("5"), vec![json!([out("2"), out("5")])])));
        // The last call counts, not an earlier one.
        assert!(!grounded(&answered(Some("4"), vec![out("4"), out("[17, 19]")])));
        // Printed something else, a part of the answer only, or failed.
        assert!(!grounded(&answered(Some("1"), vec![out("16")])));
        assert!(!grounded(&answered(Some("4"), vec![out("")])));
        assert!(!grounded(&answered(Some("7.5"), vec![out("7")])));
        let failed = json!({"ok": false, "output": "NameError: name 'x' is not defined"});
        assert!(!grounded(&answered(Some("NameError: name 'x' is not defined"), vec![failed])));
        // No answer: never; no tool call: nothing to contradict.
        assert!(!grounded(&answered(None, vec![out("4")])));
        assert!(grounded(&answered(Some("Paris"), vec![])));
    }

    /// A trajectory on `query` whose one call with `arguments` printed `output`, then answered.
    fn called(query: &str, arguments: Value, output: &str, answer: &str) -> Trajectory {
        use super::super::tests::{finished, step};
        use serde_json::json;
        let call = json!({"type": "tool_call", "name": "python", "arguments": arguments});
        let steps = vec![
            step(query, call, json!({"ok": true, "output": output})),
            step("", json!({"type": "answer"}), Value::Null),
        ];
        let mut t = finished(query, steps);
        t.final_answer = Some(answer.to_owned());
        t
    }

    #[test]
    fn an_answer_the_call_only_echoes_from_its_own_code_is_not_grounded() {
        use serde_json::json;
        let code = |c: &str| json!({"code": c});
        // The model's guess printed back: the 1 and the 2 come from the code, not the query.
        let count = "How many times does 12 occur in [18, 12, 5]?";
        assert!(!grounded(&called(count, code("print(12) or 1"), "12\n1", "1")));
        let product = "Compute the product of [3, 4, 2]";
        assert!(!grounded(&called(product, code("print(24)"), "24", "24")));
        assert!(!grounded(&called(
            "What is the capital of France?",
            code("print('Paris')"),
            "Paris",
            "Paris"
        )));
        // Literals the query holds are the task's data; computed values are the tool's work.
        let minimum = "Find the minimum value in [7, 1, 9]";
        assert!(grounded(&called(minimum, code("print(min([7, 1, 9]))"), "1", "1")));
        assert!(grounded(&called(product, code("print(3 * 4 * 2)"), "24", "24")));
        let sorted = "Sort the list [1, 3, 9]";
        assert!(grounded(&called(
            sorted,
            code("print(sorted([1, 3, 9]))"),
            "[1, 3, 9]",
            "[1, 3, 9]"
        )));
        assert!(!grounded(&called(
            "Sort the list [9, 1, 3]",
            code("print([1, 3, 9])"),
            "[1, 3, 9]",
            "[1,3,9]"
        )));
        // A tool that looks the answer up: its arguments do not hold the answer.
        assert!(grounded(&called(
            "What is the capital of France?",
            json!({"query": "capital of France"}),
            "Paris",
            "paris"
        )));
        // Several calls in one turn: any call's arguments count.
        let calls = json!({"type": "tool_calls", "calls": [
            {"name": "python", "arguments": {"code": "print(len([18, 12, 5]))"}},
            {"name": "python", "arguments": {"code": "print(1)"}},
        ]});
        let mut t = called(count, json!({}), "", "1");
        t.steps[0].action = calls;
        t.steps[0].result = json!([{"ok": true, "output": "3"}, {"ok": true, "output": "1"}]);
        assert!(!grounded(&t));
    }

    fn lesson(id: &str, text: &str) -> Lesson {
        Lesson {
            id: id.into(),
            text: text.into(),
            sources: vec![],
            added_iteration: 1,
            shown: 0,
            credit: 0.0,
        }
    }

    #[test]
    fn diff_names_what_was_added_removed_and_rewritten() {
        let mut a = PromptState::new("p");
        a.lessons = vec![lesson("L1", "check the output"), lesson("L2", "print the result")];
        let mut b = a.clone();
        b.iteration = 3;
        b.lessons.remove(0);
        b.lessons[0].text = "print only the result".into();
        b.lessons.push(lesson("L3", "use sorted()"));
        let d = StateDiff::between(&a, &b, vec![]);
        assert_eq!(d.added, vec![("L3".to_string(), "use sorted()".to_string())]);
        assert_eq!(d.removed, vec!["L1".to_string()]);
        assert_eq!(d.rewritten.len(), 1);
        assert_eq!(d.rewritten[0].0, "L2");
        assert_eq!((d.from_iteration, d.to_iteration), (0, 3));
        assert!(!d.system_prompt_changed);
    }

    #[test]
    fn a_document_of_another_format_or_a_newer_version_is_refused() {
        let mut s = PromptState::new("p");
        assert!(s.check().is_ok());
        s.version = VERSION + 1;
        assert!(s.check().unwrap_err().contains("version"));
        let mut s = PromptState::new("p");
        s.lessons = vec![lesson("L1", "a"), lesson("L1", "b")];
        assert!(s.check().unwrap_err().contains("twice"));
    }

    #[test]
    fn rendering_puts_lessons_then_exemplars_after_the_agent_prompt() {
        let l = lesson("L1", "print the result");
        let e = Exemplar {
            id: "E2".into(),
            query: "Sort [2, 1]".into(),
            messages: vec![
                Message::new(
                    "assistant",
                    r#"<tool_call>{"name":"python","arguments":{"code":"print(sorted([2, 1]))"}}</tool_call>"#,
                ),
                Message::new("user", "<tool_response>\n[1, 2]\n</tool_response>"),
                Message::new("assistant", "<answer>[1, 2]</answer>"),
            ],
            source: "it1-q0-s0".into(),
            reward: 1.0,
            advantage: 1.0,
            added_iteration: 1,
            shown: 0,
            credit: 0.0,
        };
        let text = render("You solve tasks.", &[&l], &[&e]);
        let (lessons_at, example_at) =
            (text.find("print the result").unwrap(), text.find("Task: Sort [2, 1]").unwrap());
        assert!(text.starts_with("You solve tasks."));
        assert!(lessons_at < example_at, "{text}");
        assert!(text.ends_with("<answer>[1, 2]</answer>"), "{text}");
        assert_eq!(render("p", &[], &[]), "p");
    }
}
