//! `portcullis policy check|eval|recommend`: the policy engine from the command line, with no
//! services to start. Results go to stdout; problems reading the input go to stderr as one line.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_policy::{
    Call, CompiledPolicy, PolicyError, RiskCategory, ToolDefinition, evaluate, recommend_document,
};
use serde::Deserialize;
use serde_json::Value;

/// The `policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy: prints `ok`, or every error (JSON pointer first), one per line.
    Check {
        /// The policy document; `-` reads stdin.
        file: PathBuf,
    },
    /// Decide one `tools/call` and print the decision as one JSON object.
    Eval {
        /// The policy document; `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The tool's name.
        #[arg(long, value_name = "NAME")]
        tool: String,
        /// The call's arguments, as JSON.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        args: String,
        /// The caller's identity (subject of `identity`-scoped limits).
        #[arg(long, value_name = "ID", default_value = "cli")]
        identity: String,
        /// The grant (subject of `grant`-scoped limits).
        #[arg(long, value_name = "ID", default_value = "cli")]
        grant: String,
        /// The upstream server (subject of `server`-scoped limits).
        #[arg(long, value_name = "ID", default_value = "cli")]
        server: String,
        /// The tenant (subject of `tenant`-scoped limits).
        #[arg(long, value_name = "ID", default_value = "cli")]
        tenant: String,
        /// The tool's risk category, for `categories` rules: read, write, execute, financial,
        /// destructive or other.
        #[arg(long, value_name = "CATEGORY")]
        category: Option<RiskCategory>,
    },
    /// Classify the tools of a `tools/list` result and print a recommended policy.
    Recommend {
        /// `{"tools": [...]}`, a JSON-RPC response with `result.tools`, or an array of tools;
        /// `-` reads stdin.
        tools_file: PathBuf,
    },
}

/// Runs one `policy` subcommand: exit 0 on success, 1 when the input is invalid.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    let outcome = match cmd {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Eval {
            policy,
            tool,
            args,
            identity,
            grant,
            server,
            tenant,
            category,
        } => eval(
            &policy,
            &tool,
            &args,
            Subjects {
                identity: &identity,
                grant: &grant,
                server: &server,
                tenant: &tenant,
            },
            category,
        ),
        PolicyCommand::Recommend { tools_file } => recommend_for(&tools_file),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command could not do its work; one line for stderr.
#[derive(Debug)]
struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Subjects<'a> {
    identity: &'a str,
    grant: &'a str,
    server: &'a str,
    tenant: &'a str,
}

fn check(file: &Path) -> Result<ExitCode, Failure> {
    let document = read_json(file)?;
    match CompiledPolicy::from_json(&document) {
        Ok(_) => {
            emit("ok")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            emit(&lines.join("\n"))?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn eval(
    policy_file: &Path,
    tool: &str,
    args: &str,
    subjects: Subjects<'_>,
    category: Option<RiskCategory>,
) -> Result<ExitCode, Failure> {
    let document = read_json(policy_file)?;
    let arguments = parse_json("--args", args)?;
    let policy = CompiledPolicy::from_json(&document)
        .map_err(|errors| invalid_policy(policy_file, &errors))?;
    let decision = evaluate(
        Some(&policy),
        &Call {
            tool,
            arguments: &arguments,
            grant: subjects.grant,
            identity: subjects.identity,
            server: subjects.server,
            tenant: subjects.tenant,
            category,
        },
    );
    let mut json = serde_json::to_value(&decision)
        .map_err(|e| Failure(format!("cannot print the decision: {e}")))?;
    // The question as the user would see it: only a call's arguments can fill it in.
    if let (Some(confirmation), Some(Value::Object(printed))) =
        (&decision.confirmation, json.get_mut("confirmation"))
    {
        let question = confirmation.prompt.render(
            tool,
            &arguments,
            &portcullis_gateway::audit::redact_arguments,
        );
        printed.insert("question".to_owned(), Value::String(question));
    }
    emit(&json.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn recommend_for(tools_file: &Path) -> Result<ExitCode, Failure> {
    let input = read_json(tools_file)?;
    let label = label(tools_file);
    let list = input
        .get("tools")
        .or_else(|| input.get("result").and_then(|r| r.get("tools")))
        .unwrap_or(&input);
    let Value::Array(items) = list else {
        return Err(Failure(format!(
            "{label}: expected a tools/list result ({{\"tools\": [...]}}), a JSON-RPC response with result.tools, or an array of tools"
        )));
    };
    let tools = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            ToolDefinition::deserialize(item)
                .map_err(|e| Failure(format!("{label}: tool {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy = serde_json::to_string_pretty(&recommend_document(&tools))
        .map_err(|e| Failure(format!("cannot print the policy: {e}")))?;
    emit(&policy)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints a result line; a reader that went away (`| head`) is not an error worth a panic.
fn emit(text: &str) -> Result<(), Failure> {
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(Failure(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn invalid_policy(file: &Path, errors: &[PolicyError]) -> Failure {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Failure(format!(
        "{} is not a valid policy ({} error{}): {}",
        label(file),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        list.join("; ")
    ))
}

fn label(file: &Path) -> String {
    if file == Path::new("-") {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    }
}

/// The JSON in `file` (`-` is stdin); unreadable or malformed input is one clear line.
fn read_json(file: &Path) -> Result<Value, Failure> {
    let label = label(file);
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure(format!("cannot read {label}: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure(format!("cannot read {label}: {e}")))?
    };
    parse_json(&label, &text)
}

fn parse_json(label: &str, text: &str) -> Result<Value, Failure> {
    let value = serde_json::from_str(text).map_err(|e| {
        // serde_json appends " at line L column C"; say it first, once.
        let full = e.to_string();
        let reason = full
            .rsplit_once(" at line ")
            .map_or(full.as_str(), |(reason, _)| reason);
        Failure(format!(
            "{label}: invalid JSON at line {}, column {}: {reason}",
            e.line(),
            e.column()
        ))
    })?;
    portcullis_policy::json_text::unique_keys(text)
        .map_err(|e| Failure(format!("{label}: {e}")))?;
    Ok(value)
}
