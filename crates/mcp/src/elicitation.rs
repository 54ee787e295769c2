//! Elicitation as the gateway itself uses it: asking the agent's user to confirm a call.
//!
//! The question is a form elicitation (`elicitation/create`, `mode: "form"`) with one boolean
//! field, [`CONFIRM_FIELD`]. In the session era the gateway sends it as a request on the SSE
//! stream answering the `tools/call`; in the stateless era it is an input request of an
//! `input_required` result, answered by the retry's `inputResponses`. Either way the answer is
//! an `ElicitResult`: `{"action": "accept" | "decline" | "cancel", "content": {…}}`.

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::meta::{self, keys};
use crate::raw_json::find_member;

/// The method of a server→client elicitation request.
pub const METHOD: &str = "elicitation/create";
/// The boolean field of the confirmation form.
pub const CONFIRM_FIELD: &str = "confirm";

/// Whether the client declared form elicitation in `capabilities` (an `initialize`'s
/// `capabilities`, or the stateless era's per-request client capabilities): an `elicitation`
/// object that is empty (form is the default) or names `form`.
pub fn supports_form(capabilities: &Value) -> bool {
    match capabilities.get("elicitation") {
        Some(Value::Object(modes)) => modes.is_empty() || modes.contains_key("form"),
        _ => false,
    }
}

/// Whether an `initialize` request's params declare form elicitation.
pub fn initialize_supports_form(params: &RawValue) -> bool {
    serde_json::from_str::<Value>(params.get())
        .ok()
        .and_then(|params| params.get("capabilities").map(supports_form))
        .unwrap_or(false)
}

/// Whether a stateless-era request's params declare form elicitation in
/// `_meta["io.modelcontextprotocol/clientCapabilities"]`.
pub fn request_supports_form(params: &RawValue) -> bool {
    meta::get_raw(params, keys::CLIENT_CAPABILITIES)
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .is_some_and(|capabilities| supports_form(&capabilities))
}

/// The params of the confirmation's `elicitation/create`: `message`, and a form with one
/// required boolean.
pub fn confirm_params(message: &str) -> Value {
    json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                CONFIRM_FIELD: {
                    "type": "boolean",
                    "title": "Confirm",
                    "description": "Let this tool call go through",
                    "default": false,
                },
            },
            "required": [CONFIRM_FIELD],
        },
    })
}

/// What the user answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `accept` with the field `true`.
    Confirmed,
    /// `decline`, or `accept` without the field `true`.
    Declined,
    /// `cancel`.
    Cancelled,
}

/// Reads an `ElicitResult`; `None` when it is not one.
pub fn read_answer(result: &Value) -> Option<Answer> {
    match result.get("action")?.as_str()? {
        "accept" => {
            let confirmed = result
                .get("content")
                .and_then(|content| content.get(CONFIRM_FIELD))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Some(if confirmed {
                Answer::Confirmed
            } else {
                Answer::Declined
            })
        }
        "decline" => Some(Answer::Declined),
        "cancel" => Some(Answer::Cancelled),
        _ => None,
    }
}

/// Reads the answer under `key` of a retry's `inputResponses`; `None` when absent or not an
/// `ElicitResult`.
pub fn read_input_response(input_responses: &RawValue, key: &str) -> Option<Answer> {
    let raw = find_member(input_responses, key).ok()??;
    read_answer(&serde_json::from_str(raw.get()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn capabilities_declare_form_elicitation() {
        assert!(supports_form(&json!({"elicitation": {}})));
        assert!(supports_form(
            &json!({"elicitation": {"form": {}, "url": {}}})
        ));
        assert!(!supports_form(&json!({"elicitation": {"url": {}}})));
        assert!(!supports_form(&json!({"sampling": {}})));
        assert!(!supports_form(&json!({"elicitation": true})));
        assert!(initialize_supports_form(&raw(
            r#"{"protocolVersion":"2025-11-25","capabilities":{"elicitation":{}}}"#
        )));
        assert!(!initialize_supports_form(&raw(r#"{"capabilities":{}}"#)));
        assert!(request_supports_form(&raw(
            r#"{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{"elicitation":{"form":{}}}}}"#
        )));
        assert!(!request_supports_form(&raw(
            r#"{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{}}}"#
        )));
        assert!(!request_supports_form(&raw(r#"{"name":"t"}"#)));
    }

    #[test]
    fn answers_are_read() {
        let accept = |content: Value| json!({"action": "accept", "content": content});
        assert_eq!(
            read_answer(&accept(json!({"confirm": true}))),
            Some(Answer::Confirmed)
        );
        assert_eq!(
            read_answer(&accept(json!({"confirm": false}))),
            Some(Answer::Declined)
        );
        assert_eq!(
            read_answer(&accept(json!({"confirm": "true"}))),
            Some(Answer::Declined)
        );
        assert_eq!(
            read_answer(&json!({"action": "accept"})),
            Some(Answer::Declined)
        );
        assert_eq!(
            read_answer(&json!({"action": "decline"})),
            Some(Answer::Declined)
        );
        assert_eq!(
            read_answer(&json!({"action": "cancel"})),
            Some(Answer::Cancelled)
        );
        assert_eq!(read_answer(&json!({"action": "maybe"})), None);
        let responses = raw(r#"{"k":{"action":"accept","content":{"confirm":true}}}"#);
        assert_eq!(
            read_input_response(&responses, "k"),
            Some(Answer::Confirmed)
        );
        assert_eq!(read_input_response(&responses, "other"), None);
        let params = confirm_params("Send?");
        assert_eq!(params["requestedSchema"]["required"][0], CONFIRM_FIELD);
        assert_eq!(params["mode"], "form");
    }
}
