//! Identity providers: the OpenID providers whose tokens a tenant's agents and people present
//! on `/mcp/{server_id}` instead of a grant token (docs/identity.md).
//!
//! The control plane only stores them; gateways discover each issuer's keys from its
//! `/.well-known/openid-configuration` when a token names it. The issuer must be a host the
//! egress guard lets Portcullis reach, like an upstream's. A change is announced as a change
//! of the whole tenant, so every gateway drops what it derived from the old settings.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use portcullis_core::egress::Egress;
use portcullis_core::{Invalidation, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Admin, Tenant};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, JsonBody};
use crate::servers::is_unique_violation;

/// A provider as the API shows it (the dashboard sign-in settings are not part of it yet).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Provider {
    /// Id.
    pub id: Uuid,
    /// The issuer, exactly as tokens name it in `iss`.
    pub issuer: String,
    /// The gateway's URL as the provider names it: a token for server S must carry
    /// `{audience}/mcp/{S}` in `aud`.
    pub audience: String,
    /// The claim that names the identity: `sub` or `email`.
    pub identity_claim: String,
    /// The claim that lists the identity's groups, if any.
    pub groups_claim: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

const SELECT: &str =
    "SELECT id, issuer, audience, identity_claim, groups_claim, created_at, updated_at
   FROM identity_providers";

/// Finds a provider of the tenant.
pub async fn find(db: &sqlx::PgPool, tenant: TenantId, id: Uuid) -> Result<Provider> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(tenant.0)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The tenant's providers, oldest first.
pub async fn list(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<Provider>> {
    Ok(sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE tenant_id = $1 ORDER BY created_at, id"
    )))
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

/// What creating or replacing a provider takes.
#[derive(Debug, Default, Deserialize)]
pub struct ProviderInput {
    /// The issuer URL.
    pub issuer: Option<String>,
    /// The gateway's URL as the provider names it.
    pub audience: Option<String>,
    /// `sub` (the default) or `email`.
    pub identity_claim: Option<String>,
    /// The group claim (e.g. `groups`); absent or empty: none.
    pub groups_claim: Option<String>,
}

/// A provider's settings once checked.
struct Checked {
    issuer: String,
    audience: String,
    identity_claim: &'static str,
    groups_claim: Option<String>,
}

/// Collects the error of one field and goes on, so one answer lists every problem.
fn field<T>(errors: &mut Vec<FieldError>, result: Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Validation(mut e)) => {
            errors.append(&mut e);
            None
        }
        Err(e) => {
            errors.push(FieldError::new("", e.to_string()));
            None
        }
    }
}

/// An issuer: an http(s) URL Portcullis may reach, without query or fragment (OpenID
/// Discovery appends `/.well-known/openid-configuration` to it), kept as written because
/// tokens must name it exactly.
fn issuer(text: &str, egress: &Egress) -> Result<String> {
    let text = input::text("/issuer", text, 2000)?;
    let url = input::outbound_url("/issuer", &text, egress)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::field(
            "/issuer",
            "must have no query or fragment (OpenID Discovery appends a path to it)",
        ));
    }
    Ok(text)
}

/// The gateway's base URL as the provider names it, without a trailing `/`.
fn audience(text: &str) -> Result<String> {
    let text = input::text("/audience", text, 2000)?;
    let url = input::http_url("/audience", &text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::field("/audience", "must have no query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn check(input: &ProviderInput, egress: &Egress) -> Result<Checked> {
    let mut errors = Vec::new();
    let issuer = field(
        &mut errors,
        issuer(input.issuer.as_deref().unwrap_or_default(), egress),
    );
    let audience = field(
        &mut errors,
        audience(input.audience.as_deref().unwrap_or_default()),
    );
    let identity_claim = match input.identity_claim.as_deref() {
        None | Some("" | "sub") => Some("sub"),
        Some("email") => Some("email"),
        Some(_) => {
            errors.push(FieldError::new("/identity_claim", "use sub or email"));
            None
        }
    };
    let groups_claim = match input.groups_claim.as_deref().map(str::trim) {
        None | Some("") => Some(None),
        Some(text) => field(&mut errors, input::text("/groups_claim", text, 200)).map(Some),
    };
    match (issuer, audience, identity_claim, groups_claim) {
        (Some(issuer), Some(audience), Some(identity_claim), Some(groups_claim))
            if errors.is_empty() =>
        {
            Ok(Checked {
                issuer,
                audience,
                identity_claim,
                groups_claim,
            })
        }
        _ => Err(Error::Validation(errors)),
    }
}

fn duplicate(e: sqlx::Error) -> Error {
    if is_unique_violation(&e) {
        Error::Conflict("the organisation has a provider with this issuer already".into())
    } else {
        e.into()
    }
}

/// Adds a provider.
pub async fn create(state: &AppState, who: &Tenant, input: &ProviderInput) -> Result<Provider> {
    let checked = check(input, &state.shared.egress)?;
    let id = Uuid::now_v7();
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "INSERT INTO identity_providers (id, tenant_id, issuer, audience, identity_claim, groups_claim, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(who.id.0)
    .bind(&checked.issuer)
    .bind(&checked.audience)
    .bind(checked.identity_claim)
    .bind(&checked.groups_claim)
    .bind(who.actor.user_id.map(|u| u.0))
    .execute(&mut *tx)
    .await
    .map_err(duplicate)?;
    finish(state, who, tx, id, "identity_provider.create", None).await
}

/// Replaces a provider's settings.
pub async fn replace(
    state: &AppState,
    who: &Tenant,
    id: Uuid,
    input: &ProviderInput,
) -> Result<Provider> {
    let before = find(state.db(), who.id, id).await?;
    let checked = check(input, &state.shared.egress)?;
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE identity_providers
            SET issuer = $3, audience = $4, identity_claim = $5, groups_claim = $6, updated_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(who.id.0)
    .bind(id)
    .bind(&checked.issuer)
    .bind(&checked.audience)
    .bind(checked.identity_claim)
    .bind(&checked.groups_claim)
    .execute(&mut *tx)
    .await
    .map_err(duplicate)?;
    finish(
        state,
        who,
        tx,
        id,
        "identity_provider.update",
        Some(&before),
    )
    .await
}

/// Ends a change inside `tx`: reads the provider back, records the change, commits, and tells
/// the gateways.
async fn finish(
    state: &AppState,
    who: &Tenant,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    action: &str,
    before: Option<&Provider>,
) -> Result<Provider> {
    let after: Provider = sqlx::query_as(crate::sql(format!(
        "{SELECT} WHERE tenant_id = $1 AND id = $2"
    )))
    .bind(who.id.0)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        action,
        "identity_provider",
        &id.to_string(),
        before.map(|b| json!(b)),
        Some(json!(after)),
    )
    .await?;
    state
        .publish(Invalidation::Tenant { tenant_id: who.id })
        .await;
    Ok(after)
}

/// Removes a provider: its tokens are refused from then on.
pub async fn delete(state: &AppState, who: &Tenant, id: Uuid) -> Result<()> {
    let before = find(state.db(), who.id, id).await?;
    let mut tx = state.db().begin().await?;
    sqlx::query("DELETE FROM identity_providers WHERE tenant_id = $1 AND id = $2")
        .bind(who.id.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "identity_provider.delete",
        "identity_provider",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    state
        .publish(Invalidation::Tenant { tenant_id: who.id })
        .await;
    Ok(())
}

// ---- API ----

async fn api_list(State(state): State<AppState>, tenant: Tenant) -> Result<axum::Json<Value>> {
    let providers = list(state.db(), tenant.id).await?;
    Ok(axum::Json(json!({ "identity_providers": providers })))
}

async fn api_create(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    JsonBody(input): JsonBody<ProviderInput>,
) -> Result<Response> {
    let provider = create(&state, &tenant, &input).await?;
    Ok((StatusCode::CREATED, axum::Json(provider)).into_response())
}

async fn api_get(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<Provider>> {
    Ok(axum::Json(
        find(state.db(), tenant.id, input::id(&id)?).await?,
    ))
}

async fn api_replace(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<ProviderInput>,
) -> Result<axum::Json<Provider>> {
    Ok(axum::Json(
        replace(&state, &tenant, input::id(&id)?, &input).await?,
    ))
}

async fn api_delete(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    delete(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/api/v1/identity-providers…`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/identity-providers", get(api_list).post(api_create))
        .route(
            "/api/v1/identity-providers/{id}",
            get(api_get).put(api_replace).delete(api_delete),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(issuer: &str, audience: &str) -> ProviderInput {
        ProviderInput {
            issuer: Some(issuer.into()),
            audience: Some(audience.into()),
            ..ProviderInput::default()
        }
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        let local: Egress = "127.0.0.0/8".parse().unwrap_or_default();
        let ok = check(
            &input("http://127.0.0.1:9000", "http://127.0.0.1:8081/"),
            &local,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(ok.issuer, "http://127.0.0.1:9000");
        assert_eq!(ok.audience, "http://127.0.0.1:8081");
        assert_eq!(ok.identity_claim, "sub");
        assert_eq!(ok.groups_claim, None);

        let Err(Error::Validation(errors)) = check(
            &ProviderInput {
                identity_claim: Some("name".into()),
                ..input("http://127.0.0.1:9000/?x=1", "nope")
            },
            &Egress::default(),
        ) else {
            panic!("accepted")
        };
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/issuer", "/audience", "/identity_claim"]);
    }
}
