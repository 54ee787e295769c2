//! What both services need to know of an OpenID provider: where its discovery document is,
//! whether the document is the issuer's own, and which of its published keys verifies a
//! token. The gateway verifies access tokens and the control plane ID tokens with these, so a
//! key is chosen the same way everywhere.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde_json::Value;

/// The most a discovery document, a JWKS or a token answer from a provider may weigh.
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// The issuer's discovery document (OpenID Connect Discovery 1.0 §4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Whether a discovery document names `issuer` exactly (§4.3): a document that names another
/// one must not be used, or one provider could stand in for another.
pub fn names_issuer(document: &Value, issuer: &str) -> bool {
    document.get("issuer").and_then(Value::as_str) == Some(issuer)
}

/// The key of `kid` in `set`, or the only key when the token names none.
pub fn key<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        None => match set.keys.as_slice() {
            [only] => Some(only),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(kids: &[&str]) -> JwkSet {
        let keys = kids
            .iter()
            .map(|kid| json!({ "kty": "oct", "k": "c2VjcmV0", "kid": kid }))
            .collect::<Vec<_>>();
        serde_json::from_value(json!({ "keys": keys })).unwrap_or(JwkSet { keys: Vec::new() })
    }

    #[test]
    fn a_key_is_chosen_by_kid_or_as_the_only_one() {
        let two = set(&["a", "b"]);
        assert_eq!(
            key(&two, Some("b")).and_then(|k| k.common.key_id.as_deref()),
            Some("b")
        );
        assert!(key(&two, Some("c")).is_none());
        assert!(key(&two, None).is_none(), "which of two is a guess");
        let one = set(&["a"]);
        assert!(key(&one, None).is_some());
    }

    #[test]
    fn the_discovery_document_is_the_issuers_own() {
        assert_eq!(
            discovery_url("https://id.example.com/tenant/"),
            "https://id.example.com/tenant/.well-known/openid-configuration"
        );
        let document = json!({ "issuer": "https://id.example.com" });
        assert!(names_issuer(&document, "https://id.example.com"));
        assert!(!names_issuer(&document, "https://id.example.com/"));
        assert!(!names_issuer(&json!({}), "https://id.example.com"));
    }
}
