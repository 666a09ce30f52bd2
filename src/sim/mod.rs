//! In-process simulators of the RingCentral Audit Trail API and Splunk HEC, for tests, benchmarks
//! and the `demo` command.
//!
//! Both run real HTTP on `127.0.0.1` (an ephemeral port), behave like the real services as
//! `reference/` describes them, and misbehave on demand (faults, outages, token expiry, rate
//! limits) so the forwarder's handling of every failure can be tested end to end. Time limits are
//! configurable so tests run in milliseconds. Dropping a simulator handle stops its server.
//!
//! - [`ringcentral`]: token endpoint and audit-trail search, rate limits, RingCentral errors.
//! - [`hec`]: HTTP Event Collector event and health endpoints, HEC error codes, partial indexing.
//! - [`records`]: realistic audit records.
//! - [`tls`]: serving HTTPS with a caller-supplied certificate (the HEC simulator's `tls`).

pub mod hec;
pub mod records;
pub mod ringcentral;
mod server;
pub mod tls;
