//! docker-compose.yml held to the real binary: every setting, subcommand, flag, port, stage and
//! variable it names must exist, so a renamed setting or subcommand fails here, not at
//! `docker compose up`. Each test checks one thing and lists every problem it finds.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use clap::Args as _;
use serde::Deserialize;

const COMPOSE_FILE: &str = "docker-compose.yml";
const INIT_ENV: &str = "deploy/compose/init-env";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// The image the Portcullis services run; its entrypoint is `portcullis`.
const PORTCULLIS_IMAGE: &str = "portcullis:latest";

// ---------------------------------------------------------------------------------------------
// The compose file, as far as these checks read it.

#[derive(Debug, Deserialize)]
struct ComposeFile {
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    command: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    /// The map form only: `KEY: value`.
    environment: BTreeMap<String, String>,
    ports: Vec<String>,
    healthcheck: Option<Healthcheck>,
    /// The long form only, with a condition for each.
    depends_on: BTreeMap<String, Dependency>,
    restart: Option<String>,
    /// The short form only: `SOURCE:TARGET[:MODE]`.
    volumes: Vec<String>,
    read_only: bool,
}

#[derive(Debug, Deserialize)]
struct Build {
    target: Option<String>,
    dockerfile: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Dependency {
    condition: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(root().join(path)).map_err(|e| format!("{path}: {e}"))
}

fn compose_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| read(COMPOSE_FILE).unwrap())
}

fn compose() -> &'static ComposeFile {
    static FILE: OnceLock<ComposeFile> = OnceLock::new();
    FILE.get_or_init(|| {
        serde_norway::from_str(compose_text())
            .unwrap_or_else(|e| panic!("{COMPOSE_FILE} does not parse as these tests read it: {e}"))
    })
}

/// Fails with every problem found, one a line, under what was checked.
fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s)\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

fn runs_portcullis(service: &Service) -> bool {
    service.image.as_deref() == Some(PORTCULLIS_IMAGE)
}

// ---------------------------------------------------------------------------------------------
// The real settings, from clap's own description of `portcullis::Config`.

struct Setting {
    long: String,
    default: Option<String>,
    takes_value: bool,
}

fn settings() -> &'static BTreeMap<String, Setting> {
    static SETTINGS: OnceLock<BTreeMap<String, Setting>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let command = portcullis::Config::augment_args(clap::Command::new("settings"));
        let settings: BTreeMap<_, _> = command
            .get_arguments()
            .filter_map(|arg| {
                let env = arg.get_env()?.to_str()?.to_owned();
                let setting = Setting {
                    long: arg.get_long()?.to_owned(),
                    default: arg
                        .get_default_values()
                        .first()
                        .map(|v| v.to_string_lossy().into_owned()),
                    takes_value: arg.get_action().takes_values(),
                };
                Some((env, setting))
            })
            .collect();
        assert!(
            settings.contains_key("DATABASE_URL")
                && settings.contains_key("PORTCULLIS_GATEWAY_ADDR"),
            "clap introspection of portcullis::Config found no settings"
        );
        settings
    })
}

/// The settings naming the addresses a subcommand listens on.
fn listen_settings(subcommand: &str) -> &'static [&'static str] {
    match subcommand {
        "serve" => &["PORTCULLIS_CONTROL_PLANE_ADDR", "PORTCULLIS_GATEWAY_ADDR"],
        "control-plane" => &["PORTCULLIS_CONTROL_PLANE_ADDR"],
        "gateway" => &["PORTCULLIS_GATEWAY_ADDR"],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------------
// The real command line, from the binary's own `--help`.

fn help(path: &[String]) -> Result<String, String> {
    type Helps = std::sync::Mutex<BTreeMap<Vec<String>, Result<String, String>>>;
    static CACHE: OnceLock<Helps> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().unwrap().get(path) {
        return found.clone();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(path)
        .arg("--help")
        .output()
        .map_err(|e| format!("cannot run portcullis: {e}"))?;
    let result = if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "`portcullis {} --help` failed: {}",
            path.join(" "),
            stderr.lines().next().unwrap_or("")
        ))
    };
    cache.lock().unwrap().insert(path.to_vec(), result.clone());
    result
}

/// The subcommands a help text lists under `Commands:`.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long flags a help text lists.
fn flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '<' || c == '=')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.trim_end_matches([']', '>', '.']).to_owned())
        .collect()
}

/// Checks `portcullis ARGS…`: each leading word a subcommand of the one before, and every
/// `--flag` up to a `--` one that subcommand takes.
fn check_command_line(args: &[String]) -> Vec<String> {
    let shown = format!("portcullis {}", args.join(" "));
    let mut path: Vec<String> = Vec::new();
    let mut rest = args;
    loop {
        let text = match help(&path) {
            Ok(text) => text,
            Err(e) => return vec![format!("{shown}: {e}")],
        };
        match rest.first() {
            Some(word) if !word.starts_with('-') && subcommands(&text).contains(word) => {
                path.push(word.clone());
                rest = &rest[1..];
            }
            Some(word) if path.is_empty() => {
                return vec![format!(
                    "{shown}: `{word}` is not a subcommand of portcullis (it has: {})",
                    subcommands(&text)
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                )];
            }
            None if path.is_empty() => return vec![format!("{shown}: no subcommand")],
            _ => {
                let known = flags(&text);
                return rest
                    .iter()
                    .take_while(|word| word.as_str() != "--")
                    .filter(|word| word.starts_with("--"))
                    .map(|word| word.split('=').next().unwrap_or(word))
                    .filter(|flag| !known.contains(*flag))
                    .map(|flag| {
                        format!(
                            "{shown}: `portcullis {}` has no flag {flag}",
                            path.join(" ")
                        )
                    })
                    .collect();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/Dockerfile: its stages, and what each runs.

#[derive(Debug, Default)]
struct Stage {
    /// The stage this one is built `FROM`, when it is one of the file's own.
    parent: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
}

fn dockerfile() -> Result<BTreeMap<String, Stage>, String> {
    let text = read(DOCKERFILE).map_err(|e| format!("{e} (its stages cannot be checked)"))?;
    // Continuation lines joined, comments dropped.
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(instruction) = words.first().map(|w| w.to_ascii_uppercase()) else {
            continue;
        };
        let rest = line.trim_start()[words[0].len()..].trim();
        match instruction.as_str() {
            "FROM" => {
                let words: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let name = match words.as_slice() {
                    [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => (*name).to_owned(),
                    _ => format!("#{}", stages.len()),
                };
                let base = words.first().copied().unwrap_or_default();
                let parent = stages.contains_key(base).then(|| base.to_owned());
                stages.insert(
                    name.clone(),
                    Stage {
                        parent,
                        ..Stage::default()
                    },
                );
                current = Some(name);
            }
            "ENTRYPOINT" | "CMD" => {
                let Some(stage) = current.as_ref().and_then(|c| stages.get_mut(c)) else {
                    return Err(format!("{DOCKERFILE}: {instruction} before any FROM"));
                };
                let argv: Vec<String> = serde_json::from_str(rest).map_err(|_| {
                    format!("{DOCKERFILE}: `{line}`: use the exec (JSON array) form")
                })?;
                if instruction == "CMD" {
                    stage.cmd = Some(argv);
                } else {
                    stage.entrypoint = Some(argv);
                    // As in Docker: a new ENTRYPOINT resets an inherited CMD.
                    stage.cmd = None;
                }
            }
            _ => {}
        }
    }
    Ok(stages)
}

/// A stage's ENTRYPOINT and CMD, inherited from the stages it is built on where it sets none.
fn stage_argv(stages: &BTreeMap<String, Stage>, name: &str) -> (Vec<String>, Vec<String>) {
    let mut entrypoint = None;
    let mut cmd = None;
    let mut at = stages.get(name);
    while let Some(stage) = at {
        if entrypoint.is_none() {
            entrypoint.clone_from(&stage.entrypoint);
            if stage.entrypoint.is_some() && cmd.is_none() {
                cmd = Some(stage.cmd.clone().unwrap_or_default());
            }
        }
        if cmd.is_none() {
            cmd.clone_from(&stage.cmd);
        }
        at = stage.parent.as_ref().and_then(|p| stages.get(p));
    }
    (entrypoint.unwrap_or_default(), cmd.unwrap_or_default())
}

/// What a service runs: its compose `entrypoint`/`command`, else its image's.
fn service_argv(
    name: &str,
    service: &Service,
    stages: Option<&BTreeMap<String, Stage>>,
) -> Result<Vec<String>, String> {
    let from_image = |stages: Option<&BTreeMap<String, Stage>>| {
        let target = service.build.as_ref().and_then(|b| b.target.as_deref());
        match (stages, target) {
            (Some(stages), Some(target)) => Ok(stage_argv(stages, target)),
            (None, _) => Err(format!(
                "{name}: runs its image's command, and {DOCKERFILE} cannot be read"
            )),
            (_, None) => Err(format!("{name}: no build target to read its command from")),
        }
    };
    let (entrypoint, cmd) = if runs_portcullis(service) && service.entrypoint.is_none() {
        (vec!["portcullis".to_owned()], service.command.clone())
    } else {
        match (&service.entrypoint, &service.command) {
            (Some(e), Some(c)) => (e.clone(), Some(c.clone())),
            _ => {
                let (e, c) = from_image(stages)?;
                (
                    service.entrypoint.clone().unwrap_or(e),
                    Some(service.command.clone().unwrap_or(c)),
                )
            }
        }
    };
    let mut argv = entrypoint;
    argv.extend(cmd.unwrap_or_default());
    Ok(argv)
}

/// `Some(args)` when argv runs the portcullis binary.
fn portcullis_args(argv: &[String]) -> Option<&[String]> {
    let program = argv.first()?;
    (program == "portcullis" || program.ends_with("/portcullis")).then(|| &argv[1..])
}

/// The value after `flag` (`--flag VALUE` or `--flag=VALUE`) in an argv.
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    for (i, word) in argv.iter().enumerate() {
        if word == "--" {
            break;
        }
        if word == flag {
            if let Some(value) = argv.get(i + 1) {
                found.push(value.as_str());
            }
        } else if let Some(value) = word.strip_prefix(&format!("{flag}=")) {
            found.push(value);
        }
    }
    found
}

/// The ports a service listens on, and the setting or flag each comes from.
fn listen_addrs(
    name: &str,
    service: &Service,
    stages: Option<&BTreeMap<String, Stage>>,
) -> Result<Vec<(String, SocketAddr)>, String> {
    let argv = service_argv(name, service, stages)?;
    let Some(args) = portcullis_args(&argv) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    if runs_portcullis(service) {
        let subcommand = args.first().map(String::as_str).unwrap_or_default();
        for env in listen_settings(subcommand) {
            let Some(setting) = settings().get(*env) else {
                return Err(format!("{name}: {env} is no longer a setting"));
            };
            let value = service
                .environment
                .get(*env)
                .cloned()
                .or_else(|| setting.default.clone())
                .unwrap_or_default();
            let addr = value
                .parse()
                .map_err(|e| format!("{name}: {env}={value}: {e}"))?;
            found.push(((*env).to_owned(), addr));
        }
    }
    for value in flag_value(args, "--listen") {
        let addr = value
            .parse()
            .map_err(|e| format!("{name}: --listen {value}: {e}"))?;
        found.push(("--listen".to_owned(), addr));
    }
    Ok(found)
}

fn describe(listening: &[(String, SocketAddr)]) -> String {
    if listening.is_empty() {
        return "nothing (no listen setting for its subcommand)".into();
    }
    listening
        .iter()
        .map(|(source, addr)| format!("{source}={addr}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Interpolation (`${VAR}`, `${VAR:?message}`, `${VAR:-default}`, `$$` for a dollar) and .env.

/// Every `${VAR}` (or `$VAR`) in a string, with its default when it has one.
fn interpolations(text: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            let body = &inner[..end];
            let name_end = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let (name, modifier) = body.split_at(name_end);
            let default = modifier
                .strip_prefix(":-")
                .or_else(|| modifier.strip_prefix('-'))
                .map(str::to_owned);
            found.push((name.to_owned(), default));
            rest = inner.get(end + 1..).unwrap_or_default();
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                found.push((rest[..end].to_owned(), None));
            }
            rest = &rest[end..];
        }
    }
    found
}

/// A string with its variables replaced from `env` (a missing one is an error, as with `:?`).
fn interpolate(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (name, default, after) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            let body = &inner[..end];
            let name_end = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(body.len());
            let default = body[name_end..].strip_prefix(":-").map(str::to_owned);
            (&body[..name_end], default, &inner[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], None, &rest[end..])
        };
        match env.get(name).filter(|v| !v.is_empty()).cloned().or(default) {
            Some(value) => out.push_str(&value),
            None => return Err(format!("${name} is not in the .env init-env writes")),
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// Every string in a YAML tree (keys too), with where it is.
fn strings(value: &serde_norway::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_norway::Value::String(s) => out.push((at.to_owned(), s.clone())),
        serde_norway::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{at}[{i}]"), out);
            }
        }
        serde_norway::Value::Mapping(map) => {
            for (key, item) in map {
                let key = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                out.push((format!("{at} (key)"), key.clone()));
                strings(item, &format!("{at}.{key}"), out);
            }
        }
        serde_norway::Value::Tagged(tagged) => strings(&tagged.value, at, out),
        _ => {}
    }
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "portcullis-compose-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs deploy/compose/init-env with the binary under test as its key maker.
fn run_init_env(output: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(root().join(INIT_ENV))
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("PORTCULLIS_BIN", env!("CARGO_BIN_EXE_portcullis"))
        .output()
        .unwrap()
}

fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The .env init-env writes, made once for the test run.
fn init_env() -> &'static BTreeMap<String, String> {
    static ENV: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = TempDir::new("env");
        let path = dir.0.join(".env");
        let out = run_init_env(&path, &[]);
        assert!(
            out.status.success(),
            "{INIT_ENV} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_env_file(&std::fs::read_to_string(&path).unwrap())
    })
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[test]
fn services_are_the_expected_ones() {
    let names: BTreeSet<&str> = compose().services.keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "postgres",
        "redis",
        "migrate",
        "control-plane",
        "gateway",
        "demo-upstream",
    ]);
    report(
        "the services of docker-compose.yml",
        expected
            .symmetric_difference(&names)
            .map(|name| match names.contains(name) {
                true => format!("{name}: not expected (add it to this test with its checks)"),
                false => format!("{name}: missing"),
            })
            .collect(),
    );
}

#[test]
fn every_environment_variable_of_a_portcullis_service_is_a_setting() {
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        if !runs_portcullis(service) {
            continue;
        }
        for key in service.environment.keys() {
            if !settings().contains_key(key) {
                problems.push(format!(
                    "{name}: {key} is not a setting of portcullis::Config (renamed? removed?)"
                ));
            }
        }
    }
    report("environment variables against portcullis::Config", problems);
}

#[test]
fn every_portcullis_service_environment_is_accepted_by_config() {
    let env = init_env();
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        if !runs_portcullis(service) {
            continue;
        }
        let mut args: Vec<String> = Vec::new();
        let mut values = BTreeMap::new();
        for (key, raw) in &service.environment {
            let value = match interpolate(raw, env) {
                Ok(value) => value,
                Err(e) => {
                    problems.push(format!("{name}: {key}: {e}"));
                    continue;
                }
            };
            values.insert(key.clone(), value.clone());
            let Some(setting) = settings().get(key) else {
                continue; // Reported by the test above.
            };
            match (setting.takes_value, value.as_str()) {
                (true, _) => args.push(format!("--{}={value}", setting.long)),
                (false, "true") => args.push(format!("--{}", setting.long)),
                (false, "false") => {}
                (false, other) => {
                    problems.push(format!("{name}: {key}={other}: not true or false"))
                }
            }
        }
        let config = match portcullis::Config::from_flags(&args) {
            Ok(config) => config,
            Err(e) => {
                let first = e.to_string();
                problems.push(format!(
                    "{name}: its settings do not parse: {}",
                    first.lines().next().unwrap_or_default()
                ));
                continue;
            }
        };
        let subcommand = service
            .command
            .as_ref()
            .and_then(|c| c.first())
            .map(String::as_str)
            .unwrap_or_default();
        if subcommand == "migrate" {
            if let Err(e) = config.database_options() {
                problems.push(format!("{name}: {e}"));
            }
            continue;
        }
        if let Err(e) = config.validate() {
            problems.push(format!("{name}: {e}"));
        }
        if matches!(subcommand, "gateway" | "serve") {
            match values.get("PORTCULLIS_SESSION_KEYS") {
                None => problems.push(format!(
                    "{name}: PORTCULLIS_SESSION_KEYS is not set; a gateway requires it"
                )),
                Some(keys) => {
                    if let Err(e) = portcullis_core::Keyring::parse(keys) {
                        problems.push(format!("{name}: PORTCULLIS_SESSION_KEYS: {e}"));
                    }
                }
            }
        }
        if matches!(subcommand, "control-plane" | "serve") {
            // The control plane refuses a shorter one at start-up.
            match values.get("PORTCULLIS_COOKIE_KEY") {
                Some(key) if key.len() >= 32 => {}
                Some(_) => problems.push(format!(
                    "{name}: PORTCULLIS_COOKIE_KEY is shorter than 32 characters"
                )),
                None => problems.push(format!(
                    "{name}: PORTCULLIS_COOKIE_KEY is not set: sessions would end at every restart"
                )),
            }
        }
    }
    report(
        "each Portcullis service's environment (with the .env init-env writes) as the binary parses it",
        problems,
    );
}

#[test]
fn every_command_is_a_real_subcommand_with_real_flags() {
    let stages = dockerfile();
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        // Images of others (postgres, redis) run their own programs.
        let ours = runs_portcullis(service) || service.build.is_some();
        match service_argv(name, service, stages.as_ref().ok()) {
            _ if !ours => {}
            Ok(argv) => match portcullis_args(&argv) {
                Some(args) => problems.extend(
                    check_command_line(args)
                        .into_iter()
                        .map(|p| format!("{name} (command): {p}")),
                ),
                None if runs_portcullis(service) => {
                    problems.push(format!("{name}: runs {argv:?}, not the portcullis binary"))
                }
                None => {}
            },
            Err(e) => problems.push(e),
        }
        if let Some(health) = &service.healthcheck {
            let argv = match health.test.first().map(String::as_str) {
                Some("CMD") => &health.test[1..],
                _ => continue,
            };
            if let Some(args) = portcullis_args(argv) {
                problems.extend(
                    check_command_line(args)
                        .into_iter()
                        .map(|p| format!("{name} (healthcheck): {p}")),
                );
            }
        }
    }
    report(
        "subcommands and flags against `portcullis … --help`",
        problems,
    );
}

#[test]
fn published_ports_are_loopback_only_and_reach_the_listen_address() {
    let stages = dockerfile();
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        if service.ports.is_empty() {
            continue;
        }
        let listening = match listen_addrs(name, service, stages.as_ref().ok()) {
            Ok(found) => found,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for (source, addr) in &listening {
            if !addr.ip().is_unspecified() {
                problems.push(format!(
                    "{name}: {source} is {addr}: published ports reach only a listener on 0.0.0.0 inside the container"
                ));
            }
        }
        for port in &service.ports {
            // HOST_IP:HOST_PORT[-HOST_PORT]:CONTAINER_PORT
            let parts: Vec<&str> = port.split(':').collect();
            let [host_ip, host_ports, container] = parts.as_slice() else {
                problems.push(format!(
                    "{name}: port {port:?}: write it as 127.0.0.1:HOST:CONTAINER"
                ));
                continue;
            };
            if *host_ip != "127.0.0.1" {
                problems.push(format!(
                    "{name}: port {port:?} is published on {host_ip}, not only on 127.0.0.1"
                ));
            }
            if host_ports.split('-').any(|p| p.parse::<u16>().is_err()) {
                problems.push(format!(
                    "{name}: port {port:?}: host port is not a port or range"
                ));
            }
            let Ok(container) = container.parse::<u16>() else {
                problems.push(format!(
                    "{name}: port {port:?}: container port is not a port"
                ));
                continue;
            };
            if !listening.iter().any(|(_, addr)| addr.port() == container) {
                problems.push(format!(
                    "{name}: port {port:?} publishes container port {container}, but the service listens on {}",
                    describe(&listening)
                ));
            }
        }
    }
    report("published ports", problems);
}

#[test]
fn replicated_services_publish_a_host_port_range_wide_enough() {
    #[derive(Deserialize)]
    struct WithDeploy {
        services: BTreeMap<String, DeployOnly>,
    }
    #[derive(Deserialize)]
    struct DeployOnly {
        #[serde(default)]
        deploy: Option<Deploy>,
        #[serde(default)]
        ports: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Deploy {
        replicas: Option<u32>,
    }
    let file: WithDeploy = serde_norway::from_str(compose_text()).unwrap();
    let mut problems = Vec::new();
    for (name, service) in &file.services {
        let replicas = service
            .deploy
            .as_ref()
            .and_then(|d| d.replicas)
            .unwrap_or(1);
        for port in &service.ports {
            let host = port.split(':').nth(1).unwrap_or_default();
            let width = match host.split_once('-') {
                Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => 1,
            };
            if width < replicas {
                problems.push(format!(
                    "{name}: {replicas} replicas but port {port:?} has {width} host port(s): each replica needs its own"
                ));
            }
        }
    }
    report("host ports of replicated services", problems);
}

#[test]
fn healthchecks_probe_a_port_their_service_listens_on() {
    let stages = dockerfile();
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        let Some(health) = &service.healthcheck else {
            if runs_portcullis(service) && !service.ports.is_empty() {
                problems.push(format!("{name}: published, but has no healthcheck"));
            }
            continue;
        };
        let urls: Vec<url::Url> = health
            .test
            .iter()
            .filter(|word| word.starts_with("http://") || word.starts_with("https://"))
            .filter_map(|word| url::Url::parse(word).ok())
            .collect();
        if urls.is_empty() {
            continue;
        }
        let listening = match listen_addrs(name, service, stages.as_ref().ok()) {
            Ok(found) => found,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for url in urls {
            let port = url.port_or_known_default().unwrap_or_default();
            if !listening.iter().any(|(_, addr)| addr.port() == port) {
                problems.push(format!(
                    "{name}: healthcheck probes {url}, but the service listens on {}",
                    describe(&listening)
                ));
            }
            if !matches!(url.path(), "/readyz" | "/healthz") {
                problems.push(format!(
                    "{name}: healthcheck probes {url}: use /readyz (or /healthz)"
                ));
            }
        }
    }
    report("healthcheck URLs", problems);
}

#[test]
fn a_read_only_portcullis_service_writes_only_to_volumes() {
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        if !runs_portcullis(service) {
            continue;
        }
        if !service.read_only {
            problems.push(format!(
                "{name}: its root filesystem is writable (read_only: true)"
            ));
        }
        let Some(dir) = service.environment.get("PORTCULLIS_AUDIT_SPILL_DIR") else {
            continue;
        };
        let on_volume = service.volumes.iter().any(|volume| {
            let target = volume.split(':').nth(1).unwrap_or_default();
            !target.is_empty() && Path::new(dir).starts_with(target)
        });
        if !on_volume {
            problems.push(format!(
                "{name}: PORTCULLIS_AUDIT_SPILL_DIR={dir} is on no volume: entries spilled there would be lost with the container"
            ));
        }
    }
    report("writable directories of the Portcullis services", problems);
}

#[test]
fn depends_on_names_services_with_a_fitting_condition() {
    let services = &compose().services;
    let mut problems = Vec::new();
    for (name, service) in services {
        for (dependency, how) in &service.depends_on {
            let Some(other) = services.get(dependency) else {
                problems.push(format!(
                    "{name}: depends on {dependency}, which is not a service"
                ));
                continue;
            };
            match how.condition.as_str() {
                "service_healthy" if other.healthcheck.is_none() => problems.push(format!(
                    "{name}: waits for {dependency} to be healthy, but it has no healthcheck"
                )),
                "service_completed_successfully" if other.restart.as_deref() != Some("no") => {
                    problems.push(format!(
                        "{name}: waits for {dependency} to complete, but it is not one-shot (restart: \"no\")"
                    ))
                }
                "service_healthy" | "service_completed_successfully" | "service_started" => {}
                other => problems.push(format!(
                    "{name}: depends on {dependency} with unknown condition {other}"
                )),
            }
        }
        // What each Portcullis service needs before it starts.
        if runs_portcullis(service) {
            let needs: &[(&str, &str)] = match service
                .command
                .as_ref()
                .and_then(|c| c.first())
                .map(String::as_str)
            {
                Some("migrate") => &[("postgres", "service_healthy")],
                Some("control-plane" | "gateway" | "serve") => &[
                    ("migrate", "service_completed_successfully"),
                    ("postgres", "service_healthy"),
                    ("redis", "service_healthy"),
                ],
                _ => &[],
            };
            for (dependency, condition) in needs {
                match service.depends_on.get(*dependency) {
                    Some(how) if how.condition == *condition => {}
                    _ => problems.push(format!(
                        "{name}: must depend on {dependency} with condition {condition}"
                    )),
                }
            }
        }
    }
    report("depends_on", problems);
}

#[test]
fn build_targets_are_stages_of_the_dockerfile() {
    let stages = match dockerfile() {
        Ok(stages) => stages,
        Err(e) => return report("build targets against deploy/Dockerfile", vec![e]),
    };
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        let Some(build) = &service.build else {
            continue;
        };
        if build.dockerfile.as_deref() != Some(DOCKERFILE) {
            problems.push(format!(
                "{name}: builds {:?}, not {DOCKERFILE}",
                build.dockerfile
            ));
        }
        match &build.target {
            Some(target) if stages.contains_key(target) => {}
            Some(target) => problems.push(format!(
                "{name}: build target {target} is not a stage of {DOCKERFILE} (its stages: {})",
                stages
                    .keys()
                    .filter(|s| !s.starts_with('#'))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => problems.push(format!("{name}: names no build target")),
        }
        if let (true, Some(target)) = (runs_portcullis(service), &build.target) {
            let (entrypoint, _) = stage_argv(&stages, target);
            if portcullis_args(&entrypoint).is_none_or(|rest| !rest.is_empty()) {
                problems.push(format!(
                    "{name}: stage {target}'s ENTRYPOINT is {entrypoint:?}; its compose command is given to portcullis"
                ));
            }
        }
    }
    report("build targets against deploy/Dockerfile", problems);
}

#[test]
fn the_demo_upstream_reads_each_variable_compose_gives_it() {
    let stages = match dockerfile() {
        Ok(stages) => stages,
        Err(e) => return report("demo-upstream's environment", vec![e]),
    };
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        if runs_portcullis(service) || service.build.is_none() {
            continue;
        }
        let argv = match service_argv(name, service, Some(&stages)) {
            Ok(argv) => argv,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let read: BTreeSet<&str> = flag_value(&argv, "--token-env").into_iter().collect();
        for key in service.environment.keys() {
            if !read.contains(key.as_str()) {
                problems.push(format!(
                    "{name}: {key} is set, but its command ({}) reads no such variable with --token-env",
                    argv.join(" ")
                ));
            }
        }
    }
    report("variables of services built from other stages", problems);
}

#[test]
fn every_interpolated_variable_is_written_by_init_env() {
    let value: serde_norway::Value = serde_norway::from_str(compose_text()).unwrap();
    let mut all = Vec::new();
    strings(&value, "", &mut all);
    let written = init_env();
    let mut problems = BTreeSet::new();
    let mut seen = 0;
    for (at, text) in &all {
        for (name, _default) in interpolations(text) {
            seen += 1;
            if !written.contains_key(&name) {
                problems.insert(format!(
                    "{at}: ${{{name}}} is not written by {INIT_ENV} (it writes {})",
                    written.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        seen > 0,
        "{COMPOSE_FILE} interpolates nothing: where do its secrets come from?"
    );
    report(
        "variables docker-compose.yml interpolates",
        problems.into_iter().collect(),
    );
}

#[test]
fn no_secret_is_written_in_the_compose_file() {
    let mut problems = Vec::new();
    for (name, service) in &compose().services {
        for (key, value) in &service.environment {
            let secret_like = [
                "PASSWORD",
                "KEY",
                "TOKEN",
                "SECRET",
                "DATABASE_URL",
                "REDIS_URL",
            ]
            .iter()
            .any(|word| key.contains(word));
            if secret_like && interpolations(value).is_empty() {
                problems.push(format!(
                    "{name}: {key} is written in {COMPOSE_FILE}; take it from .env (${{{key}}})"
                ));
            }
        }
    }
    report("secrets in docker-compose.yml", problems);
}

#[test]
fn init_env_writes_a_private_file_and_keeps_an_existing_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("init");
    let path = dir.0.join(".env");
    let mut problems = Vec::new();

    let out = run_init_env(&path, &[]);
    if !out.status.success() {
        return report(
            INIT_ENV,
            vec![format!(
                "failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )],
        );
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    if mode != 0o600 {
        problems.push(format!("wrote mode {mode:o}, not 600"));
    }
    let first = std::fs::read_to_string(&path).unwrap();
    let env = parse_env_file(&first);
    for key in ["PORTCULLIS_ENCRYPTION_KEYS", "PORTCULLIS_SESSION_KEYS"] {
        match env.get(key).map(|v| portcullis_core::Keyring::parse(v)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => problems.push(format!("{key} does not parse as a key ring: {e}")),
            None => problems.push(format!("{key} not written")),
        }
    }
    if env.get("PORTCULLIS_ENCRYPTION_KEYS") == env.get("PORTCULLIS_SESSION_KEYS") {
        problems.push("the encryption and session keys are the same key".into());
    }
    for (key, value) in &env {
        if value.is_empty() {
            problems.push(format!("{key} is empty"));
        }
    }

    let again = run_init_env(&path, &[]);
    if again.status.success() {
        problems.push("a second run without --force succeeded".into());
    }
    if std::fs::read_to_string(&path).unwrap() != first {
        problems.push("a second run without --force changed the file".into());
    }

    let forced = run_init_env(&path, &["--force"]);
    if !forced.status.success() {
        problems.push(format!(
            "--force failed: {}",
            String::from_utf8_lossy(&forced.stderr).trim()
        ));
    } else if std::fs::read_to_string(&path).unwrap() == first {
        problems.push("--force kept the old keys".into());
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".env")
        .collect();
    if !leftovers.is_empty() {
        problems.push(format!("left files behind: {leftovers:?}"));
    }
    report(INIT_ENV, problems);
}
