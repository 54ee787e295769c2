//! Risk classification of MCP tools from their name, description, input schema and annotations.
//!
//! Deterministic: the same definition always yields the same risk, whatever order its schema's
//! properties arrive in. Annotations are hints from an untrusted upstream, so they may only raise
//! risk: `destructiveHint: true` makes a tool destructive, but `readOnlyHint: true` never lowers
//! a tool whose name says it deletes or writes; it only settles tools whose name says nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An MCP tool definition as `tools/list` returns it; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name.
    pub name: String,
    /// Human-friendly title.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub title: Option<String>,
    /// What the tool does, as its server describes it.
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, rename = "inputSchema")]
    pub input_schema: Value,
    /// JSON Schema of the structured result.
    #[serde(
        default,
        rename = "outputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_schema: Option<Value>,
    /// Behaviour hints (untrusted).
    #[serde(
        default,
        deserialize_with = "lenient_annotations",
        skip_serializing_if = "Option::is_none"
    )]
    pub annotations: Option<ToolAnnotations>,
}

/// MCP tool annotations; a hint of the wrong type is treated as absent rather than failing the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolAnnotations {
    /// The tool does not modify its environment.
    #[serde(
        default,
        rename = "readOnlyHint",
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only_hint: Option<bool>,
    /// The tool may perform destructive updates.
    #[serde(
        default,
        rename = "destructiveHint",
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub destructive_hint: Option<bool>,
    /// Repeating a call with the same arguments has no further effect.
    #[serde(
        default,
        rename = "idempotentHint",
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub idempotent_hint: Option<bool>,
    /// The tool reaches entities outside its own system.
    #[serde(
        default,
        rename = "openWorldHint",
        deserialize_with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_world_hint: Option<bool>,
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Value::deserialize(d)?.as_bool())
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

fn lenient_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<ToolAnnotations>, D::Error> {
    Ok(ToolAnnotations::deserialize(Value::deserialize(d)?).ok())
}

/// What kind of effect a tool has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskCategory {
    /// Reads data and changes nothing.
    Read,
    /// Creates or changes data.
    Write,
    /// Runs commands, code or jobs.
    Execute,
    /// Spends money: payments, purchases, paid messages and calls, and buying or provisioning
    /// a billable resource (a phone number, a seat, an instance).
    Financial,
    /// Deletes or destroys data.
    Destructive,
    /// Nothing recognisable.
    Other,
}

impl RiskCategory {
    /// Every category, in a fixed order.
    pub const ALL: [RiskCategory; 6] = [
        RiskCategory::Read,
        RiskCategory::Write,
        RiskCategory::Execute,
        RiskCategory::Financial,
        RiskCategory::Destructive,
        RiskCategory::Other,
    ];

    /// The category's name in policies and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskCategory::Read => "read",
            RiskCategory::Write => "write",
            RiskCategory::Execute => "execute",
            RiskCategory::Financial => "financial",
            RiskCategory::Destructive => "destructive",
            RiskCategory::Other => "other",
        }
    }

    /// The category called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Position in [`RiskCategory::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RiskCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RiskCategory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s).ok_or_else(|| {
            format!("unknown risk category {s:?}; expected read, write, execute, financial, destructive or other")
        })
    }
}

/// How much harm a misused call could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Little harm.
    Low,
    /// Recoverable harm.
    Medium,
    /// Costly or hard-to-undo harm.
    High,
    /// Irreversible or wide harm.
    Critical,
}

impl RiskLevel {
    /// The level's name in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Critical => "critical",
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tool's classification and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Risk {
    /// What kind of effect the tool has.
    pub category: RiskCategory,
    /// How much harm it could do.
    pub level: RiskLevel,
    /// Evidence, each `"<description> (<source>)"`; the source is argument paths (`media[].url`),
    /// `name`, `description` or an annotation.
    pub signals: Vec<String>,
}

const DESTRUCTIVE_VERBS: &[&str] = &[
    "delete",
    "remove",
    "destroy",
    "drop",
    "purge",
    "erase",
    "wipe",
    "truncate",
    "rm",
    "del",
    "uninstall",
    "deprovision",
    "revoke",
    "terminate",
    "kill",
    "unlink",
    "discard",
    "clear",
    "obliterate",
    "shred",
    "nuke",
];
const READ_VERBS: &[&str] = &[
    "get",
    "fetch",
    "list",
    "read",
    "search",
    "find",
    "query",
    "describe",
    "show",
    "view",
    "lookup",
    "retrieve",
    "count",
    "inspect",
    "browse",
    "check",
    "download",
    "export",
    "peek",
    "preview",
    "watch",
    "poll",
    "tail",
    "ls",
    "cat",
    "grep",
    "diff",
    "stat",
    "analyze",
    "summarize",
    "explain",
    "lint",
    "resolve",
    "verify",
    "estimate",
];
const EXECUTE_VERBS: &[&str] = &[
    "run", "exec", "execute", "eval", "evaluate", "invoke", "spawn", "launch", "trigger", "deploy",
    "start", "restart", "stop", "build", "compile", "shell", "call", "dispatch", "rerun",
    "schedule",
];
const WRITE_VERBS: &[&str] = &[
    "create",
    "update",
    "set",
    "put",
    "post",
    "patch",
    "add",
    "insert",
    "upsert",
    "edit",
    "modify",
    "write",
    "save",
    "upload",
    "send",
    "publish",
    "assign",
    "unassign",
    "move",
    "rename",
    "copy",
    "merge",
    "enable",
    "disable",
    "configure",
    "register",
    "invite",
    "attach",
    "detach",
    "mark",
    "close",
    "open",
    "reopen",
    "star",
    "unstar",
    "follow",
    "unfollow",
    "comment",
    "reply",
    "submit",
    "approve",
    "reject",
    "archive",
    "unarchive",
    "restore",
    "lock",
    "unlock",
    "link",
    "tag",
    "label",
    "fork",
    "push",
    "commit",
    "subscribe",
    "unsubscribe",
    "redact",
    "cancel",
    "make",
    "new",
    "import",
    "sync",
    "apply",
    "replace",
    "reset",
    "change",
    "store",
    "record",
    "dequeue",
    "enqueue",
    "place",
    "dial",
    "initiate",
    // Buying verbs whose object is not billable ("reserve_table", "provision_user") only
    // change data.
    "provision",
    "rent",
    "lease",
    "reserve",
    "renew",
    "allocate",
];
const FINANCIAL_VERBS: &[&str] = &[
    "pay", "purchase", "buy", "charge", "refund", "withdraw", "deposit", "payout", "checkout",
    "invoice", "bill", "donate", "tip",
];
const FINANCIAL_NOUNS: &[&str] = &[
    "payment",
    "payments",
    "invoice",
    "invoices",
    "refund",
    "refunds",
    "charge",
    "charges",
    "purchase",
    "purchases",
    "transaction",
    "transactions",
    "payout",
    "payouts",
    "transfer",
    "transfers",
    "funds",
    "money",
    "wallet",
    "order",
    "orders",
    "checkout",
    "billing",
];
const PAID_CHANNEL_NOUNS: &[&str] = &[
    "message", "messages", "sms", "mms", "call", "calls", "fax", "faxes", "whatsapp", "text",
];
const SENDING_VERBS: &[&str] = &[
    "send", "create", "post", "place", "make", "dial", "initiate", "start", "new",
];
const WIDE_TARGETS: &[&str] = &[
    "account",
    "accounts",
    "service",
    "services",
    "repository",
    "repositories",
    "repo",
    "repos",
    "database",
    "databases",
    "db",
    "project",
    "projects",
    "organization",
    "organisation",
    "org",
    "bucket",
    "buckets",
    "cluster",
    "clusters",
    "table",
    "tables",
    "namespace",
    "workspace",
    "tenant",
    "domain",
];
const SENSITIVE_TARGETS: &[&str] = &[
    "account",
    "accounts",
    "admin",
    "role",
    "roles",
    "permission",
    "permissions",
    "credential",
    "credentials",
    "key",
    "keys",
    "secret",
    "secrets",
    "token",
    "tokens",
    "password",
    "webhook",
    "webhooks",
    "policy",
    "policies",
    "user",
    "users",
    "member",
    "members",
];

/// Verbs that, in a tool's name, acquire their object when it is a billable resource.
const ACQUIRING_VERBS: &[&str] = &["create", "new", "add", "run", "launch", "allocate"];
/// Verbs that buy outright: enough for a resource that is often free to create, and the only
/// ones believed when a description, not the name, says what is acquired.
const BUYING_VERBS: &[&str] = &[
    "buy",
    "purchase",
    "order",
    "provision",
    "rent",
    "lease",
    "reserve",
    "register",
    "renew",
];
/// Things billed for as long as an account holds them (a number's monthly rent, a seat, an
/// instance's hours), as words of a name; plurals match too.
const BILLABLE_RESOURCES: &[&[&str]] = &[
    &["phone", "number"],
    &["phonenumber"],
    &["short", "code"],
    &["shortcode"],
    &["sim"],
    &["sim", "card"],
    &["esim"],
    &["esim", "profile"],
    &["licence"],
    &["license"],
    &["seat"],
    &["instance"],
    &["reservation"],
    &["capacity"],
];
/// Billable only when bought: a SIP domain or an event subscription costs nothing to create,
/// a registered domain or a subscription to a priced plan does.
const PLAN_BOUND_RESOURCES: &[&[&str]] = &[&["domain"], &["subscription"]];
/// Words that say which kind of resource (`IncomingPhoneNumberTollFree`, `db_instance`,
/// `super_sim`) rather than name something else the tool acts on.
const RESOURCE_KINDS: &[&str] = &[
    "incoming",
    "local",
    "mobile",
    "toll",
    "free",
    "tollfree",
    "national",
    "international",
    "dedicated",
    "virtual",
    "reserved",
    "spot",
    "compute",
    "db",
    "database",
    "gpu",
    "vm",
    "super",
    "additional",
    "extra",
];

/// Deeper schemas are not walked: signals name arguments an author can write a condition on.
const MAX_SCHEMA_DEPTH: usize = 8;
/// Cap on arguments examined per tool, so a hostile schema cannot make discovery slow.
const MAX_ARGUMENTS: usize = 512;

/// Classifies a tool.
pub fn classify(tool: &ToolDefinition) -> Risk {
    let facts = Facts::of(tool);
    let mut signals = Signals::default();
    let category = facts.category(&mut signals);
    facts.argument_signals(category, &mut signals);
    let level = facts.level(category);
    if category == RiskCategory::Destructive && facts.wide {
        signals.add("Affects a whole account, service or collection", "name");
    }
    Risk {
        category,
        level,
        signals: signals.into_vec(),
    }
}

/// What classification looks at, read once from the definition.
struct Facts {
    name: NameWords,
    description: String,
    description_words: Vec<String>,
    /// Whether the verb came from the name (not the description).
    verb_in_name: bool,
    verb: Option<String>,
    hints: ToolAnnotations,
    url_args: Vec<String>,
    secret_args: Vec<String>,
    code_args: Vec<String>,
    money_args: Vec<String>,
    phone_args: Vec<String>,
    path_args: Vec<String>,
    force_args: Vec<String>,
    /// The target is a whole account, service or collection, or the description says the
    /// loss is total.
    wide: bool,
    /// The operation touches accounts, credentials, keys, roles, users or webhooks.
    sensitive: bool,
    /// The billable resource the tool buys or provisions, if any.
    acquisition: Option<Acquisition>,
}

impl Facts {
    fn of(tool: &ToolDefinition) -> Self {
        let name = NameWords::of(&tool.name);
        let description = tool.description.as_deref().unwrap_or("").to_lowercase();
        let description_words = words(&description);
        let args = arguments(&tool.input_schema);
        // The action: the first word of the operation if it is a verb, else the first verb in
        // it, else (for names such as "weather_cleanup") the first word of the description.
        let name_verb = name
            .operation
            .first()
            .filter(|w| is_verb(w))
            .or_else(|| name.operation.iter().find(|w| is_verb(w)))
            .cloned();
        let verb_in_name = name_verb.is_some();
        let acquisition = Acquisition::of(&name, name_verb.as_deref(), &description, &args);
        let verb = name_verb.or_else(|| description_words.first().filter(|w| is_verb(w)).cloned());
        // The target is the operation's last word: `DeleteService` removes a service with all
        // it holds, `DeleteServiceUser` removes one user of a service.
        let wide = name
            .operation
            .last()
            .is_some_and(|w| WIDE_TARGETS.contains(&w.as_str()))
            || name.has_any_in_operation(&["all", "bulk", "batch"])
            || [
                "permanently",
                "cannot be undone",
                "irreversible",
                "all its",
                "all of its",
            ]
            .iter()
            .any(|p| description.contains(p));
        let sensitive = name.has_any_in_operation(SENSITIVE_TARGETS);
        Self {
            url_args: args.matching(is_url_arg),
            secret_args: args.matching(is_secret_arg),
            code_args: args.matching(is_code_arg),
            money_args: args.matching(is_money_arg),
            phone_args: args.matching(is_phone_arg),
            path_args: args.matching(is_file_path_arg),
            force_args: args.matching(is_force_arg),
            hints: tool.annotations.unwrap_or_default(),
            name,
            description,
            description_words,
            verb_in_name,
            verb,
            wide,
            sensitive,
            acquisition,
        }
    }

    fn verb_in(&self, list: &[&str]) -> Option<&str> {
        self.verb.as_deref().filter(|v| list.contains(v))
    }

    /// The category, most harmful evidence first; records the deciding signal.
    fn category(&self, signals: &mut Signals) -> RiskCategory {
        // Any destructive verb in the name counts, wherever it stands: "repo_delete".
        let destructive_word = self
            .name
            .operation
            .iter()
            .map(String::as_str)
            .find(|w| DESTRUCTIVE_VERBS.contains(w))
            .or_else(|| {
                self.verb_in(DESTRUCTIVE_VERBS)
                    .filter(|_| !self.verb_in_name)
            });
        if let Some(word) = destructive_word {
            signals.add(format!("Deletes or destroys data: \"{word}\""), "name");
            return RiskCategory::Destructive;
        }
        // Contradictory hints (read-only and destructive) resolve to the riskier one.
        if self.hints.destructive_hint == Some(true) {
            signals.add("Declared destructive", "destructiveHint");
            return RiskCategory::Destructive;
        }
        // Code arguments outrank a read verb: `query(sql)` can do anything.
        if !self.code_args.is_empty() {
            signals.add("Accepts code or shell commands", &self.code_args.join(", "));
            return RiskCategory::Execute;
        }
        if let Some(v) = self.verb_in(READ_VERBS) {
            signals.add(format!("Reads data: \"{v}\""), "name");
            return RiskCategory::Read;
        }
        if let Some((description, source)) = self.financial_evidence() {
            signals.add(description, &source);
            return RiskCategory::Financial;
        }
        if let Some(v) = self.verb_in(EXECUTE_VERBS) {
            signals.add(format!("Runs commands or jobs: \"{v}\""), "name");
            return RiskCategory::Execute;
        }
        if let Some(v) = self.verb_in(WRITE_VERBS) {
            signals.add(format!("Creates or changes data: \"{v}\""), "name");
            return RiskCategory::Write;
        }
        // Hints settle only what the name leaves open.
        if self.hints.read_only_hint == Some(true) {
            signals.add("Declared read-only", "readOnlyHint");
            return RiskCategory::Read;
        }
        if self.hints.destructive_hint == Some(false) {
            signals.add(
                "Declared non-destructive but not read-only",
                "destructiveHint",
            );
            return RiskCategory::Write;
        }
        signals.add("No recognised action verb", "name");
        RiskCategory::Other
    }

    fn argument_signals(&self, category: RiskCategory, signals: &mut Signals) {
        if self.hints.open_world_hint == Some(true) {
            signals.add("Reaches systems outside the server", "openWorldHint");
        }
        let lists = [
            ("Accepts URL/endpoint input", &self.url_args),
            ("Accepts credentials or secrets", &self.secret_args),
            ("Accepts file system paths", &self.path_args),
            ("Has a force/recursive switch", &self.force_args),
        ];
        for (description, paths) in lists {
            if !paths.is_empty() {
                signals.add(description, &paths.join(", "));
            }
        }
        if category != RiskCategory::Financial && !self.money_args.is_empty() {
            signals.add("Accepts a monetary amount", &self.money_args.join(", "));
        }
    }

    fn level(&self, category: RiskCategory) -> RiskLevel {
        let takes_urls_or_secrets = !self.url_args.is_empty() || !self.secret_args.is_empty();
        match category {
            RiskCategory::Read if takes_urls_or_secrets || self.sensitive => RiskLevel::Medium,
            RiskCategory::Read => RiskLevel::Low,
            RiskCategory::Write if takes_urls_or_secrets || self.sensitive => RiskLevel::High,
            RiskCategory::Write | RiskCategory::Other => RiskLevel::Medium,
            RiskCategory::Execute if !self.code_args.is_empty() => RiskLevel::Critical,
            RiskCategory::Execute => RiskLevel::High,
            RiskCategory::Financial
                if !self.money_args.is_empty() || self.name.has_any(FINANCIAL_VERBS) =>
            {
                RiskLevel::Critical
            }
            RiskCategory::Financial => RiskLevel::High,
            RiskCategory::Destructive if self.wide || !self.force_args.is_empty() => {
                RiskLevel::Critical
            }
            RiskCategory::Destructive => RiskLevel::High,
        }
    }

    /// Why a tool spends money, if it does: it buys or provisions a billable resource, a payment
    /// verb or noun, a description that says it purchases or charges, a monetary argument, or a
    /// message or call sent to a phone network.
    fn financial_evidence(&self) -> Option<(String, String)> {
        if let Some(acquisition) = &self.acquisition {
            return Some((
                format!(
                    "Buys or provisions a billable resource: \"{}\"",
                    acquisition.resource.join(" ")
                ),
                acquisition.source.clone(),
            ));
        }
        let name = &self.name;
        if let Some(word) = name
            .operation
            .iter()
            .find(|w| FINANCIAL_VERBS.contains(&w.as_str()))
        {
            return Some((
                format!("Moves money or purchases: \"{word}\""),
                "name".into(),
            ));
        }
        if let Some(word) = name
            .operation
            .iter()
            .find(|w| FINANCIAL_NOUNS.contains(&w.as_str()))
        {
            return Some((
                format!("Acts on payments or orders: \"{word}\""),
                "name".into(),
            ));
        }
        if !self.money_args.is_empty() {
            return Some((
                "Charges a monetary amount".into(),
                self.money_args.join(", "),
            ));
        }
        let paying = [
            "purchase",
            "purchases",
            "buy",
            "buys",
            "pay",
            "pays",
            "charge",
            "charges",
            "bill",
            "bills",
        ];
        if let Some(word) = self
            .description_words
            .iter()
            .take(12)
            .find(|w| paying.contains(&w.as_str()))
        {
            return Some((
                format!("Purchases or charges: \"{word}\""),
                "description".into(),
            ));
        }
        let sends = self.verb_in(SENDING_VERBS).is_some();
        let channel = name
            .operation
            .last()
            .filter(|w| PAID_CHANNEL_NOUNS.contains(&w.as_str()));
        if sends && let Some(channel) = channel {
            if !self.phone_args.is_empty() {
                let what = if channel.starts_with("call") {
                    "call"
                } else {
                    "message"
                };
                return Some((
                    format!("Incurs per-{what} charges"),
                    self.phone_args.join(", "),
                ));
            }
            let phone_in_text = [
                "sms",
                "mms",
                "whatsapp",
                "phone",
                "e.164",
                "outgoing call",
                "voice call",
                "text message",
            ]
            .iter()
            .any(|p| self.description.contains(p))
                || name.has_any(&["sms", "mms", "whatsapp", "phone", "voice"]);
            if phone_in_text {
                return Some((
                    "Incurs per-message or per-call charges".into(),
                    "description".into(),
                ));
            }
        }
        // Connecting two phone numbers (a conference participant dials out) is paid too.
        let ends = self
            .phone_args
            .iter()
            .filter(|p| {
                let last = p.rsplit(['.', '[']).next().unwrap_or(p);
                last.eq_ignore_ascii_case("to") || last.eq_ignore_ascii_case("from")
            })
            .count();
        if sends && ends >= 2 {
            return Some((
                "Dials or messages a phone number: incurs per-use charges".into(),
                self.phone_args.join(", "),
            ));
        }
        None
    }
}

/// A billable resource a tool buys or provisions, and where that was seen.
struct Acquisition {
    /// Canonical words of the resource: `["phone", "number"]`.
    resource: &'static [&'static str],
    /// `name`, `description`, or the plan/price arguments that make a subscription paid.
    source: String,
}

impl Acquisition {
    /// What the tool acquires: from its name (an acquiring verb whose object is a billable
    /// resource) or, failing that, from a description sentence such as "Order an eSIM Profile".
    /// A tool that takes the identifier of an existing one (`PhoneNumberSid`) attaches what the
    /// account already holds: it buys nothing.
    fn of(
        name: &NameWords,
        verb: Option<&str>,
        description: &str,
        args: &Arguments,
    ) -> Option<Self> {
        let found = verb
            .and_then(|verb| Self::named(name, verb, args))
            .or_else(|| Self::described(description))?;
        (!args.refer_to_existing(found.resource)).then_some(found)
    }

    fn named(name: &NameWords, verb: &str, args: &Arguments) -> Option<Self> {
        let buys = BUYING_VERBS.contains(&verb);
        if !buys && !ACQUIRING_VERBS.contains(&verb) {
            return None;
        }
        let mut object = name.operation.clone();
        let at = object.iter().position(|w| w == verb)?;
        object.remove(at);
        let (resource, plan_bound) = named_resource(&object)?;
        if buys || !plan_bound {
            return Some(Self {
                resource,
                source: "name".into(),
            });
        }
        let plan = args.matching(is_plan_arg);
        (!plan.is_empty()).then(|| Self {
            resource,
            source: plan.join(", "),
        })
    }

    /// A sentence that starts with a buying verb whose whole object is a billable resource:
    /// "Purchase a phone-number for the account", "Order an eSIM Profile", but not "Register a
    /// phone number webhook".
    fn described(description: &str) -> Option<Self> {
        description
            .split(['.', '\n', ';', '!', '?'])
            .find_map(|sentence| {
                let words = words(sentence);
                let (verb, rest) = words.split_first()?;
                let verb = verb.strip_suffix('s').unwrap_or(verb);
                if !BUYING_VERBS.contains(&verb) {
                    return None;
                }
                let skip = rest
                    .iter()
                    .take_while(|w| {
                        matches!(w.as_str(), "a" | "an" | "the" | "one" | "new" | "more")
                            || RESOURCE_KINDS.contains(&w.as_str())
                    })
                    .count();
                let (resource, _) = resource_at(&rest[skip..])?;
                let object_ends = rest.get(skip + resource.len()).is_none_or(|w| {
                    matches!(
                        w.as_str(),
                        "for" | "to" | "in" | "on" | "at" | "with" | "from" | "by" | "and" | "so"
                    )
                });
                object_ends.then(|| Self {
                    resource,
                    source: "description".into(),
                })
            })
    }
}

/// The billable resource a name's object is, when every other word of it only says which kind
/// (`IncomingPhoneNumberTollFree`); `IncomingPhoneNumberAssignedAddOn` acts on something else.
/// The bool is whether the resource is plan-bound.
fn named_resource(object: &[String]) -> Option<(&'static [&'static str], bool)> {
    let mut found = None;
    let mut rest = object;
    while let Some(word) = rest.first() {
        if let Some(resource) = resource_at(rest) {
            rest = &rest[resource.0.len()..];
            found = Some(resource);
        } else if RESOURCE_KINDS.contains(&word.as_str()) {
            rest = &rest[1..];
        } else {
            return None;
        }
    }
    found
}

/// The longest billable resource `words` start with, and whether it is plan-bound.
fn resource_at(words: &[String]) -> Option<(&'static [&'static str], bool)> {
    let fits = |resource: &&&[&str]| {
        resource.len() <= words.len()
            && resource
                .iter()
                .zip(words)
                .all(|(noun, word)| word == noun || word.strip_suffix('s') == Some(noun))
    };
    let billable = BILLABLE_RESOURCES.iter().filter(fits).map(|r| (*r, false));
    let plan_bound = PLAN_BOUND_RESOURCES.iter().filter(fits).map(|r| (*r, true));
    billable.chain(plan_bound).max_by_key(|(r, _)| r.len())
}

fn is_verb(word: &str) -> bool {
    [
        DESTRUCTIVE_VERBS,
        READ_VERBS,
        EXECUTE_VERBS,
        WRITE_VERBS,
        FINANCIAL_VERBS,
    ]
    .iter()
    .any(|list| list.contains(&word))
}

/// The words of a tool name: all of them, and those of the operation part. OpenAPI-generated
/// names put the service first (`TwilioApiV2010--CreateMessage`), so the operation is what
/// follows the last `--`.
struct NameWords {
    all: Vec<String>,
    operation: Vec<String>,
}

impl NameWords {
    fn of(name: &str) -> Self {
        let operation = name.rsplit("--").next().unwrap_or(name);
        Self {
            all: words(name),
            operation: words(operation),
        }
    }

    fn has_any(&self, list: &[&str]) -> bool {
        self.all.iter().any(|w| list.contains(&w.as_str()))
    }

    fn has_any_in_operation(&self, list: &[&str]) -> bool {
        self.operation.iter().any(|w| list.contains(&w.as_str()))
    }
}

/// Lower-case words of an identifier or sentence: splits on anything not alphanumeric and on
/// camelCase boundaries (`CreateMessage`, `sendSMSNow` → send, sms, now; `V2010` stays whole).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|c| !c.is_empty())
    {
        let chars: Vec<char> = chunk.chars().collect();
        let mut word = String::new();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p));
            let next = chars.get(i + 1);
            let boundary = c.is_uppercase()
                && prev.is_some_and(|p| {
                    p.is_lowercase()
                        || p.is_ascii_digit()
                        || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
                });
            if boundary && !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            word.extend(c.to_lowercase());
        }
        if !word.is_empty() {
            out.push(word);
        }
    }
    out
}

/// One argument found in an input schema.
struct Argument {
    /// `media[].url`, `Configuration.Url`, `to`.
    path: String,
    /// Words of the property's own name.
    words: Vec<String>,
    /// Lower-cased description.
    description: String,
    /// `type` (first one if a list).
    kind: String,
    /// `format`.
    format: String,
}

struct Arguments(Vec<Argument>);

impl Arguments {
    /// Sorted, de-duplicated paths of the arguments `test` accepts.
    fn matching(&self, test: fn(&Argument) -> bool) -> Vec<String> {
        self.0
            .iter()
            .filter(|a| test(a))
            .map(|a| a.path.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Whether an argument identifies an existing `resource`: `PhoneNumberSid`, or a bare `Sid`
    /// described as one ("The SID of a Twilio IncomingPhoneNumber"). An identifier chosen for
    /// the new resource ("the ID of the instance to create") refers to nothing yet.
    fn refer_to_existing(&self, resource: &[&str]) -> bool {
        let joined = resource.concat();
        let spaced = resource.join(" ");
        self.0.iter().any(|arg| {
            let Some((last, before)) = arg.words.split_last() else {
                return false;
            };
            if !matches!(last.as_str(), "sid" | "sids" | "id" | "ids")
                || arg.description.contains("to create")
                || words(&arg.description).iter().any(|w| w == "new")
            {
                return false;
            }
            if before.is_empty() {
                arg.description.contains(&joined) || arg.description.contains(&spaced)
            } else {
                let named = before.concat();
                named.ends_with(&joined) || named.strip_suffix('s') == Some(joined.as_str())
            }
        })
    }
}

fn arguments(schema: &Value) -> Arguments {
    let mut found = Vec::new();
    walk_schema(schema, "", 0, &mut found);
    Arguments(found)
}

fn walk_schema(schema: &Value, prefix: &str, depth: usize, found: &mut Vec<Argument>) {
    if depth > MAX_SCHEMA_DEPTH || found.len() >= MAX_ARGUMENTS {
        return;
    }
    let Some(object) = schema.as_object() else {
        return;
    };
    if let Some(Value::Object(properties)) = object.get("properties") {
        for (key, property) in properties {
            if found.len() >= MAX_ARGUMENTS {
                return;
            }
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let text = |field: &str| {
                property
                    .get(field)
                    .and_then(|v| match v {
                        Value::String(s) => Some(s.to_lowercase()),
                        Value::Array(items) => {
                            items.first().and_then(Value::as_str).map(str::to_lowercase)
                        }
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            found.push(Argument {
                words: words(key),
                description: text("description"),
                kind: text("type"),
                format: text("format"),
                path: path.clone(),
            });
            walk_schema(property, &path, depth + 1, found);
        }
    }
    if let Some(items) = object.get("items") {
        walk_schema(items, &format!("{prefix}[]"), depth + 1, found);
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = object.get(combinator) {
            for branch in branches {
                walk_schema(branch, prefix, depth + 1, found);
            }
        }
    }
}

fn last_word(arg: &Argument) -> &str {
    arg.words.last().map_or("", String::as_str)
}

fn is_url_arg(arg: &Argument) -> bool {
    // A boolean such as `ShortenUrls` is about URLs but cannot carry one.
    if matches!(arg.kind.as_str(), "boolean" | "integer" | "number") {
        return false;
    }
    matches!(
        last_word(arg),
        "url"
            | "urls"
            | "uri"
            | "uris"
            | "endpoint"
            | "endpoints"
            | "webhook"
            | "webhooks"
            | "callback"
            | "href"
            | "link"
            | "links"
    ) || matches!(arg.format.as_str(), "uri" | "url" | "uri-reference" | "iri")
}

fn is_secret_arg(arg: &Argument) -> bool {
    let has = |w: &str| arg.words.iter().any(|x| x == w);
    // Identifiers and pagination tokens name a secret; they are not one.
    if matches!(
        last_word(arg),
        "sid" | "id" | "ids" | "name" | "type" | "count" | "ttl" | "url"
    ) || has("page")
        || has("next")
        || has("continuation")
    {
        return false;
    }
    has("password")
        || has("passwd")
        || has("passphrase")
        || has("secret")
        || has("token")
        || has("apikey")
        || has("certificate")
        || has("credential")
        || has("credentials")
        || (has("private") && has("key"))
        || (has("api") && has("key"))
        || (has("access") && has("key"))
}

fn is_code_arg(arg: &Argument) -> bool {
    let words: Vec<&str> = arg.words.iter().map(String::as_str).collect();
    matches!(
        words.as_slice(),
        ["code" | "script" | "command" | "cmd" | "shell" | "sql" | "expression"]
            | [
                ..,
                "source" | "python" | "js" | "javascript" | "shell" | "bash" | "program",
                "code"
            ]
            | [.., "shell" | "bash" | "sql", "command" | "query" | "script"]
    )
}

fn is_money_arg(arg: &Argument) -> bool {
    let numeric = matches!(arg.kind.as_str(), "number" | "integer" | "string" | "");
    numeric
        && matches!(
            last_word(arg),
            "amount" | "price" | "cost" | "fee" | "fees" | "total"
        )
        && !arg.description.contains("obsolete")
}

fn is_phone_arg(arg: &Argument) -> bool {
    let phoneish = ["phone", "e.164", "sms", "mms", "whatsapp", "sip"]
        .iter()
        .any(|p| arg.description.contains(p));
    match arg.words.as_slice() {
        [only] if matches!(only.as_str(), "to" | "from" | "recipient" | "recipients") => phoneish,
        [.., last] if last == "phone" => true,
        [.., a, b] if a == "phone" && b == "number" => phoneish,
        _ => false,
    }
}

fn is_file_path_arg(arg: &Argument) -> bool {
    matches!(
        last_word(arg),
        "path"
            | "paths"
            | "file"
            | "files"
            | "filename"
            | "filepath"
            | "directory"
            | "dir"
            | "folder"
    )
}

/// A price, plan, SKU or tier: what makes creating a subscription a purchase.
fn is_plan_arg(arg: &Argument) -> bool {
    arg.words.iter().any(|w| {
        matches!(
            w.as_str(),
            "plan" | "plans" | "price" | "prices" | "pricing" | "sku" | "tier" | "billing"
        )
    })
}

fn is_force_arg(arg: &Argument) -> bool {
    arg.kind == "boolean" && matches!(last_word(arg), "force" | "recursive" | "cascade" | "purge")
}

/// Signals in the order found, each once.
#[derive(Default)]
struct Signals(Vec<String>);

impl Signals {
    fn add(&mut self, description: impl AsRef<str>, source: &str) {
        let signal = format!("{} ({source})", description.as_ref());
        if !self.0.contains(&signal) {
            self.0.push(signal);
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(value: Value) -> ToolDefinition {
        serde_json::from_value(value).unwrap()
    }

    fn category(name: &str) -> RiskCategory {
        classify(&tool(json!({"name": name}))).category
    }

    #[test]
    fn words_split_snake_camel_and_openapi_names() {
        assert_eq!(words("send_message"), ["send", "message"]);
        assert_eq!(
            words("TwilioApiV2010--CreateMessage"),
            ["twilio", "api", "v2010", "create", "message"]
        );
        assert_eq!(words("sendSMSNow"), ["send", "sms", "now"]);
        assert_eq!(words("HTTPServer"), ["http", "server"]);
        assert_eq!(words("Configuration.Url"), ["configuration", "url"]);
        assert_eq!(words("delete-repository"), ["delete", "repository"]);
    }

    #[test]
    fn names_decide_categories() {
        let cases = [
            ("send_message", RiskCategory::Write),
            ("delete_repository", RiskCategory::Destructive),
            ("list_issues", RiskCategory::Read),
            ("get_file_contents", RiskCategory::Read),
            ("repo_delete", RiskCategory::Destructive),
            ("run_workflow", RiskCategory::Execute),
            ("create_payment", RiskCategory::Financial),
            ("refund_charge", RiskCategory::Financial),
            (
                "TwilioConversationsV1--DeleteConversation",
                RiskCategory::Destructive,
            ),
            ("TwilioApiV2010--FetchBalance", RiskCategory::Read),
            (
                "TwilioApiV2010--ListIncomingPhoneNumberAssignedAddOn",
                RiskCategory::Read,
            ),
            ("UpdateUser", RiskCategory::Write),
            ("createIssue", RiskCategory::Write),
            ("FetchX", RiskCategory::Read),
            ("ListX", RiskCategory::Read),
            ("frobnicate", RiskCategory::Other),
            ("send_sms", RiskCategory::Financial),
        ];
        for (name, want) in cases {
            assert_eq!(category(name), want, "{name}");
        }
    }

    #[test]
    fn buying_or_provisioning_a_billable_resource_is_financial() {
        let string = json!({"type": "string"});
        let cases = [
            (json!({"name": "buy_phone_number"}), RiskCategory::Financial),
            (
                json!({"name": "provision_phone_numbers"}),
                RiskCategory::Financial,
            ),
            (
                json!({"name": "create_toll_free_phone_number"}),
                RiskCategory::Financial,
            ),
            (
                json!({"name": "create_short_code"}),
                RiskCategory::Financial,
            ),
            (json!({"name": "order_sim_cards"}), RiskCategory::Financial),
            (
                json!({"name": "register_super_sim"}),
                RiskCategory::Financial,
            ),
            (json!({"name": "purchase_license"}), RiskCategory::Financial),
            (json!({"name": "add_seats"}), RiskCategory::Financial),
            (json!({"name": "create_instance"}), RiskCategory::Financial),
            (json!({"name": "RunInstances"}), RiskCategory::Financial),
            (
                json!({"name": "launch_gpu_instance"}),
                RiskCategory::Financial,
            ),
            (
                json!({"name": "create_db_instance"}),
                RiskCategory::Financial,
            ),
            (json!({"name": "reserve_capacity"}), RiskCategory::Financial),
            (
                json!({"name": "create_capacity_reservation"}),
                RiskCategory::Financial,
            ),
            (json!({"name": "register_domain"}), RiskCategory::Financial),
            (
                json!({"name": "create_subscription", "inputSchema": {"properties": {
                    "customer": string, "items": {"type": "array", "items": {"properties": {"price": string}}}}}}),
                RiskCategory::Financial,
            ),
            (
                json!({"name": "esim", "description": "Order an eSIM profile for a device."}),
                RiskCategory::Financial,
            ),
            // An identifier chosen for the new instance is not a reference to an existing one.
            (
                json!({"name": "create_instance", "inputSchema": {"properties": {
                    "instance_id": {"type": "string", "description": "The ID of the instance to create."}}}}),
                RiskCategory::Financial,
            ),
            // Look-alikes: reading, changing, releasing, or attaching what the account holds.
            (
                json!({"name": "list_available_phone_numbers"}),
                RiskCategory::Read,
            ),
            (json!({"name": "get_subscription"}), RiskCategory::Read),
            (json!({"name": "update_phone_number"}), RiskCategory::Write),
            (
                json!({"name": "delete_instance"}),
                RiskCategory::Destructive,
            ),
            (json!({"name": "start_instance"}), RiskCategory::Execute),
            (
                json!({"name": "create_phone_number", "inputSchema": {"properties": {
                    "service_sid": string, "phone_number_sid": string}}}),
                RiskCategory::Write,
            ),
            (
                json!({"name": "create_phone_number", "inputSchema": {"properties": {"sid": {
                    "type": "string", "description": "The SID of an IncomingPhoneNumber to add"}}}}),
                RiskCategory::Write,
            ),
            // Free to create, or not the resource at all.
            (json!({"name": "create_domain"}), RiskCategory::Write),
            (json!({"name": "create_subscription"}), RiskCategory::Write),
            (
                json!({"name": "create_contact_phone_number"}),
                RiskCategory::Write,
            ),
            (
                json!({"name": "create_process_instance"}),
                RiskCategory::Write,
            ),
            (
                json!({"name": "create_instance_profile"}),
                RiskCategory::Write,
            ),
            (json!({"name": "add_numbers"}), RiskCategory::Write),
            (json!({"name": "reserve_table"}), RiskCategory::Write),
            (json!({"name": "provision_user"}), RiskCategory::Write),
            (
                json!({"name": "sort_items", "description": "Order items by phone number."}),
                RiskCategory::Other,
            ),
            (
                json!({"name": "hooks", "description": "Registers a phone number webhook."}),
                RiskCategory::Other,
            ),
        ];
        for (definition, want) in cases {
            let risk = classify(&tool(definition.clone()));
            assert_eq!(risk.category, want, "{definition}: {risk:?}");
        }
    }

    #[test]
    fn a_billable_resource_signal_names_the_resource() {
        let number = classify(&tool(json!({"name": "create_incoming_phone_number_local"})));
        assert_eq!(
            number.signals[0],
            "Buys or provisions a billable resource: \"phone number\" (name)"
        );
        assert_eq!(number.level, RiskLevel::High);
        let licence = classify(&tool(json!({"name": "purchase_licenses"})));
        assert_eq!(
            licence.signals[0],
            "Buys or provisions a billable resource: \"license\" (name)"
        );
        assert_eq!(licence.level, RiskLevel::Critical);
        let plan = classify(&tool(json!({"name": "create_subscription",
            "inputSchema": {"properties": {"plan_id": {"type": "string"}}}})));
        assert_eq!(
            plan.signals[0],
            "Buys or provisions a billable resource: \"subscription\" (plan_id)"
        );
        let described = classify(&tool(json!({"name": "numbers",
            "description": "Purchases a new local phone number."})));
        assert_eq!(
            described.signals[0],
            "Buys or provisions a billable resource: \"phone number\" (description)"
        );
    }

    #[test]
    fn hints_only_raise_risk() {
        let delete_read_only =
            tool(json!({"name": "delete_file", "annotations": {"readOnlyHint": true}}));
        assert_eq!(
            classify(&delete_read_only).category,
            RiskCategory::Destructive
        );
        let write_read_only =
            tool(json!({"name": "update_file", "annotations": {"readOnlyHint": true}}));
        assert_eq!(classify(&write_read_only).category, RiskCategory::Write);
        let unknown_read_only =
            tool(json!({"name": "weather", "annotations": {"readOnlyHint": true}}));
        assert_eq!(classify(&unknown_read_only).category, RiskCategory::Read);
        let destructive_hint =
            tool(json!({"name": "frobnicate", "annotations": {"destructiveHint": true}}));
        assert_eq!(
            classify(&destructive_hint).category,
            RiskCategory::Destructive
        );
        let get_destructive =
            tool(json!({"name": "get_thing", "annotations": {"destructiveHint": true}}));
        assert_eq!(
            classify(&get_destructive).category,
            RiskCategory::Destructive
        );
        let contradictory = tool(
            json!({"name": "weather", "annotations": {"readOnlyHint": true, "destructiveHint": true}}),
        );
        assert_eq!(classify(&contradictory).category, RiskCategory::Destructive);
        let bad_types = tool(
            json!({"name": "weather", "description": 5, "annotations": {"readOnlyHint": "yes"}}),
        );
        assert_eq!(classify(&bad_types).category, RiskCategory::Other);
        assert_eq!(bad_types.annotations.unwrap().read_only_hint, None);
    }

    #[test]
    fn signals_name_argument_paths() {
        let risk = classify(&tool(json!({
            "name": "send_mms",
            "description": "Send an MMS",
            "inputSchema": {"type": "object", "properties": {
                "to": {"type": "string", "description": "Recipient phone number"},
                "media": {"type": "array", "items": {"type": "object", "properties": {
                    "url": {"type": "string"}}}},
                "api_key": {"type": "string"},
            }},
        })));
        assert_eq!(risk.category, RiskCategory::Financial);
        assert!(
            risk.signals
                .contains(&"Incurs per-message charges (to)".to_owned()),
            "{risk:?}"
        );
        assert!(
            risk.signals
                .contains(&"Accepts URL/endpoint input (media[].url)".to_owned()),
            "{risk:?}"
        );
        assert!(
            risk.signals
                .contains(&"Accepts credentials or secrets (api_key)".to_owned()),
            "{risk:?}"
        );
    }

    #[test]
    fn code_arguments_make_a_tool_execute() {
        let risk = classify(&tool(json!({
            "name": "query_database",
            "inputSchema": {"properties": {"sql": {"type": "string"}}},
        })));
        assert_eq!(risk.category, RiskCategory::Execute);
        assert_eq!(risk.level, RiskLevel::Critical);
        assert_eq!(
            risk.signals.first().unwrap(),
            "Accepts code or shell commands (sql)"
        );
    }

    #[test]
    fn levels_table() {
        let string = json!({"type": "string"});
        let flag = json!({"type": "boolean"});
        let cases = [
            (
                json!({"name": "list_issues"}),
                RiskCategory::Read,
                RiskLevel::Low,
            ),
            (
                json!({"name": "list_api_keys"}),
                RiskCategory::Read,
                RiskLevel::Medium,
            ),
            (
                json!({"name": "get_page", "inputSchema": {"properties": {"url": string}}}),
                RiskCategory::Read,
                RiskLevel::Medium,
            ),
            (
                json!({"name": "create_issue"}),
                RiskCategory::Write,
                RiskLevel::Medium,
            ),
            (
                json!({"name": "create_webhook"}),
                RiskCategory::Write,
                RiskLevel::High,
            ),
            (
                json!({"name": "update_user", "inputSchema": {"properties": {"password": string}}}),
                RiskCategory::Write,
                RiskLevel::High,
            ),
            (
                json!({"name": "run_workflow"}),
                RiskCategory::Execute,
                RiskLevel::High,
            ),
            (
                json!({"name": "run", "inputSchema": {"properties": {"command": string}}}),
                RiskCategory::Execute,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "send_sms"}),
                RiskCategory::Financial,
                RiskLevel::High,
            ),
            (
                json!({"name": "pay_invoice"}),
                RiskCategory::Financial,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "create_charge", "inputSchema": {"properties": {"amount": {"type": "integer"}}}}),
                RiskCategory::Financial,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "delete_issue"}),
                RiskCategory::Destructive,
                RiskLevel::High,
            ),
            (
                json!({"name": "delete_repository"}),
                RiskCategory::Destructive,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "delete_file", "inputSchema": {"properties": {"force": flag}}}),
                RiskCategory::Destructive,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "remove_item", "description": "Permanently removes the item"}),
                RiskCategory::Destructive,
                RiskLevel::Critical,
            ),
            (
                json!({"name": "frobnicate"}),
                RiskCategory::Other,
                RiskLevel::Medium,
            ),
        ];
        for (definition, category, level) in cases {
            let risk = classify(&tool(definition.clone()));
            assert_eq!(
                (risk.category, risk.level),
                (category, level),
                "{definition}: {risk:?}"
            );
        }
    }

    #[test]
    fn descriptions_decide_when_the_name_has_no_verb() {
        let cleanup =
            tool(json!({"name": "cache_cleanup", "description": "Delete every cached entry"}));
        assert_eq!(classify(&cleanup).category, RiskCategory::Destructive);
        let weather = tool(json!({"name": "weather", "description": "Get the forecast"}));
        assert_eq!(classify(&weather).category, RiskCategory::Read);
    }

    #[test]
    fn classification_ignores_property_order() {
        let a = tool(
            json!({"name": "create_hook", "inputSchema": {"properties": {
            "b_url": {"type": "string"}, "a_url": {"type": "string"}}}}),
        );
        let b = tool(
            json!({"name": "create_hook", "inputSchema": {"properties": {
            "a_url": {"type": "string"}, "b_url": {"type": "string"}}}}),
        );
        assert_eq!(classify(&a), classify(&b));
        assert!(
            classify(&a)
                .signals
                .contains(&"Accepts URL/endpoint input (a_url, b_url)".to_owned())
        );
    }
}
