//! Shared domain types of Portcullis. No IO: both services and the tests depend on this crate.

pub mod audit;
pub mod canonical;
pub mod crypto;
pub mod egress;
pub mod ids;
pub mod invalidation;
pub mod oidc;
pub mod redact;
pub mod redis_keys;
pub mod settings;
pub mod token;

pub use crypto::Keyring;
pub use ids::{ApprovalId, GrantId, PolicyId, ServerId, TenantId, ToolId, UserId};
pub use invalidation::Invalidation;
pub use token::{GrantToken, TokenHash};

/// An error and its causes on one line, e.g. `request failed: client error (Connect): tcp
/// connect error: Connection refused (os error 111)`: many errors' own text omits their
/// causes. A cause whose text the line already ends with (an error that shows its cause) is
/// not repeated.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("request failed")]
        Hides(#[source] io::Error),
        #[error("request failed: {0}")]
        Shows(#[source] io::Error),
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            super::error_chain(&Outer::Hides(refused())),
            "request failed: connection refused"
        );
        assert_eq!(
            super::error_chain(&Outer::Shows(refused())),
            "request failed: connection refused"
        );
    }
}
