//! Outgoing mail: an outbox table, written in the transaction of what a message tells, and a
//! background task that sends what is due through the configured transport (SMTP, or `.eml`
//! files in a folder), retrying with exponential backoff. A message's body can hold a one-time
//! link, so it is cleared once the message is sent or given up.
//!
//! Every message, whatever it says, takes this one path: a sign-up for a new email and one for
//! an email that has an account differ only in what the mail says, never in how the request
//! is answered or how long it takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sqlx::PgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;

/// Attempts before a message is given up (the last about an hour after the first).
const MAX_ATTEMPTS: i32 = 12;
/// Time limit of one SMTP delivery, connection included.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where mail goes.
#[derive(Clone)]
enum Transport {
    /// An SMTP server (submission, with or without TLS and credentials).
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// A folder that receives one RFC 5322 `.eml` file a message.
    Folder(PathBuf),
}

/// The mail settings, checked at start, and the bell that wakes the sender.
pub(crate) struct Mailer {
    /// `None`: mail stays in the outbox until a transport is configured.
    transport: Option<Transport>,
    from: Mailbox,
    wake: Notify,
}

impl Mailer {
    /// Reads `PORTCULLIS_MAIL_TRANSPORT` and `PORTCULLIS_MAIL_FROM`. The error names the
    /// setting and never echoes the transport URL, which may hold a password.
    pub(crate) fn new(transport: Option<&str>, from: &str) -> anyhow::Result<Self> {
        let from = from
            .trim()
            .parse::<Mailbox>()
            .map_err(|e| anyhow!("invalid PORTCULLIS_MAIL_FROM: {e}"))?;
        let transport = match transport.map(str::trim).filter(|t| !t.is_empty()) {
            Some(text) => Some(parse_transport(text)?),
            None => {
                tracing::warn!(
                    "PORTCULLIS_MAIL_TRANSPORT is not set: sign-up confirmations cannot be delivered; they wait in the mail outbox"
                );
                None
            }
        };
        Ok(Self {
            transport,
            from,
            wake: Notify::new(),
        })
    }

    /// Says that mail was queued, so the sender need not wait for its next round.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

fn parse_transport(text: &str) -> anyhow::Result<Transport> {
    let invalid = |why: String| anyhow!("invalid PORTCULLIS_MAIL_TRANSPORT: {why}");
    let url = url::Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "smtp" | "smtps" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid("an SMTP URL needs a host".into()));
            }
            let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(text)
                .map_err(|e| invalid(e.to_string()))?;
            Ok(Transport::Smtp(builder.timeout(Some(SMTP_TIMEOUT)).build()))
        }
        "file" => {
            let folder = url.to_file_path().map_err(|()| {
                invalid("a file URL names an absolute folder: file:///path".into())
            })?;
            std::fs::create_dir_all(&folder)
                .map_err(|e| invalid(format!("cannot create {}: {e}", folder.display())))?;
            Ok(Transport::Folder(folder))
        }
        other => Err(invalid(format!(
            "{other}: use smtp://host:port, smtps://host:port or file:///folder"
        ))),
    }
}

/// Queues a plain-text message within the caller's transaction. Call [`Mailer::wake`] once it
/// is committed.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    to: &str,
    subject: &str,
    body: &str,
) -> crate::error::Result<()> {
    sqlx::query("INSERT INTO mail_outbox (id, recipient, subject, body) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(to)
        .bind(subject)
        .bind(body)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Clone, sqlx::FromRow)]
struct Due {
    id: Uuid,
    recipient: String,
    subject: String,
    body: Option<String>,
    attempts: i32,
}

/// Why a delivery failed, and whether trying again could help.
struct Failure {
    message: String,
    permanent: bool,
}

impl Failure {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Sends what is due; returns how many messages went out.
async fn deliver_due(state: &AppState, transport: &Transport) -> anyhow::Result<usize> {
    // Lease the rows by moving their next attempt ahead, so a slow server does not make
    // another replica send the same message meanwhile.
    let due: Vec<Due> = sqlx::query_as(
        "UPDATE mail_outbox SET next_attempt_at = now() + interval '2 minutes'
          WHERE id IN (
                SELECT id FROM mail_outbox
                 WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED)
         RETURNING id, recipient, subject, body, attempts",
    )
    .fetch_all(state.db())
    .await?;
    let mut sent = 0;
    for d in due {
        let attempts = d.attempts + 1;
        let outcome = match message(&state.mailer.from, &d) {
            Ok(message) => send(transport, d.id, message).await,
            Err(failure) => Err(failure),
        };
        match outcome {
            Ok(()) => {
                sent += 1;
                metrics::counter!("portcullis_mail_total", "result" => "sent").increment(1);
                sqlx::query(
                    "UPDATE mail_outbox SET sent_at = now(), body = NULL, attempts = $2, last_error = NULL
                      WHERE id = $1",
                )
                .bind(d.id)
                .bind(attempts)
                .execute(state.db())
                .await?;
            }
            Err(failure) => {
                let give_up = failure.permanent || attempts >= MAX_ATTEMPTS;
                metrics::counter!("portcullis_mail_total", "result" => if give_up { "failed" } else { "retried" })
                    .increment(1);
                tracing::warn!(mail = %d.id, attempts, give_up, error = %failure.message, "mail not delivered");
                let backoff = 2i64
                    .saturating_pow(u32::try_from(attempts).unwrap_or(1))
                    .min(3600);
                sqlx::query(
                    "UPDATE mail_outbox SET attempts = $2, last_error = $3,
                            next_attempt_at = now() + make_interval(secs => $4),
                            failed_at = CASE WHEN $5 THEN now() END,
                            body = CASE WHEN $5 THEN NULL ELSE body END
                      WHERE id = $1",
                )
                .bind(d.id)
                .bind(attempts)
                .bind(&failure.message)
                .bind(backoff as f64)
                .bind(give_up)
                .execute(state.db())
                .await?;
            }
        }
    }
    Ok(sent)
}

/// The RFC 5322 message of an outbox row, in plain text.
fn message(from: &Mailbox, due: &Due) -> Result<Message, Failure> {
    let to: Mailbox = due.recipient.parse().map_err(|e| {
        Failure::permanent(format!("the recipient is not a deliverable address: {e}"))
    })?;
    let body = text_body(due.body.clone().unwrap_or_default());
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(due.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| Failure::permanent(e.to_string()))
}

/// Text as 7bit wherever RFC 5322 allows it (ASCII, no NUL, lines of at most 998 characters),
/// so that a link stays whole and readable in the message; otherwise the encoding lettre
/// chooses (quoted-printable). lettre's own 7bit check wraps lines at 76 characters, which a
/// confirmation link exceeds.
fn text_body(text: String) -> Body {
    let seven_bit = text.is_ascii()
        && !text.contains(['\0', '\r'])
        && text.lines().all(|line| line.len() <= 998);
    if seven_bit {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        Body::new(text)
    }
}

async fn send(transport: &Transport, id: Uuid, message: Message) -> Result<(), Failure> {
    match transport {
        Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|e| Failure {
            permanent: e.is_permanent(),
            message: e.to_string(),
        }),
        Transport::Folder(folder) => {
            write_file(folder, id, &message.formatted())
                .await
                .map_err(|e| Failure {
                    message: format!("cannot write to {}: {e}", folder.display()),
                    permanent: false,
                })
        }
    }
}

/// Writes `<id>.eml` (readable by its owner only: it may hold a link), whole or not at all: a
/// reader of the folder never sees half a message.
async fn write_file(folder: &Path, id: Uuid, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let partial = folder.join(format!(".{id}.eml.partial"));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    tokio::fs::rename(&partial, folder.join(format!("{id}.eml"))).await
}

/// Sends the outbox (when a transport is set) and forgets expired sign-ups, every
/// `approval_sweep_interval` and whenever mail is queued, until `shutdown`.
pub(crate) fn spawn_background(state: &AppState, shutdown: &CancellationToken) {
    let state = state.clone();
    let shutdown = shutdown.clone();
    let interval = state
        .settings
        .approval_sweep_interval
        .max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            if let Some(transport) = &state.mailer.transport
                && let Err(e) = deliver_due(&state, transport).await
            {
                tracing::warn!(error = %e, "mail delivery failed");
            }
            if let Err(e) = crate::accounts::forget_expired_signups(&state).await {
                tracing::warn!(error = %e, "cannot delete expired sign-ups");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = state.mailer.wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_errors_name_the_setting_without_the_url() {
        assert!(matches!(
            parse_transport("smtp://127.0.0.1:2525"),
            Ok(Transport::Smtp(_))
        ));
        assert!(matches!(
            parse_transport("smtps://user:pass@mail.example.com:465"),
            Ok(Transport::Smtp(_))
        ));
        let folder = std::env::temp_dir().join(format!("portcullis-mail-unit-{}", Uuid::now_v7()));
        let url = url::Url::from_directory_path(&folder).unwrap();
        assert!(matches!(
            parse_transport(url.as_str()),
            Ok(Transport::Folder(_))
        ));
        assert!(folder.is_dir());
        let _ = std::fs::remove_dir(&folder);
        for bad in [
            "http://secret:pw@mail.example.com",
            "smtp:///nohost",
            "file://elsewhere.example.com/mail",
        ] {
            let error = parse_transport(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.starts_with("invalid PORTCULLIS_MAIL_TRANSPORT: "),
                "{bad}: {error}"
            );
            assert!(!error.contains("pw@"), "{error}");
        }
        assert!(Mailer::new(None, "not an address").is_err());
        assert!(Mailer::new(None, "Portcullis <noreply@example.com>").is_ok());
    }

    #[test]
    fn links_stay_whole_in_seven_bit_messages() {
        let from: Mailbox = "Portcullis <noreply@example.com>".parse().unwrap();
        let link = format!(
            "https://portcullis.example.com/signup/confirm?token=pcc_{}",
            "A".repeat(43)
        );
        let due = Due {
            id: Uuid::now_v7(),
            recipient: "owner@example.com".into(),
            subject: "Confirm".into(),
            body: Some(format!("Open:\n\n{link}\n")),
            attempts: 0,
        };
        let Ok(built) = message(&from, &due) else {
            panic!("the message does not build");
        };
        let formatted = String::from_utf8(built.formatted()).unwrap();
        assert!(
            formatted.contains(&format!("\r\n{link}\r\n")),
            "{formatted}"
        );
        assert!(
            formatted.contains("Content-Transfer-Encoding: 7bit"),
            "{formatted}"
        );
        // Text 7bit cannot carry is encoded.
        let accented = Due {
            body: Some("Café\n".into()),
            ..due.clone()
        };
        let Ok(built) = message(&from, &accented) else {
            panic!("the message does not build");
        };
        let formatted = String::from_utf8(built.formatted()).unwrap();
        assert!(
            !formatted.contains("Content-Transfer-Encoding: 7bit"),
            "{formatted}"
        );
        let bad = Due {
            recipient: "not an address".into(),
            ..due
        };
        assert!(message(&from, &bad).is_err_and(|f| f.permanent));
    }
}
