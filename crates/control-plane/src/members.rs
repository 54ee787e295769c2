//! Members, invitations, API tokens and tenant settings (retention, webhook): the admin's page.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch};
use chrono::{DateTime, Utc};
use portcullis_core::{TenantId, TokenHash};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Admin, Role, Tenant};
use crate::dashboard::{Layout, see_other_with, when, when_opt};
use crate::error::{Error, Result};
use crate::input::{self, FormBody, JsonBody, QueryParams};

/// A member of the tenant.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Member {
    /// The user.
    pub user_id: Uuid,
    /// Their email.
    pub email: String,
    /// Their role here.
    pub role: String,
    /// Since when.
    pub created_at: DateTime<Utc>,
}

/// Members of a tenant, oldest first.
pub async fn list_members(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<Member>> {
    Ok(sqlx::query_as(
        "SELECT m.user_id, u.email, m.role, m.created_at
           FROM memberships m JOIN users u ON u.id = m.user_id
          WHERE m.tenant_id = $1 ORDER BY m.created_at",
    )
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

async fn find_member(db: &sqlx::PgPool, tenant: TenantId, user: Uuid) -> Result<Member> {
    Ok(sqlx::query_as(
        "SELECT m.user_id, u.email, m.role, m.created_at
           FROM memberships m JOIN users u ON u.id = m.user_id
          WHERE m.tenant_id = $1 AND m.user_id = $2",
    )
    .bind(tenant.0)
    .bind(user)
    .fetch_one(db)
    .await?)
}

async fn other_admins(conn: &mut sqlx::PgConnection, tenant: TenantId, user: Uuid) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM memberships WHERE tenant_id = $1 AND role = 'admin' AND user_id <> $2",
    )
    .bind(tenant.0)
    .bind(user)
    .fetch_one(conn)
    .await?)
}

fn parse_role(pointer: &str, role: &str) -> Result<Role> {
    Role::parse(role).ok_or_else(|| Error::field(pointer, "use admin, policy_manager or viewer"))
}

/// Changes a member's role; the last admin cannot step down.
pub async fn set_role(state: &AppState, who: &Tenant, user: Uuid, role: Role) -> Result<Member> {
    let before = find_member(state.db(), who.id, user).await?;
    let mut tx = state.db().begin().await?;
    if before.role == "admin"
        && role != Role::Admin
        && other_admins(&mut tx, who.id, user).await? == 0
    {
        return Err(Error::Conflict(
            "the organisation needs at least one admin".into(),
        ));
    }
    sqlx::query("UPDATE memberships SET role = $3 WHERE tenant_id = $1 AND user_id = $2")
        .bind(who.id.0)
        .bind(user)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    let after = Member {
        role: role.as_str().to_owned(),
        ..before.clone()
    };
    admin_audit::commit(
        tx,
        who,
        "member.role",
        "member",
        &user.to_string(),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

/// Removes a member (their sessions here end with the membership).
pub async fn remove_member(state: &AppState, who: &Tenant, user: Uuid) -> Result<()> {
    let before = find_member(state.db(), who.id, user).await?;
    let mut tx = state.db().begin().await?;
    if before.role == "admin" && other_admins(&mut tx, who.id, user).await? == 0 {
        return Err(Error::Conflict(
            "the organisation needs at least one admin".into(),
        ));
    }
    sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
        .bind(who.id.0)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "member.remove",
        "member",
        &user.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    Ok(())
}

/// An invitation as listed (its secret is never stored).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Invitation {
    /// Id.
    pub id: Uuid,
    /// Who is invited.
    pub email: String,
    /// With which role.
    pub role: String,
    /// When sent.
    pub created_at: DateTime<Utc>,
    /// Until when it can be accepted.
    pub expires_at: DateTime<Utc>,
    /// When accepted, if it was.
    pub accepted_at: Option<DateTime<Utc>>,
}

/// An invitation just created, with its secret link (shown once).
#[derive(Debug, Serialize)]
pub struct NewInvitation {
    /// The invitation.
    #[serde(flatten)]
    pub invitation: Invitation,
    /// The secret.
    pub token: String,
    /// The link to send to the invitee.
    pub url: String,
}

/// Invitations of a tenant, newest first.
pub async fn list_invitations(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<Invitation>> {
    Ok(sqlx::query_as(
        "SELECT id, email, role, created_at, expires_at, accepted_at FROM invitations
          WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 200",
    )
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

/// Invites someone by email with a role; valid for seven days.
pub async fn invite(
    state: &AppState,
    who: &Tenant,
    email: &str,
    role: &str,
) -> Result<NewInvitation> {
    let email = input::email("/email", email)?;
    let role = parse_role("/role", role)?;
    let token = portcullis_core::token::random_secret("pci_");
    let mut tx = state.db().begin().await?;
    let invitation: Invitation = sqlx::query_as(
        "INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + interval '7 days')
         RETURNING id, email, role, created_at, expires_at, accepted_at",
    )
    .bind(Uuid::now_v7())
    .bind(who.id.0)
    .bind(&email)
    .bind(role.as_str())
    .bind(TokenHash::of(&token).as_bytes())
    .bind(who.actor.user_id.map(|u| u.0))
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "invitation.create",
        "invitation",
        &invitation.id.to_string(),
        None,
        Some(json!(invitation)),
    )
    .await?;
    let url = format!(
        "{}/invite?token={token}",
        state.settings.public_url.trim_end_matches('/')
    );
    Ok(NewInvitation {
        invitation,
        token,
        url,
    })
}

/// Withdraws an invitation.
pub async fn withdraw_invitation(state: &AppState, who: &Tenant, id: Uuid) -> Result<()> {
    let mut tx = state.db().begin().await?;
    let before: Invitation = sqlx::query_as(
        "DELETE FROM invitations WHERE tenant_id = $1 AND id = $2
         RETURNING id, email, role, created_at, expires_at, accepted_at",
    )
    .bind(who.id.0)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "invitation.delete",
        "invitation",
        &id.to_string(),
        Some(json!(before)),
        None,
    )
    .await?;
    Ok(())
}

/// An API token as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiToken {
    /// Id.
    pub id: Uuid,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: String,
    /// A non-secret hint (`pct_AbCd…`).
    pub token_hint: String,
    /// When made.
    pub created_at: DateTime<Utc>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation, if revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just made, with its secret (shown once).
#[derive(Debug, Serialize)]
pub struct NewApiToken {
    /// The token's record.
    #[serde(flatten)]
    pub record: ApiToken,
    /// The secret.
    pub token: String,
}

/// Makes an API token; only its hash is stored.
pub async fn create_api_token(
    state: &AppState,
    who: &Tenant,
    name: &str,
    role: Role,
    expires_in_days: Option<i64>,
) -> Result<NewApiToken> {
    let name = input::text("/name", name, 100)?;
    if let Some(days) = expires_in_days
        && !(1..=3650).contains(&days)
    {
        return Err(Error::field("/expires_in_days", "use 1 to 3650 days"));
    }
    let token = portcullis_core::token::random_secret("pct_");
    let hint = format!("{}…", &token[..8]);
    let mut tx = state.db().begin().await?;
    let record: ApiToken = sqlx::query_as(
        "INSERT INTO api_tokens (id, tenant_id, created_by, name, role, token_hash, token_hint, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(days => $8::int))
         RETURNING id, name, role, token_hint, created_at, last_used_at, expires_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(who.id.0)
    .bind(who.actor.user_id.map(|u| u.0))
    .bind(&name)
    .bind(role.as_str())
    .bind(TokenHash::of(&token).as_bytes())
    .bind(hint)
    .bind(expires_in_days.map(|d| d as i32))
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "token.create",
        "api_token",
        &record.id.to_string(),
        None,
        Some(json!(record)),
    )
    .await?;
    Ok(NewApiToken { record, token })
}

/// API tokens of a tenant, newest first.
pub async fn list_tokens(db: &sqlx::PgPool, tenant: TenantId) -> Result<Vec<ApiToken>> {
    Ok(sqlx::query_as(
        "SELECT id, name, role, token_hint, created_at, last_used_at, expires_at, revoked_at
           FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at DESC",
    )
    .bind(tenant.0)
    .fetch_all(db)
    .await?)
}

/// Revokes an API token for good.
pub async fn revoke_token(state: &AppState, who: &Tenant, id: Uuid) -> Result<()> {
    let mut tx = state.db().begin().await?;
    let after: ApiToken = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND id = $2
         RETURNING id, name, role, token_hint, created_at, last_used_at, expires_at, revoked_at",
    )
    .bind(who.id.0)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    admin_audit::commit(
        tx,
        who,
        "token.revoke",
        "api_token",
        &id.to_string(),
        None,
        Some(json!(after)),
    )
    .await?;
    Ok(())
}

/// The tenant's own settings.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TenantSettings {
    /// The organisation's name.
    pub name: String,
    /// Days the audit log keeps events.
    pub audit_retention_days: i32,
    /// Where approval events are sent, if anywhere.
    pub webhook_url: Option<String>,
    /// Whether a signing secret is set (it is never shown).
    pub webhook_secret_set: bool,
    /// Whether members must sign in through the organisation's identity provider.
    pub password_sign_in_disabled: bool,
}

/// The settings' columns.
const SETTINGS: &str = "SELECT name, audit_retention_days, webhook_url, webhook_secret_enc IS NOT NULL AS webhook_secret_set,
        password_sign_in_disabled
   FROM tenants WHERE id = $1";

/// Reads the tenant's settings.
pub async fn settings(db: &sqlx::PgPool, tenant: TenantId) -> Result<TenantSettings> {
    Ok(sqlx::query_as(SETTINGS)
        .bind(tenant.0)
        .fetch_one(db)
        .await?)
}

/// A change of settings; absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
pub struct SettingsChange {
    /// New organisation name.
    pub name: Option<String>,
    /// New retention in days (1–3650).
    pub audit_retention_days: Option<i32>,
    /// New webhook URL; empty text removes the webhook.
    pub webhook_url: Option<String>,
    /// New signing secret; empty text removes it.
    pub webhook_secret: Option<String>,
    /// Turn password sign-in off (members sign in through the identity provider) or on.
    pub password_sign_in_disabled: Option<bool>,
}

/// The context a tenant's webhook secret is sealed under.
pub fn webhook_secret_context(tenant: TenantId) -> Vec<u8> {
    format!("webhook-secret:{tenant}").into_bytes()
}

/// Applies a settings change.
pub async fn update_settings(
    state: &AppState,
    who: &Tenant,
    change: &SettingsChange,
) -> Result<TenantSettings> {
    let before = settings(state.db(), who.id).await?;
    let mut errors = Vec::new();
    let name = match &change.name {
        Some(n) => match input::text("/name", n, 200) {
            Ok(n) => Some(n),
            Err(Error::Validation(mut e)) => {
                errors.append(&mut e);
                None
            }
            Err(e) => return Err(e),
        },
        None => None,
    };
    if let Some(days) = change.audit_retention_days
        && !(1..=3650).contains(&days)
    {
        errors.push(crate::error::FieldError::new(
            "/audit_retention_days",
            "use 1 to 3650 days",
        ));
    }
    let webhook_url = match change.webhook_url.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(url) => match input::outbound_url("/webhook_url", url, &state.shared.egress) {
            Ok(u) => Some(Some(u.to_string())),
            Err(Error::Validation(mut e)) => {
                errors.append(&mut e);
                None
            }
            Err(e) => return Err(e),
        },
    };
    if change.password_sign_in_disabled == Some(true)
        && !crate::sso::configured(state.db(), who.id).await?
    {
        // Nobody, the admin included, could sign in any more.
        errors.push(crate::error::FieldError::new(
            "/password_sign_in_disabled",
            "set up sign-in with an identity provider (its client id and secret) first: without it nobody could sign in",
        ));
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let secret = change.webhook_secret.as_deref().map(|s| {
        let s = s.trim();
        (!s.is_empty()).then(|| {
            state
                .shared
                .credentials
                .seal(s.as_bytes(), &webhook_secret_context(who.id))
        })
    });
    let mut tx = state.db().begin().await?;
    sqlx::query(
        "UPDATE tenants SET
            name = coalesce($2, name),
            audit_retention_days = coalesce($3, audit_retention_days),
            webhook_url = CASE WHEN $4 THEN $5 ELSE webhook_url END,
            webhook_secret_enc = CASE WHEN $6 THEN $7 ELSE webhook_secret_enc END,
            password_sign_in_disabled = coalesce($8, password_sign_in_disabled)
          WHERE id = $1",
    )
    .bind(who.id.0)
    .bind(name)
    .bind(change.audit_retention_days)
    .bind(webhook_url.is_some())
    .bind(webhook_url.flatten())
    .bind(secret.is_some())
    .bind(secret.flatten())
    .bind(change.password_sign_in_disabled)
    .execute(&mut *tx)
    .await?;
    let after: TenantSettings = sqlx::query_as(SETTINGS)
        .bind(who.id.0)
        .fetch_one(&mut *tx)
        .await?;
    admin_audit::commit(
        tx,
        who,
        "settings.update",
        "tenant",
        &who.id.to_string(),
        Some(json!(before)),
        Some(json!(after)),
    )
    .await?;
    Ok(after)
}

// ---- API ----

async fn api_members(State(state): State<AppState>, tenant: Tenant) -> Result<axum::Json<Value>> {
    Ok(axum::Json(
        json!({ "members": list_members(state.db(), tenant.id).await? }),
    ))
}

#[derive(Debug, Deserialize)]
struct RoleChange {
    #[serde(default)]
    role: String,
}

async fn api_set_role(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(user): Path<String>,
    JsonBody(body): JsonBody<RoleChange>,
) -> Result<axum::Json<Member>> {
    let user: Uuid = input::id(&user)?;
    let role = parse_role("/role", &body.role)?;
    Ok(axum::Json(set_role(&state, &tenant, user, role).await?))
}

async fn api_remove_member(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(user): Path<String>,
) -> Result<StatusCode> {
    remove_member(&state, &tenant, input::id(&user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_invitations(
    State(state): State<AppState>,
    Admin(tenant): Admin,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(
        json!({ "invitations": list_invitations(state.db(), tenant.id).await? }),
    ))
}

#[derive(Debug, Deserialize)]
struct InviteBody {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
}

async fn api_invite(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    JsonBody(body): JsonBody<InviteBody>,
) -> Result<Response> {
    let created = invite(&state, &tenant, &body.email, &body.role).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn api_withdraw(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    withdraw_invitation(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_tokens(
    State(state): State<AppState>,
    Admin(tenant): Admin,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(
        json!({ "tokens": list_tokens(state.db(), tenant.id).await? }),
    ))
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    expires_in_days: Option<i64>,
}

async fn api_create_token(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<Response> {
    let role = parse_role("/role", &body.role)?;
    let created = create_api_token(&state, &tenant, &body.name, role, body.expires_in_days).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

async fn api_revoke_token(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    revoke_token(&state, &tenant, input::id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn api_settings(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<axum::Json<TenantSettings>> {
    Ok(axum::Json(settings(state.db(), tenant.id).await?))
}

async fn api_update_settings(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    JsonBody(change): JsonBody<SettingsChange>,
) -> Result<axum::Json<TenantSettings>> {
    Ok(axum::Json(update_settings(&state, &tenant, &change).await?))
}

/// `/api/v1/members`, `/api/v1/invitations`, `/api/v1/tokens`, `/api/v1/settings`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/members", get(api_members))
        .route(
            "/api/v1/members/{user_id}",
            patch(api_set_role).delete(api_remove_member),
        )
        .route("/api/v1/invitations", get(api_invitations).post(api_invite))
        .route("/api/v1/invitations/{id}", delete(api_withdraw))
        .route("/api/v1/tokens", get(api_tokens).post(api_create_token))
        .route("/api/v1/tokens/{id}", delete(api_revoke_token))
        .route(
            "/api/v1/settings",
            get(api_settings).put(api_update_settings),
        )
}

// ---- pages ----

struct MemberRow {
    user_id: String,
    email: String,
    role: String,
    since: String,
}

struct InvitationRow {
    id: String,
    email: String,
    role: String,
    expires: String,
    accepted: String,
}

struct TokenRow {
    id: String,
    name: String,
    role: String,
    hint: String,
    created: String,
    last_used: String,
    revoked: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    settings: TenantSettings,
    members: Vec<MemberRow>,
    invitations: Vec<InvitationRow>,
    tokens: Vec<TokenRow>,
    secret_title: String,
    secret_value: String,
    secret_note: String,
    roles: Vec<&'static str>,
    sign_in: Vec<crate::sso::SignInSettings>,
}

#[derive(Debug, Default, Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

async fn render_settings(
    state: &AppState,
    tenant: &Tenant,
    notice: Option<String>,
    secret: Option<(String, String, String)>,
) -> Result<SettingsPage> {
    let settings = settings(state.db(), tenant.id).await?;
    let members = list_members(state.db(), tenant.id)
        .await?
        .into_iter()
        .map(|m| MemberRow {
            user_id: m.user_id.to_string(),
            email: m.email,
            role: m.role,
            since: when(&m.created_at),
        })
        .collect();
    let (invitations, tokens) = if tenant.role >= Role::Admin {
        let invitations = list_invitations(state.db(), tenant.id)
            .await?
            .into_iter()
            .map(|i| InvitationRow {
                id: i.id.to_string(),
                email: i.email,
                role: i.role,
                expires: when(&i.expires_at),
                accepted: when_opt(&i.accepted_at),
            })
            .collect();
        let tokens = list_tokens(state.db(), tenant.id)
            .await?
            .into_iter()
            .map(|t| TokenRow {
                id: t.id.to_string(),
                name: t.name,
                role: t.role,
                hint: t.token_hint,
                created: when(&t.created_at),
                last_used: when_opt(&t.last_used_at),
                revoked: t.revoked_at.is_some(),
            })
            .collect();
        (invitations, tokens)
    } else {
        (Vec::new(), Vec::new())
    };
    let (secret_title, secret_value, secret_note) = secret.unwrap_or_default();
    Ok(SettingsPage {
        layout: Layout::new(tenant, "Settings", "settings").with_notice(notice),
        settings,
        members,
        invitations,
        tokens,
        secret_title,
        secret_value,
        secret_note,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        sign_in: crate::sso::all_sign_in_settings(state, tenant.id).await?,
    })
}

async fn settings_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<NoticeQuery>,
) -> Result<SettingsPage> {
    render_settings(&state, &tenant, q.notice, None).await
}

#[derive(Debug, Deserialize)]
struct SettingsForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    audit_retention_days: String,
    #[serde(default)]
    webhook_url: String,
    #[serde(default)]
    webhook_secret: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    password_sign_in_disabled: Option<String>,
}

async fn settings_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    FormBody(form): FormBody<SettingsForm>,
) -> Result<Response> {
    let days = form
        .audit_retention_days
        .trim()
        .parse::<i32>()
        .map_err(|_| Error::field("/audit_retention_days", "must be a number of days"))?;
    let change = SettingsChange {
        name: Some(form.name),
        audit_retention_days: Some(days),
        webhook_url: Some(form.webhook_url),
        // A blank secret field keeps the current secret; the API can remove it.
        webhook_secret: Some(form.webhook_secret).filter(|s| !s.trim().is_empty()),
        password_sign_in_disabled: Some(form.password_sign_in_disabled.is_some()),
    };
    update_settings(&state, &tenant, &change).await?;
    Ok(see_other_with("/settings", "Settings saved."))
}

async fn invite_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    FormBody(body): FormBody<InviteBody>,
) -> Result<Response> {
    let created = invite(&state, &tenant, &body.email, &body.role).await?;
    let page = render_settings(
        &state,
        &tenant,
        Some(format!(
            "Invitation for {} created.",
            created.invitation.email
        )),
        Some((
            "Invitation link".into(),
            created.url,
            "Send this link to the invitee. It is shown only now and works for seven days.".into(),
        )),
    )
    .await?;
    Ok(page.into_response())
}

async fn token_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    FormBody(body): FormBody<TokenBody>,
) -> Result<Response> {
    let role = parse_role("/role", &body.role)?;
    let created = create_api_token(&state, &tenant, &body.name, role, None).await?;
    let page = render_settings(
        &state,
        &tenant,
        Some(format!("API token {} created.", created.record.name)),
        Some((
            "New API token".into(),
            created.token,
            "Copy it now: it is shown only once. Send it as Authorization: Bearer <token>.".into(),
        )),
    )
    .await?;
    Ok(page.into_response())
}

async fn token_revoke_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response> {
    revoke_token(&state, &tenant, input::id(&id)?).await?;
    Ok(see_other_with("/settings", "Token revoked."))
}

async fn member_role_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(user): Path<String>,
    FormBody(body): FormBody<RoleChange>,
) -> Result<Response> {
    let role = parse_role("/role", &body.role)?;
    set_role(&state, &tenant, input::id(&user)?, role).await?;
    Ok(see_other_with("/settings", "Role changed."))
}

async fn member_remove_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(user): Path<String>,
) -> Result<Response> {
    remove_member(&state, &tenant, input::id(&user)?).await?;
    Ok(see_other_with("/settings", "Member removed."))
}

async fn invitation_withdraw_submit(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response> {
    withdraw_invitation(&state, &tenant, input::id(&id)?).await?;
    Ok(see_other_with("/settings", "Invitation withdrawn."))
}

/// The settings page and its forms.
pub fn pages() -> Router<AppState> {
    use axum::routing::post;
    Router::new()
        .route("/settings", get(settings_page).post(settings_submit))
        .route("/settings/invitations", post(invite_submit))
        .route(
            "/settings/invitations/{id}/delete",
            post(invitation_withdraw_submit),
        )
        .route("/settings/tokens", post(token_submit))
        .route("/settings/tokens/{id}/revoke", post(token_revoke_submit))
        .route("/settings/members/{user_id}/role", post(member_role_submit))
        .route(
            "/settings/members/{user_id}/remove",
            post(member_remove_submit),
        )
}
