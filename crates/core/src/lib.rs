//! Shared domain types of Portcullis. No IO: both services and the tests depend on this crate.

pub mod audit;
pub mod ids;
pub mod redact;
pub mod redis_keys;
pub mod token;

pub use ids::{ApprovalId, GrantId, PolicyId, ServerId, TenantId, ToolId, UserId};
pub use token::{GrantToken, TokenHash};
