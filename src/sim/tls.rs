//! TLS for the simulators, so the forwarder's TLS settings (`hec.tls_ca_file`,
//! `hec.tls_verify`) can be tested against a real handshake on loopback.
//!
//! The certificate and key come from the caller as PEM (tests make them with `rcgen`), so the
//! library itself generates nothing. The handshake happens in `accept`, with a time limit; a
//! client that refuses the certificate (the case the tests provoke) just ends that connection,
//! and the listener goes on accepting.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// A server certificate for a simulator.
#[derive(Debug, Clone)]
pub struct SimTls {
    /// PEM: the server certificate first, then any intermediates.
    pub cert_chain_pem: String,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl SimTls {
    /// The acceptor for this certificate.
    pub(crate) fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate PEM", &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid("key PEM", &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid("certificate and key", &e))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A listener that completes the TLS handshake before handing the connection to axum.
pub(crate) struct TlsListener<L> {
    /// The plain listener (killable, see `server`).
    pub(crate) inner: L,
    /// The server's TLS configuration.
    pub(crate) acceptor: TlsAcceptor,
}

/// How long a client may take to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl<L> axum::serve::Listener for TlsListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = TlsStream<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = self.inner.accept().await;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "simulator TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "simulator TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
