//! The RingCentral side: authentication, the audit-trail search client, rate limiting, and the
//! per-account poller that feeds the spool.
//!
//! Facts this relies on are in `shared/reference/ringcentral-audit-trail.md`: JWT bearer grant
//! with Basic client credentials, `X-Rate-Limit-*` headers, a penalty that restarts when a request
//! arrives during it, undocumented record order, every record field optional.

pub mod auth;
pub mod client;
pub mod clock;
pub mod http;
pub mod model;
pub mod poller;
pub mod rate_limit;

pub use client::{RcClient, RcError};
pub use poller::Poller;
