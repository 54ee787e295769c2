//! The mail the control plane sends, as the tests read it: a folder of RFC 5322 files (the
//! control plane's `file://` transport writes one `.eml` a message; an SMTP peer's maildir holds
//! one file a message too), each parsed just enough to read its headers, its text and the
//! confirmation link in it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A folder of messages.
pub struct Mailbox {
    dir: PathBuf,
    /// Made by this value, and removed with it.
    owned: bool,
}

impl Mailbox {
    /// A new, empty folder under the system's temporary folder, removed on drop.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-mail-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, owned: true }
    }

    /// A folder another process writes to (an SMTP peer's maildir `new/`); left in place.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            owned: false,
        }
    }

    /// The control plane's `--mail-transport` for this folder (`file:///…`).
    pub fn transport(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every message in the folder now, oldest first (by file name: the control plane names
    /// them by time-ordered ids, a maildir by time).
    pub fn messages(&self) -> Vec<Mail> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|file| {
                let raw = std::fs::read_to_string(&file).ok()?;
                Some(Mail::parse(raw, file))
            })
            .collect()
    }

    /// Waits up to 20 s for the oldest message to `to` and takes it out of the folder, so the
    /// next call finds the next one.
    pub async fn take(&self, to: &str) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(mail) = self
                .messages()
                .into_iter()
                .find(|m| m.to().to_lowercase().contains(&to.to_lowercase()))
            {
                std::fs::remove_file(&mail.file).unwrap();
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "no mail to {to} in {} within 20 s",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One message.
pub struct Mail {
    /// The file as written.
    pub raw: String,
    /// Its headers, unfolded, in order.
    pub headers: Vec<(String, String)>,
    /// Its text, with any quoted-printable encoding undone.
    pub body: String,
    file: PathBuf,
}

impl Mail {
    fn parse(raw: String, file: PathBuf) -> Self {
        let normal = raw.replace("\r\n", "\n");
        let (head, body) = normal.split_once("\n\n").unwrap_or((normal.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let quoted_printable = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("content-transfer-encoding")
                && v.eq_ignore_ascii_case("quoted-printable")
        });
        let body = if quoted_printable {
            decode_quoted_printable(body)
        } else {
            body.to_owned()
        };
        Self {
            raw,
            headers,
            body,
            file,
        }
    }

    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `To`.
    pub fn to(&self) -> &str {
        self.header("to").unwrap_or_default()
    }

    /// `Subject`.
    pub fn subject(&self) -> &str {
        self.header("subject").unwrap_or_default()
    }

    /// The sign-up confirmation link in the text, if there is one.
    pub fn link(&self) -> Option<String> {
        self.body
            .split_whitespace()
            .find(|word| word.contains("/signup/confirm?token="))
            .map(str::to_owned)
    }

    /// The token of that link.
    pub fn token(&self) -> Option<String> {
        self.link()?
            .split_once("token=")
            .map(|(_, token)| token.to_owned())
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(byte) = joined
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signs up through the API and confirms with the token of the mailed link, as a person
/// would; answers the confirmation's 201 body (`tenant_id`, `user_id`, `api_token`).
pub async fn signup(
    http: &reqwest::Client,
    base: &str,
    mailbox: &Mailbox,
    (email, password, organization): (&str, &str, &str),
) -> Value {
    let response = http
        .post(format!("{base}/api/v1/signup"))
        .json(&json!({ "email": email, "password": password, "organization": organization }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 202, "sign-up of {email}: {text}");
    let mail = mailbox.take(email).await;
    let token = mail
        .token()
        .unwrap_or_else(|| panic!("no confirmation link in the mail to {email}:\n{}", mail.raw));
    let response = http
        .post(format!("{base}/api/v1/signup/confirm"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "confirmation of {email}: {text}");
    serde_json::from_str(&text).unwrap()
}
