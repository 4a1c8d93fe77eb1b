//! DRPC over TLS, with rustls (the `tls` feature): [`Server::serve_tls`],
//! the peer's certificates in the request context ([`PeerCertificates`]),
//! the accepting stream it is made of ([`TlsIncoming`]), and the client
//! side ([`connector`]) for `drpc-conn`'s `Endpoint::from_connector`.
//!
//! Mutual TLS is a matter of the [`rustls::ServerConfig`]: build it with a
//! client certificate verifier (rustls' `WebPkiClientVerifier`) and the
//! server refuses clients without a certificate its roots vouch for, in
//! the handshake; handlers read the chain the client presented:
//!
//! ```
//! use drpc_mux::RequestContext;
//! use drpc_server::PeerCertificates;
//!
//! fn client_certificate_len(ctx: &RequestContext) -> Option<usize> {
//!     let chain = ctx.peer().extensions().get::<PeerCertificates>()?;
//!     chain.end_entity().map(|cert| cert.len())
//! }
//! ```
//!
//! rustls is re-exported as [`rustls`], so that building the
//! configurations needs no other dependency. The `tls` feature brings no
//! crypto provider: a build that has none turns on `tls-ring` (rustls'
//! `ring` provider, which builds with a C compiler alone) or rustls'
//! `aws_lc_rs` feature. A build with both providers must name one, with
//! `ServerConfig::builder_with_provider` (or install one as the process
//! default).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use drpc_mux::PeerInfo;
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::Server;

pub use tokio_rustls::rustls;

/// A TLS connection accepted by the server: what [`TlsIncoming`] yields.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A TLS connection dialed by a client: what [`connector`] opens.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// How long a TLS handshake may take when
/// [`ServerOptions::handshake_timeout`](crate::ServerOptions::handshake_timeout)
/// is not set: 10 s.
///
/// Unlike the DRPC first-frame timeout, which is off by default because
/// DRPC clients may dial ahead and say nothing, a TLS client sends its
/// ClientHello as soon as it connects and completes the handshake at once:
/// a limit is always safe, and frees the slots of peers that connect and
/// say nothing (or say it slowly).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections one poll of [`TlsIncoming`] accepts before it
/// turns to the handshakes in progress: a flood of connections cannot
/// starve them.
const ACCEPT_BURST: usize = 32;

/// The certificate chain a TLS peer presented, end-entity certificate
/// first, as rustls received it (after the server's verifier, if any,
/// accepted it).
///
/// [`Server::serve_tls`] and [`TlsIncoming`] put it in the peer's
/// [`Extensions`](crate::Extensions) when the client presented
/// certificates (with mutual TLS), and leave it out otherwise. Handlers
/// read it with
/// `ctx.peer().extensions().get::<PeerCertificates>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificates(pub Vec<CertificateDer<'static>>);

impl PeerCertificates {
    /// The peer's own certificate, the first of the chain (DER).
    pub fn end_entity(&self) -> Option<&CertificateDer<'static>> {
        self.0.first()
    }

    /// The whole chain, end-entity certificate first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.0
    }
}

impl Server {
    /// Serves DRPC over TLS on a TCP listener until [`Server::shutdown`]
    /// (the `tls` feature): [`Server::serve_incoming`] over a
    /// [`TlsIncoming`], so that every limit of
    /// [`ServerOptions`](crate::ServerOptions) applies to the TLS
    /// connections (`max_connections` among them).
    ///
    /// * Handshakes run concurrently, apart from accepting: a slow one
    ///   holds up no other client. At most `max_connections` run at once;
    ///   a connection beyond that is closed at once.
    /// * A handshake must finish within
    ///   [`ServerOptions::handshake_timeout`](crate::ServerOptions::handshake_timeout)
    ///   if it is set, else [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`] (10 s). Once
    ///   it has, a handshake timeout that is set also limits the wait for
    ///   the first DRPC frame, as for plain TCP.
    /// * A handshake that fails or times out (a client that speaks
    ///   plain TCP, or has no certificate the server's verifier accepts)
    ///   closes that connection and is logged at debug level; the server
    ///   goes on.
    /// * Handlers see the client's TCP address
    ///   ([`RequestContext::peer_addr`](drpc_mux::RequestContext::peer_addr))
    ///   and, when it presented certificates, their chain
    ///   ([`PeerCertificates`], in the peer's extensions).
    ///
    /// Mutual TLS is set in `config`: a `ServerConfig` built with
    /// `with_client_cert_verifier(WebPkiClientVerifier::builder(roots).build()?)`
    /// refuses clients without a valid certificate during the handshake.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use drpc_server::Server;
    /// use drpc_server::tls::rustls;
    /// use drpc_server::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    ///
    /// # async fn run(server: Server, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<()> {
    /// let config = rustls::ServerConfig::builder()
    ///     .with_no_client_auth()
    ///     .with_single_cert(chain, key)?;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:4443").await?;
    /// server.serve_tls(listener, Arc::new(config)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        config: Arc<ServerConfig>,
    ) -> io::Result<()> {
        let opts = self.options();
        let incoming = TlsIncoming::new(listener, config)
            .handshake_timeout(
                opts.handshake_timeout
                    .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            )
            .max_handshakes(opts.max_connections);
        self.serve_incoming(incoming).await
    }
}

/// A handshake in progress: the connection and its peer once done, or
/// nothing if it failed.
type Handshake = Pin<Box<dyn Future<Output = Option<(ServerTlsStream, PeerInfo)>> + Send>>;

/// The TLS connections of a TCP listener, each with its [`PeerInfo`]: a
/// stream for [`Server::serve_incoming`], which [`Server::serve_tls`]
/// serves. Sets TCP_NODELAY on every connection and runs the handshakes
/// concurrently, each within the handshake timeout; yields the
/// connections whose handshake succeeded, with the client's TCP address
/// and, if it presented any, its [`PeerCertificates`]; yields errors of
/// the listener only (a failed handshake is logged at debug level and
/// left out).
pub struct TlsIncoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    max_handshakes: usize,
    handshakes: FuturesUnordered<Handshake>,
}

impl fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIncoming")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

impl TlsIncoming {
    /// The TLS connections of `listener`, with `config`; a handshake
    /// timeout of [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`], and at most
    /// [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS)
    /// handshakes at once.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> TlsIncoming {
        TlsIncoming {
            listener,
            acceptor: TlsAcceptor::from(config),
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_handshakes: crate::DEFAULT_MAX_CONNECTIONS,
            handshakes: FuturesUnordered::new(),
        }
    }

    /// How long a handshake may take, from the connection's accept
    /// (zero: [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsIncoming {
        self.handshake_timeout = if timeout.is_zero() {
            DEFAULT_TLS_HANDSHAKE_TIMEOUT
        } else {
            timeout
        };
        self
    }

    /// How many handshakes may run at once (at least 1); a connection
    /// accepted beyond that is closed at once.
    pub fn max_handshakes(mut self, max: usize) -> TlsIncoming {
        self.max_handshakes = max.max(1);
        self
    }

    /// The listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts the handshake of an accepted connection.
    fn start(&mut self, socket: TcpStream, addr: SocketAddr) {
        if self.handshakes.len() >= self.max_handshakes {
            tracing::debug!(
                peer = %addr,
                max_handshakes = self.max_handshakes,
                "connection closed: too many TLS handshakes in progress"
            );
            return;
        }
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(peer = %addr, error = %e, "could not set TCP_NODELAY");
        }
        let accept = self.acceptor.accept(socket);
        let timeout = self.handshake_timeout;
        self.handshakes.push(Box::pin(async move {
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(tls)) => {
                    let mut peer = PeerInfo::tcp(addr);
                    if let Some(chain) = tls.get_ref().1.peer_certificates()
                        && !chain.is_empty()
                    {
                        peer.extensions_mut()
                            .insert(PeerCertificates(chain.to_vec()));
                    }
                    Some((tls, peer))
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, timeout = ?timeout, "TLS handshake timed out");
                    None
                }
            }
        }));
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<(ServerTlsStream, PeerInfo)>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Accept what is waiting, a burst at most.
        let mut accepted = 0;
        let more_waiting = loop {
            if accepted == ACCEPT_BURST {
                break true;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((socket, addr))) => {
                    accepted += 1;
                    this.start(socket, addr);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break false,
            }
        };
        // Then hand over the first handshake done.
        loop {
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(connection))) => return Poll::Ready(Some(Ok(connection))),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if more_waiting {
            // The listener registered no wake-up: come back for the rest.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// A boxed TLS dial, what [`connector`]'s closure returns.
pub type TlsConnect = Pin<Box<dyn Future<Output = io::Result<ClientTlsStream>> + Send>>;

/// A connector for `drpc-conn`'s `Endpoint::from_connector`: each call
/// dials `addr` (`host:port`, resolved at every dial, each address tried
/// in turn), sets TCP_NODELAY and runs the TLS handshake with `config`,
/// checking the server's certificate against `server_name` (also sent as
/// SNI).
///
/// For mutual TLS, build `config` with a client certificate
/// (`with_client_auth_cert`).
///
/// ```no_run
/// use std::sync::Arc;
/// use drpc_conn::Endpoint;
/// use drpc_server::tls::{self, rustls};
/// use drpc_server::tls::rustls::pki_types::ServerName;
///
/// # fn run(roots: rustls::RootCertStore) -> anyhow::Result<()> {
/// let config = rustls::ClientConfig::builder()
///     .with_root_certificates(roots)
///     .with_no_client_auth();
/// let server_name = ServerName::try_from("db.example.com")?;
/// let endpoint = Endpoint::from_connector(
///     "tls://db.example.com:4443",
///     tls::connector("db.example.com:4443", server_name, Arc::new(config)),
/// );
/// # drop(endpoint); Ok(()) }
/// ```
///
/// **Prefer `drpc-conn`'s own TLS** (its `tls` or `tls-ring` feature):
/// `Endpoint::tcp(addr).tls(server_name, config)` dials the same way and
/// keeps the endpoint's other settings (connect timeout over the
/// handshake, TCP keepalive, the migration header, sent inside TLS), and
/// `Conn::connect_tls` dials a single connection. This connector stays
/// for code that uses it; it sets neither keepalive nor the migration
/// header.
pub fn connector(
    addr: impl Into<String>,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> impl Fn() -> TlsConnect + Send + Sync + 'static {
    let addr: Arc<str> = addr.into().into();
    let connector = TlsConnector::from(config);
    move || -> TlsConnect {
        let (addr, connector, server_name) = (addr.clone(), connector.clone(), server_name.clone());
        Box::pin(async move {
            let socket = TcpStream::connect(&*addr).await?;
            socket.set_nodelay(true)?;
            connector.connect(server_name, socket).await
        })
    }
}
