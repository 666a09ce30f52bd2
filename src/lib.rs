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
//! - [`heartbeat`]: one event about the forwarder itself every `[heartbeat] interval`, from the
//!   telemetry and the spool's status, through the spool.
//! - [`pipeline`]: the wired [`pipeline::Pipeline`] (spool, pollers, sink) and `once`.
//!   Shutdown is a `CancellationToken` parameter everywhere; [`signals`] turns SIGTERM/SIGINT
//!   into it (and SIGHUP into `run`'s reload requests).
//! - [`backfill`]: planning a past range (the `backfill` command polls it, the admin endpoint
//!   hands it to the service).
//! - [`admin`]: the admin endpoint (`/metrics` rendered by [`admin::metrics`], `/healthz`,
//!   `/livez`, `/backfill`).
//! - [`service`]: runs the pipeline as the `run` service: loops under the [`watchdog`],
//!   sd-notify ([`notify`]), SIGHUP reload, the admin endpoint.
//! - [`commands`]: one file per command (`run`, `once`, `once --dry-run`, `backfill` with its
//!   progress bar, `check`, `spool`, `demo`, `config`, `actions`, `completions`/`man`,
//!   `healthcheck`), each returning a report that prints itself and knows its exit code
//!   ([`exit`], the one mapping); [`cli`] holds the clap types and dispatches.
//! - [`reconcile`]: per account and closed period, RingCentral's count against the spool's
//!   (the poller asks and repairs between live windows; the spool keeps results and the ledger).
//! - [`config`], [`telemetry`] (counters, health, logging), [`retry`], [`time`] (milliseconds
//!   and RFC 3339, the one conversion): shared by every layer;
//!   [`runtime`] is the async runtime every command runs on, with its threads bounded.
//! - `sim`: RingCentral and HEC simulators with fault injection, for the demo, the tests and
//!   the benchmarks; a leaf that imports nothing of the forwarder, hidden from these docs and
//!   never on the path `run` takes.
//!
//! ## Layers
//! The top-level modules form a DAG. The table lists the lowest layer first; a module imports
//! only from its own row or from rows above it, and never in a cycle. A value a lower layer
//! needs from a higher one is passed in (a parameter, a field), and a type both need lives in
//! the lower one. `tests/layering.rs` reads this table and every `crate::` path under `src/`
//! (comments, strings and `#[cfg(test)]` items aside), and fails on a cycle or an upward import.
//!
//! | layer | modules | role |
//! | --- | --- | --- |
//! | leaves | `exit`, `notify`, `retry`, `runtime`, `signals`, `time`, `watchdog`, `sim` | import nothing of the crate |
//! | shared | `config`, `telemetry`, `reconcile` | settings; counters, health, logging; which period is due for reconciliation, its verdict and event |
//! | storage | `transform`, `spool` | record to event; the durable outbox |
//! | endpoints | `ringcentral`, `hec`, `dynamodb`, `heartbeat` | the source (pollers), the destinations (Splunk HEC, AWS DynamoDB), the forwarder's own heartbeat |
//! | pipeline | `pipeline` | wires spool, pollers and sink; `once` |
//! | planning | `backfill` | a past range cut into pieces |
//! | admin | `admin` | the admin endpoint, `/metrics` rendering |
//! | service | `service` | `run`: supervisor, reload, watchdog, sd-notify |
//! | commands | `commands` | one file per command, reports and their exit codes |
//! | cli | `cli` | clap types and dispatch |
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

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dynamodb;
pub mod exit;
pub mod heartbeat;
pub mod hec;
pub mod notify;
pub mod pipeline;
pub mod reconcile;
pub mod retry;
pub mod ringcentral;
pub mod runtime;
pub mod service;
pub mod signals;
#[doc(hidden)]
pub mod sim;
pub mod spool;
pub mod telemetry;
pub mod time;
pub mod transform;
pub mod watchdog;
