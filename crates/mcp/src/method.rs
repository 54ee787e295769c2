//! MCP method names and the cheap classification the gateway branches on.

/// Method names the gateway has to recognise.
pub mod names {
    /// Session-era handshake request.
    pub const INITIALIZE: &str = "initialize";
    /// What every notification's method starts with.
    pub const NOTIFICATIONS: &str = "notifications/";
    /// Session-era handshake completion notification.
    pub const INITIALIZED: &str = "notifications/initialized";
    /// Lists tools (paginated).
    pub const TOOLS_LIST: &str = "tools/list";
    /// Calls a tool.
    pub const TOOLS_CALL: &str = "tools/call";
    /// Reads a resource; `Mcp-Name` mirrors `params.uri`.
    pub const RESOURCES_READ: &str = "resources/read";
    /// Gets a prompt; `Mcp-Name` mirrors `params.name`.
    pub const PROMPTS_GET: &str = "prompts/get";
    /// Liveness ping.
    pub const PING: &str = "ping";
    /// Stateless-era replacement for `initialize`: versions and capabilities.
    pub const SERVER_DISCOVER: &str = "server/discover";
    /// Stateless-era long-lived notification stream (replaces the session-era GET stream).
    pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
    /// First notification on a `subscriptions/listen` stream.
    pub const SUBSCRIPTIONS_ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
    /// Progress of a request.
    pub const PROGRESS: &str = "notifications/progress";
    /// Log message notification.
    pub const LOG_MESSAGE: &str = "notifications/message";
    /// Cancellation of a request.
    pub const CANCELLED: &str = "notifications/cancelled";
    /// The tool list changed.
    pub const TOOLS_LIST_CHANGED: &str = "notifications/tools/list_changed";
    /// Server→client sampling request (session era) or input request (stateless era).
    pub const SAMPLING_CREATE_MESSAGE: &str = "sampling/createMessage";
    /// Server→client elicitation request (session era) or input request (stateless era).
    pub const ELICITATION_CREATE: &str = "elicitation/create";
    /// Server→client roots request (session era) or input request (stateless era).
    pub const ROOTS_LIST: &str = "roots/list";
}

/// The methods the gateway treats specially; everything else passes through as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// `initialize`.
    Initialize,
    /// `tools/list`.
    ToolsList,
    /// `tools/call`.
    ToolsCall,
    /// `server/discover`.
    ServerDiscover,
    /// `subscriptions/listen`.
    SubscriptionsListen,
    /// Anything else.
    Other,
}

/// Classifies a method name; a length check plus one comparison at most per candidate.
pub fn classify(method: &str) -> MethodKind {
    match method {
        names::TOOLS_CALL => MethodKind::ToolsCall,
        names::TOOLS_LIST => MethodKind::ToolsList,
        names::INITIALIZE => MethodKind::Initialize,
        names::SERVER_DISCOVER => MethodKind::ServerDiscover,
        names::SUBSCRIPTIONS_LISTEN => MethodKind::SubscriptionsListen,
        _ => MethodKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_methods() {
        let cases = [
            ("tools/call", MethodKind::ToolsCall),
            ("tools/list", MethodKind::ToolsList),
            ("initialize", MethodKind::Initialize),
            ("server/discover", MethodKind::ServerDiscover),
            ("subscriptions/listen", MethodKind::SubscriptionsListen),
            ("notifications/initialized", MethodKind::Other),
            ("Tools/Call", MethodKind::Other),
            ("tools/call ", MethodKind::Other),
            ("", MethodKind::Other),
            ("resources/read", MethodKind::Other),
        ];
        for (method, kind) in cases {
            assert_eq!(classify(method), kind, "{method}");
        }
    }
}
