//! # rc-audit-hec
//!
//! Forwards the RingCentral Audit Trail into Splunk through the HTTP Event Collector, durably.
//!
//! ## Data flow
//! ```text
//! RingCentral Audit Trail API                                    Splunk HEC (one or more URLs)
//!   |                                                                   ^
//!   v                                                                   |
//! ringcentral::Poller --> transform --> spool (SQLite) --> hec::Sink (batches)
//! (one per account)       record ->     outbox, cursors,   gzip, retries, response
//!                         HEC event     dedup, dead letters classification, failover
//! ```
//! - [`ringcentral`]: token lifecycle, rate limiting, the audit-trail search, one poller per
//!   account computing windows and committing pages.
//! - [`transform`]: pure functions turning a raw record into a HEC envelope.
//! - [`spool`]: the only channel between source and sink; every record passes through it.
//! - [`hec`]: batching, the HTTP client, the one response classifier, the delivery loop.
//! - [`app`]: the wired [`app::Pipeline`] and `once`; [`service`] runs it as the `run` service
//!   (loops under the [`watchdog`], sd-notify, SIGHUP reload, the [`admin`] endpoint); [`demo`]
//!   drives it against the [`sim`]ulators.
//! - [`backfill`], [`dryrun`], [`check`], [`actions`]: the commands that poll a past range, show
//!   what would be sent, diagnose a setup, and list the action ids an account really has.
//! - [`config`], [`cli`], [`inspect`], [`telemetry`], [`retry`]: the edges and shared helpers;
//!   [`packaging`] (completions, man pages) and [`healthcheck`] serve the packages and the image;
//!   [`runtime`] is the async runtime with its threads bounded.
//!
//! ## Invariants (each has a test that fails if it breaks)
//! 1. **Cursor after records**: an account's cursor moves only in the transaction that stores
//!    the window's last page ([`spool::Spool::enqueue_page`]).
//! 2. **Delete after acceptance**: a record leaves the outbox only after HEC answered 200/code 0
//!    for its batch ([`hec::Sink`], [`spool::Spool::settle`]).
//! 3. **Once per record id** per account, across overlapping windows (the spool's `seen` table).
//! 4. **Never drop, never spin**: retryable failures back off ([`retry`]) forever; a permanently
//!    bad event is dead-lettered with its reason; configuration failures pause that side and
//!    resume when fixed.
//! 5. **Bounded resources**: the sink holds one batch in memory; polling pauses at
//!    `spool.max_bytes` and below `spool.min_free_bytes` of free disk, and a reserve keeps
//!    delivery going on a full disk; the admin endpoint holds at most 64 connections.
//! 6. **Secrets stay secret**: [`config::Secret`] prints as `[REDACTED]` everywhere.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actions;
pub mod admin;
pub mod app;
pub mod backfill;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dryrun;
pub mod healthcheck;
pub mod hec;
pub mod inspect;
pub mod packaging;
pub mod retry;
pub mod ringcentral;
pub mod runtime;
pub mod service;
pub mod sim;
pub mod spool;
pub mod telemetry;
pub mod transform;
pub mod watchdog;
