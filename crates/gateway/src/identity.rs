//! Identity-bound access: a JWT from one of the tenant's identity providers on
//! `/mcp/{server_id}` resolves to the same [`Grant`] shape a grant token does, with the
//! verified identity and the policy of the most specific binding (docs/identity.md).
//!
//! A token is verified against the provider its `iss` names among the server's tenant's
//! providers (a token of another tenant's provider finds none): an asymmetric signature
//! (RSA, ECDSA or EdDSA: `none` and HMAC are refused, so a public key can never serve as a
//! shared secret), `iss`, `aud` naming this server's resource (RFC 8707), and `exp`/`nbf`
//! within the leeway. Keys come from the issuer's OpenID discovery document and JWKS, fetched
//! through the egress guard, cached, and refetched when a token names an unknown `kid` (at
//! most once per refetch interval) or when they grow old. While the provider cannot be
//! reached the cached keys keep serving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_core::GrantId;
use portcullis_core::egress::Egress;
use portcullis_core::oidc;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::grants::{Access, Binding, Grant, Provider};

/// How long fetched keys are used before they are refetched in the background.
const KEYS_FRESH_FOR: Duration = Duration::from_secs(600);
/// The longest identity, group or `jti` kept (as the control plane bounds binding subjects).
const MAX_CLAIM: usize = 200;

/// Why a token was refused. The caller is told only that it is invalid; the log says which.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a JWT, or its header does not parse (`alg: none` among them).
    #[error("not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    /// A symmetric algorithm.
    #[error("algorithm {0:?} is not accepted (only RSA, ECDSA and EdDSA signatures)")]
    Algorithm(Algorithm),
    /// The issuer is none of the tenant's providers.
    #[error("the issuer is not one of the tenant's identity providers")]
    UnknownIssuer,
    /// No key of the issuer has the token's `kid`, even after a refetch.
    #[error("no key of the issuer has this kid")]
    UnknownKey,
    /// The issuer's keys could not be fetched, and none are cached.
    #[error("the issuer's keys cannot be fetched: {0}")]
    Keys(String),
    /// The signature, issuer, audience or times do not hold.
    #[error("the token does not verify: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// The identity claim is missing, empty or too long.
    #[error("the token names no usable identity in its {0} claim")]
    NoIdentity(String),
}

/// A verified token.
#[derive(Debug)]
pub struct Verified {
    /// The identity (the provider's identity claim).
    pub identity: String,
    /// Its groups (the provider's group claim).
    pub groups: Vec<String>,
    /// The issuer.
    pub issuer: String,
    /// The token's `jti`.
    pub jti: Option<String>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

/// An issuer's keys as last fetched.
struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// What is known of one issuer.
#[derive(Default)]
struct Issuer {
    keys: RwLock<Option<Arc<Keys>>>,
    /// When a fetch last started: one fetch at a time, at most one per refetch interval.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// The key cache and the verification settings, shared by every worker.
pub struct Identities {
    http: reqwest::Client,
    egress: Egress,
    issuers: Mutex<HashMap<String, Arc<Issuer>>>,
    leeway: Duration,
    refetch_interval: Duration,
}

/// Resolves host names to the addresses the egress guard permits, and nothing else.
struct GuardedResolver(Egress);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let addrs = egress.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl Identities {
    /// A cache that fetches keys through `egress`, accepts `leeway` of clock skew on `exp`
    /// and `nbf`, and refetches an issuer's keys for an unknown `kid` at most once per
    /// `refetch_interval`.
    pub fn new(
        egress: Egress,
        leeway: Duration,
        refetch_interval: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver(egress.clone())))
            .no_proxy()
            .build()?;
        Ok(Self {
            http,
            egress,
            issuers: Mutex::new(HashMap::new()),
            leeway,
            refetch_interval,
        })
    }

    /// Verifies `token` for the server of `access` and finds the binding that applies:
    /// `Ok((verified, None))` when none does.
    pub async fn verify<'a>(
        &self,
        token: &str,
        access: &'a Access,
    ) -> Result<(Verified, Option<&'a Binding>), Refused> {
        let header = jsonwebtoken::decode_header(token).map_err(Refused::Malformed)?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(Refused::Algorithm(header.alg));
        }
        let issuer = unverified_issuer(token)?;
        let provider = access
            .providers
            .iter()
            .find(|p| p.issuer == issuer)
            .ok_or(Refused::UnknownIssuer)?;
        let key = self.key(provider, header.kid.as_deref()).await?;
        let resource = format!("{}/mcp/{}", provider.audience, access.server.id);
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&provider.issuer]);
        validation.set_audience(&[&resource]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(Refused::Invalid)?
            .claims;
        let verified = read_claims(provider, &claims)?;
        let binding = choose(&access.bindings, &verified);
        Ok((verified, binding))
    }

    /// The key of `kid` (or the issuer's only key, for a token without one).
    async fn key(&self, provider: &Provider, kid: Option<&str>) -> Result<DecodingKey, Refused> {
        let issuer = self.issuer(&provider.issuer);
        let cached = issuer
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(keys) = &cached
            && let Some(key) = find(&keys.set, kid)
        {
            if keys.fetched.elapsed() > KEYS_FRESH_FOR {
                self.refresh_in_background(provider, issuer.clone());
            }
            return key;
        }
        // Unknown kid, or nothing fetched yet: one fetch, unless one happened too recently.
        let mut last = issuer.fetching.lock().await;
        let fresher = issuer
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(keys) = &fresher
            && !cached.as_ref().is_some_and(|c| Arc::ptr_eq(c, keys))
            && let Some(key) = find(&keys.set, kid)
        {
            // Another request fetched them while this one waited.
            return key;
        }
        if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            return Err(match fresher {
                Some(_) => Refused::UnknownKey,
                None => Refused::Keys("the last fetch failed a moment ago".into()),
            });
        }
        *last = Some(Instant::now());
        let set = self
            .fetch(&provider.issuer)
            .await
            .map_err(|e| Refused::Keys(e.to_string()))?;
        let keys = Arc::new(Keys {
            set,
            fetched: Instant::now(),
        });
        *issuer.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys.clone());
        find(&keys.set, kid).unwrap_or(Err(Refused::UnknownKey))
    }

    fn issuer(&self, issuer: &str) -> Arc<Issuer> {
        let mut issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        issuers.entry(issuer.to_owned()).or_default().clone()
    }

    /// Refetches old keys without holding up the request (unless a fetch is under way or
    /// one started within the refetch interval); a failure keeps the old ones.
    fn refresh_in_background(&self, provider: &Provider, issuer: Arc<Issuer>) {
        let interval = self.refetch_interval;
        let due = move |last: &Option<Instant>| last.is_none_or(|at| at.elapsed() >= interval);
        if !issuer.fetching.try_lock().is_ok_and(|last| due(&last)) {
            return;
        }
        let http = self.http.clone();
        let egress = self.egress.clone();
        let name = provider.issuer.clone();
        tokio::spawn(async move {
            let Ok(mut last) = issuer.fetching.try_lock() else {
                return;
            };
            if !due(&last) {
                return;
            }
            *last = Some(Instant::now());
            match fetch_keys(&http, &egress, &name).await {
                Ok(set) => {
                    let keys = Arc::new(Keys {
                        set,
                        fetched: Instant::now(),
                    });
                    *issuer.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(keys);
                }
                Err(e) => {
                    tracing::warn!(issuer = %name, error = %e, "cannot refresh an identity provider's keys; using the cached ones");
                }
            }
        });
    }

    async fn fetch(&self, issuer: &str) -> anyhow::Result<JwkSet> {
        fetch_keys(&self.http, &self.egress, issuer)
            .await
            .inspect_err(
                |e| tracing::warn!(%issuer, error = %e, "cannot fetch an identity provider's keys"),
            )
    }
}

/// The issuer's JWKS, through its discovery document (OpenID Connect Discovery 1.0 §4): the
/// document must name the same issuer, and both URLs must be ones the egress guard permits.
async fn fetch_keys(
    http: &reqwest::Client,
    egress: &Egress,
    issuer: &str,
) -> anyhow::Result<JwkSet> {
    let document: Value = get_json(http, egress, &oidc::discovery_url(issuer)).await?;
    if !oidc::names_issuer(&document, issuer) {
        anyhow::bail!("the discovery document names another issuer");
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("the discovery document has no jwks_uri"))?;
    let set: JwkSet = serde_json::from_value(get_json(http, egress, jwks_uri).await?)?;
    Ok(set)
}

async fn get_json(http: &reqwest::Client, egress: &Egress, url: &str) -> anyhow::Result<Value> {
    egress.check_url(url)?;
    let mut response = http.get(url).send().await?.error_for_status()?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > oidc::MAX_DOCUMENT {
            anyhow::bail!("{url} answered more than {} bytes", oidc::MAX_DOCUMENT);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&body)?)
}

/// The key of `kid` in `set` (the only key when the token names none); `None` when absent.
fn find(set: &JwkSet, kid: Option<&str>) -> Option<Result<DecodingKey, Refused>> {
    let jwk = oidc::key(set, kid)?;
    Some(DecodingKey::from_jwk(jwk).map_err(Refused::Invalid))
}

/// The `iss` of a token not yet verified: it only chooses which provider's keys to verify with.
fn unverified_issuer(token: &str) -> Result<String, Refused> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let claims: Iss =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(Refused::Malformed)?;
    claims.iss.ok_or(Refused::UnknownIssuer)
}

/// The identity, groups, `jti` and expiry of verified claims.
fn read_claims(provider: &Provider, claims: &Map<String, Value>) -> Result<Verified, Refused> {
    let identity = claims
        .get(&provider.identity_claim)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|i| !i.is_empty() && i.chars().count() <= MAX_CLAIM)
        .ok_or_else(|| Refused::NoIdentity(provider.identity_claim.clone()))?
        .to_owned();
    let groups = match provider.groups_claim.as_deref().and_then(|c| claims.get(c)) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| g.chars().count() <= MAX_CLAIM)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .map(|j| j.chars().take(MAX_CLAIM).collect());
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    Ok(Verified {
        identity,
        groups,
        issuer: provider.issuer.clone(),
        jti,
        expires_at: DateTime::from_timestamp(exp, 0).unwrap_or_default(),
    })
}

/// The most specific binding of `verified`: its identity's, else the oldest of its groups',
/// else the one for every identity.
fn choose<'a>(bindings: &'a [Binding], verified: &Verified) -> Option<&'a Binding> {
    let by_identity = bindings
        .iter()
        .find(|b| b.identity.as_deref() == Some(verified.identity.as_str()));
    let by_group = || {
        bindings.iter().find(|b| {
            b.group
                .as_deref()
                .is_some_and(|g| verified.groups.iter().any(|mine| mine == g))
        })
    };
    let for_all = || {
        bindings
            .iter()
            .find(|b| b.identity.is_none() && b.group.is_none())
    };
    by_identity.or_else(by_group).or_else(for_all)
}

/// The id an identity-bound caller goes by where a grant's id would be (sessions, approvals,
/// `grant`-scoped limits, the audit log): derived from the tenant, server, issuer and
/// identity, so it is the same on every request and every replica, and differs for each.
pub fn principal(access: &Access, verified: &Verified) -> GrantId {
    let mut hash = Sha256::new();
    for part in [
        access.server.tenant.to_string().as_str(),
        access.server.id.to_string().as_str(),
        verified.issuer.as_str(),
        verified.identity.as_str(),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A version 8 (custom) UUID of the RFC 9562 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    GrantId(uuid::Uuid::from_bytes(bytes))
}

/// The grant-shaped resolution of a verified caller under `binding`.
pub fn grant(access: &Access, verified: Verified, binding: &Binding) -> Grant {
    let id = principal(access, &verified);
    let server = access.server.clone();
    Grant {
        id,
        tenant: server.tenant,
        identity: verified.identity,
        id_text: id.to_string(),
        tenant_text: server.tenant.to_string(),
        server_text: server.id.to_string(),
        server,
        policy: binding.policy.clone(),
        expires_at: Some(verified.expires_at),
        revoked: false,
        token_hash: None,
        issuer: Some(verified.issuer),
        jti: verified.jti,
    }
}

/// Whether a bearer token looks like a JWT (three base64url parts) rather than a grant token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// The rule an identity no binding covers is refused by, in the audit log.
pub const NO_BINDING: &str = "(no binding)";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use axum::http::HeaderMap;
    use portcullis_core::{PolicyId, ServerId, TenantId};
    use serde_json::json;

    use super::*;
    use crate::grants::{PolicyRef, Server, Transport};

    fn binding(identity: Option<&str>, group: Option<&str>) -> Binding {
        Binding {
            id: uuid::Uuid::now_v7(),
            identity: identity.map(str::to_owned),
            group: group.map(str::to_owned),
            policy: Arc::new(PolicyRef {
                id: PolicyId::new(),
                version: 1,
                compiled: None,
            }),
        }
    }

    fn verified(identity: &str, groups: &[&str]) -> Verified {
        Verified {
            identity: identity.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            issuer: "https://idp.example".to_owned(),
            jti: None,
            expires_at: Utc::now(),
        }
    }

    fn access(tenant: TenantId) -> Access {
        let url = url::Url::parse("http://127.0.0.1:9/mcp").unwrap();
        Access {
            server: Arc::new(Server {
                id: ServerId::new(),
                tenant,
                uri: crate::upstream::uri(&url).unwrap(),
                url,
                transport: Transport::StreamableHttp,
                headers: HeaderMap::new(),
                block_changed_tools: false,
            }),
            providers: Vec::new(),
            bindings: Vec::new(),
        }
    }

    #[test]
    fn the_most_specific_binding_wins() {
        let bindings = [
            binding(None, None),
            binding(None, Some("ops")),
            binding(None, Some("eng")),
            binding(Some("ada@example.com"), None),
        ];
        let chosen = |who: &Verified| choose(&bindings, who).map(|b| b.id);
        assert_eq!(
            chosen(&verified("ada@example.com", &["ops"])),
            Some(bindings[3].id)
        );
        // Of several bound groups, the oldest binding.
        assert_eq!(
            chosen(&verified("bob@example.com", &["eng", "ops"])),
            Some(bindings[1].id)
        );
        assert_eq!(
            chosen(&verified("eve@example.com", &["sales"])),
            Some(bindings[0].id)
        );
        assert_eq!(
            choose(&bindings[1..3], &verified("eve@example.com", &[])).map(|b| b.id),
            None
        );
    }

    #[test]
    fn each_identity_is_one_stable_principal_per_server() {
        let tenant = TenantId::new();
        let (one, other) = (access(tenant), access(tenant));
        let ada = verified("ada@example.com", &[]);
        assert_eq!(principal(&one, &ada), principal(&one, &ada));
        assert_ne!(principal(&one, &ada), principal(&other, &ada));
        assert_ne!(
            principal(&one, &ada),
            principal(&one, &verified("bob@example.com", &[]))
        );
        assert_eq!(principal(&one, &ada).0.get_version_num(), 8);
    }

    #[test]
    fn claims_give_the_identity_groups_and_jti() {
        let provider = Provider {
            issuer: "https://idp.example".into(),
            audience: "https://gw.example".into(),
            identity_claim: "email".into(),
            groups_claim: Some("roles".into()),
        };
        let read = |claims: serde_json::Value| read_claims(&provider, claims.as_object().unwrap());
        let ok = read(json!({ "email": "ada@example.com", "roles": ["a", 1, "b"], "jti": "j1", "exp": 2_000_000_000 }))
            .unwrap();
        assert_eq!(
            (ok.identity.as_str(), ok.groups.clone()),
            ("ada@example.com", vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(ok.jti.as_deref(), Some("j1"));
        assert_eq!(ok.expires_at.timestamp(), 2_000_000_000);
        let one_group = read(json!({ "email": "ada@example.com", "roles": "admin" })).unwrap();
        assert_eq!(one_group.groups, ["admin"]);
        for bad in [
            json!({ "sub": "x" }),
            json!({ "email": " " }),
            json!({ "email": "x".repeat(201) }),
        ] {
            assert!(matches!(read(bad), Err(Refused::NoIdentity(_))));
        }
        assert!(looks_like_jwt("a.b.c") && !looks_like_jwt("pcg_abc"));
    }
}
