//! The OpenAPI 3.1 document of `/api/v1`, generated from the route table so it cannot drift
//! from the real routes; the core calls of DESIGN §7 carry their exact request and answer shapes.

use axum::Json;
use serde_json::{Map, Value, json};

use crate::routes::{API, Access, Route};

fn schemas() -> Value {
    let mut all = core_schemas();
    if let (Some(all), Value::Object(tools)) = (all.as_object_mut(), tool_schemas()) {
        all.extend(tools);
    }
    all
}

/// The tool page's and the catalogue's answers.
fn tool_schemas() -> Value {
    json!({
        "ToolReport": {
            "type": "object",
            "required": ["server_id", "name", "risk", "status", "definition_hash", "history", "policies", "governed", "recommended", "guidance", "attacks", "usage"],
            "properties": {
                "server_id": { "type": "string", "format": "uuid" }, "server_name": { "type": "string" },
                "name": { "type": "string" }, "title": { "type": ["string", "null"] },
                "description": { "type": ["string", "null"], "description": "Upstream text: untrusted" },
                "annotations": { "description": "The upstream's claims (readOnlyHint, destructiveHint, …), not facts" },
                "input_schema": {},
                "risk": { "type": "object", "properties": { "category": { "type": "string" }, "level": { "type": "string" },
                    "signals": { "type": "array", "items": { "type": "object", "properties": {
                        "text": { "type": "string" }, "what": { "type": "string" }, "source": { "type": "string" },
                        "kind": { "type": "string", "enum": ["name", "description", "argument", "annotation"] } } } } } },
                "status": { "type": "object", "properties": { "state": { "type": "string", "enum": ["approved", "changed", "new", "removed"] },
                    "blocked": { "type": "boolean" }, "text": { "type": "string" } } },
                "definition_hash": { "type": "string" }, "approved_hash": { "type": ["string", "null"] },
                "history": { "type": "array", "items": { "type": "object", "properties": { "definition_hash": { "type": "string" },
                    "first_seen_at": { "type": "string", "format": "date-time" }, "last_seen_at": { "type": "string", "format": "date-time" },
                    "approved": { "type": "boolean" }, "current": { "type": "boolean" } } } },
                "definition_diff": { "type": ["array", "null"], "items": { "type": "object", "properties": { "op": { "type": "string", "enum": [" ", "-", "+"] }, "text": { "type": "string" } } } },
                "policies": { "type": "array", "items": { "type": "object", "properties": {
                    "policy_id": { "type": "string", "format": "uuid" }, "policy_name": { "type": "string" }, "version": { "type": "integer" },
                    "governing": { "type": ["object", "null"], "properties": {
                        "match": { "type": "string", "enum": ["exact", "glob", "category", "default"] },
                        "rule": { "type": "string", "description": "JSON pointer, (hidden), (default deny) or (default allow)" },
                        "effect": { "type": "string", "enum": ["hidden", "deny", "allow", "approval"] },
                        "require": { "type": "integer" }, "deny_if": { "type": "integer" }, "approval_conditional": { "type": "boolean" },
                        "limits": { "type": "array", "items": { "type": "object" } }, "validate": { "type": "boolean" }, "monitor": { "type": "boolean" } } },
                    "summary": { "type": "string" }, "governed": { "type": "boolean" } } } },
                "governed": { "type": "boolean" },
                "recommended": { "type": ["object", "null"], "description": "policy.json fragment" },
                "guidance": { "type": "array", "items": { "type": "object", "properties": {
                    "action": { "type": "string", "enum": ["rate_limit", "block", "approval"] }, "text": { "type": "string" }, "json": { "type": "object" } } } },
                "attacks": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "why": { "type": "string" }, "stopped_by": { "type": "string" }, "doc": { "type": "string" } } } },
                "usage": { "type": "object", "properties": {
                    "day": { "$ref": "#/components/schemas/UsagePeriod" }, "week": { "$ref": "#/components/schemas/UsagePeriod" },
                    "top_identities": { "type": "array", "items": { "type": "object", "properties": {
                        "identity": { "type": "string" }, "calls": { "type": "integer" }, "blocked": { "type": "integer" } } } },
                    "since": { "type": "string", "format": "date-time" } } }
            }
        },
        "UsagePeriod": {
            "type": "object",
            "properties": { "calls": { "type": "integer" }, "denials": { "type": "integer" }, "rate_limited": { "type": "integer" },
                "approvals": { "type": "integer" }, "p50_ms": { "type": ["number", "null"] }, "p95_ms": { "type": ["number", "null"] } }
        },
        "Catalogue": {
            "type": "object", "required": ["tools"],
            "properties": { "tools": { "type": "array", "items": { "type": "object", "properties": {
                "server_id": { "type": "string", "format": "uuid" }, "server_name": { "type": "string" }, "name": { "type": "string" },
                "category": { "type": "string" }, "level": { "type": "string" }, "signal": { "type": "string" },
                "status": { "type": "string", "enum": ["approved", "changed", "new", "removed"] }, "blocked": { "type": "boolean" },
                "governed": { "type": "boolean" }, "ungoverned_by": { "type": "array", "items": { "type": "string" } },
                "has_policy": { "type": "boolean" } } } } }
        }
    })
}

fn core_schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "object", "required": ["code", "message"],
                "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } }
        },
        "ValidationErrors": {
            "type": "object",
            "required": ["errors"],
            "properties": { "errors": { "type": "array", "items": { "type": "object", "required": ["pointer", "message"],
                "properties": { "pointer": { "type": "string", "description": "JSON pointer" }, "message": { "type": "string" } } } } }
        },
        "Signup": {
            "type": "object", "required": ["email", "password", "organization"],
            "properties": { "email": { "type": "string" }, "password": { "type": "string", "minLength": 10 }, "organization": { "type": "string" } }
        },
        "SignupResult": {
            "type": "object", "required": ["tenant_id", "user_id", "api_token"],
            "properties": { "tenant_id": { "type": "string", "format": "uuid" }, "user_id": { "type": "string", "format": "uuid" }, "api_token": { "type": "string" } }
        },
        "ServerInput": {
            "type": "object", "required": ["name", "url"],
            "properties": { "name": { "type": "string" }, "url": { "type": "string", "format": "uri" },
                "transport": { "type": "string", "enum": ["streamable_http", "sse"] },
                "headers": { "type": "object", "additionalProperties": { "type": "string" } },
                "block_changed_tools": { "type": "boolean" } }
        },
        "Server": {
            "type": "object", "required": ["id", "name", "url", "transport", "header_names"],
            "properties": { "id": { "type": "string", "format": "uuid" }, "name": { "type": "string" }, "url": { "type": "string" },
                "transport": { "type": "string" }, "header_names": { "type": "array", "items": { "type": "string" } },
                "header_hints": { "type": "object", "additionalProperties": { "type": "string" } },
                "block_changed_tools": { "type": "boolean" }, "last_discovered_at": { "type": ["string", "null"], "format": "date-time" } }
        },
        "Tools": {
            "type": "object", "required": ["tools"],
            "properties": { "tools": { "type": "array", "items": { "type": "object", "required": ["name", "description", "risk"],
                "properties": { "name": { "type": "string" }, "description": { "type": ["string", "null"] },
                    "risk": { "type": "object", "required": ["category", "level", "signals"], "properties": {
                        "category": { "type": "string", "enum": ["read", "write", "execute", "financial", "destructive", "other"] },
                        "level": { "type": "string", "enum": ["low", "medium", "high", "critical"] },
                        "signals": { "type": "array", "items": { "type": "string" } } } },
                    "status": { "type": "string", "enum": ["active", "changed", "removed"] } } } } }
        },
        "PolicyInput": {
            "type": "object", "required": ["document"],
            "properties": { "name": { "type": "string" }, "document": { "type": "object", "description": "Policy language v1 (docs/policy.md)" } }
        },
        "PolicyVersion": {
            "type": "object", "required": ["id", "version"],
            "properties": { "id": { "type": "string", "format": "uuid" }, "version": { "type": "integer" } }
        },
        "GrantInput": {
            "type": "object", "required": ["server_id", "policy_id", "identity"],
            "properties": { "server_id": { "type": "string", "format": "uuid" }, "policy_id": { "type": "string", "format": "uuid" },
                "identity": { "type": "string" }, "label": { "type": "string" }, "expires_at": { "type": "string", "format": "date-time" } }
        },
        "IssuedGrant": {
            "type": "object", "required": ["id", "token", "url"],
            "properties": { "id": { "type": "string", "format": "uuid" }, "token": { "type": "string", "description": "Shown only here" },
                "url": { "type": "string", "description": "{gateway}/g/{token}/mcp" }, "header_url": { "type": "string" },
                "headers": { "type": "object" }, "configs": { "type": "object" } }
        },
        "AuditPage": {
            "type": "object", "required": ["events", "next_cursor"],
            "properties": { "next_cursor": { "type": ["string", "null"] }, "events": { "type": "array", "items": { "type": "object",
                "required": ["id", "ts", "grant_id", "identity", "server_id", "method", "tool", "decision", "rule", "message", "upstream_status", "latency_ms", "upstream_error"],
                "properties": { "id": { "type": "string" }, "ts": { "type": "string", "format": "date-time" }, "grant_id": { "type": "string" },
                    "identity": { "type": "string" }, "server_id": { "type": "string" }, "method": { "type": "string" },
                    "tool": { "type": ["string", "null"] },
                    "decision": { "type": "string", "enum": ["allow", "deny", "hidden", "rate_limited", "approval_required", "error"] },
                    "rule": { "type": ["string", "null"] }, "message": { "type": ["string", "null"] },
                    "upstream_status": { "type": ["integer", "null"] }, "latency_ms": { "type": ["number", "null"] },
                    "upstream_error": { "type": ["string", "null"], "description": "Why the call ended without a whole answer" } } } } }
        },
        "Approvals": {
            "type": "object", "required": ["approvals"],
            "properties": { "approvals": { "type": "array", "items": { "type": "object",
                "required": ["id", "tool", "grant_id", "identity", "status", "created_at"],
                "properties": { "id": { "type": "string" }, "tool": { "type": "string" }, "grant_id": { "type": "string" },
                    "identity": { "type": "string" }, "status": { "type": "string" }, "created_at": { "type": "string", "format": "date-time" },
                    "arguments": {}, "expires_at": { "type": "string" }, "note": { "type": ["string", "null"] } } } } }
        },
        "Note": { "type": "object", "properties": { "note": { "type": "string" } } }
    })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": reference(name) } } })
}

fn answer(status: &str, description: &str, schema: Option<&str>) -> (String, Value) {
    let mut value = json!({ "description": description });
    if let Some(schema) = schema {
        value["content"] = json!({ "application/json": { "schema": reference(schema) } });
    }
    (status.to_owned(), value)
}

/// Request body and success answer of the calls whose shapes DESIGN §7 fixes.
fn shapes(route: &Route) -> (Option<Value>, Vec<(String, Value)>) {
    match (route.method, route.path) {
        ("POST", "/api/v1/signup") => (
            Some(body("Signup")),
            vec![
                answer("201", "Created", Some("SignupResult")),
                answer(
                    "409",
                    "The email has an account, and the password is not its",
                    Some("Error"),
                ),
                answer("422", "Fields not acceptable", Some("ValidationErrors")),
                answer(
                    "429",
                    "Too many sign-ups from this address or for this email (Retry-After)",
                    Some("Error"),
                ),
            ],
        ),
        ("POST", "/api/v1/servers") => (
            Some(body("ServerInput")),
            vec![answer("201", "Registered", Some("Server"))],
        ),
        ("PATCH", "/api/v1/servers/{id}") => (
            Some(body("ServerInput")),
            vec![answer("200", "Saved", Some("Server"))],
        ),
        ("POST", "/api/v1/servers/{id}/discover") | ("GET", "/api/v1/servers/{id}/tools") => {
            (None, vec![answer("200", "The tools", Some("Tools"))])
        }
        ("GET", "/api/v1/servers/{id}/tools/{name}") => {
            (None, vec![answer("200", "The tool", Some("ToolReport"))])
        }
        ("GET", "/api/v1/tools") => (
            None,
            vec![answer("200", "The catalogue", Some("Catalogue"))],
        ),
        ("POST", "/api/v1/servers/{id}/policies") => (
            Some(body("PolicyInput")),
            vec![
                answer("201", "Created", Some("PolicyVersion")),
                answer("422", "Invalid document", Some("ValidationErrors")),
            ],
        ),
        ("PUT", "/api/v1/policies/{id}") => (
            Some(body("PolicyInput")),
            vec![
                answer("200", "Saved", Some("PolicyVersion")),
                answer("422", "Invalid document", Some("ValidationErrors")),
            ],
        ),
        ("POST", "/api/v1/grants") => (
            Some(body("GrantInput")),
            vec![answer("201", "Issued", Some("IssuedGrant"))],
        ),
        ("POST", "/api/v1/grants/{id}/rotate") => {
            (None, vec![answer("200", "Rotated", Some("IssuedGrant"))])
        }
        ("DELETE", _) => (None, vec![answer("204", "Done", None)]),
        ("GET", "/api/v1/audit") => (None, vec![answer("200", "A page", Some("AuditPage"))]),
        ("GET", "/api/v1/approvals") => (None, vec![answer("200", "Approvals", Some("Approvals"))]),
        ("POST", "/api/v1/approvals/{id}/approve") | ("POST", "/api/v1/approvals/{id}/deny") => (
            Some(
                json!({ "required": false, "content": { "application/json": { "schema": reference("Note") } } }),
            ),
            vec![answer("200", "Decided", None)],
        ),
        ("POST", _) | ("PUT", _) | ("PATCH", _) => (
            Some(
                json!({ "required": false, "content": { "application/json": { "schema": { "type": "object" } } } }),
            ),
            vec![answer("200", "Done", None)],
        ),
        _ => (None, vec![answer("200", "OK", None)]),
    }
}

fn query_parameters(route: &Route) -> Vec<Value> {
    let audit = |extra: &[&'static str]| [&crate::audit::query::FILTERS[..], extra].concat();
    let names: Vec<&str> = match route.path {
        "/api/v1/audit" => audit(&["since", "until", "cursor", "limit"]),
        "/api/v1/audit/export" => audit(&["since", "until", "format"]),
        "/api/v1/audit/tail" => audit(&[]),
        "/api/v1/approvals" => vec!["status"],
        "/api/v1/grants" => vec!["server_id"],
        "/api/v1/policies/{id}/diff" => vec!["from", "to"],
        "/api/v1/servers/{id}/overview" => vec!["hours"],
        "/api/v1/admin-audit" => vec!["object_kind", "before", "limit"],
        "/api/v1/tools" => vec!["risk", "category", "status", "governed", "q", "sort", "dir"],
        _ => Vec::new(),
    };
    names
        .iter()
        .map(|n| json!({ "name": n, "in": "query", "required": false, "schema": { "type": "string" } }))
        .collect()
}

/// The document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for route in API {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(query_parameters(route));
        let (request, answers) = shapes(route);
        let mut responses = Map::new();
        for (status, value) in answers {
            responses.insert(status, value);
        }
        for (status, description) in [
            ("400", "Malformed request"),
            ("401", "Not signed in"),
            ("403", "Role too low, or CSRF token missing"),
            ("404", "Not found (also: another tenant's object)"),
        ] {
            if route.access == Access::Public && matches!(status, "401" | "403") {
                continue;
            }
            responses.insert(status.into(), json!({ "description": description, "content": { "application/json": { "schema": reference("Error") } } }));
        }
        let tag = route
            .path
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or("api");
        let mut operation = json!({
            "operationId": format!("{}{}", route.method.to_lowercase(), route.path.trim_start_matches("/api/v1").replace(['/', '{', '}', '-', '.'], "_")),
            "summary": route.summary,
            "tags": [tag],
            "x-role": route.access.as_str(),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(request) = request {
            operation["requestBody"] = request;
        }
        if route.access == Access::Public {
            operation["security"] = json!([]);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method.to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis control plane API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every call is scoped to the caller's tenant: another tenant's object answers 404. Authenticate with `Authorization: Bearer pct_…` (API token) or the session cookie plus `X-CSRF-Token` on unsafe methods.",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }, { "session": [] }],
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "API token (pct_…)" },
                "session": { "type": "apiKey", "in": "cookie", "name": "pcs" },
            },
            "schemas": schemas(),
        },
        "paths": paths,
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}
