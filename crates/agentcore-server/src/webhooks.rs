//! Webhooks: subscriptions per organisation, the contract's events, Standard Webhooks
//! signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`), retries with exponential backoff under the same id, a delivery log in
//! the store, and no delivery to loopback, private or link-local addresses unless allowed.
//!
//! The deliverer tails the store's event table (so events of jobs run by other worker processes
//! are delivered too) from a cursor kept in the store, and delivers through an outbox there:
//! nothing is lost when a server stops or crashes mid-retry, and several servers on one
//! (PostgreSQL) database share the deliveries without doubling them.

use std::sync::Arc;
use std::time::Duration;

use agentcore_api::{EventKind, JobStatus, WebhookEvent};
use agentcore_store::{
    AttemptOutcome, ClaimedMessage, EventRow, OutboxMessage, Store, WebhookDelivery,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Deliver to loopback, private and link-local addresses (tests, on-premises receivers).
    pub allow_private: bool,
    /// Attempts per message.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled each time after.
    pub first_backoff: Duration,
    /// `training.job.progress` every this many iterations.
    pub progress_every: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_attempts: 6,
            first_backoff: Duration::from_secs(2),
            progress_every: 10,
        }
    }
}

/// A new signing secret: `whsec_` + base64 of 32 random bytes.
#[must_use]
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", B64.encode(bytes))
}

/// The `webhook-signature` value for a message.
#[must_use]
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| B64.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// Checks a webhook target: an `http(s)://host[:port]/...` URL whose every address is public
/// (unless `allow_private`; the address rule is the HTTP tool's). The error names the rule and
/// the value.
///
/// # Errors
/// A bad URL, a host that does not resolve, or one that resolves to a forbidden address.
pub fn check_target(url: &str, allow_private: bool) -> Result<(), String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("url must be an absolute http(s) URL, got {url:?} ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("url must use http or https, got {url:?}")),
    }
    let host = uri.host().ok_or_else(|| format!("url has no host: {url:?}"))?;
    if host.is_empty() {
        return Err(format!("url has no host: {url:?}"));
    }
    agentcore_agent::tools::check_target(url, allow_private)
        .map_err(|e| format!("url {url:?}: {e}"))?;
    Ok(())
}

/// The contract's event for a stored event, if it is one that webhooks carry.
#[must_use]
pub fn contract_event(e: &EventRow, progress_every: u32) -> Option<WebhookEvent> {
    let event = WebhookEvent::of(e.kind)?;
    if event == WebhookEvent::JobProgress {
        // Every `progress_every`-th iteration.
        let it = e.payload.get("iteration").and_then(Value::as_u64)?;
        if progress_every == 0 || it % u64::from(progress_every) != 0 {
            return None;
        }
    }
    Some(event)
}

/// One attempt: POST with the signature headers; the receiver's status or the transport error.
fn post(
    url: &str,
    id: &str,
    secret: &str,
    body: &str,
    allow_private: bool,
) -> (Option<u16>, Option<String>) {
    let timestamp = chrono::Utc::now().timestamp();
    // No redirects; the address connected to is checked when it is resolved.
    let agent = agentcore_agent::tools::outbound_agent(allow_private, Duration::from_secs(10));
    let result = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(secret, id, timestamp, body))
        .send(body);
    match result {
        Ok(r) => {
            let status = r.status().as_u16();
            let error = (!(200..300).contains(&status)).then(|| format!("HTTP {status}"));
            (Some(status), error)
        }
        Err(e) => (None, Some(e.to_string())),
    }
}

/// How long a deliverer holds a message for one attempt (the POST times out after 10 s); a
/// message whose deliverer died is taken up again after it.
const ATTEMPT_LEASE: Duration = Duration::from_secs(60);

/// How long a stopping deliverer waits for its attempts in flight to be recorded; the ones still
/// running after it are taken up again when their lease runs out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Attempts in flight at once per deliverer.
const MAX_IN_FLIGHT: usize = 8;

/// One attempt at a claimed message: POST, log it, and record the outcome (delivered, retry
/// after the backoff, or given up after `max_attempts`).
async fn attempt(
    store: Store,
    config: Arc<WebhookConfig>,
    deliverer: Arc<str>,
    claimed: ClaimedMessage,
) {
    let number = claimed.attempts + 1;
    let m = claimed.message;
    let (status, error) = match store.webhook(&m.subscription_id).await {
        Err(e) => (None, Some(format!("reading the subscription: {e}"))),
        Ok(None) => (None, Some("the subscription is gone".to_owned())),
        Ok(Some(hook)) => match check_target(&hook.url, config.allow_private) {
            Err(e) => (None, Some(e)),
            Ok(()) => {
                let (url, id, secret, body) = (hook.url, m.message_id.clone(), hook.secret, m.body);
                let allow = config.allow_private;
                tokio::task::spawn_blocking(move || post(&url, &id, &secret, &body, allow))
                    .await
                    .unwrap_or((None, Some("delivery task failed".into())))
            }
        },
    };
    let delivered = error.is_none();
    let message_id = m.message_id;
    if let Err(e) = store
        .record_delivery(&WebhookDelivery {
            subscription_id: m.subscription_id,
            message_id: message_id.clone(),
            event: m.event,
            attempt: number,
            status_code: status,
            error,
            created_at: String::new(),
        })
        .await
    {
        tracing::error!(message_id = %message_id, error = %e, "could not record a webhook delivery");
    }
    let outcome = if delivered {
        AttemptOutcome::Delivered
    } else if number >= config.max_attempts.max(1) {
        AttemptOutcome::GaveUp
    } else {
        let doublings = (number - 1).min(20);
        AttemptOutcome::RetryAfter(config.first_backoff.saturating_mul(1 << doublings))
    };
    if let Err(e) = store.finish_webhook_attempt(claimed.id, &deliverer, outcome).await {
        tracing::error!(message_id = %message_id, error = %e,
            "could not record a webhook attempt's outcome; it is retried after its lease");
    }
}

/// The outbox messages of a batch of events: one per matching subscription of each contract
/// event, for the job's organisation.
///
/// # Errors
/// Database errors: then nothing is queued and the cursor stays, so the batch is tried again.
async fn messages_for(
    store: &Store,
    config: &WebhookConfig,
    events: &[EventRow],
) -> agentcore_store::Result<Vec<OutboxMessage>> {
    let mut out = Vec::new();
    for e in events {
        let Some(event) = contract_event(e, config.progress_every) else { continue };
        let name = event.as_str();
        // A job that is gone has nobody to tell.
        let Some(job) = store.job(&e.job_id).await? else { continue };
        let hooks = store.webhooks(&job.org).await?;
        // Deployment and A/B events carry the job's status as it is now.
        let status = match e.kind {
            EventKind::DeploymentCreated
            | EventKind::DeploymentRolledBack
            | EventKind::AbTestDecision => job.status,
            kind => kind.status().filter(|s| s.is_final()).unwrap_or(JobStatus::Running),
        };
        let mut data = json!({"job_id": job.id, "agent_id": job.agent_id, "status": status});
        if let (Some(d), Some(p)) = (data.as_object_mut(), e.payload.as_object()) {
            for (k, v) in p {
                d.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let body = json!({"event": name, "timestamp": e.created_at, "data": data}).to_string();
        for hook in
            hooks.iter().filter(|h| h.events.is_empty() || h.events.iter().any(|x| x == name))
        {
            out.push(OutboxMessage {
                message_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
                subscription_id: hook.id.clone(),
                event: name.to_owned(),
                body: body.clone(),
            });
        }
    }
    Ok(out)
}

/// Delivers the contract's events to the subscriptions of each job's organisation until
/// `shutdown` turns true: events are turned into outbox messages (moving the store's cursor in
/// the same transaction), and due messages are claimed and attempted, at most
/// eight at once. At shutdown, attempts in flight are given a grace period to finish and record
/// their outcome; any still running after it are taken up again by the next deliverer once their
/// lease runs out. Several servers on one database share the work.
pub async fn run_deliverer(
    store: Store,
    config: WebhookConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let deliverer: Arc<str> = format!("deliverer-{}", uuid::Uuid::new_v4().simple()).into();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        if *shutdown.borrow() {
            // Let attempts in flight record their outcome (each POST times out after 10 s), so
            // a message that was tried is rescheduled now rather than after its lease runs out.
            let drain = async { while in_flight.join_next().await.is_some() {} };
            if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                tracing::warn!("webhook attempts still in flight at shutdown wait out their lease");
            }
            return;
        }
        let mut busy = false;
        match store.webhook_cursor().await {
            Ok(cursor) => match store.events_after(None, cursor, 500).await {
                Ok(events) => {
                    if let Some(last) = events.last() {
                        match messages_for(&store, &config, &events).await {
                            Ok(messages) => {
                                if let Err(e) =
                                    store.enqueue_webhooks(cursor, last.id, &messages).await
                                {
                                    tracing::error!(error = %e,
                                        "could not queue webhook messages; retrying");
                                }
                                busy = events.len() == 500;
                            }
                            Err(e) => tracing::error!(error = %e,
                                "could not read the subscriptions of new events; retrying"),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not read events for webhooks"),
            },
            Err(e) => tracing::error!(error = %e, "could not read the webhook cursor"),
        }
        while in_flight.try_join_next().is_some() {}
        while in_flight.len() < MAX_IN_FLIGHT {
            match store.claim_webhook(&deliverer, ATTEMPT_LEASE).await {
                Ok(Some(claimed)) => {
                    in_flight.spawn(attempt(
                        store.clone(),
                        Arc::clone(&config),
                        Arc::clone(&deliverer),
                        claimed,
                    ));
                }
                _ => break,
            }
        }
        if !busy {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let s = new_secret();
        assert!(s.starts_with("whsec_") && B64.decode(&s[6..]).unwrap().len() == 32);
    }

    fn if_addrs_of_this_host() -> Vec<std::net::IpAddr> {
        // Link-local IPv6 addresses need a zone to be dialled; they are refused as link-local.
        agentcore_agent::tools::own_addresses()
            .into_iter()
            .filter(
                |a| !matches!(a, std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80),
            )
            .collect()
    }

    #[test]
    fn refuses_loopback_private_and_link_local_targets() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://172.16.5.5/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://0.0.0.0/x",
            // Issue 14, finding 7: accepted before.
            "http://[::127.0.0.1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[2002:7f00:1::1]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://198.18.0.1/x",
            "http://240.0.0.1/x",
            "http://192.0.0.1/x",
            "http://192.0.2.2/x",
            "http://[fec0::1]/x",
            "http://[2001:db8::1]/x",
            "http://[fc00::1]/x",
            "http://100.64.0.1/x",
        ] {
            let e = check_target(url, false).unwrap_err();
            assert!(e.contains("non-public address"), "{url}: {e}");
        }
        // Every address of this host, public or not.
        for a in if_addrs_of_this_host() {
            let url = match a {
                std::net::IpAddr::V4(v4) => format!("http://{v4}/x"),
                std::net::IpAddr::V6(v6) => format!("http://[{v6}]/x"),
            };
            let e = check_target(&url, false).unwrap_err();
            assert!(e.contains("not allowed"), "{url}: {e}");
        }
        assert!(check_target("ftp://example.com/x", false).unwrap_err().contains("http or https"));
        assert!(check_target("not a url", false).is_err());
        assert!(check_target("http://127.0.0.1:9/hook", true).is_ok(), "allowed by the switch");
        assert!(check_target("http://93.184.215.14/x", false).is_ok(), "a public address");
        for public in [
            "http://[2606:4700:4700::1111]/x",
            "http://[64:ff9b::808:808]/x",
            "http://[2002:808:808::1]/x",
        ] {
            assert!(check_target(public, false).is_ok(), "{public}");
        }
    }
}
