//! Reading the audit log: filtered, keyset-paginated lists, one event's detail, CSV and JSONL
//! export of the current filter (streamed), and a live tail (Server-Sent Events).
//!
//! Pagination walks `(ts, id)` downwards; each filter has an index ending in `(ts DESC, id DESC)`
//! so a page is an index range scan whatever the table's size. The cursor is opaque to callers.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::Stream;
use portcullis_core::TenantId;
use portcullis_core::audit::AuditDecision;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::AppState;
use crate::admin_audit;
use crate::auth::{Admin, Tenant};
use crate::dashboard::{Layout, when};
use crate::error::{Error, FieldError, Result};
use crate::input::{self, QueryParams};

/// One event as the list shows it (DESIGN §7).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventSummary {
    /// Event id.
    pub id: Uuid,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// The grant.
    pub grant_id: Uuid,
    /// The grant's identity.
    pub identity: String,
    /// The server.
    pub server_id: Uuid,
    /// JSON-RPC method.
    pub method: String,
    /// Tool, for `tools/call`.
    pub tool: Option<String>,
    /// The decision.
    pub decision: String,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The message.
    pub message: Option<String>,
    /// Upstream HTTP status.
    pub upstream_status: Option<i32>,
    /// Latency.
    pub latency_ms: Option<f64>,
    /// Why the call ended without a whole answer, when it did.
    pub upstream_error: Option<String>,
}

const SUMMARY: &str = "id, ts, grant_id, identity, server_id, method, tool, decision, rule, message, upstream_status, latency_ms, upstream_error";

/// The query parameters that filter the list, the export and the tail alike ([`Filter`]'s
/// first fields).
pub const FILTERS: [&str; 6] = [
    "server_id",
    "grant_id",
    "identity",
    "tool",
    "decision",
    "outcome",
];

/// The filter of the list, the export and the tail. Text fields as given in the query string.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Server id.
    pub server_id: Option<String>,
    /// Grant id.
    pub grant_id: Option<String>,
    /// Identity (exact).
    pub identity: Option<String>,
    /// Tool (exact).
    pub tool: Option<String>,
    /// Decision.
    pub decision: Option<String>,
    /// `failed`: only forwarded calls that did not succeed upstream ([`FAILED`]).
    pub outcome: Option<String>,
    /// From (inclusive), RFC 3339 or `YYYY-MM-DDTHH:MM` (UTC).
    pub since: Option<String>,
    /// To (exclusive).
    pub until: Option<String>,
    /// Opaque cursor from `next_cursor`.
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<String>,
    /// A notice (dashboard only).
    pub notice: Option<String>,
}

/// A filter checked and typed.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    server: Option<Uuid>,
    grant: Option<Uuid>,
    identity: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    failed: bool,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
}

/// The events of `outcome=failed`: no whole answer (`upstream_error`), an HTTP error from the
/// upstream, or a tool result that reported an error. The partial index
/// `audit_events_failed_idx` has this predicate, word for word, so the planner can use it.
const FAILED: &str = "(upstream_error IS NOT NULL OR upstream_status >= 400 OR is_error)";

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_time(pointer: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").map(|n| n.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").map(|n| n.and_utc()))
        .map_err(|_| Error::field(pointer, "use a time like 2030-01-31T12:00:00Z"))
}

/// Encodes a position for `next_cursor`.
pub fn encode_cursor(ts: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", ts.timestamp_micros(), id))
}

fn decode_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
    let (micros, id) = raw.split_once(':')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

impl Filter {
    /// Checks every field, reporting all problems at once.
    pub fn parse(&self) -> Result<Parsed> {
        let mut errors = Vec::new();
        let mut uuid = |pointer: &str, v: &Option<String>| match blank(v).map(str::parse::<Uuid>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                errors.push(FieldError::new(pointer, "is not an id"));
                None
            }
        };
        let server = uuid("/server_id", &self.server_id);
        let grant = uuid("/grant_id", &self.grant_id);
        let decision = blank(&self.decision).map(str::to_owned);
        if let Some(d) = &decision
            && d.parse::<AuditDecision>().is_err()
        {
            errors.push(FieldError::new(
                "/decision",
                "use allow, deny, hidden, rate_limited, approval_required or error",
            ));
        }
        let failed = match blank(&self.outcome) {
            None => false,
            Some("failed") => true,
            Some(_) => {
                errors.push(FieldError::new(
                    "/outcome",
                    "use failed, or leave it empty for any outcome",
                ));
                false
            }
        };
        let mut time =
            |pointer: &str, v: &Option<String>| match blank(v).map(|t| parse_time(pointer, t)) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(Error::Validation(mut e))) => {
                    errors.append(&mut e);
                    None
                }
                Some(Err(_)) => None,
            };
        let since = time("/since", &self.since);
        let until = time("/until", &self.until);
        let cursor = match blank(&self.cursor) {
            None => None,
            Some(c) => match decode_cursor(c) {
                Some(c) => Some(c),
                None => {
                    errors.push(FieldError::new("/cursor", "is not a cursor from this API"));
                    None
                }
            },
        };
        let limit = match blank(&self.limit).map(str::parse::<i64>) {
            None => 50,
            Some(Ok(n)) if (1..=500).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError::new("/limit", "use 1 to 500"));
                50
            }
        };
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        Ok(Parsed {
            server,
            grant,
            identity: blank(&self.identity).map(str::to_owned),
            tool: blank(&self.tool).map(str::to_owned),
            decision,
            failed,
            since,
            until,
            cursor,
            limit,
        })
    }

    /// The filter as a query string (without cursor), for links.
    pub fn query_string(&self) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("server_id", &self.server_id),
            ("grant_id", &self.grant_id),
            ("identity", &self.identity),
            ("tool", &self.tool),
            ("decision", &self.decision),
            ("outcome", &self.outcome),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = blank(v) {
                pairs.append_pair(k, v);
            }
        }
        pairs.finish()
    }
}

fn push_filter(q: &mut QueryBuilder<Postgres>, tenant: TenantId, f: &Parsed) {
    q.push(" WHERE tenant_id = ").push_bind(tenant.0);
    if let Some(v) = f.server {
        q.push(" AND server_id = ").push_bind(v);
    }
    if let Some(v) = f.grant {
        q.push(" AND grant_id = ").push_bind(v);
    }
    if let Some(v) = &f.identity {
        q.push(" AND identity = ").push_bind(v.clone());
    }
    if let Some(v) = &f.tool {
        q.push(" AND tool = ").push_bind(v.clone());
    }
    if let Some(v) = &f.decision {
        q.push(" AND decision = ").push_bind(v.clone());
    }
    if f.failed {
        q.push(" AND ").push(FAILED);
    }
    if let Some(v) = f.since {
        q.push(" AND ts >= ").push_bind(v);
    }
    if let Some(v) = f.until {
        q.push(" AND ts < ").push_bind(v);
    }
}

/// One page of events, newest first, and the cursor of the next page.
pub async fn page(
    db: &PgPool,
    tenant: TenantId,
    f: &Parsed,
) -> Result<(Vec<EventSummary>, Option<String>)> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {SUMMARY} FROM audit_events"));
    push_filter(&mut q, tenant, f);
    if let Some((ts, id)) = f.cursor {
        q.push(" AND (ts, id) < (")
            .push_bind(ts)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY ts DESC, id DESC LIMIT ")
        .push_bind(f.limit + 1);
    let mut events: Vec<EventSummary> = q.build_query_as().fetch_all(db).await?;
    let next = if events.len() as i64 > f.limit {
        events.truncate(f.limit as usize);
        events.last().map(|e| encode_cursor(e.ts, e.id))
    } else {
        None
    };
    Ok((events, next))
}

/// Everything stored about one event.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventDetail {
    /// The list fields.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub summary: EventSummary,
    /// Policy in force.
    pub policy_id: Option<Uuid>,
    /// Its version.
    pub policy_version: Option<i32>,
    /// Protocol version.
    pub protocol: Option<String>,
    /// Client-facing session id.
    pub session: Option<String>,
    /// HTTP request id.
    pub request_id: Option<String>,
    /// Top-level argument names.
    pub arg_keys: Vec<String>,
    /// SHA-256 of the canonical arguments.
    pub arg_digest: Option<String>,
    /// Redacted values, when the policy opted in.
    pub arguments: Option<Value>,
    /// Whether the tool answered with an error.
    pub is_error: Option<bool>,
    /// For an identity-bound call, the issuer of the token that verified the identity.
    pub issuer: Option<String>,
    /// For an identity-bound call, the token's `jti`.
    pub jti: Option<String>,
}

/// One event of the tenant.
pub async fn detail(db: &PgPool, tenant: TenantId, id: Uuid) -> Result<EventDetail> {
    let columns = format!(
        "{SUMMARY}, policy_id, policy_version, protocol, session, request_id, arg_keys, arg_digest, arguments, is_error, issuer, jti"
    );
    // Event ids are UUID v7 minted on arrival, so their timestamp brackets `ts`: that lets the
    // lookup use the primary key of one or two partitions instead of scanning all of them.
    if let Some(stamp) = id.get_timestamp() {
        let (secs, nanos) = stamp.to_unix();
        if let Some(at) = DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), nanos) {
            let found: Option<EventDetail> = sqlx::query_as(crate::sql(format!(
                "SELECT {columns} FROM audit_events
                  WHERE ts BETWEEN $3 AND $4 AND id = $2 AND tenant_id = $1"
            )))
            .bind(tenant.0)
            .bind(id)
            .bind(at - chrono::Duration::minutes(10))
            .bind(at + chrono::Duration::minutes(10))
            .fetch_optional(db)
            .await?;
            if let Some(found) = found {
                return Ok(found);
            }
        }
    }
    Ok(sqlx::query_as(crate::sql(format!(
        "SELECT {columns} FROM audit_events WHERE tenant_id = $1 AND id = $2 LIMIT 1"
    )))
    .bind(tenant.0)
    .bind(id)
    .fetch_one(db)
    .await?)
}

// ---- export ----

const EXPORT_PAGE: i64 = 1000;
/// Most rows one export writes.
const EXPORT_MAX: usize = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

fn csv_field(out: &mut String, text: &str) {
    // A leading =, +, - or @ (or a tab or carriage return before one) would make a
    // spreadsheet evaluate the cell: neutralise it.
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&guarded.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&guarded);
    }
}

const CSV_HEADER: &str = "id,ts,grant_id,identity,server_id,method,tool,decision,rule,message,upstream_status,latency_ms,upstream_error\n";

fn csv_line(e: &EventSummary) -> String {
    let mut out = String::new();
    let fields = [
        e.id.to_string(),
        e.ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.grant_id.to_string(),
        e.identity.clone(),
        e.server_id.to_string(),
        e.method.clone(),
        e.tool.clone().unwrap_or_default(),
        e.decision.clone(),
        e.rule.clone().unwrap_or_default(),
        e.message.clone().unwrap_or_default(),
        e.upstream_status.map(|s| s.to_string()).unwrap_or_default(),
        e.latency_ms.map(|l| format!("{l:.3}")).unwrap_or_default(),
        e.upstream_error.clone().unwrap_or_default(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(&mut out, f);
    }
    out.push('\n');
    out
}

fn export_stream(
    db: PgPool,
    tenant: TenantId,
    filter: Parsed,
    format: Format,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let start = (Some(filter), 0usize, true);
    futures::stream::unfold(start, move |(filter, written, first)| {
        let db = db.clone();
        async move {
            let mut filter = filter?;
            let mut chunk = String::new();
            if first && format == Format::Csv {
                chunk.push_str(CSV_HEADER);
            }
            filter.limit = EXPORT_PAGE;
            let (events, next) = match page(&db, tenant, &filter).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed mid-way");
                    return Some((
                        Err(std::io::Error::other("export failed")),
                        (None, written, false),
                    ));
                }
            };
            for e in &events {
                match format {
                    Format::Csv => chunk.push_str(&csv_line(e)),
                    Format::Jsonl => {
                        chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
                        chunk.push('\n');
                    }
                }
            }
            let written = written + events.len();
            let next_state = match next {
                Some(cursor) if written < EXPORT_MAX => {
                    filter.cursor = decode_cursor(&cursor);
                    Some(filter)
                }
                _ => None,
            };
            if chunk.is_empty() && next_state.is_none() && !first {
                return None;
            }
            Some((Ok(Bytes::from(chunk)), (next_state, written, false)))
        }
    })
}

async fn export(
    state: &AppState,
    tenant: &Tenant,
    filter: &Filter,
    format: Format,
) -> Result<Response> {
    let mut parsed = filter.parse()?;
    parsed.cursor = None;
    let (content_type, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Jsonl => ("application/x-ndjson", "jsonl"),
    };
    let body = Body::from_stream(export_stream(
        state.shared.db.clone(),
        tenant.id,
        parsed,
        format,
    ));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"audit-{}.{ext}\"",
                    Utc::now().format("%Y%m%dT%H%M%SZ")
                ),
            ),
        ],
        body,
    )
        .into_response())
}

// ---- live tail ----

/// How far back the tail looks for events ingested late.
const TAIL_LOOKBACK: chrono::Duration = chrono::Duration::seconds(30);
/// Events per query of the tail.
const TAIL_PAGE: i64 = 200;
/// Queries per second of the tail, at most: past 5,000 new events a second it shows the newest.
const TAIL_PAGES: usize = 25;

fn tail_stream(
    state: AppState,
    tenant: TenantId,
    filter: Parsed,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let started = Utc::now();
    let shutdown = state.shutdown.clone();
    let seen: HashSet<Uuid> = HashSet::new();
    futures::stream::unfold(
        (state, filter, seen, started),
        move |(state, mut filter, mut seen, started)| {
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return None,
                    }
                    let floor =
                        (Utc::now() - TAIL_LOOKBACK).max(started - chrono::Duration::seconds(5));
                    filter.since = Some(filter.since.map_or(floor, |s| s.max(floor)));
                    filter.cursor = None;
                    filter.limit = TAIL_PAGE;
                    // Newest first, page after page, down to what was sent already (or the
                    // look-back): a burst of more than a page a second is sent whole.
                    let mut events = Vec::new();
                    let mut failed = false;
                    for _ in 0..TAIL_PAGES {
                        match page(state.db(), tenant, &filter).await {
                            Ok((more, next)) => {
                                let reached = more.iter().any(|e| seen.contains(&e.id));
                                events.extend(more);
                                match next {
                                    Some(cursor) if !reached => {
                                        filter.cursor = decode_cursor(&cursor);
                                    }
                                    _ => break,
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "audit tail query failed");
                                failed = true;
                                break;
                            }
                        }
                    }
                    filter.cursor = None;
                    if failed {
                        continue;
                    }
                    let fresh: Vec<&EventSummary> = events
                        .iter()
                        .rev()
                        .filter(|e| !seen.contains(&e.id))
                        .collect();
                    if fresh.is_empty() {
                        continue;
                    }
                    let data = json!({ "events": fresh });
                    for e in &fresh {
                        seen.insert(e.id);
                    }
                    // Ids older than the look-back can never come back: forget them.
                    if seen.len() > 10_000 {
                        let keep: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
                        seen.retain(|id| keep.contains(id));
                    }
                    let event = Event::default().event("events").data(data.to_string());
                    return Some((Ok(event), (state, filter, seen, started)));
                }
            }
        },
    )
}

// ---- API ----

async fn api_list(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<axum::Json<Value>> {
    let parsed = filter.parse()?;
    let (events, next) = page(state.db(), tenant.id, &parsed).await?;
    Ok(axum::Json(json!({ "events": events, "next_cursor": next })))
}

async fn api_detail(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<axum::Json<EventDetail>> {
    Ok(axum::Json(
        detail(state.db(), tenant.id, input::id(&id)?).await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
struct ExportQuery {
    #[serde(flatten)]
    filter: Filter,
    format: Option<String>,
}

async fn api_export(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(q): QueryParams<ExportQuery>,
) -> Result<Response> {
    let format = match q.format.as_deref() {
        None | Some("csv") => Format::Csv,
        Some("jsonl") => Format::Jsonl,
        Some(_) => return Err(Error::field("/format", "use csv or jsonl")),
    };
    export(&state, &tenant, &q.filter, format).await
}

async fn api_tail(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<Response> {
    let parsed = filter.parse()?;
    let stream = tail_stream(state, tenant.id, parsed);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `/api/v1/audit…` and `/api/v1/admin-audit`.
pub(crate) fn api() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit", get(api_list))
        .route("/api/v1/audit/export", get(api_export))
        .route("/api/v1/audit/tail", get(api_tail))
        .route("/api/v1/audit/{id}", get(api_detail))
        .merge(admin_audit::api())
}

// ---- pages ----

struct Row {
    id: String,
    ts: String,
    identity: String,
    server: String,
    /// The server's id, for the link to the tool's page.
    server_id: String,
    method: String,
    tool: String,
    decision: String,
    rule: String,
    message: String,
    status: String,
    /// Why the call ended without a whole answer (the status cell's title).
    failure: String,
    latency: String,
}

/// The list's upstream cell: the status, marked when the answer did not come whole.
fn upstream_cell(status: Option<i32>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(s), None) => s.to_string(),
        (Some(s), Some(_)) => format!("{s} (failed)"),
        (None, Some(_)) => "no answer".into(),
        (None, None) => String::new(),
    }
}

struct Choice {
    id: String,
    label: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    filter: Filter,
    rows: Vec<Row>,
    next: String,
    query: String,
    servers: Vec<Choice>,
    decisions: Vec<&'static str>,
    problems: Vec<FieldError>,
}

async fn names(state: &AppState, tenant: TenantId) -> Result<Vec<(Uuid, String)>> {
    Ok(
        sqlx::query_as("SELECT id, name FROM servers WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.0)
            .fetch_all(state.db())
            .await?,
    )
}

async fn audit_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<Response> {
    let servers = names(&state, tenant.id).await?;
    let (events, next, problems) = match filter.parse() {
        Ok(parsed) => {
            let (events, next) = page(state.db(), tenant.id, &parsed).await?;
            (events, next, Vec::new())
        }
        Err(Error::Validation(errors)) => (Vec::new(), None, errors),
        Err(e) => return Err(e),
    };
    let server_name = |id: Uuid| {
        servers
            .iter()
            .find(|s| s.0 == id)
            .map(|s| s.1.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let rows = events
        .iter()
        .map(|e| Row {
            id: e.id.to_string(),
            ts: when(&e.ts),
            identity: e.identity.clone(),
            server: server_name(e.server_id),
            server_id: e.server_id.to_string(),
            method: e.method.clone(),
            tool: e.tool.clone().unwrap_or_default(),
            decision: e.decision.clone(),
            rule: e.rule.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            status: upstream_cell(e.upstream_status, e.upstream_error.as_deref()),
            failure: e.upstream_error.clone().unwrap_or_default(),
            latency: e
                .latency_ms
                .map(|l| format!("{l:.1} ms"))
                .unwrap_or_default(),
        })
        .collect();
    let query = filter.query_string();
    let page = AuditPage {
        layout: Layout::new(&tenant, "Audit log", "audit").with_notice(filter.notice.clone()),
        rows,
        next: next.unwrap_or_default(),
        query,
        servers: servers
            .iter()
            .map(|(id, name)| Choice {
                id: id.to_string(),
                label: name.clone(),
            })
            .collect(),
        decisions: AuditDecision::ALL.iter().map(|d| d.as_str()).collect(),
        problems,
        filter,
    };
    Ok(page.into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "audit_event.html")]
struct EventPage {
    layout: Layout,
    event: EventDetail,
    ts: String,
    server: String,
    arguments: String,
    arg_keys: String,
}

async fn event_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<EventPage> {
    let event = detail(state.db(), tenant.id, input::id(&id)?).await?;
    let server = names(&state, tenant.id)
        .await?
        .into_iter()
        .find(|s| s.0 == event.summary.server_id)
        .map(|s| s.1)
        .unwrap_or_else(|| event.summary.server_id.to_string());
    Ok(EventPage {
        layout: Layout::new(&tenant, "Audit event", "audit"),
        ts: event
            .summary
            .ts
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        server,
        arguments: event
            .arguments
            .as_ref()
            .map(|a| serde_json::to_string_pretty(a).unwrap_or_default())
            .unwrap_or_default(),
        arg_keys: event.arg_keys.join(", "),
        event,
    })
}

async fn export_csv_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<Response> {
    export(&state, &tenant, &filter, Format::Csv).await
}

async fn export_jsonl_page(
    State(state): State<AppState>,
    tenant: Tenant,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<Response> {
    export(&state, &tenant, &filter, Format::Jsonl).await
}

struct AdminRow {
    at: String,
    actor: String,
    action: String,
    object: String,
    before: String,
    after: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "admin_audit.html")]
struct AdminAuditPage {
    layout: Layout,
    rows: Vec<AdminRow>,
    next: String,
    kind: String,
}

async fn admin_audit_page(
    State(state): State<AppState>,
    Admin(tenant): Admin,
    QueryParams(q): QueryParams<admin_audit::ListQuery>,
) -> Result<AdminAuditPage> {
    let limit = q.page_size()?;
    let entries = admin_audit::list(state.db(), tenant.id, &q).await?;
    let next = if entries.len() as i64 == limit {
        entries.last().map(|e| e.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let pretty = |v: &Option<Value>| {
        v.as_ref()
            .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
            .unwrap_or_default()
    };
    Ok(AdminAuditPage {
        layout: Layout::new(&tenant, "Admin audit", "admin-audit"),
        rows: entries
            .iter()
            .map(|e| AdminRow {
                at: when(&e.created_at),
                actor: e.actor_label.clone(),
                action: e.action.clone(),
                object: format!("{} {}", e.object_kind, e.object_id),
                before: pretty(&e.before),
                after: pretty(&e.after),
            })
            .collect(),
        next,
        kind: q.object_kind.clone().unwrap_or_default(),
    })
}

/// The audit pages.
pub(crate) fn pages() -> Router<AppState> {
    Router::new()
        .route("/audit", get(audit_page))
        .route("/audit/export.csv", get(export_csv_page))
        .route("/audit/export.jsonl", get(export_jsonl_page))
        .route("/audit/{id}", get(event_page))
        .route("/admin-audit", get(admin_audit_page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let ts = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(ts, id)), Some((ts, id)));
        assert_eq!(decode_cursor("garbage"), None);
    }

    #[test]
    fn csv_quotes_and_guards_formulas() {
        let mut out = String::new();
        csv_field(&mut out, "a,\"b\"");
        assert_eq!(out, "\"a,\"\"b\"\"\"");
        let mut out = String::new();
        csv_field(&mut out, "=cmd()");
        assert_eq!(out, "'=cmd()");
        let mut out = String::new();
        csv_field(&mut out, "\t=cmd()");
        assert_eq!(out, "'\t=cmd()");
        let mut out = String::new();
        csv_field(&mut out, "\r=cmd()");
        assert_eq!(out, "\"'\r=cmd()\"");
    }

    #[test]
    fn filters_report_every_problem() {
        let f = Filter {
            decision: Some("maybe".into()),
            since: Some("yesterday".into()),
            limit: Some("9999".into()),
            ..Filter::default()
        };
        let Err(Error::Validation(errors)) = f.parse() else {
            panic!("expected errors")
        };
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, vec!["/decision", "/since", "/limit"]);
    }
}
