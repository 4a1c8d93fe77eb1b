//! The client connection and its calls.

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use drpc_manager::{Manager, ManagerOptions, Role};
use drpc_stream::{
    ConnectionError, Encoding, FlowControl, Initiator, MemoryBudget, MessageBatch, MessageBuf,
    Prost, RecvBatch, Stream, StreamError, StreamErrorKind, StreamWatch,
};
use drpc_wire::{Compression, Metadata, TIMEOUT_METADATA_KEY, encode_timeout};
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Connection settings, with documented defaults, changed with the
/// methods below (as drpc-server's `ServerOptions`):
///
/// ```
/// use drpc_conn::{Compression, ConnOptions, FlowControl};
///
/// let opts = ConnOptions::new()
///     .max_message_size(16 << 20)
///     .max_concurrent_streams(256)
///     .flow_control(FlowControl::off())
///     .recv_queue(64, 4 << 20)
///     .compression(Compression::Snappy);
/// assert_eq!(opts.manager.stream.max_packet_size, 16 << 20);
/// ```
///
/// A [`Channel`](crate::Channel) takes them with
/// [`Endpoint::options`](crate::Endpoint::options), for every connection
/// it makes. The field stays public for what the methods do not cover
/// ([`ManagerOptions`] is re-exported by this crate).
#[derive(Debug, Clone, Default)]
pub struct ConnOptions {
    /// The connection's settings: limits, queues, memory budgets, flow
    /// control (`manager.stream.flow_control`: negotiated by default; see
    /// `drpc-manager`'s documentation), [`ManagerOptions::sequential`]
    /// for stock Go servers, and the compression of every call
    /// ([`ManagerOptions::compression`], off by default; see
    /// [`ConnOptions::compression`]).
    pub manager: ManagerOptions,
}

impl ConnOptions {
    /// The defaults, as [`ConnOptions::default`], to change with the
    /// methods below.
    pub fn new() -> ConnOptions {
        ConnOptions::default()
    }

    /// Options for a server of CockroachDB's fork that runs with flow
    /// control on ([`ManagerOptions::fork_flow_control`]).
    pub fn fork_flow_control() -> ConnOptions {
        ConnOptions {
            manager: ManagerOptions::fork_flow_control(),
        }
    }

    /// Options for a server running the original, one-stream-at-a-time Go
    /// implementation: one call at a time on the connection (the defaults
    /// otherwise; [`ConnOptions::sequential_mode`] sets it on options
    /// built otherwise).
    pub fn sequential() -> ConnOptions {
        ConnOptions::new().sequential_mode(true)
    }

    /// Sequential mode on or off (default off: calls are multiplexed):
    /// on, the connection carries one call at a time, each waiting until
    /// the previous has ended, as the original Go implementation's
    /// servers require; a [`Channel`](crate::Channel) then keeps a pool
    /// of connections ([`Endpoint::max_connections`](crate::Endpoint::max_connections)).
    pub fn sequential_mode(mut self, on: bool) -> ConnOptions {
        self.manager.sequential = on;
        self
    }

    /// Compresses every call of the connection with `compression` (unless
    /// a call chooses otherwise, [`CallOptions::compression`]): requests
    /// and responses, every message, as CockroachDB's fork does.
    ///
    /// **Only for servers that accept it**: the fork, or a server of this
    /// implementation: this does not wait to learn whether the server
    /// does, and a stock Go server would hand the compressed bytes to its
    /// decoder ([`ConnOptions::compression_if_accepted`] waits).
    pub fn compression(mut self, compression: Compression) -> ConnOptions {
        self.manager.compression = Some(compression);
        self
    }

    /// Compresses every call of the connection with `compression` once the
    /// server has said it decompresses it (unless a call chooses
    /// otherwise); see [`ManagerOptions::compression_if_accepted`]. Safe
    /// toward any server: a server of this implementation gets compressed
    /// calls from its first answer on, every other server plain calls.
    pub fn compression_if_accepted(mut self, compression: Compression) -> ConnOptions {
        self.manager.compression_if_accepted = Some(compression);
        self
    }

    /// The largest message sent to the server and accepted from it
    /// (default [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE),
    /// 4 MiB, as Go's). A larger request fails its call at once, before
    /// anything is sent; a larger response fails its call alone, with
    /// ResourceExhausted (a single frame over it, possible only with a
    /// limit under the 64 KiB frame size, ends the connection). Servers
    /// that exchange larger messages raise their own limit too.
    pub fn max_message_size(mut self, bytes: usize) -> ConnOptions {
        self.manager.stream.max_packet_size = bytes;
        self
    }

    /// The most calls open at once on the connection (default
    /// [`DEFAULT_MAX_CONCURRENT_STREAMS`](crate::DEFAULT_MAX_CONCURRENT_STREAMS),
    /// 4096). A call beyond it is refused here at once, alone (code
    /// Unavailable, as gRPC's refused streams); the connection goes on.
    pub fn max_concurrent_streams(mut self, max: usize) -> ConnOptions {
        self.manager.max_concurrent_streams = max;
        self
    }

    /// Flow control of the connection's streams (default
    /// [`FlowControl::auto`]: offered to the server, used with the
    /// servers that take it up (this implementation's), none with the
    /// others; [`FlowControl::fork`] for servers of CockroachDB's fork
    /// with flow control on, which [`ConnOptions::fork_flow_control`]
    /// sets along with the fork's message limit; [`FlowControl::off`]
    /// for none).
    pub fn flow_control(mut self, flow_control: FlowControl) -> ConnOptions {
        self.manager.stream.flow_control = flow_control;
        self
    }

    /// How many response messages and bytes may wait for the application
    /// on a stream without flow control (default
    /// [`DEFAULT_RECV_QUEUE_MESSAGES`](crate::DEFAULT_RECV_QUEUE_MESSAGES),
    /// 256 messages, and
    /// [`DEFAULT_RECV_QUEUE_BYTES`](crate::DEFAULT_RECV_QUEUE_BYTES),
    /// 8 MiB). Past either, a stream that shares its connection fails
    /// alone (ResourceExhausted); the connection's only stream makes the
    /// connection stop reading instead.
    pub fn recv_queue(mut self, messages: usize, bytes: usize) -> ConnOptions {
        self.manager.stream.recv_queue_messages = messages;
        self.manager.stream.recv_queue_bytes = bytes;
        self
    }

    /// The memory one connection may hold for its server (default
    /// [`DEFAULT_CONNECTION_MEMORY`](crate::DEFAULT_CONNECTION_MEMORY),
    /// 32 MiB): responses received and not yet taken, and bytes waiting
    /// to be written. Above it the connection stops reading until the
    /// application or the transport frees some: TCP backpressure on the
    /// server.
    pub fn max_connection_memory(mut self, bytes: usize) -> ConnOptions {
        self.manager.max_connection_memory = bytes;
        self
    }

    /// The memory all the connections made with clones of these options
    /// may hold together (default
    /// [`DEFAULT_SHARED_MEMORY`](crate::DEFAULT_SHARED_MEMORY), 256 MiB;
    /// `None`: no limit beyond each connection's). A new budget, shared by
    /// every connection of a [`Channel`](crate::Channel) given these
    /// options, and by those of other channels and connections given
    /// clones of them; [`ConnOptions::shared_memory_budget`] shares one
    /// budget among options built apart.
    pub fn shared_memory(mut self, bytes: Option<usize>) -> ConnOptions {
        self.manager.shared_memory = bytes.map(|n| Arc::new(MemoryBudget::new(n, None)));
        self
    }

    /// Charges the connections made with these options to `budget`, a
    /// budget shared with other options (`None`: no limit beyond each
    /// connection's); see [`ConnOptions::shared_memory`].
    pub fn shared_memory_budget(mut self, budget: Option<Arc<MemoryBudget>>) -> ConnOptions {
        self.manager.shared_memory = budget;
        self
    }

    /// The bytes waiting to be written that all the connections made with
    /// clones of these options may hold together (default
    /// [`DEFAULT_SHARED_WRITE_MEMORY`](crate::DEFAULT_SHARED_WRITE_MEMORY),
    /// 256 MiB; `None`: no limit beyond each connection's
    /// [`ConnOptions::write_buffer_size`]): however many servers stop
    /// reading, what waits for them stays bounded. A new budget, shared
    /// as [`ConnOptions::shared_memory`]'s.
    pub fn shared_write_memory(mut self, bytes: Option<usize>) -> ConnOptions {
        self.manager.shared_write_memory = bytes.map(|n| Arc::new(MemoryBudget::new(n, None)));
        self
    }

    /// Charges the bytes waiting to be written to `budget`, shared with
    /// other options (`None`: no shared limit); see
    /// [`ConnOptions::shared_write_memory`].
    pub fn shared_write_memory_budget(mut self, budget: Option<Arc<MemoryBudget>>) -> ConnOptions {
        self.manager.shared_write_memory = budget;
        self
    }

    /// Buffered outgoing bytes above which a call's sends wait for the
    /// connection's writer (default
    /// [`DEFAULT_WRITER_HIGH_WATER`](crate::DEFAULT_WRITER_HIGH_WATER),
    /// 1 MiB; Go's `WriterBufferSize`). Control packets never wait.
    pub fn write_buffer_size(mut self, bytes: usize) -> ConnOptions {
        self.manager.writer_high_water = bytes;
        self
    }

    /// The most data bytes per frame of the requests sent (default 0:
    /// 64 KiB; Go's `SplitSize`). Larger messages go out in several
    /// frames. Flow-controlled streams never send frames over
    /// [`FlowControl::FRAME`].
    pub fn split_size(mut self, bytes: usize) -> ConnOptions {
        self.manager.stream.split_size = bytes;
        self
    }
}

/// Per-call options: metadata, deadline, cancellation.
///
/// Built with [`CallOptions::metadata`], [`CallOptions::timeout`],
/// [`CallOptions::deadline`] and [`CallOptions::cancel_on`]; read back
/// (by an interceptor, a `tower` layer through [`Request::options`](crate::Request::options))
/// with the `get_` methods, named as `std::process::Command`'s because the
/// plain names build:
///
/// ```
/// use std::time::Duration;
/// use drpc_conn::{CallOptions, CancellationToken};
///
/// let opts = CallOptions::new()
///     .metadata("tenant", "blue")
///     .timeout(Duration::from_secs(2))
///     .cancel_on(CancellationToken::new());
/// assert_eq!(opts.get_metadata().get("tenant").map(String::as_str), Some("blue"));
/// assert!(opts.get_deadline().is_some());
/// assert!(opts.get_cancellation_token().is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    metadata: Metadata,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    compression: Option<Compression>,
    compression_if_accepted: Option<Compression>,
}

impl CallOptions {
    /// No metadata, no deadline.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Adds a metadata pair.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The call fails with a deadline error `timeout` from now (a timeout
    /// too large to represent means no deadline).
    pub fn timeout(self, timeout: Duration) -> Self {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.deadline(deadline),
            None => self,
        }
    }

    /// The call fails with a deadline error at `deadline`. The server
    /// learns the remaining time through the `drpc-timeout` metadata key.
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        self
    }

    /// The call is cancelled when `token` is.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Compresses the call's messages with `compression`, both ways
    /// (mux-fork-2026.md §4): the InvokeMetadata asks the server for it
    /// with the `drpc-compression` key, and every request and response
    /// travels as one compressed block. Without it the call follows the
    /// connection's [`ManagerOptions::compression`] (none by default).
    ///
    /// Size limits and flow control count compressed bytes; a request is
    /// refused as too large if it is over the connection's maximum message
    /// size before or after compression.
    ///
    /// **Only toward servers that accept it** (CockroachDB's fork, or a
    /// server of this implementation): this does not wait for the server to
    /// say it accepts it ([`CallOptions::compression_if_accepted`] does), and a
    /// stock Go server would hand the compressed bytes to its decoder. A
    /// server that does not know the algorithm refuses the call with
    /// Unimplemented.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self.compression_if_accepted = None;
        self
    }

    /// Compresses the call's messages with `compression` if the server has
    /// said, on this connection, that it decompresses it; otherwise the
    /// call goes uncompressed (whatever the connection's setting). A
    /// server of this implementation says so when it accepts a call's
    /// flow-control offer (on by default), so the first call of a
    /// connection goes plain and later ones compressed; stock Go servers
    /// and the fork never say it, and get plain calls.
    pub fn compression_if_accepted(mut self, compression: Compression) -> Self {
        self.compression_if_accepted = Some(compression);
        self.compression = None;
        self
    }

    /// The metadata pairs set so far, without the `drpc-timeout` pair the
    /// deadline adds on the wire.
    pub fn get_metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The deadline, if one is set: the earliest of those given to
    /// [`CallOptions::deadline`] and [`CallOptions::timeout`].
    pub fn get_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The token that cancels the call, if one was given to
    /// [`CallOptions::cancel_on`].
    pub fn get_cancellation_token(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// The compression given to [`CallOptions::compression`], if any
    /// (`None`: the connection's choice applies).
    pub fn get_compression(&self) -> Option<Compression> {
        self.compression
    }

    /// The metadata that goes on the wire, with the remaining time; fails
    /// at once, before anything is sent, when the call is already
    /// cancelled or past its deadline.
    fn wire_metadata(&self) -> Result<Metadata, Error> {
        if self
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            return Err(StreamError::new(0, StreamErrorKind::Canceled(Initiator::Local)).into());
        }
        let mut md = self.metadata.clone();
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StreamError::new(0, StreamErrorKind::DeadlineExceeded).into());
            }
            md.insert(TIMEOUT_METADATA_KEY.to_owned(), encode_timeout(left));
        }
        Ok(md)
    }
}

/// A client connection (Go's `drpcconn.Conn`).
///
/// Cheap to clone, `Send + Sync`: any number of tasks can make calls on
/// one connection at once, multiplexed (or one after another in sequential
/// mode). Dropping an in-flight call's future, or a stream, cancels that
/// call on the wire and nothing else. The connection closes on
/// [`Conn::close`], or once the last clone and the last of its open calls
/// are dropped.
#[derive(Clone)]
pub struct Conn {
    manager: Manager,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("manager", &self.manager)
            .finish()
    }
}

impl Conn {
    /// A connection over `transport` (a TCP or Unix stream, a TLS stream,
    /// an in-memory pipe). Must be called within a tokio runtime.
    pub fn new<T>(transport: T, opts: ConnOptions) -> Conn
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Conn {
            manager: Manager::new(transport, Role::Client, opts.manager),
        }
    }

    /// Dials a TCP address (`"host:port"`, a `SocketAddr`), with
    /// TCP_NODELAY set. A failure is [`Error::Connect`], naming `addr`.
    pub async fn connect_tcp(
        addr: impl tokio::net::ToSocketAddrs + fmt::Display,
        opts: ConnOptions,
    ) -> Result<Conn, Error> {
        let name = addr.to_string();
        let dial = async {
            let socket = tokio::net::TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            io::Result::Ok(socket)
        };
        match dial.await {
            Ok(socket) => Ok(Conn::new(socket, opts)),
            Err(e) => Err(Error::connect(name, e)),
        }
    }

    /// Dials a TCP address (`"host:port"`, a `SocketAddr`) with
    /// TCP_NODELAY set, and runs a TLS handshake with `config` over it,
    /// checking the server's certificate against `server_name` (also sent
    /// as SNI); the `tls` feature. A failure, of the TCP connect or of the
    /// handshake, is [`Error::Connect`], naming `addr`.
    ///
    /// A [`Channel`](crate::Channel) dials TLS with
    /// [`Endpoint::tls`](crate::Endpoint::tls), which also bounds the
    /// handshake with its connect timeout; a bare `Conn` has no timeout
    /// of its own: wrap this in `tokio::time::timeout` for one.
    #[cfg(feature = "tls")]
    pub async fn connect_tls(
        addr: impl tokio::net::ToSocketAddrs + fmt::Display,
        server_name: crate::tls::ServerName<'static>,
        config: Arc<crate::tls::ClientConfig>,
        opts: ConnOptions,
    ) -> Result<Conn, Error> {
        let name = addr.to_string();
        let dial = async {
            let socket = tokio::net::TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            crate::tls::TlsLayer::new(server_name, config)
                .handshake(socket)
                .await
        };
        match dial.await {
            Ok(stream) => Ok(Conn::new(stream, opts)),
            Err(e) => Err(Error::connect(name, e)),
        }
    }

    /// Dials a Unix-domain socket. A failure is [`Error::Connect`], naming
    /// the path.
    #[cfg(unix)]
    pub async fn connect_unix(
        path: impl AsRef<std::path::Path>,
        opts: ConnOptions,
    ) -> Result<Conn, Error> {
        let path = path.as_ref();
        match tokio::net::UnixStream::connect(path).await {
            Ok(socket) => Ok(Conn::new(socket, opts)),
            Err(e) => Err(Error::connect(path.display().to_string(), e)),
        }
    }

    /// The connection underneath.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Closes the connection: calls in flight fail with a connection
    /// error. Returns once its tasks have exited.
    pub async fn close(&self) {
        self.manager.close().await
    }

    /// Waits until the connection has ended, and returns why.
    pub async fn closed(&self) -> ConnectionError {
        self.manager.closed().await
    }

    /// The compression of a call: its own, or the connection's; either
    /// may wait for the server to say it decompresses it.
    fn compression(&self, opts: &CallOptions) -> Option<Compression> {
        match (opts.compression, opts.compression_if_accepted) {
            (Some(compression), _) => Some(compression),
            (None, Some(compression)) => {
                let accepted = self.manager.peer_compressions();
                if accepted.is_empty() {
                    self.manager.learn_peer_compressions();
                }
                Some(compression).filter(|c| accepted.contains(*c))
            }
            (None, None) => self.manager.default_compression(),
        }
    }

    /// Makes a unary call with protobuf messages.
    pub async fn unary<Req, Resp>(
        &self,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, Error>
    where
        Prost: Encoding<Req> + Encoding<Resp>,
    {
        self.unary_with(&Prost, rpc, req, opts).await
    }

    /// Makes a unary call with the given encoding: Invoke, the request and
    /// CloseSend leave together; the response is awaited; Close follows if
    /// the server has not ended the stream yet.
    pub async fn unary_with<Req, Resp, E>(
        &self,
        encoding: &E,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, Error>
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let metadata = opts.wire_metadata()?;
        let mut buf = MessageBuf::new();
        encoding.encode_to(req, &mut buf).map_err(Error::Encode)?;
        // The stream's id, once opened, for an error of the deadline or
        // cancellation that ends the call from outside.
        let opened = AtomicU64::new(0);
        let call = async {
            let stream = self
                .manager
                .open_unary_encoded_with(rpc, &metadata, &mut buf, self.compression(opts))
                .await?;
            opened.store(stream.id(), Ordering::Relaxed);
            let result = unary_response(&stream).await;
            // A call racing its own cancellation reports the cancellation,
            // never a bare end of stream.
            let data = result.map_err(|e| stream.check_cancel(e))?;
            stream.close()?;
            encoding.decode(data).map_err(Error::Decode)
        };
        bounded(call, &opened, opts).await
    }

    /// Opens a streaming call (client, server or bidi streaming) with
    /// protobuf messages.
    pub async fn stream<Req, Resp>(
        &self,
        rpc: &str,
        opts: &CallOptions,
    ) -> Result<ClientStream<Req, Resp, Prost>, Error>
    where
        Prost: Encoding<Req> + Encoding<Resp>,
    {
        self.stream_with(Prost, rpc, opts).await
    }

    /// Opens a streaming call with the given encoding. The deadline and
    /// cancellation token of `opts` stay in force for the stream's life.
    pub async fn stream_with<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        opts: &CallOptions,
    ) -> Result<ClientStream<Req, Resp, E>, Error>
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let metadata = opts.wire_metadata()?;
        let stream = bounded(
            async {
                let compression = self.compression(opts);
                Ok(self
                    .manager
                    .open_stream_with(rpc, &metadata, compression)
                    .await?)
            },
            &AtomicU64::new(0),
            opts,
        )
        .await?;
        let watchdog = (opts.deadline.is_some() || opts.cancel.is_some())
            .then(|| spawn_watchdog(stream.watch(), opts.deadline, opts.cancel.clone()));
        Ok(ClientStream {
            stream: Arc::new(stream),
            encoding: Arc::new(encoding),
            buf: MessageBuf::new(),
            batch_out: MessageBatch::new(),
            batch: RecvBatch::new(),
            sink: SinkState::new(self.manager.options().stream.max_packet_size),
            recv_done: false,
            watchdog: watchdog.map(AbortOnDrop),
            _types: PhantomData,
        })
    }

    /// Opens a server-streaming call: sends `req`, closes the sending side,
    /// and returns the stream to receive the responses from.
    pub async fn server_streaming<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<ClientStream<Req, Resp, E>, Error>
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let mut stream = self.stream_with(encoding, rpc, opts).await?;
        stream.send(req).await?;
        stream.close_send()?;
        Ok(stream)
    }
}

/// Encodes `msg` and sends it: small messages through the reused `buf`,
/// large ones, and the large buffers they share, by reference, uncopied.
async fn send_encoded<T, E: Encoding<T>>(
    stream: &Stream,
    encoding: &E,
    buf: &mut MessageBuf,
    msg: &T,
) -> Result<(), Error> {
    buf.clear();
    encoding.encode_to(msg, buf).map_err(Error::Encode)?;
    Ok(stream.send_encoded(buf).await?)
}

/// Encodes `msgs` into `batch` and sends them together, except large ones,
/// which go alone through `buf`, by reference ([`MessageBatch::push_small`]);
/// a message that does not encode fails the call after those before it
/// were sent.
async fn send_all<'a, T: 'a, E: Encoding<T>>(
    stream: &Stream,
    encoding: &E,
    batch: &mut MessageBatch,
    buf: &mut MessageBuf,
    msgs: impl IntoIterator<Item = &'a T>,
) -> Result<(), Error> {
    batch.clear();
    for msg in msgs {
        match batch.push_small(encoding, msg) {
            Ok(true) => {}
            Ok(false) => {
                stream.send_batch(batch).await?;
                send_encoded(stream, encoding, buf, msg).await?;
            }
            Err(e) => {
                stream.send_batch(batch).await?;
                return Err(Error::Encode(e));
            }
        }
    }
    stream.send_batch(batch).await?;
    Ok(())
}

async fn unary_response(stream: &Stream) -> Result<bytes::Bytes, StreamError> {
    match stream.recv().await? {
        Some(data) => Ok(data),
        None => Err(StreamError::new(stream.id(), StreamErrorKind::Eof)),
    }
}

/// Runs `call` under the deadline and cancellation token of `opts`. When
/// either fires first, `call` is dropped, which cancels its stream on the
/// wire, and the error names the stream `call` stored in `opened` (0 when
/// it had none yet).
async fn bounded<T>(
    call: impl Future<Output = Result<T, Error>>,
    opened: &AtomicU64,
    opts: &CallOptions,
) -> Result<T, Error> {
    if opts.deadline.is_none() && opts.cancel.is_none() {
        return call.await;
    }
    tokio::select! {
        biased;
        r = call => r,
        reason = ended(opts.deadline, opts.cancel.clone()) => {
            Err(StreamError::new(opened.load(Ordering::Relaxed), reason).into())
        }
    }
}

/// Resolves when the deadline passes or the token is cancelled, with the
/// stream error that says which; never, when there is neither.
pub(crate) async fn ended(
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
) -> StreamErrorKind {
    let deadline_passed = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        match &cancel {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline_passed => StreamErrorKind::DeadlineExceeded,
        _ = cancelled => StreamErrorKind::Canceled(Initiator::Local),
    }
}

/// Cancels a stream when its deadline passes or its token is cancelled,
/// unless it terminates first.
fn spawn_watchdog(
    watch: StreamWatch,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = watch.terminated() => {}
            reason = ended(deadline, cancel) => watch.cancel(reason),
        }
    })
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A streaming call: send requests of type `Req`, receive responses of
/// type `Resp`.
///
/// Besides its methods it is a [`futures_core::Stream`] of responses and
/// a [`futures_sink::Sink`] of requests, for the combinators of the
/// `futures` crates (see [`ClientReceiver`] and [`ClientSender`], which
/// behave the same; `SinkExt::close` is CloseSend after a flush, where the
/// inherent [`ClientStream::close`] ends the whole call).
/// [`ClientStream::split`] gives halves that can be used from different
/// tasks.
///
/// Dropping it before the call has ended cancels the call (a Cancel packet
/// on the wire); the connection and other calls go on.
pub struct ClientStream<Req, Resp, E> {
    stream: Arc<Stream>,
    encoding: Arc<E>,
    buf: MessageBuf,
    /// Requests encoded together by `send_all`.
    batch_out: MessageBatch,
    /// Responses taken from the stream together, handed out one by one.
    batch: RecvBatch,
    /// Requests given to the `Sink`, not yet sent.
    sink: SinkState,
    /// Whether the `Stream` of responses has ended (after the last
    /// response or the first error).
    recv_done: bool,
    watchdog: Option<AbortOnDrop>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp, E> fmt::Debug for ClientStream<Req, Resp, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl<Req, Resp, E> ClientStream<Req, Resp, E>
where
    E: Encoding<Req> + Encoding<Resp>,
{
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.stream.id()
    }

    /// Sends one request (after those the `Sink` holds).
    pub async fn send(&mut self, msg: &Req) -> Result<(), Error> {
        self.sink.flush(&self.stream).await?;
        send_encoded(&self.stream, &*self.encoding, &mut self.buf, msg).await
    }

    /// Sends several requests, in order, appended to the connection
    /// together as far as credit and the write buffer allow: the way to
    /// send a run of small messages (see [`Stream::send_batch`]). A large
    /// one (at least [`drpc_stream::ZERO_COPY_MIN`] bytes) goes alone, as
    /// `send` sends it: by reference, uncopied.
    pub async fn send_all<'a, I>(&mut self, msgs: I) -> Result<(), Error>
    where
        Req: 'a,
        I: IntoIterator<Item = &'a Req>,
    {
        self.sink.flush(&self.stream).await?;
        send_all(
            &self.stream,
            &*self.encoding,
            &mut self.batch_out,
            &mut self.buf,
            msgs,
        )
        .await
    }

    /// Receives the next response; `Ok(None)` at the server's clean end.
    pub async fn recv(&mut self) -> Result<Option<Resp>, Error> {
        std::future::poll_fn(|cx| poll_decode(&self.stream, &mut self.batch, &*self.encoding, cx))
            .await
    }

    /// Closes the sending side (CloseSend). Requests given to the `Sink`
    /// and not flushed are not sent: flush first, or close through the
    /// `Sink` (`SinkExt::close`), which flushes.
    pub fn close_send(&self) -> Result<(), Error> {
        Ok(self.stream.close_send()?)
    }

    /// Sends what the `Sink` still holds, closes the sending side and
    /// receives the one response of a client-streaming call.
    pub async fn close_and_recv(&mut self) -> Result<Resp, Error> {
        // Requests the `Sink` still holds go first.
        self.sink.flush(&self.stream).await?;
        self.close_send()?;
        match self.recv().await {
            Ok(Some(resp)) => {
                // The call is complete: end it as a unary call does (Close,
                // unless the server's CloseSend already ended the stream),
                // so that dropping it afterwards cancels nothing.
                self.stream.close()?;
                Ok(resp)
            }
            Ok(None) => Err(StreamError::new(self.id(), StreamErrorKind::Eof).into()),
            Err(e) => Err(e),
        }
    }

    /// Cancels the call: Cancel goes on the wire, later receives fail as
    /// cancelled.
    pub fn cancel(&self) {
        self.stream
            .cancel(StreamErrorKind::Canceled(Initiator::Local));
    }

    /// Ends the call with Close (after a server-streaming or unary-style
    /// exchange, once no more responses are wanted).
    pub fn close(&self) -> Result<(), Error> {
        Ok(self.stream.close()?)
    }

    /// Splits into a sending and a receiving half, for sending and
    /// receiving from different tasks. Dropping the sending half ends the
    /// request side (CloseSend); the call is cancelled when both halves
    /// are dropped before it ended.
    pub fn split(self) -> (ClientSender<Req, E>, ClientReceiver<Resp, E>) {
        let watchdog = self.watchdog.map(Arc::new);
        (
            ClientSender {
                stream: self.stream.clone(),
                encoding: self.encoding.clone(),
                buf: self.buf,
                batch: self.batch_out,
                sink: self.sink,
                _watchdog: watchdog.clone(),
                _req: PhantomData,
            },
            ClientReceiver {
                stream: self.stream,
                encoding: self.encoding,
                batch: self.batch,
                done: self.recv_done,
                _watchdog: watchdog,
                _resp: PhantomData,
            },
        )
    }
}

/// The responses, until the server's clean end or the first error (which
/// is the last item).
impl<Req, Resp, E> futures_core::Stream for ClientStream<Req, Resp, E>
where
    E: Encoding<Req> + Encoding<Resp>,
{
    type Item = Result<Resp, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_next_response(
            &this.stream,
            &mut this.batch,
            &*this.encoding,
            &mut this.recv_done,
            cx,
        )
    }
}

/// Requests, sent as [`ClientSender`]'s `Sink` sends them.
impl<Req, Resp, E> Sink<Req> for ClientStream<Req, Resp, E>
where
    E: Encoding<Req> + Encoding<Resp>,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_ready(&this.stream, cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Req) -> Result<(), Error> {
        let this = self.get_mut();
        this.sink.start_send(&this.stream, &*this.encoding, &item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_flush(&this.stream, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_close(&this.stream, cx)
    }
}

/// The sending half of a [`ClientStream`].
///
/// Besides its methods it is a [`futures_sink::Sink`] of requests:
/// `start_send` encodes a request and keeps it, `poll_flush` sends what
/// it keeps, small requests together in one batch (as
/// [`ClientSender::send_all`]), and `poll_ready` sends them first once
/// they reach 64 KiB or a large request is waiting, waiting for
/// flow-control credit and room in the connection's write buffer as
/// `send` does. So `SinkExt::send_all` of a run of ready requests sends
/// them in batches, and `SinkExt::send` sends one request and waits
/// until it has left. `poll_close` flushes, then ends the request side
/// (CloseSend). A request over the connection's maximum message size fails
/// `start_send` at once (the call goes on, the requests kept before it
/// stay); one that does not encode fails it with [`Error::Encode`].
///
/// The inherent `send` and `send_all` (by reference, sent at once) come
/// before `SinkExt`'s in method calls: name the trait for the `Sink`'s,
/// as in `SinkExt::send(&mut sender, msg)`. The inherent ones first send
/// what the `Sink` keeps, so the order of requests is always kept.
///
/// Dropping the sender ends the request side (CloseSend), as tonic does,
/// without cancelling the call: the receiving half still gets the
/// responses. Requests kept by the `Sink` and not flushed are then not
/// sent.
pub struct ClientSender<Req, E> {
    stream: Arc<Stream>,
    encoding: Arc<E>,
    buf: MessageBuf,
    batch: MessageBatch,
    sink: SinkState,
    _watchdog: Option<Arc<AbortOnDrop>>,
    _req: PhantomData<fn(Req)>,
}

/// The receiving half of a [`ClientStream`].
///
/// Besides its methods it is a [`futures_core::Stream`] of
/// `Result<Resp, Error>`: the responses until the server's clean end, or
/// until the first error, which is the last item (for combinators such as
/// `StreamExt::map` and `collect`, or `TryStreamExt::try_collect`).
pub struct ClientReceiver<Resp, E> {
    stream: Arc<Stream>,
    encoding: Arc<E>,
    batch: RecvBatch,
    /// Whether the `Stream` has ended.
    done: bool,
    _watchdog: Option<Arc<AbortOnDrop>>,
    _resp: PhantomData<fn() -> Resp>,
}

impl<Req, E> fmt::Debug for ClientSender<Req, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSender")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl<Resp, E> fmt::Debug for ClientReceiver<Resp, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientReceiver")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl<Req, E: Encoding<Req>> ClientSender<Req, E> {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.stream.id()
    }

    /// Sends one request (after those the `Sink` holds).
    pub async fn send(&mut self, msg: &Req) -> Result<(), Error> {
        self.sink.flush(&self.stream).await?;
        send_encoded(&self.stream, &*self.encoding, &mut self.buf, msg).await
    }

    /// Sends several requests, as [`ClientStream::send_all`] does.
    pub async fn send_all<'a, I>(&mut self, msgs: I) -> Result<(), Error>
    where
        Req: 'a,
        I: IntoIterator<Item = &'a Req>,
    {
        self.sink.flush(&self.stream).await?;
        send_all(
            &self.stream,
            &*self.encoding,
            &mut self.batch,
            &mut self.buf,
            msgs,
        )
        .await
    }

    /// Closes the sending side (CloseSend). Requests given to the `Sink`
    /// and not flushed are not sent: flush first, or close through the
    /// `Sink` (`SinkExt::close`), which flushes.
    pub fn close_send(&self) -> Result<(), Error> {
        Ok(self.stream.close_send()?)
    }
}

/// Ends the request side with CloseSend, unless the call has ended or
/// CloseSend was sent already; the call goes on for the receiving half.
/// A sender dropped with requests its `Sink` still holds, or in the middle
/// of sending them, cancels the call instead: a clean end would let the
/// server take a cut-off request stream for a whole one.
impl<Req, E> Drop for ClientSender<Req, E> {
    fn drop(&mut self) {
        if self.sink.holds_unsent() {
            self.stream
                .cancel(StreamErrorKind::Canceled(Initiator::Local));
        } else {
            let _ = self.stream.close_send();
        }
    }
}

impl<Req, E: Encoding<Req>> Sink<Req> for ClientSender<Req, E> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_ready(&this.stream, cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Req) -> Result<(), Error> {
        let this = self.get_mut();
        this.sink.start_send(&this.stream, &*this.encoding, &item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_flush(&this.stream, cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        this.sink.poll_close(&this.stream, cx)
    }
}

impl<Resp, E: Encoding<Resp>> ClientReceiver<Resp, E> {
    /// Receives the next response; `Ok(None)` at the server's clean end.
    pub async fn recv(&mut self) -> Result<Option<Resp>, Error> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The poll form of [`ClientReceiver::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Resp>, Error>> {
        poll_decode(&self.stream, &mut self.batch, &*self.encoding, cx)
    }

    /// The stream id.
    pub fn id(&self) -> u64 {
        self.stream.id()
    }
}

impl<Resp, E: Encoding<Resp>> futures_core::Stream for ClientReceiver<Resp, E> {
    type Item = Result<Resp, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        poll_next_response(
            &this.stream,
            &mut this.batch,
            &*this.encoding,
            &mut this.done,
            cx,
        )
    }
}

/// [`poll_decode`] as a `Stream`'s item: `None` after the end or an error.
fn poll_next_response<Resp, E: Encoding<Resp>>(
    stream: &Stream,
    batch: &mut RecvBatch,
    encoding: &E,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Resp, Error>>> {
    if *done {
        return Poll::Ready(None);
    }
    let next = ready!(poll_decode(stream, batch, encoding, cx)).transpose();
    if !matches!(next, Some(Ok(_))) {
        *done = true;
    }
    Poll::Ready(next)
}

/// How many bytes of small requests a `Sink` keeps before `poll_ready`
/// sends them.
const SINK_FLUSH_BYTES: usize = 64 << 10;

/// A request larger than this is kept on its own and sent without a copy
/// into the batch (by [`Stream::send_encoded`]); `poll_ready` sends it
/// before taking another.
const SINK_BATCH_MESSAGE_MAX: usize = 16 << 10;

/// A flush in flight: it gives the buffers back when done.
type Flush = Pin<Box<dyn Future<Output = (SinkBuffers, Result<(), StreamError>)> + Send>>;

/// The requests a `Sink` keeps until they are flushed.
#[derive(Debug, Default)]
struct SinkBuffers {
    /// Small requests, sent together.
    batch: MessageBatch,
    /// A large request after them (holding the large buffers of the
    /// message uncopied), then any request given after it without
    /// `poll_ready`, in order.
    tail: Vec<MessageBuf>,
    /// Where a request is encoded.
    scratch: MessageBuf,
}

impl SinkBuffers {
    fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.tail.is_empty()
    }

    /// Sends what is kept: the batch, then the others, in order.
    async fn send(mut self, stream: Arc<Stream>) -> (SinkBuffers, Result<(), StreamError>) {
        let mut result = Ok(());
        if !self.batch.is_empty() {
            result = stream.send_batch(&mut self.batch).await;
        }
        for mut msg in self.tail.drain(..) {
            if result.is_ok() {
                result = stream.send_encoded(&mut msg).await;
            }
            // Keep one allocation for the next request to encode.
            msg.clear();
            self.scratch = msg;
        }
        (self, result)
    }
}

/// The `Sink` side of a call: requests encoded by `start_send`, sent by
/// `poll_flush`.
struct SinkState {
    /// `None` while a flush has them.
    buffers: Option<SinkBuffers>,
    flushing: Option<Flush>,
    /// The largest request the connection sends.
    max_message: usize,
}

impl fmt::Debug for SinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkState")
            .field("buffers", &self.buffers)
            .field("flushing", &self.flushing.is_some())
            .finish()
    }
}

impl SinkState {
    /// Whether requests given to the `Sink` were not all sent: some are
    /// kept, or a flush is under way.
    fn holds_unsent(&self) -> bool {
        self.flushing.is_some() || self.buffers.as_ref().is_some_and(|b| !b.is_empty())
    }

    fn new(max_message: usize) -> SinkState {
        SinkState {
            buffers: Some(SinkBuffers::default()),
            flushing: None,
            max_message,
        }
    }

    /// Drives the flush in flight to its end.
    fn poll_flushing(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(flush) = &mut self.flushing {
            let (buffers, result) = ready!(flush.as_mut().poll(cx));
            self.flushing = None;
            self.buffers = Some(buffers);
            result?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_flush(&mut self, stream: &Arc<Stream>) {
        if let Some(buffers) = self.buffers.take_if(|b| !b.is_empty()) {
            self.flushing = Some(Box::pin(buffers.send(stream.clone())));
        }
    }

    fn buffers(&mut self) -> &mut SinkBuffers {
        self.buffers.get_or_insert_with(SinkBuffers::default)
    }

    /// Ready once nothing is in flight and the requests kept are below
    /// [`SINK_FLUSH_BYTES`], with no large one among them; sends them
    /// first otherwise.
    fn poll_ready(
        &mut self,
        stream: &Arc<Stream>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        ready!(self.poll_flushing(cx))?;
        let buffers = self.buffers();
        if !buffers.tail.is_empty() || buffers.batch.bytes() >= SINK_FLUSH_BYTES {
            self.start_flush(stream);
            ready!(self.poll_flushing(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send<T, E: Encoding<T>>(
        &mut self,
        stream: &Stream,
        encoding: &E,
        msg: &T,
    ) -> Result<(), Error> {
        let max_message = self.max_message;
        let buffers = self.buffers();
        let scratch = &mut buffers.scratch;
        scratch.clear();
        encoding.encode_to(msg, scratch).map_err(Error::Encode)?;
        let size = scratch.len();
        if size > max_message {
            let kind = StreamErrorKind::MessageTooLarge {
                size,
                limit: max_message,
            };
            return Err(StreamError::new(stream.id(), kind).into());
        }
        match scratch.as_contiguous() {
            Some(bytes) if size <= SINK_BATCH_MESSAGE_MAX && buffers.tail.is_empty() => {
                buffers.batch.push_encoded(bytes);
            }
            // A large request, or any after one (`start_send` without
            // `poll_ready`), waits on its own.
            _ => buffers.tail.push(std::mem::take(scratch)),
        }
        Ok(())
    }

    fn poll_flush(
        &mut self,
        stream: &Arc<Stream>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        ready!(self.poll_flushing(cx))?;
        self.start_flush(stream);
        self.poll_flushing(cx)
    }

    fn poll_close(
        &mut self,
        stream: &Arc<Stream>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        ready!(self.poll_flush(stream, cx))?;
        Poll::Ready(stream.close_send().map_err(Error::from))
    }

    /// Sends whatever the `Sink` keeps (nothing to do, usually).
    async fn flush(&mut self, stream: &Arc<Stream>) -> Result<(), Error> {
        if self.flushing.is_none() && self.buffers.as_ref().is_none_or(SinkBuffers::is_empty) {
            return Ok(());
        }
        std::future::poll_fn(|cx| self.poll_flush(stream, cx)).await
    }
}

/// Receives the next message of `stream` through `batch` and decodes it.
fn poll_decode<Resp, E: Encoding<Resp>>(
    stream: &Stream,
    batch: &mut RecvBatch,
    encoding: &E,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Resp>, Error>> {
    Poll::Ready(match ready!(batch.poll_recv(stream, cx)) {
        Ok(None) => Ok(None),
        Ok(Some(data)) => encoding.decode(data).map(Some).map_err(Error::Decode),
        Err(e) => Err(e.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpc_manager::{
        DEFAULT_CONNECTION_MEMORY, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_SHARED_MEMORY,
        DEFAULT_SHARED_WRITE_MEMORY,
    };
    use drpc_stream::{
        DEFAULT_RECV_QUEUE_BYTES, DEFAULT_RECV_QUEUE_MESSAGES, DEFAULT_WRITER_HIGH_WATER,
        FlowControlMode,
    };

    #[test]
    fn new_is_the_documented_defaults() {
        let opts = ConnOptions::new();
        let m = &opts.manager;
        assert_eq!(m.stream.max_packet_size, crate::DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(m.max_concurrent_streams, DEFAULT_MAX_CONCURRENT_STREAMS);
        assert_eq!(m.stream.flow_control, FlowControl::auto());
        assert_eq!(m.stream.recv_queue_messages, DEFAULT_RECV_QUEUE_MESSAGES);
        assert_eq!(m.stream.recv_queue_bytes, DEFAULT_RECV_QUEUE_BYTES);
        assert_eq!(m.max_connection_memory, DEFAULT_CONNECTION_MEMORY);
        assert_eq!(
            m.shared_memory.as_ref().map(|b| b.limit()),
            Some(DEFAULT_SHARED_MEMORY)
        );
        assert_eq!(
            m.shared_write_memory.as_ref().map(|b| b.limit()),
            Some(DEFAULT_SHARED_WRITE_MEMORY)
        );
        assert_eq!(m.writer_high_water, DEFAULT_WRITER_HIGH_WATER);
        assert_eq!(m.stream.split_size, 0);
        assert!(!m.sequential);
        assert_eq!(m.compression, None);
    }

    #[test]
    fn max_message_size_sets_the_packet_limit() {
        let opts = ConnOptions::new().max_message_size(16 << 20);
        assert_eq!(opts.manager.stream.max_packet_size, 16 << 20);
    }

    #[test]
    fn max_concurrent_streams_sets_the_stream_limit() {
        let opts = ConnOptions::new().max_concurrent_streams(7);
        assert_eq!(opts.manager.max_concurrent_streams, 7);
    }

    #[test]
    fn flow_control_sets_the_streams_flow_control() {
        let fc = FlowControl::fork()
            .with_window(1 << 20, 256 << 10)
            .expect("live");
        let opts = ConnOptions::new().flow_control(fc);
        assert_eq!(opts.manager.stream.flow_control, fc);
        assert_eq!(
            opts.manager.stream.flow_control.mode(),
            FlowControlMode::Fork
        );
        let opts = ConnOptions::new().flow_control(FlowControl::off());
        assert_eq!(
            opts.manager.stream.flow_control.mode(),
            FlowControlMode::Off
        );
    }

    #[test]
    fn recv_queue_sets_both_bounds() {
        let opts = ConnOptions::new().recv_queue(3, 4096);
        assert_eq!(opts.manager.stream.recv_queue_messages, 3);
        assert_eq!(opts.manager.stream.recv_queue_bytes, 4096);
    }

    #[test]
    fn max_connection_memory_sets_the_connection_budget() {
        let opts = ConnOptions::new().max_connection_memory(1 << 20);
        assert_eq!(opts.manager.max_connection_memory, 1 << 20);
    }

    #[test]
    fn shared_memory_makes_a_budget_clones_share() {
        let opts = ConnOptions::new().shared_memory(Some(5 << 20));
        let budget = opts.manager.shared_memory.clone().expect("a budget");
        assert_eq!(budget.limit(), 5 << 20);
        let clone = opts.clone();
        assert!(Arc::ptr_eq(
            &budget,
            clone.manager.shared_memory.as_ref().expect("shared")
        ));
        assert!(
            ConnOptions::new()
                .shared_memory(None)
                .manager
                .shared_memory
                .is_none()
        );
    }

    #[test]
    fn shared_memory_budget_shares_a_given_budget() {
        let budget = Arc::new(MemoryBudget::new(1 << 20, None));
        let a = ConnOptions::new().shared_memory_budget(Some(budget.clone()));
        let b = ConnOptions::sequential().shared_memory_budget(Some(budget.clone()));
        assert!(Arc::ptr_eq(
            &budget,
            a.manager.shared_memory.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            &budget,
            b.manager.shared_memory.as_ref().unwrap()
        ));
        assert!(
            ConnOptions::new()
                .shared_memory_budget(None)
                .manager
                .shared_memory
                .is_none()
        );
    }

    #[test]
    fn shared_write_memory_makes_a_write_budget() {
        let opts = ConnOptions::new().shared_write_memory(Some(3 << 20));
        assert_eq!(
            opts.manager.shared_write_memory.as_ref().map(|b| b.limit()),
            Some(3 << 20)
        );
        // The read budget is left alone.
        assert_eq!(
            opts.manager.shared_memory.as_ref().map(|b| b.limit()),
            Some(DEFAULT_SHARED_MEMORY)
        );
        assert!(
            ConnOptions::new()
                .shared_write_memory(None)
                .manager
                .shared_write_memory
                .is_none()
        );
    }

    #[test]
    fn shared_write_memory_budget_shares_a_given_budget() {
        let budget = Arc::new(MemoryBudget::new(1 << 20, None));
        let opts = ConnOptions::new().shared_write_memory_budget(Some(budget.clone()));
        assert!(Arc::ptr_eq(
            &budget,
            opts.manager.shared_write_memory.as_ref().unwrap()
        ));
        assert!(
            ConnOptions::new()
                .shared_write_memory_budget(None)
                .manager
                .shared_write_memory
                .is_none()
        );
    }

    #[test]
    fn write_buffer_size_sets_the_writer_bound() {
        let opts = ConnOptions::new().write_buffer_size(64 << 10);
        assert_eq!(opts.manager.writer_high_water, 64 << 10);
    }

    #[test]
    fn split_size_sets_the_frame_size() {
        let opts = ConnOptions::new().split_size(1024);
        assert_eq!(opts.manager.stream.split_size, 1024);
    }

    #[test]
    fn sequential_mode_turns_sequential_on_and_off() {
        assert!(ConnOptions::new().sequential_mode(true).manager.sequential);
        assert!(
            !ConnOptions::sequential()
                .sequential_mode(false)
                .manager
                .sequential
        );
        assert!(ConnOptions::sequential().manager.sequential);
    }

    #[test]
    fn compression_sets_every_calls_compression() {
        let opts = ConnOptions::new().compression(Compression::Snappy);
        assert_eq!(opts.manager.compression, Some(Compression::Snappy));
    }

    #[test]
    fn fork_flow_control_sets_the_forks_settings() {
        let opts = ConnOptions::fork_flow_control();
        assert_eq!(opts.manager.stream.flow_control, FlowControl::fork());
        assert_eq!(
            opts.manager.stream.max_packet_size,
            FlowControl::FORK_MAX_MESSAGE
        );
    }

    #[test]
    fn builders_leave_the_other_settings_alone() {
        let opts = ConnOptions::new()
            .max_message_size(1)
            .max_concurrent_streams(2)
            .recv_queue(3, 4)
            .max_connection_memory(5)
            .write_buffer_size(6)
            .split_size(7)
            .sequential_mode(true)
            .compression(Compression::Snappy)
            .flow_control(FlowControl::off());
        let m = &opts.manager;
        assert_eq!(
            (
                m.stream.max_packet_size,
                m.max_concurrent_streams,
                m.stream.recv_queue_messages,
                m.stream.recv_queue_bytes,
                m.max_connection_memory,
                m.writer_high_water,
                m.stream.split_size,
            ),
            (1, 2, 3, 4, 5, 6, 7)
        );
        assert!(m.sequential);
        assert_eq!(m.compression, Some(Compression::Snappy));
        assert_eq!(m.stream.flow_control, FlowControl::off());
    }
}
