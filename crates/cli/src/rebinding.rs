//! DNS-rebinding and cross-origin protection of both listeners: which `Host` names a listener
//! answers to, and which web pages (`Origin`) may call it.
//!
//! A web page on `evil.example.com` whose name the attacker then points at 127.0.0.1 (or at a
//! private address of the network the browser is on) makes the browser send its requests to
//! Portcullis as if they were same-origin: they carry `Host: evil.example.com`. A request is
//! therefore served only when its `Host` is one of the listener's own names: its public URL's
//! host, the names the operator adds, and the loopback names (with the port it listens on) when
//! it listens on the loopback or on every interface (a loopback name cannot be rebound). A page
//! of another origin that calls it directly carries an `Origin`, which must be one of the
//! listener's own origins or one the operator allows. The MCP transport specification requires
//! servers to validate `Origin`; both checks run before anything else (grant lookup, sign-in).
//!
//! The probes and `/metrics` are left out: kubelets and scrapers address a pod by its IP, and
//! they answer nothing a page could use.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};

/// A name a listener answers to: a host, with a port or (without one) any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostName {
    /// Lower case; an IPv6 address in brackets.
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl HostName {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port` (a `Host` header's form).
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        // The URL parser checks the host (IDNA, IPv6 brackets) and lower-cases it.
        let url = url::Url::parse(&format!("http://{text}/")).ok()?;
        let authority_only = url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && !text.contains(['/', '?', '#', '@']);
        if !authority_only {
            return None;
        }
        let host = host_of(&url)?;
        // `url` drops port 80 (http's default) from `port()`: read it back from the text.
        let port = match url.port() {
            Some(port) => Some(port),
            None if text.ends_with(":80") => Some(80),
            None => None,
        };
        Some(Self { host, port })
    }

    /// Whether a request's `Host` (`host` with the port it names, if any) is this name.
    /// A `Host` without a port names the scheme's default port, 80 or 443: both are accepted
    /// (TLS is often ended in front of Portcullis, which then cannot tell which was used).
    fn matches(&self, other: &HostName) -> bool {
        self.host == other.host
            && match (self.port, other.port) {
                (None, _) => true,
                (Some(own), Some(given)) => own == given,
                (Some(own), None) => own == 80 || own == 443,
            }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The host of a URL as a `Host` header writes it: lower case, IPv6 in brackets.
fn host_of(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(domain) => Some(domain.to_ascii_lowercase()),
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(format!("[{ip}]")),
    }
}

/// A list of names, as `PORTCULLIS_CONTROL_PLANE_HOSTS` and `PORTCULLIS_GATEWAY_HOSTS` give
/// them: `host` or `host:port`, comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNames(Vec<HostName>);

/// A host list does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host name or host:port")]
pub struct HostNameError(String);

impl FromStr for HostNames {
    type Err = HostNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| HostName::parse(part).ok_or_else(|| HostNameError(part.to_owned())))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// An origin a web page has: `scheme://host[:port]`, the form of an `Origin` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebOrigin(String);

impl WebOrigin {
    /// The origin of an http(s) URL, in its serialised form (default port left out).
    fn of(url: &url::Url) -> Option<Self> {
        match url.origin() {
            origin @ url::Origin::Tuple(..) if matches!(url.scheme(), "http" | "https") => {
                Some(Self(origin.ascii_serialization()))
            }
            _ => None,
        }
    }

    /// Parses an origin given by the operator or a client: an http(s) URL with nothing after
    /// its authority.
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let url = url::Url::parse(text).ok()?;
        let bare = url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none()
            && !text.trim_end_matches('/').contains(['?', '#'])
            && text.matches('/').count() <= 3;
        if !bare {
            return None;
        }
        Self::of(&url)
    }
}

/// A list of origins, as `PORTCULLIS_CONTROL_PLANE_ORIGINS` and `PORTCULLIS_GATEWAY_ORIGINS`
/// give them: `scheme://host[:port]`, comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebOrigins(Vec<WebOrigin>);

/// An origin list does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an origin like https://app.example.com or http://localhost:6274")]
pub struct WebOriginError(String);

impl FromStr for WebOrigins {
    type Err = WebOriginError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| WebOrigin::parse(part).ok_or_else(|| WebOriginError(part.to_owned())))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// How a listener's refusals are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// A JSON-RPC error (the gateway: MCP clients read it).
    JsonRpc,
    /// `{"error": {"code", "message"}}` (the control plane's API).
    Api,
}

/// A listener's settings, before it knows which port it listens on.
#[derive(Debug, Clone)]
pub struct Names {
    /// Its public URL (`PORTCULLIS_PUBLIC_URL`, `PORTCULLIS_PUBLIC_GATEWAY_URL`).
    pub public_url: url::Url,
    /// The operator's extra names.
    pub hosts: HostNames,
    /// The operator's extra origins.
    pub origins: WebOrigins,
    /// How its refusals are written.
    pub dialect: Dialect,
}

/// The names and origins one listener answers to.
#[derive(Debug, Clone)]
pub struct Guard {
    hosts: Vec<HostName>,
    /// `Host` values that are one of `hosts` as they stand (lower case), so that the usual
    /// request is checked by a comparison rather than a URL parse.
    exact: Vec<String>,
    origins: Vec<WebOrigin>,
    dialect: Dialect,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its `Host` is not one of the listener's names (421 Misdirected Request).
    ForeignHost,
    /// Its `Origin` is not one the listener allows (403).
    ForeignOrigin,
}

/// Paths every client may reach by any name: probes and metrics.
fn is_operational(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

impl Guard {
    /// The guard of the listener `names` describes, bound to `bound`.
    pub fn new(names: &Names, bound: SocketAddr) -> Self {
        let Names {
            public_url,
            hosts,
            origins,
            dialect,
        } = names;
        let mut own_hosts = Vec::new();
        let mut own_origins = Vec::new();
        if let Some(host) = host_of(public_url) {
            own_hosts.push(HostName {
                host,
                port: public_url.port_or_known_default(),
            });
        }
        own_origins.extend(WebOrigin::of(public_url));
        // A listener on the loopback, or on every interface, is reached by the loopback names
        // too; they cannot be rebound to another address.
        if bound.ip().is_loopback() || bound.ip().is_unspecified() {
            for host in ["127.0.0.1", "localhost", "[::1]"] {
                let name = HostName {
                    host: host.to_owned(),
                    port: Some(bound.port()),
                };
                own_origins.extend(WebOrigin::parse(&format!("http://{name}")));
                own_hosts.push(name);
            }
        }
        own_hosts.extend(hosts.0.iter().cloned());
        own_origins.extend(origins.0.iter().cloned());
        let mut exact = Vec::new();
        for name in &own_hosts {
            if let Some(port) = name.port {
                exact.push(format!("{}:{port}", name.host));
                if port == 80 || port == 443 {
                    exact.push(name.host.clone());
                }
            }
        }
        Self {
            hosts: own_hosts,
            exact,
            origins: own_origins,
            dialect: *dialect,
        }
    }

    /// The names this listener answers to, for its start-up log line.
    pub fn hosts(&self) -> String {
        let names: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        names.join(",")
    }

    /// Whether a request for `path` with these headers may be served. `authority` is the
    /// request target's own, when it has one (HTTP/2, absolute-form): it wins over `Host`.
    pub fn check(
        &self,
        path: &str,
        authority: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if is_operational(path) {
            return Ok(());
        }
        let host = match authority {
            Some(authority) => Some(authority),
            None => headers.get(header::HOST).and_then(|v| v.to_str().ok()),
        };
        let known = host.is_some_and(|host| {
            self.exact.iter().any(|own| own.eq_ignore_ascii_case(host))
                || HostName::parse(host)
                    .is_some_and(|given| self.hosts.iter().any(|own| own.matches(&given)))
        });
        if !known {
            return Err(Refusal::ForeignHost);
        }
        // Requests that are not a web page's carry no Origin; any one present must be ours or
        // allowed (`null`, a sandboxed or opaque page, is neither).
        let mut origins = headers.get_all(header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (None, _) => Ok(()),
            (Some(origin), None)
                if origin
                    .to_str()
                    .ok()
                    .and_then(WebOrigin::parse)
                    .is_some_and(|given| self.origins.contains(&given)) =>
            {
                Ok(())
            }
            _ => Err(Refusal::ForeignOrigin),
        }
    }

    /// The answer to a refused request.
    pub fn refuse(&self, refusal: Refusal) -> Response<Body> {
        let (status, code, message) = match refusal {
            Refusal::ForeignHost => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                "this server does not answer to that Host name",
            ),
            Refusal::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "foreign_origin",
                "requests from a web page of another origin are refused",
            ),
        };
        let body = match self.dialect {
            Dialect::JsonRpc => portcullis_mcp::error_response(
                None,
                portcullis_mcp::codes::INVALID_REQUEST,
                message,
                None,
            ),
            Dialect::Api => serde_json::to_vec(
                &serde_json::json!({ "error": { "code": code, "message": message } }),
            )
            .unwrap_or_default()
            .into(),
        };
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// [`Guard::check`] of a request.
    pub fn check_request<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        self.check(
            request.uri().path(),
            request.uri().authority().map(|a| a.as_str()),
            request.headers(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use super::*;

    fn guard(public: &str, bound: &str, hosts: &str, origins: &str) -> Guard {
        let names = Names {
            public_url: url::Url::parse(public).unwrap(),
            hosts: hosts.parse().unwrap(),
            origins: origins.parse().unwrap(),
            dialect: Dialect::Api,
        };
        Guard::new(&names, bound.parse().unwrap())
    }

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn check(guard: &Guard, host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        guard.check("/g/x/mcp", None, &headers(host, origin))
    }

    #[test]
    fn a_loopback_listener_answers_to_the_loopback_names_with_its_port() {
        let g = guard("http://127.0.0.1:8081", "127.0.0.1:43210", "", "");
        for host in [
            "127.0.0.1:43210",
            "localhost:43210",
            "LOCALHOST:43210",
            "[::1]:43210",
            "127.0.0.1:8081",
        ] {
            assert_eq!(check(&g, Some(host), None), Ok(()), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:43210",
            "127.0.0.1:1",
            "localhost.evil.example.com:43210",
            "127.0.0.1:43210/x",
            "user@127.0.0.1:43210",
            "",
        ] {
            assert_eq!(
                check(&g, Some(host), None),
                Err(Refusal::ForeignHost),
                "{host}"
            );
        }
        assert_eq!(check(&g, None, None), Err(Refusal::ForeignHost));
    }

    #[test]
    fn a_public_listener_answers_to_its_public_name_and_the_operators() {
        let g = guard(
            "https://gateway.example.com",
            "10.0.0.5:8081",
            "portcullis-gateway:8081,gw.internal",
            "",
        );
        for host in [
            "gateway.example.com",
            "gateway.example.com:443",
            "Gateway.Example.COM",
            "portcullis-gateway:8081",
            "gw.internal:1234",
            "gw.internal",
        ] {
            assert_eq!(check(&g, Some(host), None), Ok(()), "{host}");
        }
        for host in [
            "gateway.example.com:8443",
            "127.0.0.1:8081",
            "localhost:8081",
            "portcullis-gateway:9",
            "10.0.0.5:8081",
        ] {
            assert_eq!(
                check(&g, Some(host), None),
                Err(Refusal::ForeignHost),
                "{host}"
            );
        }
        // On every interface, the loopback names count as well.
        let g = guard("https://gateway.example.com", "0.0.0.0:8081", "", "");
        assert_eq!(check(&g, Some("127.0.0.1:8081"), None), Ok(()));
    }

    #[test]
    fn an_origin_must_be_the_listeners_own_or_allowed() {
        let g = guard(
            "https://portcullis.example.com",
            "127.0.0.1:8080",
            "",
            "http://localhost:6274",
        );
        let host = Some("portcullis.example.com");
        for origin in [
            "https://portcullis.example.com",
            "https://portcullis.example.com:443",
            "http://127.0.0.1:8080",
            "http://localhost:6274",
        ] {
            assert_eq!(check(&g, host, Some(origin)), Ok(()), "{origin}");
        }
        for origin in [
            "http://evil.example.com",
            "http://portcullis.example.com",
            "https://portcullis.example.com:8443",
            "https://portcullis.example.com.evil.example",
            "http://127.0.0.1:9999",
            "null",
            "",
            "https://portcullis.example.com/path",
        ] {
            assert_eq!(
                check(&g, host, Some(origin)),
                Err(Refusal::ForeignOrigin),
                "{origin}"
            );
        }
        // Two Origin headers: no browser sends them; refused.
        let mut two = headers(host, Some("https://portcullis.example.com"));
        two.append(
            header::ORIGIN,
            HeaderValue::from_static("https://portcullis.example.com"),
        );
        assert_eq!(g.check("/", None, &two), Err(Refusal::ForeignOrigin));
    }

    #[test]
    fn probes_and_metrics_answer_any_name() {
        let g = guard("http://127.0.0.1:8081", "10.0.0.5:8081", "", "");
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                g.check(path, None, &headers(Some("10.0.0.5:8081"), None)),
                Ok(())
            );
        }
        assert_eq!(
            g.check("/healthz/x", None, &headers(Some("10.0.0.5:8081"), None)),
            Err(Refusal::ForeignHost)
        );
    }

    #[test]
    fn the_request_targets_authority_wins_over_host() {
        let g = guard("http://127.0.0.1:8081", "127.0.0.1:8081", "", "");
        let host = headers(Some("127.0.0.1:8081"), None);
        assert_eq!(
            g.check("/", Some("evil.example.com"), &host),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(
            g.check("/", Some("127.0.0.1:8081"), &headers(None, None)),
            Ok(())
        );
    }

    #[test]
    fn lists_that_do_not_parse_are_named() {
        assert!("a.example,b.example:9".parse::<HostNames>().is_ok());
        assert_eq!("".parse::<HostNames>().unwrap(), HostNames::default());
        for bad in ["http://a.example", "a.example/x", "a b", "a.example:99999"] {
            let err = bad.parse::<HostNames>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        assert!(
            "https://a.example,http://localhost:6274"
                .parse::<WebOrigins>()
                .is_ok()
        );
        for bad in [
            "a.example",
            "https://a.example/path",
            "ftp://a.example",
            "null",
        ] {
            assert!(bad.parse::<WebOrigins>().is_err(), "{bad}");
        }
    }
}
