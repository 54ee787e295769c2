//! What every dashboard page shares: the layout, static assets, redirects, and error pages.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::auth::{Role, Tenant};
use crate::error::{ErrorPage, FieldError};

/// What the page frame needs: the title, who is signed in, the CSRF token for forms.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Page title.
    pub title: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    /// The tenant's name ("" when signed out).
    pub tenant_name: String,
    /// The signed-in user.
    pub user: String,
    /// The member's role, as text.
    pub role: &'static str,
    /// Whether the member may edit policies, grants and approvals.
    pub can_manage: bool,
    /// Whether the member is an admin.
    pub is_admin: bool,
    /// The CSRF token every form embeds.
    pub csrf: String,
    /// A one-line notice from the previous action.
    pub notice: String,
}

impl Layout {
    /// The frame for a signed-in member.
    pub fn new(tenant: &Tenant, title: impl Into<String>, nav: &'static str) -> Self {
        Self {
            title: title.into(),
            nav,
            tenant_name: tenant
                .session
                .as_ref()
                .map(|s| s.tenant_name.clone())
                .unwrap_or_default(),
            user: tenant.actor.label.clone(),
            role: tenant.role.as_str(),
            can_manage: tenant.role >= Role::PolicyManager,
            is_admin: tenant.role >= Role::Admin,
            csrf: tenant.csrf().to_owned(),
            notice: String::new(),
        }
    }

    /// The frame for signed-out pages.
    pub fn public(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Adds a notice (from a `?notice=` query parameter).
    pub fn with_notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice.unwrap_or_default().chars().take(300).collect();
        self
    }
}

/// Field errors looked up by pointer, for showing each beside its field.
#[derive(Debug, Clone, Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    /// The message for `pointer`, or "".
    pub fn at(&self, pointer: &str) -> String {
        self.0
            .iter()
            .filter(|e| e.pointer == pointer)
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Messages for pointers under `prefix` (e.g. one tool's rule).
    pub fn under(&self, prefix: &str) -> Vec<FieldError> {
        self.0
            .iter()
            .filter(|e| e.pointer == prefix || e.pointer.starts_with(&format!("{prefix}/")))
            .cloned()
            .collect()
    }

    /// Whether there is any problem.
    pub fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

/// A 303 to `to` (after a form POST).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A 303 to `to` with a notice shown at the top of the page.
pub fn see_other_with(to: &str, notice: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let encoded: String = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    Redirect::to(&format!("{to}{sep}notice={encoded}")).into_response()
}

/// Only same-site relative paths may be redirect targets after login.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/servers".to_owned(),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorTemplate {
    layout: Layout,
    status: u16,
    reason: String,
    message: String,
    errors: Vec<FieldError>,
}

/// Turns error responses of dashboard routes into pages; a 401 becomes a redirect to sign in.
pub async fn html_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let Some(page) = response.extensions().get::<ErrorPage>().cloned() else {
        return response;
    };
    if page.status == StatusCode::UNAUTHORIZED {
        let encoded: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
        return Redirect::to(&format!("/login?next={encoded}")).into_response();
    }
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let template = ErrorTemplate {
        layout: Layout::public(page.status.canonical_reason().unwrap_or("Error")),
        status: page.status.as_u16(),
        reason: page.status.canonical_reason().unwrap_or("Error").to_owned(),
        message: page.message,
        errors: page.errors,
    };
    let mut page_response = (page.status, template).into_response();
    if let Some(value) = retry_after {
        page_response
            .headers_mut()
            .insert(header::RETRY_AFTER, value);
    }
    page_response
}

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index(tenant: Option<Tenant>) -> Response {
    match tenant {
        Some(_) => see_other("/servers"),
        None => see_other("/login"),
    }
}

/// Static assets and the front door.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Tenant {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Tenant>().cloned())
    }
}

/// Formats a timestamp for tables.
pub fn when(ts: &chrono::DateTime<chrono::Utc>) -> String {
    ts.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Formats an optional timestamp for tables.
pub fn when_opt(ts: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    ts.as_ref().map(when).unwrap_or_default()
}
