//! Shared domain types of Portcullis. No IO: both services and the tests depend on this crate.

pub mod audit;
pub mod canonical;
pub mod crypto;
pub mod egress;
pub mod ids;
pub mod invalidation;
pub mod redact;
pub mod redis_keys;
pub mod settings;
pub mod token;

pub use crypto::Keyring;
pub use ids::{ApprovalId, GrantId, PolicyId, ServerId, TenantId, ToolId, UserId};
pub use invalidation::Invalidation;
pub use token::{GrantToken, TokenHash};
