//! Benchmark: the audit page's filtered query with 1,000,000 rows for one tenant.
//!
//! Fills a fresh test database with 1,000,000 audit events of one tenant spread over seven days
//! (plus 200,000 of another tenant), starts the control plane, and times `GET /api/v1/audit`
//! (first page of 50, and a deep page through the cursor) for each filter the page offers.
//! Prints p50/p95/p99 per filter. Run it with
//!
//! ```text
//! cargo bench -p portcullis-tests --bench audit_query
//! ```
//!
//! (`PORTCULLIS_BENCH_ROWS` changes the row count.) The figures go to docs/performance.md.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use portcullis::{Config, Role};
use portcullis_tests::{TestDatabase, TestRedis};
use serde_json::Value;

const SAMPLES: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let rows: i64 = std::env::var("PORTCULLIS_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let pool = db.pool();
    let keys = portcullis_tests::encryption_keys();
    let url = db.url();
    let redis_url = portcullis_tests::redis_url();
    let mail = portcullis_tests::Mailbox::new();
    let transport = mail.transport();
    let config = Config::from_flags([
        "--mail-transport",
        transport.as_str(),
        "--database-url",
        url.as_str(),
        "--redis-url",
        redis_url.as_str(),
        "--redis-prefix",
        redis.prefix(),
        "--control-plane-addr",
        "127.0.0.1:0",
        "--encryption-keys",
        keys.as_str(),
        "--log",
        "warn",
    ])
    .unwrap();
    let app = portcullis::start(&config, Role::ControlPlane)
        .await
        .unwrap();
    let base = format!("http://{}", app.control_plane.unwrap());
    let http = reqwest::Client::new();
    let signup = portcullis_tests::signup(
        &http,
        &base,
        &mail,
        ("bench@example.com", "benchmark password", "Bench"),
    )
    .await;
    let token = signup["api_token"].as_str().unwrap().to_owned();
    let tenant = signup["tenant_id"].as_str().unwrap().to_owned();

    // Partitions for the week the rows span, then the rows, generated in Postgres.
    sqlx::query(
        "SELECT portcullis_ensure_audit_partitions((now() AT TIME ZONE 'UTC')::date - 8, 10)",
    )
    .execute(pool)
    .await
    .unwrap();
    let started = Instant::now();
    let servers: Vec<String> = (0..5).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let grants: Vec<String> = (0..20).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let fill = |tenant: String, count: i64| {
        let servers = servers.clone();
        let grants = grants.clone();
        async move {
            sqlx::query(
                "INSERT INTO audit_events (id, ts, tenant_id, grant_id, identity, server_id, method, tool, decision, rule,
                                           message, upstream_status, latency_ms, arg_keys, is_error, upstream_error)
                 SELECT gen_random_uuid(),
                        now() - (i::double precision / $2 * interval '7 days'),
                        $1::uuid,
                        ($3::uuid[])[1 + i % 20],
                        'agent-' || (i % 50),
                        ($4::uuid[])[1 + i % 5],
                        'tools/call',
                        'tool_' || (i % 40),
                        (ARRAY['allow','allow','allow','deny','hidden','rate_limited','approval_required','error'])[1 + i % 8],
                        '/tools/tool_' || (i % 40) || '/limits/0',
                        'message',
                        CASE WHEN i % 997 = 0 THEN NULL ELSE 200 END,
                        (i % 500)::double precision / 10,
                        ARRAY['to', 'body'],
                        i % 1009 = 0,
                        CASE WHEN i % 997 = 0 THEN 'no answer within 60s' END
                   FROM generate_series(1, $2) AS i",
            )
            .bind(tenant)
            .bind(count)
            .bind(&grants)
            .bind(&servers)
            .execute(pool)
            .await
            .unwrap();
        }
    };
    fill(tenant.clone(), rows).await;
    // A quiet server whose calls are all allowed and all succeed: "its denials" and "its
    // failures" match nothing.
    let quiet = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "UPDATE audit_events SET server_id = $2::uuid, decision = 'allow', upstream_status = 200,
                                 is_error = false, upstream_error = NULL
          WHERE tenant_id = $1::uuid AND identity = 'agent-11'",
    )
    .bind(&tenant)
    .bind(&quiet)
    .execute(pool)
    .await
    .unwrap();
    fill(uuid::Uuid::now_v7().to_string(), rows / 5).await;
    sqlx::query("ANALYZE audit_events")
        .execute(pool)
        .await
        .unwrap();
    println!(
        "inserted {rows} rows for the tenant (+{}) in {:?}",
        rows / 5,
        started.elapsed()
    );

    let since = (chrono::Utc::now() - chrono::Duration::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let until = (chrono::Utc::now() - chrono::Duration::days(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let filters: Vec<(&str, String)> = vec![
        ("no filter", String::new()),
        ("decision=deny", "decision=deny".into()),
        ("server_id", format!("server_id={}", servers[2])),
        (
            "grant_id + until",
            format!("grant_id={}&until={until}", grants[7]),
        ),
        (
            "identity + since",
            format!("identity=agent-3&since={since}"),
        ),
        ("tool + decision", "tool=tool_7&decision=error".into()),
        (
            "identity + decision (1 in 200)",
            "identity=agent-3&decision=deny".into(),
        ),
        (
            "tool + decision, no match",
            "tool=tool_7&decision=allow".into(),
        ),
        ("time range only", format!("since={until}&until={since}")),
        (
            "server + decision, no match",
            format!("server_id={quiet}&decision=deny"),
        ),
        (
            "identity + decision, no match",
            "identity=agent-11&decision=deny".into(),
        ),
        ("outcome=failed (1 in 500)", "outcome=failed".into()),
        ("tool + outcome=failed", "tool=tool_7&outcome=failed".into()),
        (
            "server + outcome=failed, no match",
            format!("server_id={quiet}&outcome=failed"),
        ),
        (
            "outcome=failed + since",
            format!("outcome=failed&since={since}"),
        ),
    ];
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "filter (first page of 50)", "p50", "p95", "p99"
    );
    for (name, query) in &filters {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            let resp = http
                .get(format!("{base}/api/v1/audit?limit=50&{query}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let _: Value = resp.json().await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{name:<34} {:>9.2?} {:>9.2?} {:>9.2?}",
            percentile(&times, 0.5),
            percentile(&times, 0.95),
            percentile(&times, 0.99)
        );
    }
    // A deep page: follow the cursor 40 pages in, then time the next page.
    let mut cursor = String::new();
    for _ in 0..40 {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/audit?limit=50&decision=deny&cursor={cursor}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let resp = http
            .get(format!(
                "{base}/api/v1/audit?limit=50&decision=deny&cursor={cursor}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let _: Value = resp.json().await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{:<34} {:>9.2?} {:>9.2?} {:>9.2?}",
        "decision=deny, page 41 (cursor)",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 0.99)
    );
    app.stop().await.unwrap();
}
