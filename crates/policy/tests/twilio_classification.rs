//! Classification of the real Twilio MCP catalogue (`@twilio-alpha/mcp` 0.7.0, captured with
//! `tests/fixtures/capture-twilio.js`): hundreds of OpenAPI-generated tools with no annotations.
//! `twilio_provisioning.json` adds tools from further services that buy or provision billable
//! resources, and look-alikes that only read, change or attach them.

use portcullis_policy::{
    Call, CompiledPolicy, Outcome, Risk, RiskCategory, RiskLevel, ToolDefinition, classify,
    evaluate, recommend,
};
use serde_json::{Value, json};

fn catalogue(file: &str) -> Vec<ToolDefinition> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the fixture exists");
    let value: Value = serde_json::from_str(&text).expect("the fixture is JSON");
    serde_json::from_value(value["tools"].clone()).expect("the fixture holds tool definitions")
}

fn all_tools() -> Vec<ToolDefinition> {
    let mut tools = catalogue("twilio_conversations_v1.json");
    tools.extend(catalogue("twilio_api_v2010.json"));
    tools
}

/// The operation part of an OpenAPI-style name: `TwilioApiV2010--CreateMessage` → `CreateMessage`.
fn operation(tool: &ToolDefinition) -> &str {
    tool.name.rsplit("--").next().unwrap_or(&tool.name)
}

fn risk_of<'a>(tools: &'a [ToolDefinition], operation_name: &str) -> (&'a ToolDefinition, Risk) {
    let tool = tools
        .iter()
        .find(|t| operation(t) == operation_name)
        .unwrap_or_else(|| panic!("{operation_name} is not in the catalogue"));
    (tool, classify(tool))
}

#[test]
fn fixtures_hold_both_services() {
    assert_eq!(catalogue("twilio_conversations_v1.json").len(), 103);
    assert_eq!(catalogue("twilio_api_v2010.json").len(), 197);
}

#[test]
fn every_delete_tool_is_destructive() {
    let tools = all_tools();
    let deletes: Vec<_> = tools
        .iter()
        .filter(|t| operation(t).starts_with("Delete"))
        .collect();
    assert_eq!(deletes.len(), 50);
    for tool in deletes {
        let risk = classify(tool);
        assert_eq!(
            risk.category,
            RiskCategory::Destructive,
            "{}: {risk:?}",
            tool.name
        );
        assert!(risk.level >= RiskLevel::High, "{}: {risk:?}", tool.name);
        assert!(
            risk.signals.iter().any(|s| s.contains("\"delete\"")),
            "{}: {risk:?}",
            tool.name
        );
    }
}

#[test]
fn every_fetch_and_list_tool_is_read() {
    let tools = all_tools();
    let reads: Vec<_> = tools
        .iter()
        .filter(|t| operation(t).starts_with("Fetch") || operation(t).starts_with("List"))
        .collect();
    assert!(reads.len() > 100, "{}", reads.len());
    for tool in reads {
        let risk = classify(tool);
        assert_eq!(risk.category, RiskCategory::Read, "{}: {risk:?}", tool.name);
        assert!(risk.level <= RiskLevel::Medium, "{}: {risk:?}", tool.name);
    }
}

#[test]
fn sending_messages_and_placing_calls_is_financial() {
    let tools = all_tools();
    let (_, message) = risk_of(&tools, "CreateMessage");
    assert_eq!(message.category, RiskCategory::Financial, "{message:?}");
    assert!(
        message
            .signals
            .contains(&"Incurs per-message charges (From, To)".to_owned()),
        "{message:?}"
    );
    let (_, call) = risk_of(&tools, "CreateCall");
    assert_eq!(call.category, RiskCategory::Financial, "{call:?}");
    assert!(
        call.signals
            .contains(&"Incurs per-call charges (From, To)".to_owned()),
        "{call:?}"
    );
    let (_, number) = risk_of(&tools, "CreateIncomingPhoneNumber");
    assert_eq!(
        number.category,
        RiskCategory::Financial,
        "purchases a number: {number:?}"
    );
    let (_, payments) = risk_of(&tools, "CreatePayments");
    assert_eq!(payments.category, RiskCategory::Financial, "{payments:?}");
}

#[test]
fn buying_or_provisioning_is_financial_and_look_alikes_are_not() {
    use RiskCategory::{Destructive, Financial, Read, Write};
    let tools = catalogue("twilio_provisioning.json");
    let cases = [
        // Buys a phone number (the Local/Mobile/TollFree forms say so only in their names).
        ("TwilioApiV2010--CreateIncomingPhoneNumber", Financial),
        ("TwilioApiV2010--CreateIncomingPhoneNumberLocal", Financial),
        ("TwilioApiV2010--CreateIncomingPhoneNumberMobile", Financial),
        (
            "TwilioApiV2010--CreateIncomingPhoneNumberTollFree",
            Financial,
        ),
        // "Order an eSIM Profile"; "Register a Super SIM to your Account".
        ("TwilioSupersimV1--CreateEsimProfile", Financial),
        ("TwilioSupersimV1--CreateSim", Financial),
        // A hosted-number order, financial before buying resources were recognised.
        ("TwilioNumbersV2--CreateHostedNumberOrder", Financial),
        // Searching what is for sale, or reading what the account holds.
        ("TwilioApiV2010--ListAvailablePhoneNumberLocal", Read),
        ("TwilioApiV2010--ListAvailablePhoneNumberTollFree", Read),
        ("TwilioApiV2010--FetchAvailablePhoneNumberCountry", Read),
        ("TwilioApiV2010--ListIncomingPhoneNumber", Read),
        ("TwilioApiV2010--FetchIncomingPhoneNumber", Read),
        ("TwilioApiV2010--FetchShortCode", Read),
        ("TwilioSupersimV1--FetchEsimProfile", Read),
        ("TwilioSupersimV1--ListSim", Read),
        ("TwilioMessagingV1--ListPhoneNumber", Read),
        ("TwilioEventsV1--FetchSubscription", Read),
        // Changing one: a friendly name, webhooks, a status.
        ("TwilioApiV2010--UpdateIncomingPhoneNumber", Write),
        ("TwilioApiV2010--UpdateShortCode", Write),
        ("TwilioSupersimV1--UpdateSim", Write),
        ("TwilioWirelessV1--UpdateSim", Write),
        ("TwilioProxyV1--UpdatePhoneNumber", Write),
        ("TwilioTaskrouterV1--UpdateWorkerReservation", Write),
        // Attaching a number or short code the account already holds (`PhoneNumberSid`,
        // `ShortCodeSid`, or a `Sid` described as an IncomingPhoneNumber).
        ("TwilioMessagingV1--CreatePhoneNumber", Write),
        ("TwilioMessagingV1--CreateShortCode", Write),
        ("TwilioTrunkingV1--CreatePhoneNumber", Write),
        ("TwilioProxyV1--CreatePhoneNumber", Write),
        // Creating something that is not itself billed.
        (
            "TwilioApiV2010--CreateIncomingPhoneNumberAssignedAddOn",
            Write,
        ),
        ("TwilioApiV2010--CreateSipDomain", Write),
        (
            "TwilioApiV2010--CreateUserDefinedMessageSubscription",
            Write,
        ),
        ("TwilioEventsV1--CreateSubscription", Write),
        ("TwilioEventsV1--UpdateSubscription", Write),
        ("TwilioTrunkingV1--CreateTrunk", Write),
        ("TwilioNumbersV2--CreateBundle", Write),
        // Releasing or detaching.
        ("TwilioApiV2010--DeleteIncomingPhoneNumber", Destructive),
        ("TwilioWirelessV1--DeleteSim", Destructive),
        ("TwilioMessagingV1--DeletePhoneNumber", Destructive),
        ("TwilioTrunkingV1--DeletePhoneNumber", Destructive),
    ];
    assert_eq!(cases.len(), tools.len(), "every fixture tool has a case");
    for (name, want) in cases {
        let tool = tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} is not in the fixture"));
        let risk = classify(tool);
        assert_eq!(risk.category, want, "{name}: {risk:?}");
    }
}

#[test]
fn a_bought_resource_is_named_in_the_signal() {
    let tools = catalogue("twilio_provisioning.json");
    let signal = |name: &str| {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        classify(tool).signals[0].clone()
    };
    assert_eq!(
        signal("TwilioApiV2010--CreateIncomingPhoneNumberTollFree"),
        "Buys or provisions a billable resource: \"phone number\" (name)"
    );
    assert_eq!(
        signal("TwilioSupersimV1--CreateEsimProfile"),
        "Buys or provisions a billable resource: \"esim profile\" (name)"
    );
    assert_eq!(
        signal("TwilioSupersimV1--CreateSim"),
        "Buys or provisions a billable resource: \"sim\" (name)"
    );
}

#[test]
fn api_v2010_spends_money_in_exactly_these_tools() {
    let tools = catalogue("twilio_api_v2010.json");
    let mut financial: Vec<&str> = tools
        .iter()
        .filter(|t| classify(t).category == RiskCategory::Financial)
        .map(operation)
        .collect();
    financial.sort_unstable();
    assert_eq!(
        financial,
        [
            "CreateCall",
            "CreateIncomingPhoneNumber",
            "CreateIncomingPhoneNumberLocal",
            "CreateIncomingPhoneNumberMobile",
            "CreateIncomingPhoneNumberTollFree",
            "CreateMessage",
            "CreateParticipant",
            "CreatePayments",
            "UpdatePayments",
        ]
    );
    let count = |category| {
        tools
            .iter()
            .filter(|t| classify(t).category == category)
            .count()
    };
    let counts = RiskCategory::ALL.map(|c| (c, count(c)));
    assert_eq!(
        counts,
        [
            (RiskCategory::Read, 103),
            (RiskCategory::Write, 53),
            (RiskCategory::Execute, 0),
            (RiskCategory::Financial, 9),
            (RiskCategory::Destructive, 32),
            (RiskCategory::Other, 0),
        ]
    );
}

#[test]
fn other_writes_are_writes_not_money() {
    let tools = all_tools();
    for name in [
        "CreateConversation",
        "UpdateConversation",
        "CreateConversationMessage",
        "UpdateMessage",
        "CreateMessageFeedback",
        "CreateQueue",
        "UpdateAccount",
    ] {
        let (_, risk) = risk_of(&tools, name);
        assert_eq!(risk.category, RiskCategory::Write, "{name}: {risk:?}");
    }
}

#[test]
fn signals_name_the_argument_paths_they_come_from() {
    let tools = all_tools();
    let (_, message) = risk_of(&tools, "CreateMessage");
    let url = message
        .signals
        .iter()
        .find(|s| s.starts_with("Accepts URL/endpoint input ("))
        .unwrap_or_else(|| panic!("{message:?}"));
    assert!(url.contains("StatusCallback"), "{url}");

    let (_, address) = risk_of(&tools, "CreateConfigurationAddress");
    let url = address
        .signals
        .iter()
        .find(|s| s.starts_with("Accepts URL/endpoint input ("))
        .unwrap_or_else(|| panic!("{address:?}"));
    assert!(url.contains("AutoCreation.WebhookUrl"), "{url}");
    assert_eq!(address.level, RiskLevel::High, "{address:?}");

    let (_, credential) = risk_of(&tools, "CreateCredential");
    let secrets = credential
        .signals
        .iter()
        .find(|s| s.starts_with("Accepts credentials or secrets ("))
        .unwrap_or_else(|| panic!("{credential:?}"));
    for arg in ["Certificate", "PrivateKey", "Secret", "ApiKey"] {
        assert!(secrets.contains(arg), "{arg} in {secrets}");
    }

    // Every signal has the "<description> (<source>)" shape.
    for tool in &tools {
        for signal in classify(tool).signals {
            assert!(
                signal.ends_with(')') && signal.contains(" ("),
                "{}: {signal}",
                tool.name
            );
        }
    }
}

#[test]
fn classification_is_deterministic() {
    let tools = all_tools();
    let first: Vec<Risk> = tools.iter().map(classify).collect();
    let second: Vec<Risk> = tools.iter().map(classify).collect();
    assert_eq!(first, second);
    let roundtrip: Vec<ToolDefinition> =
        serde_json::from_value(serde_json::to_value(&tools).unwrap()).unwrap();
    assert_eq!(roundtrip.iter().map(classify).collect::<Vec<_>>(), first);
}

#[test]
fn the_recommended_policy_validates_and_behaves_per_category() {
    let tools = all_tools();
    let document = recommend(&tools);
    let policy = CompiledPolicy::from_json(&document).unwrap_or_else(|e| panic!("{e:?}"));
    let decide = |name: &str| {
        let args = json!({"To": "+15555550100"});
        evaluate(
            Some(&policy),
            &Call {
                tool: name,
                arguments: &args,
                grant: "g",
                identity: "i",
                server: "s",
                tenant: "t",
                category: None,
            },
        )
    };
    for tool in &tools {
        let risk = classify(tool);
        let decision = decide(&tool.name);
        let want = match risk.category {
            RiskCategory::Read | RiskCategory::Write | RiskCategory::Execute => "allow",
            RiskCategory::Financial => "approval_required",
            RiskCategory::Destructive => "hidden",
            RiskCategory::Other => "deny",
        };
        assert_eq!(decision.outcome.as_str(), want, "{}: {risk:?}", tool.name);
        if risk.category == RiskCategory::Write {
            let charge = &decision.charges[0];
            assert_eq!(
                (charge.max, charge.window.as_secs()),
                (30, 60),
                "{}",
                tool.name
            );
        }
    }
    assert_eq!(
        decide("TwilioApiV2010--CreateMessage").outcome,
        Outcome::ApprovalRequired {
            timeout: portcullis_policy::DEFAULT_APPROVAL_TIMEOUT
        }
    );
}

#[test]
#[ignore = "prints the whole catalogue's classification for review"]
fn print_catalogue() {
    for tool in all_tools() {
        let risk = classify(&tool);
        println!(
            "{:<55} {:<11} {:<8} {:?}",
            operation(&tool),
            risk.category,
            risk.level,
            risk.signals
        );
    }
}
