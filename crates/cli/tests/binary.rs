//! The `portcullis` binary as an operator meets it: start-up errors, migrate, serve, SIGTERM.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use portcullis_tests::{TestDatabase, TestRedis};
use sqlx::AssertSqlSafe;

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.env_remove("DATABASE_URL").env_remove("REDIS_URL");
    cmd
}

#[test]
fn malformed_database_url_exits_with_one_clear_line() {
    for url in [
        "not a url",
        "mysql://root@127.0.0.1/x",
        "postgres://127.0.0.1:notaport/x",
    ] {
        let out = portcullis()
            .args(["serve", "--database-url", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}: exited 0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{url}: expected one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("error: invalid DATABASE_URL"),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{url}: {stderr}");
    }
}

#[test]
fn missing_encryption_keys_are_named() {
    let out = portcullis()
        .arg("gateway")
        .env_remove("PORTCULLIS_ENCRYPTION_KEYS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: invalid PORTCULLIS_ENCRYPTION_KEYS: not set"),
        "{stderr}"
    );
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = portcullis().args(["keygen", "--id", "7"]).output().unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    let ring = portcullis_core::Keyring::parse(key.trim()).unwrap();
    assert_eq!(ring.active_id(), 7);
}

#[test]
fn malformed_database_url_from_the_environment_too() {
    let out = portcullis()
        .arg("gateway")
        .env("DATABASE_URL", "::::")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: invalid DATABASE_URL"));
}

#[tokio::test]
async fn migrate_creates_and_migrates_a_database() {
    // A harness database supplies the server; migrate makes a database of its own beside it.
    let db = TestDatabase::new().await;
    let name = format!("{}_m", db.name());
    let url = db.url().replace(db.name(), &name);
    let out = portcullis()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    // A second run is a no-op.
    let out = portcullis()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 applied"));
    sqlx::raw_sql(AssertSqlSafe(format!(
        r#"DROP DATABASE "{name}" WITH (FORCE)"#
    )))
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn serve_prints_both_urls_and_stops_cleanly_on_sigterm() {
    let db = TestDatabase::new().await;
    let redis = TestRedis::new().await;
    let mut child = portcullis()
        .args([
            "serve",
            "--database-url",
            &db.url(),
            "--redis-url",
            &portcullis_tests::redis_url(),
            "--redis-prefix",
            redis.prefix(),
            "--control-plane-addr",
            "127.0.0.1:0",
            "--gateway-addr",
            "127.0.0.1:0",
            "--encryption-keys",
            &portcullis_tests::encryption_keys(),
            "--session-keys",
            &portcullis_tests::encryption_keys(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let urls: Vec<String> = stdout
        .lines()
        .take(2)
        .map(|l| l.unwrap().split_whitespace().last().unwrap().to_owned())
        .collect();
    assert_eq!(urls.len(), 2);
    for url in &urls {
        let resp = reqwest::get(format!("{url}readyz")).await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
    }

    let status = portcullis_tests::terminate(&mut child).await;
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    let last: serde_json::Value = serde_json::from_str(logs.lines().last().unwrap()).unwrap();
    assert_eq!(last["message"], "stopped", "logs are JSON lines: {logs}");
}
