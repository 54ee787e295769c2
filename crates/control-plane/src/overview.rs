//! A server's overview: calls, denials and rate-limits over time (an SVG chart drawn on the
//! server), its busiest tools and the rules that deny most.

use std::fmt::Write as _;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use chrono::{DateTime, Duration, DurationRound, Utc};
use portcullis_core::{ServerId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Tenant;
use crate::dashboard::Layout;
use crate::error::{Error, Result};
use crate::input::{self, QueryParams};
use crate::servers;

/// One time bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start of the bucket.
    pub start: DateTime<Utc>,
    /// Requests.
    pub calls: i64,
    /// Denied or hidden.
    pub denials: i64,
    /// Rate-limited.
    pub rate_limited: i64,
}

/// A tool and its counts.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ToolCount {
    /// Tool name.
    pub tool: String,
    /// Calls.
    pub calls: i64,
    /// Of which denied, hidden or rate-limited.
    pub blocked: i64,
}

/// A rule and how often it denied.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RuleCount {
    /// The rule id.
    pub rule: String,
    /// Denials.
    pub count: i64,
}

/// The overview of one server.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Hours covered.
    pub hours: i64,
    /// Width of a bucket in minutes.
    pub bucket_minutes: i64,
    /// Buckets, oldest first.
    pub buckets: Vec<Bucket>,
    /// The busiest tools.
    pub top_tools: Vec<ToolCount>,
    /// The rules that denied most.
    pub top_denied_rules: Vec<RuleCount>,
}

/// `?hours=` (1 to 720, default 24).
#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    /// Hours to cover.
    pub hours: Option<i64>,
}

/// Computes the overview.
pub async fn overview(
    db: &sqlx::PgPool,
    tenant: TenantId,
    server: ServerId,
    hours: i64,
) -> Result<Overview> {
    if !(1..=720).contains(&hours) {
        return Err(Error::field("/hours", "use 1 to 720 hours"));
    }
    // About 24–48 buckets whatever the range.
    let bucket_minutes = ((hours * 60) / 24).max(5);
    let bucket = Duration::minutes(bucket_minutes);
    let now = Utc::now();
    let origin = now.duration_trunc(Duration::hours(1)).unwrap_or(now) - Duration::hours(hours);
    let rows: Vec<(DateTime<Utc>, i64, i64, i64)> = sqlx::query_as(
        "SELECT date_bin(make_interval(mins => $4), ts, $3) AS bucket,
                count(*),
                count(*) FILTER (WHERE decision IN ('deny', 'hidden')),
                count(*) FILTER (WHERE decision = 'rate_limited')
           FROM audit_events
          WHERE tenant_id = $1 AND server_id = $2 AND ts >= $3
          GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(origin)
    .bind(i32::try_from(bucket_minutes).unwrap_or(60))
    .fetch_all(db)
    .await?;
    let mut buckets = Vec::new();
    let mut start = origin;
    while start <= now {
        let found = rows.iter().find(|r| r.0 == start);
        buckets.push(Bucket {
            start,
            calls: found.map_or(0, |r| r.1),
            denials: found.map_or(0, |r| r.2),
            rate_limited: found.map_or(0, |r| r.3),
        });
        start += bucket;
    }
    let top_tools: Vec<ToolCount> = sqlx::query_as(
        "SELECT tool, count(*) AS calls,
                count(*) FILTER (WHERE decision IN ('deny', 'hidden', 'rate_limited')) AS blocked
           FROM audit_events
          WHERE tenant_id = $1 AND server_id = $2 AND ts >= $3 AND tool IS NOT NULL
          GROUP BY tool ORDER BY calls DESC, tool LIMIT 10",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(origin)
    .fetch_all(db)
    .await?;
    let top_denied_rules: Vec<RuleCount> = sqlx::query_as(
        "SELECT rule, count(*) AS count
           FROM audit_events
          WHERE tenant_id = $1 AND server_id = $2 AND ts >= $3 AND rule IS NOT NULL
            AND decision IN ('deny', 'hidden', 'rate_limited', 'approval_required')
          GROUP BY rule ORDER BY count DESC, rule LIMIT 10",
    )
    .bind(tenant.0)
    .bind(server.0)
    .bind(origin)
    .fetch_all(db)
    .await?;
    Ok(Overview {
        hours,
        bucket_minutes,
        buckets,
        top_tools,
        top_denied_rules,
    })
}

/// A line of the chart: its label, colour and value per bucket.
type Series = (&'static str, &'static str, fn(&Bucket) -> i64);

/// Draws the buckets as an SVG line chart. Only numbers and fixed labels go into it.
pub fn chart(overview: &Overview) -> String {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 44.0;
    const BOTTOM: f64 = 28.0;
    const TOP: f64 = 16.0;
    let plot_w = W - LEFT - 28.0;
    let plot_h = H - BOTTOM - TOP;
    let n = overview.buckets.len().max(2);
    let max = overview
        .buckets
        .iter()
        .map(|b| b.calls)
        .max()
        .unwrap_or(0)
        .max(1);
    // Four grid steps of 1, 2 or 5 times a power of ten keep the axis labels whole and round.
    let raw_step = (max as f64 / 4.0).max(1.0);
    let magnitude = 10f64.powi(raw_step.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * magnitude);
    let ceiling = step * 4.0;
    let x = |i: usize| LEFT + plot_w * i as f64 / (n - 1) as f64;
    let y = |v: i64| TOP + plot_h - plot_h * v as f64 / ceiling;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="calls, denials and rate limits over time" xmlns="http://www.w3.org/2000/svg">"#
    );
    for step in 0..=4 {
        let v = ceiling * f64::from(step) / 4.0;
        let yy = TOP + plot_h - plot_h * f64::from(step) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e3e6ea"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#6b7280">{}</text>"##,
            W - 28.0,
            LEFT - 6.0,
            yy + 3.0,
            v.round() as i64
        );
    }
    let label_every = (n / 6).max(1);
    for (i, b) in overview.buckets.iter().enumerate() {
        if i % label_every == 0 {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#6b7280">{}</text>"##,
                x(i),
                H - 8.0,
                b.start.format("%H:%M")
            );
        }
    }
    let series: [Series; 3] = [
        ("calls", "#2563eb", |b| b.calls),
        ("denials", "#dc2626", |b| b.denials),
        ("rate limited", "#d97706", |b| b.rate_limited),
    ];
    for (k, (label, colour, value)) in series.iter().enumerate() {
        let points: Vec<String> = overview
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{:.1},{:.1}", x(i), y(value(b))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let lx = LEFT + 8.0 + 110.0 * k as f64;
        let _ = write!(
            svg,
            r##"<rect x="{lx:.1}" y="2" width="10" height="10" fill="{colour}"/><text x="{:.1}" y="11" font-size="11" fill="#374151">{label}</text>"##,
            lx + 14.0
        );
    }
    svg.push_str("</svg>");
    svg
}

async fn api_overview(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RangeQuery>,
) -> Result<axum::Json<Value>> {
    let id: ServerId = input::id(&id)?;
    servers::find(state.db(), tenant.id, id).await?;
    let o = overview(state.db(), tenant.id, id, q.hours.unwrap_or(24)).await?;
    Ok(axum::Json(json!(o)))
}

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    server_id: String,
    server_name: String,
    hours: i64,
    chart: String,
    total_calls: i64,
    total_denials: i64,
    total_limited: i64,
    top_tools: Vec<ToolCount>,
    top_rules: Vec<RuleCount>,
}

async fn overview_page(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RangeQuery>,
) -> Result<OverviewPage> {
    let id: ServerId = input::id(&id)?;
    let server = servers::find(state.db(), tenant.id, id).await?;
    let o = overview(state.db(), tenant.id, id, q.hours.unwrap_or(24)).await?;
    Ok(OverviewPage {
        layout: Layout::new(&tenant, format!("{} overview", server.name), "servers"),
        server_id: server.id.to_string(),
        server_name: server.name,
        hours: o.hours,
        chart: chart(&o),
        total_calls: o.buckets.iter().map(|b| b.calls).sum(),
        total_denials: o.buckets.iter().map(|b| b.denials).sum(),
        total_limited: o.buckets.iter().map(|b| b.rate_limited).sum(),
        top_tools: o.top_tools,
        top_rules: o.top_denied_rules,
    })
}

/// `/api/v1/servers/{id}/overview`.
pub fn api() -> Router<AppState> {
    Router::new().route("/api/v1/servers/{id}/overview", get(api_overview))
}

/// `/servers/{id}/overview`.
pub fn pages() -> Router<AppState> {
    Router::new().route("/servers/{id}/overview", get(overview_page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_draw_every_series() {
        let now = Utc::now();
        let o = Overview {
            hours: 2,
            bucket_minutes: 60,
            buckets: vec![
                Bucket {
                    start: now,
                    calls: 10,
                    denials: 2,
                    rate_limited: 1,
                },
                Bucket {
                    start: now,
                    calls: 0,
                    denials: 0,
                    rate_limited: 0,
                },
            ],
            top_tools: vec![],
            top_denied_rules: vec![],
        };
        let svg = chart(&o);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
