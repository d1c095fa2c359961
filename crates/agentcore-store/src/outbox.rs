//! Durable webhook delivery: the webhook deliverer turns events into messages in an outbox (in
//! the same transaction that moves its cursor past those events), then claims due messages with
//! a lease, one delivery attempt at a time. A server that stops or crashes mid-retry leaves its
//! messages to the next deliverer (after the lease, with the same message id), and several
//! servers on one database neither skip nor double an event.

use std::time::Duration;

use sqlx::Row;

use crate::queue::{millis, now_ms};
use crate::{Backend, Result, Store, now};

/// A message for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The `webhook-id`, the same on every attempt.
    pub message_id: String,
    /// The subscription it goes to.
    pub subscription_id: String,
    /// The event name.
    pub event: String,
    /// The JSON body.
    pub body: String,
}

/// A message claimed for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    /// Its row.
    pub id: i64,
    /// What it carries.
    pub message: OutboxMessage,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver took it: done.
    Delivered,
    /// Failed; try again after this long.
    RetryAfter(Duration),
    /// Failed and out of attempts.
    GaveUp,
}

impl Store {
    /// The id of the last event already turned into outbox messages.
    ///
    /// # Errors
    /// Database errors.
    pub async fn webhook_cursor(&self) -> Result<i64> {
        let row = sqlx::query("SELECT position FROM cursors WHERE name = 'webhooks'")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Moves the webhook cursor from `from` to `to` and queues `messages`, in one transaction;
    /// `false` (and nothing written) when the cursor is no longer at `from` (another deliverer
    /// took those events).
    ///
    /// # Errors
    /// Database errors.
    pub async fn enqueue_webhooks(
        &self,
        from: i64,
        to: i64,
        messages: &[OutboxMessage],
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE cursors SET position = $1 WHERE name = 'webhooks' AND position = $2",
        )
        .bind(to)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(self.db())?;
        if moved.rows_affected() != 1 {
            tx.rollback().await.map_err(self.db())?;
            return Ok(false);
        }
        let (t, due) = (now(), now_ms());
        for m in messages {
            sqlx::query(
                "INSERT INTO webhook_outbox (message_id, subscription_id, event, body, status, \
                 attempts, next_attempt_ms, created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, \
                 $6)",
            )
            .bind(&m.message_id)
            .bind(&m.subscription_id)
            .bind(&m.event)
            .bind(&m.body)
            .bind(due)
            .bind(&t)
            .execute(&mut *tx)
            .await
            .map_err(self.db())?;
        }
        tx.commit().await.map_err(self.db())?;
        Ok(true)
    }

    /// Claims the message that is due first for one attempt by `worker`, holding it for
    /// `lease`; `None` when nothing is due.
    ///
    /// # Errors
    /// Database errors.
    pub async fn claim_webhook(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedMessage>> {
        let now = now_ms();
        let due = "status = 'pending' AND next_attempt_ms <= $3 AND (lease_expires_ms IS NULL OR \
                   lease_expires_ms < $3)";
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE webhook_outbox SET lease_owner = $1, lease_expires_ms = $2 WHERE id = (SELECT \
             id FROM webhook_outbox WHERE {due} ORDER BY next_attempt_ms, id LIMIT 1{lock}) AND \
             {due} RETURNING *"
        );
        // Built from constant fragments only; values are bound.
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(worker)
            .bind(now.saturating_add(millis(lease)))
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.db())?;
        Ok(row.map(|r| ClaimedMessage {
            id: r.get("id"),
            message: OutboxMessage {
                message_id: r.get("message_id"),
                subscription_id: r.get("subscription_id"),
                event: r.get("event"),
                body: r.get("body"),
            },
            attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(0),
        }))
    }

    /// Records the end of `worker`'s attempt on a claimed message; `false` when `worker` no
    /// longer held it (its lease ran out and another deliverer took the message).
    ///
    /// # Errors
    /// Database errors.
    pub async fn finish_webhook_attempt(
        &self,
        id: i64,
        worker: &str,
        outcome: AttemptOutcome,
    ) -> Result<bool> {
        let (status, next) = match outcome {
            AttemptOutcome::Delivered => ("delivered", 0),
            AttemptOutcome::GaveUp => ("failed", 0),
            AttemptOutcome::RetryAfter(wait) => ("pending", now_ms().saturating_add(millis(wait))),
        };
        let done = sqlx::query(
            "UPDATE webhook_outbox SET status = $1, attempts = attempts + 1, \
             next_attempt_ms = CASE WHEN $1 = 'pending' THEN $2 ELSE next_attempt_ms END, \
             lease_owner = NULL, lease_expires_ms = NULL WHERE id = $3 AND lease_owner = $4",
        )
        .bind(status)
        .bind(next)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Outbox messages by status (`pending`, `delivered`, `failed`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn outbox_counts(&self) -> Result<Vec<(String, u64)>> {
        self.counts_by_status("webhook_outbox").await
    }
}
