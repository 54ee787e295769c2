//! Dashboard sign-in through the organisation's identity provider, over HTTP, against a real
//! OpenID provider (`oidc-provider` from npm, started by each test on 127.0.0.1): the whole
//! authorization code flow with PKCE, and what it refuses — a callback whose state is not the
//! browser's (login CSRF), an ID token for another sign-in's nonce, a code redeemed twice, an ID
//! token for another audience — plus first sign-in of an allowed domain and password sign-in
//! turned off.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod cp_support;

use cp_support::oidc::{self, Answer, Browser, Provider};
use cp_support::{Api, Stack};
use serde_json::{Value, json};

/// The organisation of the tests, with its provider set up for sign-in.
struct Org {
    stack: Stack,
    admin: Api,
    idp: Provider,
    provider_id: String,
}

async fn org(domains: &[&str]) -> Org {
    let (stack, redirect_uri) = oidc::stack().await;
    let idp = Provider::start(&redirect_uri);
    let admin = stack.signup("admin@acme.test", "Acme").await;
    let provider_id = oidc::set_up(&admin, &idp, domains).await;
    Org {
        stack,
        admin,
        idp,
        provider_id,
    }
}

impl Org {
    /// Starts a sign-in in `browser`: the provider's authorization URL it is sent to.
    async fn start(&self, browser: &mut Browser) -> String {
        let answer = browser
            .get(&format!(
                "{}/login/sso/{}",
                self.stack.base, self.provider_id
            ))
            .await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        let to = answer.location.unwrap();
        assert!(to.starts_with(&self.idp.issuer()), "{to}");
        to
    }

    /// Signs in as `login` at the provider: the callback URL it sends the browser back to.
    async fn at_provider(&self, browser: &mut Browser, authorize: &str, login: &str) -> String {
        let back = browser
            .sign_in_at_provider(authorize, &self.idp.issuer(), login)
            .await;
        assert!(
            back.starts_with(&format!("{}/login/sso/callback?", self.stack.base)),
            "{back}"
        );
        back
    }

    /// The whole flow for `login`; the callback's answer.
    async fn sign_in(&self, browser: &mut Browser, login: &str) -> Answer {
        let authorize = self.start(browser).await;
        let back = self.at_provider(browser, &authorize, login).await;
        browser.get(&back).await
    }

    /// Who the browser's session is (`/api/v1/me`), or the status when it has none.
    async fn me(&self, browser: &mut Browser) -> Result<Value, u16> {
        let answer = browser.get(&format!("{}/api/v1/me", self.stack.base)).await;
        if answer.status == 200 {
            Ok(serde_json::from_str(&answer.body).unwrap())
        } else {
            Err(answer.status)
        }
    }
}

/// One query parameter of a URL.
fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// `url` with one query parameter replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

fn assert_refused(answer: &Answer, status: u16, words: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(
        answer.body.contains(words),
        "{words:?} not in {}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_signs_in_through_the_provider_and_an_allowed_domain_joins_as_a_viewer() {
    let org = org(&["example.org"]).await;

    // The authorization request: code flow, PKCE S256, state and nonce, the registered client.
    let mut browser = Browser::new();
    let authorize = org.start(&mut browser).await;
    assert_eq!(param(&authorize, "response_type"), "code");
    assert_eq!(param(&authorize, "client_id"), oidc::CLIENT_ID);
    assert_eq!(param(&authorize, "code_challenge_method"), "S256");
    assert_eq!(param(&authorize, "code_challenge").len(), 43);
    assert!(param(&authorize, "state").len() >= 32);
    assert!(param(&authorize, "nonce").len() >= 32);
    assert!(
        browser
            .cookie(&org.stack.base, "pcsso")
            .is_some_and(|c| !c.contains(&param(&authorize, "state"))),
        "the flow cookie is sealed"
    );

    // The admin (an existing member; their domain is not an allowed one) signs in as themselves.
    let back = org
        .at_provider(&mut browser, &authorize, "admin@acme.test")
        .await;
    let answer = browser.get(&back).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(
        answer.location.unwrap(),
        format!("{}/servers", org.stack.base)
    );
    assert_eq!(browser.cookie(&org.stack.base, "pcsso"), None, "spent");
    let me = org.me(&mut browser).await.unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(me["actor"], "admin@acme.test");

    // A first sign-in of an allowed domain: a user without a password, a viewer.
    let mut newcomer = Browser::new();
    let answer = org.sign_in(&mut newcomer, "New.Person@Example.org").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    let me = org.me(&mut newcomer).await.unwrap();
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["tenant_id"], org.admin.tenant_id.as_str());
    let audit = org
        .admin
        .expect("GET", "/api/v1/admin-audit", None, 200)
        .await;
    let joined = audit.to_string().contains("\"via\":\"identity_provider\"");
    assert!(joined, "the joining is audited: {audit}");
    // Their second sign-in finds the same membership.
    let mut again = Browser::new();
    assert_eq!(
        org.sign_in(&mut again, "new.person@example.org")
            .await
            .status,
        303
    );
    let members = org.admin.expect("GET", "/api/v1/members", None, 200).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    // Without a password, password sign-in fails as a wrong password does.
    let (status, _) = org
        .admin
        .call(
            "POST",
            "/api/v1/login",
            Some(json!({ "email": "new.person@example.org", "password": "" })),
        )
        .await;
    assert_eq!(status, 400);

    // Someone of another domain, and no member: a clear refusal, no session.
    let mut outsider = Browser::new();
    let answer = org.sign_in(&mut outsider, "someone@elsewhere.test").await;
    assert_refused(&answer, 403, "is not a member of this organisation");
    assert_eq!(org.me(&mut outsider).await.err(), Some(401));

    // The sign-in page's entry finds the organisation by the email's domain.
    let mut by_email = Browser::new();
    let answer = by_email
        .post(
            &format!("{}/login/sso", org.stack.base),
            &[("email", "someone@EXAMPLE.org"), ("next", "/audit")],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .body
            .contains(&format!("/login/sso/{}?next=%2Faudit", org.provider_id)),
        "{}",
        answer.body
    );
    let answer = by_email
        .post(
            &format!("{}/login/sso", org.stack.base),
            &[("email", "someone@unknown.test")],
        )
        .await;
    assert_refused(&answer, 404, "No organisation signs in");

    // The settings never show the secret.
    let settings = org
        .admin
        .expect(
            "GET",
            &format!("/api/v1/identity-providers/{}/sign-in", org.provider_id),
            None,
            200,
        )
        .await;
    assert!(!settings.to_string().contains(oidc::CLIENT_SECRET));
    assert_eq!(settings["allowed_email_domains"], json!(["example.org"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_whose_state_is_not_the_browsers_is_refused() {
    let org = org(&[]).await;

    // The attacker signs in at the provider as themselves and keeps the callback URL…
    let mut attacker = Browser::new();
    let authorize = org.start(&mut attacker).await;
    let planted = org
        .at_provider(&mut attacker, &authorize, "admin@acme.test")
        .await;

    // …and makes the victim's browser, which started a sign-in of its own, open it.
    let mut victim = Browser::new();
    org.start(&mut victim).await;
    let answer = victim.get(&planted).await;
    assert_refused(&answer, 400, "its state does not match");
    assert_eq!(org.me(&mut victim).await.err(), Some(401));

    // A browser that started no sign-in at all.
    let mut fresh = Browser::new();
    let answer = fresh.get(&planted).await;
    assert_refused(&answer, 400, "was not started in this browser");
    assert_eq!(org.me(&mut fresh).await.err(), Some(401));

    // A forged flow cookie does not open.
    let mut forger = Browser::new();
    forger.set_cookie(&org.stack.base, "pcsso", "v1.AAAA");
    assert_refused(
        &forger.get(&planted).await,
        400,
        "was not started in this browser",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_issued_for_another_nonce_is_refused() {
    let org = org(&[]).await;
    let mut browser = Browser::new();
    let authorize = org.start(&mut browser).await;
    // The same state and PKCE challenge, but the provider is asked for another nonce: the code
    // redeems (the verifier matches), and the ID token it yields is not this sign-in's.
    let other = with_param(&authorize, "nonce", "a-nonce-of-another-sign-in");
    let back = org
        .at_provider(&mut browser, &other, "admin@acme.test")
        .await;
    let answer = browser.get(&back).await;
    assert_refused(&answer, 403, "nonce is not this sign-in");
    assert_eq!(org.me(&mut browser).await.err(), Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_is_redeemed_once() {
    let org = org(&[]).await;
    let mut browser = Browser::new();
    let authorize = org.start(&mut browser).await;
    let flow_cookie = browser.cookie(&org.stack.base, "pcsso").unwrap();
    let back = org
        .at_provider(&mut browser, &authorize, "admin@acme.test")
        .await;
    assert_eq!(browser.get(&back).await.status, 303);
    assert!(org.me(&mut browser).await.is_ok());

    // Someone who copied both the callback URL and the flow cookie replays them.
    let mut replay = Browser::new();
    replay.set_cookie(&org.stack.base, "pcsso", &flow_cookie);
    let answer = replay.get(&back).await;
    assert_refused(&answer, 403, "did not accept this sign-in");
    assert_eq!(org.me(&mut replay).await.err(), Some(401));
}

/// The provider's published keys, as the control plane fetches them.
async fn published_keys(issuer: &str) -> jsonwebtoken::jwk::JwkSet {
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    http.get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_audience_is_refused() {
    use portcullis_control_plane::sso::{TokenRefused, verify_id_token};

    let (_stack, redirect_uri) = oidc::stack().await;
    let idp = Provider::start(&redirect_uri);
    let keys = published_keys(&idp.issuer()).await;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(&idp.private_pem()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(idp.kid());
    let now = chrono::Utc::now().timestamp();
    let token = |aud: &str, exp: i64| {
        jsonwebtoken::encode(
            &header,
            &json!({ "iss": idp.issuer(), "aud": aud, "sub": "a@acme.test", "email": "a@acme.test",
                     "nonce": "n-1", "iat": now, "exp": exp }),
            &signing,
        )
        .unwrap()
    };
    let check = |token: &str, nonce: &str| {
        verify_id_token(&keys, token, &idp.issuer(), oidc::CLIENT_ID, nonce)
    };

    // Signed by the provider's own key, for this client: accepted.
    assert!(check(&token(oidc::CLIENT_ID, now + 300), "n-1").is_ok());
    // The same provider's token for another client (another application's ID token).
    let refused = check(&token("another-application", now + 300), "n-1");
    assert!(
        matches!(&refused, Err(TokenRefused::Invalid(e)) if e.to_string().contains("Audience")),
        "{refused:?}"
    );
    // Expired, and another sign-in's nonce.
    assert!(matches!(
        check(&token(oidc::CLIENT_ID, now - 600), "n-1"),
        Err(TokenRefused::Invalid(_))
    ));
    assert!(matches!(
        check(&token(oidc::CLIENT_ID, now + 300), "n-2"),
        Err(TokenRefused::Nonce)
    ));
    // Another issuer's claim.
    assert!(matches!(
        verify_id_token(
            &keys,
            &token(oidc::CLIENT_ID, now + 300),
            "http://127.0.0.1:1",
            oidc::CLIENT_ID,
            "n-1"
        ),
        Err(TokenRefused::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sign_in_can_be_turned_off_once_the_provider_signs_people_in() {
    let (stack, redirect_uri) = oidc::stack().await;
    let idp = Provider::start(&redirect_uri);
    let admin = stack.signup("admin@acme.test", "Acme").await;
    let password = json!({ "email": "admin@acme.test", "password": "correct horse battery" });

    // Without a provider to sign in with, turning passwords off would lock everyone out.
    let (status, body) = admin
        .call(
            "PUT",
            "/api/v1/settings",
            Some(json!({ "password_sign_in_disabled": true })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/password_sign_in_disabled");

    let provider_id = oidc::set_up(&admin, &idp, &[]).await;
    let settings = admin
        .expect(
            "PUT",
            "/api/v1/settings",
            Some(json!({ "password_sign_in_disabled": true })),
            200,
        )
        .await;
    assert_eq!(settings["password_sign_in_disabled"], true);
    let audit = admin.expect("GET", "/api/v1/admin-audit", None, 200).await;
    assert!(
        audit.to_string().contains("settings.update"),
        "audited: {audit}"
    );

    // The right password no longer opens a session; the provider does.
    let (status, body) = admin
        .call("POST", "/api/v1/login", Some(password.clone()))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("identity provider"), "{body}");
    let page = cp_support::form(
        stack.http.post(format!("{}/login", stack.base)),
        &[
            ("email", "admin@acme.test"),
            ("password", "correct horse battery"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(page.status(), 401);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("signs in through its identity provider")
    );
    let org = Org {
        stack,
        admin,
        idp,
        provider_id,
    };
    let mut browser = Browser::new();
    assert_eq!(
        org.sign_in(&mut browser, "admin@acme.test").await.status,
        303
    );
    assert_eq!(org.me(&mut browser).await.unwrap()["role"], "admin");

    // The only provider's sign-in cannot be removed while passwords are off.
    let path = format!("/api/v1/identity-providers/{}/sign-in", org.provider_id);
    let (status, _) = org.admin.call("DELETE", &path, None).await;
    assert_eq!(status, 409);

    // Turned on again, the password works again, and the sign-in can go.
    org.admin
        .expect(
            "PUT",
            "/api/v1/settings",
            Some(json!({ "password_sign_in_disabled": false })),
            200,
        )
        .await;
    let (status, body) = org
        .admin
        .call("POST", "/api/v1/login", Some(password))
        .await;
    assert_eq!(status, 200, "{body}");
    org.admin.expect("DELETE", &path, None, 204).await;
    let mut later = Browser::new();
    let answer = later
        .get(&format!("{}/login/sso/{}", org.stack.base, org.provider_id))
        .await;
    assert_eq!(answer.status, 404);
}
