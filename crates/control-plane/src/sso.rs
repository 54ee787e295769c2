//! Dashboard sign-in through the organisation's identity provider: the OpenID Connect
//! authorization code flow with PKCE (S256), `state` and `nonce` (docs/control-plane.md).
//!
//! The flow's secrets (state, nonce, PKCE verifier) travel in a short-lived cookie sealed with
//! the credential keyring (so the browser can neither read nor forge it), HttpOnly and
//! SameSite=Lax: the provider's redirect back is a top-level GET, which Lax lets through.
//! `state` ties the callback to the browser that started the flow, so an attacker cannot slip
//! their own code into a victim's browser (login CSRF); `nonce` ties the ID token to this flow,
//! so a token issued for another one is refused; the verifier proves to the provider that the
//! code is redeemed by whoever asked for it. The provider is reached through the egress guard,
//! as upstreams are.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use portcullis_core::{TenantId, UserId, oidc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{self, Actor, Admin, ClientIp, Role, Tenant};
use crate::dashboard::{Layout, safe_next, see_other, see_other_with};
use crate::error::{Error, Result};
use crate::input::{FormBody, JsonBody, QueryParams};

/// The cookie that carries a flow's secrets from its start to its callback.
const FLOW_COOKIE: &str = "pcsso";
/// How long a person has to sign in at the provider.
const FLOW_SECONDS: i64 = 600;
/// What the flow cookie is sealed for (a sealed credential cannot pass for one).
const FLOW_CONTEXT: &[u8] = b"sso-flow";
/// Clock skew accepted on `exp` and `iat`.
const LEEWAY_SECONDS: u64 = 60;
/// The algorithms an ID token may be signed with: asymmetric only, so a provider's public key
/// can never serve as a shared secret.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The context a provider's client secret is sealed under.
pub fn client_secret_context(tenant: TenantId, provider: Uuid) -> Vec<u8> {
    format!("identity-provider-secret:{tenant}:{provider}").into_bytes()
}

/// A provider set up for dashboard sign-in (it has a client id and secret).
#[derive(sqlx::FromRow)]
struct SignInProvider {
    id: Uuid,
    tenant_id: Uuid,
    issuer: String,
    client_id: String,
    client_secret_enc: Vec<u8>,
    allowed_email_domains: Vec<String>,
}

const SELECT: &str = "SELECT id, tenant_id, issuer, client_id, client_secret_enc,
        coalesce(allowed_email_domains, '{}') AS allowed_email_domains
   FROM identity_providers
  WHERE client_id IS NOT NULL AND client_secret_enc IS NOT NULL";

async fn provider(state: &AppState, id: Uuid) -> Result<Option<SignInProvider>> {
    Ok(sqlx::query_as(crate::sql(format!("{SELECT} AND id = $1")))
        .bind(id)
        .fetch_optional(state.db())
        .await?)
}

/// The oldest sign-in provider that lets people of `domain` in.
async fn provider_for_domain(state: &AppState, domain: &str) -> Result<Option<SignInProvider>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} AND lower($1) = ANY (allowed_email_domains) ORDER BY created_at, id LIMIT 1"
    )))
    .bind(domain)
    .fetch_optional(state.db())
    .await?)
}

/// Whether the tenant has a provider its members can sign in with (password sign-in may only
/// be turned off then).
pub async fn configured(db: &sqlx::PgPool, tenant: TenantId) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM identity_providers
                         WHERE tenant_id = $1 AND client_id IS NOT NULL AND client_secret_enc IS NOT NULL)",
    )
    .bind(tenant.0)
    .fetch_one(db)
    .await?)
}

/// A flow under way, sealed into [`FLOW_COOKIE`].
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    provider: Uuid,
    state: String,
    nonce: String,
    verifier: String,
    next: String,
    /// Unix seconds after which the callback refuses it.
    expires: i64,
}

fn flow_cookie(state: &AppState, flow: &Flow) -> String {
    let sealed = state
        .shared
        .credentials
        .seal_text(&serde_json::to_vec(flow).unwrap_or_default(), FLOW_CONTEXT);
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    format!(
        "{FLOW_COOKIE}={sealed}; Path=/login/sso; HttpOnly; SameSite=Lax; Max-Age={FLOW_SECONDS}{secure}"
    )
}

fn clear_flow_cookie(state: &AppState) -> String {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    format!("{FLOW_COOKIE}=; Path=/login/sso; HttpOnly; SameSite=Lax; Max-Age=0{secure}")
}

/// The flow of the request's cookie, if it opens, parses and has not expired.
fn open_flow(state: &AppState, headers: &HeaderMap) -> Option<Flow> {
    let value = auth::cookie(headers, FLOW_COOKIE)?;
    let plain = state
        .shared
        .credentials
        .open_text(&value, FLOW_CONTEXT)
        .ok()?;
    let flow: Flow = serde_json::from_slice(&plain).ok()?;
    (flow.expires > chrono::Utc::now().timestamp()).then_some(flow)
}

/// Where the provider sends the browser back: one fixed URL, registered at the provider.
fn redirect_uri(state: &AppState) -> String {
    format!(
        "{}/login/sso/callback",
        state.settings.public_url.trim_end_matches('/')
    )
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What the provider's discovery document says this flow needs.
#[derive(Debug, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    /// Where the email is read when the ID token carries none.
    userinfo_endpoint: Option<String>,
}

/// A JSON document from the provider, through the egress guard, size-bounded.
async fn get_json<T: DeserializeOwned>(
    state: &AppState,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<T> {
    let mut response = request
        .timeout(state.settings.discovery_timeout)
        .send()
        .await?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > oidc::MAX_DOCUMENT {
            anyhow::bail!(
                "the provider answered more than {} bytes",
                oidc::MAX_DOCUMENT
            );
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        anyhow::bail!(
            "the provider answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// The provider's endpoints (OpenID Connect Discovery 1.0 §4): the document must name the
/// issuer it was asked for, and every endpoint Portcullis calls must pass the egress guard.
async fn discover(state: &AppState, issuer: &str) -> anyhow::Result<Endpoints> {
    let url = oidc::discovery_url(issuer);
    state.shared.egress.check_url(&url)?;
    let document: Value = get_json(state, state.http.get(&url)).await?;
    if !oidc::names_issuer(&document, issuer) {
        anyhow::bail!("the discovery document names another issuer");
    }
    let endpoints: Endpoints = serde_json::from_value(document)?;
    state.shared.egress.check_url(&endpoints.token_endpoint)?;
    state.shared.egress.check_url(&endpoints.jwks_uri)?;
    if let Some(userinfo) = &endpoints.userinfo_endpoint {
        state.shared.egress.check_url(userinfo)?;
    }
    let authorize = url::Url::parse(&endpoints.authorization_endpoint)?;
    if !matches!(authorize.scheme(), "http" | "https") {
        anyhow::bail!("the authorization endpoint is not an http(s) URL");
    }
    Ok(endpoints)
}

/// What a verified ID token says about the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The provider's subject.
    pub subject: String,
    /// Their email address.
    pub email: String,
}

/// Why an ID token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    /// Not a JWT, or its header does not parse (`alg: none` among them).
    #[error("not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    /// An algorithm other than RS256, ES256 and EdDSA.
    #[error("algorithm {0:?} is not accepted (RS256, ES256 or EdDSA only)")]
    Algorithm(Algorithm),
    /// No key of the provider has the token's `kid`.
    #[error("no key of the provider has this kid")]
    UnknownKey,
    /// The signature, issuer, audience or expiry do not hold.
    #[error("the ID token does not verify: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// The nonce is not this flow's: the token was issued for another sign-in.
    #[error("the ID token's nonce is not this sign-in's")]
    Nonce,
    /// No usable email claim.
    #[error("the ID token names no email address")]
    NoEmail,
    /// `email_verified` is present and not true.
    #[error("the provider has not verified this email address")]
    Unverified,
}

/// Verifies an ID token (OpenID Connect Core 1.0 §3.1.3.7) against the provider's `keys`:
/// an RS256, ES256 or EdDSA signature by the key of its `kid`, `iss` = `issuer`, `aud` =
/// `client_id`, `exp` not past, `nonce` = the flow's. Returns its claims.
pub fn verify_id_token(
    keys: &JwkSet,
    token: &str,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Map<String, Value>, TokenRefused> {
    let header = jsonwebtoken::decode_header(token).map_err(TokenRefused::Malformed)?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(TokenRefused::Algorithm(header.alg));
    }
    let jwk = oidc::key(keys, header.kid.as_deref()).ok_or(TokenRefused::UnknownKey)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(TokenRefused::Invalid)?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(TokenRefused::Invalid)?
        .claims;
    let given = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(nonce.as_bytes())) {
        return Err(TokenRefused::Nonce);
    }
    Ok(claims)
}

/// The person that verified claims name: their subject and email, which must be verified
/// when the claims say whether it is.
pub fn person(claims: &Map<String, Value>) -> Result<Person, TokenRefused> {
    match claims.get("email_verified") {
        None | Some(Value::Bool(true)) => {}
        Some(_) => return Err(TokenRefused::Unverified),
    }
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .and_then(|e| crate::input::email("/email", e).ok())
        .ok_or(TokenRefused::NoEmail)?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Person { subject, email })
}

/// The ID token of a code: the code, the redirect URI and the PKCE verifier, with the client's
/// secret (`client_secret_basic`, RFC 6749 §2.3.1: both parts form-encoded).
async fn exchange(
    state: &AppState,
    endpoints: &Endpoints,
    provider: &SignInProvider,
    secret: &str,
    code: &str,
    verifier: &str,
) -> anyhow::Result<Tokens> {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let redirect = redirect_uri(state);
    let body = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("code_verifier", verifier),
    ])?;
    let request = state
        .http
        .post(&endpoints.token_endpoint)
        .basic_auth(encode(&provider.client_id), Some(encode(secret)))
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body);
    let tokens: Tokens = get_json(state, request).await?;
    if tokens.id_token.is_none() {
        anyhow::bail!("the token answer has no id_token");
    }
    Ok(tokens)
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct Tokens {
    id_token: Option<String>,
    access_token: Option<String>,
}

/// The email of a person whose ID token carries none (providers may keep profile claims for
/// the UserInfo endpoint when the code flow is used): the UserInfo answer, which must name the
/// ID token's subject (OpenID Connect Core 1.0 §5.3.2).
async fn userinfo(
    state: &AppState,
    endpoints: &Endpoints,
    tokens: &Tokens,
    subject: &str,
) -> anyhow::Result<Map<String, Value>> {
    let (Some(url), Some(access)) = (&endpoints.userinfo_endpoint, &tokens.access_token) else {
        anyhow::bail!("the ID token has no email and the provider offers no UserInfo");
    };
    let claims: Map<String, Value> =
        get_json(state, state.http.get(url).bearer_auth(access)).await?;
    if claims.get("sub").and_then(Value::as_str) != Some(subject) {
        anyhow::bail!("the UserInfo answer names another subject");
    }
    Ok(claims)
}

// ---- who signs in ----

/// The member a verified person signs in as: an existing member of the provider's
/// organisation, or, when their email's domain is one the provider allows, a new viewer
/// (a user without a password if they have no account yet). `None`: not let in.
async fn member(
    state: &AppState,
    provider: &SignInProvider,
    person: &Person,
) -> Result<Option<UserId>> {
    let tenant = TenantId(provider.tenant_id);
    let user: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
            .bind(&person.email)
            .fetch_optional(state.db())
            .await?;
    if let Some(user) = user {
        let is_member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM memberships WHERE tenant_id = $1 AND user_id = $2)",
        )
        .bind(tenant.0)
        .bind(user)
        .fetch_one(state.db())
        .await?;
        if is_member {
            return Ok(Some(UserId(user)));
        }
    }
    let domain = person
        .email
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default();
    if !provider.allowed_email_domains.contains(&domain) {
        return Ok(None);
    }
    join_as_viewer(state, provider, person, user.map(UserId))
        .await
        .map(Some)
}

/// Adds the person to the provider's organisation as a viewer, creating their user (without a
/// password) when there is none; audited as the person's own joining.
async fn join_as_viewer(
    state: &AppState,
    provider: &SignInProvider,
    person: &Person,
    existing: Option<UserId>,
) -> Result<UserId> {
    let tenant = TenantId(provider.tenant_id);
    let mut tx = state.db().begin().await?;
    let user = match existing {
        Some(user) => user,
        None => {
            let id = UserId::new();
            // A concurrent first sign-in of the same person may have created the user.
            sqlx::query_scalar(
                "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, NULL)
                 ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email
                 RETURNING id",
            )
            .bind(id.0)
            .bind(&person.email)
            .fetch_one(&mut *tx)
            .await
            .map(UserId)?
        }
    };
    let joined = sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'viewer')
         ON CONFLICT (tenant_id, user_id) DO NOTHING",
    )
    .bind(tenant.0)
    .bind(user.0)
    .execute(&mut *tx)
    .await?;
    if joined.rows_affected() == 0 {
        tx.commit().await?;
        return Ok(user);
    }
    let who = Tenant {
        id: tenant,
        role: Role::Viewer,
        actor: Actor {
            user_id: Some(user),
            token_id: None,
            label: person.email.clone(),
        },
        session: None,
    };
    crate::admin_audit::commit(
        tx,
        &who,
        "member.join",
        "member",
        &user.to_string(),
        None,
        Some(json!({
            "email": person.email,
            "role": Role::Viewer.as_str(),
            "via": "identity_provider",
            "identity_provider": provider.id,
            "subject": person.subject,
        })),
    )
    .await?;
    Ok(user)
}

// ---- a provider's sign-in settings ----

/// A provider's dashboard sign-in settings as the API shows them (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct SignInSettings {
    /// The provider.
    pub identity_provider_id: Uuid,
    /// Its issuer.
    pub issuer: String,
    /// The OpenID client the dashboard signs in as; `None`: sign-in not set up.
    pub client_id: Option<String>,
    /// Whether a client secret is stored (it is never shown).
    pub client_secret_set: bool,
    /// Email domains whose people get a viewer membership at their first sign-in.
    pub allowed_email_domains: Vec<String>,
    /// The organisation's sign-in URL.
    pub sign_in_url: String,
    /// The redirect URI to register with the provider.
    pub redirect_uri: String,
}

#[derive(sqlx::FromRow)]
struct SettingsRow {
    id: Uuid,
    issuer: String,
    client_id: Option<String>,
    client_secret_set: bool,
    allowed_email_domains: Vec<String>,
}

const SETTINGS: &str =
    "SELECT id, issuer, client_id, client_secret_enc IS NOT NULL AS client_secret_set,
        coalesce(allowed_email_domains, '{}') AS allowed_email_domains
   FROM identity_providers WHERE tenant_id = $1";

fn shown(state: &AppState, row: SettingsRow) -> SignInSettings {
    SignInSettings {
        sign_in_url: format!(
            "{}/login/sso/{}",
            state.settings.public_url.trim_end_matches('/'),
            row.id
        ),
        redirect_uri: redirect_uri(state),
        identity_provider_id: row.id,
        issuer: row.issuer,
        client_id: row.client_id,
        client_secret_set: row.client_secret_set,
        allowed_email_domains: row.allowed_email_domains,
    }
}

/// The sign-in settings of one of the tenant's providers.
pub(crate) async fn sign_in_settings(
    state: &AppState,
    tenant: TenantId,
    id: Uuid,
) -> Result<SignInSettings> {
    let row: SettingsRow = sqlx::query_as(crate::sql(format!("{SETTINGS} AND id = $2")))
        .bind(tenant.0)
        .bind(id)
        .fetch_optional(state.db())
        .await?
        .ok_or(Error::NotFound)?;
    Ok(shown(state, row))
}

/// The sign-in settings of every provider of the tenant, oldest first (the settings page).
pub(crate) async fn all_sign_in_settings(
    state: &AppState,
    tenant: TenantId,
) -> Result<Vec<SignInSettings>> {
    let rows: Vec<SettingsRow> =
        sqlx::query_as(crate::sql(format!("{SETTINGS} ORDER BY created_at, id")))
            .bind(tenant.0)
            .fetch_all(state.db())
            .await?;
    Ok(rows.into_iter().map(|row| shown(state, row)).collect())
}

/// A change of a provider's sign-in settings.
#[derive(Debug, Default, Deserialize)]
pub struct SignInChange {
    /// The OpenID client id.
    pub client_id: Option<String>,
    /// Its secret; absent or empty keeps the stored one (required when none is).
    pub client_secret: Option<String>,
    /// Email domains let in as viewers at their first sign-in; absent: none.
    pub allowed_email_domains: Option<Vec<String>>,
}

/// An email domain as people type it after the `@`: letters, digits, `-` and dots, lowercased.
fn email_domain(pointer: &str, text: &str) -> Result<String> {
    let domain = text.trim().trim_start_matches('@').to_lowercase();
    let ok = (3..=253).contains(&domain.len())
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(domain)
    } else {
        Err(Error::field(
            pointer,
            "is not an email domain (example.com)",
        ))
    }
}

/// Checks a change: the client id, the domains (at most 50), and a secret when none is stored.
fn check_sign_in(
    change: &SignInChange,
    secret_stored: bool,
) -> Result<(String, Option<String>, Vec<String>)> {
    let mut errors = Vec::new();
    let client_id = crate::input::text(
        "/client_id",
        change.client_id.as_deref().unwrap_or_default(),
        500,
    )
    .map_err(|e| collect(&mut errors, e))
    .ok();
    let secret = change
        .client_secret
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    match secret {
        None if !secret_stored => errors.push(crate::error::FieldError::new(
            "/client_secret",
            "is required: the provider's secret of this client",
        )),
        Some(s) if s.chars().count() > 2000 => errors.push(crate::error::FieldError::new(
            "/client_secret",
            "use at most 2000 characters",
        )),
        _ => {}
    }
    let given = change.allowed_email_domains.as_deref().unwrap_or_default();
    if given.len() > 50 {
        errors.push(crate::error::FieldError::new(
            "/allowed_email_domains",
            "list at most 50 domains",
        ));
    }
    let mut domains = Vec::new();
    for (i, text) in given.iter().enumerate().take(50) {
        match email_domain(&format!("/allowed_email_domains/{i}"), text) {
            Ok(d) if !domains.contains(&d) => domains.push(d),
            Ok(_) => {}
            Err(e) => collect(&mut errors, e),
        }
    }
    match client_id {
        Some(client_id) if errors.is_empty() => Ok((client_id, secret.map(str::to_owned), domains)),
        _ => Err(Error::Validation(errors)),
    }
}

fn collect(errors: &mut Vec<crate::error::FieldError>, e: Error) {
    match e {
        Error::Validation(mut more) => errors.append(&mut more),
        other => errors.push(crate::error::FieldError::new("", other.to_string())),
    }
}

/// Sets a provider's sign-in settings; audited (without the secret).
pub(crate) async fn set_sign_in(
    state: &AppState,
    who: &Tenant,
    id: Uuid,
    change: &SignInChange,
) -> Result<SignInSettings> {
    let before = sign_in_settings(state, who.id, id).await?;
    let (client_id, secret, domains) = check_sign_in(change, before.client_secret_set)?;
    let sealed = secret.map(|s| {
        state
            .shared
            .credentials
            .seal(s.as_bytes(), &client_secret_context(who.id, id))
    });
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE identity_providers
            SET client_id = $3, client_secret_enc = coalesce($4, client_secret_enc),
                allowed_email_domains = $5, updated_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id)
    .bind(&client_id)
    .bind(sealed)
    .bind(&domains)
    .execute(&mut *tx)
    .await?;
    let after = SignInSettings {
        client_id: Some(client_id),
        client_secret_set: true,
        allowed_email_domains: domains,
        ..before.clone()
    };
    crate::admin_audit::commit(
        tx,
        who,
        "identity_provider.sign_in.update",
        "identity_provider",
        &id.to_string(),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

/// Turns a provider's sign-in off. Refused while password sign-in is off and no other provider
/// could sign anyone in, since nobody could then.
pub(crate) async fn clear_sign_in(state: &AppState, who: &Tenant, id: Uuid) -> Result<()> {
    let before = sign_in_settings(state, who.id, id).await?;
    let mut tx = state.db().begin().await?;
    // The tenant's row, locked: a concurrent change of the setting waits for this one.
    let password_off: bool = sqlx::query_scalar(
        "SELECT password_sign_in_disabled FROM tenants WHERE id = $1 FOR UPDATE",
    )
    .bind(who.id.0)
    .fetch_one(&mut *tx)
    .await?;
    let others: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM identity_providers
                         WHERE tenant_id = $1 AND id <> $2
                           AND client_id IS NOT NULL AND client_secret_enc IS NOT NULL)",
    )
    .bind(who.id.0)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if password_off && !others {
        return Err(Error::Conflict(
            "password sign-in is off and this is the organisation's only way to sign in: turn password sign-in on first".into(),
        ));
    }
    sqlx::query(
        "UPDATE identity_providers
            SET client_id = NULL, client_secret_enc = NULL, allowed_email_domains = NULL, updated_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    crate::admin_audit::commit(
        tx,
        who,
        "identity_provider.sign_in.delete",
        "identity_provider",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    Ok(())
}

async fn api_get_sign_in(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<SignInSettings>> {
    Ok(axum::Json(
        sign_in_settings(&state, tenant.id, crate::input::id(&id)?).await?,
    ))
}

async fn api_set_sign_in(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
    JsonBody(change): JsonBody<SignInChange>,
) -> Result<axum::Json<SignInSettings>> {
    Ok(axum::Json(
        set_sign_in(&state, &tenant, crate::input::id(&id)?, &change).await?,
    ))
}

async fn api_clear_sign_in(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    clear_sign_in(&state, &tenant, crate::input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The settings page's form of a provider's sign-in.
#[derive(Debug, Deserialize)]
struct SignInForm {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
    /// Comma- or space-separated.
    #[serde(default)]
    allowed_email_domains: String,
}

async fn sign_in_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
    FormBody(form): FormBody<SignInForm>,
) -> Result<Response> {
    let change = SignInChange {
        client_id: Some(form.client_id),
        client_secret: Some(form.client_secret),
        allowed_email_domains: Some(
            form.allowed_email_domains
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
    };
    set_sign_in(&state, &tenant, crate::input::id(&id)?, &change).await?;
    Ok(see_other_with(
        "/settings",
        "Sign-in through the identity provider saved.",
    ))
}

/// `/api/v1/identity-providers/{id}/sign-in`.
pub(crate) fn api() -> Router<AppState> {
    Router::new().route(
        "/api/v1/identity-providers/{id}/sign-in",
        get(api_get_sign_in)
            .put(api_set_sign_in)
            .delete(api_clear_sign_in),
    )
}

// ---- pages ----

/// A sign-in that did not go through, and why, in words for the person.
#[derive(Template, WebTemplate)]
#[template(path = "sso_refused.html")]
struct RefusedPage {
    layout: Layout,
    message: String,
}

/// How a callback ends when no session opens.
enum Refusal {
    /// A page saying why (the log says more).
    Page(StatusCode, String),
    /// An internal failure (a database error): the usual error page.
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Self::Failed(e.into())
    }
}

fn refuse(status: StatusCode, message: &str) -> Refusal {
    Refusal::Page(status, message.to_owned())
}

fn refused_page(status: StatusCode, message: String) -> Response {
    (
        status,
        RefusedPage {
            layout: Layout::public("Sign-in refused"),
            message,
        },
    )
        .into_response()
}

/// `?next=`.
#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// `GET /login/sso/{provider_id}`: the organisation-specific sign-in URL. Sends the browser to
/// the provider with a fresh state, nonce and PKCE challenge.
async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<NextQuery>,
) -> Result<Response> {
    let id: Uuid = crate::input::id(&id)?;
    let provider = provider(&state, id).await?.ok_or(Error::NotFound)?;
    redirect_to_provider(&state, &provider, safe_next(q.next.as_deref())).await
}

async fn redirect_to_provider(
    state: &AppState,
    provider: &SignInProvider,
    next: String,
) -> Result<Response> {
    let endpoints = discover(state, &provider.issuer).await.map_err(|e| {
        tracing::warn!(issuer = %provider.issuer, error = %e, "cannot discover an identity provider");
        Error::Upstream("the identity provider cannot be reached".into())
    })?;
    let flow = Flow {
        provider: provider.id,
        state: portcullis_core::token::random_base32(32),
        nonce: portcullis_core::token::random_base32(32),
        verifier: portcullis_core::token::random_base32(64),
        next,
        expires: chrono::Utc::now().timestamp() + FLOW_SECONDS,
    };
    let mut url = url::Url::parse(&endpoints.authorization_endpoint).map_err(Error::internal)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.client_id)
        .append_pair("redirect_uri", &redirect_uri(state))
        .append_pair("scope", "openid email")
        .append_pair("state", &flow.state)
        .append_pair("nonce", &flow.nonce)
        .append_pair("code_challenge", &challenge(&flow.verifier))
        .append_pair("code_challenge_method", "S256");
    Ok((
        [(header::SET_COOKIE, flow_cookie(state, &flow))],
        see_other(url.as_str()),
    )
        .into_response())
}

/// The form of the sign-in page's provider entry.
#[derive(Debug, Deserialize)]
struct DomainForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    next: Option<String>,
}

/// The way on to a provider. A link rather than a redirect: the dashboard's CSP
/// (`form-action 'self'`) rightly stops a form's answer from redirecting to another site.
#[derive(Template, WebTemplate)]
#[template(path = "sso_continue.html")]
struct ContinuePage {
    layout: Layout,
    organization: String,
    href: String,
}

/// `POST /login/sso`: finds the provider of the email's domain and links to its sign-in URL.
async fn start_by_email(
    State(state): State<AppState>,
    FormBody(form): FormBody<DomainForm>,
) -> Result<Response> {
    let domain = form
        .email
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default();
    let found = if domain.is_empty() {
        None
    } else {
        provider_for_domain(&state, &domain).await?
    };
    match found {
        Some(provider) => {
            let organization: String =
                sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
                    .bind(provider.tenant_id)
                    .fetch_one(state.db())
                    .await?;
            let next: String =
                url::form_urlencoded::byte_serialize(safe_next(form.next.as_deref()).as_bytes())
                    .collect();
            Ok(ContinuePage {
                layout: Layout::public("Sign in"),
                organization,
                href: format!("/login/sso/{}?next={next}", provider.id),
            }
            .into_response())
        }
        None => Ok(refused_page(
            StatusCode::NOT_FOUND,
            "No organisation signs in with an identity provider for this email's domain. Sign in with your password, or use the sign-in link your organisation gave you.".into(),
        )),
    }
}

/// The provider's redirect back.
#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /login/sso/callback`: checks the state, redeems the code, verifies the ID token and
/// opens a session for the member it names. The flow cookie is spent whatever happens.
async fn callback(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    QueryParams(q): QueryParams<CallbackQuery>,
) -> Result<Response> {
    let flow = open_flow(&state, &headers);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let clear = (header::SET_COOKIE, clear_flow_cookie(&state));
    match finish(&state, flow, &q, ip, user_agent).await {
        Ok((secret, next)) => {
            metrics::counter!("portcullis_logins_total", "result" => "ok_sso").increment(1);
            Ok((
                AppendHeaders([
                    clear,
                    (header::SET_COOKIE, auth::session_cookie(&state, &secret)),
                ]),
                see_other(&next),
            )
                .into_response())
        }
        Err(Refusal::Page(status, message)) => {
            metrics::counter!("portcullis_logins_total", "result" => "failed_sso").increment(1);
            Ok((AppendHeaders([clear]), refused_page(status, message)).into_response())
        }
        Err(Refusal::Failed(e)) => Err(e),
    }
}

async fn finish(
    state: &AppState,
    flow: Option<Flow>,
    q: &CallbackQuery,
    ip: ClientIp,
    user_agent: Option<&str>,
) -> Result<(String, String), Refusal> {
    let Some(flow) = flow else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in expired or was not started in this browser. Start again from the sign-in page.",
        ));
    };
    let given = q.state.as_deref().unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(flow.state.as_bytes())) {
        tracing::warn!("identity provider sign-in refused: the state is not this browser's");
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in answer belongs to another sign-in (its state does not match). Start again from the sign-in page.",
        ));
    }
    if let Some(error) = &q.error {
        let detail = q.error_description.as_deref().unwrap_or_default();
        tracing::info!(%error, %detail, "the identity provider refused a sign-in");
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            format!("The identity provider did not sign you in ({error})."),
        ));
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "The identity provider sent no code.",
        )
    })?;
    let provider = provider(state, flow.provider).await?.ok_or_else(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "This identity provider no longer signs anyone in to Portcullis.",
        )
    })?;
    let unreachable = |e: anyhow::Error| {
        tracing::warn!(issuer = %provider.issuer, error = %e, "identity provider sign-in failed");
        refuse(
            StatusCode::BAD_GATEWAY,
            "The identity provider cannot be reached or answered nonsense. Try again later.",
        )
    };
    let endpoints = discover(state, &provider.issuer)
        .await
        .map_err(unreachable)?;
    let secret = state
        .shared
        .credentials
        .open(
            &provider.client_secret_enc,
            &client_secret_context(TenantId(provider.tenant_id), provider.id),
        )
        .map_err(|e| Error::internal(anyhow::anyhow!("cannot open a client secret: {e}")))?;
    let secret = String::from_utf8_lossy(&secret);
    let tokens = exchange(state, &endpoints, &provider, &secret, code, &flow.verifier)
        .await
        .map_err(|e| {
            tracing::warn!(issuer = %provider.issuer, error = %e, "identity provider refused a code");
            refuse(
                StatusCode::FORBIDDEN,
                "The identity provider did not accept this sign-in's code (it may have been used already). Start again from the sign-in page.",
            )
        })?;
    let keys: JwkSet = get_json(state, state.http.get(&endpoints.jwks_uri))
        .await
        .map_err(unreachable)?;
    let untrusted = |e: TokenRefused| {
        tracing::warn!(issuer = %provider.issuer, error = %e, "identity provider sign-in refused");
        Refusal::Page(
            StatusCode::FORBIDDEN,
            format!("The identity provider's answer cannot be trusted: {e}."),
        )
    };
    let mut claims = verify_id_token(
        &keys,
        tokens.id_token.as_deref().unwrap_or_default(),
        &provider.issuer,
        &provider.client_id,
        &flow.nonce,
    )
    .map_err(untrusted)?;
    if !claims.contains_key("email") {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        claims = userinfo(state, &endpoints, &tokens, &subject)
            .await
            .map_err(unreachable)?;
    }
    let person = person(&claims).map_err(untrusted)?;
    let Some(user) = member(state, &provider, &person).await? else {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not a member of this organisation, and its email domain is not one the organisation lets in. Ask an admin for an invitation.",
                person.email
            ),
        ));
    };
    let secret =
        auth::open_session(state, TenantId(provider.tenant_id), user, ip.0, user_agent).await?;
    Ok((secret, flow.next))
}

/// The sign-in pages of identity providers.
pub(crate) fn pages() -> Router<AppState> {
    Router::new()
        .route("/login/sso", post(start_by_email))
        .route("/login/sso/callback", get(callback))
        .route("/login/sso/{provider_id}", get(start))
        .route(
            "/settings/identity-providers/{id}/sign-in",
            post(sign_in_submit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_of_other_algorithms_are_refused_before_any_key_is_read() {
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &json!({ "sub": "x", "exp": 4_000_000_000u64 }),
            &jsonwebtoken::EncodingKey::from_secret(b"public key text"),
        )
        .unwrap_or_default();
        let keys = JwkSet { keys: Vec::new() };
        assert!(matches!(
            verify_id_token(&keys, &hs256, "http://i", "c", "n"),
            Err(TokenRefused::Algorithm(Algorithm::HS256))
        ));
        assert!(matches!(
            verify_id_token(&keys, "not a token", "http://i", "c", "n"),
            Err(TokenRefused::Malformed(_))
        ));
    }
}
