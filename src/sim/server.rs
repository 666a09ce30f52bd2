//! Shared plumbing for the simulators: a loopback HTTP server that can go down and come back up
//! on the same port, plus the small parsing and formatting helpers both simulators need.
//!
//! "Down" must look like a dead process to a client: new connections are refused (nothing
//! listens on the port) and connections the client already holds (keep-alive pools) are closed,
//! so the client cannot keep talking to a "dead" server through a pooled connection. Axum spawns
//! one task per connection that we cannot abort, so every accepted stream is wrapped in
//! [`KillableStream`], which fails all I/O once its session is killed; hyper then drops the
//! connection and the socket closes.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Backlog of the listening socket; generous so bursts of test connections are not refused.
const BACKLOG: u32 = 4096;

/// A running `axum::serve` on `127.0.0.1` that can be stopped and restarted on the same port.
///
/// Dropping it stops the server and closes every connection it accepted.
pub(crate) struct DownableServer {
    /// The address clients use; fixed for the life of the simulator, across downs and ups.
    addr: SocketAddr,
    /// The routes to serve; cloned into every new serve task.
    router: Router,
    /// TLS for every session, when the simulator serves HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The live session, `None` while the server is down.
    session: tokio::sync::Mutex<Option<Session>>,
    /// TCP connections accepted so far, over every session (how many a client opened).
    accepted: Arc<AtomicU64>,
}

/// One period of listening: the serve task and the switch that kills its connections.
struct Session {
    /// The `axum::serve` task; aborting it drops the listener (connections get refused).
    task: JoinHandle<()>,
    /// Set to `true` to close every connection accepted in this session.
    kill: watch::Sender<bool>,
}

impl Session {
    /// Stops listening and closes this session's connections; waits until the listening socket
    /// is really closed so the port can be bound again at once.
    async fn stop(self) {
        self.kill.send_replace(true);
        self.task.abort();
        // An aborted task resolves once it has been dropped, listener included.
        let _ = self.task.await;
    }
}

impl DownableServer {
    /// Binds `127.0.0.1:0` and starts serving `router`.
    pub(crate) async fn start(router: Router) -> io::Result<Self> {
        Self::start_with_tls(router, None).await
    }

    /// Binds `127.0.0.1:0` and starts serving `router`, over TLS when `tls` is given.
    pub(crate) async fn start_with_tls(
        router: Router,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Self> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let session = spawn_session(listener, router.clone(), tls.clone(), accepted.clone());
        Ok(Self {
            addr,
            router,
            tls,
            session: tokio::sync::Mutex::new(Some(session)),
            accepted,
        })
    }

    /// TCP connections accepted since the start.
    pub(crate) fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The `http://127.0.0.1:PORT` (or `https://`) base URL, without a trailing slash.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops listening (`down = true`: connections refused, open connections closed) or starts
    /// again on the same port (`down = false`). Idempotent.
    ///
    /// If the port cannot be bound again (another process took it), the error is logged and the
    /// server stays down; clients then see what they would see from a dead server.
    pub(crate) async fn set_down(&self, down: bool) {
        let mut session = self.session.lock().await;
        if down {
            if let Some(live) = session.take() {
                live.stop().await;
                tracing::debug!(addr = %self.addr, "simulator down");
            }
        } else if session.is_none() {
            match rebind(self.addr).await {
                Ok(listener) => {
                    *session = Some(spawn_session(
                        listener,
                        self.router.clone(),
                        self.tls.clone(),
                        self.accepted.clone(),
                    ));
                    tracing::debug!(addr = %self.addr, "simulator up");
                }
                Err(e) => {
                    tracing::error!(addr = %self.addr, error = %e, "simulator could not listen again");
                }
            }
        }
    }
}

impl Drop for DownableServer {
    fn drop(&mut self) {
        if let Some(live) = self.session.get_mut().take() {
            live.kill.send_replace(true);
            live.task.abort();
        }
    }
}

/// Rebinds `addr`, retrying for up to a second in case the old socket is still closing.
async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut attempts = 0;
    loop {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if attempts >= 50 => return Err(e),
            Err(_) => attempts += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A listening socket with `SO_REUSEADDR`, so a port we just closed can be bound again at once.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Starts serving `router` on `listener` in a new task (over TLS when `tls` is given).
fn spawn_session(
    listener: TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    accepted: Arc<AtomicU64>,
) -> Session {
    let (kill, killed) = watch::channel(false);
    let listener = KillableListener {
        listener,
        killed,
        accepted,
    };
    let task = tokio::spawn(async move {
        let served = match tls {
            None => axum::serve(listener, router).await,
            Some(acceptor) => {
                let listener = crate::sim::tls::TlsListener {
                    inner: listener,
                    acceptor,
                };
                axum::serve(listener, router).await
            }
        };
        if let Err(e) = served {
            tracing::warn!(error = %e, "simulator server stopped");
        }
    });
    Session { task, kill }
}

/// A TCP listener whose accepted streams die when the session is killed.
struct KillableListener {
    /// The real listener.
    listener: TcpListener,
    /// The session's kill switch, handed to every accepted stream.
    killed: watch::Receiver<bool>,
    /// Counts accepted connections.
    accepted: Arc<AtomicU64>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let mut killed = self.killed.clone();
                    let kill: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                        // Resolves when the session is killed or its sender is gone.
                        let _ = killed.wait_for(|k| *k).await;
                    });
                    let stream = KillableStream {
                        stream,
                        kill,
                        killed: false,
                    };
                    return (stream, addr);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A TCP stream that fails every read and write once its session is killed.
///
/// Polling the kill future on every read also registers the task for wake-up, so an idle
/// keep-alive connection (parked in a read) is closed promptly, not at its next request.
pub(crate) struct KillableStream {
    /// The real connection.
    stream: TcpStream,
    /// Completes when the connection must die.
    kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set once `kill` has completed; a completed future must not be polled again.
    killed: bool,
}

impl KillableStream {
    /// `Err` once the session is killed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        if self.killed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "simulator is down",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Formats a duration for `Retry-After` / `X-Rate-Limit-Window`: whole seconds as an integer
/// (`60`), anything else as decimal seconds (`0.3`). Clients parse both as `f64`.
pub(crate) fn format_secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// Parses an `application/x-www-form-urlencoded` body into `(name, value)` pairs
/// (`+` is a space, `%XX` a byte; malformed escapes are kept literally, as lenient servers do).
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = percent_decode(parts.next().unwrap_or_default());
            let value = percent_decode(parts.next().unwrap_or_default());
            (name, value)
        })
        .collect()
}

/// Decodes one form component.
fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => match (input.get(i + 1), input.get(i + 2)) {
                (Some(&hi), Some(&lo)) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    out.push(hex_value(hi) * 16 + hex_value(lo));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one ASCII hex digit (callers check `is_ascii_hexdigit` first).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.to_ascii_uppercase().wrapping_sub(b'A') + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: sim\r\n\r\n";

    #[tokio::test]
    async fn down_closes_kept_alive_connections_and_up_rebinds_the_same_port() -> TestResult {
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = DownableServer::start(router).await?;
        let url = server.url();

        let mut kept_alive = TcpStream::connect(server.addr).await?;
        kept_alive.write_all(REQUEST).await?;
        let mut buf = [0u8; 1024];
        let n = kept_alive.read(&mut buf).await?;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        server.set_down(true).await;
        server.set_down(true).await;
        let closed =
            tokio::time::timeout(Duration::from_secs(2), kept_alive.read(&mut buf)).await?;
        assert!(
            matches!(closed, Ok(0) | Err(_)),
            "idle connection closed: {closed:?}"
        );
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "connection refused"
        );

        server.set_down(false).await;
        server.set_down(false).await;
        assert_eq!(server.url(), url);
        let mut fresh = TcpStream::connect(server.addr).await?;
        fresh.write_all(REQUEST).await?;
        let n = fresh.read(&mut buf).await?;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        Ok(())
    }

    #[tokio::test]
    async fn down_kills_requests_in_flight_like_a_dead_process() -> TestResult {
        let router = Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "late"
            }),
        );
        let server = DownableServer::start(router).await?;
        let mut in_flight = TcpStream::connect(server.addr).await?;
        in_flight.write_all(REQUEST).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.set_down(true).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), in_flight.read_to_end(&mut answer))
            .await?;
        assert!(
            read.is_err() || answer.is_empty(),
            "no answer from a dead server: {answer:?}"
        );
        Ok(())
    }

    #[test]
    fn durations_are_integers_when_whole_and_decimals_otherwise() {
        assert_eq!(format_secs(Duration::from_secs(60)), "60");
        assert_eq!(format_secs(Duration::from_millis(300)), "0.3");
        assert_eq!(format_secs(Duration::from_millis(1500)), "1.5");
    }

    #[test]
    fn form_bodies_are_percent_decoded() {
        let pairs =
            parse_form(b"grant_type=urn%3Aietf%3Aparams&assertion=a+b%2Bc%2F%3D&x=%zz&flag");
        assert_eq!(
            pairs,
            vec![
                ("grant_type".to_owned(), "urn:ietf:params".to_owned()),
                ("assertion".to_owned(), "a b+c/=".to_owned()),
                ("x".to_owned(), "%zz".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
    }
}
