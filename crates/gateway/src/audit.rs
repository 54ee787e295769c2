//! Audit emission: one event per JSON-RPC request, on the Redis stream the control plane
//! ingests (`portcullis_core::audit::stream`).
//!
//! For a forwarded call the decision is written (and awaited) before the upstream is contacted,
//! so it survives a gateway that dies mid-call (a call with limits has it written by the
//! limiter's script, in the round trip that charges it); the outcome follows as a second entry
//! with the same id and timestamp, queued without waiting. Calls that never reach the upstream
//! are written once, with their outcome. Every write goes through [`crate::batch`], so the
//! entries of concurrent requests share round trips.
//!
//! If Redis cannot take the decision entry in time, the call still proceeds (the policy's
//! `on_limiter_error` already governs what happens when Redis is down) and the entry stays
//! queued for another try; the error is counted in `portcullis_gateway_audit_errors_total`.

use std::time::Duration;

use portcullis_core::audit::{AuditEvent, stream};
use serde_json::Value;

use crate::batch::Batcher;

/// Writes audit events to the stream, through the gateway's Redis batcher.
#[derive(Clone)]
pub struct AuditSink {
    batch: Batcher,
    timeout: Duration,
}

impl AuditSink {
    /// A sink writing through `batch`, waiting at most `timeout` for a write before forwarding.
    pub fn new(batch: Batcher, timeout: Duration) -> Self {
        Self { batch, timeout }
    }

    /// Writes an entry now (the decision of a call about to be forwarded); returns its JSON.
    pub async fn write_now(&self, event: &AuditEvent) -> String {
        let json = stream::encode(event);
        let written = tokio::time::timeout(self.timeout, self.batch.write(json.clone()));
        match written.await {
            Ok(true) => {}
            Ok(false) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!("audit entry not written before forwarding; queued");
            }
            Err(_) => {
                metrics::counter!("portcullis_gateway_audit_errors_total").increment(1);
                tracing::warn!("audit entry not written in time before forwarding; queued");
            }
        }
        json
    }

    /// Queues an entry for the next round trip.
    pub fn enqueue(&self, event: &AuditEvent) {
        self.batch.enqueue(stream::encode(event));
    }

    /// Queues the outcome entry of an event whose decision entry `decided` was written.
    pub fn enqueue_outcome(&self, decided: &str, event: &AuditEvent) {
        self.batch.enqueue(stream::encode_outcome(decided, event));
    }
}

/// Words that mark an argument name as a secret wherever they occur in it, once the name is
/// normalised (its words, lowercased and joined, so `x-api-key`, `API_KEY` and `apiKey` all
/// read `apikey`). Each is long or distinctive enough not to occur inside an
/// ordinary name (`author`, `keyword` and `monkey` contain none of them).
const SECRET_WORDS: [&str; 17] = [
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "privatekey",
    "accesskey",
    "signingkey",
    "sshkey",
    "session",
    "cardnumber",
    "creditcard",
];

/// Short words that mark a secret only as the whole normalised name or as its first or last
/// word (names split at anything not alphanumeric and at camelCase humps): `pin`, `userPin` and
/// `PIN_CODE` are secret, `spinner`, `opinion` and `pinned` are not; `auth` and `x-auth` are,
/// `author` and `authority` are not. `key` counts only as the last word (`key`, `sshKey`,
/// `sort_key`), never as the first (`key_id`, `keyword`).
const SECRET_END_WORDS: [&str; 10] = [
    "pin", "otp", "totp", "cvv", "cvc", "ssn", "pwd", "jwt", "auth", "key",
];

/// Prefixes of API keys and tokens that are secrets on sight, anywhere in a string (at the start
/// of a word, followed by at least [`MIN_TOKEN_LEN`] token characters in all). Case matters:
/// each issuer spells its prefix one way.
const TOKEN_PREFIXES: [&str; 17] = [
    "pcg_",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "sk-",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "AIza",
];

/// The shortest a prefixed token can be, prefix included (an AWS access key id has 20
/// characters; every other known shape is longer).
const MIN_TOKEN_LEN: usize = 20;

/// The arguments with secret-looking fields replaced by `"[redacted]"`, at any depth.
pub fn redact_arguments(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_name(k) {
                        Value::String("[redacted]".into())
                    } else {
                        redact_arguments(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_arguments).collect()),
        Value::String(s) if looks_like_secret(s) => Value::String("[redacted]".into()),
        other => other.clone(),
    }
}

/// Whether an argument called `name` holds a secret (see [`SECRET_WORDS`] and
/// [`SECRET_END_WORDS`]), read in the words discovery reads names in.
fn is_secret_name(name: &str) -> bool {
    let words = portcullis_policy::identifier_words(name);
    let normalised = words.concat();
    if SECRET_WORDS.iter().any(|w| normalised.contains(w)) {
        return true;
    }
    let (first, last) = (words.first(), words.last());
    SECRET_END_WORDS.iter().any(|w| {
        normalised == *w
            || last.is_some_and(|l| l == w)
            || (*w != "key" && first.is_some_and(|f| f == w))
    })
}

/// Values that are secrets whatever their field is called: bearer and basic credentials, known
/// token shapes (API keys, JWTs, PEM private keys), at the start of the string or anywhere in
/// it. Scans the bytes once, without allocating.
fn looks_like_secret(s: &str) -> bool {
    let b = s.as_bytes();
    starts_with_ignore_case(b, b"bearer ")
        || starts_with_ignore_case(b, b"basic ")
        || has_pem_private_key(s)
        || (0..b.len()).any(|i| (i == 0 || !is_token_byte(b[i - 1])) && secret_at(&b[i..]))
}

/// Whether a secret starts at the start of `s` (itself at the start of a word).
fn secret_at(s: &[u8]) -> bool {
    let run = s.iter().take_while(|b| is_token_byte(**b)).count();
    if run >= MIN_TOKEN_LEN && TOKEN_PREFIXES.iter().any(|p| s.starts_with(p.as_bytes())) {
        return true;
    }
    // AWS access key ids, long-term (`AKIA`) and temporary (`ASIA`): exactly 16 more
    // uppercase letters and digits.
    if (s.starts_with(b"AKIA") || s.starts_with(b"ASIA"))
        && run == 20
        && s[4..20]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return true;
    }
    // A JWT: base64url JSON header (`{"` encodes as `eyJ`), `.`, payload, `.`, signature.
    if s.starts_with(b"eyJ") && run >= 10 && s.get(run) == Some(&b'.') {
        let payload = s[run + 1..]
            .iter()
            .take_while(|b| is_token_byte(**b))
            .count();
        return payload >= 2 && s.get(run + 1 + payload) == Some(&b'.');
    }
    // `Authorization: Bearer …` or `Basic …` inside a longer text.
    [b"bearer ".as_slice(), b"basic "].iter().any(|scheme| {
        starts_with_ignore_case(s, scheme) && {
            let rest = &s[scheme.len()..];
            let credentials = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b))
                .count();
            // A word is not a credential: one has digits, capitals or base64 padding.
            credentials >= 16 && rest[1..credentials].iter().any(|b| !b.is_ascii_lowercase())
        }
    })
}

/// Bytes of API keys and tokens (base64url).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Whether `s` holds a PEM private key (`-----BEGIN RSA PRIVATE KEY-----`,
/// `-----BEGIN OPENSSH PRIVATE KEY-----`, `-----BEGIN PGP PRIVATE KEY BLOCK-----`…).
fn has_pem_private_key(s: &str) -> bool {
    s.match_indices("-----BEGIN ").any(|(i, m)| {
        let label = &s.as_bytes()[i + m.len()..];
        let label = &label[..label.len().min(64)];
        label
            .windows(5)
            .position(|w| w == b"-----")
            .is_some_and(|end| label[..end].windows(11).any(|w| w == b"PRIVATE KEY"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_looking_fields_are_redacted_at_any_depth() {
        let args = json!({
            "To": "+441234",
            "password": "hunter2",
            "nested": {"api_key": "abc", "list": [{"Authorization": "x"}, "Bearer abcdef"]},
            "note": "sk_live_0123456789abcdef",
            "monkey": "banana"
        });
        let out = redact_arguments(&args);
        assert_eq!(out["To"], "+441234");
        assert_eq!(out["password"], "[redacted]");
        assert_eq!(out["nested"]["api_key"], "[redacted]");
        assert_eq!(out["nested"]["list"][0]["Authorization"], "[redacted]");
        assert_eq!(out["nested"]["list"][1], "[redacted]");
        assert_eq!(out["note"], "[redacted]");
        assert_eq!(out["monkey"], "banana");
    }

    #[test]
    fn secret_names_are_normalised_and_matched() {
        for name in [
            "privateKey",
            "private_key",
            "accessKey",
            "signingKey",
            "sshKey",
            "apiKey",
            "x-api-key",
            "API_KEY",
            "api key",
            "api.key",
            "key",
            "sort_key",
            "pwd",
            "db_pwd",
            "passphrase",
            "pin",
            "PIN",
            "userPin",
            "PIN_CODE",
            "p-i-n",
            "otp",
            "otp_code",
            "OTPCode",
            "totp",
            "cvv",
            "cardCVV",
            "cvc",
            "ssn",
            "customer.ssn",
            "card_number",
            "cardNumber",
            "creditCard",
            "auth",
            "x-auth",
            "basicAuth",
            "auth_header",
            "jwt",
            "id_jwt",
            "Cookie",
            "session",
            "sessionToken",
            "session_id",
            "refresh_token",
            "clientSecret",
            "credentials",
        ] {
            assert!(is_secret_name(name), "{name} should be redacted");
        }
    }

    #[test]
    fn ordinary_names_are_kept() {
        for name in [
            "keyword",
            "keywords",
            "monkey",
            "hotkey",
            "key_id",
            "keyName",
            "spinner",
            "pinned",
            "opinion",
            "author",
            "authority",
            "authors",
            "footprint",
            "topic",
            "description",
            "passenger",
            "compass",
            "jwtish",
            "cvvs",
            "ssnumber",
            "To",
            "amount",
            "query",
            "",
            "__",
        ] {
            assert!(!is_secret_name(name), "{name} should be kept");
        }
    }

    #[test]
    fn long_names_are_matched_too() {
        let long = format!("{}_password", "x".repeat(100));
        assert!(is_secret_name(&long));
        let long = format!("{}Pin", "x".repeat(100));
        assert!(is_secret_name(&long));
        assert!(!is_secret_name(&"monkey".repeat(20)));
    }

    /// Test tokens are assembled at run time, so no token-shaped literal sits in the source.
    fn token(prefix: &str, body_len: usize) -> String {
        let body: String = "aB3dE5gH7jK9".chars().cycle().take(body_len).collect();
        format!("{prefix}{body}")
    }

    #[test]
    fn known_token_shapes_are_secrets_alone_and_inside_text() {
        let jwt = format!(
            "{}.{}.{}",
            token("eyJ", 20),
            token("eyJ", 30),
            token("", 43)
        );
        let unsigned_jwt = format!("{}.{}.", token("eyJ", 20), token("eyJ", 30));
        let aws = format!("AKIA{}", "IOSFODNN7EXAMPL1");
        let aws_temp = format!("ASIA{}", "Q3EGXMPL2EXAMPLE");
        let pem = format!(
            "-----BEGIN {}-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "RSA PRIVATE KEY"
        );
        let openssh = format!("-----BEGIN {}-----\nb3Blbn", "OPENSSH PRIVATE KEY");
        let secrets = [
            jwt,
            unsigned_jwt,
            token("github_pat_", 82),
            token("ghp_", 36),
            token("gho_", 36),
            token("ghs_", 36),
            token("glpat-", 20),
            token("xoxb-", 40),
            token("xoxp-", 40),
            token("AIza", 35),
            aws,
            aws_temp,
            token("sk_live_", 24),
            token("sk-", 48),
            token("sk-proj-", 40),
            token("pcg_", 43),
            pem,
            openssh,
            format!("Bearer {}", token("", 32)),
        ];
        for secret in &secrets {
            assert!(looks_like_secret(secret), "{secret}");
            for text in [
                format!("use {secret} to call it"),
                format!("token={secret}&x=1"),
                format!("\"{secret}\""),
                format!("curl -H 'Authorization: {secret}' https://example.com"),
                format!("héllo ünïcode {secret}"),
            ] {
                assert!(looks_like_secret(&text), "{text}");
                let out = redact_arguments(&json!({"note": text}));
                assert_eq!(out["note"], "[redacted]", "{text}");
            }
        }
        let header = format!(
            "curl -H 'Authorization: Bearer {}' https://example.com",
            token("", 32)
        );
        assert!(looks_like_secret(&header));
        let basic = format!("Authorization: Basic {}==", token("dXNl", 12));
        assert!(looks_like_secret(&basic));
    }

    #[test]
    fn token_look_alikes_are_kept() {
        for text in [
            "sk-learn is a machine-learning library",
            "risk-assessment-quarterly-summary-2024",
            "my-task-sk-something",
            "pcg_AbCd…",
            "ghp_short",
            "AKIASHORT",
            "ASIA_PACIFIC_REGION_SALES",
            "ASIAPACIFICREGIONSALESTEAM",
            "eyJust kidding. Really.",
            "version 1.2.3",
            "the basic idea",
            "a Basic internationalization course",
            "we bear the cost; bearer instruments",
            "-----BEGIN CERTIFICATE-----\nMIIB",
            "-----BEGIN PUBLIC KEY-----\nMIIB",
            "-----BEGIN é",
            "héllo wörld",
            "+441234",
            "",
        ] {
            assert!(!looks_like_secret(text), "{text}");
        }
        let args = json!({"keyword": "rust", "author": "Ann", "opinion": "good", "spinner": true});
        assert_eq!(redact_arguments(&args), args);
    }

    #[test]
    fn secret_names_redact_any_value() {
        let args = json!({
            "pin": 1234,
            "cardNumber": "4111111111111111",
            "auth": {"user": "a", "pass": "b"},
            "x-api-key": ["k1", "k2"],
            "author": {"name": "Ann"}
        });
        let out = redact_arguments(&args);
        assert_eq!(out["pin"], "[redacted]");
        assert_eq!(out["cardNumber"], "[redacted]");
        assert_eq!(out["auth"], "[redacted]");
        assert_eq!(out["x-api-key"], "[redacted]");
        assert_eq!(out["author"]["name"], "Ann");
    }
}
