//! The connection: its tasks, its stream registry and its termination.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Poll;

use bytes::Bytes;
use drpc_stream::{
    Batch, ConnectionError, FlowControl, FlowControlMode, Initiator, MemoryBudget, MessageBuf,
    MuxDrain, MuxWriter, Stream, StreamError, StreamErrorKind, StreamHandle, StreamKind,
    new_stream_with_compression,
};
use drpc_wire::{
    COMPRESSION_METADATA_KEY, Code, CodedError, Compression, CompressionSet, ConnectionIdOrder,
    FLOW_CONTROL_METADATA_KEY, FlowNegotiation, FlowParams, Frame, FrameHead, FrameReader, Id,
    Kind, MIGRATION_HEADER, Metadata, ReadError, Sniffed, WindowUpdate, append_frame, sniff,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::invoke::{IdHasher, Invoke, PendingInvokes};
use crate::{ManagerOptions, Role};

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A stream the peer opened, as handed to the server's accept loop.
#[derive(Debug)]
pub struct Incoming {
    /// The stream, registered and receiving.
    pub stream: Stream,
    /// The RPC path from the Invoke, e.g. `/service.Service/Method1`
    /// (bytes that are not UTF-8 are replaced, so they match no route).
    pub rpc: String,
    /// The metadata of the InvokeMetadata that came with it, if any.
    pub metadata: Metadata,
}

/// Where the reader hands the streams the peer opens.
enum Acceptor {
    /// A bounded queue drained by [`Manager::accept`].
    Queue(mpsc::Sender<Incoming>),
    /// A callback run on the reader task ([`Manager::with_acceptor`]), with
    /// the streams opened by the frames read so far, not yet handed to it.
    Callback(Box<dyn FnMut(Incoming) + Send>, Vec<Incoming>),
}

impl Acceptor {
    /// Hands the callback the streams opened since the last call.
    ///
    /// The reader calls this when it is about to wait (for the transport,
    /// or for room in the connection's memory budget) and before it routes a frame of
    /// another stream, so that a stream's first messages, which usually
    /// arrive in the same read as its Invoke, are queued before its
    /// handler first runs: a unary handler then finds its request at once.
    fn flush(&mut self) {
        if let Acceptor::Callback(on_incoming, ready) = self {
            ready.drain(..).for_each(on_incoming);
        }
    }

    /// Hands the callback its streams unless the next frame, of `stream`,
    /// is theirs: a transport that never runs dry must not hold a stream
    /// back once its own frames have passed.
    fn flush_unless_for(&mut self, stream: u64) {
        if let Acceptor::Callback(_, ready) = self
            && !ready.is_empty()
            && !ready.iter().any(|incoming| incoming.stream.id() == stream)
        {
            self.flush();
        }
    }
}

/// Polls `fut` once; `None` if it is not ready.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}

/// One DRPC connection over a transport.
///
/// Creating a manager spawns two tokio tasks: a reader, the single
/// authority on the transport's health, and a writer that drains every
/// stream's frames in batches. The handle is cheap to clone; the
/// connection ends when [`Manager::close`] is called, when the transport
/// or the peer fails, or when the last handle and the last stream it
/// opened are gone (after writing, for at most a second, what its streams
/// had already sent).
#[derive(Clone)]
pub struct Manager {
    handle: Arc<Handle>,
}

/// Closes the connection when the last [`Manager`] clone is dropped.
struct Handle {
    inner: Arc<Inner>,
}

/// How long a dropped manager keeps writing what its streams already sent.
const FLUSH_ON_DROP: std::time::Duration = std::time::Duration::from_secs(1);

impl Drop for Handle {
    fn drop(&mut self) {
        // Like closing a socket, dropping the last handle still delivers
        // what was already sent (a server's last response, say), for a
        // bounded time; an explicit `close` discards it.
        let inner = self.inner.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if inner.term.get().is_none() => {
                runtime.spawn(async move {
                    let flushed = poll_fn(|cx| inner.writer.poll_idle(cx));
                    let _ = tokio::time::timeout(FLUSH_ON_DROP, flushed).await;
                    inner.terminate(ConnectionError::Closed);
                });
            }
            _ => inner.terminate(ConnectionError::Closed),
        }
    }
}

/// How many unary calls of a connection offer flow control to learn what
/// the server decompresses before giving up on an answer.
const MAX_UNARY_PROBES: u64 = 4;

struct Inner {
    role: Role,
    opts: ManagerOptions,
    writer: Arc<MuxWriter>,
    /// The writer task's side of `writer`, which only the connection holds.
    drain: MuxDrain,
    /// Told of each new stream, for a reader out of memory: a stream that
    /// was alone may have to shed what it queued past its bounds.
    registered: Notify,
    registry: Mutex<Registry>,
    term: OnceLock<ConnectionError>,
    term_token: CancellationToken,
    next_stream_id: AtomicU64,
    next_serial: AtomicU64,
    /// The bits of the [`CompressionSet`] the server last said it
    /// decompresses (a client's connection; empty until it says).
    peer_compressions: AtomicU64,
    /// Whether the server has accepted a flow-control offer, and so said
    /// what it decompresses.
    peer_answered: AtomicBool,
    /// Unary calls that offered flow control to learn that, while no
    /// answer came: bounded by [`MAX_UNARY_PROBES`].
    unary_probes: AtomicU64,
    /// Whether a call asked to learn what the server decompresses
    /// ([`Manager::learn_peer_compressions`]).
    probe_wanted: AtomicBool,
    sequential: Option<Arc<Semaphore>>,
    /// Streams waiting for [`Manager::accept`]; `None` when a callback
    /// takes them ([`Manager::with_acceptor`]).
    accept: Option<tokio::sync::Mutex<mpsc::Receiver<Incoming>>>,
    tasks: TaskTracker,
    span: tracing::Span,
}

#[derive(Default)]
struct Registry {
    /// Active streams by id, each with a serial number so that a stream's
    /// removal never removes a later stream that reused its id.
    streams: HashMap<u64, (u64, StreamHandle), IdHasher>,
    /// Registered streams that have not terminated: a stream leaves this
    /// count before its last packet is written, and leaves `streams` just
    /// after, so the stream limit is checked against this, in O(1).
    live: Arc<AtomicUsize>,
    /// Streams registered so far.
    registrations: u64,
    closed: Option<ConnectionError>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.handle.inner;
        f.debug_struct("Manager")
            .field("role", &inner.role)
            .field("streams", &inner.active_streams())
            .field("terminated", &inner.term.get())
            .finish()
    }
}

impl Manager {
    /// Starts a connection over `transport`. Must be called within a tokio
    /// runtime.
    pub fn new<T>(transport: T, role: Role, opts: ManagerOptions) -> Manager
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (accept_tx, accept_rx) = mpsc::channel(opts.accept_backlog.max(1));
        Manager::start(
            transport,
            role,
            opts,
            Acceptor::Queue(accept_tx),
            Some(accept_rx),
        )
    }

    /// Starts a server-side connection that hands each stream the peer
    /// opens to `on_incoming` instead of queueing it for
    /// [`Manager::accept`]. The callback runs on the connection's reader
    /// task, once the frames that arrived with the stream's Invoke (in the
    /// same read) have been routed, and in any case before the reader waits
    /// for room in the connection's memory budget: a unary handler started from it finds
    /// its request already there. It must not block: it is meant to start
    /// the work that serves the stream (or to refuse it), which saves a
    /// task switch per RPC over an accept loop. [`Manager::accept`] on such
    /// a manager waits for the connection to end and returns its error.
    pub fn with_acceptor<T, F>(transport: T, opts: ManagerOptions, on_incoming: F) -> Manager
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
        F: FnMut(Incoming) + Send + 'static,
    {
        let acceptor = Acceptor::Callback(Box::new(on_incoming), Vec::new());
        Manager::start(transport, Role::Server, opts, acceptor, None)
    }

    fn start<T>(
        transport: T,
        role: Role,
        opts: ManagerOptions,
        acceptor: Acceptor,
        accept_rx: Option<mpsc::Receiver<Incoming>>,
    ) -> Manager
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut opts = opts;
        if opts.sequential && opts.stream.flow_control.mode() == FlowControlMode::Auto {
            // One stream at a time to a stock peer: nothing to negotiate,
            // and nothing it does not know is sent.
            opts.stream.flow_control = FlowControl::off();
        }
        let (read_half, write_half) = tokio::io::split(transport);
        let conn = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("drpc.manager", conn, role = ?role);
        let budget = Arc::new(MemoryBudget::new(
            opts.max_connection_memory,
            opts.shared_memory.clone(),
        ));
        let writer = Arc::new(MuxWriter::with_budgets(
            opts.writer_high_water,
            budget,
            opts.shared_write_memory.clone(),
        ));
        let Some(drain) = writer.drain() else {
            unreachable!("a new writer's drain is free");
        };
        let inner = Arc::new(Inner {
            role,
            writer,
            drain,
            registered: Notify::new(),
            registry: Mutex::new(Registry::default()),
            term: OnceLock::new(),
            term_token: CancellationToken::new(),
            next_stream_id: AtomicU64::new(0),
            next_serial: AtomicU64::new(0),
            peer_compressions: AtomicU64::new(0),
            peer_answered: AtomicBool::new(false),
            unary_probes: AtomicU64::new(0),
            probe_wanted: AtomicBool::new(false),
            sequential: opts.sequential.then(|| Arc::new(Semaphore::new(1))),
            accept: accept_rx.map(tokio::sync::Mutex::new),
            tasks: TaskTracker::new(),
            span: span.clone(),
            opts,
        });
        inner
            .tasks
            .spawn(run_reader(inner.clone(), read_half, acceptor).instrument(span.clone()));
        inner
            .tasks
            .spawn(run_writer(inner.clone(), write_half).instrument(span));
        inner.tasks.close();
        tracing::debug!(parent: &inner.span, "connection started");
        Manager {
            handle: Arc::new(Handle { inner }),
        }
    }

    /// Which side this manager is.
    pub fn role(&self) -> Role {
        self.handle.inner.role
    }

    /// The settings in force.
    pub fn options(&self) -> &ManagerOptions {
        &self.handle.inner.opts
    }

    /// What the server has said it decompresses, on a client's connection:
    /// a server of this implementation lists it when it accepts a stream's
    /// flow-control offer; empty until then, and for every other server.
    pub fn peer_compressions(&self) -> CompressionSet {
        CompressionSet::from_bits(self.handle.inner.peer_compressions.load(Ordering::Relaxed))
    }

    /// Makes a unary call offer flow control while the connection waits
    /// to learn what the server decompresses
    /// ([`ManagerOptions::compression_if_accepted`]); streams offer it
    /// anyway. At most [`MAX_UNARY_PROBES`] calls do, so that a server that
    /// never answers (stock Go, the fork) is not sent the offer for ever.
    fn probe_on_unary(&self, handle: &StreamHandle) {
        let inner = &self.handle.inner;
        let wanted = (inner.opts.compression_if_accepted.is_some()
            && inner.opts.compression.is_none())
            || inner.probe_wanted.load(Ordering::Relaxed);
        if !wanted || inner.peer_answered.load(Ordering::Relaxed) {
            return;
        }
        if inner.unary_probes.fetch_add(1, Ordering::Relaxed) < MAX_UNARY_PROBES {
            handle.offer_flow_control_on_unary();
        }
    }

    /// Asks the next unary calls to learn what the server decompresses
    /// (as [`ManagerOptions::compression_if_accepted`] does), for a call
    /// that compresses only if the server accepts it; streams learn it
    /// anyway.
    pub fn learn_peer_compressions(&self) {
        self.handle
            .inner
            .probe_wanted
            .store(true, Ordering::Relaxed);
    }

    /// The compression a stream opened now without an explicit choice
    /// gets: [`ManagerOptions::compression`], else
    /// [`ManagerOptions::compression_if_accepted`] once the server has
    /// said it decompresses it ([`Manager::peer_compressions`]).
    pub fn default_compression(&self) -> Option<Compression> {
        let opts = &self.handle.inner.opts;
        opts.compression.or_else(|| {
            opts.compression_if_accepted
                .filter(|c| self.peer_compressions().contains(*c))
        })
    }

    /// Opens a stream for `rpc`: writes InvokeMetadata (when `metadata` is
    /// non-empty) and Invoke, and returns the stream to send and receive on.
    ///
    /// In sequential mode this first waits until the previous stream has
    /// terminated. Errors before an id was allocated carry stream id 0.
    /// The stream is compressed as [`ManagerOptions::compression`] says.
    pub async fn open_stream(&self, rpc: &str, metadata: &Metadata) -> Result<Stream, StreamError> {
        self.open_stream_with(rpc, metadata, self.default_compression())
            .await
    }

    /// As [`Manager::open_stream`], with the stream's compression chosen
    /// here (`None`: none, whatever the options say). A compressed stream
    /// carries `drpc-compression` in its InvokeMetadata (an application's
    /// own value for that key is never sent) and compresses every Message
    /// both ways; see [`ManagerOptions::compression`] for which servers
    /// accept it.
    pub async fn open_stream_with(
        &self,
        rpc: &str,
        metadata: &Metadata,
        compression: Option<Compression>,
    ) -> Result<Stream, StreamError> {
        let (stream, handle) = self.new_client_stream(rpc, compression).await?;
        handle.write_invoke(rpc.as_bytes(), metadata)?;
        Ok(stream)
    }

    /// Opens a stream for a unary call: Invoke, `message` and CloseSend are
    /// appended together, so that they leave in one write when the
    /// connection is idle. The response is then received on the stream.
    pub async fn open_unary(
        &self,
        rpc: &str,
        metadata: &Metadata,
        message: Bytes,
    ) -> Result<Stream, StreamError> {
        // Refused before any id is spent or anything is written.
        self.handle
            .inner
            .opts
            .stream
            .check_message_size(message.len())
            .map_err(|e| StreamError::new(0, e))?;
        let compression = self.default_compression();
        let (stream, handle) = self.new_client_stream(rpc, compression).await?;
        self.probe_on_unary(&handle);
        handle.write_unary(rpc.as_bytes(), metadata, &message)?;
        Ok(stream)
    }

    /// As [`Manager::open_unary`], with the request encoded in `buf`, which
    /// it empties: a small request is copied straight into the connection's
    /// write buffer, so `buf` keeps its allocation for the next call.
    pub async fn open_unary_encoded(
        &self,
        rpc: &str,
        metadata: &Metadata,
        buf: &mut MessageBuf,
    ) -> Result<Stream, StreamError> {
        self.open_unary_encoded_with(rpc, metadata, buf, self.default_compression())
            .await
    }

    /// As [`Manager::open_unary_encoded`], with the call's compression
    /// chosen here, as [`Manager::open_stream_with`] does. A request that
    /// is over the maximum packet size once compressed (incompressible
    /// data grows a little) is refused with nothing written.
    pub async fn open_unary_encoded_with(
        &self,
        rpc: &str,
        metadata: &Metadata,
        buf: &mut MessageBuf,
        compression: Option<Compression>,
    ) -> Result<Stream, StreamError> {
        if let Err(e) = self.handle.inner.opts.stream.check_message_size(buf.len()) {
            buf.clear();
            return Err(StreamError::new(0, e));
        }
        let (stream, handle) = match self.new_client_stream(rpc, compression).await {
            Ok(opened) => opened,
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        };
        self.probe_on_unary(&handle);
        handle.write_unary_encoded(rpc.as_bytes(), metadata, buf)?;
        Ok(stream)
    }

    /// Allocates and registers a client stream (waiting for its turn in
    /// sequential mode); nothing is written yet.
    async fn new_client_stream(
        &self,
        rpc: &str,
        compression: Option<Compression>,
    ) -> Result<(Stream, StreamHandle), StreamError> {
        let inner = &self.handle.inner;
        if let Some(err) = inner.term.get() {
            return Err(StreamError::new(
                0,
                StreamErrorKind::ConnectionLost(err.clone()),
            ));
        }
        let permit = match &inner.sequential {
            Some(sem) => Some(inner.acquire_turn(sem.clone()).await?),
            None => None,
        };
        let id = inner.next_stream_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (stream, handle) = new_stream_with_compression(
            id,
            StreamKind::Client,
            inner.writer.clone(),
            &inner.opts.stream,
            compression,
        );
        // An open stream keeps its connection open, even once every other
        // handle on the connection is gone; the guard goes at termination.
        let keep_open = self.handle.clone();
        if let Err(err) = inner.register(id, &handle, permit, keep_open) {
            // Never registered, nothing on the wire: end it silently so that
            // dropping it sends nothing either.
            handle.connection_lost(err.kind().clone());
            return Err(err);
        }
        tracing::debug!(parent: &inner.span, stream = id, rpc, "open stream");
        Ok((stream, handle))
    }

    /// Waits for the next stream the peer opens. Fails with the
    /// connection's error once it has ended.
    pub async fn accept(&self) -> Result<Incoming, ConnectionError> {
        let inner = &self.handle.inner;
        let ended = || inner.term.get().cloned().unwrap_or(ConnectionError::Closed);
        let Some(accept) = &inner.accept else {
            return Err(self.closed().await);
        };
        let mut rx = accept.lock().await;
        match rx.recv().await {
            // Streams still queued when the connection ended are already
            // over: the connection's end is the answer, and they are freed.
            Some(incoming) if inner.term.get().is_some() => {
                // `terminate` ends every registered stream before it
                // cancels the token: dropped after, they send nothing.
                inner.term_token.cancelled().await;
                drop(incoming);
                rx.close();
                while rx.try_recv().is_ok() {}
                Err(ended())
            }
            Some(incoming) => Ok(incoming),
            None => Err(ended()),
        }
    }

    /// Ends the connection: every stream fails with
    /// [`ConnectionError::Closed`], unsent bytes are discarded, the
    /// transport is closed. Returns once both tasks have exited.
    pub async fn close(&self) {
        let inner = &self.handle.inner;
        inner.terminate(ConnectionError::Closed);
        inner.tasks.wait().await;
    }

    /// Closes the connection after everything already sent by its streams
    /// has been written to the transport, waiting at most `timeout` for
    /// that; then as [`Manager::close`]. Streams still open end as with
    /// `close`.
    pub async fn close_gracefully(&self, timeout: std::time::Duration) {
        let inner = &self.handle.inner;
        let flushed = poll_fn(|cx| inner.writer.poll_idle(cx));
        // Whether it flushed, timed out or the connection already ended,
        // what follows is the same.
        let _ = tokio::time::timeout(timeout, flushed).await;
        self.close().await;
    }

    /// Waits until the connection has ended, and returns why.
    pub async fn closed(&self) -> ConnectionError {
        let inner = &self.handle.inner;
        inner.term_token.cancelled().await;
        inner.term.get().cloned().unwrap_or(ConnectionError::Closed)
    }

    /// Why the connection ended, once it has.
    pub fn termination(&self) -> Option<ConnectionError> {
        self.handle.inner.term.get().cloned()
    }

    /// The number of streams currently registered.
    pub fn active_streams(&self) -> usize {
        self.handle.inner.active_streams()
    }

    /// The bytes this connection holds for its peer now: received messages
    /// not yet taken, half-assembled packets, Invokes being assembled or
    /// served, and bytes waiting to be written (see
    /// [`ManagerOptions::max_connection_memory`]). For tests and metrics.
    pub fn held_bytes(&self) -> usize {
        self.handle.inner.writer.budget().held()
    }

    /// Whether a new stream could start without waiting (always, when
    /// multiplexed; in sequential mode, when no stream is open).
    pub fn is_unblocked(&self) -> bool {
        match &self.handle.inner.sequential {
            Some(sem) => sem.available_permits() > 0,
            None => true,
        }
    }
}

impl Inner {
    /// Streams registered and not terminated: exact as the peer sees it
    /// (a stream leaves the count before its last packet is written).
    fn active_streams(&self) -> usize {
        lock(&self.registry).live.load(Ordering::Acquire)
    }

    /// Ends the connection the first time it is called; later calls do
    /// nothing (first error wins).
    fn terminate(&self, err: ConnectionError) {
        if self.term.set(err.clone()).is_err() {
            return;
        }
        tracing::debug!(parent: &self.span, error = %err, "connection terminated");
        // End the streams first, so that an operation racing the end sees
        // the stream's own result rather than the writer's raw error.
        let streams: Vec<StreamHandle> = {
            let mut registry = lock(&self.registry);
            registry.closed = Some(err.clone());
            registry.streams.drain().map(|(_, (_, h))| h).collect()
        };
        // Outside the registry lock: each stream's hook takes it.
        let reason = self.stream_reason(&err);
        for handle in streams {
            handle.connection_lost(reason.clone());
        }
        // Then stop the writer: appends fail and buffered bytes are
        // dropped. Then stop the tasks, which drops both halves of the
        // transport, closing it.
        self.drain.stop(err.clone());
        self.term_token.cancel();
        if let Some(sem) = &self.sequential {
            sem.close();
        }
    }

    /// What the streams of a terminated connection report: a server's
    /// handlers see a peer that went away as a cancellation, as in gRPC; a
    /// client sees the connection error (multiplexing.md §3.1).
    fn stream_reason(&self, err: &ConnectionError) -> StreamErrorKind {
        match self.role {
            Role::Server if peer_went_away(err) => StreamErrorKind::Canceled(Initiator::Remote),
            _ => StreamErrorKind::ConnectionLost(err.clone()),
        }
    }

    async fn acquire_turn(&self, sem: Arc<Semaphore>) -> Result<OwnedSemaphorePermit, StreamError> {
        let lost = |inner: &Inner| {
            let err = inner.term.get().cloned().unwrap_or(ConnectionError::Closed);
            StreamError::new(0, StreamErrorKind::ConnectionLost(err))
        };
        tokio::select! {
            biased;
            _ = self.term_token.cancelled() => Err(lost(self)),
            permit = sem.acquire_owned() => permit.map_err(|_| lost(self)),
        }
    }

    /// Adds a stream to the registry and arranges its removal when it
    /// terminates. `permit` (sequential mode) is released then too, and
    /// `guard` dropped last.
    fn register(
        self: &Arc<Self>,
        id: u64,
        handle: &StreamHandle,
        permit: Option<OwnedSemaphorePermit>,
        guard: impl Send + 'static,
    ) -> Result<(), StreamError> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let live = {
            let mut registry = lock(&self.registry);
            if let Some(err) = &registry.closed {
                return Err(StreamError::new(
                    id,
                    StreamErrorKind::ConnectionLost(err.clone()),
                ));
            }
            let limit = self.opts.max_concurrent_streams;
            if registry.live.load(Ordering::Acquire) >= limit {
                return Err(StreamError::new(id, StreamErrorKind::Refused { limit }));
            }
            registry.live.fetch_add(1, Ordering::AcqRel);
            registry.registrations += 1;
            let first = registry.streams.is_empty();
            registry.streams.insert(id, (serial, handle.clone()));
            (registry.live.clone(), first)
        };
        let (live, first) = live;
        if !first {
            self.registered.notify_one();
        }
        // Outside the registry lock, which is never held while taking a
        // stream's.
        handle.release_on_termination(live);
        let weak: Weak<Inner> = Arc::downgrade(self);
        handle.on_terminate(move || {
            drop(permit);
            if let Some(inner) = weak.upgrade() {
                let mut registry = lock(&inner.registry);
                if registry.streams.get(&id).is_some_and(|(s, _)| *s == serial) {
                    registry.streams.remove(&id);
                }
            }
            drop(guard);
        });
        Ok(())
    }

    /// Out of memory with several streams: a stream without flow control
    /// that queued past its bounds while it was alone fails now, as it
    /// would have had it shared the connection from the start, and frees
    /// what it held beyond them. Scans only when streams were registered
    /// since the last scan (`seen`). Returns whether any stream failed.
    fn shed_overflowing(&self, seen: &mut u64) -> bool {
        let streams: Vec<StreamHandle> = {
            let registry = lock(&self.registry);
            if registry.registrations == *seen || registry.streams.len() < 2 {
                return false;
            }
            *seen = registry.registrations;
            registry.streams.values().map(|(_, h)| h.clone()).collect()
        };
        let mut shed = false;
        for handle in streams {
            shed |= handle.shed_overflow();
        }
        shed
    }

    /// The stream `id`, and whether it is the only active one.
    fn lookup(&self, id: u64) -> Option<(StreamHandle, bool)> {
        let registry = lock(&self.registry);
        let alone = registry.live.load(Ordering::Acquire) <= 1;
        registry.streams.get(&id).map(|(_, h)| (h.clone(), alone))
    }

    /// Applies a WindowUpdate, taken out before any id check or packet
    /// assembly, in every mode (mux-fork-2026.md §7.2): one that does not
    /// conform, or for an unknown or finished stream, or received with
    /// flow control off, is dropped, never fatal.
    fn window_update(&self, frame: &Frame) {
        let Some(update) = WindowUpdate::parse(frame) else {
            tracing::trace!(
                stream = frame.id.stream,
                "dropped a malformed window update"
            );
            return;
        };
        // The stream drops it unless it has a send window.
        if let Some((handle, _)) = self.lookup(update.stream) {
            handle.window_update(update.delta);
        }
    }

    /// Notes what the server says it decompresses, from its acceptance of
    /// a stream's flow-control offer (one per stream: the latest wins).
    fn learn_compressions(&self, frame: &Frame) {
        if let Some(FlowNegotiation::Accept(_, compressions)) = FlowNegotiation::parse(&frame.data)
        {
            self.peer_compressions
                .store(compressions.bits(), Ordering::Relaxed);
            self.peer_answered.store(true, Ordering::Relaxed);
        }
    }

    /// Routes one frame (multiplexing.md §3.3). Never waits for a stream:
    /// only handing a new stream to a full accept queue waits.
    async fn route(
        self: &Arc<Self>,
        frame: Frame,
        pending: &mut PendingInvokes,
        accept: &mut Acceptor,
    ) -> Result<(), ConnectionError> {
        let id = frame.id.stream;
        if frame.kind == Kind::FLOW_NEGOTIATION && self.role == Role::Client {
            self.learn_compressions(&frame);
        }
        if let Some((handle, alone)) = self.lookup(id) {
            return handle.handle_frame(frame, alone);
        }
        match frame.kind {
            Kind::INVOKE | Kind::INVOKE_METADATA if self.role == Role::Server => {
                let before = pending.held();
                let pushed = pending.push(frame);
                self.writer.budget().adjust(before, pending.held());
                if let Some(invoke) = pushed? {
                    self.start_server_stream(invoke, accept).await;
                }
            }
            Kind::CANCEL | Kind::CLOSE | Kind::ERROR => {
                // An Invoke that was never completed will never be.
                let before = pending.held();
                pending.forget(id);
                self.writer.budget().adjust(before, pending.held());
                tracing::trace!(stream = id, kind = %frame.kind, "dropped frame of unknown stream");
            }
            kind => tracing::trace!(stream = id, %kind, "dropped frame of unknown stream"),
        }
        Ok(())
    }

    /// Registers the stream an Invoke opens and hands it to the accept
    /// loop, or refuses it when the connection is at its stream limit.
    async fn start_server_stream(self: &Arc<Self>, invoke: Invoke, accept: &mut Acceptor) {
        // What the Invoke holds while its stream is served, and the
        // stream's own state, are charged until the stream ends.
        let cost = invoke.cost() + STREAM_COST;
        let Invoke {
            stream: id,
            rpc,
            mut metadata,
        } = invoke;
        // The client's compression is the stream's, both ways; the key is
        // taken out of what the handler sees. A value this side does not
        // know refuses this stream alone (the fork ends the connection:
        // being liberal costs nothing here, since nothing of the stream was
        // read yet).
        let compression = match metadata.remove(COMPRESSION_METADATA_KEY) {
            None => None,
            Some(value) => match Compression::from_metadata_value(&value) {
                Ok(compression) => Some(compression),
                Err(unsupported) => {
                    tracing::debug!(parent: &self.span, stream = id, error = %unsupported, "stream refused");
                    self.refuse(id, Code::Unimplemented, unsupported.to_string());
                    return;
                }
            },
        };
        let (stream, handle) = new_stream_with_compression(
            id,
            StreamKind::Server,
            self.writer.clone(),
            &self.opts.stream,
            compression,
        );
        let budget = self.writer.budget().clone();
        budget.charge(cost);
        let reservation = Reservation(budget, cost);
        match self.register(id, &handle, None, reservation) {
            Ok(()) => {}
            Err(err) => {
                if let StreamErrorKind::Refused { limit } = err.kind() {
                    tracing::debug!(parent: &self.span, stream = id, limit, "stream refused");
                    self.refuse(id, Code::Ok, err.to_string());
                }
                // Never registered: end it silently, so that dropping it
                // sends nothing.
                handle.connection_lost(err.into_kind());
                drop(stream);
                return;
            }
        }
        // The flow-control offer is this implementation's own key: taken
        // out of what the handler sees, and accepted in auto mode.
        if let Some(offer) = metadata.remove(FLOW_CONTROL_METADATA_KEY)
            && let Some(params) = FlowParams::parse_metadata_value(&offer)
        {
            handle.accept_flow_control(params);
        }
        // Validating first takes the fast path for the usual ASCII path.
        let rpc = match std::str::from_utf8(&rpc) {
            Ok(rpc) => rpc.to_owned(),
            Err(_) => String::from_utf8_lossy(&rpc).into_owned(),
        };
        tracing::debug!(parent: &self.span, stream = id, rpc = %rpc, "accepted stream");
        let incoming = Incoming {
            stream,
            rpc,
            metadata,
        };
        match accept {
            Acceptor::Queue(queue) => tokio::select! {
                biased;
                _ = self.term_token.cancelled() => {}
                // If nobody accepts any more, the stream is dropped, which
                // cancels it.
                _ = queue.send(incoming) => {}
            },
            Acceptor::Callback(_, ready) => ready.push(incoming),
        }
    }

    /// Answers an Invoke this side will not serve with an Error packet on
    /// that stream (message id 1): over the stream limit (code 0, as the
    /// fork does), or asking for a compression it does not know (code
    /// Unimplemented). The connection survives and later frames of that
    /// stream are dropped.
    fn refuse(&self, id: u64, code: Code, text: String) {
        let payload_err = CodedError::new(code, text);
        let mut payload = Vec::new();
        payload_err.append_to(&mut payload);
        if let Err(e) = self
            .writer
            .append(|buf| append_frame(buf, Id::new(id, 1), Kind::ERROR, true, false, &payload))
        {
            tracing::debug!(stream = id, error = %e, "refusal not sent");
        }
    }
}

/// What a stream the peer opened costs beyond its path, metadata and
/// queue: its state, its entry in the registry, and a server's task for
/// it (a rough upper bound, charged so that a peer's streams count even
/// when they carry nothing).
const STREAM_COST: usize = 2048;

/// Bytes charged to a connection's budget until dropped.
struct Reservation(Arc<MemoryBudget>, usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Whether `err` says the peer closed or dropped the transport; which of
/// the reader (end of file) or the writer (broken pipe, reset) notices
/// first is a race, and the answer must not depend on it.
fn peer_went_away(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::Eof => true,
        ConnectionError::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

async fn run_reader<R: AsyncRead + Unpin>(inner: Arc<Inner>, read_half: R, mut accept: Acceptor) {
    let max_packet_size = inner.opts.stream.max_packet_size;
    let mut reader = FrameReader::coalescing(read_half, max_packet_size);
    let mut pending = PendingInvokes::new(
        inner.opts.max_concurrent_streams,
        max_packet_size,
        inner.opts.max_metadata_size,
    );
    let budget = inner.writer.budget().clone();
    let mut shed_seen = 0;
    let mut order = inner.opts.sequential.then(ConnectionIdOrder::new);
    // One registration with the token for the connection's life, rather
    // than one per frame.
    let mut ended = pin!(inner.term_token.cancelled());
    let result: Result<(), ConnectionError> = async {
        if inner.role == Role::Server {
            tokio::select! {
                biased;
                r = sniff_start(&mut reader, &inner.span) => r?,
                _ = ended.as_mut() => return Ok(()),
            }
        }
        loop {
            // `term` is set before the token is cancelled, and reading it
            // is one atomic load where the token takes a lock.
            if inner.term.get().is_some() {
                return Ok(());
            }
            // The next frame's length first, then room for it in the
            // budgets: over them, nothing more is read until the
            // application or the transport frees memory (TCP backpressure on
            // the peer). Whenever the reader is about to wait, the streams
            // opened so far start: they may be what frees it.
            let next = {
                let mut next = pin!(reader.next_frame());
                match poll_once(&mut next).await {
                    Some(next) => next,
                    None => {
                        accept.flush();
                        tokio::select! {
                            biased;
                            r = next => r,
                            _ = ended.as_mut() => return Ok(()),
                        }
                    }
                }
            };
            let (len, joins) = match next.map_err(connection_error)? {
                Some(next) => (usize::try_from(next.len).unwrap_or(usize::MAX), next.joins),
                None => return Err(ConnectionError::Eof),
            };
            // A join may return a whole packet: reserve for that if it
            // fits, else read this frame alone.
            let mut reserved = if joins { max_packet_size.max(len) } else { len };
            if !budget.try_reserve(reserved) {
                inner.shed_overflowing(&mut shed_seen);
                if joins {
                    reader.pause_joins(true);
                    reserved = len;
                }
                let mut room = pin!(poll_fn(|cx| budget.poll_reserve(reserved, cx)));
                if poll_once(&mut room).await.is_none() {
                    accept.flush();
                    tracing::trace!(parent: &inner.span, held = budget.held(), next = reserved, "over budget: reading paused");
                    loop {
                        tokio::select! {
                            biased;
                            _ = room.as_mut() => break,
                            _ = ended.as_mut() => return Ok(()),
                            _ = inner.registered.notified() => {
                                inner.shed_overflowing(&mut shed_seen);
                            }
                        }
                    }
                }
            }
            let routed = read_and_route(&inner, &mut reader, &mut pending, &mut accept, &mut order, ended.as_mut()).await;
            budget.release(reserved);
            reader.pause_joins(false);
            if routed? {
                return Ok(());
            }
        }
    }
    .await;
    // Invokes that never completed are freed with the reader.
    budget.release(pending.held());
    if let Err(err) = result {
        inner.terminate(err);
    }
    // So are the streams nobody accepted, once the connection has ended:
    // `terminate` (here, or on the thread that set `term`) ends every
    // registered stream before it cancels the token, so the queued ones,
    // dropped after, send their peer nothing (a dropped stream that is
    // still running would cancel), and an accept loop that sees the queue
    // close reports the real reason.
    inner.term_token.cancelled().await;
    drop(accept);
    if let Some(queue) = &inner.accept
        && let Ok(mut queue) = queue.try_lock()
    {
        queue.close();
        while queue.try_recv().is_ok() {}
    }
}

/// Looks at a server connection's first bytes: skips the reference
/// implementation's migration header, and ends a connection that speaks
/// another protocol at once, with a line at info naming what it sent,
/// rather than dropping its bytes as frames of unknown streams while its
/// client waits forever.
async fn sniff_start<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    span: &tracing::Span,
) -> Result<(), ConnectionError> {
    let mut have = 0;
    loop {
        let prefix = reader
            .peek_more(have)
            .await
            .map_err(ConnectionError::from_io)?;
        if prefix.len() == have {
            // The transport ended: the frame loop reports how.
            return Ok(());
        }
        have = prefix.len();
        match sniff(prefix) {
            Sniffed::NeedMore => {}
            Sniffed::Drpc => return Ok(()),
            Sniffed::MigrationHeader => {
                reader.skip(MIGRATION_HEADER.len());
                tracing::debug!(parent: span, "skipped the migration header");
                return Ok(());
            }
            Sniffed::Foreign(foreign) => {
                let seen = foreign.description();
                tracing::info!(parent: span, seen, "closing a connection that does not speak DRPC");
                return Err(ConnectionError::WrongProtocol { seen });
            }
        }
    }
}

/// What a failed read means for the connection.
fn connection_error(err: ReadError) -> ConnectionError {
    match err {
        ReadError::Protocol(e) => e.into(),
        ReadError::Io(e) => ConnectionError::from_io(e),
        e => ConnectionError::from_io(std::io::Error::other(e)),
    }
}

/// Reads one frame and routes it; `Ok(true)` when the connection ended
/// while waiting for it.
async fn read_and_route<R: AsyncRead + Unpin>(
    inner: &Arc<Inner>,
    reader: &mut FrameReader<R>,
    pending: &mut PendingInvokes,
    accept: &mut Acceptor,
    order: &mut Option<ConnectionIdOrder>,
    ended: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Result<bool, ConnectionError> {
    let read = {
        let mut next = pin!(reader.read_frame());
        match poll_once(&mut next).await {
            Some(read) => read,
            None => {
                // Everything read so far is routed: start the streams
                // it opened, then wait for more.
                accept.flush();
                // The read first: a wake-up is almost always for it,
                // and the end is still seen, here or at the loop's top.
                tokio::select! {
                    biased;
                    r = next => r,
                    _ = ended => return Ok(true),
                }
            }
        }
    };
    let frame = match read.map_err(connection_error)? {
        Some(frame) => frame,
        None => return Err(ConnectionError::Eof),
    };
    if frame.kind == Kind::WINDOW_UPDATE {
        inner.window_update(&frame);
        return Ok(false);
    }
    if let Some(order) = order {
        order.check(frame.id, frame.done)?;
    } else if frame.kind == Kind::MESSAGE
        && reader
            .buffered_head()
            .is_some_and(|next| continues_run(&next, frame.id.stream))
    {
        // The next frame, already read, is this stream's next Message: the
        // run of them is routed in one step. Sequential connections (one
        // stream at a time, ids checked frame by frame) go one by one.
        let id = frame.id.stream;
        if let Some((handle, alone)) = inner.lookup(id) {
            accept.flush_unless_for(id);
            route_run(inner, reader, &handle, frame, alone)?;
            return Ok(false);
        }
    }
    accept.flush_unless_for(frame.id.stream);
    inner.route(frame, pending, accept).await?;
    Ok(false)
}

/// Whether a frame with header `head` joins a run of stream `id`'s
/// Messages (a control frame goes the usual way).
fn continues_run(head: &FrameHead, id: u64) -> bool {
    head.id.stream == id && head.kind == Kind::MESSAGE && !head.control
}

/// The most frames routed in one run, so that a stream's lock is never
/// held for long.
const MAX_RUN: usize = 256;

/// Routes `first`, and after it the frames of the same stream's Messages
/// that the reader already holds, to `handle` in one step. The frames read
/// but not yet routed are charged to the budget for the run, as each frame
/// is before it is read; when that does not fit, `first` goes alone.
fn route_run<R: AsyncRead + Unpin>(
    inner: &Inner,
    reader: &mut FrameReader<R>,
    handle: &StreamHandle,
    first: Frame,
    alone: bool,
) -> Result<(), ConnectionError> {
    let budget = inner.writer.budget();
    let buffered = reader.buffered();
    if !budget.try_reserve(buffered) {
        return handle.handle_frame(first, alone);
    }
    let id = first.id.stream;
    let mut left = MAX_RUN;
    let routed = handle.handle_frames(
        first,
        || {
            left = left.checked_sub(1)?;
            reader.buffered_frame_if(|head| continues_run(head, id))
        },
        alone,
    );
    budget.release(buffered);
    routed
}

async fn run_writer<W: AsyncWrite + Unpin>(inner: Arc<Inner>, mut write_half: W) {
    let mut batch = Batch::default();
    let mut ended = pin!(inner.term_token.cancelled());
    loop {
        if poll_fn(|cx| inner.drain.poll_ready_to_take(cx))
            .await
            .is_err()
        {
            break;
        }
        // Woken by the first frame: when other streams are active, let the
        // tasks that are ready to run append theirs too, so that one write
        // carries them all. A lone stream goes straight out.
        if inner.active_streams() > 1 {
            tokio::task::yield_now().await;
        }
        if poll_fn(|cx| inner.drain.poll_take_batch(cx, &mut batch))
            .await
            .is_err()
        {
            // Stopped: whatever was buffered is discarded.
            break;
        }
        // The write first: it usually completes at once, and the end
        // only matters when it does not.
        let written = tokio::select! {
            biased;
            r = write_batch(&mut write_half, &mut batch) => r,
            _ = ended.as_mut() => break,
        };
        if let Err(e) = written {
            inner.terminate(ConnectionError::from_io(e));
            break;
        }
        inner.drain.batch_written();
    }
}

/// Writes a whole batch: one vectored write per call for as many runs as
/// the transport takes, so frame headers and large payloads shared by
/// reference leave together without being copied into one buffer.
async fn write_batch<W: AsyncWrite + Unpin>(
    write_half: &mut W,
    batch: &mut Batch,
) -> std::io::Result<()> {
    const MAX_SLICES: usize = 64;
    while !batch.is_empty() {
        let written = {
            let mut slices = [std::io::IoSlice::new(&[]); MAX_SLICES];
            let n = batch.io_slices(&mut slices);
            write_half.write_vectored(&slices[..n]).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        batch.advance(written);
    }
    write_half.flush().await
}
