//! Accounts: sign up, sign in, sign out, accept an invitation.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{TenantId, TokenHash, UserId};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{self, ClientIp, Role, Tenant};
use crate::dashboard::{Layout, Problems, safe_next, see_other};
use crate::error::{Error, FieldError, Result};
use crate::input::{FormBody, JsonBody, QueryParams};
use crate::members;
use crate::passwords::{self, Password};
use crate::throttle::{self, Door};

/// What a sign-up needs.
#[derive(Debug, Deserialize)]
pub struct SignupForm {
    /// The first admin's email.
    #[serde(default)]
    pub email: String,
    /// Their password.
    #[serde(default)]
    pub password: String,
    /// The organisation (tenant) name.
    #[serde(default)]
    pub organization: String,
}

struct Signed {
    tenant: TenantId,
    user: UserId,
    email: String,
}

/// How long a confirmation link works.
const CONFIRMATION_HOURS: i32 = 24;

/// Asks for an organisation with its first admin. The answer is the same whether or not the
/// email has an account, and so is the work (one argon2 hash or verification, one transaction,
/// one queued mail), so neither the answer nor its time tells which emails have accounts. What
/// differs goes by mail to the address's owner: a confirmation link for a new account, or for
/// an existing account whose password was given (a new organisation of its own); else a
/// notice that the address has an account. Attempts are throttled per email and per client
/// address. Returns the email the mail goes to.
async fn signup(state: &AppState, form: &SignupForm, ip: ClientIp) -> Result<String> {
    throttle::check(state, Door::Signup, &form.email, ip.0).await?;
    throttle::count(state, Door::Signup, &form.email, ip.0).await;
    let mut errors = Vec::new();
    let email = crate::input::email("/email", &form.email).map_err(|e| collect(&mut errors, e));
    let organization = crate::input::text("/organization", &form.organization, 200)
        .map_err(|e| collect(&mut errors, e));
    let password =
        Password::parse("/password", &form.password).map_err(|e| collect(&mut errors, e));
    let (Ok(email), Ok(organization), Ok(password)) = (email, organization, password) else {
        return Err(Error::Validation(errors));
    };
    let existing: Option<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(&email)
            .fetch_optional(state.db())
            .await?;
    // What a confirmation would make: a new account (its hash), or a new organisation of an
    // existing account (its id); `None` when the password is not the account's.
    let pending = match existing {
        None => Some((Some(passwords::hash(password).await?), None)),
        Some((id, stored)) => passwords::verify(form.password.clone(), stored)
            .await?
            .then_some((None, Some(id))),
    };
    let public = state.settings.public_url.trim_end_matches('/');
    let mut tx = state.db().begin().await?;
    let (subject, body) = match pending {
        Some((password_hash, user)) => {
            let token = confirmation_token();
            sqlx::query(
                "INSERT INTO signup_requests (id, email, organization, password_hash, user_id, token_hash, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(hours => $7))",
            )
            .bind(Uuid::now_v7())
            .bind(&email)
            .bind(&organization)
            .bind(password_hash)
            .bind(user)
            .bind(TokenHash::of(&token).as_bytes())
            .bind(CONFIRMATION_HOURS)
            .execute(&mut *tx)
            .await?;
            confirmation_mail(
                &format!("{public}/signup/confirm?token={token}"),
                user.is_some(),
            )
        }
        None => account_exists_mail(&format!("{public}/login")),
    };
    crate::mail::enqueue(&mut tx, &email, subject, &body).await?;
    tx.commit().await?;
    state.mailer.wake();
    metrics::counter!("portcullis_signup_attempts_total", "result" => "accepted").increment(1);
    Ok(email)
}

/// A confirmation token: `pcc_` and 32 random bytes (base64url). Only its SHA-256 is stored.
fn confirmation_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("pcc_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The mail with a confirmation link, for a new account or a known account's new organisation.
/// It names no organisation: whoever signs up chooses that text, and it would reach any address.
fn confirmation_mail(link: &str, existing_account: bool) -> (&'static str, String) {
    let (subject, what) = if existing_account {
        (
            "Confirm your new Portcullis organisation",
            "add a new organisation to your Portcullis account",
        )
    } else {
        (
            "Confirm your Portcullis sign-up",
            "create a Portcullis account and organisation with this address",
        )
    };
    let body = format!(
        "Someone, hopefully you, asked to {what}.\n\n\
         To confirm, open this link and press Confirm. It works once, for {CONFIRMATION_HOURS} hours:\n\n\
         {link}\n\n\
         If it was not you, ignore this message: nothing is made without the confirmation.\n"
    );
    (subject, body)
}

/// The mail for a sign-up with an address that has an account, and another password.
fn account_exists_mail(login: &str) -> (&'static str, String) {
    let body = format!(
        "Someone tried to sign up to Portcullis with this address. You already have an account,\n\
         so nothing was made.\n\n\
         Sign in at {login}\n\n\
         To add an organisation to your account, sign up again with your account's password.\n\
         If it was not you, you can ignore this message.\n"
    );
    ("Someone tried to sign up with your address", body)
}

/// What a confirmation needs: the token of the emailed link.
#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    /// The token (`pcc_…`).
    #[serde(default)]
    pub token: String,
}

/// The one answer to a token that does not work, whether it never existed, was used or expired.
fn invalid_link() -> Error {
    Error::BadRequest(
        "this confirmation link does not work: it was used already, it expired, or it was not sent by Portcullis; sign up again".into(),
    )
}

/// Uses a confirmation token once: creates the account (for a new email), the organisation and
/// the admin membership, with the admin audit entry.
async fn confirm(state: &AppState, token: &str) -> Result<Signed> {
    let mut tx = state.db().begin().await?;
    let row: Option<(String, String, Option<String>, Option<Uuid>)> = sqlx::query_as(
        "DELETE FROM signup_requests WHERE token_hash = $1 AND expires_at > now()
         RETURNING email, organization, password_hash, user_id",
    )
    .bind(TokenHash::of(token.trim()).as_bytes())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((email, organization, password_hash, existing)) = row else {
        return Err(invalid_link());
    };
    let user = match existing {
        Some(id) => UserId(id),
        None => {
            let id = UserId::new();
            let inserted = sqlx::query(
                "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(id.0)
            .bind(&email)
            .bind(password_hash.ok_or_else(invalid_link)?)
            .execute(&mut *tx)
            .await?;
            // Another sign-up of the address was confirmed first: that account is the one.
            if inserted.rows_affected() == 0 {
                return Err(invalid_link());
            }
            id
        }
    };
    let tenant = TenantId::new();
    sqlx::query("INSERT INTO tenants (id, name, audit_retention_days) VALUES ($1, $2, $3)")
        .bind(tenant.0)
        .bind(&organization)
        .bind(state.settings.audit_retention_days)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'admin')")
        .bind(tenant.0)
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
    let who = Tenant {
        id: tenant,
        role: Role::Admin,
        actor: auth::Actor {
            user_id: Some(user),
            token_id: None,
            label: email.clone(),
        },
        session: None,
    };
    crate::admin_audit::commit(
        tx,
        &who,
        "tenant.create",
        "tenant",
        &tenant.to_string(),
        None,
        Some(json!({ "name": organization, "admin": &email })),
    )
    .await?;
    metrics::counter!("portcullis_signups_total").increment(1);
    Ok(Signed {
        tenant,
        user,
        email,
    })
}

/// Deletes the sign-ups whose link expired (with the password hashes they hold).
pub(crate) async fn forget_expired_signups(state: &AppState) -> Result<()> {
    sqlx::query("DELETE FROM signup_requests WHERE expires_at <= now()")
        .execute(state.db())
        .await?;
    Ok(())
}

fn collect(errors: &mut Vec<FieldError>, e: Error) {
    match e {
        Error::Validation(mut more) => errors.append(&mut more),
        other => errors.push(FieldError::new("", other.to_string())),
    }
}

/// The answer to every accepted sign-up.
fn confirmation_sent(email: &str) -> serde_json::Value {
    json!({ "status": "confirmation_sent", "email": email })
}

async fn api_signup(
    State(state): State<AppState>,
    ip: ClientIp,
    JsonBody(form): JsonBody<SignupForm>,
) -> Result<Response> {
    let email = signup(&state, &form, ip).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(confirmation_sent(&email))).into_response())
}

async fn api_confirm(
    State(state): State<AppState>,
    JsonBody(form): JsonBody<ConfirmForm>,
) -> Result<Response> {
    let signed = confirm(&state, &form.token).await?;
    let who = Tenant {
        id: signed.tenant,
        role: Role::Admin,
        actor: auth::Actor {
            user_id: Some(signed.user),
            token_id: None,
            label: signed.email,
        },
        session: None,
    };
    let token = members::create_api_token(&state, &who, "signup", Role::Admin, None).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "tenant_id": signed.tenant,
            "user_id": signed.user,
            "api_token": token.token,
        })),
    )
        .into_response())
}

/// What a sign-in needs.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// Email.
    #[serde(default)]
    pub email: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// Which organisation, when the user belongs to several.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Where to go afterwards.
    #[serde(default)]
    pub next: Option<String>,
}

/// Why a correct password does not open a session.
const PASSWORD_OFF: &str = "your organisation signs in through its identity provider: use \"Sign in with your organisation's provider\"";

struct LoggedIn {
    tenant: TenantId,
    user: UserId,
    secret: String,
}

async fn login(
    state: &AppState,
    form: &LoginForm,
    ip: ClientIp,
    user_agent: Option<&str>,
) -> Result<LoggedIn> {
    let email = form.email.trim();
    throttle::check(state, Door::Login, email, ip.0).await?;
    let found: Option<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(email)
            .fetch_optional(state.db())
            .await?;
    let (user, stored) = match found {
        Some((id, hash)) => (Some(UserId(id)), hash),
        None => (None, None),
    };
    let ok = passwords::verify(form.password.clone(), stored).await?;
    let Some(user) = user.filter(|_| ok) else {
        throttle::count(state, Door::Login, email, ip.0).await;
        metrics::counter!("portcullis_logins_total", "result" => "failed").increment(1);
        return Err(Error::BadRequest("wrong email or password".into()));
    };
    let wanted: Option<Uuid> = form
        .tenant_id
        .as_deref()
        .filter(|t| !t.is_empty())
        .and_then(|t| t.parse().ok());
    // An organisation that signs in through its identity provider only is chosen last, and
    // refused if it is the only one left. The switch holds only while a provider can sign
    // people in: removing the last one cannot lock everybody out.
    let tenant: Option<(Uuid, bool)> = sqlx::query_as(
        "SELECT m.tenant_id,
                t.password_sign_in_disabled AND EXISTS (
                    SELECT 1 FROM identity_providers p
                     WHERE p.tenant_id = t.id AND p.client_id IS NOT NULL AND p.client_secret_enc IS NOT NULL
                ) AS password_off
           FROM memberships m JOIN tenants t ON t.id = m.tenant_id
          WHERE m.user_id = $1 AND ($2::uuid IS NULL OR m.tenant_id = $2)
          ORDER BY password_off, m.created_at LIMIT 1",
    )
    .bind(user.0)
    .bind(wanted)
    .fetch_optional(state.db())
    .await?;
    let tenant = match tenant {
        Some((tenant, false)) => TenantId(tenant),
        Some((_, true)) => {
            metrics::counter!("portcullis_logins_total", "result" => "password_off").increment(1);
            return Err(Error::BadRequest(PASSWORD_OFF.into()));
        }
        None => {
            return Err(Error::BadRequest(
                "this account belongs to no organisation".into(),
            ));
        }
    };
    throttle::succeeded(state, email).await;
    let secret = auth::open_session(state, tenant, user, ip.0, user_agent).await?;
    metrics::counter!("portcullis_logins_total", "result" => "ok").increment(1);
    Ok(LoggedIn {
        tenant,
        user,
        secret,
    })
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

async fn api_login(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    JsonBody(form): JsonBody<LoginForm>,
) -> Result<Response> {
    let logged = login(&state, &form, ip, user_agent(&headers)).await?;
    let csrf: String = sqlx::query_scalar("SELECT csrf_token FROM sessions WHERE token_hash = $1")
        .bind(TokenHash::of(&logged.secret).as_bytes())
        .fetch_one(state.db())
        .await?;
    Ok((
        [(
            header::SET_COOKIE,
            auth::session_cookie(&state, &logged.secret),
        )],
        axum::Json(json!({
            "tenant_id": logged.tenant,
            "user_id": logged.user,
            "csrf_token": csrf,
        })),
    )
        .into_response())
}

async fn api_logout(State(state): State<AppState>, tenant: Tenant) -> Result<Response> {
    if let Some(session) = &tenant.session {
        auth::revoke_session(&state, tenant.id, session.id).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::clear_session_cookie(&state))],
    )
        .into_response())
}

async fn api_me(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<axum::Json<serde_json::Value>> {
    let name: String = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(tenant.id.0)
        .fetch_one(state.db())
        .await?;
    Ok(axum::Json(json!({
        "tenant_id": tenant.id,
        "tenant_name": name,
        "user_id": tenant.actor.user_id,
        "actor": tenant.actor.label,
        "role": tenant.role,
        "csrf_token": tenant.session.as_ref().map(|s| s.csrf.clone()),
    })))
}

/// What accepting an invitation needs.
#[derive(Debug, Deserialize)]
pub struct AcceptForm {
    /// The invitation secret (`pci_…`).
    #[serde(default)]
    pub token: String,
    /// A new password, or the existing account's password.
    #[serde(default)]
    pub password: String,
}

/// Joins the invitation's tenant with its role, creating the user if needed.
async fn accept(state: &AppState, form: &AcceptForm) -> Result<(TenantId, UserId)> {
    let row: Option<(Uuid, Uuid, String, String)> = sqlx::query_as(
        "SELECT id, tenant_id, email, role FROM invitations
          WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > now()",
    )
    .bind(TokenHash::of(form.token.trim()).as_bytes())
    .fetch_optional(state.db())
    .await?;
    let Some((invitation, tenant, email, role)) = row else {
        return Err(Error::NotFound);
    };
    let existing: Option<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)")
            .bind(&email)
            .fetch_optional(state.db())
            .await?;
    let user = match existing {
        Some((id, stored)) => {
            if !passwords::verify(form.password.clone(), stored).await? {
                return Err(Error::field(
                    "/password",
                    "this is not the password of the existing account",
                ));
            }
            UserId(id)
        }
        None => {
            let password = Password::parse("/password", &form.password)?;
            let id = UserId::new();
            sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
                .bind(id.0)
                .bind(&email)
                .bind(passwords::hash(password).await?)
                .execute(state.db())
                .await?;
            id
        }
    };
    let mut tx = state.db().begin().await?;
    let claimed = sqlx::query(
        "UPDATE invitations SET accepted_at = now() WHERE id = $1 AND accepted_at IS NULL",
    )
    .bind(invitation)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, user_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(user.0)
    .bind(&role)
    .execute(&mut *tx)
    .await?;
    let who = Tenant {
        id: TenantId(tenant),
        role: Role::Viewer,
        actor: auth::Actor {
            user_id: Some(user),
            token_id: None,
            label: email.clone(),
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
        Some(json!({ "email": email, "role": role })),
    )
    .await?;
    Ok((TenantId(tenant), user))
}

async fn api_accept(
    State(state): State<AppState>,
    JsonBody(form): JsonBody<AcceptForm>,
) -> Result<axum::Json<serde_json::Value>> {
    let (tenant, user) = accept(&state, &form).await?;
    Ok(axum::Json(json!({ "tenant_id": tenant, "user_id": user })))
}

// ---- pages ----

#[derive(Template, WebTemplate)]
#[template(path = "signup.html")]
struct SignupPage {
    layout: Layout,
    email: String,
    organization: String,
    problems: Problems,
}

#[derive(Template, WebTemplate)]
#[template(path = "signup_sent.html")]
struct SignupSentPage {
    layout: Layout,
    email: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "signup_confirm.html")]
struct ConfirmPage {
    layout: Layout,
    token: String,
    email: String,
    organization: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    email: String,
    next: String,
    message: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "invite.html")]
struct InvitePage {
    layout: Layout,
    token: String,
    email: String,
    role: String,
    exists: bool,
    problems: Problems,
}

async fn signup_page() -> SignupPage {
    SignupPage {
        layout: Layout::public("Sign up"),
        email: String::new(),
        organization: String::new(),
        problems: Problems::default(),
    }
}

async fn signup_submit(
    State(state): State<AppState>,
    ip: ClientIp,
    FormBody(form): FormBody<SignupForm>,
) -> Result<Response> {
    match signup(&state, &form, ip).await {
        Ok(email) => Ok((
            StatusCode::ACCEPTED,
            SignupSentPage {
                layout: Layout::public("Check your email"),
                email,
            },
        )
            .into_response()),
        Err(Error::Validation(errors)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            SignupPage {
                layout: Layout::public("Sign up"),
                email: form.email,
                organization: form.organization,
                problems: Problems(errors),
            },
        )
            .into_response()),
        // The form again, filled in, saying when to try again.
        Err(e @ Error::TooManyRequests { retry_after }) => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            SignupPage {
                layout: Layout::public("Sign up"),
                email: form.email,
                organization: form.organization,
                problems: Problems(vec![FieldError::new("", e.to_string())]),
            },
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

/// The page of an emailed link: what the confirmation makes, and a button that confirms. The
/// link itself changes nothing, so a mail scanner that opens it does not use it up.
async fn confirm_page(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<TokenQuery>,
) -> Result<ConfirmPage> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT email, organization FROM signup_requests WHERE token_hash = $1 AND expires_at > now()",
    )
    .bind(TokenHash::of(q.token.trim()).as_bytes())
    .fetch_optional(state.db())
    .await?;
    let (email, organization) = row.ok_or_else(invalid_link)?;
    Ok(ConfirmPage {
        layout: Layout::public("Confirm your sign-up"),
        token: q.token,
        email,
        organization,
    })
}

async fn confirm_submit(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    FormBody(form): FormBody<ConfirmForm>,
) -> Result<Response> {
    let signed = confirm(&state, &form.token).await?;
    let secret = auth::open_session(
        &state,
        signed.tenant,
        signed.user,
        ip.0,
        user_agent(&headers),
    )
    .await?;
    Ok((
        [(header::SET_COOKIE, auth::session_cookie(&state, &secret))],
        see_other("/servers"),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(QueryParams(q): QueryParams<NextQuery>) -> LoginPage {
    LoginPage {
        layout: Layout::public("Sign in"),
        email: String::new(),
        next: safe_next(q.next.as_deref()),
        message: String::new(),
    }
}

async fn login_submit(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    FormBody(form): FormBody<LoginForm>,
) -> Result<Response> {
    match login(&state, &form, ip, user_agent(&headers)).await {
        Ok(logged) => Ok((
            [(
                header::SET_COOKIE,
                auth::session_cookie(&state, &logged.secret),
            )],
            see_other(&safe_next(form.next.as_deref())),
        )
            .into_response()),
        Err(Error::BadRequest(message)) => Ok((
            StatusCode::UNAUTHORIZED,
            LoginPage {
                layout: Layout::public("Sign in"),
                email: form.email,
                next: safe_next(form.next.as_deref()),
                message,
            },
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

async fn logout_submit(State(state): State<AppState>, tenant: Option<Tenant>) -> Result<Response> {
    if let Some(tenant) = tenant
        && let Some(session) = &tenant.session
    {
        auth::revoke_session(&state, tenant.id, session.id).await?;
    }
    Ok((
        [(header::SET_COOKIE, auth::clear_session_cookie(&state))],
        see_other("/login"),
    )
        .into_response())
}

async fn invitation_details(state: &AppState, token: &str) -> Result<(String, String, bool)> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT email, role FROM invitations
          WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > now()",
    )
    .bind(TokenHash::of(token).as_bytes())
    .fetch_optional(state.db())
    .await?;
    let (email, role) = row.ok_or(Error::NotFound)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))")
            .bind(&email)
            .fetch_one(state.db())
            .await?;
    Ok((email, role, exists))
}

/// `?token=`: the secret travels in the query string, which request logs never record.
#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn invite_page(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<TokenQuery>,
) -> Result<InvitePage> {
    let token = q.token;
    let (email, role, exists) = invitation_details(&state, &token).await?;
    Ok(InvitePage {
        layout: Layout::public("Join"),
        token,
        email,
        role,
        exists,
        problems: Problems::default(),
    })
}

#[derive(Debug, Deserialize)]
struct InviteForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

async fn invite_submit(
    State(state): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    FormBody(form): FormBody<InviteForm>,
) -> Result<Response> {
    let token = form.token.clone();
    let accepted = accept(
        &state,
        &AcceptForm {
            token: token.clone(),
            password: form.password,
        },
    )
    .await;
    match accepted {
        Ok((tenant, user)) => {
            let secret =
                auth::open_session(&state, tenant, user, ip.0, user_agent(&headers)).await?;
            Ok((
                [(header::SET_COOKIE, auth::session_cookie(&state, &secret))],
                see_other("/servers"),
            )
                .into_response())
        }
        Err(Error::Validation(errors)) => {
            let (email, role, exists) = invitation_details(&state, &token).await?;
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                InvitePage {
                    layout: Layout::public("Join"),
                    token,
                    email,
                    role,
                    exists,
                    problems: Problems(errors),
                },
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

/// Public API routes (no session needed) and the signed-in `me`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/signup", post(api_signup))
        .route("/api/v1/signup/confirm", post(api_confirm))
        .route("/api/v1/login", post(api_login))
        .route("/api/v1/logout", post(api_logout))
        .route("/api/v1/me", get(api_me))
        .route("/api/v1/invitations/accept", post(api_accept))
}

/// Sign-up, sign-in, sign-out and invitation pages.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/signup", get(signup_page).post(signup_submit))
        .route("/signup/confirm", get(confirm_page).post(confirm_submit))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout_submit))
        .route("/invite", get(invite_page).post(invite_submit))
}
