//! A real OpenID provider for dashboard sign-in tests (`oidc-provider` from npm,
//! `tests/peers/oidc_provider.mjs`, on 127.0.0.1), and a cookie-keeping HTTP client that walks
//! its development login and consent pages as a browser would.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use portcullis_tests::peers::{free_port, peers_dir};
use reqwest::header;
use serde_json::{Value, json};

use super::{Api, Stack};

/// The dashboard's OpenID client at the provider.
pub const CLIENT_ID: &str = "dashboard";
/// Its secret.
pub const CLIENT_SECRET: &str = "dashboard-secret-for-tests";

/// `oidc-provider` on a free loopback port, killed when dropped. Its development login page
/// accepts any login name with any password: the name becomes the person's `sub` and `email`
/// (`email_verified: true`).
pub struct Provider {
    child: Child,
    port: u16,
    jwks: PathBuf,
}

impl Provider {
    /// Starts it with the dashboard client registered for `redirect_uri`.
    pub fn start(redirect_uri: &str) -> Self {
        let dir = peers_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: run deploy/local/test once to install the test peers"
        );
        let port = free_port();
        let jwks = std::env::temp_dir().join(format!(
            "portcullis-sso-idp-{}.json",
            uuid::Uuid::now_v7().simple()
        ));
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("--require")
            .arg(dir.join("loopback.cjs"))
            .arg(dir.join("oidc_provider.mjs"))
            .env("PORT", port.to_string())
            .env("JWKS_FILE", &jwks)
            .env("DASHBOARD_REDIRECT_URI", redirect_uri)
            .env("DASHBOARD_SECRET", CLIENT_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.starts_with("listening "));
        assert!(listening, "the OpenID provider exited before listening");
        // It prints notices later (the first interaction's), and a closed pipe would kill it.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, port, jwks }
    }

    /// Its issuer.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its current signing key, private (PKCS#8 PEM), to sign tokens it would never issue.
    pub fn private_pem(&self) -> Vec<u8> {
        let mut pem = self.jwks.clone().into_os_string();
        pem.push(".pem");
        std::fs::read(pem).unwrap()
    }

    /// Its current signing key's id.
    pub fn kid(&self) -> String {
        let jwks: Value = serde_json::from_slice(&std::fs::read(&self.jwks).unwrap()).unwrap();
        jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut pem = self.jwks.clone().into_os_string();
        pem.push(".pem");
        let _ = std::fs::remove_file(&self.jwks);
        let _ = std::fs::remove_file(pem);
    }
}

/// A control plane at a known address, so the provider can redirect back to it.
pub async fn stack() -> (Stack, String) {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let public = format!("http://{address}");
    let stack = Stack::start_with(
        portcullis::Role::ControlPlane,
        &["--control-plane-addr", &address, "--public-url", &public],
    )
    .await;
    (stack, format!("{public}/login/sso/callback"))
}

/// Registers `provider` with the organisation of `admin` and sets up sign-in through it;
/// returns the provider's id.
pub async fn set_up(admin: &Api, provider: &Provider, domains: &[&str]) -> String {
    let created = admin
        .expect(
            "POST",
            "/api/v1/identity-providers",
            Some(json!({ "issuer": provider.issuer(), "audience": "http://127.0.0.1:8081" })),
            201,
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let settings = admin
        .expect(
            "PUT",
            &format!("/api/v1/identity-providers/{id}/sign-in"),
            Some(json!({
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "allowed_email_domains": domains,
            })),
            200,
        )
        .await;
    assert_eq!(settings["client_secret_set"], true);
    assert!(settings.get("client_secret").is_none(), "{settings}");
    id
}

/// An HTTP client that keeps cookies per host and port, and follows nothing by itself.
pub struct Browser {
    http: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

/// One answer: status, `Location`, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A new browser with no cookies.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    fn origin(url: &str) -> String {
        let url = reqwest::Url::parse(url).unwrap();
        format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port_or_known_default().unwrap()
        )
    }

    /// A cookie this browser holds for `url`'s host and port.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jar.get(&Self::origin(url))?.get(name).cloned()
    }

    /// Replaces (or sets) a cookie for `url`'s host and port.
    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        self.jar
            .entry(Self::origin(url))
            .or_default()
            .insert(name.to_owned(), value.to_owned());
    }

    async fn send(&mut self, url: &str, request: reqwest::RequestBuilder) -> Answer {
        let cookies = self
            .jar
            .get(&Self::origin(url))
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let response = request
            .header(header::COOKIE, cookies)
            .send()
            .await
            .unwrap();
        let jar = self.jar.entry(Self::origin(url)).or_default();
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || set.to_ascii_lowercase().contains("max-age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        let location = location.map(|l| absolute(url, &l));
        Answer {
            status,
            location,
            body,
        }
    }

    /// `GET url`.
    pub async fn get(&mut self, url: &str) -> Answer {
        let request = self.http.get(url);
        self.send(url, request).await
    }

    /// `POST url` with a form.
    pub async fn post(&mut self, url: &str, pairs: &[(&str, &str)]) -> Answer {
        let request = super::form(self.http.post(url), pairs);
        self.send(url, request).await
    }

    /// Walks the provider's pages from `url` as a person signing in as `login` would: follows
    /// its redirects, fills in the login page, confirms the consent page. Returns the URL the
    /// provider finally sends the browser to (the dashboard's callback).
    pub async fn sign_in_at_provider(&mut self, url: &str, issuer: &str, login: &str) -> String {
        let mut url = url.to_owned();
        for _ in 0..20 {
            if !url.starts_with(issuer) {
                return url;
            }
            let answer = self.get(&url).await;
            if let Some(next) = answer.location {
                url = next;
                continue;
            }
            assert_eq!(answer.status, 200, "{url}: {}", answer.body);
            let action = absolute(&url, &between(&answer.body, "action=\"", "\""));
            let prompt = between(&answer.body, "name=\"prompt\" value=\"", "\"");
            let submitted = match prompt.as_str() {
                "login" => {
                    self.post(
                        &action,
                        &[("prompt", "login"), ("login", login), ("password", "any")],
                    )
                    .await
                }
                "consent" => self.post(&action, &[("prompt", "consent")]).await,
                other => panic!("an unknown page of the provider ({other}): {}", answer.body),
            };
            url = submitted
                .location
                .unwrap_or_else(|| panic!("the provider did not move on: {}", submitted.body));
        }
        panic!("the provider never sent the browser back");
    }
}

/// `location` made absolute against `base`.
fn absolute(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .unwrap()
        .join(location)
        .unwrap()
        .to_string()
}

/// The text between `start` and the next `end` in `text`, HTML entities of URLs undone.
fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    text[from..from + len]
        .replace("&amp;", "&")
        .replace("&#x2F;", "/")
}
