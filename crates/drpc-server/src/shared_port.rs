//! One TCP port for DRPC, gRPC and HTTP/1 (Go's `drpcmigrate`, and
//! more): [`split`] accepts the connections of a listener, sniffs the
//! first bytes of each ([`drpc_wire::sniff`]) and hands it to one of
//! three routes, streams of connections:
//!
//! * [`SharedPort::drpc`]: DRPC clients, with the reference's migration
//!   header ([`drpc_wire::MIGRATION_HEADER`], `DRPC!!!1`, which Go clients of a
//!   `drpcmigrate` listener send) or without it. The header is left in
//!   the transport's first bytes: the DRPC server skips it there, as it
//!   does on a port of its own (one place for that rule). Each comes
//!   with its [`PeerInfo`], ready for [`Server::serve_incoming`](crate::Server::serve_incoming).
//! * [`SharedPort::http2`]: connections that start with the HTTP/2
//!   preface (gRPC), for an HTTP/2 server such as tonic's
//!   `serve_with_incoming` (wrap the transport in a type of yours that
//!   implements tonic's `Connected`: see `drpc-interop`'s `shared`
//!   module).
//! * [`SharedPort::http1`]: connections that start with an HTTP/1 request
//!   line, for an HTTP/1 server.
//!
//! The HTTP routes yield a [`Rewind`]: the bytes sniffed are read again
//! first, so the server sees the connection from its first byte.
//!
//! Connections that say nothing within [`SniffOptions::timeout`], close
//! before they can be told apart, or start a TLS handshake (no TLS route
//! yet) are closed and logged (at debug level, at info for TLS). Sniffing
//! runs for each connection concurrently, apart from accepting: a silent
//! connection holds up no other. A route whose stream has been dropped
//! closes the connections it would have received; each route's queue is
//! bounded ([`SniffOptions::queue`]), and a connection waits for room in
//! it (a server that does not take its connections holds them up, not
//! the other routes), among at most [`SniffOptions::max_pending`]
//! connections being sniffed or waiting; beyond that, new connections are
//! closed at once.
//!
//! ```no_run
//! use drpc_server::Server;
//! use drpc_server::shared_port::{self, SniffOptions};
//!
//! # async fn run(server: Server) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! let port = shared_port::split(listener, SniffOptions::new())?;
//! // Hand port.http2 to tonic, port.http1 to an HTTP server; or drop
//! // them, which closes their connections.
//! server.serve_incoming(port.drpc).await
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use drpc_mux::PeerInfo;
use drpc_wire::{Foreign, Sniffed, sniff};
use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a connection may take to send enough bytes to be told apart
/// when [`SniffOptions::timeout`] is not set: 10 s.
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// How many accepted connections each route's queue holds by default.
pub const DEFAULT_ROUTE_QUEUE: usize = 128;

/// The most bytes read to tell a connection apart: more than the longest
/// signature, so one read usually does.
const SNIFF_BUFFER: usize = 64;

/// How long accepting pauses after the listener failed (out of file
/// descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The settings of [`split`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SniffOptions {
    /// How long a connection may take, from its accept, to send enough
    /// bytes to be told apart (default [`DEFAULT_SNIFF_TIMEOUT`]). A DRPC
    /// client that dials ahead sends nothing until its first call: keep
    /// this above the time such clients wait.
    pub timeout: Duration,
    /// How many connections each route's stream may hold before they are
    /// taken (default [`DEFAULT_ROUTE_QUEUE`]; at least 1).
    pub queue: usize,
    /// The most connections being sniffed or waiting for room in their
    /// route at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS); at
    /// least 1); a connection accepted beyond that is closed at once.
    pub max_pending: usize,
}

impl Default for SniffOptions {
    fn default() -> SniffOptions {
        SniffOptions {
            timeout: DEFAULT_SNIFF_TIMEOUT,
            queue: DEFAULT_ROUTE_QUEUE,
            max_pending: crate::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl SniffOptions {
    /// The defaults.
    pub fn new() -> SniffOptions {
        SniffOptions::default()
    }

    /// Sets [`SniffOptions::timeout`](#structfield.timeout) (zero: the
    /// default).
    pub fn timeout(mut self, timeout: Duration) -> SniffOptions {
        self.timeout = if timeout.is_zero() {
            DEFAULT_SNIFF_TIMEOUT
        } else {
            timeout
        };
        self
    }

    /// Sets [`SniffOptions::queue`](#structfield.queue).
    pub fn queue(mut self, connections: usize) -> SniffOptions {
        self.queue = connections.max(1);
        self
    }

    /// Sets [`SniffOptions::max_pending`](#structfield.max_pending).
    pub fn max_pending(mut self, connections: usize) -> SniffOptions {
        self.max_pending = connections.max(1);
        self
    }
}

/// The routes of a shared port, what [`split`] returns. Dropping a
/// route's stream closes the connections it would have received; once
/// all three are dropped, the listener is closed.
#[derive(Debug)]
pub struct SharedPort {
    /// DRPC connections (migration header consumed), with their peer:
    /// for [`Server::serve_incoming`](crate::Server::serve_incoming).
    pub drpc: Route<(Rewind<TcpStream>, PeerInfo)>,
    /// Connections that start with the HTTP/2 preface, replayed.
    pub http2: Route<Rewind<TcpStream>>,
    /// Connections that start with an HTTP/1 request line, replayed.
    pub http1: Route<Rewind<TcpStream>>,
    /// The listener's address.
    pub local_addr: SocketAddr,
}

/// The connections of one route of a [`SharedPort`]: a stream that yields
/// `Ok` only (the listener's own errors are logged and retried), and ends
/// once the listener is gone.
pub struct Route<T> {
    rx: mpsc::Receiver<T>,
}

impl<T> fmt::Debug for Route<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<T> Stream for Route<T> {
    type Item = io::Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| next.map(Ok))
    }
}

/// A transport whose first bytes read are `prefix`, then the transport's
/// own; writes go straight to the transport.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T: fmt::Debug> fmt::Debug for Rewind<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewind")
            .field("pending", &(self.prefix.len() - self.pos))
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T> Rewind<T> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Vec<u8>, inner: T) -> Rewind<T> {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The bytes still to be read before the transport's own.
    pub fn pending(&self) -> &[u8] {
        &self.prefix[self.pos..]
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The transport underneath (reading from it skips what is pending).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The bytes still to be read before the transport's own, and the
    /// transport.
    pub fn into_parts(mut self) -> (Vec<u8>, T) {
        self.prefix.drain(..self.pos);
        (self.prefix, self.inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let pending = &this.prefix[this.pos..];
            let n = pending.len().min(buf.remaining());
            buf.put_slice(&pending[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The senders of the routes, cloned into each connection's task.
#[derive(Clone)]
struct Senders {
    drpc: mpsc::Sender<(Rewind<TcpStream>, PeerInfo)>,
    http2: mpsc::Sender<Rewind<TcpStream>>,
    http1: mpsc::Sender<Rewind<TcpStream>>,
}

impl Senders {
    /// Resolves once every route's stream is dropped.
    async fn all_closed(&self) {
        self.drpc.closed().await;
        self.http2.closed().await;
        self.http1.closed().await;
    }
}

/// Accepts the connections of `listener` and routes each by its first
/// bytes (see the [module](self)). Accepting and sniffing run in a task
/// spawned on the current tokio runtime, until every route's stream is
/// dropped; must be called within a runtime.
///
/// Fails only if the listener's address cannot be read.
pub fn split(listener: TcpListener, opts: SniffOptions) -> io::Result<SharedPort> {
    let local_addr = listener.local_addr()?;
    let queue = opts.queue.max(1);
    let (drpc_tx, drpc_rx) = mpsc::channel(queue);
    let (http2_tx, http2_rx) = mpsc::channel(queue);
    let (http1_tx, http1_rx) = mpsc::channel(queue);
    let senders = Senders {
        drpc: drpc_tx,
        http2: http2_tx,
        http1: http1_tx,
    };
    tokio::spawn(accept_loop(listener, opts, senders));
    Ok(SharedPort {
        drpc: Route { rx: drpc_rx },
        http2: Route { rx: http2_rx },
        http1: Route { rx: http1_rx },
        local_addr,
    })
}

/// A connection being sniffed, or waiting for room in its route.
type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn accept_loop(listener: TcpListener, opts: SniffOptions, senders: Senders) {
    let max_pending = opts.max_pending.max(1);
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = senders.all_closed() => break,
            Some(()) = pending.next(), if !pending.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, addr)) => {
                    if pending.len() >= max_pending {
                        tracing::debug!(
                            peer = %addr,
                            max_pending,
                            "connection closed: too many connections being sniffed"
                        );
                        continue;
                    }
                    if let Err(e) = socket.set_nodelay(true) {
                        tracing::debug!(peer = %addr, error = %e, "could not set TCP_NODELAY");
                    }
                    pending.push(Box::pin(route(socket, addr, opts.timeout, senders.clone())));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    tracing::debug!(addr = ?listener.local_addr().ok(), "shared port closed: every route dropped");
}

/// What a connection is, by its first bytes.
enum Protocol {
    Drpc,
    Http2,
    Http1,
}

/// Sniffs one connection, within `timeout`, and hands it to its route.
async fn route(mut socket: TcpStream, addr: SocketAddr, timeout: Duration, senders: Senders) {
    let sniffed = tokio::time::timeout(timeout, read_prefix(&mut socket)).await;
    let (prefix, protocol) = match sniffed {
        Err(_) => {
            tracing::debug!(peer = %addr, ?timeout, "connection closed: nothing to tell it by in time");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "connection closed while sniffed");
            return;
        }
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            tracing::info!(peer = %addr, "connection closed: TLS handshake on a port without TLS");
            return;
        }
    };
    let rejected = match protocol {
        Protocol::Drpc => {
            // The migration header, if any, stays: the connection's reader
            // skips it, as it does on a port of its own.
            let transport = Rewind::new(prefix, socket);
            senders
                .drpc
                .send((transport, PeerInfo::tcp(addr)))
                .await
                .is_err()
        }
        Protocol::Http2 => senders
            .http2
            .send(Rewind::new(prefix, socket))
            .await
            .is_err(),
        Protocol::Http1 => senders
            .http1
            .send(Rewind::new(prefix, socket))
            .await
            .is_err(),
    };
    if rejected {
        tracing::debug!(peer = %addr, "connection closed: its route is not served");
    }
}

/// Reads until the first bytes tell what the connection is: the bytes
/// read and the protocol, or `None` for a TLS handshake.
async fn read_prefix(socket: &mut TcpStream) -> io::Result<Option<(Vec<u8>, Protocol)>> {
    let mut prefix = Vec::with_capacity(SNIFF_BUFFER);
    loop {
        if socket.read_buf(&mut prefix).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before its first bytes told what it is",
            ));
        }
        let protocol = match sniff(&prefix) {
            Sniffed::NeedMore => continue,
            Sniffed::Drpc | Sniffed::MigrationHeader => Protocol::Drpc,
            Sniffed::Foreign(Foreign::Http2) => Protocol::Http2,
            Sniffed::Foreign(Foreign::Tls) => return Ok(None),
            Sniffed::Foreign(_) => Protocol::Http1,
        };
        return Ok(Some((prefix, protocol)));
    }
}
