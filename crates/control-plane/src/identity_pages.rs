//! The dashboard's identity page: the organisation's identity providers and the policy
//! bindings of its servers, with forms to add and remove them (docs/identity.md).

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_core::PolicyId;
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Admin, Manager, Tenant};
use crate::bindings::{self, BindingInput};
use crate::dashboard::{Layout, Problems, see_other_with, when};
use crate::error::{Error, Result};
use crate::identity_providers::{self, ProviderInput};
use crate::input::{self, FormBody, QueryParams};
use crate::{policies, servers};

struct ProviderRow {
    id: String,
    issuer: String,
    audience: String,
    identity_claim: String,
    groups_claim: String,
    created: String,
}

struct BindingRow {
    id: String,
    server: String,
    policy: String,
    subject: String,
}

struct Choice {
    id: String,
    label: String,
}

#[derive(Debug, Default, Deserialize)]
struct ProviderForm {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    audience: String,
    #[serde(default)]
    identity_claim: String,
    #[serde(default)]
    groups_claim: String,
}

#[derive(Debug, Default, Deserialize)]
struct BindingForm {
    #[serde(default)]
    policy_id: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    group: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "identity.html")]
struct IdentityPage {
    layout: Layout,
    providers: Vec<ProviderRow>,
    bindings: Vec<BindingRow>,
    policies: Vec<Choice>,
    gateway_url: String,
    provider_form: ProviderForm,
    binding_form: BindingForm,
    problems: Problems,
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    notice: Option<String>,
}

async fn page_with(
    state: &AppState,
    tenant: &Tenant,
    notice: Option<String>,
    provider_form: ProviderForm,
    binding_form: BindingForm,
    problems: Problems,
) -> Result<IdentityPage> {
    let providers = identity_providers::list(state.db(), tenant.id)
        .await?
        .into_iter()
        .map(|p| ProviderRow {
            id: p.id.to_string(),
            issuer: p.issuer,
            audience: p.audience,
            identity_claim: p.identity_claim,
            groups_claim: p.groups_claim.unwrap_or_default(),
            created: when(&p.created_at),
        })
        .collect();
    let bindings = bindings::list(state.db(), tenant.id, None)
        .await?
        .into_iter()
        .map(|b| BindingRow {
            id: b.id.to_string(),
            subject: match (b.identity, b.group) {
                (Some(identity), _) => format!("identity {identity}"),
                (None, Some(group)) => format!("group {group}"),
                (None, None) => "every verified identity".to_owned(),
            },
            server: b.server_name,
            policy: b.policy_name,
        })
        .collect();
    let servers = servers::list(state.db(), tenant.id).await?;
    let policies = policies::list_all(state.db(), tenant.id)
        .await?
        .into_iter()
        .map(|p| Choice {
            id: p.id.to_string(),
            label: format!(
                "{} · {}",
                servers
                    .iter()
                    .find(|s| s.id == p.server_id)
                    .map(|s| s.name.as_str())
                    .unwrap_or_default(),
                p.name
            ),
        })
        .collect();
    Ok(IdentityPage {
        layout: Layout::new(tenant, "Identity", "identity").with_notice(notice),
        providers,
        bindings,
        policies,
        gateway_url: state.gateway_url.clone(),
        provider_form,
        binding_form,
        problems,
    })
}

async fn page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<IdentityPage> {
    page_with(
        &state,
        &tenant,
        q.notice,
        ProviderForm::default(),
        BindingForm::default(),
        Problems::default(),
    )
    .await
}

/// The page again with the form's problems (422), or the error itself.
async fn refused(
    state: &AppState,
    tenant: &Tenant,
    error: Error,
    provider_form: ProviderForm,
    binding_form: BindingForm,
) -> Result<Response> {
    match error {
        Error::Validation(errors) => {
            let page = page_with(
                state,
                tenant,
                None,
                provider_form,
                binding_form,
                Problems(errors),
            )
            .await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        e => Err(e),
    }
}

async fn add_provider(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    FormBody(form): FormBody<ProviderForm>,
) -> Result<Response> {
    let input = ProviderInput {
        issuer: Some(form.issuer.clone()),
        audience: Some(form.audience.clone()),
        identity_claim: Some(form.identity_claim.clone()),
        groups_claim: Some(form.groups_claim.clone()),
    };
    match identity_providers::create(&state, &tenant, &input).await {
        Ok(_) => Ok(see_other_with(
            "/identity-providers",
            "Provider added. Gateways accept its tokens where a binding applies.",
        )),
        Err(e) => refused(&state, &tenant, e, form, BindingForm::default()).await,
    }
}

async fn delete_provider(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    Path(id): Path<String>,
) -> Result<Response> {
    identity_providers::delete(&state, &tenant, input::id(&id)?).await?;
    Ok(see_other_with(
        "/identity-providers",
        "Provider removed. Its tokens are refused from now on.",
    ))
}

async fn add_binding(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    FormBody(form): FormBody<BindingForm>,
) -> Result<Response> {
    // The server follows from the policy.
    let server_id = match form.policy_id.parse::<PolicyId>() {
        Ok(p) => policies::find(state.db(), tenant.id, p)
            .await
            .ok()
            .map(|p| p.server_id.to_string()),
        Err(_) => None,
    };
    let input = BindingInput {
        server_id: Some(server_id.unwrap_or_default()),
        policy_id: Some(form.policy_id.clone()),
        identity: Some(form.identity.clone()),
        group: Some(form.group.clone()),
    };
    match bindings::create(&state, &tenant, &input).await {
        Ok(_) => Ok(see_other_with("/identity-providers", "Binding added.")),
        Err(Error::Validation(errors)) => {
            // A missing server means a missing policy: say so at the field the form has.
            let errors = errors
                .into_iter()
                .map(|mut e| {
                    if e.pointer == "/server_id" {
                        e.pointer = "/policy_id".into();
                        e.message = "choose a policy".into();
                    }
                    e
                })
                .collect();
            refused(
                &state,
                &tenant,
                Error::Validation(errors),
                ProviderForm::default(),
                form,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

async fn delete_binding(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    bindings::delete(&state, &tenant, input::id(&id)?).await?;
    Ok(see_other_with("/identity-providers", "Binding removed."))
}

/// The identity page and its forms.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/identity-providers", get(page).post(add_provider))
        .route("/identity-providers/{id}/delete", post(delete_provider))
        .route("/bindings", post(add_binding))
        .route("/bindings/{id}/delete", post(delete_binding))
}
