//! Agents: `agents.register`, `agents.get`, `agents.list`. What is stored is the typed
//! [`AgentDefinition`] (the document `agentcore train --agent FILE` reads) plus the owning
//! organisation; `training.start_grpo` turns it into job settings with
//! [`agentcore_train::spec::resolve`], as the CLI does.
//!
//! Shapes written by earlier versions and by the SDK's shorthands are read as that type:
//! `model: "built-in"`, a path string, `{path}`, `{local: path, lora}`, `{built_in: {warm-start
//! settings or a model size}}`, `id` for `agent_id`, `format` for `tool_call_format`, `tools:
//! ["python"]`.

use agentcore_agent::definition::AgentDefinition;
use agentcore_store::Store;
use agentcore_train::defaults::SEED_AGENT_ID;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::errors::ApiError;

/// The keys a stored definition has besides the agent's own.
const STORED_ONLY: [&str; 3] = ["org", "registered", "tasks"];

/// Reads the shorthands and older shapes of an agent document as the typed definition's JSON.
#[must_use]
pub fn normalize(mut doc: Map<String, Value>) -> Map<String, Value> {
    if let Some(id) = doc.remove("id") {
        doc.entry("agent_id").or_insert(id);
    }
    if let Some(f) = doc.remove("format") {
        doc.entry("tool_call_format").or_insert(f);
    }
    let model = match doc.remove("model") {
        None | Some(Value::Null) => json!({"kind": "built_in"}),
        Some(Value::String(s)) if s == "built-in" || s == "built_in" => json!({"kind": "built_in"}),
        Some(Value::String(path)) => json!({"kind": "local", "path": path}),
        Some(Value::Object(mut m)) if !m.contains_key("kind") => {
            if let Some(ws) = m.remove("built_in") {
                // An old CLI stored the model size there, an old server the warm start.
                let ws = match ws {
                    Value::Object(o) if o.contains_key("d_model") => json!({"model": o}),
                    other => other,
                };
                if ws.is_null() || ws.as_object().is_some_and(Map::is_empty) {
                    json!({"kind": "built_in"})
                } else {
                    json!({"kind": "built_in", "warm_start": ws})
                }
            } else if let Some(path) = m.remove("path").or_else(|| m.remove("local")) {
                m.insert("kind".into(), json!("local"));
                m.insert("path".into(), path);
                Value::Object(m)
            } else {
                Value::Object(m)
            }
        }
        Some(other) => other,
    };
    doc.insert("model".into(), model);
    let tools = match doc.remove("tools") {
        None | Some(Value::Null) => vec![json!({"type": "python"})],
        Some(Value::Array(ts)) => ts
            .into_iter()
            .map(|t| match t {
                Value::String(name) => json!({"type": name}),
                // `{"python": {}}`: the old CLI's shape.
                Value::Object(o) if o.len() == 1 && !o.contains_key("type") => {
                    let (name, rest) = o.into_iter().next().expect("one entry");
                    let mut t = rest.as_object().cloned().unwrap_or_default();
                    t.insert("type".into(), json!(name));
                    Value::Object(t)
                }
                other => other,
            })
            .collect(),
        Some(other) => vec![other],
    };
    doc.insert("tools".into(), Value::Array(tools));
    for k in ["system_prompt", "sampling", "agent_type", "policy"] {
        if doc.get(k).is_some_and(Value::is_null) {
            doc.remove(k);
        }
    }
    doc
}

/// The typed definition of a stored agent document (its owner's keys removed).
///
/// # Errors
/// A document that does not describe an agent (the field named).
pub fn definition(stored: &Value) -> Result<AgentDefinition, ApiError> {
    let mut doc = stored.as_object().cloned().unwrap_or_default();
    for k in STORED_ONLY {
        doc.remove(k);
    }
    AgentDefinition::from_value(Value::Object(normalize(doc)))
        .map_err(|e| ApiError::params(format!("agent definition: {e}")))
}

/// The built-in agent of the embedded default, always registered as `seed-agent`.
///
/// # Errors
/// Database errors.
pub async fn register_builtin_agent(store: &Store) -> agentcore_store::Result<()> {
    if store.agent(SEED_AGENT_ID).await?.is_none() {
        let definition = json!({
            "agent_id": SEED_AGENT_ID,
            "agent_type": "seed",
            "model": {"kind": "built_in"},
            "tools": [{"type": "python"}],
            "policy": "weights",
            "org": null,
        });
        store.register_agent(SEED_AGENT_ID, &definition).await?;
    }
    Ok(())
}

/// Whether the caller's organisation sees an agent (agents without an owner, such as the
/// built-in one and those the CLI registered in a shared store, are everyone's).
#[must_use]
pub fn visible(definition: &Value, caller: &Caller) -> bool {
    match definition.get("org") {
        None | Some(Value::Null) => true,
        Some(o) => o.as_str() == Some(caller.org.as_str()),
    }
}

/// The store key of an organisation's agent: agent ids are unique per organisation, not across
/// them (an id cannot hold `/`, so the key splits unambiguously at its last `/`). Agents without
/// an owner (the built-in one, those the CLI registered) are stored under their bare id.
fn org_key(org: &str, id: &str) -> String {
    format!("{org}/{id}")
}

/// The stored document of an agent the caller sees: its organisation's, else an agent without an
/// owner (or one stored under its bare id by an earlier version, if it is the caller's).
///
/// # Errors
/// Not found (also for another organisation's agent), database errors.
pub async fn visible_agent(state: &AppState, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    if let Some(d) = state.store.agent(&org_key(&caller.org, id)).await? {
        return Ok(d);
    }
    match state.store.agent(id).await? {
        Some(d) if visible(&d, caller) => Ok(d),
        _ => Err(ApiError::NotFound {
            what: "agent",
            id: id.to_owned(),
            hint: " (register it with agents.register)",
        }),
    }
}

/// A local model must lie beneath the models directory; a path elsewhere is refused before it is
/// looked at (registering would otherwise tell which files the server has).
fn check_model_path(models_dir: &std::path::Path, path: &std::path::Path) -> Result<(), ApiError> {
    let beneath = path.is_absolute()
        && path.starts_with(models_dir)
        && !path.components().any(|c| matches!(c, std::path::Component::ParentDir));
    if !beneath {
        return Err(ApiError::param(
            "model.path",
            format!(
                "model.path must be an absolute path beneath the server's models directory {}, \
                 got {:?}",
                models_dir.display(),
                path.display().to_string()
            ),
        ));
    }
    if !path.exists() {
        return Err(ApiError::param(
            "model.path",
            format!("model.path {:?} does not exist on the server", path.display().to_string()),
        ));
    }
    Ok(())
}

/// The endpoints an agent's jobs and invocations will call (its model's, its reflector's and
/// its embeddings endpoint's)
/// must be public addresses unless the server allows private ones; refused
/// naming the field, the URL and the address. Workers apply the same rule to every connection
/// (an address that changes after this check is refused there).
///
/// # Errors
/// The first endpoint that breaks the rule.
pub fn check_endpoints(def: &AgentDefinition, allow_private: bool) -> Result<(), ApiError> {
    let agentcore_agent::definition::ModelSpec::Openai(model) = &def.model else { return Ok(()) };
    let policy = def.prompt_policy.as_ref();
    let reflector = policy.and_then(|p| p.reflection.model.as_ref());
    let embedder = policy.and_then(|p| p.retrieval.model.as_ref());
    let endpoints = std::iter::once(("model", model))
        .chain(reflector.map(|r| ("prompt_policy.reflection.model", r)))
        .chain(embedder.map(|r| ("prompt_policy.retrieval.model", r)));
    let urls = endpoints.flat_map(|(prefix, endpoint)| {
        endpoint.named_base_urls().map(move |(field, url)| (format!("{prefix}.{field}"), url))
    });
    for (field, url) in urls {
        // The definition already requires http(s).
        agentcore_agent::tools::check_target(url, allow_private).map_err(|why| {
            let message = format!(
                "{field} {url:?}: {why} (a server whose inference runs beside it is started \
                 with agentcore serve --allow-private-endpoints)"
            );
            ApiError::param(field, message)
        })?;
    }
    Ok(())
}

/// `agents.register`: the params are an agent definition (or one of its shorthands).
///
/// # Errors
/// A definition that breaks a rule (the field named), an id another organisation holds, a local
/// model path the server does not have, database errors.
pub async fn register(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let doc = normalize(params.clone());
    let def = AgentDefinition::from_value(Value::Object(doc))
        .map_err(|e| ApiError::params(e.to_string()))?;
    let id = &def.agent_id;
    if id.len() > 64 {
        return Err(ApiError::param(
            "agent_id",
            format!("agent_id must be 1-64 characters, got {}", id.len()),
        ));
    }
    // Ids are per organisation, so another organisation's agent of the same id is neither
    // overwritten nor revealed; only the shared agents (everyone sees them) reserve their ids.
    if let Some(existing) = state.store.agent(id).await?
        && matches!(existing.get("org"), None | Some(Value::Null))
    {
        return Err(ApiError::param(
            "agent_id",
            format!("agent_id {id:?} is a shared agent's id; choose another"),
        ));
    }
    if let agentcore_agent::definition::ModelSpec::Local { path, .. } = &def.model {
        check_model_path(&state.config.models_dir, path)?;
    }
    check_endpoints(&def, state.config.allow_private_endpoints)?;
    let mut stored = serde_json::to_value(&def)?;
    stored["org"] = json!(caller.org);
    state.store.register_agent(&org_key(&caller.org, id), &stored).await?;
    stored["registered"] = json!(true);
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(v: Value) -> AgentDefinition {
        definition(&v).unwrap()
    }

    #[test]
    fn shorthands_and_old_shapes_read_as_the_typed_definition() {
        use agentcore_agent::definition::{ModelSpec, ToolSpec};
        let d = typed(json!({"agent_id": "a", "model": "built-in"}));
        assert_eq!(d.model, ModelSpec::BuiltIn { warm_start: None });
        assert_eq!(d.tools, vec![ToolSpec::Python { timeout_s: None, memory_mb: None }]);
        let d = typed(json!({"agent_id": "a", "model": "/m.gguf", "tools": ["python"]}));
        assert_eq!(d.model, ModelSpec::Local { path: "/m.gguf".into(), lora: None });
        // The old CLI's document.
        let d = typed(json!({"id": "g-agent", "model": {"local": "/m.gguf", "lora": {"r": 4,
            "lora_alpha": 8.0, "target_modules": ["q_proj"]}}, "tools": [{"python": {}}],
            "format": "hermes", "tasks": "seed", "system_prompt": "p"}));
        assert_eq!(d.agent_id, "g-agent");
        let ModelSpec::Local { lora: Some(l), .. } = &d.model else { panic!("{:?}", d.model) };
        assert_eq!(l.r, 4);
        // An old server's warm start, and an old CLI's model size.
        let d = typed(json!({"agent_id": "a", "model": {"built_in": {"steps": 6}}}));
        let ModelSpec::BuiltIn { warm_start: Some(w) } = &d.model else { panic!() };
        assert_eq!(w["steps"], 6);
        let d = typed(json!({"agent_id": "a", "model": {"built_in": {"d_model": 32}}}));
        let ModelSpec::BuiltIn { warm_start: Some(w) } = &d.model else { panic!() };
        assert_eq!(w["model"]["d_model"], 32);
    }

    #[test]
    fn endpoints_must_be_public_http_urls_unless_the_server_allows_private_ones() {
        let agent_with = |base: &str, reflector: &str, embedder: &str| {
            typed(json!({"agent_id": "a", "policy": "prompt", "system_prompt": "p",
                "model": {"kind": "openai", "base_url": base, "model": "m"},
                "prompt_policy": {
                    "reflection": {"model": {"base_url": reflector, "model": "r"}},
                    "retrieval": {"kind": "embeddings",
                                  "model": {"base_url": embedder, "model": "e"}}}}))
        };
        let agent = |base: &str, reflector: &str| agent_with(base, reflector, "http://1.0.0.1/v1");
        let message = |d: &AgentDefinition, allow: bool| match check_endpoints(d, allow) {
            Ok(()) => String::new(),
            Err(e) => agentcore_api::RpcError::from(e).message,
        };
        let local = agent("http://127.0.0.1:8765/v1", "http://10.0.0.7/v1");
        let m = message(&local, false);
        assert!(m.starts_with("model.base_url") && m.contains("127.0.0.1"), "{m}");
        assert!(m.contains("--allow-private-endpoints"), "{m}");
        assert_eq!(message(&local, true), "");
        let m = message(&agent("http://1.1.1.1/v1", "http://10.0.0.7/v1"), false);
        assert!(m.starts_with("prompt_policy.reflection.model.base_url"), "{m}");
        assert!(m.contains("10.0.0.7"), "{m}");
        let m = message(
            &agent_with("http://1.1.1.1/v1", "http://1.0.0.1/v1", "http://[::1]:9/v1"),
            false,
        );
        assert!(m.starts_with("prompt_policy.retrieval.model.base_url"), "{m}");
        assert!(m.contains("::1"), "{m}");
        // Every replica is checked like the base URL.
        let mut d = agent("http://1.1.1.1/v1", "http://1.0.0.1/v1");
        if let agentcore_agent::definition::ModelSpec::Openai(o) = &mut d.model {
            o.replicas = vec!["http://8.8.8.8/v1".into(), "http://192.168.1.5:8000/v1".into()];
        }
        let m = message(&d, false);
        assert!(m.starts_with("model.replicas[1]") && m.contains("192.168.1.5"), "{m}");
        // Agents on other models call no endpoint.
        assert!(
            check_endpoints(&typed(json!({"agent_id": "a", "model": "built-in"})), false).is_ok()
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let doc =
            normalize(json!({"agent_id": "a", "modle": "built-in"}).as_object().unwrap().clone());
        let e = AgentDefinition::from_value(Value::Object(doc)).unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
        let e = definition(&json!({"agent_id": "a", "model": {"kind": "local"}})).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }
}
