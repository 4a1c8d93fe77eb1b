//! Where a channel connects, how, and how it waits between attempts.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Channel;
use crate::{Conn, ConnOptions, Error};

/// The default [`Endpoint::connect_timeout`]: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default [`Endpoint::tcp_keepalive`]: 15 s, as Go's `net.Dialer`.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// The default [`Endpoint::idle_timeout`]: 30 min, as gRPC's.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The default [`Endpoint::max_connections`] of a sequential-mode pool.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// A boxed dial: what a custom connector becomes.
type DialFuture = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;
type Dial = dyn Fn(ConnOptions, Upgrade) -> DialFuture + Send + Sync;

/// What a custom connector's dial does to the transport it opened before
/// DRPC runs over it: the TLS handshake, if the endpoint has one.
#[derive(Clone, Default)]
pub(crate) struct Upgrade {
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsLayer>,
}

impl Upgrade {
    /// A connection over `transport`, behind TLS if asked.
    async fn conn<T>(self, transport: T, opts: ConnOptions) -> io::Result<Conn>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls {
            // Pinned: the handshake needs an `Unpin` transport, and a
            // connector's need not be.
            let stream = tls.handshake(Box::pin(transport)).await?;
            return Ok(Conn::new(stream, opts));
        }
        Ok(Conn::new(transport, opts))
    }
}

/// Where to connect.
#[derive(Clone)]
pub(crate) enum Target {
    /// `host:port`, resolved at every dial.
    Tcp(String),
    /// A Unix-domain socket.
    #[cfg(unix)]
    Unix(std::path::PathBuf),
    /// A user's connector (TLS, an in-memory pipe, a test's black hole).
    Custom(Arc<Dial>),
}

/// How long to wait between failed connection attempts: exponential, with
/// jitter (gRPC's connection backoff, with a shorter start and cap).
///
/// The n-th wait (from 0) is `min(initial × multiplierⁿ, max)`, then
/// multiplied by a random factor in `[1 − jitter, 1 + jitter]`. The
/// defaults: 100 ms, ×1.6, at most 30 s, ±20 %; the waits go 0.1, 0.16,
/// 0.26, 0.41, 0.66, 1.05, 1.7, 2.7 s … up to 30 s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait (default 100 ms).
    pub initial: Duration,
    /// The longest wait (default 30 s).
    pub max: Duration,
    /// What each wait is multiplied by for the next (default 1.6; values
    /// below 1 count as 1).
    pub multiplier: f64,
    /// The random spread around each wait, as a fraction (default 0.2,
    /// clamped to `0..=1`).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 1.6,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt + 1`, after `attempt + 1` failures
    /// (jittered).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(attempt as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::try_from_secs_f64(base * factor).unwrap_or(self.max)
    }
}

/// A server to connect to, and how: the address (TCP `host:port`, a Unix
/// socket path, or a connector of your own for proxies and tests), TLS
/// (`Endpoint::tls`, with the `tls` feature) and the settings of the
/// connections a [`Channel`] makes to it.
///
/// ```
/// use std::time::Duration;
/// use drpc_conn::{Backoff, Channel, Endpoint};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel: Channel = Endpoint::tcp("127.0.0.1:4000")
///     .connect_timeout(Duration::from_secs(2))
///     .backoff(Backoff { max: Duration::from_secs(5), ..Backoff::default() })
///     .connect_lazy(); // dials at the first call
/// # }
/// ```
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) target: Target,
    /// What errors name: the address, the path, a connector's name.
    pub(crate) addr: Arc<str>,
    pub(crate) connect_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) tcp_nodelay: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) conn_options: ConnOptions,
    pub(crate) backoff: Backoff,
    pub(crate) max_connections: usize,
    pub(crate) migration_header: bool,
    /// The TLS handshake of every dial, if any.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsLayer>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Endpoint");
        d.field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("idle_timeout", &self.idle_timeout)
            .field("sequential", &self.conn_options.manager.sequential)
            .field("backoff", &self.backoff)
            .field("max_connections", &self.max_connections)
            .field("migration_header", &self.migration_header);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|tls| tls.server_name()));
        d.finish()
    }
}

impl Endpoint {
    fn with_target(target: Target, addr: String) -> Endpoint {
        Endpoint {
            target,
            addr: addr.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            tcp_nodelay: true,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            conn_options: ConnOptions::default(),
            backoff: Backoff::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            migration_header: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A TCP server at `addr`, `host:port` (resolved again at every dial;
    /// each address it resolves to is tried in turn).
    pub fn tcp(addr: impl Into<String>) -> Endpoint {
        let addr = addr.into();
        Endpoint::with_target(Target::Tcp(addr.clone()), addr)
    }

    /// A server on the Unix-domain socket at `path`.
    #[cfg(unix)]
    pub fn unix(path: impl Into<std::path::PathBuf>) -> Endpoint {
        let path = path.into();
        let addr = path.display().to_string();
        Endpoint::with_target(Target::Unix(path), addr)
    }

    /// A server reached through `connector`, which opens a transport each
    /// time it is called (an in-memory pipe, a proxy tunnel, a TLS stream
    /// of your own); `name` is the address errors show. The connect
    /// timeout applies to it, and so does `Endpoint::tls` (the handshake
    /// runs over the transport it opens); the TCP settings and the
    /// migration header do not.
    ///
    /// ```
    /// use drpc_conn::Endpoint;
    ///
    /// let endpoint = Endpoint::from_connector("tls://db:4000", || async {
    ///     let tcp = tokio::net::TcpStream::connect("db:4000").await?;
    ///     // … wrap it in TLS here …
    ///     Ok(tcp)
    /// });
    /// # drop(endpoint);
    /// ```
    pub fn from_connector<F, Fut, T>(name: impl Into<String>, connector: F) -> Endpoint
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let dial = move |opts: ConnOptions, upgrade: Upgrade| -> DialFuture {
            let transport = connector();
            Box::pin(async move { upgrade.conn(transport.await?, opts).await })
        };
        Endpoint::with_target(Target::Custom(Arc::new(dial)), name.into())
    }

    /// The address errors name.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// How long one connection attempt may take, resolution (and the TLS
    /// handshake) included (default [`DEFAULT_CONNECT_TIMEOUT`], 10 s); a
    /// slower attempt fails with [`io::ErrorKind::TimedOut`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// TCP keepalive probes after `idle` without traffic, then every
    /// `idle` (default [`DEFAULT_TCP_KEEPALIVE`], 15 s, as Go); `None`
    /// turns them off. TCP endpoints only.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// TCP_NODELAY (default on). TCP endpoints only.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Closes a connection that carried no call for `timeout` (default
    /// [`DEFAULT_IDLE_TIMEOUT`], 30 min; `None`: never). The channel dials
    /// again at the next call. Checked every quarter of `timeout`, so a
    /// connection closes between 1 and 1.25 × `timeout` after its last
    /// call ended. It also stops redialing an unreachable server that no
    /// call asked for during that time.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The settings of every connection ([`ConnOptions`]: message size,
    /// stream limits, flow control, receive queues, memory budgets, shared
    /// by the channel's connections, compression); with
    /// [`ConnOptions::sequential`] the channel keeps a pool of
    /// connections, one call each (see [`Endpoint::max_connections`]).
    pub fn options(mut self, opts: ConnOptions) -> Self {
        self.conn_options = opts;
        self
    }

    /// The waits between failed connection attempts (default
    /// [`Backoff::default`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// In sequential mode, the most connections open at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`], 16; at least 1): each carries one call
    /// at a time; past that many, calls wait for their turn on the
    /// connection with the fewest calls waiting. Multiplexed channels
    /// hold one connection and ignore this.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sends the migration header `DRPC!!!1` first on every TCP or Unix
    /// connection ([`with_migration_header`](crate::with_migration_header)),
    /// for servers that share their port with other protocols and require
    /// it, as the Go clients of such servers do (default off; a connector
    /// of your own wraps its transport itself). With `Endpoint::tls` it is
    /// sent inside TLS, after the handshake, as DRPC's first bytes.
    pub fn migration_header(mut self, send: bool) -> Self {
        self.migration_header = send;
        self
    }

    /// Dials DRPC over TLS (the `tls` feature): every connection runs a
    /// TLS handshake with `config` over the transport first, checking the
    /// server's certificate against `server_name` (also sent as SNI).
    ///
    /// Every other setting applies as before: a TCP endpoint resolves its
    /// address at every dial, with keepalive and TCP_NODELAY as set; the
    /// connect timeout bounds the handshake too; the migration header, if
    /// set, is sent inside TLS, after the handshake. A Unix endpoint runs
    /// TLS over the socket; a [custom connector](Endpoint::from_connector),
    /// over the transport it opens.
    ///
    /// A failed handshake (a certificate not valid for `server_name`, not
    /// signed by a root of `config`, a server that refuses the client's
    /// certificate) is a failed connection attempt:
    /// [`Endpoint::connect`] returns it as [`Error::Connect`], and a
    /// channel's calls fail fast with [`Error::Unavailable`] while it
    /// retries with backoff. Both name the address and the handshake's
    /// error.
    ///
    /// For mutual TLS, build `config` with a client certificate
    /// (`with_client_auth_cert`). [`crate::tls`] re-exports rustls.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use drpc_conn::Endpoint;
    /// use drpc_conn::tls::{ClientConfig, RootCertStore, ServerName};
    ///
    /// # async fn run(roots: RootCertStore) -> anyhow::Result<()> {
    /// let config = ClientConfig::builder()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let channel = Endpoint::tcp("db.example.com:4443")
    ///     .tls(ServerName::try_from("db.example.com")?, Arc::new(config))
    ///     .connect()
    ///     .await?;
    /// # drop(channel); Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        server_name: crate::tls::ServerName<'static>,
        config: Arc<crate::tls::ClientConfig>,
    ) -> Self {
        self.tls = Some(crate::tls::TlsLayer::new(server_name, config));
        self
    }

    /// A channel to this endpoint that dials at its first call.
    pub fn connect_lazy(self) -> Channel {
        Channel::new(self)
    }

    /// A channel to this endpoint, once a first connection is made (the
    /// first attempt's error otherwise, [`Error::Connect`]).
    pub async fn connect(self) -> Result<Channel, Error> {
        let addr = self.addr.clone();
        let conn = self.dial().await.map_err(|e| Error::connect(&*addr, e))?;
        Ok(Channel::with_conn(self, conn))
    }

    /// A connection over `socket` (TCP or Unix), behind TLS, then the
    /// migration header, if asked.
    async fn conn<T>(&self, socket: T) -> io::Result<Conn>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tls.handshake(socket).await?;
            return Ok(self.plain_conn(stream));
        }
        Ok(self.plain_conn(socket))
    }

    /// A connection over `socket`, behind the migration header if asked.
    fn plain_conn<T>(&self, socket: T) -> Conn
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.migration_header {
            Conn::new(
                crate::with_migration_header(socket),
                self.conn_options.clone(),
            )
        } else {
            Conn::new(socket, self.conn_options.clone())
        }
    }

    /// The upgrade of a custom connector's transports.
    fn upgrade(&self) -> Upgrade {
        Upgrade {
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        }
    }

    /// One connection attempt, bounded by the connect timeout.
    pub(crate) async fn dial(&self) -> io::Result<Conn> {
        let attempt = async {
            match &self.target {
                Target::Tcp(addr) => {
                    let socket = dial_tcp(addr, self.tcp_keepalive, self.tcp_nodelay).await?;
                    self.conn(socket).await
                }
                #[cfg(unix)]
                Target::Unix(path) => {
                    let socket = tokio::net::UnixStream::connect(path).await?;
                    self.conn(socket).await
                }
                Target::Custom(dial) => dial(self.conn_options.clone(), self.upgrade()).await,
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {:?}", self.connect_timeout),
            )),
        }
    }
}

impl From<&str> for Endpoint {
    /// A TCP endpoint ([`Endpoint::tcp`]).
    fn from(addr: &str) -> Self {
        Endpoint::tcp(addr)
    }
}

impl From<String> for Endpoint {
    /// A TCP endpoint ([`Endpoint::tcp`]).
    fn from(addr: String) -> Self {
        Endpoint::tcp(addr)
    }
}

/// Resolves `addr` and connects to each address in turn; the last error if
/// none answers.
async fn dial_tcp(
    addr: &str,
    keepalive: Option<Duration>,
    nodelay: bool,
) -> io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(idle) = keepalive {
            let params = socket2::TcpKeepalive::new().with_time(idle);
            #[cfg(any(target_os = "linux", target_os = "macos", windows))]
            let params = params.with_interval(idle);
            socket2::SockRef::from(&socket).set_tcp_keepalive(&params)?;
        }
        match socket.connect(sa).await {
            Ok(stream) => {
                stream.set_nodelay(nodelay)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolved to no address"),
        )
    }))
}
