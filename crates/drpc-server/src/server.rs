//! The server: listeners, connections, RPC tasks, connection hygiene,
//! shutdown.

use std::fmt;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use drpc_manager::{Incoming, Manager, ManagerOptions};
use drpc_mux::{ConnectionInfo, Handler, PeerInfo, RequestContext, ServerCall};
use drpc_stream::{ConnectionError, FlowControl, MemoryBudget};
use drpc_wire::{Code, CodedError, TIMEOUT_METADATA_KEY, parse_timeout};
use futures_util::{FutureExt, Stream, StreamExt};
use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing::field::Empty;

use crate::observe::{self, MethodMetrics};

/// The default maximum number of concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The default [`ServerOptions::idle_timeout`]: one hour.
///
/// Longer than the idle timeout of `drpc-conn`'s `Channel` (30 min), so
/// that clients of this implementation close their idle connections
/// first: DRPC has no goaway message, so a call a client sends just as
/// the server closes the connection fails, and a channel whose connection
/// the server closed dials again at once. The server's timeout is the
/// backstop for peers that vanished without closing (a crashed host, a
/// dropped NAT entry) or forgot their connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A first-byte limit for servers whose clients never dial ahead (see
/// [`ServerOptions::handshake_timeout`], off by default): 10 s.
pub const SUGGESTED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ids of connections in their spans (`conn_id`).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// How long a closing connection waits for its last frames to be written.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(1);

/// The pause after an accept error that is about resources, not the
/// listener (too many open files and the like), as Go's server does.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// Server settings, with documented defaults.
///
/// Set them with the builder methods, which need no other crate:
///
/// ```
/// use std::time::Duration;
/// use drpc_server::{FlowControl, ServerOptions};
///
/// let opts = ServerOptions::new()
///     .max_message_size(16 << 20)
///     .max_concurrent_streams(256)
///     .flow_control(FlowControl::auto())
///     .max_connection_memory(64 << 20)
///     .shared_memory(Some(1 << 30))
///     .max_connections(10_000)
///     .idle_timeout(Some(Duration::from_secs(600)))
///     .handshake_timeout(Some(Duration::from_secs(5)));
/// assert_eq!(opts.manager.stream.max_packet_size, 16 << 20);
/// ```
///
/// The fields stay public for what the methods do not cover
/// ([`ManagerOptions`] is re-exported by this crate).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Settings of every connection: maximum message size (4 MiB),
    /// maximum concurrent streams per connection (4096), flow control,
    /// memory budgets, queue and writer bounds.
    pub manager: ManagerOptions,
    /// The most connections served at once (default 4096). A connection
    /// accepted beyond it is closed at once, before anything is read from
    /// it: its client sees the connection end (end of file or reset) at
    /// its first call, and a healing client dials again with backoff.
    /// Connections given to [`Server::serve_connection`] do not count.
    pub max_connections: usize,
    /// Whether an RPC is first run on its connection's reader task, and
    /// moved to a task of its own only if it does not finish in that first
    /// step (default `false`: every RPC runs in a task of its own from the
    /// start).
    ///
    /// The trade-off. Most unary handlers finish without waiting on
    /// anything: run in place, they cost no task, no wake-up and no
    /// hand-over to another thread, which on a busy connection is much of
    /// the server's cost. But while a first step runs, the connection
    /// reads nothing: a handler that blocks its thread in its first step
    /// (synchronous I/O, a lock held elsewhere, heavy work) holds up every
    /// other call of its connection for as long as it blocks. With a task
    /// per RPC, on a multi-thread runtime, another worker goes on reading
    /// and serving: such a handler delays the others by no more than the
    /// runtime's own scheduling, plus up to 10 ms for the server to notice
    /// the stuck worker and wake an idle one, if none is awake to wait for
    /// I/O. That is why it is the default. Turn this on only for handlers
    /// known never to block.
    ///
    /// When on, steps over [`INLINE_STEP_LIMIT`] turn it off for the rest
    /// of that connection: one step over [`INLINE_STEP_HARD_LIMIT`], or
    /// slow steps close together (three in a row, or more often than one
    /// in sixteen). A lone slow step is forgiven, because on a busy or
    /// virtual machine a thread is sometimes descheduled for a millisecond
    /// or two in the middle of a quick step. That bounds how often a slow
    /// handler stalls the connection, not for how long: the step that
    /// trips the gate has already blocked the reader.
    pub inline_first_poll: bool,
    /// How long a connection may go with no stream open and no byte
    /// received before the server closes it (default
    /// [`DEFAULT_IDLE_TIMEOUT`], one hour, and why; `None` or zero:
    /// never). A connection with a call in progress is never idle, however
    /// quiet the call. Checked every quarter of the timeout: the
    /// connection closes between one and one and a half timeouts after it
    /// went quiet.
    pub idle_timeout: Option<Duration>,
    /// How long a new connection may take to send its first byte before
    /// the server closes it (default `None`: no limit beyond the idle
    /// timeout; [`SUGGESTED_HANDSHAKE_TIMEOUT`] is a value to start from).
    /// It frees the slots of peers that connect and say nothing sooner than
    /// the idle timeout does.
    ///
    /// Off by default because a DRPC client sends nothing before its first
    /// call: clients that dial ahead (connection pools such as
    /// CockroachDB's, a Go `drpcconn` kept for later, `drpc-conn`'s
    /// `Endpoint::connect`) would find their connection closed at their
    /// first call. Set it when every client calls as soon as it connects.
    pub handshake_timeout: Option<Duration>,
}

/// How long an RPC's first step on the reader task may take without
/// counting against the connection, when
/// [`ServerOptions::inline_first_poll`] is on.
pub const INLINE_STEP_LIMIT: Duration = Duration::from_millis(1);

/// A first step at least this long gives every later RPC of the connection
/// its own task at once, when [`ServerOptions::inline_first_poll`] is on.
pub const INLINE_STEP_HARD_LIMIT: Duration = Duration::from_millis(20);

/// Whether a connection still runs RPCs' first steps on its reader task: a
/// leaky bucket of slow steps.
#[derive(Debug)]
struct InlineGate {
    enabled: bool,
    /// Raised by each slow step, lowered by one per quick step.
    debt: u32,
}

impl InlineGate {
    /// What one step over [`INLINE_STEP_LIMIT`] adds to the debt.
    const SLOW_STEP: u32 = 16;
    /// The debt at which inlining stops: three slow steps in a row.
    const MAX_DEBT: u32 = 3 * Self::SLOW_STEP;

    fn new(enabled: bool) -> InlineGate {
        InlineGate { enabled, debt: 0 }
    }

    fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Records how long a first step took.
    fn record(&mut self, took: Duration) {
        if took >= INLINE_STEP_HARD_LIMIT {
            self.enabled = false;
        } else if took > INLINE_STEP_LIMIT {
            self.debt += Self::SLOW_STEP;
            if self.debt >= Self::MAX_DEBT {
                self.enabled = false;
            }
        } else {
            self.debt = self.debt.saturating_sub(1);
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            manager: ManagerOptions::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            inline_first_poll: false,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            handshake_timeout: None,
        }
    }
}

impl ServerOptions {
    /// The defaults, as [`ServerOptions::default`], to change with the
    /// methods below.
    pub fn new() -> ServerOptions {
        ServerOptions::default()
    }

    /// The most connections served at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]; at least 1); see
    /// [`ServerOptions::max_connections`](#structfield.max_connections).
    pub fn max_connections(mut self, max: usize) -> ServerOptions {
        self.max_connections = max.max(1);
        self
    }

    /// Closes connections without a stream and without a byte received
    /// for `timeout` (default [`DEFAULT_IDLE_TIMEOUT`]; `None` or zero:
    /// never); see [`ServerOptions::idle_timeout`](#structfield.idle_timeout).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> ServerOptions {
        self.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Closes new connections that send nothing within `timeout` (default
    /// `None`; `None` or zero: no limit); see
    /// [`ServerOptions::handshake_timeout`](#structfield.handshake_timeout).
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> ServerOptions {
        self.handshake_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Runs RPCs' first steps on their connection's reader task (default
    /// off); see [`ServerOptions::inline_first_poll`](#structfield.inline_first_poll).
    pub fn inline_first_poll(mut self, on: bool) -> ServerOptions {
        self.inline_first_poll = on;
        self
    }

    /// The largest message accepted from a client and sent to one
    /// (default [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE),
    /// 4 MiB, as Go's). A larger message fails its call alone, with
    /// ResourceExhausted (a single frame over it, possible only with a
    /// limit under the 64 KiB frame size, ends the connection). Clients
    /// that exchange larger messages raise their own limit too.
    pub fn max_message_size(mut self, bytes: usize) -> ServerOptions {
        self.manager.stream.max_packet_size = bytes;
        self
    }

    /// The most calls open at once on one connection (default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`](crate::DEFAULT_MAX_CONCURRENT_STREAMS),
    /// 4096). A client's calls beyond it are refused one by one with an
    /// Error (ResourceExhausted); the connection goes on.
    pub fn max_concurrent_streams(mut self, max: usize) -> ServerOptions {
        self.manager.max_concurrent_streams = max;
        self
    }

    /// Flow control of every connection (default [`FlowControl::auto`]:
    /// with the clients that offer it, none with the others;
    /// [`FlowControl::fork`] for peers of CockroachDB's fork with flow
    /// control on, [`FlowControl::off`] for none).
    pub fn flow_control(mut self, flow_control: FlowControl) -> ServerOptions {
        self.manager.stream.flow_control = flow_control;
        self
    }

    /// The memory one connection may hold for its client (default
    /// [`DEFAULT_CONNECTION_MEMORY`](crate::DEFAULT_CONNECTION_MEMORY),
    /// 32 MiB): messages received and not yet taken by handlers, and
    /// bytes waiting to be written. Above it the connection stops reading
    /// until handlers or the client catch up: TCP backpressure.
    pub fn max_connection_memory(mut self, bytes: usize) -> ServerOptions {
        self.manager.max_connection_memory = bytes;
        self
    }

    /// The memory all the server's connections may hold together (default
    /// [`DEFAULT_SHARED_MEMORY`](crate::DEFAULT_SHARED_MEMORY), 256 MiB;
    /// `None`: no limit beyond each connection's). A new budget: servers
    /// given clones of these options share it.
    pub fn shared_memory(mut self, bytes: Option<usize>) -> ServerOptions {
        self.manager.shared_memory = bytes.map(|n| Arc::new(MemoryBudget::new(n, None)));
        self
    }

    /// The bytes waiting to be written that all the server's connections
    /// may hold together (default
    /// [`DEFAULT_SHARED_WRITE_MEMORY`](crate::DEFAULT_SHARED_WRITE_MEMORY),
    /// 256 MiB; `None`: no limit beyond each connection's writer bound):
    /// however many clients stop reading, what waits for them stays
    /// bounded. A new budget, shared like [`ServerOptions::shared_memory`].
    pub fn shared_write_memory(mut self, bytes: Option<usize>) -> ServerOptions {
        self.manager.shared_write_memory = bytes.map(|n| Arc::new(MemoryBudget::new(n, None)));
        self
    }

    /// The largest metadata a call may carry (default
    /// [`DEFAULT_MAX_METADATA_SIZE`](crate::DEFAULT_MAX_METADATA_SIZE),
    /// 256 KiB); larger metadata ends the connection.
    pub fn max_metadata_size(mut self, bytes: usize) -> ServerOptions {
        self.manager.max_metadata_size = bytes;
        self
    }

    /// How many messages and bytes may wait for a handler on a stream
    /// without flow control (default 256 messages, 8 MiB). Past either, a
    /// stream that shares its connection fails alone (ResourceExhausted);
    /// the connection's only stream makes the connection stop reading
    /// instead.
    pub fn recv_queue(mut self, messages: usize, bytes: usize) -> ServerOptions {
        self.manager.stream.recv_queue_messages = messages;
        self.manager.stream.recv_queue_bytes = bytes;
        self
    }
}

/// A DRPC server. Cheap to clone: clones share the handler, the limits and
/// the shutdown state.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    handler: Arc<dyn Handler>,
    opts: ServerOptions,
    connections: Arc<Semaphore>,
    /// Cancelled by `shutdown`: stop accepting connections and RPCs, and
    /// tell the running handlers.
    stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: cancel in-flight RPCs.
    cancel_rpcs: CancellationToken,
    /// Every connection task.
    tracker: TaskTracker,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("opts", &self.inner.opts)
            .field("connections", &self.inner.tracker.len())
            .field("shutting_down", &self.inner.stop_accepting.is_cancelled())
            .finish()
    }
}

impl Server {
    /// A server with default options.
    pub fn new(handler: impl Handler) -> Server {
        Server::with_options(handler, ServerOptions::default())
    }

    /// A server with `opts`.
    pub fn with_options(handler: impl Handler, mut opts: ServerOptions) -> Server {
        opts.max_connections = opts.max_connections.max(1);
        opts.idle_timeout = opts.idle_timeout.filter(|t| !t.is_zero());
        opts.handshake_timeout = opts.handshake_timeout.filter(|t| !t.is_zero());
        Server {
            inner: Arc::new(Inner {
                handler: Arc::new(handler),
                connections: Arc::new(Semaphore::new(opts.max_connections)),
                opts,
                stop_accepting: CancellationToken::new(),
                cancel_rpcs: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The settings in force.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.opts
    }

    /// Serves a TCP listener until [`Server::shutdown`]; sets TCP_NODELAY
    /// on every connection, and gives handlers the client's address
    /// ([`RequestContext::peer_addr`]). Returns once every connection has
    /// ended, or with the listener's error. See
    /// [`Server::serve_incoming`].
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener) -> io::Result<()> {
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(socket, addr)| {
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!(peer = %addr, error = %e, "could not set TCP_NODELAY");
                }
                (socket, PeerInfo::tcp(addr))
            });
            Some((accepted, listener))
        });
        self.serve_incoming(incoming).await
    }

    /// Serves a Unix-domain listener until [`Server::shutdown`]; gives
    /// handlers the client's path, if it is bound to one, and its
    /// [`UnixCredentials`](crate::UnixCredentials) (in
    /// [`PeerInfo::extensions`]) where the platform has them. See
    /// [`Server::serve_incoming`].
    #[cfg(unix)]
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> io::Result<()> {
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(socket, addr)| {
                let mut peer = PeerInfo::unix(addr.as_pathname().map(|p| p.to_path_buf()));
                match socket.peer_cred() {
                    Ok(cred) => peer.extensions_mut().insert(crate::UnixCredentials {
                        uid: cred.uid(),
                        gid: cred.gid(),
                        pid: cred.pid(),
                    }),
                    Err(e) => tracing::debug!(error = %e, "no credentials for a unix peer"),
                }
                (socket, peer)
            });
            Some((accepted, listener))
        });
        self.serve_incoming(incoming).await
    }

    /// Serves the transports `incoming` yields, each with what is known of
    /// its peer, until [`Server::shutdown`] or the end of `incoming`: the
    /// way to serve any listener (`serve_tcp` and `serve_unix` are this).
    /// Returns once every connection has ended, or with the first error
    /// of `incoming` that is not about resources (too many open files and
    /// the like, after which it pauses and goes on).
    ///
    /// Every limit of [`ServerOptions`] applies: a transport beyond
    /// `max_connections` is closed at once, a connection that sends
    /// nothing within the handshake timeout or goes idle is closed, and
    /// shutdown drops `incoming` at once (a listener inside it stops
    /// accepting), before it waits for the connections.
    ///
    /// `incoming` should yield errors only for the listener: a failure of
    /// one connection (a TLS handshake, say) should be left out of the
    /// stream, not yielded. Each transport is served in a task of its own.
    ///
    /// ```no_run
    /// use drpc_server::{PeerInfo, Server};
    /// use futures_util::stream;
    ///
    /// # async fn run(server: Server) -> std::io::Result<()> {
    /// // In-memory pipes, say; a transport layer would add what it knows
    /// // of the peer with `PeerInfo::with_extension`.
    /// let (_client, served) = tokio::io::duplex(64 * 1024);
    /// let incoming = stream::iter([Ok((served, PeerInfo::unknown()))]);
    /// server.serve_incoming(incoming).await
    /// # }
    /// ```
    pub async fn serve_incoming<S, T>(&self, incoming: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<(T, PeerInfo)>>,
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let inner = &self.inner;
        let mut incoming = Box::pin(incoming);
        let result = loop {
            let next = tokio::select! {
                biased;
                _ = inner.stop_accepting.cancelled() => break Ok(()),
                next = incoming.next() => next,
            };
            match next {
                None => break Ok(()),
                Some(Ok((transport, peer))) => self.admit(transport, peer),
                Some(Err(e)) if is_resource_error(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::select! {
                        _ = inner.stop_accepting.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                Some(Err(e)) => break Err(e),
            }
        };
        // Closes the listener at once: during the grace period, clients
        // are refused instead of left in its backlog.
        drop(incoming);
        inner.tracker.close();
        inner.tracker.wait().await;
        result
    }

    /// Serves an accepted transport in a task of its own, or closes it at
    /// once when the server is full or shutting down.
    fn admit<T>(&self, transport: T, peer: PeerInfo)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let inner = &self.inner;
        if inner.stop_accepting.is_cancelled() {
            tracing::info!(peer = %peer.addr(), reason = "shutting_down", "connection refused");
            observe::refused("shutting_down");
            return;
        }
        let Ok(permit) = inner.connections.clone().try_acquire_owned() else {
            tracing::info!(
                peer = %peer.addr(),
                reason = "max_connections",
                max_connections = inner.opts.max_connections,
                "connection refused"
            );
            observe::refused("max_connections");
            return;
        };
        let server = self.clone();
        inner.tracker.spawn(async move {
            server.connection(transport, peer).await;
            drop(permit);
        });
    }

    /// Serves one transport until its connection ends (the peer leaves, a
    /// protocol error, the idle or handshake timeout, or shutdown); returns
    /// why it ended (for the server's own timeouts and for shutdown, as
    /// the manager saw it once closed: [`ConnectionError::Closed`] unless
    /// the peer left first). Handlers see an unknown peer; the
    /// connection does not count against `max_connections`.
    pub async fn serve_connection<T>(&self, transport: T) -> ConnectionError
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.serve_connection_with_peer(transport, PeerInfo::unknown())
            .await
    }

    /// As [`Server::serve_connection`], with handlers seeing `peer`.
    pub async fn serve_connection_with_peer<T>(
        &self,
        transport: T,
        peer: PeerInfo,
    ) -> ConnectionError
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        // Tracked, so that `shutdown` waits for (and after the grace
        // period cancels) connections served directly as well.
        self.inner
            .tracker
            .track_future(self.connection(transport, peer))
            .await
    }

    /// Serves one transport in the connection's span.
    async fn connection<T>(&self, transport: T, peer: PeerInfo) -> ConnectionError
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let conn_id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "drpc.server.connection",
            conn_id,
            peer = %peer.addr(),
        );
        self.serve_transport(transport, peer, span.clone())
            .instrument(span)
            .await
    }

    async fn serve_transport<T>(
        &self,
        transport: T,
        peer: PeerInfo,
        conn_span: tracing::Span,
    ) -> ConnectionError
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let inner = &self.inner;
        let _open = observe::OpenConnection::new();
        tracing::info!("connection opened");
        let heard = Arc::new(AtomicBool::new(false));
        let (received, sent) = observe::byte_counters();
        let transport = Heard {
            io: Box::pin(transport),
            heard: heard.clone(),
            received,
            sent,
        };
        // What every call of the connection shares, behind one reference
        // count: cloning the shutdown token for each would take its lock.
        let connection =
            Arc::new(ConnectionInfo::new(peer).with_shutdown(inner.stop_accepting.clone()));
        let rpcs = TaskTracker::new();
        // Each stream is served by a task spawned right on the connection's
        // reader task (or, opted in, first polled there); once shutdown has
        // begun, new streams are refused. Spawned from a worker thread, the
        // task goes to that worker's LIFO slot: it runs there as soon as
        // the reader yields, with its request still warm in the cache, and
        // the next spawn moves it to the run queue, where an idle worker
        // can steal it.
        let on_incoming = {
            // The server's state goes to each RPC as one reference count:
            // cloning a token each time would take its lock.
            let (rpcs, server, connection) = (rpcs.clone(), inner.clone(), connection.clone());
            let mut inline = InlineGate::new(inner.opts.inline_first_poll);
            let mut methods = observe::Methods::new(&inner.opts.manager);
            move |incoming: Incoming| {
                if server.stop_accepting.is_cancelled() {
                    refuse(incoming, &conn_span);
                    return;
                }
                let metrics = methods.get(&*server.handler, &incoming.rpc);
                // The explicit parent: the reader task runs in the
                // manager's span, which is a DEBUG one.
                let span = tracing::info_span!(
                    parent: &conn_span,
                    "drpc.server.call",
                    method = %observe::BoundedPath(&incoming.rpc),
                    peer = %connection.peer().addr(),
                    stream_id = incoming.stream.id(),
                    code = Empty,
                    duration_ms = Empty,
                );
                let rpc = serve_rpc(
                    server.clone(),
                    incoming,
                    connection.clone(),
                    metrics,
                    span.clone(),
                )
                .instrument(span);
                let rpc = rpcs.track_future(rpc);
                if inline.is_enabled() {
                    let mut rpc = Box::pin(rpc);
                    let started = std::time::Instant::now();
                    // Polled with a no-op waker: if it is not done, the task
                    // it moves to polls it again at once, and that poll
                    // registers the task's own waker wherever it waits.
                    let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        rpc.as_mut()
                            .poll(&mut Context::from_waker(Waker::noop()))
                            .is_ready()
                    }));
                    // Handler panics are caught inside; one here is ours,
                    // and ends only this RPC (its stream is dropped, which
                    // cancels it), never the connection's reader.
                    let done = step.unwrap_or_else(|_| {
                        tracing::error!(parent: &conn_span, "an RPC's first step panicked");
                        true
                    });
                    let took = started.elapsed();
                    inline.record(took);
                    if !inline.is_enabled() {
                        tracing::debug!(
                            parent: &conn_span,
                            took_us = took.as_micros() as u64,
                            "first steps of this connection's RPCs no longer run inline"
                        );
                    }
                    if !done {
                        tokio::spawn(rpc);
                    }
                } else {
                    tokio::spawn(rpc);
                }
            }
        };
        let manager = Manager::with_acceptor(transport, inner.opts.manager.clone(), on_incoming);
        let ended = tokio::select! {
            biased;
            _ = inner.stop_accepting.cancelled() => Ended::Shutdown,
            e = manager.closed() => Ended::Connection(e),
            expired = expiry(&inner.opts, &heard, &manager, &rpcs) => expired,
        };
        // Handlers end by themselves: by returning, when their stream ends,
        // or when the grace period is over (`cancel_rpcs`). (A connection
        // that expired has none.)
        rpcs.close();
        rpcs.wait().await;
        manager.close_gracefully(FLUSH_ON_CLOSE).await;
        let reason = ended.reason();
        tracing::info!(reason, detail = %ended, "connection closed");
        observe::connection_closed(reason);
        if reason == "wrong_protocol" {
            observe::refused(reason);
        }
        match ended {
            Ended::Connection(e) => e,
            _ => manager.termination().unwrap_or(ConnectionError::Closed),
        }
    }

    /// Shuts down gracefully: stops accepting connections at once (the
    /// listeners are closed) and RPCs, tells every running handler
    /// ([`RequestContext::shutting_down`]), lets in-flight RPCs finish for
    /// up to `grace`, then cancels them (their clients get code 14,
    /// Unavailable), and returns once every connection task of the
    /// listeners has ended. Connections without a call in progress close
    /// at once.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.stop_accepting.cancel();
        inner.tracker.close();
        if tokio::time::timeout(grace, inner.tracker.wait())
            .await
            .is_err()
        {
            inner.cancel_rpcs.cancel();
            inner.tracker.wait().await;
        }
    }

    /// Whether [`Server::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stop_accepting.is_cancelled()
    }
}

/// Why a connection task ended.
#[derive(Debug)]
enum Ended {
    /// The connection ended by itself (the peer, an error).
    Connection(ConnectionError),
    /// The server shut down.
    Shutdown,
    /// The peer sent nothing within the handshake timeout.
    Handshake(Duration),
    /// No stream and no byte received for the idle timeout.
    Idle(Duration),
}

impl Ended {
    /// The `reason` of the `connection closed` event and metric label.
    fn reason(&self) -> &'static str {
        match self {
            Ended::Connection(ConnectionError::Eof) => "peer_closed",
            Ended::Connection(ConnectionError::Closed) => "closed",
            Ended::Connection(ConnectionError::Io(_)) => "io_error",
            Ended::Connection(ConnectionError::WrongProtocol { .. }) => "wrong_protocol",
            Ended::Connection(_) => "protocol_error",
            Ended::Shutdown => "shutdown",
            Ended::Handshake(_) => "handshake_timeout",
            Ended::Idle(_) => "idle_timeout",
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Connection(e) => write!(f, "{e}"),
            Ended::Shutdown => f.write_str("server shut down"),
            Ended::Handshake(t) => write!(f, "handshake timeout: nothing received within {t:?}"),
            Ended::Idle(t) => write!(f, "idle timeout: no stream and nothing received for {t:?}"),
        }
    }
}

/// The shortest pause between two looks at an idle connection.
const MIN_IDLE_TICK: Duration = Duration::from_millis(1);

/// Resolves when the connection has expired: nothing received within the
/// handshake timeout, or no stream and nothing received for the idle
/// timeout. Looks every quarter of the idle timeout, and once at the end
/// of the handshake timeout.
async fn expiry(
    opts: &ServerOptions,
    heard: &AtomicBool,
    manager: &Manager,
    rpcs: &TaskTracker,
) -> Ended {
    let idle = opts.idle_timeout;
    let tick = idle.map(|t| (t / 4).max(MIN_IDLE_TICK));
    let start = Instant::now();
    let mut handshake = opts.handshake_timeout.map(|t| start + t);
    let mut last_active = start;
    loop {
        let next_tick = tick.map(|t| Instant::now() + t);
        let wake = match (handshake, next_tick) {
            (Some(a), Some(b)) => a.min(b),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(wake).await;
        let now = Instant::now();
        let received = heard.swap(false, Ordering::Relaxed);
        if received {
            handshake = None;
        }
        if let Some(at) = handshake
            && now >= at
        {
            return Ended::Handshake(at - start);
        }
        if received || manager.active_streams() > 0 || !rpcs.is_empty() {
            last_active = now;
        } else if let Some(idle) = idle
            && now - last_active >= idle
        {
            return Ended::Idle(idle);
        }
    }
}

/// A transport that notes when something was received, what the idle and
/// handshake timeouts go by, and counts the bytes both ways. (Boxed, so
/// that it is `Unpin` whatever the transport: one allocation per
/// connection.)
struct Heard<T> {
    io: Pin<Box<T>>,
    /// Set by each read that received something; taken by [`expiry`].
    heard: Arc<AtomicBool>,
    /// `drpc_server_bytes_received_total` (a no-op without a recorder).
    received: Counter,
    /// `drpc_server_bytes_sent_total`.
    sent: Counter,
}

impl<T: AsyncRead> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.io.as_mut().poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.received.increment(read as u64);
            // Loaded first: the flag is written only when it changes, once
            // per look of the expiry timer at most, not at every read.
            if !self.heard.load(Ordering::Relaxed) {
                self.heard.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Heard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = self.io.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.increment(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = self.io.as_mut().poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.sent.increment(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}

/// Errors of `accept` that say the process is short of resources; the
/// listener itself is fine and accepting again later can succeed.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::OutOfMemory
    ) || matches!(e.raw_os_error(), Some(23 | 24 | 105)) // ENFILE, EMFILE, ENOBUFS
}

/// Answers an RPC that arrived during shutdown.
fn refuse(incoming: Incoming, conn_span: &tracing::Span) {
    observe::refused("call_during_shutdown");
    tracing::debug!(parent: conn_span, method = %observe::BoundedPath(&incoming.rpc), "call refused: server shutting down");
    let err = CodedError::unavailable("server shutting down");
    if let Err(e) = incoming.stream.send_error(&err) {
        tracing::debug!(parent: conn_span, method = %observe::BoundedPath(&incoming.rpc), error = %e, "could not refuse the stream");
    }
}

/// How an RPC's task ended.
enum Outcome {
    Returned(Result<(), CodedError>),
    Panicked,
    StreamEnded,
    DeadlineExceeded,
    ShuttingDown,
}

/// Runs one RPC: the handler, raced against the stream's end, the
/// deadline and the end of the shutdown grace period. Runs in `span`,
/// the call's, where it records the code and duration.
async fn serve_rpc(
    server: Arc<Inner>,
    incoming: Incoming,
    connection: Arc<ConnectionInfo>,
    metrics: Arc<MethodMetrics>,
    span: tracing::Span,
) {
    let started = std::time::Instant::now();
    let metrics = metrics.start();
    let (handler, shutdown) = (&server.handler, &server.cancel_rpcs);
    let Incoming {
        stream,
        rpc,
        mut metadata,
    } = incoming;
    let deadline = metadata
        .remove(TIMEOUT_METADATA_KEY)
        .and_then(|v| parse_timeout(&v))
        .map(|t| Instant::now() + t);
    let stream = Arc::new(stream);
    let watch = stream.watch();
    let cancel = CancellationToken::new();
    let ctx = RequestContext::new(
        rpc,
        stream.id(),
        metadata,
        deadline.map(Instant::into_std),
        cancel.clone(),
    )
    .with_connection(connection);
    // A panic in the handler, in what `handle` does before returning its
    // future as in the future itself, fails this RPC only: the first step
    // may run on the connection's reader task.
    let call = async {
        let call = ServerCall {
            stream: stream.clone(),
            ctx,
        };
        // The handler's code, and only it, may block its thread: the
        // watchdog watches it (see [`stall`]).
        let fut =
            std::panic::catch_unwind(AssertUnwindSafe(|| stall::watch(|| handler.handle(call))))?;
        AssertUnwindSafe(stall::Watched(fut)).catch_unwind().await
    };
    let deadline_passed = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        biased;
        r = call => match r {
            Ok(result) => Outcome::Returned(result),
            Err(_) => Outcome::Panicked,
        },
        _ = watch.terminated() => Outcome::StreamEnded,
        _ = deadline_passed => Outcome::DeadlineExceeded,
        _ = shutdown.cancelled() => Outcome::ShuttingDown,
    };
    let (code, end) = match outcome {
        Outcome::Returned(Ok(())) => (Code::Ok, stream.close_send()),
        Outcome::Returned(Err(e)) => {
            let code = observe::error_code(e.kind());
            tracing::info!(%code, error = %e, "handler failed");
            (code, stream.send_error(&e))
        }
        Outcome::Panicked => {
            tracing::error!(code = %Code::Internal, "handler panicked");
            cancel.cancel();
            let err = CodedError::internal("internal error: handler panicked");
            (Code::Internal, stream.send_error(&err))
        }
        Outcome::StreamEnded => {
            tracing::debug!("call cancelled: by the client, or its connection ended");
            cancel.cancel();
            (Code::Canceled, Ok(()))
        }
        Outcome::DeadlineExceeded => {
            cancel.cancel();
            let err = CodedError::deadline_exceeded("context deadline exceeded");
            (Code::DeadlineExceeded, stream.send_error(&err))
        }
        Outcome::ShuttingDown => {
            cancel.cancel();
            let err = CodedError::unavailable("server shutting down");
            (Code::Unavailable, stream.send_error(&err))
        }
    };
    if let Err(e) = end {
        tracing::debug!(%code, error = %e, "could not end the stream");
    }
    let took = started.elapsed();
    metrics.finish(code, took);
    let duration_ms = took.as_secs_f64() * 1e3;
    if !span.is_disabled() {
        span.record("code", tracing::field::display(code));
        span.record("duration_ms", duration_ms);
    }
    tracing::info!(%code, duration_ms, "call finished");
    // The call is over, whichever way: work the handler handed off (and
    // that watches its context) stops too, as a Go stream context does.
    cancel.cancel();
}

/// Keeps the runtime's I/O and timers going while an RPC blocks its worker
/// thread.
///
/// Giving each RPC a task of its own is not enough for that with tokio's
/// multi-thread scheduler. The worker that the reader task runs on wakes
/// from waiting for I/O, runs the reader, which spawns the RPC's task into
/// that worker's next-task slot; nothing of that wakes an idle worker. If
/// the RPC then blocks the thread, the idle workers sleep on, and none of
/// them waits for I/O or timers in its place: the connection's next frames
/// stay unread until the handler is done, as if it had run on the reader.
/// (Across processes that is what happens; in a test whose client shares
/// the server's runtime, the client's own wake-ups hide it.) Waking an idle
/// worker at every spawn would fix it, at the price of a cross-CPU wake-up
/// per call (a unary call's p50 went from 21 to 32 µs on a 2-CPU VM).
///
/// Instead, every poll of a handler's future (and its call to
/// [`Handler::handle`]) notes on its thread's slot the tick at which it
/// began, and a watchdog thread that ticks every [`TICK`](stall::TICK)
/// while RPCs run spawns an empty task on the runtime of any thread whose
/// poll has lasted two ticks or more. Spawned from outside the runtime,
/// that task wakes an idle worker, which runs it and goes back to waiting,
/// for I/O and timers now, since the stuck worker does not. A blocking
/// handler so delays its connection's other calls by at most two ticks
/// more than the runtime's own scheduling, on any of its polls, at the
/// cost of a few atomic operations per poll. The watchdog sleeps once no
/// RPC has been polled for [`IDLE_TICKS`](stall::IDLE_TICKS) ticks, until
/// the next poll.
///
/// What remains is tokio's own: a task that the handler wakes in the poll
/// in which it then blocks (the connection's writer, when it sends a
/// message just before) waits in that worker's next-task slot, which
/// other workers cannot steal from, until the handler is done. Runtimes
/// built with tokio's (unstable) `disable_lifo_slot` do not keep it there.
mod stall {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::runtime::{Handle, RuntimeFlavor};

    /// How often the watchdog looks at the threads' slots.
    pub(super) const TICK: Duration = Duration::from_millis(5);

    /// How many ticks without any RPC poll put the watchdog to sleep.
    pub(super) const IDLE_TICKS: u64 = 200;

    /// Set in a slot's state while a poll runs.
    const BUSY: u64 = 1 << 63;

    /// What the watchdog knows of one worker thread.
    struct Slot {
        /// The tick at which the thread's latest RPC poll began, with
        /// [`BUSY`] while it runs.
        state: AtomicU64,
        /// The runtime the thread works for (all its life: workers of a
        /// multi-thread runtime belong to it alone).
        runtime: Handle,
    }

    /// The watchdog's clock, advanced by one per tick while it is awake.
    static NOW: AtomicU64 = AtomicU64::new(1);
    /// Whether the watchdog sleeps (or was never started).
    static ASLEEP: AtomicBool = AtomicBool::new(true);
    /// The slot of every thread that polled an RPC.
    static SLOTS: Mutex<Vec<Weak<Slot>>> = Mutex::new(Vec::new());
    /// The watchdog thread, started by the first poll.
    static WATCHDOG: OnceLock<std::thread::Thread> = OnceLock::new();

    thread_local! {
        /// This thread's slot: none outside a multi-thread runtime, where
        /// there is no other worker to wake.
        static SLOT: Option<Arc<Slot>> = register();
    }

    fn register() -> Option<Arc<Slot>> {
        let runtime = Handle::try_current().ok()?;
        if runtime.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let slot = Arc::new(Slot {
            state: AtomicU64::new(0),
            runtime,
        });
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&slot));
        Some(slot)
    }

    /// Runs `poll`, one poll of an RPC, under the watchdog's eye.
    pub(super) fn watch<T>(poll: impl FnOnce() -> T) -> T {
        SLOT.with(|slot| {
            let Some(slot) = slot else { return poll() };
            let began = NOW.load(Ordering::Relaxed);
            // Sequentially consistent with the watchdog's going to sleep:
            // either it sees this poll running, or this poll sees it
            // asleep and wakes it.
            let before = slot.state.swap(began | BUSY, Ordering::SeqCst);
            if ASLEEP.load(Ordering::SeqCst) {
                wake_watchdog();
            }
            // A watched poll inside another (a handler driving an RPC of
            // an in-process server, say) gives the outer one back its
            // state when it ends.
            let after = if before & BUSY != 0 { before } else { began };
            let _done = Done { slot, after };
            poll()
        })
    }

    /// Marks the end of a poll, also when it panics.
    struct Done<'a> {
        slot: &'a Slot,
        after: u64,
    }

    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.slot.state.store(self.after, Ordering::Release);
        }
    }

    /// A handler's future, each of whose polls runs under the watchdog's
    /// eye. (A boxed future: wrapping it moves no more than a pointer.)
    pub(super) struct Watched<F>(pub(super) F);

    impl<F: Future + Unpin> Future for Watched<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            watch(|| Pin::new(&mut self.0).poll(cx))
        }
    }

    fn wake_watchdog() {
        if ASLEEP.swap(false, Ordering::SeqCst) {
            let watchdog = WATCHDOG.get_or_init(|| {
                std::thread::Builder::new()
                    .name("drpc-stall-watch".into())
                    .spawn(run)
                    .map(|handle| handle.thread().clone())
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not start the stalled-worker watchdog");
                        std::thread::current()
                    })
            });
            watchdog.unpark();
        }
    }

    /// The watchdog: ticks while RPCs are polled, kicks the runtimes of
    /// threads stuck in one, sleeps when there are none.
    fn run() {
        loop {
            std::thread::sleep(TICK);
            let now = NOW.fetch_add(1, Ordering::Relaxed) + 1;
            if look(now) {
                continue;
            }
            ASLEEP.store(true, Ordering::SeqCst);
            // A poll that began meanwhile may not have seen the flag.
            if look(now) {
                ASLEEP.store(false, Ordering::SeqCst);
                continue;
            }
            while ASLEEP.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }

    /// Kicks the runtime of every thread whose poll has lasted two ticks or
    /// more; whether any thread polled an RPC in the last [`IDLE_TICKS`].
    fn look(now: u64) -> bool {
        let mut active = false;
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|slot| {
            let Some(slot) = slot.upgrade() else {
                return false;
            };
            let state = slot.state.load(Ordering::SeqCst);
            let began = state & !BUSY;
            let busy = state & BUSY != 0;
            active |= busy || now.saturating_sub(began) < IDLE_TICKS;
            if busy && now.saturating_sub(began) >= 2 {
                // An idle worker wakes to run it, and then waits for I/O
                // and timers in the stuck one's place.
                drop(slot.runtime.spawn(async {}));
            }
            true
        });
        active
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn threads_outside_a_multi_thread_runtime_have_no_slot() {
            assert!(SLOT.with(|slot| slot.is_none()));
            assert_eq!(watch(|| 7), 7);
        }

        /// Runs `blocking` (watched or not) on a runtime of two idle
        /// workers, woken by a timer so that its worker has been the one
        /// waiting for timers; whether a timer due meanwhile fired before
        /// it was done blocking.
        fn timer_fires_while_blocked(watch_it: bool) -> bool {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_time()
                .build()
                .expect("runtime");
            let fired = Arc::new(AtomicBool::new(false));
            let timer = {
                let fired = fired.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    fired.store(true, Ordering::SeqCst);
                })
            };
            let blocking = {
                let fired = fired.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let (slot_busy, slot) = match SLOT.with(|slot| slot.clone()) {
                        Some(slot) => (slot.state.load(Ordering::SeqCst) & BUSY != 0, Some(slot)),
                        None => (false, None),
                    };
                    std::thread::sleep(Duration::from_millis(400));
                    (fired.load(Ordering::SeqCst), slot_busy, slot)
                }
            };
            let (fired_meanwhile, slot_busy, slot) = if watch_it {
                runtime.block_on(runtime.spawn(Watched(Box::pin(blocking))))
            } else {
                runtime.block_on(runtime.spawn(blocking))
            }
            .expect("join");
            if watch_it {
                let slot = slot.expect("a worker has a slot");
                assert!(slot_busy, "busy while polled");
                assert_eq!(slot.state.load(Ordering::SeqCst) & BUSY, 0, "idle after");
            }
            runtime.block_on(timer).expect("timer");
            fired_meanwhile
        }

        #[test]
        fn a_worker_stuck_in_a_watched_poll_does_not_stop_the_runtime_s_timers() {
            assert!(timer_fires_while_blocked(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_micros(20);
    const SLOW: Duration = Duration::from_millis(2);

    fn gate_after(steps: &[Duration]) -> InlineGate {
        let mut gate = InlineGate::new(true);
        steps.iter().for_each(|&took| gate.record(took));
        gate
    }

    #[test]
    fn three_slow_steps_in_a_row_turn_inlining_off() {
        assert!(gate_after(&[SLOW, SLOW]).is_enabled());
        assert!(!gate_after(&[SLOW, SLOW, SLOW]).is_enabled());
        assert!(gate_after(&[SLOW, QUICK, SLOW, QUICK, SLOW]).is_enabled());
        assert!(!gate_after(&[SLOW, QUICK, SLOW, SLOW, SLOW]).is_enabled());
    }

    #[test]
    fn one_step_over_the_hard_limit_turns_inlining_off() {
        assert!(!gate_after(&[INLINE_STEP_HARD_LIMIT]).is_enabled());
        assert!(gate_after(&[INLINE_STEP_HARD_LIMIT - Duration::from_micros(1)]).is_enabled());
    }

    #[test]
    fn lone_slow_steps_among_quick_ones_are_forgiven() {
        let mut steps = Vec::new();
        for _ in 0..100 {
            steps.push(SLOW);
            steps.extend([QUICK; 16]);
        }
        assert!(
            gate_after(&steps).is_enabled(),
            "one in seventeen is tolerated"
        );
    }

    #[test]
    fn slow_steps_more_often_than_one_in_sixteen_turn_inlining_off() {
        let mut steps = Vec::new();
        for _ in 0..100 {
            steps.push(SLOW);
            steps.extend([QUICK; 12]);
        }
        assert!(!gate_after(&steps).is_enabled());
    }

    #[test]
    fn a_gate_that_starts_off_stays_off() {
        let mut gate = InlineGate::new(false);
        gate.record(QUICK);
        assert!(!gate.is_enabled());
    }

    #[test]
    fn steps_at_the_limit_are_quick() {
        assert!(gate_after(&[INLINE_STEP_LIMIT; 10]).is_enabled());
    }
}
