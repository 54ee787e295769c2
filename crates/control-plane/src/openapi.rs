//! The OpenAPI 3.1 document of `/api/v1`, generated from the route table so it cannot drift
//! from the real routes.
//!
//! Every operation carries the shape of what it takes (request bodies and query parameters,
//! with the bounds the handlers check) and of every answer it gives, and links from the
//! answers that create an object to the operations on it. `deploy/local/schemathesis` holds
//! the control plane to this document: no answer outside it, no request that breaks it
//! accepted.

use axum::Json;
use serde_json::{Map, Value, json};

use crate::routes::{API, Access, Route};

/// A UUID.
fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

/// An RFC 3339 time.
fn time() -> Value {
    json!({ "type": "string", "format": "date-time" })
}

fn nullable(mut schema: Value) -> Value {
    let kind = schema["type"].clone();
    schema["type"] = json!([kind, "null"]);
    schema
}

/// Text the handlers trim and require to be non-empty, of at most `max` characters.
fn text(max: usize) -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": max, "pattern": "\\S" })
}

/// The characters Rust's `str::trim` removes (Unicode `White_Space`), as a regex class: query
/// parameters are trimmed, and blank ones are absent.
const SPACE: &str =
    "[\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// A query parameter the handlers trim, taking blank text as absent: `pattern` (a regex of
/// the trimmed value, without anchors), or only white space.
fn trimmed(pattern: &str) -> Value {
    json!({ "type": "string", "pattern": format!("^{SPACE}*(?:{pattern})?{SPACE}*$") })
}

/// A UUID as `uuid::Uuid` parses one: hyphenated, simple, braced or as a URN.
const UUID: &str = "(?:urn:uuid:)?(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}|\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\})";

/// A policy document's top level, as `portcullis_policy` validates it (docs/policy.md): the keys
/// it knows and no other, `version` `"1"`; the rules themselves are checked by the handler.
fn policy_document() -> Value {
    json!({
        "type": "object",
        "description": "Policy language v1 (docs/policy.md)",
        "required": ["version"],
        "additionalProperties": false,
        "properties": {
            "version": { "const": "1" },
            "default": { "enum": ["allow", "deny"] },
            "mode": { "enum": ["enforce", "monitor"] },
            "on_limiter_error": { "enum": ["allow", "deny"] },
            "audit": { "type": "object" },
            "hide": { "type": "array", "items": { "type": "string" } },
            "all_tools": { "type": "object" },
            "categories": { "type": "object" },
            "tools": { "type": "object" },
        },
        "example": { "version": "1", "default": "deny", "tools": { "send_message": {} } },
    })
}

/// The start of a URL the handlers read as http(s): trimmed, then parsed as a browser does
/// (leading controls dropped, tabs and newlines anywhere removed, scheme in any case, `//`
/// optional). Whether it names a host Portcullis may reach is the handler's to say.
fn http_url() -> String {
    let gap = "[\\t\\n\\r]*";
    format!("^(?:{SPACE}|[\\u0000-\\u001f])*[Hh]{gap}[Tt]{gap}[Tt]{gap}[Pp]{gap}(?:[Ss]{gap})?:")
}

fn role() -> Value {
    json!({ "type": "string", "enum": ["viewer", "policy_manager", "admin"] })
}

/// An object with these properties, of which `required` must be present.
fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn array(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}

fn schemas() -> Value {
    let decision = json!({ "type": "string", "enum": ["allow", "deny", "hidden", "rate_limited", "approval_required", "confirmation_required", "error"] });
    let summary = json!({
        "id": uuid(), "ts": time(), "grant_id": uuid(), "identity": { "type": "string" },
        "server_id": uuid(), "method": { "type": "string" },
        "tool": { "type": ["string", "null"] }, "decision": decision,
        "rule": { "type": ["string", "null"] }, "message": { "type": ["string", "null"] },
        "upstream_status": { "type": ["integer", "null"] }, "latency_ms": { "type": ["number", "null"] },
        "upstream_error": { "type": ["string", "null"], "description": "Why the call ended without a whole answer" },
        "confirmation": { "type": ["string", "null"], "enum": ["confirmed", "declined", "cancelled", "timed_out", null],
            "description": "The user's answer to a confirmation_required call; null when nobody was asked, or before they answered" },
    });
    let summary_required = [
        "id",
        "ts",
        "grant_id",
        "identity",
        "server_id",
        "method",
        "tool",
        "decision",
        "rule",
        "message",
        "upstream_status",
        "latency_ms",
        "upstream_error",
        "confirmation",
    ];
    let mut detail = summary.clone();
    if let Some(fields) = detail.as_object_mut() {
        for (name, schema) in [
            ("policy_id", nullable(uuid())),
            ("policy_version", json!({ "type": ["integer", "null"] })),
            ("protocol", json!({ "type": ["string", "null"] })),
            ("session", json!({ "type": ["string", "null"] })),
            ("request_id", json!({ "type": ["string", "null"] })),
            ("arg_keys", array(json!({ "type": "string" }))),
            ("arg_digest", json!({ "type": ["string", "null"] })),
            (
                "arguments",
                json!({ "description": "Redacted values, when the policy keeps them" }),
            ),
            ("is_error", json!({ "type": ["boolean", "null"] })),
            (
                "issuer",
                json!({ "type": ["string", "null"], "description": "Identity-bound calls: the token's issuer" }),
            ),
            (
                "jti",
                json!({ "type": ["string", "null"], "description": "Identity-bound calls: the token's jti" }),
            ),
        ] {
            fields.insert(name.into(), schema);
        }
    }
    let tool = object(
        &["id", "name", "description", "risk", "status"],
        json!({
            "id": uuid(), "name": { "type": "string" }, "title": {},
            "description": { "type": ["string", "null"] },
            "risk": object(&["category", "level", "signals"], json!({
                "category": { "type": "string", "enum": ["read", "write", "execute", "financial", "destructive", "other"] },
                "level": { "type": "string", "enum": ["low", "medium", "high", "critical"] },
                "signals": array(json!({ "type": "string" })),
            })),
            "status": { "type": "string", "enum": ["active", "changed", "removed"] },
            "definition_hash": { "type": "string" },
            "approved_hash": { "type": ["string", "null"] },
            "annotations": {}, "input_schema": {},
        }),
    );
    let grant = object(
        &[
            "id",
            "server_id",
            "policy_id",
            "identity",
            "label",
            "token_hint",
            "created_at",
            "expires_at",
            "revoked_at",
            "server_name",
            "policy_name",
            "status",
        ],
        json!({
            "id": uuid(), "server_id": uuid(), "policy_id": uuid(),
            "identity": { "type": "string" }, "label": { "type": "string" },
            "token_hint": { "type": "string" }, "created_at": time(),
            "expires_at": nullable(time()), "revoked_at": nullable(time()),
            "server_name": { "type": "string" }, "policy_name": { "type": "string" },
            "status": { "type": "string", "enum": ["active", "expired", "revoked"] },
        }),
    );
    let policy = json!({
        "id": uuid(), "server_id": uuid(), "name": { "type": "string" },
        "version": { "type": "integer", "minimum": 1 },
        "current_version": { "type": "integer", "minimum": 1 },
        "created_at": time(), "updated_at": time(),
    });
    let mut policy_with_document = policy.clone();
    policy_with_document["document"] = json!({ "type": "object" });
    let invitation = json!({
        "id": uuid(), "email": { "type": "string" }, "role": role(),
        "created_at": time(), "expires_at": time(), "accepted_at": nullable(time()),
    });
    let mut new_invitation = invitation.clone();
    new_invitation["token"] = json!({ "type": "string", "description": "Shown only here" });
    new_invitation["url"] = json!({ "type": "string" });
    let api_token = json!({
        "id": uuid(), "name": { "type": "string" }, "role": role(),
        "token_hint": { "type": "string" }, "created_at": time(),
        "last_used_at": nullable(time()), "expires_at": nullable(time()),
        "revoked_at": nullable(time()),
    });
    let mut new_api_token = api_token.clone();
    new_api_token["token"] = json!({ "type": "string", "description": "Shown only here" });
    let api_token_required = [
        "id",
        "name",
        "role",
        "token_hint",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ];
    let new_api_token_required = [api_token_required.as_slice(), &["token"]].concat();
    let mut policy_summary = json!({ "type": "object", "properties": policy });
    policy_summary["required"] = json!([
        "id",
        "server_id",
        "name",
        "version",
        "current_version",
        "created_at",
        "updated_at"
    ]);
    let mut event_summary = json!({ "type": "object", "properties": summary });
    event_summary["required"] = json!(summary_required);
    let settings = object(
        &[
            "name",
            "audit_retention_days",
            "webhook_url",
            "webhook_secret_set",
            "password_sign_in_disabled",
        ],
        json!({
            "name": { "type": "string" },
            "audit_retention_days": { "type": "integer", "minimum": 1, "maximum": 3650 },
            "webhook_url": { "type": ["string", "null"] },
            "webhook_secret_set": { "type": "boolean" },
            "password_sign_in_disabled": { "type": "boolean", "description": "Members sign in through the identity provider only" },
        }),
    );
    let member = object(
        &["user_id", "email", "role", "created_at"],
        json!({ "user_id": uuid(), "email": { "type": "string" }, "role": role(), "created_at": time() }),
    );
    let approval = object(
        &[
            "id",
            "tool",
            "grant_id",
            "server_id",
            "identity",
            "status",
            "created_at",
            "expires_at",
        ],
        json!({
            "id": { "type": "string", "pattern": "^apr_" }, "tool": { "type": "string" },
            "grant_id": uuid(), "server_id": uuid(), "identity": { "type": "string" },
            "status": { "type": "string", "enum": ["pending", "approved", "denied", "expired", "consumed"] },
            "created_at": time(), "expires_at": time(), "arguments": {},
            "decided_at": nullable(time()), "decided_by": { "type": ["string", "null"] },
            "note": { "type": ["string", "null"] }, "consumed_at": nullable(time()),
        }),
    );
    let groups = [
        json!({
        "Error": object(&["error"], json!({ "error": object(&["code", "message"], json!({
            "code": { "type": "string" }, "message": { "type": "string" } })) })),
        "ValidationErrors": object(&["errors"], json!({ "errors": array(object(&["pointer", "message"], json!({
            "pointer": { "type": "string", "description": "JSON pointer" }, "message": { "type": "string" } }))) }))
        }),
        json!({
        "Signup": object(&["email", "password", "organization"], json!({
            "email": { "type": "string", "maxLength": 320 },
            "password": { "type": "string", "minLength": 10, "maxLength": 512 },
            "organization": text(200) })),
        "SignupAccepted": object(&["status", "email"], json!({
            "status": { "const": "confirmation_sent" },
            "email": { "type": "string", "description": "Where the mail went, as given (trimmed)" } })),
        "SignupConfirm": object(&["token"], json!({
            "token": { "type": "string", "description": "The token of the emailed link (`pcc_…`)" } })),
        "SignupResult": object(&["tenant_id", "user_id", "api_token"], json!({
            "tenant_id": uuid(), "user_id": uuid(), "api_token": { "type": "string" } })),
        "Login": object(&["email", "password"], json!({
            "email": { "type": "string" }, "password": { "type": "string" },
            "tenant_id": { "type": "string", "description": "Which organisation, when the user has several" } })),
        "LoginResult": object(&["tenant_id", "user_id", "csrf_token"], json!({
            "tenant_id": uuid(), "user_id": uuid(), "csrf_token": { "type": "string" } })),
        "Accept": object(&["token", "password"], json!({
            "token": { "type": "string" }, "password": { "type": "string" } })),
        "Joined": object(&["tenant_id", "user_id"], json!({ "tenant_id": uuid(), "user_id": uuid() })),
        "Me": object(&["tenant_id", "tenant_name", "user_id", "actor", "role", "csrf_token"], json!({
            "tenant_id": uuid(), "tenant_name": { "type": "string" }, "user_id": nullable(uuid()),
            "actor": { "type": "string" }, "role": role(), "csrf_token": { "type": ["string", "null"] } }))
        }),
        json!({
        "Member": member,
        "Members": object(&["members"], json!({ "members": array(reference("Member")) })),
        "RoleChange": object(&["role"], json!({ "role": role() })),
        "InvitationInput": object(&["email", "role"], json!({
            "email": { "type": "string", "maxLength": 320 }, "role": role() })),
        "Invitation": { "type": "object", "required": ["id", "email", "role", "created_at", "expires_at", "accepted_at"], "properties": invitation },
        "NewInvitation": { "type": "object", "required": ["id", "email", "role", "created_at", "expires_at", "accepted_at", "token", "url"], "properties": new_invitation },
        "Invitations": object(&["invitations"], json!({ "invitations": array(reference("Invitation")) })),
        "TokenInput": object(&["name", "role"], json!({
            "name": text(100), "role": role(),
            "expires_in_days": { "type": ["integer", "null"], "minimum": 1, "maximum": 3650 } })),
        "ApiToken": { "type": "object", "required": api_token_required, "properties": api_token },
        "NewApiToken": { "type": "object", "required": new_api_token_required, "properties": new_api_token },
        "ApiTokens": object(&["tokens"], json!({ "tokens": array(reference("ApiToken")) })),
        "Settings": settings,
        "SignInChange": object(&["client_id"], json!({
            "client_id": { "type": "string", "minLength": 1, "maxLength": 500, "description": "The OpenID client the dashboard signs in as" },
            "client_secret": { "type": ["string", "null"], "maxLength": 2000, "writeOnly": true,
                "description": "The client's secret, sealed at rest and never shown; absent or empty keeps the stored one (required when none is)" },
            "allowed_email_domains": { "type": ["array", "null"], "maxItems": 50, "items": { "type": "string", "maxLength": 253 },
                "description": "Email domains whose people become viewers at their first sign-in" } })),
        "SignInSettings": object(&["identity_provider_id", "issuer", "client_id", "client_secret_set", "allowed_email_domains", "sign_in_url", "redirect_uri"], json!({
            "identity_provider_id": uuid(), "issuer": { "type": "string" },
            "client_id": { "type": ["string", "null"], "description": "Null: sign-in through this provider is not set up" },
            "client_secret_set": { "type": "boolean" },
            "allowed_email_domains": array(json!({ "type": "string" })),
            "sign_in_url": { "type": "string", "description": "The organisation's sign-in URL" },
            "redirect_uri": { "type": "string", "description": "The redirect URI to register with the provider" } })),
        "SettingsChange": object(&[], json!({
            "name": nullable(text(200)),
            "audit_retention_days": { "type": ["integer", "null"], "minimum": 1, "maximum": 3650 },
            "webhook_url": { "type": ["string", "null"], "description": "An http(s) URL; empty text removes the webhook" },
            "webhook_secret": { "type": ["string", "null"], "description": "Empty text removes it" },
            "password_sign_in_disabled": { "type": ["boolean", "null"],
                "description": "Turn password sign-in off (refused, 422, unless an identity provider with a client id and secret is set up) or on" } }))
        }),
        json!({
        "ServerInput": object(&["name", "url"], json!({
            "name": text(200),
            "url": { "type": "string", "pattern": http_url(),
                "description": "An http:// or https:// URL Portcullis may reach", "example": "https://mcp.example.com/mcp" },
            "transport": { "type": ["string", "null"], "enum": ["streamable_http", "sse", "", null] },
            "headers": { "type": ["object", "null"], "maxProperties": 20, "additionalProperties": { "type": "string", "maxLength": 8192 } },
            "block_changed_tools": { "type": ["boolean", "null"] } })),
        "ServerChange": object(&[], json!({
            "name": nullable(text(200)),
            "url": { "type": ["string", "null"], "pattern": http_url(), "description": "An http:// or https:// URL Portcullis may reach" },
            "transport": { "type": ["string", "null"], "enum": ["streamable_http", "sse", "", null] },
            "headers": { "type": ["object", "null"], "maxProperties": 20, "additionalProperties": { "type": "string", "maxLength": 8192 } },
            "block_changed_tools": { "type": ["boolean", "null"] } })),
        "Server": object(&["id", "name", "url", "transport", "header_names", "header_hints", "block_changed_tools"], json!({
            "id": uuid(), "name": { "type": "string" }, "url": { "type": "string" },
            "transport": { "type": "string", "enum": ["streamable_http", "sse"] },
            "header_names": array(json!({ "type": "string" })),
            "header_hints": { "type": "object", "additionalProperties": { "type": "string" } },
            "block_changed_tools": { "type": "boolean" },
            "last_discovered_at": nullable(time()) })),
        "Servers": object(&["servers"], json!({ "servers": array(reference("Server")) })),
        "Resealed": object(&["resealed", "key_id"], json!({
            "resealed": { "type": "integer", "minimum": 0 }, "key_id": { "type": "integer", "minimum": 0 } })),
        }),
        json!({
        "Tool": tool,
        "Tools": object(&["tools", "removed"], json!({
            "tools": array(reference("Tool")), "removed": array(reference("Tool")) })),
        "Discovery": object(&["tools", "removed", "changes"], json!({
            "tools": array(reference("Tool")), "removed": array(reference("Tool")),
            "changes": object(&["added", "changed", "removed"], json!({
                "added": array(json!({ "type": "string" })), "changed": array(json!({ "type": "string" })),
                "removed": array(json!({ "type": "string" })) })),
            "server_info": {} })),
        "ConnectionTest": object(&["ok"], json!({ "ok": { "type": "boolean" }, "server_info": {} })),
        }),
        json!({
        "Overview": object(&["hours", "bucket_minutes", "buckets", "top_tools", "top_denied_rules"], json!({
            "hours": { "type": "integer", "minimum": 1, "maximum": 720 },
            "bucket_minutes": { "type": "integer", "minimum": 1 },
            "buckets": array(object(&["start", "calls", "denials", "rate_limited"], json!({
                "start": time(), "calls": { "type": "integer" }, "denials": { "type": "integer" },
                "rate_limited": { "type": "integer" } }))),
            "top_tools": array(object(&["tool", "calls", "blocked"], json!({
                "tool": { "type": "string" }, "calls": { "type": "integer" }, "blocked": { "type": "integer" } }))),
            "top_denied_rules": array(object(&["rule", "count"], json!({
                "rule": { "type": "string" }, "count": { "type": "integer" } }))) }))
        }),
        json!({
        "PolicyInput": object(&["name", "document"], json!({
            "name": text(200), "document": policy_document() })),
        "PolicyChange": object(&["document"], json!({
            "name": nullable(text(200)), "document": policy_document() })),
        "PolicyDocument": object(&["document"], json!({ "document": policy_document() })),
        "Valid": object(&["valid"], json!({ "valid": { "const": true } })),
        "PolicyCreated": object(&["id", "version", "name", "server_id"], json!({
            "id": uuid(), "version": { "type": "integer", "minimum": 1 }, "name": { "type": "string" }, "server_id": uuid() })),
        "PolicyVersion": object(&["id", "version"], json!({ "id": uuid(), "version": { "type": "integer", "minimum": 1 } })),
        "Policy": { "type": "object", "required": ["id", "server_id", "name", "version", "current_version", "created_at", "updated_at", "document"], "properties": policy_with_document },
        "Policies": object(&["policies"], json!({ "policies": array(policy_summary) })),
        "Version": object(&["version", "document", "created_by", "created_at"], json!({
            "version": { "type": "integer", "minimum": 1 }, "document": { "type": "object" },
            "created_by": { "type": ["string", "null"] }, "created_at": time() })),
        "Versions": object(&["versions"], json!({ "versions": array(reference("Version")) })),
        "Diff": object(&["from", "to", "lines", "text"], json!({
            "from": { "type": "integer" }, "to": { "type": "integer" },
            "lines": array(object(&["op", "text"], json!({
                "op": { "type": "string", "enum": [" ", "-", "+"] }, "text": { "type": "string" } }))),
            "text": { "type": "string" } })),
        "TestCall": object(&["tool"], json!({
            "tool": text(500),
            "arguments": { "type": ["object", "null"] },
            "identity": { "type": ["string", "null"] },
            "document": { "type": ["object", "null"], "description": "A draft; the current version when absent" } })),
        "TestResult": object(&["tool", "category", "visible", "decision"], json!({
            "tool": { "type": "string" }, "category": { "type": ["string", "null"] },
            "visible": { "type": "boolean" },
            "decision": object(&["decision", "rule", "message", "charges", "monitor", "validate"], json!({
                "decision": { "type": "string", "enum": ["allow", "deny", "hidden", "approval_required", "confirmation_required"] },
                "rule": { "type": "string" }, "message": { "type": "string" },
                "charges": { "type": "array" }, "monitor": { "type": "boolean" }, "validate": { "type": "boolean" },
                "approval_timeout_ms": { "type": "integer" },
                "confirmation": object(&["message", "timeout_ms"], json!({
                    "message": { "type": "string", "description": "The rule's message as written" },
                    "timeout_ms": { "type": "integer" },
                    "then_approval": object(&["rule", "message", "timeout_ms"], json!({
                        "rule": { "type": "string" }, "message": { "type": "string" }, "timeout_ms": { "type": "integer" } })),
                    "fallback_approval": object(&["rule", "message", "timeout_ms"], json!({
                        "rule": { "type": "string" }, "message": { "type": "string" }, "timeout_ms": { "type": "integer" } })) })) })) }))
        }),
        json!({
        "GrantInput": object(&["server_id", "policy_id", "identity"], json!({
            "server_id": uuid(), "policy_id": uuid(), "identity": text(200),
            "label": { "type": ["string", "null"] },
            "expires_at": { "type": ["string", "null"], "description": "RFC 3339 (or YYYY-MM-DDTHH:MM, UTC), in the future; empty: never" } })),
        "GrantChange": object(&[], json!({
            "policy_id": { "type": ["string", "null"], "format": "uuid" },
            "label": { "type": ["string", "null"] },
            "expires_at": { "type": ["string", "null"], "description": "Empty text removes the expiry" } })),
        "Grant": grant,
        "Grants": object(&["grants"], json!({ "grants": array(reference("Grant")) })),
        "IssuedGrant": object(&["id", "token", "url", "header_url", "headers", "configs", "grant"], json!({
            "id": uuid(), "token": { "type": "string", "description": "Shown only here" },
            "url": { "type": "string", "description": "{gateway}/g/{token}/mcp" },
            "header_url": { "type": "string" }, "headers": { "type": "object" },
            "configs": { "type": "object" }, "grant": reference("Grant") }))
        }),
        json!({
        "IdentityProviderInput": object(&["issuer", "audience"], json!({
            "issuer": { "type": "string", "pattern": http_url(), "maxLength": 2000,
                "description": "The issuer exactly as tokens name it in `iss`: an http(s) URL Portcullis may reach, without query or fragment",
                "example": "https://login.example.com/oauth2/default" },
            "audience": { "type": "string", "pattern": http_url(), "maxLength": 2000,
                "description": "The gateway's URL as the provider names it; a token for server S must carry `{audience}/mcp/{S}` in `aud`",
                "example": "https://gateway.example.com" },
            "identity_claim": { "type": ["string", "null"], "enum": ["sub", "email", "", null], "description": "Default sub" },
            "groups_claim": { "type": ["string", "null"], "maxLength": 200, "description": "The claim listing the identity's groups; empty: none" } })),
        "IdentityProvider": object(&["id", "issuer", "audience", "identity_claim", "groups_claim", "created_at", "updated_at"], json!({
            "id": uuid(), "issuer": { "type": "string" }, "audience": { "type": "string" },
            "identity_claim": { "type": "string", "enum": ["sub", "email"] },
            "groups_claim": { "type": ["string", "null"] }, "created_at": time(), "updated_at": time() })),
        "IdentityProviders": object(&["identity_providers"], json!({ "identity_providers": array(reference("IdentityProvider")) })),
        "BindingInput": object(&["server_id", "policy_id"], json!({
            "server_id": uuid(), "policy_id": { "type": "string", "format": "uuid", "description": "One of the server's policies" },
            "identity": { "type": ["string", "null"], "maxLength": 200, "description": "A verified identity; empty or absent: none" },
            "group": { "type": ["string", "null"], "maxLength": 200, "description": "A group; empty or absent: none. Neither identity nor group: every verified identity of the organisation" } })),
        "Binding": object(&["id", "server_id", "policy_id", "identity", "group", "server_name", "policy_name", "created_at"], json!({
            "id": uuid(), "server_id": uuid(), "policy_id": uuid(),
            "identity": { "type": ["string", "null"] }, "group": { "type": ["string", "null"] },
            "server_name": { "type": "string" }, "policy_name": { "type": "string" }, "created_at": time() })),
        "Bindings": object(&["bindings"], json!({ "bindings": array(reference("Binding")) }))
        }),
        json!({
        "AuditPage": object(&["events", "next_cursor"], json!({
            "next_cursor": { "type": ["string", "null"] },
            "events": array(event_summary) })),
        "AuditEvent": { "type": "object", "required": summary_required, "properties": detail },
        "AdminAudit": object(&["entries", "next_before"], json!({
            "next_before": nullable(uuid()),
            "entries": array(object(&["id", "actor_label", "actor_id", "action", "object_kind", "object_id", "before", "after", "created_at"], json!({
                "id": uuid(), "actor_label": { "type": "string" }, "actor_id": nullable(uuid()),
                "action": { "type": "string" }, "object_kind": { "type": "string" }, "object_id": { "type": "string" },
                "before": {}, "after": {}, "created_at": time() }))) })),
        "Approval": approval,
        "Approvals": object(&["approvals"], json!({ "approvals": array(reference("Approval")) })),
        "Note": object(&[], json!({ "note": { "type": ["string", "null"] } }))
        }),
    ];
    let mut all = Map::new();
    for group in groups.into_iter().chain([tool_schemas()]) {
        if let Value::Object(schemas) = group {
            all.extend(schemas);
        }
    }
    Value::Object(all)
}

/// The tool page's and the catalogue's answers.
fn tool_schemas() -> Value {
    let governing = json!({ "type": ["object", "null"], "properties": {
        "match": { "type": "string", "enum": ["exact", "glob", "category", "default"] },
        "rule": { "type": "string", "description": "JSON pointer, (hidden), (default deny) or (default allow)" },
        "effect": { "type": "string", "enum": ["hidden", "deny", "allow", "approval"] },
        "require": { "type": "integer" }, "deny_if": { "type": "integer" }, "approval_conditional": { "type": "boolean" },
        "confirm": { "type": "boolean", "description": "The agent's user confirms each call (confirm)" },
        "limits": { "type": "array", "items": { "type": "object" } }, "validate": { "type": "boolean" }, "monitor": { "type": "boolean" } } });
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
                    "governing": governing,
                    "summary": { "type": "string" }, "governed": { "type": "boolean" } } } },
                "governed": { "type": "boolean" },
                "recommended": { "type": ["object", "null"], "description": "policy.json fragment" },
                "guidance": { "type": "array", "items": { "type": "object", "properties": {
                    "action": { "type": "string", "enum": ["confirm", "rate_limit", "block", "approval"] }, "text": { "type": "string" }, "json": { "type": "object" } } } },
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

/// An answer whose `links` lead from the object it made (or lists) to operations on it.
fn linked(
    (status, mut value): (String, Value),
    links: &[(&str, &str, &str, &str)],
) -> (String, Value) {
    let mut map = Map::new();
    for (name, operation, parameter, expression) in links {
        map.insert(
            (*name).to_owned(),
            json!({ "operationId": operation, "parameters": { *parameter: expression } }),
        );
    }
    value["links"] = Value::Object(map);
    (status, value)
}

/// Adds to an answer a link to the version it made of a policy (its `id` and `version`).
fn version_link((status, mut value): (String, Value)) -> (String, Value) {
    value["links"]["Version"] = json!({
        "operationId": operation_id("GET", "/api/v1/policies/{id}/versions/{version}"),
        "parameters": { "id": "$response.body#/id", "version": "$response.body#/version" },
    });
    (status, value)
}

/// The operation id of a route: method and path, `/` and braces as `_`.
fn operation_id(method: &str, path: &str) -> String {
    format!(
        "{}{}",
        method.to_lowercase(),
        path.trim_start_matches("/api/v1")
            .replace(['/', '{', '}', '-', '.'], "_")
    )
}

/// Operations on a server, reached from an answer holding its id at `pointer`.
fn server_links(pointer: &str) -> Vec<(&'static str, String, &'static str, String)> {
    [
        ("GetServer", "GET", "/api/v1/servers/{id}"),
        ("EditServer", "PATCH", "/api/v1/servers/{id}"),
        ("Tools", "GET", "/api/v1/servers/{id}/tools"),
        ("Overview", "GET", "/api/v1/servers/{id}/overview"),
        (
            "RecommendedPolicy",
            "GET",
            "/api/v1/servers/{id}/recommended-policy",
        ),
        ("Policies", "GET", "/api/v1/servers/{id}/policies"),
        ("CreatePolicy", "POST", "/api/v1/servers/{id}/policies"),
        ("DeleteServer", "DELETE", "/api/v1/servers/{id}"),
    ]
    .into_iter()
    .map(|(name, method, path)| {
        (
            name,
            operation_id(method, path),
            "id",
            format!("$response.body#{pointer}"),
        )
    })
    .collect()
}

fn policy_links(pointer: &str) -> Vec<(&'static str, String, &'static str, String)> {
    [
        ("GetPolicy", "GET", "/api/v1/policies/{id}"),
        ("SavePolicy", "PUT", "/api/v1/policies/{id}"),
        ("Versions", "GET", "/api/v1/policies/{id}/versions"),
        ("Diff", "GET", "/api/v1/policies/{id}/diff"),
        ("TestPolicy", "POST", "/api/v1/policies/{id}/test"),
        ("DeletePolicy", "DELETE", "/api/v1/policies/{id}"),
    ]
    .into_iter()
    .map(|(name, method, path)| {
        (
            name,
            operation_id(method, path),
            "id",
            format!("$response.body#{pointer}"),
        )
    })
    .collect()
}

fn grant_links(pointer: &str) -> Vec<(&'static str, String, &'static str, String)> {
    [
        ("GetGrant", "GET", "/api/v1/grants/{id}"),
        ("ChangeGrant", "PATCH", "/api/v1/grants/{id}"),
        ("RotateGrant", "POST", "/api/v1/grants/{id}/rotate"),
        ("RevokeGrant", "DELETE", "/api/v1/grants/{id}"),
    ]
    .into_iter()
    .map(|(name, method, path)| {
        (
            name,
            operation_id(method, path),
            "id",
            format!("$response.body#{pointer}"),
        )
    })
    .collect()
}

fn object_links(
    pointer: &str,
    operations: &[(&'static str, &'static str, &'static str)],
) -> Vec<(&'static str, String, &'static str, String)> {
    operations
        .iter()
        .map(|(name, method, path)| {
            (
                *name,
                operation_id(method, path),
                "id",
                format!("$response.body#{pointer}"),
            )
        })
        .collect()
}

fn with_links(
    answer: (String, Value),
    links: Vec<(&'static str, String, &'static str, String)>,
) -> (String, Value) {
    let borrowed: Vec<(&str, &str, &str, &str)> = links
        .iter()
        .map(|(n, o, p, e)| (*n, o.as_str(), *p, e.as_str()))
        .collect();
    linked(answer, &borrowed)
}

/// Request body and answers of a route (besides the errors every route may give).
fn shapes(route: &Route) -> (Option<Value>, Vec<(String, Value)>) {
    let invalid = || answer("422", "Invalid fields", Some("ValidationErrors"));
    let conflict = || answer("409", "Conflicts with the current state", Some("Error"));
    let done = || answer("204", "Done", None);
    match (route.method, route.path) {
        ("POST", "/api/v1/signup") => (
            Some(body("Signup")),
            vec![
                answer(
                    "202",
                    "A mail is on its way to the address: a confirmation link, or a notice that it has an account (the answer is the same)",
                    Some("SignupAccepted"),
                ),
                answer("422", "Fields not acceptable", Some("ValidationErrors")),
                answer(
                    "429",
                    "Too many sign-ups from this address or for this email (Retry-After)",
                    Some("Error"),
                ),
            ],
        ),
        ("POST", "/api/v1/signup/confirm") => (
            Some(body("SignupConfirm")),
            vec![
                answer(
                    "201",
                    "Confirmed: the organisation, its admin and an admin API token",
                    Some("SignupResult"),
                ),
                answer(
                    "400",
                    "The token does not work: unknown, used or expired (the same answer for each)",
                    Some("Error"),
                ),
            ],
        ),
        ("POST", "/api/v1/login") => (
            Some(body("Login")),
            vec![
                answer(
                    "200",
                    "Signed in; the session cookie is set",
                    Some("LoginResult"),
                ),
                answer("429", "Too many attempts", Some("Error")),
            ],
        ),
        ("POST", "/api/v1/invitations/accept") => (
            Some(body("Accept")),
            vec![
                answer("200", "Joined", Some("Joined")),
                invalid(),
                conflict(),
            ],
        ),
        ("GET", "/api/v1/openapi.json") => (
            None,
            vec![(
                "200".into(),
                json!({ "description": "This document", "content": { "application/json": { "schema": { "type": "object" } } } }),
            )],
        ),
        ("POST", "/api/v1/logout") => (None, vec![done()]),
        ("GET", "/api/v1/me") => (None, vec![answer("200", "The caller", Some("Me"))]),
        ("GET", "/api/v1/members") => (None, vec![answer("200", "Members", Some("Members"))]),
        ("PATCH", "/api/v1/members/{user_id}") => (
            Some(body("RoleChange")),
            vec![
                answer("200", "Changed", Some("Member")),
                invalid(),
                conflict(),
            ],
        ),
        ("DELETE", "/api/v1/members/{user_id}") => (None, vec![done(), conflict()]),
        ("GET", "/api/v1/invitations") => (
            None,
            vec![answer("200", "Invitations", Some("Invitations"))],
        ),
        ("POST", "/api/v1/invitations") => (
            Some(body("InvitationInput")),
            vec![
                linked(
                    answer("201", "Invited", Some("NewInvitation")),
                    &[(
                        "Withdraw",
                        "delete_invitations__id_",
                        "id",
                        "$response.body#/id",
                    )],
                ),
                invalid(),
                conflict(),
            ],
        ),
        ("GET", "/api/v1/tokens") => (None, vec![answer("200", "Tokens", Some("ApiTokens"))]),
        ("POST", "/api/v1/tokens") => (
            Some(body("TokenInput")),
            vec![
                linked(
                    answer("201", "Created", Some("NewApiToken")),
                    &[("Revoke", "delete_tokens__id_", "id", "$response.body#/id")],
                ),
                invalid(),
            ],
        ),
        ("GET", "/api/v1/identity-providers/{id}/sign-in") => (
            None,
            vec![answer("200", "Sign-in settings", Some("SignInSettings"))],
        ),
        ("PUT", "/api/v1/identity-providers/{id}/sign-in") => (
            Some(body("SignInChange")),
            vec![answer("200", "Saved", Some("SignInSettings")), invalid()],
        ),
        ("DELETE", "/api/v1/identity-providers/{id}/sign-in") => (None, vec![done(), conflict()]),
        ("GET", "/api/v1/settings") => (None, vec![answer("200", "Settings", Some("Settings"))]),
        ("PUT", "/api/v1/settings") => (
            Some(body("SettingsChange")),
            vec![answer("200", "Saved", Some("Settings")), invalid()],
        ),
        ("GET", "/api/v1/servers") => (None, vec![answer("200", "Servers", Some("Servers"))]),
        ("POST", "/api/v1/servers") => (
            Some(body("ServerInput")),
            vec![
                with_links(
                    answer("201", "Registered", Some("Server")),
                    server_links("/id"),
                ),
                invalid(),
                conflict(),
            ],
        ),
        ("POST", "/api/v1/servers/reseal") => (
            None,
            vec![answer(
                "200",
                "Credentials sealed again by the active key",
                Some("Resealed"),
            )],
        ),
        ("GET", "/api/v1/servers/{id}") => {
            (None, vec![answer("200", "The server", Some("Server"))])
        }
        ("PATCH", "/api/v1/servers/{id}") => (
            Some(body("ServerChange")),
            vec![
                answer("200", "Saved", Some("Server")),
                invalid(),
                conflict(),
            ],
        ),
        ("POST", "/api/v1/servers/{id}/test") => (
            None,
            vec![
                answer("200", "The server answered", Some("ConnectionTest")),
                answer("502", "The server could not be reached", Some("Error")),
            ],
        ),
        ("POST", "/api/v1/servers/{id}/discover") => (
            None,
            vec![
                answer("200", "The tools", Some("Discovery")),
                answer("502", "The server could not be reached", Some("Error")),
            ],
        ),
        ("GET", "/api/v1/servers/{id}/tools") => {
            (None, vec![answer("200", "The tools", Some("Tools"))])
        }
        ("GET", "/api/v1/servers/{id}/tools/{name}") => {
            (None, vec![answer("200", "The tool", Some("ToolReport"))])
        }
        ("GET", "/api/v1/tools") => (
            None,
            vec![answer("200", "The catalogue", Some("Catalogue"))],
        ),
        ("POST", "/api/v1/servers/{id}/tools/{name}/approve") => {
            (None, vec![answer("200", "Approved", Some("Tool"))])
        }
        ("GET", "/api/v1/servers/{id}/overview") => {
            (None, vec![answer("200", "Overview", Some("Overview"))])
        }
        ("GET", "/api/v1/servers/{id}/recommended-policy") => (
            None,
            vec![answer("200", "A policy document", Some("PolicyDocument"))],
        ),
        ("GET", "/api/v1/servers/{id}/policies") => {
            (None, vec![answer("200", "Policies", Some("Policies"))])
        }
        ("POST", "/api/v1/servers/{id}/policies") => (
            Some(body("PolicyInput")),
            vec![
                version_link(with_links(
                    answer("201", "Created", Some("PolicyCreated")),
                    policy_links("/id"),
                )),
                invalid(),
                conflict(),
            ],
        ),
        ("POST", "/api/v1/policies/validate") => (
            Some(body("PolicyDocument")),
            vec![answer("200", "Valid", Some("Valid")), invalid()],
        ),
        ("GET", "/api/v1/policies/{id}") => (
            None,
            vec![answer(
                "200",
                "The policy and its current document",
                Some("Policy"),
            )],
        ),
        ("PUT", "/api/v1/policies/{id}") => (
            Some(body("PolicyChange")),
            vec![
                version_link(answer("200", "Saved", Some("PolicyVersion"))),
                invalid(),
                conflict(),
            ],
        ),
        ("DELETE", "/api/v1/policies/{id}") => (None, vec![done(), conflict()]),
        ("GET", "/api/v1/policies/{id}/versions") => {
            (None, vec![answer("200", "Versions", Some("Versions"))])
        }
        ("GET", "/api/v1/policies/{id}/versions/{version}") => {
            (None, vec![answer("200", "The version", Some("Version"))])
        }
        ("GET", "/api/v1/policies/{id}/diff") => {
            (None, vec![answer("200", "The diff", Some("Diff"))])
        }
        ("POST", "/api/v1/policies/{id}/test") => (
            Some(body("TestCall")),
            vec![answer("200", "The decision", Some("TestResult")), invalid()],
        ),
        ("GET", "/api/v1/grants") => (None, vec![answer("200", "Grants", Some("Grants"))]),
        ("POST", "/api/v1/grants") => (
            Some(body("GrantInput")),
            vec![
                with_links(
                    answer("201", "Issued", Some("IssuedGrant")),
                    grant_links("/id"),
                ),
                invalid(),
            ],
        ),
        ("GET", "/api/v1/grants/{id}") => (None, vec![answer("200", "The grant", Some("Grant"))]),
        ("PATCH", "/api/v1/grants/{id}") => (
            Some(body("GrantChange")),
            vec![answer("200", "Changed", Some("Grant")), invalid()],
        ),
        ("DELETE", "/api/v1/grants/{id}") => (None, vec![done()]),
        ("POST", "/api/v1/grants/{id}/rotate") => (
            None,
            vec![answer("200", "Rotated", Some("IssuedGrant")), conflict()],
        ),
        ("GET", "/api/v1/identity-providers") => (
            None,
            vec![answer("200", "Providers", Some("IdentityProviders"))],
        ),
        ("POST", "/api/v1/identity-providers") => (
            Some(body("IdentityProviderInput")),
            vec![
                with_links(
                    answer("201", "Added", Some("IdentityProvider")),
                    object_links(
                        "/id",
                        &[
                            (
                                "GetIdentityProvider",
                                "GET",
                                "/api/v1/identity-providers/{id}",
                            ),
                            (
                                "ReplaceIdentityProvider",
                                "PUT",
                                "/api/v1/identity-providers/{id}",
                            ),
                            (
                                "DeleteIdentityProvider",
                                "DELETE",
                                "/api/v1/identity-providers/{id}",
                            ),
                        ],
                    ),
                ),
                invalid(),
                conflict(),
            ],
        ),
        ("GET", "/api/v1/identity-providers/{id}") => (
            None,
            vec![answer("200", "The provider", Some("IdentityProvider"))],
        ),
        ("PUT", "/api/v1/identity-providers/{id}") => (
            Some(body("IdentityProviderInput")),
            vec![
                answer("200", "Replaced", Some("IdentityProvider")),
                invalid(),
                conflict(),
            ],
        ),
        ("DELETE", "/api/v1/identity-providers/{id}") => (None, vec![done()]),
        ("GET", "/api/v1/bindings") => (None, vec![answer("200", "Bindings", Some("Bindings"))]),
        ("POST", "/api/v1/bindings") => (
            Some(body("BindingInput")),
            vec![
                with_links(
                    answer("201", "Bound", Some("Binding")),
                    object_links(
                        "/id",
                        &[
                            ("GetBinding", "GET", "/api/v1/bindings/{id}"),
                            ("ReplaceBinding", "PUT", "/api/v1/bindings/{id}"),
                            ("DeleteBinding", "DELETE", "/api/v1/bindings/{id}"),
                        ],
                    ),
                ),
                invalid(),
                conflict(),
            ],
        ),
        ("GET", "/api/v1/bindings/{id}") => {
            (None, vec![answer("200", "The binding", Some("Binding"))])
        }
        ("PUT", "/api/v1/bindings/{id}") => (
            Some(body("BindingInput")),
            vec![
                answer("200", "Replaced", Some("Binding")),
                invalid(),
                conflict(),
            ],
        ),
        ("DELETE", "/api/v1/bindings/{id}") => (None, vec![done()]),
        ("GET", "/api/v1/audit") => (
            None,
            vec![answer("200", "A page", Some("AuditPage")), invalid()],
        ),
        ("GET", "/api/v1/audit/export") => (
            None,
            vec![
                (
                    "200".into(),
                    json!({ "description": "The events, oldest first", "content": {
                        "text/csv": { "schema": { "type": "string" } },
                        "application/x-ndjson": { "schema": { "type": "string" } } } }),
                ),
                invalid(),
            ],
        ),
        ("GET", "/api/v1/audit/tail") => (
            None,
            vec![
                (
                    "200".into(),
                    json!({ "description": "Server-Sent Events, one `events` event per batch", "content": {
                        "text/event-stream": { "schema": { "type": "string" } } } }),
                ),
                invalid(),
            ],
        ),
        ("GET", "/api/v1/audit/{id}") => {
            (None, vec![answer("200", "The event", Some("AuditEvent"))])
        }
        ("GET", "/api/v1/admin-audit") => (
            None,
            vec![answer("200", "Entries, newest first", Some("AdminAudit"))],
        ),
        ("GET", "/api/v1/approvals") => (None, vec![answer("200", "Approvals", Some("Approvals"))]),
        ("GET", "/api/v1/approvals/{id}") => {
            (None, vec![answer("200", "The approval", Some("Approval"))])
        }
        ("POST", "/api/v1/approvals/{id}/approve") | ("POST", "/api/v1/approvals/{id}/deny") => (
            Some(
                json!({ "required": false, "content": { "application/json": { "schema": reference("Note") } } }),
            ),
            vec![answer("200", "Decided", Some("Approval")), conflict()],
        ),
        ("DELETE", _) => (None, vec![done()]),
        _ => (None, vec![answer("200", "OK", None)]),
    }
}

/// A query parameter.
fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": description })
}

fn query_parameters(route: &Route) -> Vec<Value> {
    let decisions = "allow|deny|hidden|rate_limited|approval_required|confirmation_required|error";
    let audit_filters = || {
        vec![
            query("server_id", trimmed(UUID), "Only this server's events"),
            query("grant_id", trimmed(UUID), "Only this grant's events"),
            query("identity", json!({ "type": "string" }), "Exact identity"),
            query("tool", json!({ "type": "string" }), "Exact tool name"),
            query("decision", trimmed(decisions), "Only this decision"),
            query(
                "outcome",
                trimmed("failed"),
                "`failed`: forwarded calls that did not succeed upstream",
            ),
            query(
                "confirmation",
                trimmed("confirmed|declined|cancelled|timed_out"),
                "Only calls whose user gave this answer to a confirmation",
            ),
        ]
    };
    // RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` in UTC.
    let when = "[+-]?[0-9]+-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{1,2}(?::[0-9]{1,2}(?:[.,][0-9]+)?)?(?:[Zz]|[+-][0-9]{1,2}:?[0-9]{2})?";
    let times = || {
        vec![
            query("since", trimmed(when), "From (inclusive)"),
            query("until", trimmed(when), "To (exclusive)"),
        ]
    };
    match route.path {
        "/api/v1/audit" => [
            audit_filters(),
            times(),
            vec![
                query(
                    "cursor",
                    json!({ "type": "string" }),
                    "`next_cursor` of the previous page",
                ),
                query(
                    "limit",
                    trimmed("\\+?0*(?:[1-9][0-9]?|[1-4][0-9]{2}|500)"),
                    "Page size, 1 to 500 (default 50)",
                ),
            ],
        ]
        .concat(),
        "/api/v1/audit/export" => [
            audit_filters(),
            times(),
            vec![query(
                "format",
                json!({ "type": "string", "enum": ["csv", "jsonl"] }),
                "Default csv",
            )],
        ]
        .concat(),
        "/api/v1/audit/tail" => audit_filters(),
        "/api/v1/approvals" => vec![query(
            "status",
            trimmed("all|pending|approved|denied|expired|consumed"),
            "Default: all",
        )],
        "/api/v1/bindings" => vec![query(
            "server_id",
            trimmed(UUID),
            "Only this server's bindings",
        )],
        "/api/v1/grants" => vec![query(
            "server_id",
            json!({ "type": "string", "pattern": format!("^(?:{UUID})?$") }),
            "Only this server's grants",
        )],
        "/api/v1/policies/{id}/diff" => vec![
            query(
                "from",
                json!({ "type": "integer", "minimum": 1, "maximum": 2147483647 }),
                "Older version (default: the one before `to`)",
            ),
            query(
                "to",
                json!({ "type": "integer", "minimum": 1, "maximum": 2147483647 }),
                "Newer version (default: the current one)",
            ),
        ],
        "/api/v1/servers/{id}/overview" => vec![query(
            "hours",
            json!({ "type": "integer", "minimum": 1, "maximum": 720 }),
            "Hours covered (default 24)",
        )],
        "/api/v1/admin-audit" => vec![
            query(
                "object_kind",
                json!({ "type": "string" }),
                "Only entries about this kind of object",
            ),
            query(
                "before",
                json!({ "type": "string", "pattern": format!("^{UUID}$") }),
                "Entries older than this entry id",
            ),
            query(
                "limit",
                json!({ "type": "integer", "minimum": 1, "maximum": 200 }),
                "Page size (default 50)",
            ),
        ],
        "/api/v1/tools" => ["risk", "category", "status", "governed", "q", "sort", "dir"]
            .into_iter()
            .map(|name| {
                query(
                    name,
                    json!({ "type": "string" }),
                    "A filter of the catalogue (docs/api.md)",
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A path parameter's schema.
fn path_parameter(route: &Route, name: &str) -> Value {
    match (route.path, name) {
        (_, "version") => json!({ "type": "integer", "minimum": 1, "maximum": 2147483647 }),
        (p, "id") if p.starts_with("/api/v1/approvals/") => {
            json!({ "type": "string", "pattern": "^apr_[a-z2-7]{26}$" })
        }
        (_, "name") => json!({ "type": "string", "minLength": 1 }),
        _ => uuid(),
    }
}

/// The document.
pub fn build() -> Value {
    let mut paths = Map::new();
    for route in API {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_parameter(route, name) }))
            .collect();
        parameters.extend(query_parameters(route));
        let (request, answers) = shapes(route);
        let mut responses = Map::new();
        for (status, value) in answers {
            responses.insert(status, value);
        }
        if request.is_some() || !query_parameters(route).is_empty() {
            responses
                .entry("422")
                .or_insert_with(|| json!({ "description": "Invalid fields", "content": { "application/json": { "schema": reference("ValidationErrors") } } }));
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
            responses
                .entry(status)
                .or_insert_with(|| json!({ "description": description, "content": { "application/json": { "schema": reference("Error") } } }));
        }
        let tag = route
            .path
            .trim_start_matches("/api/v1/")
            .split('/')
            .next()
            .unwrap_or("api");
        let mut operation = json!({
            "operationId": operation_id(route.method, route.path),
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
