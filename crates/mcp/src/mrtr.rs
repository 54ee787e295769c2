//! Stateless-era multi round-trip requests: `resultType`, `input_required` results and the
//! `inputResponses`/`requestState` a client sends back when it retries.
//!
//! In the stateless era sampling, elicitation and roots are no longer server→client
//! requests: the server answers `tools/call`, `prompts/get` or `resources/read` with
//! `{"resultType":"input_required","inputRequests":{…},"requestState":"…"}` and the client
//! retries the original request, under a new id, with `inputResponses` and the echoed
//! `requestState` next to the original params.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;
use crate::raw_json::{CowStr, find_member, member_str, object_members, write_object};

/// The result member that says how to read a stateless-era result.
pub const RESULT_TYPE: &str = "resultType";
/// `resultType` of a finished request.
pub const COMPLETE: &str = "complete";
/// `resultType` of a request that needs client input before it can finish.
pub const INPUT_REQUIRED: &str = "input_required";
/// Result member: map of server-assigned keys to input requests.
pub const INPUT_REQUESTS: &str = "inputRequests";
/// Params member of a retry: map of the same keys to the client's results.
pub const INPUT_RESPONSES: &str = "inputResponses";
/// Opaque server state, in the result and echoed verbatim in the retry's params.
pub const REQUEST_STATE: &str = "requestState";

/// The kind of a result, read from `resultType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultType<'a> {
    /// `"complete"`, or absent (earlier protocol versions have no `resultType`).
    Complete,
    /// `"input_required"`.
    InputRequired,
    /// An extension's result type.
    Other(Cow<'a, str>),
}

fn upstream(e: &serde_json::Error) -> Error {
    Error::UnexpectedShape(e.to_string())
}

/// Reads a result's `resultType`; absent means `Complete`, as the spec requires of clients.
pub fn result_type(result: &RawValue) -> Result<ResultType<'_>, Error> {
    Ok(
        match member_str(result, RESULT_TYPE).map_err(|e| upstream(&e))? {
            None => ResultType::Complete,
            Some(t) if t == COMPLETE => ResultType::Complete,
            Some(t) if t == INPUT_REQUIRED => ResultType::InputRequired,
            Some(t) => ResultType::Other(t),
        },
    )
}

/// True when a result is an `input_required` result; malformed results are not.
pub fn is_input_required(result: &RawValue) -> bool {
    matches!(result_type(result), Ok(ResultType::InputRequired))
}

/// The parts of an `input_required` result the gateway may audit; forward the bytes as they are.
#[derive(Debug, Clone)]
pub struct InputRequired<'a> {
    /// Map of server-assigned keys to `elicitation/create`, `sampling/createMessage` or
    /// `roots/list` requests.
    pub input_requests: Option<&'a RawValue>,
    /// Opaque server state the client must echo.
    pub request_state: Option<Cow<'a, str>>,
}

impl<'a> InputRequired<'a> {
    /// Reads an `input_required` result; `Ok(None)` for any other result type.
    pub fn from_result(result: &'a RawValue) -> Result<Option<Self>, Error> {
        if result_type(result)? != ResultType::InputRequired {
            return Ok(None);
        }
        Ok(Some(InputRequired {
            input_requests: find_member(result, INPUT_REQUESTS).map_err(|e| upstream(&e))?,
            request_state: member_str(result, REQUEST_STATE).map_err(|e| upstream(&e))?,
        }))
    }

    /// The `(key, method)` of each input request, in document order (for the audit log).
    pub fn request_methods(&self) -> Result<Vec<(String, String)>, Error> {
        let Some(requests) = self.input_requests else {
            return Ok(Vec::new());
        };
        let members = object_members(requests).map_err(|e| upstream(&e))?;
        members
            .into_iter()
            .map(|(key, request)| {
                let method = member_str(request, "method")
                    .map_err(|e| upstream(&e))?
                    .ok_or_else(|| {
                        Error::UnexpectedShape(format!("input request {key:?} has no method"))
                    })?;
                Ok((key.into_owned(), method.into_owned()))
            })
            .collect()
    }
}

/// The retry members of a request's params (present when the client answers an
/// `input_required` result).
#[derive(Debug, Clone, Default)]
pub struct Retry<'a> {
    /// The client's answers, keyed like the server's `inputRequests`.
    pub input_responses: Option<&'a RawValue>,
    /// The server's opaque state, echoed.
    pub request_state: Option<Cow<'a, str>>,
}

impl<'a> Retry<'a> {
    /// Reads the retry members of any request's params.
    pub fn from_params(params: &'a RawValue) -> Result<Self, Error> {
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(borrow, default, rename = "inputResponses")]
            input_responses: Option<&'a RawValue>,
            #[serde(borrow, default, rename = "requestState")]
            request_state: Option<CowStr<'a>>,
        }
        let f: Fields<'a> =
            serde_json::from_str(params.get()).map_err(|e| Error::InvalidParams(e.to_string()))?;
        Ok(Retry {
            input_responses: f.input_responses,
            request_state: f.request_state.map(|s| s.0),
        })
    }

    /// True when this request is the retry of an `input_required` round trip.
    pub fn is_retry(&self) -> bool {
        self.input_responses.is_some() || self.request_state.is_some()
    }
}

/// Sets (`Some`) or removes (`None`) the `requestState` member of a raw JSON object: the
/// result of an `input_required` answer, or the params of a retry. The other members keep
/// their order and bytes; a new member is appended.
pub fn set_request_state(object: &RawValue, state: Option<&str>) -> Result<Box<RawValue>, Error> {
    let members = object_members(object).map_err(|e| Error::InvalidParams(e.to_string()))?;
    let encoded = state.map(|s| serde_json::Value::String(s.to_owned()).to_string());
    let mut out: Vec<(&str, &str)> = Vec::with_capacity(members.len() + 1);
    let mut replaced = false;
    for (key, value) in &members {
        if key == REQUEST_STATE {
            replaced = true;
            if let Some(encoded) = &encoded {
                out.push((key, encoded));
            }
        } else {
            out.push((key, value.get()));
        }
    }
    if let (false, Some(encoded)) = (replaced, &encoded) {
        out.push((REQUEST_STATE, encoded));
    }
    write_object(out).map_err(|e| Error::InvalidParams(e.to_string()))
}

/// The params of a retry without its retry members (`inputResponses` and `requestState`, in
/// any case, as upstreams that ignore case would read them): the request as it was first sent.
/// The other members keep their order and bytes.
pub fn without_retry(params: &RawValue) -> Result<Box<RawValue>, Error> {
    let members = object_members(params).map_err(|e| Error::InvalidParams(e.to_string()))?;
    let kept: Vec<(&str, &str)> = members
        .iter()
        .filter(|(key, _)| {
            !key.eq_ignore_ascii_case(INPUT_RESPONSES) && !key.eq_ignore_ascii_case(REQUEST_STATE)
        })
        .map(|(key, value)| (key.as_ref(), value.get()))
        .collect();
    write_object(kept).map_err(|e| Error::InvalidParams(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// The `input_required` answer to `tools/call` from the 2026-07-28 spec (`basic/patterns/mrtr`).
    const INPUT_REQUIRED_RESPONSE: &str = r#"{
      "jsonrpc": "2.0",
      "id": 1,
      "result": {
        "resultType": "input_required",
        "inputRequests": {
          "github_login": {
            "method": "elicitation/create",
            "params": {
              "mode": "form",
              "message": "Please provide your GitHub username",
              "requestedSchema": {
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"]
              }
            }
          },
          "capital_of_france": {
            "method": "sampling/createMessage",
            "params": {
              "messages": [
                { "role": "user", "content": { "type": "text", "text": "What is the capital of France?" } }
              ],
              "modelPreferences": {
                "hints": [{ "name": "claude-3-sonnet" }],
                "intelligencePriority": 0.8,
                "speedPriority": 0.5
              },
              "systemPrompt": "You are a helpful assistant.",
              "maxTokens": 100
            }
          }
        },
        "requestState": "AEAD-protected blob"
      }
    }"#;

    /// The retry of that call (2026-07-28 `server/tools`), with the required `_meta`.
    const RETRY_REQUEST: &str = r#"{
      "jsonrpc": "2.0",
      "id": 3,
      "method": "tools/call",
      "params": {
        "name": "get_weather",
        "arguments": { "location": "New York" },
        "inputResponses": {
          "github_login": { "action": "accept", "content": { "name": "octocat" } }
        },
        "requestState": "eyJsb2NhdGlvbiI6Ik5ldyBZb3JrIn0...",
        "_meta": {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientCapabilities": { "elicitation": { "form": {} } }
        }
      }
    }"#;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn reads_result_types() {
        let cases = [
            (r#"{"content":[]}"#, ResultType::Complete),
            (
                r#"{"resultType":"complete","content":[]}"#,
                ResultType::Complete,
            ),
            (
                r#"{"resultType":"input_required","requestState":"s"}"#,
                ResultType::InputRequired,
            ),
            (r#"{"resultType":"task"}"#, ResultType::Other("task".into())),
            ("[]", ResultType::Complete),
        ];
        for (input, expected) in cases {
            assert_eq!(result_type(&raw(input)).unwrap(), expected, "{input}");
        }
        assert!(matches!(
            result_type(&raw(r#"{"resultType":1}"#)),
            Err(Error::UnexpectedShape(_))
        ));
        assert!(!is_input_required(&raw(r#"{"resultType":1}"#)));
        assert!(is_input_required(&raw(
            r#"{"resultType":"input_required"}"#
        )));
    }

    #[test]
    fn reads_the_spec_input_required_result() {
        let msg = Message::parse(INPUT_REQUIRED_RESPONSE.as_bytes()).unwrap();
        let result = msg.result().unwrap();
        assert!(is_input_required(result));
        let ir = InputRequired::from_result(result).unwrap().unwrap();
        assert_eq!(ir.request_state.as_deref(), Some("AEAD-protected blob"));
        assert_eq!(
            ir.request_methods().unwrap(),
            vec![
                ("github_login".to_owned(), "elicitation/create".to_owned()),
                (
                    "capital_of_france".to_owned(),
                    "sampling/createMessage".to_owned()
                ),
            ]
        );

        let load_shed = raw(r#"{"resultType":"input_required","requestState":"s"}"#);
        let ir = InputRequired::from_result(&load_shed).unwrap().unwrap();
        assert!(ir.input_requests.is_none());
        assert!(ir.request_methods().unwrap().is_empty());
        assert!(
            InputRequired::from_result(&raw(r#"{"content":[]}"#))
                .unwrap()
                .is_none()
        );
        let bad = raw(r#"{"resultType":"input_required","inputRequests":{"k":{"params":{}}}}"#);
        assert!(
            InputRequired::from_result(&bad)
                .unwrap()
                .unwrap()
                .request_methods()
                .is_err()
        );
    }

    #[test]
    fn sets_and_removes_the_request_state() {
        let result =
            raw(r#"{"resultType":"input_required","requestState":"old","inputRequests":{}}"#);
        let set = set_request_state(&result, Some("new \"one\"")).unwrap();
        assert_eq!(
            set.get(),
            r#"{"resultType":"input_required","requestState":"new \"one\"","inputRequests":{}}"#
        );
        let removed = set_request_state(&result, None).unwrap();
        assert_eq!(
            removed.get(),
            r#"{"resultType":"input_required","inputRequests":{}}"#
        );
        let added = set_request_state(&raw(r#"{"name":"t"}"#), Some("s")).unwrap();
        assert_eq!(added.get(), r#"{"name":"t","requestState":"s"}"#);
        assert!(set_request_state(&raw("[1]"), None).is_err());
        assert!(set_request_state(&raw(r#"{"a":1,"a":2}"#), None).is_err());
    }

    #[test]
    fn a_retry_loses_its_retry_members_in_any_case() {
        let retry = raw(
            r#"{"name":"t","inputResponses":{"k":{}},"arguments":{"a":1},"RequestState":"s","_meta":{}}"#,
        );
        assert_eq!(
            without_retry(&retry).unwrap().get(),
            r#"{"name":"t","arguments":{"a":1},"_meta":{}}"#
        );
        assert!(without_retry(&raw("[1]")).is_err());
    }

    #[test]
    fn reads_the_spec_retry() {
        let msg = Message::parse(RETRY_REQUEST.as_bytes()).unwrap();
        let retry = Retry::from_params(msg.params().unwrap()).unwrap();
        assert!(retry.is_retry());
        assert_eq!(
            retry.request_state.as_deref(),
            Some("eyJsb2NhdGlvbiI6Ik5ldyBZb3JrIn0...")
        );
        assert!(retry.input_responses.unwrap().get().contains("octocat"));
        // Borrowed, not copied, when the string has no escapes.
        assert!(matches!(retry.request_state, Some(Cow::Borrowed(_))));

        let plain = raw(r#"{"name":"get_weather"}"#);
        let first = Retry::from_params(&plain).unwrap();
        assert!(!first.is_retry());
        assert!(Retry::from_params(&raw(r#"{"requestState":5}"#)).is_err());
    }
}
