//! Where each message of a stdio server goes: pure bookkeeping, no IO.
//!
//! Over stdio a server has one stream of messages for every client it serves; over HTTP each
//! answer belongs to one request. The bridge therefore gives every client request an id of its
//! own (unique per child, so the sessions of a `--shared` child cannot collide) and a progress
//! token to match, and routes what the child writes:
//!
//! - a response goes to the request it answers, its id restored;
//! - a progress notification goes to the request that asked for progress, its token restored;
//! - anything else (a server→client request such as sampling or elicitation, a logging or
//!   list-changed notification) is related in time, not by id: it goes to the newest request
//!   still waiting for its answer (the one whose handling made the server ask), else to the
//!   listening streams (the session's GET stream, or a stateless `subscriptions/listen`), and
//!   otherwise waits in a session-era session's backlog until it opens a GET stream.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

/// Which client a message belongs to: a session, or every stateless client at once.
pub type SessionKey = u64;

/// The key of stateless-era requests (they have no session).
pub const STATELESS: SessionKey = 0;

/// At most this many messages wait for a session to open its GET stream; older ones go.
const BACKLOG: usize = 256;

/// A message on its way to one HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The JSON-RPC message, ids restored.
    pub message: Value,
    /// True for the response that ends a request's answer.
    pub last: bool,
}

/// The sending side of one HTTP answer (a POST's stream, or a listening stream).
pub type Sink = mpsc::UnboundedSender<Outgoing>;

/// Sends `message` down `sink`; false when its answer is gone.
fn send(sink: &Sink, message: Value, last: bool) -> bool {
    sink.send(Outgoing { message, last }).is_ok()
}

struct Pending {
    session: SessionKey,
    client_id: Value,
    progress_token: Option<Value>,
    sink: Sink,
    /// A stateless `subscriptions/listen`: a listening stream, not an answer in the making.
    listen: bool,
}

#[derive(Default)]
struct SessionRoutes {
    stateless: bool,
    listener: Option<Sink>,
    backlog: VecDeque<Value>,
    opened: u64,
}

/// The routes of one child process.
#[derive(Default)]
pub struct Routes {
    next_id: i64,
    pending: BTreeMap<i64, Pending>,
    sessions: HashMap<SessionKey, SessionRoutes>,
    opened: u64,
}

/// A GET stream is already open for this session.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyListening;

impl Routes {
    /// Starts routing for a session (idempotent).
    pub fn open_session(&mut self, key: SessionKey) {
        self.opened += 1;
        let opened = self.opened;
        self.sessions.entry(key).or_insert_with(|| SessionRoutes {
            stateless: key == STATELESS,
            opened,
            ..SessionRoutes::default()
        });
    }

    /// Ends a session: its requests and its stream get nothing more.
    pub fn close_session(&mut self, key: SessionKey) {
        self.sessions.remove(&key);
        self.pending.retain(|_, p| p.session != key);
    }

    /// Takes a client request of `session` whose answer goes to `sink`: its id (and progress
    /// token, if any) become the bridge's. Returns the bridge's id.
    pub fn request(
        &mut self,
        session: SessionKey,
        message: &mut Map<String, Value>,
        sink: Sink,
        listen: bool,
    ) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        let client_id = message
            .insert("id".into(), Value::from(id))
            .unwrap_or(Value::Null);
        let progress_token = message
            .get_mut("params")
            .and_then(|p| p.get_mut("_meta"))
            .and_then(Value::as_object_mut)
            .and_then(|meta| meta.get_mut("progressToken"))
            .map(|token| std::mem::replace(token, Value::from(id)));
        self.pending.insert(
            id,
            Pending {
                session,
                client_id,
                progress_token,
                sink,
                listen,
            },
        );
        id
    }

    /// The answer to request `id` is no longer wanted (its client went away).
    pub fn forget(&mut self, id: i64) {
        self.pending.remove(&id);
    }

    /// A client's `notifications/cancelled`: names the bridge's id of the request instead of
    /// the client's, and stops waiting for its answer. False when no such request waits (the
    /// notification then has nothing to cancel and need not reach the server).
    pub fn cancel(&mut self, session: SessionKey, message: &mut Map<String, Value>) -> bool {
        let Some(request_id) = message
            .get_mut("params")
            .and_then(|p| p.get_mut("requestId"))
        else {
            return false;
        };
        let found = self
            .pending
            .iter()
            .find(|(_, p)| p.session == session && p.client_id == *request_id)
            .map(|(id, _)| *id);
        match found {
            Some(id) => {
                *request_id = Value::from(id);
                self.pending.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Opens a session's GET stream; what waited in its backlog is sent first.
    pub fn listen(&mut self, session: SessionKey, sink: Sink) -> Result<(), AlreadyListening> {
        let routes = self.sessions.entry(session).or_default();
        if routes.listener.as_ref().is_some_and(|l| !l.is_closed()) {
            return Err(AlreadyListening);
        }
        for message in routes.backlog.drain(..) {
            send(&sink, message, false);
        }
        routes.listener = Some(sink);
        Ok(())
    }

    /// The session's GET stream went away.
    pub fn unlisten(&mut self, session: SessionKey) {
        if let Some(routes) = self.sessions.get_mut(&session) {
            routes.listener = None;
        }
    }

    /// A message for `session` that no request waits for (an intermediate message of a
    /// request answered with JSON): to its GET stream, or its backlog.
    pub fn deliver_to_session(&mut self, session: SessionKey, message: Value) {
        if let Some(routes) = self.sessions.get_mut(&session) {
            routes.deliver(message);
        }
    }

    /// Routes one message the child wrote (see the module documentation). Returns false when
    /// nobody could take it.
    pub fn deliver(&mut self, mut message: Value) -> bool {
        let Some(object) = message.as_object_mut() else {
            return false;
        };
        let is_response = object.get("method").is_none();
        if is_response {
            let Some(pending) = object
                .get("id")
                .and_then(Value::as_i64)
                .and_then(|id| self.pending.remove(&id))
            else {
                return false;
            };
            object.insert("id".into(), pending.client_id);
            return send(&pending.sink, message, true);
        }
        if object.get("method").and_then(Value::as_str) == Some("notifications/progress")
            && let Some(token) = object
                .get_mut("params")
                .and_then(|p| p.get_mut("progressToken"))
            && let Some(pending) = token.as_i64().and_then(|id| self.pending.get(&id))
            && let Some(original) = &pending.progress_token
        {
            *token = original.clone();
            return send(&pending.sink, message, false);
        }
        let is_request = object.contains_key("id");
        if let Some(pending) = self
            .pending
            .values()
            .rev()
            .find(|p| !p.listen && !p.sink.is_closed())
        {
            return send(&pending.sink, message, false);
        }
        // Nobody is waiting for an answer: the listening streams take it. A request goes to
        // one of them only (one client answers it), the newest session's.
        let listening: Vec<&Sink> = self
            .pending
            .values()
            .rev()
            .filter(|p| p.listen)
            .map(|p| &p.sink)
            .chain(
                self.sessions
                    .values()
                    .filter_map(|s| s.listener.as_ref().filter(|l| !l.is_closed())),
            )
            .collect();
        if is_request {
            if let Some(sink) = listening.first() {
                return send(sink, message, false);
            }
            return match self
                .sessions
                .values_mut()
                .filter(|s| !s.stateless)
                .max_by_key(|s| s.opened)
            {
                Some(session) => {
                    session.deliver(message);
                    true
                }
                None => false,
            };
        }
        let mut delivered = false;
        for sink in listening {
            delivered |= send(sink, message.clone(), false);
        }
        for session in self
            .sessions
            .values_mut()
            .filter(|s| !s.stateless && s.listener.is_none())
        {
            session.deliver(message.clone());
            delivered = true;
        }
        delivered
    }

    /// The child is gone: every waiting request is answered with `why` as a JSON-RPC error,
    /// and every stream ends.
    pub fn fail_all(&mut self, why: &str) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            let error = json!({
                "jsonrpc": "2.0",
                "id": pending.client_id,
                "error": {"code": portcullis_mcp::codes::INTERNAL_ERROR, "message": why},
            });
            send(&pending.sink, error, true);
        }
        self.sessions.clear();
    }
}

impl SessionRoutes {
    fn deliver(&mut self, message: Value) {
        if let Some(listener) = &self.listener
            && send(listener, message.clone(), false)
        {
            return;
        }
        if self.stateless {
            return;
        }
        if self.backlog.len() == BACKLOG {
            self.backlog.pop_front();
        }
        self.backlog.push_back(message);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn sink() -> (Sink, mpsc::UnboundedReceiver<Outgoing>) {
        mpsc::unbounded_channel()
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    }

    #[test]
    fn ids_and_progress_tokens_are_the_bridges_and_come_back_as_the_clients() {
        let mut routes = Routes::default();
        routes.open_session(1);
        routes.open_session(2);
        let (a, mut a_rx) = sink();
        let (b, mut b_rx) = sink();
        // Two sessions of a shared child use the same id and token.
        let mut first = object(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "x", "_meta": {"progressToken": "t"}}}));
        let mut second = first.clone();
        let first_id = routes.request(1, &mut first, a, false);
        let second_id = routes.request(2, &mut second, b, false);
        assert_ne!(first_id, second_id);
        assert_eq!(first["id"], json!(first_id));
        assert_eq!(first["params"]["_meta"]["progressToken"], json!(first_id));

        assert!(
            routes.deliver(json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": second_id, "progress": 1}}))
        );
        assert!(routes.deliver(json!({"jsonrpc": "2.0", "id": second_id, "result": {}})));
        assert!(drain(&mut a_rx).is_empty());
        assert_eq!(
            drain(&mut b_rx),
            vec![
                Outgoing {
                    message: json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": "t", "progress": 1}}),
                    last: false
                },
                Outgoing {
                    message: json!({"jsonrpc": "2.0", "id": 7, "result": {}}),
                    last: true
                },
            ]
        );
        // An answer to a request nobody waits for any more goes nowhere.
        routes.forget(first_id);
        assert!(!routes.deliver(json!({"jsonrpc": "2.0", "id": first_id, "result": {}})));
    }

    #[test]
    fn server_requests_go_to_the_newest_waiting_request_else_the_stream_else_the_backlog() {
        let mut routes = Routes::default();
        routes.open_session(1);
        let sampling = json!({"jsonrpc": "2.0", "id": 0, "method": "sampling/createMessage"});

        // Nobody listens: it waits for the GET stream.
        assert!(routes.deliver(sampling.clone()));
        let (get, mut get_rx) = sink();
        routes.listen(1, get).unwrap();
        assert_eq!(drain(&mut get_rx)[0].message, sampling);
        let (again, _) = sink();
        assert_eq!(routes.listen(1, again), Err(AlreadyListening));

        // A call in progress takes it rather than the stream.
        let (call, mut call_rx) = sink();
        let mut request = object(json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call"}));
        routes.request(1, &mut request, call, false);
        assert!(routes.deliver(sampling.clone()));
        assert_eq!(drain(&mut call_rx)[0].message, sampling);
        assert!(drain(&mut get_rx).is_empty());
    }

    #[test]
    fn a_cancellation_names_the_bridges_id_and_ends_the_wait() {
        let mut routes = Routes::default();
        routes.open_session(1);
        let (call, _rx) = sink();
        let mut request = object(json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call"}));
        let id = routes.request(1, &mut request, call, false);
        let mut cancel = object(
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": "c"}}),
        );
        assert!(
            !routes.cancel(2, &mut cancel.clone()),
            "another session's id"
        );
        assert!(routes.cancel(1, &mut cancel));
        assert_eq!(cancel["params"]["requestId"], json!(id));
        assert!(!routes.deliver(json!({"jsonrpc": "2.0", "id": id, "result": {}})));
    }

    #[test]
    fn a_dead_child_answers_every_waiting_request_with_an_error() {
        let mut routes = Routes::default();
        routes.open_session(1);
        let (call, mut rx) = sink();
        let mut request = object(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call"}));
        routes.request(1, &mut request, call, false);
        let (get, mut get_rx) = sink();
        routes.listen(1, get).unwrap();
        routes.fail_all("the MCP server exited");
        let answer = drain(&mut rx);
        assert_eq!(answer.len(), 1);
        assert!(answer[0].last);
        assert_eq!(answer[0].message["id"], json!(3));
        assert_eq!(answer[0].message["error"]["code"], json!(-32603));
        assert_eq!(
            get_rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
    }

    #[test]
    fn stateless_notifications_reach_every_listening_request() {
        let mut routes = Routes::default();
        routes.open_session(STATELESS);
        let (one, mut one_rx) = sink();
        let (two, mut two_rx) = sink();
        let mut listen =
            object(json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen"}));
        routes.request(STATELESS, &mut listen.clone(), one, true);
        routes.request(STATELESS, &mut listen, two, true);
        let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        assert!(routes.deliver(changed.clone()));
        assert_eq!(drain(&mut one_rx)[0].message, changed);
        assert_eq!(drain(&mut two_rx)[0].message, changed);
    }
}
