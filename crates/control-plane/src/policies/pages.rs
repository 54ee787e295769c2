//! Policy pages: create (blank or recommended), the builder, the JSON editor, the tester,
//! versions and diffs.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_core::{PolicyId, ServerId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::builder::{self, Row};
use super::diff;
use super::{DiffQuery, Policy, TestCall, Version};
use crate::AppState;
use crate::auth::{Manager, Tenant};
use crate::dashboard::{Layout, Problems, see_other_with, when};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, FormBody, QueryParams};
use crate::servers;
use crate::tools;

#[derive(Debug, Default, Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "policy_new.html")]
struct NewPolicyPage {
    layout: Layout,
    server_id: String,
    server_name: String,
    name: String,
    document: String,
    problems: Problems,
}

async fn new_page(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(server): Path<String>,
) -> Result<NewPolicyPage> {
    let server: ServerId = input::id(&server)?;
    let record = servers::find(state.db(), tenant.id, server).await?;
    let document = super::recommended(state.db(), tenant.id, server).await?;
    Ok(NewPolicyPage {
        layout: Layout::new(&tenant, "New policy", "servers"),
        server_id: record.id.to_string(),
        server_name: record.name,
        name: "default".into(),
        document: super::pretty(&document),
        problems: Problems::default(),
    })
}

#[derive(Debug, Deserialize)]
struct NewForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    start: String,
    #[serde(default)]
    document: String,
}

async fn new_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(server): Path<String>,
    FormBody(form): FormBody<NewForm>,
) -> Result<Response> {
    let server: ServerId = input::id(&server)?;
    let record = servers::find(state.db(), tenant.id, server).await?;
    let result = async {
        let document = match form.start.as_str() {
            "recommended" => super::recommended(state.db(), tenant.id, server).await?,
            "empty" => json!({ "version": "1", "default": "deny", "tools": {} }),
            _ => portcullis_policy::json_text::parse(&form.document)
                .map_err(|e| Error::field(e.pointer, e.message))?,
        };
        super::create(&state, &tenant, server, &form.name, &document).await
    }
    .await;
    match result {
        Ok(policy) => Ok(see_other_with(
            &format!("/policies/{}", policy.id),
            "Policy created (version 1). Review each tool, then save.",
        )),
        Err(Error::Validation(errors)) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            NewPolicyPage {
                layout: Layout::new(&tenant, "New policy", "servers"),
                server_id: record.id.to_string(),
                server_name: record.name,
                name: form.name,
                document: form.document,
                problems: Problems(errors),
            },
        )
            .into_response()),
        Err(e) => Err(e),
    }
}

struct VersionRow {
    version: i32,
    by: String,
    at: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "policy.html")]
struct PolicyPage {
    layout: Layout,
    policy: Policy,
    server_name: String,
    default_action: String,
    mode: String,
    rows: Vec<Row>,
    json: String,
    problems: Problems,
    versions: Vec<VersionRow>,
    tool_names: Vec<String>,
    test_tool: String,
    test_arguments: String,
    test_result: String,
    test_rule: String,
    test_decision: String,
    grants: i64,
}

struct Draft {
    json: Option<String>,
    rows: Option<Vec<(String, String)>>,
    problems: Problems,
    test: Option<(String, String, String, String, String)>,
}

async fn render(
    state: &AppState,
    tenant: &Tenant,
    id: PolicyId,
    notice: Option<String>,
    draft: Draft,
) -> Result<PolicyPage> {
    let policy = super::find(state.db(), tenant.id, id).await?;
    let server = servers::find(state.db(), tenant.id, ServerId(policy.server_id)).await?;
    let current = super::version(state.db(), tenant.id, id, policy.current_version).await?;
    let tools = tools::list(state.db(), tenant.id, ServerId(policy.server_id)).await?;
    // Re-show what was submitted when it failed, so nobody loses their edits.
    let shown: Value = match &draft.rows {
        Some(form) => {
            builder::build(&current.document, form).unwrap_or_else(|_| current.document.clone())
        }
        None => draft
            .json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_else(|| current.document.clone()),
    };
    let mut rows = builder::rows(&shown, &tools);
    for row in &mut rows {
        let pointer = format!("/tools/{}", builder::escape(&row.name));
        row.errors = draft
            .problems
            .under(&pointer)
            .into_iter()
            .map(|e| format!("{}: {}", e.pointer, e.message))
            .collect();
        if draft
            .problems
            .0
            .iter()
            .any(|e| e.pointer == "/hide" || e.pointer.starts_with("/hide/"))
            && row.mode == "hide"
        {
            row.errors
                .extend(draft.problems.under("/hide").into_iter().map(|e| e.message));
        }
    }
    let versions = super::versions(state.db(), tenant.id, id)
        .await?
        .into_iter()
        .map(|v: Version| VersionRow {
            version: v.version,
            by: v.created_by.unwrap_or_default(),
            at: when(&v.created_at),
        })
        .collect();
    let grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM grants WHERE tenant_id = $1 AND policy_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant.id.0)
    .bind(id.0)
    .fetch_one(state.db())
    .await?;
    let (test_tool, test_arguments, test_result, test_rule, test_decision) =
        draft.test.unwrap_or_else(|| {
            (
                tools
                    .iter()
                    .find(|t| t.status != "removed")
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                "{}".into(),
                String::new(),
                String::new(),
                String::new(),
            )
        });
    Ok(PolicyPage {
        layout: Layout::new(tenant, format!("Policy {}", policy.name), "servers")
            .with_notice(notice),
        server_name: server.name,
        default_action: shown
            .get("default")
            .and_then(Value::as_str)
            .unwrap_or("deny")
            .to_owned(),
        mode: shown
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("enforce")
            .to_owned(),
        rows,
        json: draft
            .json
            .unwrap_or_else(|| super::pretty(&current.document)),
        problems: draft.problems,
        versions,
        tool_names: tools
            .iter()
            .filter(|t| t.status != "removed")
            .map(|t| t.name.clone())
            .collect(),
        test_tool,
        test_arguments,
        test_result,
        test_rule,
        test_decision,
        grants,
        policy,
    })
}

fn no_draft() -> Draft {
    Draft {
        json: None,
        rows: None,
        problems: Problems::default(),
        test: None,
    }
}

async fn policy_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<NoticeQuery>,
) -> Result<PolicyPage> {
    render(&state, &tenant, input::id(&id)?, q.notice, no_draft()).await
}

async fn builder_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
    FormBody(form): FormBody<Vec<(String, String)>>,
) -> Result<Response> {
    let id: PolicyId = input::id(&id)?;
    let policy = super::find(state.db(), tenant.id, id).await?;
    let current = super::version(state.db(), tenant.id, id, policy.current_version).await?;
    let result = match builder::build(&current.document, &form) {
        Ok(document) => super::update(&state, &tenant, id, &document, None).await,
        Err(errors) => Err(Error::Validation(errors)),
    };
    match result {
        Ok(saved) => Ok(see_other_with(
            &format!("/policies/{id}"),
            &format!("Saved as version {}.", saved.current_version),
        )),
        Err(Error::Validation(errors)) => {
            let draft = Draft {
                json: None,
                rows: Some(form),
                problems: Problems(errors),
                test: None,
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                render(&state, &tenant, id, None, draft).await?,
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Deserialize)]
struct JsonForm {
    #[serde(default)]
    document: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    arguments: String,
}

async fn json_submit(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    FormBody(form): FormBody<JsonForm>,
) -> Result<Response> {
    let id: PolicyId = input::id(&id)?;
    let policy = super::find(state.db(), tenant.id, id).await?;
    let parsed: Result<Value> = portcullis_policy::json_text::parse(&form.document)
        .map_err(|e| Error::Validation(vec![FieldError::new(e.pointer, e.message)]));
    if form.action == "test" {
        // Testing changes nothing, so every member may use the tester.
        let outcome = async {
            let document = parsed?;
            let arguments: Value = if form.arguments.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&form.arguments)
                    .map_err(|e| Error::field("/arguments", format!("not valid JSON: {e}")))?
            };
            let call = TestCall {
                tool: form.tool.clone(),
                arguments,
                identity: None,
                document: Some(document),
            };
            super::test(state.db(), tenant.id, &policy, &call).await
        }
        .await;
        let (problems, test) = match outcome {
            Ok(result) => {
                let decision = &result["decision"];
                (
                    Problems::default(),
                    (
                        form.tool.clone(),
                        form.arguments.clone(),
                        decision["message"].as_str().unwrap_or("").to_owned(),
                        decision["rule"].as_str().unwrap_or("").to_owned(),
                        decision["decision"].as_str().unwrap_or("").to_owned(),
                    ),
                )
            }
            Err(Error::Validation(errors)) => (
                Problems(errors),
                (
                    form.tool.clone(),
                    form.arguments.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                ),
            ),
            Err(e) => return Err(e),
        };
        let draft = Draft {
            json: Some(form.document),
            rows: None,
            problems,
            test: Some(test),
        };
        return Ok(render(&state, &tenant, id, None, draft)
            .await?
            .into_response());
    }
    let tenant = Manager::check(tenant)?;
    let result = match parsed {
        Ok(document) => super::update(&state, &tenant, id, &document, None).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(saved) => Ok(see_other_with(
            &format!("/policies/{id}"),
            &format!("Saved as version {}.", saved.current_version),
        )),
        Err(Error::Validation(errors)) => {
            let draft = Draft {
                json: Some(form.document),
                rows: None,
                problems: Problems(errors),
                test: None,
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                render(&state, &tenant, id, None, draft).await?,
            )
                .into_response())
        }
        Err(e) => Err(e),
    }
}

async fn delete_submit(
    State(state): State<AppState>,
    Manager(tenant): Manager,
    Path(id): Path<String>,
) -> Result<Response> {
    let id: PolicyId = input::id(&id)?;
    let policy = super::find(state.db(), tenant.id, id).await?;
    super::delete(&state, &tenant, id).await?;
    Ok(see_other_with(
        &format!("/servers/{}", policy.server_id),
        "Policy deleted.",
    ))
}

#[derive(Template, WebTemplate)]
#[template(path = "policy_diff.html")]
struct DiffPage {
    layout: Layout,
    policy: Policy,
    from: i32,
    to: i32,
    lines: Vec<diff::Line>,
    versions: Vec<i32>,
    changed: usize,
}

async fn diff_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DiffQuery>,
) -> Result<DiffPage> {
    let id: PolicyId = input::id(&id)?;
    let policy = super::find(state.db(), tenant.id, id).await?;
    let (from, to) = super::diff_versions(state.db(), tenant.id, &policy, &q).await?;
    let lines = diff::lines(&super::pretty(&from.document), &super::pretty(&to.document));
    let versions = (1..=policy.current_version).rev().collect();
    Ok(DiffPage {
        layout: Layout::new(
            &tenant,
            format!(
                "Policy {}: v{} → v{}",
                policy.name, from.version, to.version
            ),
            "servers",
        )
        .with_notice(q.notice.clone()),
        changed: lines.iter().filter(|l| l.op != " ").count(),
        from: from.version,
        to: to.version,
        lines,
        versions,
        policy,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "policy_version.html")]
struct VersionPage {
    layout: Layout,
    policy: Policy,
    version: i32,
    by: String,
    at: String,
    json: String,
}

async fn version_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path((id, number)): Path<(String, String)>,
) -> Result<VersionPage> {
    let id: PolicyId = input::id(&id)?;
    let number: i32 = input::id(&number)?;
    let policy = super::find(state.db(), tenant.id, id).await?;
    let v = super::version(state.db(), tenant.id, id, number).await?;
    Ok(VersionPage {
        layout: Layout::new(
            &tenant,
            format!("Policy {} v{}", policy.name, v.version),
            "servers",
        ),
        policy,
        version: v.version,
        by: v.created_by.unwrap_or_default(),
        at: when(&v.created_at),
        json: super::pretty(&v.document),
    })
}

/// The policy pages and their forms.
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/servers/{id}/policies/new", get(new_page))
        .route("/servers/{id}/policies", post(new_submit))
        .route("/policies/{id}", get(policy_page))
        .route("/policies/{id}/builder", post(builder_submit))
        .route("/policies/{id}/json", post(json_submit))
        .route("/policies/{id}/delete", post(delete_submit))
        .route("/policies/{id}/diff", get(diff_page))
        .route("/policies/{id}/versions/{version}", get(version_page))
}
