//! DRPC over TLS, with rustls (the `tls` feature): what
//! [`Endpoint::tls`](crate::Endpoint::tls) and
//! [`Conn::connect_tls`](crate::Conn::connect_tls) take, re-exported so
//! that building a client configuration needs no other dependency.
//!
//! The `tls` feature brings no crypto provider: a build that has none
//! turns on `tls-ring` (rustls' `ring` provider, which builds with a C
//! compiler alone) or rustls' `aws_lc_rs` feature. A build with both
//! providers must name one, with `ClientConfig::builder_with_provider`
//! (or install one as the process default).
//!
//! For mutual TLS, build the [`ClientConfig`] with a client certificate
//! (`with_client_auth_cert`).

use std::fmt;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

pub use tokio_rustls::rustls;
pub use tokio_rustls::rustls::ClientConfig;
pub use tokio_rustls::rustls::RootCertStore;
pub use tokio_rustls::rustls::pki_types::ServerName;

/// The TLS layer of an endpoint: the handshake every dial runs over the
/// transport, before DRPC (and the migration header, if any).
#[derive(Clone)]
pub(crate) struct TlsLayer {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsLayer")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    pub(crate) fn new(server_name: ServerName<'static>, config: Arc<ClientConfig>) -> TlsLayer {
        TlsLayer {
            connector: TlsConnector::from(config),
            server_name,
        }
    }

    /// The name the server's certificate is checked against.
    pub(crate) fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Runs the handshake over `io`, checking the server's certificate
    /// against the server name (also sent as SNI).
    pub(crate) async fn handshake<T>(&self, io: T) -> io::Result<tokio_rustls::client::TlsStream<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        self.connector
            .connect(self.server_name.clone(), io)
            .await
            .map_err(|source| {
                io::Error::new(
                    source.kind(),
                    HandshakeError {
                        server_name: self.server_name.to_str().into_owned(),
                        source,
                    },
                )
            })
    }
}

/// A failed handshake, named as such (its source is rustls' error, or the
/// transport's).
#[derive(Debug)]
struct HandshakeError {
    server_name: String,
    source: io::Error,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {} failed: {}",
            self.server_name, self.source
        )
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
