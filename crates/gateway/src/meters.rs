//! The gateway's metric handles, looked up once per worker rather than on every request (each
//! lookup hashes the metric's name and labels). A labelled series is registered the first
//! time it is used, so `/metrics` shows only the methods and decisions that happened.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use portcullis_core::audit::AuditDecision;
use portcullis_mcp::MethodKind;

const METHODS: usize = 6;
const DECISIONS: usize = AuditDecision::ALL.len();

/// One worker's handles.
pub struct Meters {
    /// `portcullis_gateway_overhead_seconds`: the gateway's own time before forwarding.
    pub overhead: Histogram,
    /// `portcullis_gateway_request_seconds`, by method.
    seconds: [OnceLock<Histogram>; METHODS],
    /// `portcullis_gateway_requests_total`, by method and decision.
    requests: [[OnceLock<Counter>; DECISIONS]; METHODS],
}

impl Default for Meters {
    fn default() -> Self {
        Self::new()
    }
}

impl Meters {
    /// Handles on the process's recorder (install it first).
    pub fn new() -> Self {
        Self {
            overhead: metrics::histogram!("portcullis_gateway_overhead_seconds"),
            seconds: [const { OnceLock::new() }; METHODS],
            requests: [const { [const { OnceLock::new() }; DECISIONS] }; METHODS],
        }
    }

    /// Counts a finished request of `method` decided `decision`, which took `elapsed`.
    pub fn request(&self, method: MethodKind, decision: AuditDecision, elapsed: Duration) {
        let label = method_label(method);
        self.seconds[method as usize]
            .get_or_init(
                || metrics::histogram!("portcullis_gateway_request_seconds", "method" => label),
            )
            .record(elapsed);
        self.requests[method as usize][decision as usize]
            .get_or_init(|| {
                metrics::counter!(
                    "portcullis_gateway_requests_total",
                    "method" => label,
                    "decision" => decision.as_str()
                )
            })
            .increment(1);
    }
}

/// The `method` label of a method.
pub fn method_label(kind: MethodKind) -> &'static str {
    match kind {
        MethodKind::ToolsCall => "tools/call",
        MethodKind::ToolsList => "tools/list",
        MethodKind::Initialize => "initialize",
        MethodKind::ServerDiscover => "server/discover",
        MethodKind::SubscriptionsListen => "subscriptions/listen",
        MethodKind::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_and_decision_has_a_slot() {
        let meters = Meters::new();
        for method in [
            MethodKind::Initialize,
            MethodKind::ToolsList,
            MethodKind::ToolsCall,
            MethodKind::ServerDiscover,
            MethodKind::SubscriptionsListen,
            MethodKind::Other,
        ] {
            for decision in AuditDecision::ALL {
                meters.request(method, decision, Duration::from_millis(1));
            }
        }
    }
}
