//! Typed identifiers. A `TenantId` can never be passed where a `ServerId` is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUID v7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A tenant (an organisation). Every row and every Redis key belongs to one.
    TenantId
);
uuid_id!(
    /// A dashboard user.
    UserId
);
uuid_id!(
    /// A registered upstream MCP server.
    ServerId
);
uuid_id!(
    /// A discovered tool of a server.
    ToolId
);
uuid_id!(
    /// A named policy of a server.
    PolicyId
);
uuid_id!(
    /// A grant: a bearer token bound to one identity, server and policy.
    GrantId
);

/// An approval id as users see it: `apr_` followed by 26 lowercase base32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApprovalId(String);

impl ApprovalId {
    const PREFIX: &'static str = "apr_";

    /// A new random approval id.
    pub fn new() -> Self {
        Self(format!(
            "{}{}",
            Self::PREFIX,
            crate::token::random_base32(26)
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ApprovalId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text is not an approval id.
#[derive(Debug, thiserror::Error)]
#[error("not an approval id (expected apr_ followed by 26 base32 characters)")]
pub struct InvalidApprovalId;

impl TryFrom<String> for ApprovalId {
    type Error = InvalidApprovalId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let rest = s.strip_prefix(Self::PREFIX).ok_or(InvalidApprovalId)?;
        if rest.len() == 26 && rest.bytes().all(|b| crate::token::BASE32.contains(&b)) {
            Ok(Self(s))
        } else {
            Err(InvalidApprovalId)
        }
    }
}

impl FromStr for ApprovalId {
    type Err = InvalidApprovalId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<ApprovalId> for String {
    fn from(id: ApprovalId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_ids_round_trip_and_reject_junk() {
        let id = ApprovalId::new();
        assert!(id.as_str().starts_with("apr_"));
        assert_eq!(id.as_str().parse::<ApprovalId>().unwrap(), id);
        assert!("apr_short".parse::<ApprovalId>().is_err());
        assert!(
            "xyz_abcdefghijklmnopqrstuvwxyz"
                .parse::<ApprovalId>()
                .is_err()
        );
    }

    #[test]
    fn uuid_ids_are_time_ordered() {
        let a = GrantId::new();
        let b = GrantId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<GrantId>().unwrap(), a);
    }
}
