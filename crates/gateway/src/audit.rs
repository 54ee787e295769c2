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
use portcullis_core::redis_keys::RedisKeys;
use serde_json::Value;

use crate::batch::Batcher;

/// Writes audit events to the stream, through the gateway's Redis batcher.
#[derive(Clone)]
pub struct AuditSink {
    batch: Batcher,
    /// Which shard's stream takes a tenant's entries.
    keys: RedisKeys,
    timeout: Duration,
}

impl AuditSink {
    /// A sink writing through `batch` to the stream of each event's shard, waiting at most
    /// `timeout` for a write before forwarding.
    pub fn new(batch: Batcher, keys: RedisKeys, timeout: Duration) -> Self {
        Self {
            batch,
            keys,
            timeout,
        }
    }

    /// Writes an entry now (the decision of a call about to be forwarded); returns its JSON.
    pub async fn write_now(&self, event: &AuditEvent) -> String {
        let json = stream::encode(event);
        let written = tokio::time::timeout(
            self.timeout,
            self.batch
                .write(self.keys.shard(event.tenant_id), json.clone()),
        );
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
        self.batch
            .enqueue(self.keys.shard(event.tenant_id), stream::encode(event));
    }

    /// Queues the outcome entry of an event whose decision entry `decided` was written.
    pub fn enqueue_outcome(&self, decided: &str, event: &AuditEvent) {
        self.batch.enqueue(
            self.keys.shard(event.tenant_id),
            stream::encode_outcome(decided, event),
        );
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

/// What stands in for a secret.
const REDACTED: &str = "[redacted]";

/// The arguments with secrets replaced by `"[redacted]"`, at any depth: the whole value of a
/// secret-looking field, and in any other string each secret-looking run of text
/// ([`redact_text`]), the words around it kept.
pub fn redact_arguments(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_name(k) {
                        Value::String(REDACTED.into())
                    } else {
                        redact_arguments(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_arguments).collect()),
        Value::String(s) => Value::String(redact_text(s).unwrap_or_else(|| s.clone())),
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

/// `s` with each secret in it replaced by `[redacted]`, whatever its field is called: the
/// credentials of a bearer or basic scheme, known token shapes (API keys, JWTs) and PEM private
/// keys, alone or inside a longer text. Only the secret goes: an approver still reads the rest
/// of what a call would do (`DROP TABLE users; -- [redacted]`), and so does the audit log.
/// `None` when nothing in it is a secret. Scans the bytes once.
fn redact_text(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !is_token_byte(b[i - 1]);
        let found = pem_private_key_at(s, i).or_else(|| {
            word_start
                .then(|| secret_at(&b[i..], i == 0))
                .flatten()
                .map(|(skip, len)| (i + skip, i + skip + len))
        });
        match found {
            Some((start, end)) => {
                out.push_str(&s[copied..start]);
                out.push_str(REDACTED);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    (copied > 0).then(|| {
        out.push_str(&s[copied..]);
        out
    })
}

/// The secret that starts at the start of `s` (itself at the start of a word), as its offset
/// and length; `at_start`: `s` is the whole string.
fn secret_at(s: &[u8], at_start: bool) -> Option<(usize, usize)> {
    let run = s.iter().take_while(|b| is_token_byte(**b)).count();
    if run >= MIN_TOKEN_LEN && TOKEN_PREFIXES.iter().any(|p| s.starts_with(p.as_bytes())) {
        return Some((0, run));
    }
    // AWS access key ids, long-term (`AKIA`) and temporary (`ASIA`): exactly 16 more
    // uppercase letters and digits.
    if (s.starts_with(b"AKIA") || s.starts_with(b"ASIA"))
        && run == 20
        && s[4..20]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Some((0, 20));
    }
    // A JWT: base64url JSON header (`{"` encodes as `eyJ`), `.`, payload, `.`, signature.
    if s.starts_with(b"eyJ") && run >= 10 && s.get(run) == Some(&b'.') {
        let token_run = |from: usize| s[from..].iter().take_while(|b| is_token_byte(**b)).count();
        let payload = token_run(run + 1);
        let signed = run + 1 + payload;
        if payload >= 2 && s.get(signed) == Some(&b'.') {
            return Some((0, signed + 1 + token_run(signed + 1)));
        }
        return None;
    }
    // The credentials of `Authorization: Bearer …` or `Basic …`: whatever follows the scheme
    // when the string starts with it, and inside a longer text only what looks like
    // credentials (a word is not: they have digits, capitals or base64 padding).
    [b"bearer ".as_slice(), b"basic "]
        .iter()
        .find_map(|scheme| {
            if !starts_with_ignore_case(s, scheme) {
                return None;
            }
            let rest = &s[scheme.len()..];
            let credentials = rest
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b))
                .count();
            let shaped =
                credentials >= 16 && rest[1..credentials].iter().any(|b| !b.is_ascii_lowercase());
            ((at_start && credentials > 0) || shaped).then_some((scheme.len(), credentials))
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

/// A PEM private key (`-----BEGIN RSA PRIVATE KEY-----`, `-----BEGIN OPENSSH PRIVATE
/// KEY-----`, `-----BEGIN PGP PRIVATE KEY BLOCK-----`…) starting at `i`, through its `-----END
/// …-----` line (to the end of `s` without one), as its start and end.
fn pem_private_key_at(s: &str, i: usize) -> Option<(usize, usize)> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let rest = s.get(i..).filter(|rest| rest.starts_with(BEGIN))?;
    let label = &rest.as_bytes()[BEGIN.len()..];
    let label = &label[..label.len().min(64)];
    let closed = label.windows(5).position(|w| w == b"-----")?;
    if !label[..closed].windows(11).any(|w| w == b"PRIVATE KEY") {
        return None;
    }
    let body = BEGIN.len() + closed + 5;
    let end = rest[body..]
        .find(END)
        .and_then(|at| {
            let after = body + at + END.len();
            rest[after..].find("-----").map(|dashes| after + dashes + 5)
        })
        .unwrap_or(rest.len());
    Some((i, i + end))
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
        assert_eq!(out["nested"]["list"][1], "Bearer [redacted]");
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
            // The secret itself goes; a scheme before it stays.
            let hidden = secret.trim_start_matches("Bearer ");
            let alone = redact_text(secret).unwrap_or_else(|| panic!("{secret}"));
            assert_eq!(alone.replace(hidden, ""), alone, "{secret}");
            assert!(alone == REDACTED || alone == "Bearer [redacted]", "{alone}");
            for (before, after) in [
                ("use ", " to call it"),
                ("token=", "&x=1"),
                ("\"", "\""),
                ("curl -H 'Authorization: ", "' https://example.com"),
                ("héllo ünïcode ", ""),
            ] {
                let text = format!("{before}{secret}{after}");
                let out = redact_text(&text).unwrap_or_else(|| panic!("{text}"));
                assert!(!out.contains(hidden), "{out}");
                // The text around it is kept (a PEM key without its END line runs to the end).
                let ended = !secret.starts_with("-----BEGIN OPENSSH");
                let around = format!("{before}{alone}{}", if ended { after } else { "" });
                assert_eq!(out, around, "{text}");
                let redacted = redact_arguments(&json!({"note": text}));
                assert_eq!(redacted["note"], around.as_str());
            }
        }
        let header = format!(
            "curl -H 'Authorization: Bearer {}' https://example.com",
            token("", 32)
        );
        assert_eq!(
            redact_text(&header).as_deref(),
            Some("curl -H 'Authorization: Bearer [redacted]' https://example.com")
        );
        let basic = format!("Authorization: Basic {}==", token("dXNl", 12));
        assert_eq!(
            redact_text(&basic).as_deref(),
            Some("Authorization: Basic [redacted]")
        );
    }

    #[test]
    fn only_the_secret_goes_so_an_approver_still_reads_what_a_call_does() {
        // A value that holds a token elsewhere, or starts with a scheme, hides nothing else.
        let ghp = token("ghp_", 36);
        let cases = [
            (
                format!("DROP TABLE users; -- {ghp}"),
                Some("DROP TABLE users; -- [redacted]".to_owned()),
            ),
            ("bearer ; rm -rf /".to_owned(), None),
            (
                format!("Bearer {ghp}; rm -rf /"),
                Some("Bearer [redacted]; rm -rf /".to_owned()),
            ),
            (
                "basic abc && curl evil".to_owned(),
                Some("basic [redacted] && curl evil".to_owned()),
            ),
            (
                format!("{ghp} and {ghp}"),
                Some("[redacted] and [redacted]".to_owned()),
            ),
        ];
        for (text, redacted) in cases {
            assert_eq!(redact_text(&text), redacted, "{text}");
        }
        let args = json!({"cmd": "bearer ; rm -rf /", "note": format!("key {ghp} end")});
        let out = redact_arguments(&args);
        assert_eq!(out["cmd"], "bearer ; rm -rf /");
        assert_eq!(out["note"], "key [redacted] end");
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
            assert_eq!(redact_text(text), None, "{text}");
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
