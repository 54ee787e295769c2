//! Tenant isolation and roles, over the whole route table (`routes::API` and `routes::PAGES`):
//! another tenant's ids answer 404 and leak nothing; a viewer changes nothing; a policy manager
//! reads no credential and no grant token.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod cp_support;

use std::collections::HashMap;

use cp_support::{Api, Stack, Upstream, audit_event, eventually, push_events};
use portcullis_control_plane::routes::{API, Access, PAGES};
use serde_json::{Value, json};

/// Everything one tenant owns, with the ids the route table's parameters need.
struct World {
    api: Api,
    ids: HashMap<&'static str, String>,
    secret: String,
    names: Vec<String>,
}

async fn world(stack: &Stack, upstream: &Upstream, email: &str, org: &str, secret: &str) -> World {
    let api = stack.signup(email, org).await;
    let server_name = format!("{org}-server");
    let server = api
        .expect(
            "POST",
            "/api/v1/servers",
            Some(json!({ "name": server_name, "url": upstream.url, "headers": { "x-api-key": secret } })),
            201,
        )
        .await;
    let sid = server["id"].as_str().unwrap().to_owned();
    api.expect(
        "POST",
        &format!("/api/v1/servers/{sid}/discover"),
        None,
        200,
    )
    .await;
    let policy = api
        .expect(
            "POST",
            &format!("/api/v1/servers/{sid}/policies"),
            Some(json!({ "name": format!("{org}-policy"), "document": { "version": "1", "tools": { "list_messages": {} } } })),
            201,
        )
        .await;
    let pid = policy["id"].as_str().unwrap().to_owned();
    api.expect(
        "PUT",
        &format!("/api/v1/policies/{pid}"),
        Some(json!({ "document": { "version": "1", "tools": {} } })),
        200,
    )
    .await;
    let grant = api
        .expect(
            "POST",
            "/api/v1/grants",
            Some(json!({ "server_id": sid, "policy_id": pid, "identity": format!("{org}-agent") })),
            201,
        )
        .await;
    let gid = grant["id"].as_str().unwrap().to_owned();
    let provider = api
        .expect(
            "POST",
            "/api/v1/identity-providers",
            Some(json!({ "issuer": format!("https://login.{org}.example"), "audience": "https://gateway.example" })),
            201,
        )
        .await;
    let binding = api
        .expect(
            "POST",
            "/api/v1/bindings",
            Some(json!({ "server_id": sid, "policy_id": pid, "identity": format!("{org}-agent") })),
            201,
        )
        .await;
    let approval = portcullis_core::ApprovalId::new().to_string();
    sqlx::query(
        "INSERT INTO approvals (id, tenant_id, grant_id, server_id, identity, tool, fingerprint, expires_at)
         VALUES ($1, $2::uuid, $3::uuid, $4::uuid, 'agent', 'create_payment', $1, now() + interval '1 hour')",
    )
    .bind(&approval)
    .bind(&api.tenant_id)
    .bind(&gid)
    .bind(&sid)
    .execute(stack.db.pool())
    .await
    .unwrap();
    let event = audit_event(
        &api.tenant_id,
        &sid,
        &gid,
        &format!("{org}-agent"),
        "list_messages",
        "allow",
        None,
    );
    let event_id = event["id"].as_str().unwrap().to_owned();
    push_events(&stack.redis, &[event]).await;
    let invitation = api
        .expect(
            "POST",
            "/api/v1/invitations",
            Some(json!({ "email": format!("viewer@{org}.example"), "role": "viewer" })),
            201,
        )
        .await;
    // A second member, who joins through an invitation.
    let joining = api
        .expect(
            "POST",
            "/api/v1/invitations",
            Some(json!({ "email": format!("pm@{org}.example"), "role": "policy_manager" })),
            201,
        )
        .await;
    let joined = api
        .expect(
            "POST",
            "/api/v1/invitations/accept",
            Some(json!({ "token": joining["token"], "password": "another good password" })),
            200,
        )
        .await;
    let token = api
        .expect(
            "POST",
            "/api/v1/tokens",
            Some(json!({ "name": format!("{org}-ci"), "role": "viewer" })),
            201,
        )
        .await;
    let mut ids = HashMap::new();
    ids.insert("server", sid);
    ids.insert("policy", pid);
    ids.insert("grant", gid);
    ids.insert("approval", approval);
    ids.insert("event", event_id);
    ids.insert("invitation", invitation["id"].as_str().unwrap().to_owned());
    ids.insert("member", joined["user_id"].as_str().unwrap().to_owned());
    ids.insert("token", token["id"].as_str().unwrap().to_owned());
    ids.insert(
        "identity_provider",
        provider["id"].as_str().unwrap().to_owned(),
    );
    ids.insert("binding", binding["id"].as_str().unwrap().to_owned());
    ids.insert(
        "invitation_token",
        invitation["token"].as_str().unwrap().to_owned(),
    );
    World {
        names: vec![
            server_name,
            format!("{org}-policy"),
            format!("{org}-agent"),
            format!("{org}-ci"),
        ],
        api,
        ids,
        secret: secret.to_owned(),
    }
}

/// The path with the world's ids in place of the parameters.
fn concrete(path: &str, w: &World) -> String {
    let id_for = |path: &str| -> &str {
        let kind = if path.contains("/servers/") {
            "server"
        } else if path.contains("/policies/") {
            "policy"
        } else if path.contains("/grants/") {
            "grant"
        } else if path.contains("/approvals/") {
            "approval"
        } else if path.contains("/audit/") {
            "event"
        } else if path.contains("/invitations/") {
            "invitation"
        } else if path.contains("/tokens/") {
            "token"
        } else if path.contains("/identity-providers/") {
            "identity_provider"
        } else if path.contains("/bindings/") {
            "binding"
        } else {
            panic!("no id kind for {path}")
        };
        &w.ids[kind]
    };
    path.replace("{user_id}", &w.ids["member"])
        .replace("{name}", "list_messages")
        .replace("{version}", "1")
        .replace("{token}", &w.ids["invitation_token"])
        .replace(
            "{id}",
            if path.contains("{id}") {
                id_for(path)
            } else {
                ""
            },
        )
}

/// A body that would succeed if the ids were the caller's.
fn body_for(method: &str, path: &str, w: &World) -> Option<Value> {
    if method == "GET" || method == "DELETE" {
        return None;
    }
    Some(match path {
        "/api/v1/servers/{id}" => json!({ "name": "renamed" }),
        "/api/v1/servers/{id}/policies" => json!({ "name": "new", "document": { "version": "1" } }),
        "/api/v1/policies/{id}" => json!({ "document": { "version": "1", "default": "allow" } }),
        "/api/v1/policies/{id}/test" => json!({ "tool": "list_messages", "arguments": {} }),
        "/api/v1/grants/{id}" => json!({ "label": "stolen" }),
        "/api/v1/identity-providers/{id}" => {
            json!({ "issuer": "https://login.thief.example", "audience": "https://gateway.example" })
        }
        "/api/v1/bindings/{id}" | "/api/v1/bindings" => {
            json!({ "server_id": w.ids["server"], "policy_id": w.ids["policy"], "group": "thieves" })
        }
        "/api/v1/members/{user_id}" => json!({ "role": "viewer" }),
        "/api/v1/grants" => {
            json!({ "server_id": w.ids["server"], "policy_id": w.ids["policy"], "identity": "thief" })
        }
        "/api/v1/approvals/{id}/approve" | "/api/v1/approvals/{id}/deny" => json!({ "note": "x" }),
        _ => json!({}),
    })
}

fn leaks(body: &str, w: &World) -> Option<String> {
    let mut needles: Vec<&str> = w
        .ids
        .iter()
        .filter(|(k, _)| **k != "invitation_token")
        .map(|(_, v)| v.as_str())
        .collect();
    needles.push(&w.secret);
    needles.extend(w.names.iter().map(String::as_str));
    needles
        .into_iter()
        .find(|n| body.contains(n))
        .map(str::to_owned)
}

#[tokio::test]
async fn every_route_hides_other_tenants_and_enforces_roles() {
    let stack = Stack::start().await;
    let upstream = Upstream::start("shared-upstream-key-0001").await;
    // Both tenants point at one upstream (the key check is the upstream's, not ours).
    let a = world(
        &stack,
        &upstream,
        "admin@a.example",
        "alpha",
        "shared-upstream-key-0001",
    )
    .await;
    let b = world(
        &stack,
        &upstream,
        "admin@b.example",
        "bravo",
        "shared-upstream-key-0001",
    )
    .await;
    let a = World {
        secret: "alpha-no-secret-visible".into(),
        ..a
    };
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
                .fetch_one(stack.db.pool())
                .await
                .unwrap()
                == 2
        })
        .await
    );
    let b_probe = World {
        secret: "never-matches-anything-xyz".into(),
        api: b.api.clone(),
        ids: b.ids.clone(),
        names: b.names.clone(),
    };

    // 1. Tenant A's admin, with tenant B's ids, on every API route.
    let mut checked = 0;
    for route in API {
        if route.access == Access::Public || route.path.ends_with("/tail") {
            continue;
        }
        let path = concrete(route.path, &b_probe);
        let body = body_for(route.method, route.path, &b_probe);
        let (status, answer) = a.api.call(route.method, &path, body).await;
        let text = answer.to_string();
        let creates_on_their_server =
            route.method == "POST" && matches!(route.path, "/api/v1/grants" | "/api/v1/bindings");
        if route.path.contains('{') || creates_on_their_server {
            assert_eq!(
                status, 404,
                "{} {} with another tenant's ids: {text}",
                route.method, route.path
            );
            assert_eq!(
                answer["error"]["code"], "not_found",
                "{} {}",
                route.method, route.path
            );
        }
        if let Some(leak) = leaks(&text, &b_probe) {
            panic!("{} {} leaked {leak}: {text}", route.method, route.path);
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} routes checked");

    // Nothing of B changed.
    let b_server = b
        .api
        .expect(
            "GET",
            &format!("/api/v1/servers/{}", b.ids["server"]),
            None,
            200,
        )
        .await;
    assert_eq!(b_server["name"], "bravo-server");
    let b_grant = b
        .api
        .expect(
            "GET",
            &format!("/api/v1/grants/{}", b.ids["grant"]),
            None,
            200,
        )
        .await;
    assert_eq!(
        (b_grant["status"].as_str(), b_grant["label"].as_str()),
        (Some("active"), Some(""))
    );
    let b_policy = b
        .api
        .expect(
            "GET",
            &format!("/api/v1/policies/{}", b.ids["policy"]),
            None,
            200,
        )
        .await;
    assert_eq!(b_policy["version"], 2);
    let b_approval = b
        .api
        .expect(
            "GET",
            &format!("/api/v1/approvals/{}", b.ids["approval"]),
            None,
            200,
        )
        .await;
    assert_eq!(b_approval["status"], "pending");
    let b_members = b.api.expect("GET", "/api/v1/members", None, 200).await;
    assert_eq!(b_members["members"].as_array().unwrap().len(), 2);
    let b_tokens = b.api.expect("GET", "/api/v1/tokens", None, 200).await;
    assert!(
        b_tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["revoked_at"].is_null())
    );
    let b_invitations = b.api.expect("GET", "/api/v1/invitations", None, 200).await;
    assert_eq!(b_invitations["invitations"].as_array().unwrap().len(), 2);

    // 2. A viewer of A changes nothing, on every mutating route (with A's own ids).
    let viewer = a.api.token_of("viewer").await;
    for route in API {
        if matches!(route.access, Access::Public | Access::Viewer) {
            continue;
        }
        let path = concrete(route.path, &a);
        let (status, answer) = viewer
            .call(route.method, &path, body_for(route.method, route.path, &a))
            .await;
        assert_eq!(
            status, 403,
            "viewer {} {}: {answer}",
            route.method, route.path
        );
        assert_eq!(answer["error"]["code"], "forbidden");
    }
    let a_server = a
        .api
        .expect(
            "GET",
            &format!("/api/v1/servers/{}", a.ids["server"]),
            None,
            200,
        )
        .await;
    assert_eq!(a_server["name"], "alpha-server");
    let a_grant = a
        .api
        .expect(
            "GET",
            &format!("/api/v1/grants/{}", a.ids["grant"]),
            None,
            200,
        )
        .await;
    assert_eq!(a_grant["status"], "active");

    // 3. A policy manager reads no credential and no grant token, and cannot reach admin routes.
    let manager = a.api.token_of("policy_manager").await;
    let servers = manager.expect("GET", "/api/v1/servers", None, 200).await;
    assert_eq!(servers["servers"][0]["header_names"], json!(["x-api-key"]));
    assert_eq!(servers["servers"][0]["header_hints"], json!({}));
    let one = manager
        .expect(
            "GET",
            &format!("/api/v1/servers/{}", a.ids["server"]),
            None,
            200,
        )
        .await;
    assert!(!one.to_string().contains("shared-upstream-key"), "{one}");
    let grants = manager.expect("GET", "/api/v1/grants", None, 200).await;
    assert!(
        !grants.to_string().contains("pcg_")
            || grants["grants"][0]["token_hint"]
                .as_str()
                .unwrap()
                .ends_with('…')
    );
    assert!(grants["grants"][0].get("token").is_none());
    for route in API.iter().filter(|r| r.access == Access::Admin) {
        let path = concrete(route.path, &a);
        let (status, answer) = manager
            .call(route.method, &path, body_for(route.method, route.path, &a))
            .await;
        assert_eq!(
            status, 403,
            "policy manager {} {}: {answer}",
            route.method, route.path
        );
    }
    // The server page shows names only, never values, to a policy manager.
    let page = stack
        .http
        .get(format!("{}/servers/{}", stack.base, a.ids["server"]))
        .bearer_auth(&manager.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("x-api-key") && !page.contains("key-0001"));

    // 4. The dashboard: every page route with B's ids, as A's admin, is a 404 page.
    for route in PAGES {
        if route.access == Access::Public || !route.path.contains('{') {
            continue;
        }
        let path = concrete(route.path, &b_probe);
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let resp = cp_support::form(
            stack
                .http
                .request(method, format!("{}{path}", stack.base))
                .bearer_auth(&a.api.token),
            &[
                ("name", "x"),
                ("url", "http://127.0.0.1:9/"),
                ("role", "viewer"),
                ("policy_id", b.ids["policy"].as_str()),
            ],
        )
        .send()
        .await
        .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(
            status,
            404,
            "page {} {}: {}",
            route.method,
            route.path,
            &text[..text.len().min(300)]
        );
        if let Some(leak) = leaks(&text, &b_probe) {
            panic!("page {} {} leaked {leak}", route.method, route.path);
        }
    }
    // And a viewer is refused every mutating page.
    for route in PAGES {
        if matches!(route.access, Access::Public | Access::Viewer)
            || route.method == "GET" && route.access == Access::Viewer
        {
            continue;
        }
        let path = concrete(route.path, &a);
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let resp = cp_support::form(
            stack
                .http
                .request(method, format!("{}{path}", stack.base))
                .bearer_auth(&viewer.token),
            &[("name", "x")],
        )
        .send()
        .await
        .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            403,
            "viewer page {} {}",
            route.method,
            route.path
        );
    }
}
