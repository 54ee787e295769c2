//! `portcullis-redis-cluster -- COMMAND ARGS…`: starts a Redis Cluster of 3 masters and 3
//! replicas on loopback ports, runs COMMAND with `REDIS_URL` naming its nodes and
//! `PORTCULLIS_TEST_REDIS_CLUSTER=1` (the test harness then configures every service with
//! `--redis-cluster`), stops the cluster and exits with COMMAND's status.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).skip_while(|a| a == "--").collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: portcullis-redis-cluster -- COMMAND ARGS…");
        return ExitCode::from(2);
    };
    let cluster = match portcullis_tests::RedisCluster::start(3, 1) {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("cannot start the Redis Cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("Redis Cluster up: {}", cluster.url());
    let status = Command::new(program)
        .args(rest)
        .env("REDIS_URL", cluster.url())
        .env("PORTCULLIS_TEST_REDIS_CLUSTER", "1")
        .status();
    drop(cluster);
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{program} failed: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run {program}: {e}");
            ExitCode::FAILURE
        }
    }
}
