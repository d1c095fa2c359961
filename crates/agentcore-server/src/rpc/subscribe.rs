//! `training.subscribe_webhook`.

use super::*;

pub(super) async fn subscribe(
    state: &AppState,
    caller: &Caller,
    params: &Map<String, Value>,
) -> Result<SubscribeResult, RpcError> {
    let url = required(params, "url")?;
    let events: Vec<String> = match params.get("events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| match e.as_str() {
                Some(s) if WEBHOOK_EVENTS.contains(&s) => Ok(s.to_owned()),
                _ => Err(RpcError::new(
                    codes::INVALID_PARAMS,
                    format!("unknown event {e}: expected one of {}", WEBHOOK_EVENTS.join(", ")),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(RpcError::new(
                codes::INVALID_PARAMS,
                format!("events must be an array of event names, got {}", kind(other)),
            ));
        }
    };
    let allow = state.config.webhooks.allow_private;
    let check_url = url.clone();
    tokio::task::spawn_blocking(move || crate::webhooks::check_target(&check_url, allow))
        .await
        .map_err(|e| internal("subscribe", e))?
        .map_err(|e| RpcError::new(codes::INVALID_PARAMS, e).with_data(json!({"field": "url"})))?;
    let hook = WebhookRow {
        id: uuid::Uuid::new_v4().to_string(),
        org: caller.org.clone(),
        url,
        events,
        secret: crate::webhooks::new_secret(),
        created_at: String::new(),
    };
    state.store.add_webhook(&hook).await.map_err(|e| internal("subscribe", e))?;
    Ok(SubscribeResult { subscription_id: hook.id, secret: hook.secret })
}
