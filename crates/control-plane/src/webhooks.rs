//! Webhook delivery: an outbox of events per tenant, sent as JSON POSTs signed with
//! HMAC-SHA256 (`X-Portcullis-Signature: sha256=<hex>` over the exact body), retried with
//! exponential backoff until the receiver answers 2xx or ten attempts failed.

use std::time::Duration;

use hmac::{Hmac, Mac};
use portcullis_core::TenantId;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::members::webhook_secret_context;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";
/// The event name header.
pub const EVENT_HEADER: &str = "x-portcullis-event";
/// The delivery id header (stable across retries, for deduplication by the receiver).
pub const DELIVERY_HEADER: &str = "x-portcullis-delivery";
/// Attempts before a delivery is given up.
const MAX_ATTEMPTS: i32 = 10;

/// `sha256=<hex>` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Queues an event for the tenant's webhook, if it has one, within the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    tenant: TenantId,
    event: &str,
    data: &Value,
) -> crate::error::Result<()> {
    let id = Uuid::now_v7();
    let payload = json!({
        "id": id,
        "event": event,
        "tenant_id": tenant,
        "created_at": chrono::Utc::now(),
        "data": data,
    });
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, tenant_id, event, payload)
         SELECT $1, $2, $3, $4 FROM tenants WHERE id = $2 AND webhook_url IS NOT NULL",
    )
    .bind(id)
    .bind(tenant.0)
    .bind(event)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    tenant_id: Uuid,
    event: String,
    payload: Value,
    attempts: i32,
    webhook_url: Option<String>,
    webhook_secret_enc: Option<Vec<u8>>,
}

/// Sends what is due; returns how many deliveries succeeded.
pub(crate) async fn deliver_due(state: &AppState) -> anyhow::Result<usize> {
    // Lease the rows by moving their next attempt ahead, so a slow receiver does not make
    // another replica send the same delivery meanwhile.
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE webhook_deliveries d SET next_attempt_at = now() + interval '2 minutes'
           FROM tenants t
          WHERE t.id = d.tenant_id AND d.id IN (
                SELECT id FROM webhook_deliveries
                 WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING d.id, d.tenant_id, d.event, d.payload, d.attempts, t.webhook_url, t.webhook_secret_enc",
    )
    .fetch_all(state.db())
    .await?;
    let mut delivered = 0;
    for d in due {
        let Some(url) = d.webhook_url.clone() else {
            sqlx::query("UPDATE webhook_deliveries SET failed_at = now(), last_error = 'the webhook was removed' WHERE id = $1")
                .bind(d.id)
                .execute(state.db())
                .await?;
            continue;
        };
        let body = serde_json::to_vec(&d.payload)?;
        let mut request = state
            .http
            .post(&url)
            .timeout(state.settings.webhook_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, "Portcullis-Webhook/1")
            .header(EVENT_HEADER, &d.event)
            .header(DELIVERY_HEADER, d.id.to_string());
        if let Some(sealed) = &d.webhook_secret_enc {
            match state
                .shared
                .credentials
                .open(sealed, &webhook_secret_context(TenantId(d.tenant_id)))
            {
                Ok(secret) => request = request.header(SIGNATURE_HEADER, signature(&secret, &body)),
                Err(e) => {
                    tracing::error!(error = %e, tenant = %d.tenant_id, "cannot open the webhook secret")
                }
            }
        }
        // Checked at every delivery: the allowed networks may have changed since the URL was set.
        let outcome = match state.shared.egress.check_url(&url) {
            Ok(()) => request
                .body(body)
                .send()
                .await
                .map_err(|e| crate::discovery::outbound_error(&e)),
            Err(e) => Err(e.to_string()),
        };
        let (ok, status, error) = match outcome {
            Ok(r) if r.status().is_success() => (true, Some(i32::from(r.status().as_u16())), None),
            Ok(r) => (
                false,
                Some(i32::from(r.status().as_u16())),
                Some(format!("HTTP {}", r.status())),
            ),
            Err(e) => (false, None, Some(e)),
        };
        let attempts = d.attempts + 1;
        if ok {
            delivered += 1;
            metrics::counter!("portcullis_webhook_deliveries_total", "result" => "ok").increment(1);
            sqlx::query("UPDATE webhook_deliveries SET delivered_at = now(), attempts = $2, last_status = $3, last_error = NULL WHERE id = $1")
                .bind(d.id)
                .bind(attempts)
                .bind(status)
                .execute(state.db())
                .await?;
        } else {
            metrics::counter!("portcullis_webhook_deliveries_total", "result" => "failed")
                .increment(1);
            let backoff = 2i64
                .saturating_pow(u32::try_from(attempts).unwrap_or(1))
                .min(3600);
            sqlx::query(
                "UPDATE webhook_deliveries SET attempts = $2, last_status = $3, last_error = $4,
                        next_attempt_at = now() + make_interval(secs => $5),
                        failed_at = CASE WHEN $2 >= $6 THEN now() END
                  WHERE id = $1",
            )
            .bind(d.id)
            .bind(attempts)
            .bind(status)
            .bind(error)
            .bind(backoff as f64)
            .bind(MAX_ATTEMPTS)
            .execute(state.db())
            .await?;
        }
    }
    Ok(delivered)
}

pub(crate) fn spawn_background(state: &AppState, shutdown: &CancellationToken) {
    let state = state.clone();
    let shutdown = shutdown.clone();
    let interval = state
        .settings
        .approval_sweep_interval
        .max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            if let Err(e) = deliver_due(&state).await {
                tracing::warn!(error = %e, "webhook delivery failed");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
