//! `training.subscribe_webhook`.

use super::*;

pub(super) async fn subscribe(
    state: &AppState,
    caller: &Caller,
    params: SubscribeParams,
) -> Result<SubscribeResult, ApiError> {
    let url = params.url;
    let events: Vec<String> = params.events.iter().map(|e| e.as_str().to_owned()).collect();
    let allow = state.config.webhooks.allow_private;
    let check_url = url.clone();
    tokio::task::spawn_blocking(move || crate::webhooks::check_target(&check_url, allow))
        .await?
        .map_err(|e| ApiError::param("url", e))?;
    let hook = WebhookRow {
        id: uuid::Uuid::new_v4().to_string(),
        org: caller.org.clone(),
        url,
        events,
        secret: crate::webhooks::new_secret(),
        created_at: String::new(),
    };
    state.store.add_webhook(&hook).await?;
    Ok(SubscribeResult { subscription_id: hook.id, secret: hook.secret })
}
