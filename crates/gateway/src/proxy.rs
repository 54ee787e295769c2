//! The HTTP endpoints: `POST|GET|DELETE /g/{token}/mcp` and `/mcp/{server_id}` (bearer token).
//!
//! POST carries one JSON-RPC message. Requests are audited and, for `tools/call`, enforced
//! ([`crate::enforce`]); notifications and responses (a client answering a sampling or
//! elicitation request) go straight to the upstream session. GET opens the session's
//! server→client stream, DELETE ends the session.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use portcullis_core::audit::{AuditDecision, AuditEvent, AuditOutcome};
use portcullis_core::{GrantToken, ServerId};
use portcullis_mcp::headers::names as mcp;
use portcullis_mcp::{Message, MethodKind, MirroredHeaders, ProtocolEra, RequestId};

use crate::Gateway;
use crate::continuation::{Round, Sealer};
use crate::enforce::Verdict;
use crate::error::{GatewayError, INTERNAL_CODE, Rejection};
use crate::grants::{Grant, Transport};
use crate::identity;
use crate::legacy::{self, Connection};
use crate::lifetime::Lifetime;
use crate::relay::{self, ByteStream, Pending, ToolFilter, Watch};
use crate::sessions::{EventIds, Session};
use crate::spans::RequestSpan;
use crate::upstream::{
    Mirrored, UpstreamError, UpstreamResponse, body_stream, is_event_stream, request_headers,
    response_headers,
};

type Gw = State<Arc<Gateway>>;

const SESSION_HEADER: HeaderName = HeaderName::from_static(mcp::MCP_SESSION_ID);
const LAST_EVENT_ID_HEADER: HeaderName = HeaderName::from_static(mcp::LAST_EVENT_ID);

/// Headers that must come at most once: the gateway reads and checks one copy.
const CHECKED_ONCE: [&str; 4] = [
    mcp::MCP_PROTOCOL_VERSION,
    mcp::MCP_SESSION_ID,
    mcp::MCP_METHOD,
    mcp::MCP_NAME,
];

/// Refuses a request that repeats one of [`CHECKED_ONCE`]: the gateway checks one copy, and
/// an upstream or a router behind it could read another. One pass, without lookups.
fn check_headers_once(headers: &HeaderMap) -> Result<(), portcullis_mcp::Error> {
    let mut seen = 0u8;
    // Every value in turn: a repeated header comes up once per copy.
    for (name, _) in headers {
        let name = name.as_str();
        if !name.starts_with("mcp-") {
            continue;
        }
        if let Some(i) = CHECKED_ONCE.iter().position(|once| *once == name) {
            if seen & (1 << i) != 0 {
                return Err(portcullis_mcp::Error::HeaderMismatch(format!(
                    "the {name} header is repeated"
                )));
            }
            seen |= 1 << i;
        }
    }
    Ok(())
}

/// How the caller presented its grant.
#[derive(Clone, Copy)]
enum Credential<'a> {
    /// In the path: `/g/{token}/mcp`.
    Path(&'a str),
    /// As a bearer token, for the server in the path: `/mcp/{server_id}`.
    Bearer { server: &'a str },
}

/// What [`Gateway::prepare`] made of a request.
// Taken apart as soon as it is made, never held across an await: boxing the large variant
// would cost an allocation on every forwarded call to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    /// The gateway answers it (a refusal, an approval pending).
    Answer(Bytes),
    /// It goes upstream.
    Forward {
        /// What to do with the answer.
        watch: Watch,
        /// Charges and approval to give back if the call fails or never reaches the tool.
        held: relay::Held,
        /// The decision entry, when it was written with the charge.
        decided: Option<String>,
        /// The body to send instead of the client's (a continuation's retry).
        restored: Option<Bytes>,
    },
}

fn finish(result: Result<Response, Rejection>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

// The handlers take the whole request and keep its headers: axum's `HeaderMap` extractor
// would copy them. Its trace span, when tracing is on, is in its extensions.

/// `POST /g/{token}/mcp`.
pub async fn post_by_grant(State(gw): Gw, Path(token): Path<String>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let span = RequestSpan::take(&mut parts.extensions);
    finish(
        gw.post(Credential::Path(&token), parts.headers, body, span)
            .await,
    )
}

/// `GET /g/{token}/mcp`.
pub async fn get_by_grant(State(gw): Gw, Path(token): Path<String>, request: Request) -> Response {
    let (headers, span) = head(request);
    finish(
        gw.stream(Credential::Path(&token), headers, Method::GET, span)
            .await,
    )
}

/// `DELETE /g/{token}/mcp`.
pub async fn delete_by_grant(
    State(gw): Gw,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let (headers, span) = head(request);
    finish(
        gw.stream(Credential::Path(&token), headers, Method::DELETE, span)
            .await,
    )
}

/// `POST /mcp/{server_id}`.
pub async fn post_by_server(
    State(gw): Gw,
    Path(server): Path<String>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let span = RequestSpan::take(&mut parts.extensions);
    let credential = Credential::Bearer { server: &server };
    let response = finish(gw.post(credential, parts.headers, body, span).await);
    crate::resource::challenge(response, &gw.public_url, &server)
}

/// `GET /mcp/{server_id}`.
pub async fn get_by_server(
    State(gw): Gw,
    Path(server): Path<String>,
    request: Request,
) -> Response {
    let (headers, span) = head(request);
    let credential = Credential::Bearer { server: &server };
    let response = finish(gw.stream(credential, headers, Method::GET, span).await);
    crate::resource::challenge(response, &gw.public_url, &server)
}

/// `DELETE /mcp/{server_id}`.
pub async fn delete_by_server(
    State(gw): Gw,
    Path(server): Path<String>,
    request: Request,
) -> Response {
    let (headers, span) = head(request);
    let credential = Credential::Bearer { server: &server };
    let response = finish(gw.stream(credential, headers, Method::DELETE, span).await);
    crate::resource::challenge(response, &gw.public_url, &server)
}

/// A bodiless request's headers and trace span.
fn head(request: Request) -> (HeaderMap, RequestSpan) {
    let mut parts = request.into_parts().0;
    let span = RequestSpan::take(&mut parts.extensions);
    (parts.headers, span)
}

/// One POST, once its message is read and checked.
struct Inbound {
    grant: Arc<Grant>,
    headers: HeaderMap,
    era: ProtocolEra,
    /// The headers mirroring the body that were checked, and so go upstream.
    mirrored: Mirrored,
    version: String,
    session: Option<Session>,
    client_session: Option<String>,
    arrived: Instant,
    ts: DateTime<Utc>,
    span: RequestSpan,
}

/// Who an answer goes back to: the grant, and the session id the client presented (opened,
/// and as sent).
#[derive(Clone, Copy)]
struct Caller<'a> {
    grant: &'a Grant,
    session: Option<(&'a Session, &'a str)>,
}

impl<'a> Caller<'a> {
    fn of(inbound: &'a Inbound) -> Self {
        Self {
            grant: &inbound.grant,
            session: inbound
                .session
                .as_ref()
                .zip(inbound.client_session.as_deref()),
        }
    }
}

/// A POST's message, read and checked against its headers.
struct Read {
    message: Message,
    bytes: Bytes,
    era: ProtocolEra,
    version: String,
    session: Option<Session>,
    client_session: Option<String>,
}

/// The audit event of a request through `grant`, before it is decided.
fn audit_event(
    grant: &Grant,
    headers: &HeaderMap,
    ts: DateTime<Utc>,
    method: &str,
    protocol: Option<String>,
    session: Option<String>,
) -> AuditEvent {
    AuditEvent {
        id: uuid::Uuid::now_v7(),
        ts,
        tenant_id: grant.tenant,
        grant_id: grant.id,
        identity: grant.identity.clone(),
        server_id: grant.server.id,
        method: method.to_owned(),
        tool: None,
        decision: AuditDecision::Allow,
        rule: None,
        message: None,
        policy_id: Some(grant.policy.id),
        policy_version: Some(grant.policy.version),
        protocol,
        session,
        request_id: header_str(headers, "x-request-id").map(str::to_owned),
        arg_keys: Vec::new(),
        arg_digest: None,
        arguments: None,
        outcome: None,
        issuer: grant.issuer.clone(),
        jti: grant.jti.clone(),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
    })
}

fn json_response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    *response.headers_mut() = headers;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Gateway {
    /// Resolves and checks the caller's grant.
    async fn authenticate(
        &self,
        credential: Credential<'_>,
        headers: &HeaderMap,
    ) -> Result<Arc<Grant>, GatewayError> {
        let (text, server) = match credential {
            Credential::Path(token) => (token, None),
            Credential::Bearer { server } => {
                let token = header_str(headers, header::AUTHORIZATION.as_str())
                    .and_then(|v| {
                        v.split_once(' ')
                            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    })
                    .map(|(_, token)| token.trim())
                    .ok_or(GatewayError::MissingToken)?;
                if identity::looks_like_jwt(token) {
                    return self.identity_bound(server, token).await;
                }
                (token, Some(server))
            }
        };
        let token = GrantToken::parse(text).ok_or(GatewayError::InvalidToken)?;
        let Some(grant) = self.grants.resolve(&token).await? else {
            tracing::debug!("refused: unknown grant token");
            return Err(GatewayError::InvalidToken);
        };
        if !grant.is_usable(Utc::now()) {
            tracing::info!(grant = %grant.id, tenant = %grant.tenant, revoked = grant.revoked, "refused: grant revoked or expired");
            return Err(GatewayError::InvalidToken);
        }
        if let Some(server) = server
            && server != grant.server_text
        {
            tracing::info!(grant = %grant.id, tenant = %grant.tenant, "refused: grant belongs to another server");
            return Err(GatewayError::InvalidToken);
        }
        Ok(grant)
    }

    /// Verifies an identity provider's JWT for `server` and resolves it through the binding
    /// that applies ([`identity`]).
    async fn identity_bound(&self, server: &str, token: &str) -> Result<Arc<Grant>, GatewayError> {
        let Ok(id) = server.parse::<ServerId>() else {
            return Err(GatewayError::InvalidToken);
        };
        let Some(access) = self.grants.access(id).await? else {
            tracing::debug!("refused: identity token for an unknown server");
            return Err(GatewayError::InvalidToken);
        };
        match self.identities.verify(token, &access).await {
            Ok((verified, Some(binding))) => {
                Ok(Arc::new(identity::grant(&access, verified, binding)))
            }
            Ok((verified, None)) => {
                let principal = identity::principal(&access, &verified);
                tracing::info!(server = %id, tenant = %access.server.tenant, identity = %verified.identity, "refused: no binding covers this identity");
                Err(GatewayError::NoBinding(Some(Box::new(AuditEvent {
                    id: uuid::Uuid::now_v7(),
                    ts: Utc::now(),
                    tenant_id: access.server.tenant,
                    grant_id: principal,
                    identity: verified.identity,
                    server_id: id,
                    method: String::new(),
                    tool: None,
                    decision: AuditDecision::Deny,
                    rule: Some(identity::NO_BINDING.to_owned()),
                    message: Some(GatewayError::NoBinding(None).to_string()),
                    policy_id: None,
                    policy_version: None,
                    protocol: None,
                    session: None,
                    request_id: None,
                    arg_keys: Vec::new(),
                    arg_digest: None,
                    arguments: None,
                    outcome: None,
                    issuer: Some(verified.issuer),
                    jti: verified.jti,
                }))))
            }
            Err(refused) => {
                tracing::info!(server = %id, tenant = %access.server.tenant, reason = %refused, "refused: identity token");
                Err(GatewayError::InvalidToken)
            }
        }
    }

    /// Audits a POST whose verified identity no binding covers, with the method its body
    /// names, and refuses it.
    async fn unbound(
        &self,
        mut event: AuditEvent,
        headers: &HeaderMap,
        body: Body,
        arrived: Instant,
        span: &RequestSpan,
    ) -> Rejection {
        let bytes = axum::body::to_bytes(body, self.max_body)
            .await
            .unwrap_or_default();
        let message = Message::parse(&bytes).ok();
        if let Some(method) = message.as_ref().and_then(Message::method) {
            method.clone_into(&mut event.method);
        }
        event.request_id = header_str(headers, "x-request-id").map(str::to_owned);
        let kind = message.as_ref().and_then(Message::method_kind);
        self.answered_locally(event, arrived, kind.unwrap_or(MethodKind::Other), span);
        GatewayError::NoBinding(None).at(message.as_ref().and_then(Message::id))
    }

    async fn post(
        &self,
        credential: Credential<'_>,
        headers: HeaderMap,
        body: Body,
        span: RequestSpan,
    ) -> Result<Response, Rejection> {
        let arrived = Instant::now();
        let ts = Utc::now();
        let grant = match self.authenticate(credential, &headers).await {
            Ok(grant) => grant,
            Err(GatewayError::NoBinding(Some(event))) => {
                return Err(self.unbound(*event, &headers, body, arrived, &span).await);
            }
            Err(e) => return Err(e.into()),
        };
        span.grant(&grant);
        let read = match self.read(&grant, &headers, body).await {
            Ok(read) => read,
            Err((rejection, message)) => {
                // Refused before it could be decided: still one event in the audit log.
                let method = message
                    .as_ref()
                    .and_then(Message::method)
                    .unwrap_or_default();
                let session = header_str(&headers, mcp::MCP_SESSION_ID).map(str::to_owned);
                let event = audit_event(&grant, &headers, ts, method, None, session);
                let kind = message.as_ref().and_then(Message::method_kind);
                self.failed(
                    event,
                    &rejection.error,
                    arrived,
                    kind.unwrap_or(MethodKind::Other),
                    &span,
                );
                return Err(rejection);
            }
        };
        let inbound = Inbound {
            grant,
            headers,
            era: read.era,
            mirrored: Mirrored::checked(read.era, read.message.method()),
            version: read.version,
            session: read.session,
            client_session: read.client_session,
            arrived,
            ts,
            span,
        };
        if read.message.is_request() {
            self.request(inbound, read.message, read.bytes).await
        } else {
            inbound.span.method(read.message.method());
            self.pass_message(inbound, read.bytes).await
        }
    }

    /// Reads a POST's message and checks it against its headers; a refusal comes with the
    /// message when it could be read.
    async fn read(
        &self,
        grant: &Grant,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Read, (Rejection, Option<Message>)> {
        let refuse = |e: GatewayError| (e.into(), None);
        if !is_json(headers) {
            return Err(refuse(GatewayError::UnsupportedMediaType));
        }
        let declared = header_str(headers, header::CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(refuse(GatewayError::PayloadTooLarge(self.max_body)));
        }
        let bytes = axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|_| refuse(GatewayError::PayloadTooLarge(self.max_body)))?;
        let message = Message::parse(&bytes).map_err(|e| refuse(e.into()))?;
        if let Message::Notification { method, .. } = &message
            && !method.starts_with(portcullis_mcp::method::names::NOTIFICATIONS)
        {
            // A method call without an id would pass undecided and unaudited, and an
            // upstream that runs it anyway (some JSON-RPC servers do) would run a tool call.
            let detail = format!(
                "{method:?} without an id: a request needs one, and notifications are \
                 notifications/… methods"
            );
            let error = portcullis_mcp::Error::InvalidRequest { id: None, detail };
            return Err((GatewayError::from(error).into(), Some(message)));
        }
        let checked = (|| {
            check_headers_once(headers)?;
            let version_header = header_str(headers, mcp::MCP_PROTOCOL_VERSION);
            let detected = portcullis_mcp::era::detect(version_header, &message)?;
            let (era, version) = (detected.era, detected.version.into_owned());
            if era == ProtocolEra::Stateless {
                let mirrored = MirroredHeaders {
                    protocol_version: version_header,
                    // A value that is not text still counts, as one that matches nothing.
                    method: headers
                        .get(mcp::MCP_METHOD)
                        .map(|v| v.to_str().unwrap_or("\u{FFFD}")),
                    name: header_str(headers, mcp::MCP_NAME),
                };
                portcullis_mcp::check_mirrored_headers(&mirrored, &message)?;
            }
            if era == ProtocolEra::Stateless && grant.server.transport == Transport::Sse {
                // An HTTP+SSE server only speaks the handshake era; saying so lets a client
                // that negotiates (e.g. "auto" modes) fall back to `initialize`.
                return Err(portcullis_mcp::Error::UnsupportedProtocolVersion {
                    requested: version,
                    supported: &portcullis_mcp::era::HANDSHAKE_VERSIONS,
                }
                .into());
            }
            let client_session = header_str(headers, mcp::MCP_SESSION_ID).map(str::to_owned);
            let session = match &client_session {
                Some(s) => Some(self.sessions.unwrap(grant.id, s)?),
                None => None,
            };
            Ok::<_, GatewayError>((era, version, session, client_session))
        })();
        match checked {
            Ok((era, version, session, client_session)) => Ok(Read {
                message,
                bytes,
                era,
                version,
                session,
                client_session,
            }),
            Err(e) => {
                let rejection = e.at(message.id());
                Err((rejection, Some(message)))
            }
        }
    }

    async fn request(
        &self,
        inbound: Inbound,
        message: Message,
        mut body: Bytes,
    ) -> Result<Response, Rejection> {
        let id = message.id().cloned();
        let kind = message.method_kind().unwrap_or(MethodKind::Other);
        let grant = inbound.grant.clone();
        let mut event = audit_event(
            &grant,
            &inbound.headers,
            inbound.ts,
            message.method().unwrap_or_default(),
            Some(inbound.version.clone()),
            inbound.client_session.clone(),
        );
        let prepared = self.prepare(&inbound, &message, kind, &mut event).await;
        let (watch, held, decided) = match prepared {
            Err(error) => {
                self.failed(event, &error, inbound.arrived, kind, &inbound.span);
                return Err(error.at(id.as_ref()));
            }
            Ok(Prepared::Answer(answer)) => {
                self.answered_locally(event, inbound.arrived, kind, &inbound.span);
                return Ok(json_response(StatusCode::OK, HeaderMap::new(), answer));
            }
            Ok(Prepared::Forward {
                watch,
                held,
                decided,
                restored,
            }) => {
                if let Some(restored) = restored {
                    body = restored;
                }
                (watch, held, decided)
            }
        };
        inbound.span.decided(&event);
        let decided = match decided {
            Some(json) => json,
            None => self.audit.write_now(&event).await,
        };
        let pending = Pending::new(self, kind, event, decided, held, inbound.arrived);
        self.meters.overhead.record(inbound.arrived.elapsed());
        match grant.server.transport {
            Transport::StreamableHttp => self.forward(inbound, id, body, watch, pending).await,
            Transport::Sse => {
                self.forward_legacy(inbound, &message, id, body, watch, pending)
                    .await
            }
        }
    }

    /// Decides a request before it is forwarded: for `tools/call` the policy (which may answer
    /// it here), for `tools/list` the catalogue its answer is filtered by. When this fails, no
    /// charge is held and no audit entry has been written.
    async fn prepare(
        &self,
        inbound: &Inbound,
        message: &Message,
        kind: MethodKind,
        event: &mut AuditEvent,
    ) -> Result<Prepared, GatewayError> {
        let grant = &inbound.grant;
        match kind {
            MethodKind::ToolsCall => {
                let call = match message.tool_call() {
                    Some(call) => call?,
                    None => {
                        return Err(portcullis_mcp::Error::InvalidParams(
                            "tools/call needs params".into(),
                        )
                        .into());
                    }
                };
                let Some(request_id) = message.id() else {
                    return Err(portcullis_mcp::Error::InvalidParams(
                        "tools/call needs an id".into(),
                    )
                    .into());
                };
                if inbound.era == ProtocolEra::Stateless {
                    self.check_param_headers(inbound, &call).await?;
                }
                let keys = self.sessions.keyring();
                let round = Round::of(keys, grant.id, &call);
                // A continuation's retry reaches the upstream with its own `requestState` back.
                let restored = match &round {
                    Round::Continuation(resumed) => Some(resumed.restore(message)?),
                    _ => None,
                };
                let verdict = crate::enforce::tools_call(
                    self,
                    grant,
                    request_id,
                    &call,
                    &round,
                    inbound.era,
                    event,
                )
                .await?;
                match verdict {
                    Verdict::Answer(answer) => Ok(Prepared::Answer(answer)),
                    Verdict::Forward { held, decided } => {
                        let digest = event
                            .arg_digest
                            .clone()
                            .unwrap_or_else(|| portcullis_core::canonical::digest(&call.arguments));
                        // An `input_required` answer carries the charges on to the retry that
                        // ends the call, which refunds them if it fails.
                        let sealer =
                            Sealer::new(keys.clone(), grant.id, &call.name, digest, &round, &held);
                        Ok(Prepared::Forward {
                            watch: Watch::ToolsCall(sealer),
                            held,
                            decided,
                            restored,
                        })
                    }
                }
            }
            MethodKind::ToolsList => Ok(Prepared::Forward {
                watch: Watch::ToolsList(self.tool_filter(grant, inbound.era).await?),
                held: relay::Held::default(),
                decided: None,
                restored: None,
            }),
            _ => Ok(Prepared::Forward {
                watch: Watch::Nothing,
                held: relay::Held::default(),
                decided: None,
                restored: None,
            }),
        }
    }

    /// Stateless era: the `Mcp-Param-*` headers of a call must mirror the arguments the tool
    /// marks with `x-mcp-header`. The policy decides on the body; what routes on the headers
    /// behind the gateway must see the same values.
    async fn check_param_headers(
        &self,
        inbound: &Inbound,
        call: &portcullis_mcp::ToolCall<'_>,
    ) -> Result<(), GatewayError> {
        let grant = &inbound.grant;
        let tools = self.catalogue.tools(grant.tenant, grant.server.id).await?;
        let Some(tool) = tools.get(&call.name) else {
            return Ok(());
        };
        let headers = inbound
            .headers
            .iter()
            // A value that is not visible ASCII still counts (as one that matches nothing),
            // so it can be neither repeated nor sent for an argument without a value.
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("\u{FFFD}")));
        portcullis_mcp::headers::check_param_headers(headers, &tool.input_schema, &call.arguments)?;
        Ok(())
    }

    /// What a grant may see of its server's tools.
    async fn tool_filter(
        &self,
        grant: &Grant,
        era: ProtocolEra,
    ) -> Result<ToolFilter, GatewayError> {
        Ok(ToolFilter {
            policy: grant.policy.compiled.clone(),
            tools: self.catalogue.tools(grant.tenant, grant.server.id).await?,
            block_changed: grant.server.block_changed_tools,
            era,
        })
    }

    /// Records a request the gateway could not decide or forward (a malformed call, its
    /// database out of reach): an `error` event, so the audit log has every request.
    fn failed(
        &self,
        mut event: AuditEvent,
        error: &GatewayError,
        arrived: Instant,
        kind: MethodKind,
        span: &RequestSpan,
    ) {
        event.decision = AuditDecision::Error;
        event.message = Some(error.to_string());
        self.answered_locally(event, arrived, kind, span);
    }

    /// Records a call the gateway answered itself (in its trace span too).
    fn answered_locally(
        &self,
        mut event: AuditEvent,
        arrived: Instant,
        kind: MethodKind,
        span: &RequestSpan,
    ) {
        span.decided(&event);
        let elapsed = arrived.elapsed();
        event.outcome = Some(AuditOutcome {
            upstream_status: None,
            is_error: None,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_error: None,
        });
        self.meters.overhead.record(elapsed);
        self.meters.request(kind, event.decision, elapsed);
        self.audit.enqueue(&event);
    }

    /// Puts the upstream's own session id, and its own event id for `Last-Event-ID`, in
    /// `headers`, in place of the sealed ones the client holds.
    fn upstream_session(
        &self,
        grant: &Grant,
        session: Option<&Session>,
        headers: &mut HeaderMap,
    ) -> Result<(), GatewayError> {
        if let Some(value) = headers.get(LAST_EVENT_ID_HEADER) {
            let ids = EventIds::new(self.sessions.keyring().clone(), grant.id);
            let opened = value
                .to_str()
                .ok()
                .and_then(|text| ids.open(text))
                .and_then(|id| HeaderValue::from_str(&id).ok())
                .ok_or(GatewayError::UnknownEventId)?;
            headers.insert(LAST_EVENT_ID_HEADER, opened);
        }
        match session {
            Some(Session::Upstream(id)) => {
                let value = HeaderValue::from_str(id).map_err(|_| GatewayError::SessionNotFound)?;
                headers.insert(SESSION_HEADER, value);
                Ok(())
            }
            Some(Session::Legacy(_)) => Err(GatewayError::SessionNotFound),
            None => Ok(()),
        }
    }

    async fn forward(
        &self,
        inbound: Inbound,
        id: Option<RequestId>,
        body: Bytes,
        watch: Watch,
        mut pending: Pending,
    ) -> Result<Response, Rejection> {
        let server = &inbound.grant.server;
        let mut headers = request_headers(&inbound.headers, server, inbound.mirrored, true);
        if let Err(e) =
            self.upstream_session(&inbound.grant, inbound.session.as_ref(), &mut headers)
        {
            pending.fail_unsent(&e);
            return Err(e.at(id.as_ref()));
        }
        inbound.span.propagate(&mut headers);
        let sent = inbound.span.clock();
        let response = self
            .upstream
            .send(Method::POST, &server.uri, headers, Some(body))
            .await;
        inbound.span.upstream_answered(&response, sent);
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                pending.fail_upstream(&e);
                return Err(GatewayError::from(e).at(id.as_ref()));
            }
        };
        self.answer(Caller::of(&inbound), response, watch, id, pending)
            .await
    }

    /// Streams an upstream answer back, filtering or inspecting what `watch` asks for.
    async fn answer(
        &self,
        caller: Caller<'_>,
        response: UpstreamResponse,
        watch: Watch,
        id: Option<RequestId>,
        mut pending: Pending,
    ) -> Result<Response, Rejection> {
        let status = response.status();
        pending.status = Some(status.as_u16());
        if matches!(watch, Watch::Nothing) || is_event_stream(response.headers()) {
            return Ok(self.relay(caller, response, watch, id, Some(pending)));
        }
        // A JSON answer the gateway must look inside: read whole (bounded).
        let mut headers = response_headers(response.headers());
        self.wrap_session(caller, response.headers(), &mut headers);
        let bytes = match self.upstream.read_body(response).await {
            Ok(bytes) => bytes,
            Err(e) => {
                pending.fail(&e);
                return Err(GatewayError::from(e).at(id.as_ref()));
            }
        };
        let parsed = if bytes.is_empty() {
            None
        } else {
            Message::parse(&bytes).ok()
        };
        // A client matches answers by id: a result under another request's id could settle a
        // pending `tools/list` with what nobody filtered. (An error carries no list, and some
        // servers answer HTTP-level errors under an id of their own.)
        let foreign = matches!(&parsed, Some(Message::Response { id: other, .. })
            if !id.as_ref().is_some_and(|request| request.answered_by(other)));
        let (bytes, is_error) = match (&watch, parsed) {
            _ if foreign => {
                let e = UpstreamError::Protocol("the upstream answered another request".into());
                pending.fail(&e);
                return Err(GatewayError::Upstream(e).at(id.as_ref()));
            }
            (_, None) if bytes.is_empty() => (bytes, (!status.is_success()).then_some(true)),
            (Watch::ToolsList(filter), Some(message)) => match filter.rewrite(&message) {
                Some(rewritten) => (rewritten, Some(false)),
                None => (bytes, Some(matches!(message, Message::Error { .. }))),
            },
            (_, None) if status.is_success() => {
                // An answer the gateway cannot read can be neither filtered nor told apart
                // from another request's (a client may read it another way): never pass it on.
                let e = UpstreamError::Protocol("unreadable answer".into());
                pending.fail(&e);
                return Err(GatewayError::Upstream(e).at(id.as_ref()));
            }
            (_, None) => {
                // Nor a failure's body: its status goes back (a 404 tells the client its
                // session is gone), its body does not.
                let detail = format!("the upstream answered {status}");
                let body =
                    portcullis_mcp::error_response(id.as_ref(), INTERNAL_CODE, &detail, None);
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                (body, Some(true))
            }
            (Watch::ToolsCall(sealer), Some(message)) => match sealer.rewrite(&message) {
                // An input_required answer, its requestState sealed (`continuation`).
                Some(sealed) => (sealed, Some(false)),
                None => (
                    bytes,
                    Some(relay::answer_is_error(&message) || !status.is_success()),
                ),
            },
            (_, Some(message)) => (
                bytes,
                Some(relay::answer_is_error(&message) || !status.is_success()),
            ),
        };
        pending.finish(is_error);
        let mut out = Response::new(Body::from(bytes));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    fn wrap_session(&self, caller: Caller<'_>, upstream: &HeaderMap, out: &mut HeaderMap) {
        if let Some(id) = upstream.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
            // The session the client presented, unchanged: its own id serves again (no
            // sealing per answer, so the key seals once per session, not per request). An id
            // sealed by an older key is sealed anew with its issue time, so old keys can
            // retire and no session grows younger.
            let same = match caller.session {
                Some((Session::Upstream(presented), text)) if presented == id => {
                    if self.sessions.sealed_by_active(text) {
                        Some(Cow::Borrowed(text))
                    } else {
                        self.sessions.reseal(caller.grant.id, text).map(Cow::Owned)
                    }
                }
                _ => None,
            };
            let wrapped = same.unwrap_or_else(|| {
                Cow::Owned(
                    self.sessions
                        .wrap(caller.grant.id, &Session::Upstream(id.to_owned())),
                )
            });
            if let Ok(value) = HeaderValue::from_str(&wrapped) {
                out.insert(SESSION_HEADER, value);
            }
        }
    }

    async fn forward_legacy(
        &self,
        inbound: Inbound,
        message: &Message,
        id: Option<RequestId>,
        body: Bytes,
        watch: Watch,
        mut pending: Pending,
    ) -> Result<Response, Rejection> {
        let server = &inbound.grant.server;
        let Some(request_id) = id.clone() else {
            pending.fail_unsent(&GatewayError::SessionNotFound);
            return Err(GatewayError::SessionNotFound.into());
        };
        let init = match (&inbound.session, message.method_kind()) {
            (_, Some(MethodKind::Initialize)) => None,
            (Some(Session::Legacy(params)), _) => Some(params.clone()),
            (None, _) => Some(legacy::default_init_params()),
            (Some(Session::Upstream(_)), _) => {
                pending.fail_unsent(&GatewayError::SessionNotFound);
                return Err(GatewayError::SessionNotFound.at(id.as_ref()));
            }
        };
        if init.is_none()
            && message
                .params()
                .is_some_and(|p| p.get().len() > legacy::MAX_INIT_PARAMS)
        {
            let e = GatewayError::from(portcullis_mcp::Error::InvalidParams(format!(
                "initialize params over {} bytes: this server's sessions carry them in their id",
                legacy::MAX_INIT_PARAMS
            )));
            pending.fail_unsent(&e);
            return Err(e.at(id.as_ref()));
        }
        let opened = async {
            let mut connection = Connection::open(&self.upstream, server).await?;
            if let Some(params) = &init {
                connection.handshake(&self.upstream, server, params).await?;
            }
            Ok::<_, UpstreamError>(connection)
        };
        // Until the request itself is posted and accepted, nothing of it has run (a post the
        // endpoint refuses, or one to another origin, is a protocol error).
        // Awaited on its own: a future awaited in a `match` scrutinee keeps its storage through
        // the arms, and the arm awaits another.
        let opened = opened.await;
        let posted = match opened {
            Ok(mut connection) => match connection.post(&self.upstream, server, body).await {
                Ok(()) => Ok(connection),
                Err(e) => {
                    let refused = matches!(e, UpstreamError::Protocol(_));
                    Err((e, refused))
                }
            },
            Err(e) => Err((e, true)),
        };
        let mut connection = match posted {
            Ok(connection) => connection,
            Err((e, unsent)) => {
                if unsent {
                    pending.fail_unsent(&e);
                } else {
                    pending.fail_upstream(&e);
                }
                return Err(GatewayError::from(e).at(id.as_ref()));
            }
        };
        pending.status = Some(200);
        if init.is_none() {
            // `initialize`: answer with JSON and a session that replays it from now on.
            let event = match connection.answer_to(&self.upstream, &request_id).await {
                Ok(event) => event,
                Err(e) => {
                    pending.fail(&e);
                    return Err(GatewayError::from(e).at(id.as_ref()));
                }
            };
            let refused = matches!(event.json_rpc(), Some(Ok(Message::Error { .. })));
            pending.finish(Some(refused));
            let mut headers = HeaderMap::new();
            let session = Session::Legacy(legacy::init_params(message));
            // A refused `initialize` began no session: there is nothing to replay.
            if !refused
                && let Ok(value) =
                    HeaderValue::from_str(&self.sessions.wrap(inbound.grant.id, &session))
            {
                headers.insert(SESSION_HEADER, value);
            }
            let data = Bytes::from(event.data.unwrap_or_default());
            return Ok(json_response(StatusCode::OK, headers, data));
        }
        let stream = connection.relay_until(
            request_id,
            self.sessions.keyring().clone(),
            inbound.grant.id,
        );
        let stream = self.while_allowed(Caller::of(&inbound), stream);
        let ids = EventIds::new(self.sessions.keyring().clone(), inbound.grant.id);
        let body = relay::sse(stream, watch, id, Some(pending), ids);
        let mut out = Response::new(body);
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        out.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(out)
    }

    /// Notifications and responses from the client: to the upstream session, unaudited.
    async fn pass_message(&self, inbound: Inbound, body: Bytes) -> Result<Response, Rejection> {
        let server = &inbound.grant.server;
        if server.transport == Transport::Sse {
            return self.pass_legacy(&inbound, &body).await;
        }
        let mut headers = request_headers(&inbound.headers, server, inbound.mirrored, true);
        self.upstream_session(&inbound.grant, inbound.session.as_ref(), &mut headers)?;
        inbound.span.propagate(&mut headers);
        let sent = inbound.span.clock();
        let response = self
            .upstream
            .send(Method::POST, &server.uri, headers, Some(body))
            .await;
        inbound.span.upstream_answered(&response, sent);
        Ok(self.relay(Caller::of(&inbound), response?, Watch::Nothing, None, None))
    }

    /// A client's message to a legacy (HTTP+SSE) upstream. A response whose id is a reply
    /// token sealed under this grant goes, with its original id, to the message endpoint the
    /// token names (see `replies`); anything else (notifications, responses to ids the gateway
    /// did not issue) is acknowledged and dropped: this transport has no stream to deliver
    /// them on (see `legacy`).
    async fn pass_legacy(&self, inbound: &Inbound, body: &Bytes) -> Result<Response, Rejection> {
        let grant = &inbound.grant;
        let opened = Message::parse(body).ok().and_then(|message| {
            crate::replies::open_response(self.sessions.keyring(), grant.id, message)
        });
        if let Some((reply, restored)) = opened {
            legacy::post_message(
                &self.upstream,
                &grant.server,
                &reply.endpoint,
                restored.encode(),
            )
            .await?;
        }
        Ok(StatusCode::ACCEPTED.into_response())
    }

    /// Passes an upstream answer on as it streams: as bytes when there is nothing to `watch`,
    /// else as an SSE stream, event by event (answers to `id` rewritten or inspected). A
    /// watched answer is therefore read as SSE whatever its `Content-Type` says: what the
    /// gateway cannot read as events does not reach the client unfiltered.
    /// `pending`, when given, records the outcome once the answer ends.
    fn relay(
        &self,
        caller: Caller<'_>,
        response: UpstreamResponse,
        watch: Watch,
        id: Option<RequestId>,
        pending: Option<Pending>,
    ) -> Response {
        let status = response.status();
        let mut headers = response_headers(response.headers());
        self.wrap_session(caller, response.headers(), &mut headers);
        // A request's SSE answer is read even when nothing in it is rewritten: the outcome
        // comes from its answer, and a result under another request's id, or a message the
        // gateway cannot read, is dropped. Other bodies stream through as bytes.
        let streams = is_event_stream(response.headers());
        let read = !matches!(watch, Watch::Nothing) || (id.is_some() && streams);
        let upstream = body_stream(response);
        let upstream = if streams {
            self.while_allowed(caller, upstream)
        } else {
            upstream
        };
        let body = if read {
            let ids = EventIds::new(self.sessions.keyring().clone(), caller.grant.id);
            relay::sse(upstream, watch, id, pending, ids)
        } else {
            relay::raw(upstream, pending)
        };
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }

    /// An SSE stream from the upstream, ended when its grant or session is ([`lifetime`]).
    fn while_allowed(&self, caller: Caller<'_>, stream: ByteStream) -> ByteStream {
        let session_ends = caller
            .session
            .and_then(|(_, client_id)| self.sessions.ends(caller.grant.id, client_id));
        let lifetime = Lifetime::new(self.grants.clone(), caller.grant, session_ends);
        let grant = caller.grant.id;
        let ended = async move {
            let why = lifetime.ended().await;
            tracing::info!(%grant, ?why, "closing a stream: its grant or session has ended");
        };
        stream.take_until(ended).boxed()
    }

    /// GET (the session's server→client stream, resumable with `Last-Event-ID`) and DELETE
    /// (end the session).
    async fn stream(
        &self,
        credential: Credential<'_>,
        headers: HeaderMap,
        method: Method,
        span: RequestSpan,
    ) -> Result<Response, Rejection> {
        let grant = self.authenticate(credential, &headers).await?;
        span.grant(&grant);
        check_headers_once(&headers).map_err(GatewayError::from)?;
        let session = match header_str(&headers, mcp::MCP_SESSION_ID) {
            Some(s) => Some(self.sessions.unwrap(grant.id, s)?),
            None => None,
        };
        if grant.server.transport == Transport::Sse {
            return if method == Method::DELETE {
                Ok(StatusCode::OK.into_response())
            } else {
                Err(GatewayError::MethodNotAllowed(
                    "this server's transport has no standalone stream",
                )
                .into())
            };
        }
        let mut upstream_headers = request_headers(&headers, &grant.server, Mirrored::None, false);
        if method == Method::GET {
            if !headers.contains_key(header::ACCEPT) {
                upstream_headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_static("text/event-stream"),
                );
            }
            // Only a GET resumes a stream, and only a GET's stream has its replays filtered:
            // a server that replayed on any request with this header would send a POST's or a
            // DELETE's answer, relayed as it is, the lists of earlier `tools/list`s unfiltered.
            if let Some(last) = headers.get(LAST_EVENT_ID_HEADER) {
                upstream_headers.insert(LAST_EVENT_ID_HEADER, last.clone());
            }
        }
        self.upstream_session(&grant, session.as_ref(), &mut upstream_headers)?;
        span.propagate(&mut upstream_headers);
        let sent = span.clock();
        let response = self
            .upstream
            .send(method.clone(), &grant.server.uri, upstream_headers, None)
            .await;
        span.upstream_answered(&response, sent);
        let response = response?;
        let watch = if method == Method::GET && response.status().is_success() {
            // A resumed stream replays earlier answers: a tools/list among them is filtered
            // as it was the first time. A GET stream is SSE, whatever its header says.
            Watch::Replays(self.tool_filter(&grant, ProtocolEra::Session).await?)
        } else {
            Watch::Nothing
        };
        let caller = Caller {
            grant: &grant,
            session: session
                .as_ref()
                .zip(header_str(&headers, mcp::MCP_SESSION_ID)),
        };
        Ok(self.relay(caller, response, watch, None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn checked_headers_come_once() {
        for name in CHECKED_ONCE {
            let twice = headers(&[(name, "a"), ("accept", "*/*"), (name, "b")]);
            let error = check_headers_once(&twice).unwrap_err();
            assert!(error.to_string().contains("repeated"), "{error}");
        }
        let plain = headers(&[
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-session-id", "s"),
            ("mcp-method", "tools/call"),
        ]);
        check_headers_once(&plain).unwrap();
        // Repeated parameter headers are the stateless check's to refuse (it names the tool's).
        check_headers_once(&headers(&[("mcp-param-a", "1"), ("mcp-param-a", "2")])).unwrap();
    }
}
