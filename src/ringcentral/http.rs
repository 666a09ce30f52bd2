//! The HTTP side shared by many accounts: one `reqwest::Client` per RingCentral server, and a
//! bound on the requests in flight to it.
//!
//! Tokens, the rate limiter and health stay per account (in [`super::client::Session`] and
//! [`super::client::RcClient`]); what is shared is only what costs memory and sockets per
//! instance: the client (TLS roots, connection pool, resolver) and its connections. Without the
//! bound, 10,000 accounts starting together open 10,000 connections at once (a descriptor
//! each, and tens of kB of buffers each in the process); with it, at most
//! [`MAX_IN_FLIGHT_PER_SERVER`] requests are on the wire and their connections are reused.
//!
//! The bound cannot let a slow account delay the others for long: a request holds its slot only
//! until it is answered or times out (the client's request timeout covers the body), and the
//! account's rate-limit waits and poll intervals happen outside the slot. One account whose
//! searches hang holds one slot, not the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests in flight to one RingCentral server at most (and idle connections kept to it).
/// At 0.5 s a search (a slow day at RingCentral) this carries 128 searches a second, a poll of
/// 10,000 accounts every 80 s.
pub const MAX_IN_FLIGHT_PER_SERVER: usize = 64;

/// How long an idle pooled connection is kept: longer than the usual gap between two accounts'
/// polls, shorter than load balancers' idle cut-off.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Builds the HTTP client for RingCentral requests: request `timeout` (covering the body, so a
/// hanging answer frees its slot), 10 s to connect, a bounded idle pool.
pub fn build_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_IN_FLIGHT_PER_SERVER)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(concat!("rc-audit-hec/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One server's client and its in-flight bound; cheap to clone (both are shared).
#[derive(Debug, Clone)]
pub struct ServerHttp {
    /// The client every account of this server uses.
    pub client: reqwest::Client,
    /// Slots for requests in flight to this server.
    pub slots: Arc<Semaphore>,
}

impl ServerHttp {
    /// A client of its own with a bound of `in_flight` (one-off commands, tests).
    pub fn new(client: reqwest::Client, in_flight: usize) -> Self {
        ServerHttp {
            client,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
        }
    }

    /// Waits for a slot to send one request. While other requests hold every slot, the wait
    /// tells the watchdog the loop is alive: each of them ends within the request timeout, so
    /// the queue moves (a slot is never held across a wait of the account's own).
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            let acquire = self.slots.clone().acquire_owned();
            match tokio::time::timeout(Duration::from_secs(5), acquire).await {
                Ok(permit) => return permit.expect("the slots are never closed"),
                Err(_) => crate::watchdog::beat(),
            }
        }
    }
}

/// The clients of a process (or of a pipeline), one per RingCentral server URL, built when the
/// first account of that server asks.
#[derive(Debug)]
pub struct RcHttp {
    timeout: Duration,
    /// Built at creation, so a client that cannot be built is an error at start; also the
    /// fallback should a later build fail (a client can talk to any server, only unshared).
    first: reqwest::Client,
    servers: Mutex<HashMap<String, ServerHttp>>,
    built: AtomicUsize,
}

impl RcHttp {
    /// Clients with request `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(RcHttp {
            timeout,
            first: build_client(timeout)?,
            servers: Mutex::default(),
            built: AtomicUsize::new(0),
        })
    }

    /// The client and bound of `server_url`, made at the first call for it.
    pub fn server(&self, server_url: &str) -> ServerHttp {
        let key = server_url.trim_end_matches('/').to_ascii_lowercase();
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = servers.get(&key) {
            return s.clone();
        }
        let client = if servers.is_empty() {
            self.first.clone()
        } else {
            build_client(self.timeout).unwrap_or_else(|e| {
                tracing::warn!(server = %key, "cannot build another HTTP client ({e}); this server shares the first one");
                self.first.clone()
            })
        };
        self.built.fetch_add(1, Ordering::Relaxed);
        let s = ServerHttp::new(client, MAX_IN_FLIGHT_PER_SERVER);
        servers.insert(key, s.clone());
        s
    }

    /// How many servers have a client (one each).
    pub fn clients_built(&self) -> usize {
        self.built.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_per_server_url() {
        let http = RcHttp::new(Duration::from_secs(5)).unwrap();
        let mut slots = Vec::new();
        for _ in 0..1000 {
            slots.push(http.server("https://platform.ringcentral.com").slots);
        }
        assert_eq!(http.clients_built(), 1);
        assert!(slots.iter().all(|s| Arc::ptr_eq(s, &slots[0])));
        http.server("https://platform.ringcentral.com/");
        assert_eq!(
            http.clients_built(),
            1,
            "a trailing slash is the same server"
        );
        http.server("https://platform.devtest.ringcentral.com");
        assert_eq!(http.clients_built(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_slot_and_gets_one_when_another_ends() {
        let s = ServerHttp::new(build_client(Duration::from_secs(5)).unwrap(), 2);
        let a = s.slot().await;
        let _b = s.slot().await;
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.slot().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "both slots are held");
        drop(a);
        let _slot = waiting.await.unwrap();
    }
}
