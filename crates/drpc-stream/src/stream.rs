//! The async driver of a stream: the application's [`Stream`] and the
//! connection's [`StreamHandle`] over one shared, locked [`StreamCore`].

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use drpc_wire::{
    COMPRESSION_METADATA_KEY, CodedError, Compression, CompressionSet, DEFAULT_MAX_PACKET_SIZE,
    FLOW_CONTROL_METADATA_KEY, FlowNegotiation, FlowParams, Frame, Id, Kind, Metadata,
    WindowUpdate, append_frame, append_packet, encode_metadata,
};
use smallvec::SmallVec;

use crate::core::{Inbound, Recv, StreamCore};
use crate::flow::FlowControl;
use crate::queue::{DEFAULT_RECV_QUEUE_BYTES, DEFAULT_RECV_QUEUE_MESSAGES};
use crate::sync::{AtomicBool, Mutex, MutexGuard, lock};
use crate::{
    ConnectionError, Initiator, MessageBatch, MessageBuf, MuxWriter, StreamError, StreamErrorKind,
};

/// Which side of the RPC a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Opened by this side (Go's `"cli"`).
    Client,
    /// Accepted from the peer's Invoke (Go's `"srv"`).
    Server,
}

/// Per-stream settings, with the reference implementation's defaults.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Maximum data bytes per frame of Invoke, InvokeMetadata and Message
    /// packets; 0 means 64 KiB.
    pub split_size: usize,
    /// The largest packet accepted from the peer, and the largest message
    /// sent to it (default 4 MiB, the reference implementation's limit;
    /// peers exchanging larger messages raise it on both sides).
    pub max_packet_size: usize,
    /// How many received messages may wait for the application (default
    /// 256).
    pub recv_queue_messages: usize,
    /// How many received bytes may wait for the application (default
    /// 8 MiB; one message of any accepted size always fits in an empty
    /// queue).
    ///
    /// These two bounds apply to streams without flow control. When one is
    /// reached, a stream that is its connection's only active stream keeps
    /// queueing (the connection's memory budget then stops the reader: TCP
    /// backpressure, as a sequential stock peer expects), and a stream that
    /// shares its connection fails alone with
    /// [`StreamErrorKind::QueueOverflow`], so that it never holds up the
    /// others. A flow-controlled stream is held to its window plus one
    /// message instead.
    pub recv_queue_bytes: usize,
    /// Flow control (default [`FlowControl::auto`]).
    pub flow_control: FlowControl,
}

impl StreamOptions {
    /// Whether a message of `len` bytes may be sent: the peer ends the
    /// connection over a packet above `max_packet_size`, so a larger one
    /// is refused here, before anything is written.
    pub fn check_message_size(&self, len: usize) -> Result<(), StreamErrorKind> {
        check_message_size(len, self.max_packet_size)
    }
}

fn check_message_size(len: usize, limit: usize) -> Result<(), StreamErrorKind> {
    if len > limit {
        return Err(StreamErrorKind::MessageTooLarge { size: len, limit });
    }
    Ok(())
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            split_size: 0,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            recv_queue_messages: DEFAULT_RECV_QUEUE_MESSAGES,
            recv_queue_bytes: DEFAULT_RECV_QUEUE_BYTES,
            flow_control: FlowControl::default(),
        }
    }
}

type TerminateHook = Box<dyn FnOnce() + Send>;

/// Tasks to wake. Almost always none or one per list, so a few live inline
/// and registering or collecting them does not allocate on every call.
type WakerList = SmallVec<[Waker; 2]>;

struct Shared {
    id: u64,
    kind: StreamKind,
    split_size: usize,
    max_message_size: usize,
    /// Every Message payload of the stream is compressed with this, both
    /// ways; `None` for none (the usual case, which costs one branch).
    compression: Option<Compression>,
    writer: Arc<MuxWriter>,
    /// Mirrors the core's discarded flag, so that a consumer holding a
    /// batch ([`RecvBatch`]) learns of it without the lock.
    discarded: AtomicBool,
    inner: Mutex<Inner>,
}

struct Inner {
    core: StreamCore,
    /// Tasks waiting in `recv` (usually one; `recv` takes `&self`).
    recv_wakers: WakerList,
    /// Tasks waiting for termination (senders waiting for writer room or
    /// for credit, `terminated()` callers).
    term_wakers: WakerList,
    /// Senders waiting for credit.
    credit_wakers: WakerList,
    /// The bytes last charged to the connection's budget for this stream.
    held: usize,
    /// The connection's count of live streams, while this one counts in it.
    live: Option<Arc<AtomicUsize>>,
    /// Whether termination was already announced.
    announced: bool,
    on_terminate: SmallVec<[TerminateHook; 1]>,
}

/// Registers `waker` in `wakers` unless an equivalent one is there.
fn register(wakers: &mut WakerList, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

impl Shared {
    /// Collects who must be woken after a change, releasing the lock
    /// before anyone is woken or any hook runs.
    fn release(&self, mut inner: MutexGuard<'_, Inner>, queued: bool) {
        self.account(&mut inner);
        if inner.core.is_discarded() {
            self.discarded.store(true, Ordering::Release);
        }
        settle(&mut inner);
        let announce = inner.core.is_terminated() && !inner.announced;
        let wake_recv = (queued || announce) && !inner.recv_wakers.is_empty();
        if !(announce || wake_recv) {
            // The common case: nobody is waiting for this change.
            return;
        }
        let recv = if wake_recv {
            std::mem::take(&mut inner.recv_wakers)
        } else {
            WakerList::new()
        };
        let (term, hooks) = if announce {
            inner.announced = true;
            tracing::debug!(stream = self.id, kind = ?self.kind, "stream terminated");
            (
                std::mem::take(&mut inner.term_wakers),
                std::mem::take(&mut inner.on_terminate),
            )
        } else {
            Default::default()
        };
        drop(inner);
        // Hooks first: whoever a waker wakes must find the connection's
        // bookkeeping (the registry) already updated.
        hooks.into_iter().for_each(|hook| hook());
        recv.into_iter().chain(term).for_each(Waker::wake);
    }

    /// Appends a terminal packet: the stream leaves the connection's live
    /// count first, so that a peer that sees the packet and opens the next
    /// stream at once is never refused for this one.
    fn append_terminal(
        &self,
        inner: &mut Inner,
        id: Id,
        kind: Kind,
        control: bool,
        data: &[u8],
    ) -> Result<(), ConnectionError> {
        settle(inner);
        self.append_control(id, kind, control, data)
    }

    /// Charges the connection's budget with what the stream now holds.
    fn account(&self, inner: &mut Inner) {
        let held = inner.core.held();
        if held != inner.held {
            self.writer.budget().adjust(inner.held, held);
            inner.held = held;
        }
    }

    /// The split size of Message packets: flow-controlled streams never
    /// send frames over [`FlowControl::FRAME`].
    fn split_size(&self, core: &StreamCore) -> usize {
        if core.is_flow_controlled() {
            let frame = FlowControl::FRAME as usize;
            match self.split_size {
                0 => frame,
                n => n.min(frame),
            }
        } else {
            self.split_size
        }
    }

    /// Appends a Message packet: large shared payloads by reference, the
    /// rest copied into the write buffer.
    fn append_message(
        &self,
        id: Id,
        data: Payload<'_>,
        split: usize,
    ) -> Result<(), ConnectionError> {
        self.append_message_reserved(0, id, data, split)
    }

    /// As [`Shared::append_message`], holding `reserved` bytes of the
    /// write budget until written.
    fn append_message_reserved(
        &self,
        reserved: usize,
        id: Id,
        data: Payload<'_>,
        split: usize,
    ) -> Result<(), ConnectionError> {
        match data.contiguous() {
            Some(bytes) if bytes.len() < crate::ZERO_COPY_MIN || data.is_borrowed() => {
                self.writer.append_reserved(reserved, |buf| {
                    append_packet(buf, id, Kind::MESSAGE, false, bytes, split)
                })
            }
            _ => self.writer.append_parts_reserved(
                reserved,
                id,
                Kind::MESSAGE,
                false,
                data.parts(),
                split,
            ),
        }
    }

    /// Sends what an inbound frame asked for (an abortive Error, a
    /// negotiation marker), under the stream lock.
    fn answer(&self, inner: &mut Inner, inbound: Inbound) {
        let sent = match inbound {
            Inbound::Failed(id, err) => {
                tracing::debug!(stream = self.id, error = %err, "stream failed: peer exceeded a limit");
                // Abortive: the control bit, as the fork sends it.
                self.append_error(inner, id, &err, true)
            }
            Inbound::SendGating(id) => {
                let waiting = std::mem::take(&mut inner.credit_wakers);
                waiting.into_iter().for_each(Waker::wake);
                self.writer
                    .append(|buf| FlowNegotiation::Gating.append_to(buf, id))
            }
            _ => return,
        };
        if let Err(e) = sent {
            tracing::debug!(stream = self.id, error = %e, "control packet not sent");
        }
    }

    /// Appends an Error packet carrying `err`, the stream's last.
    fn append_error(
        &self,
        inner: &mut Inner,
        id: Id,
        err: &CodedError,
        control: bool,
    ) -> Result<(), ConnectionError> {
        let mut payload = Vec::with_capacity(8 + err.message().len());
        err.append_to(&mut payload);
        self.append_terminal(inner, id, Kind::ERROR, control, &payload)
    }

    /// Sends a grant the last receive made due.
    fn send_grant(&self, inner: &mut Inner) {
        if let Some(delta) = inner.core.take_grant() {
            let update = WindowUpdate {
                stream: self.id,
                delta,
            };
            if let Err(e) = self.writer.append(|buf| update.append_to(buf)) {
                tracing::debug!(stream = self.id, error = %e, "grant not sent");
            }
        }
    }

    /// Cancels with `reason`, sending Cancel unless already terminated.
    fn cancel(&self, reason: StreamErrorKind) {
        let mut inner = lock(&self.inner);
        let sent = inner
            .core
            .cancel(reason, true)
            .map(|id| self.append_terminal(&mut inner, id, Kind::CANCEL, true, &[]));
        // A stopped writer means the connection is ending, which ends the
        // peer's stream too: nothing is left to report.
        if let Some(Err(e)) = sent {
            tracing::debug!(stream = self.id, error = %e, "cancel not sent");
        }
        self.release(inner, false);
    }

    /// Waits until a Message of `len` bytes may be appended: its first
    /// frame fits the credit (mux-fork-2026.md §2.2: the rest may overdraw)
    /// and the writer is below its high-water mark, with `len` bytes of
    /// the write budget reserved; or until sending is over
    /// (`begin_message` then says why). Returns the bytes reserved.
    async fn wait_to_send(&self, len: usize) -> (MutexGuard<'_, Inner>, usize) {
        let mut reserved = None;
        let inner = poll_fn(|cx| {
            let writer_ready = self.writer.poll_capacity(cx).is_ready();
            let mut inner = lock(&self.inner);
            if inner.core.is_send_closed() {
                return Poll::Ready(inner);
            }
            let first_frame = len.min(drpc_wire::effective_split_size(
                self.split_size(&inner.core),
            ));
            if !inner.core.send_allowed(first_frame) {
                register(&mut inner.credit_wakers, cx.waker());
                register(&mut inner.term_wakers, cx.waker());
                return Poll::Pending;
            }
            if writer_ready && self.writer.poll_reserve_send(len, cx).is_ready() {
                reserved = Some(len);
                return Poll::Ready(inner);
            }
            // Waiting for writer room: also wake if the stream ends, so that
            // a cancel releases a sender stuck behind a blocked transport.
            register(&mut inner.term_wakers, cx.waker());
            Poll::Pending
        })
        .await;
        (inner, reserved.unwrap_or(0))
    }

    fn check_size(&self, len: usize) -> Result<(), StreamError> {
        check_message_size(len, self.max_message_size).map_err(|e| self.err(e))
    }

    /// The payload of one Message of a compressed stream, outside every
    /// lock: refused first when the message itself is over the maximum
    /// packet size (what the peer decompresses is bounded by it too), then
    /// compressed in one piece, its parts gathered first if it has several.
    /// The compressed size is checked by the send that follows.
    fn compress(&self, compression: Compression, data: Payload<'_>) -> Result<Bytes, StreamError> {
        let len = data.len();
        self.check_size(len)?;
        let mut out = Vec::new();
        let done = match data.contiguous() {
            Some(bytes) => compression.compress(bytes, &mut out),
            None => {
                let mut whole = Vec::with_capacity(len);
                data.parts().iter().for_each(|p| whole.extend_from_slice(p));
                compression.compress(&whole, &mut out)
            }
        };
        match done {
            Ok(()) => Ok(Bytes::from(out)),
            // Only a message of 4 GiB or more, which Snappy cannot encode.
            Err(_) => Err(self.err(StreamErrorKind::MessageTooLarge {
                size: len,
                limit: SNAPPY_MAX_INPUT,
            })),
        }
    }

    /// A received payload as the application sees it: decompressed on a
    /// compressed stream, outside the stream's lock (the queue and the
    /// grants counted it compressed). A failure fails this receive only.
    #[inline]
    fn decompressed(&self, data: Bytes) -> Result<Bytes, StreamError> {
        let Some(compression) = self.compression else {
            return Ok(data);
        };
        match compression.decompress(&data, self.max_message_size) {
            Ok(plain) => Ok(Bytes::from(plain)),
            Err(source) => {
                tracing::debug!(stream = self.id, error = %source, "message did not decompress");
                Err(self.err(StreamErrorKind::Decompress {
                    compression,
                    source,
                }))
            }
        }
    }

    fn err(&self, kind: StreamErrorKind) -> StreamError {
        StreamError::new(self.id, kind)
    }

    /// Appends a packet without payload (CloseSend, Close, Cancel) or with
    /// a small one (Error) under the stream lock the caller holds, so that
    /// nothing is ever appended for a stream after it terminated.
    fn append_control(
        &self,
        id: Id,
        kind: Kind,
        control: bool,
        data: &[u8],
    ) -> Result<(), ConnectionError> {
        self.writer
            .append(|buf| append_frame(buf, id, kind, true, control, data))
    }
}

/// The largest message Snappy compresses (4 GiB − 1): a larger one is
/// refused as too large, whatever the stream's own limit.
const SNAPPY_MAX_INPUT: usize = u32::MAX as usize;

/// A message to send, borrowed or shared.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Borrowed(&'a [u8]),
    /// Parts of one message, in order, held by reference count.
    Shared(&'a [Bytes]),
}

impl<'a> Payload<'a> {
    fn len(&self) -> usize {
        match self {
            Payload::Borrowed(b) => b.len(),
            Payload::Shared(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    fn is_borrowed(&self) -> bool {
        matches!(self, Payload::Borrowed(_))
    }

    /// The message as one slice, unless it is in several parts.
    fn contiguous(&self) -> Option<&'a [u8]> {
        match self {
            Payload::Borrowed(b) => Some(b),
            Payload::Shared([]) => Some(&[]),
            Payload::Shared([one]) => Some(one),
            Payload::Shared(_) => None,
        }
    }

    fn parts(&self) -> &'a [Bytes] {
        match self {
            Payload::Borrowed(_) => &[],
            Payload::Shared(parts) => parts,
        }
    }
}

/// The application's side of one RPC stream.
///
/// Sends never wait for the transport, only for room in the connection's
/// write buffer; control operations (`close_send`, `close`, `send_error`,
/// `cancel`) never wait at all. Dropping a `Stream` that has not
/// terminated cancels it: a client sends Cancel; a server whose send side
/// is already closed just lets go.
pub struct Stream {
    shared: Arc<Shared>,
}

/// The connection's side of a stream: writes its opening, routes frames
/// in, applies grants, and ends it when the connection ends. Only
/// [`new_stream`] makes one, for whoever drives the connection; an
/// application holding a [`Stream`] cannot reach it. Cloneable; holding one
/// does not keep the RPC open.
#[derive(Clone)]
pub struct StreamHandle {
    shared: Arc<Shared>,
}

/// What an application may do to a stream from elsewhere: watch its end
/// or cancel it ([`Stream::watch`]). Holding one does not keep the RPC open.
#[derive(Clone)]
pub struct StreamWatch {
    shared: Arc<Shared>,
}

impl fmt::Debug for StreamWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWatch")
            .field("id", &self.shared.id)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

impl StreamWatch {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Which side opened the stream.
    pub fn kind(&self) -> StreamKind {
        self.shared.kind
    }

    /// Cancels the stream as [`Stream::cancel`] does (a deadline timer).
    pub fn cancel(&self, reason: StreamErrorKind) {
        self.shared.cancel(reason);
    }

    /// Whether the stream has terminated.
    pub fn is_terminated(&self) -> bool {
        lock(&self.shared.inner).core.is_terminated()
    }

    /// Waits until the stream has terminated.
    pub async fn terminated(&self) {
        wait_terminated(&self.shared).await
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

impl fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.shared.id)
            .field("kind", &self.shared.kind)
            .finish()
    }
}

/// Creates stream `id` writing into `writer`: the application's
/// [`Stream`] and the connection's [`StreamHandle`].
pub fn new_stream(
    id: u64,
    kind: StreamKind,
    writer: Arc<MuxWriter>,
    opts: &StreamOptions,
) -> (Stream, StreamHandle) {
    new_stream_with_compression(id, kind, writer, opts, None)
}

/// As [`new_stream`], for a stream whose Message payloads are all
/// compressed with `compression`, both ways (mux-fork-2026.md §4): every
/// message sent is compressed before its size is checked and its credit
/// taken, and every message received is decompressed as the application
/// takes it, so size limits, queues and flow control count compressed
/// bytes. A client stream announces it in its InvokeMetadata
/// ([`drpc_wire::COMPRESSION_METADATA_KEY`]); a server stream takes it
/// from the client's.
pub fn new_stream_with_compression(
    id: u64,
    kind: StreamKind,
    writer: Arc<MuxWriter>,
    opts: &StreamOptions,
    compression: Option<Compression>,
) -> (Stream, StreamHandle) {
    let shared = Arc::new(Shared {
        id,
        kind,
        split_size: opts.split_size,
        max_message_size: opts.max_packet_size,
        compression,
        writer,
        discarded: AtomicBool::new(false),
        inner: Mutex::new(Inner {
            core: StreamCore::new(id, kind, opts),
            recv_wakers: WakerList::new(),
            term_wakers: WakerList::new(),
            credit_wakers: WakerList::new(),
            held: 0,
            live: None,
            announced: false,
            on_terminate: SmallVec::new(),
        }),
    });
    (
        Stream {
            shared: shared.clone(),
        },
        StreamHandle { shared },
    )
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Whether this side opened the stream.
    pub fn kind(&self) -> StreamKind {
        self.shared.kind
    }

    /// The compression of the stream's Message payloads, if any: what the
    /// client asked for in its InvokeMetadata. Messages are compressed and
    /// decompressed by the stream; the application sees them plain.
    pub fn compression(&self) -> Option<Compression> {
        self.shared.compression
    }

    /// Sends one message. Waits only while the connection's write buffer
    /// is above its high-water mark (and stops waiting if the stream ends).
    /// A message larger than the maximum packet size is refused locally
    /// with [`StreamErrorKind::MessageTooLarge`], since the peer would end
    /// the connection over it; on a compressed stream
    /// ([`Stream::compression`]) the limit applies to the message and to
    /// its compressed form.
    pub async fn send(&self, data: &[u8]) -> Result<(), StreamError> {
        self.send_payload(Payload::Borrowed(data)).await
    }

    /// As [`Stream::send`], taking the message by reference count: a large
    /// message (at least [`ZERO_COPY_MIN`](crate::ZERO_COPY_MIN) bytes) is
    /// written to the transport straight from `data`, without a copy.
    pub async fn send_bytes(&self, data: Bytes) -> Result<(), StreamError> {
        self.send_payload(Payload::Shared(std::slice::from_ref(&data)))
            .await
    }

    /// Sends the message encoded in `buf` and empties it: a small one is
    /// copied, so `buf` keeps its allocation for the next; the parts of a
    /// large one, and the buffers it shares, go to the transport by
    /// reference, without a copy.
    pub async fn send_encoded(&self, buf: &mut MessageBuf) -> Result<(), StreamError> {
        let result = match buf.as_contiguous() {
            Some(bytes) if bytes.len() < crate::ZERO_COPY_MIN => {
                self.send_payload(Payload::Borrowed(bytes)).await
            }
            _ => {
                let parts = buf.take_parts();
                self.send_payload(Payload::Shared(&parts)).await
            }
        };
        buf.clear();
        result
    }

    async fn send_payload(&self, data: Payload<'_>) -> Result<(), StreamError> {
        if let Some(compression) = self.shared.compression {
            let compressed = self.shared.compress(compression, data)?;
            return self
                .send_raw(Payload::Shared(std::slice::from_ref(&compressed)))
                .await;
        }
        self.send_raw(data).await
    }

    /// Sends a Message payload as it goes on the wire.
    async fn send_raw(&self, data: Payload<'_>) -> Result<(), StreamError> {
        let shared = &*self.shared;
        shared.check_size(data.len())?;
        let len = data.len();
        let (mut inner, reserved) = shared.wait_to_send(len).await;
        let id = match inner.core.begin_message() {
            Ok(id) => id,
            Err(e) => {
                shared.writer.unreserve(reserved);
                return Err(shared.err(e));
            }
        };
        inner.core.debit(len);
        let split = shared.split_size(&inner.core);
        let result = shared.append_message_reserved(reserved, id, data, split);
        if result.is_err() {
            shared.writer.unreserve(reserved);
        }
        let out = result
            .map_err(|e| shared.err(inner.core.check_cancel(StreamErrorKind::ConnectionLost(e))));
        drop(inner);
        out
    }

    /// Sends every message of `batch`, in order, and empties it: as many
    /// as the stream's credit and the connection's write buffer allow are
    /// appended together, under one lock of the stream and one of the
    /// writer, so that a run of small messages costs about what one does.
    /// Each message is sent under exactly the rules of [`Stream::send`]
    /// (size limit, credit, writer room, write budget); between rounds it
    /// waits as `send` does.
    ///
    /// If any message is over the maximum packet size, nothing is sent.
    /// On another error, the messages before the failing one were sent.
    /// Messages are copied into the write buffer, large ones included: use
    /// [`Stream::send_encoded`] for messages that share large buffers.
    pub async fn send_batch(&self, batch: &mut MessageBatch) -> Result<(), StreamError> {
        let result = match self.shared.compression {
            None => self.send_batch_inner(batch).await,
            Some(compression) => match self.compress_batch(compression, batch) {
                Ok(compressed) => self.send_batch_inner(&compressed).await,
                Err(e) => Err(e),
            },
        };
        batch.clear();
        result
    }

    /// The messages of `batch`, each compressed, once each is known to be
    /// within the maximum packet size (so nothing is sent otherwise).
    fn compress_batch(
        &self,
        compression: Compression,
        batch: &MessageBatch,
    ) -> Result<MessageBatch, StreamError> {
        let shared = &*self.shared;
        for i in 0..batch.len() {
            shared.check_size(batch.message(i).len())?;
        }
        let mut compressed = MessageBatch::with_capacity(batch.len(), batch.bytes());
        for i in 0..batch.len() {
            let message = batch.message(i);
            if compressed.push_compressed(compression, message).is_err() {
                return Err(shared.err(StreamErrorKind::MessageTooLarge {
                    size: message.len(),
                    limit: SNAPPY_MAX_INPUT,
                }));
            }
        }
        Ok(compressed)
    }

    async fn send_batch_inner(&self, batch: &MessageBatch) -> Result<(), StreamError> {
        let shared = &*self.shared;
        for i in 0..batch.len() {
            shared.check_size(batch.message(i).len())?;
        }
        let mut next = 0;
        while next < batch.len() {
            let first = batch.message(next).len();
            let (mut inner, reserved) = shared.wait_to_send(first).await;
            let first_id = match inner.core.begin_message() {
                Ok(id) => id,
                Err(e) => {
                    shared.writer.unreserve(reserved);
                    return Err(shared.err(e));
                }
            };
            inner.core.debit(first);
            let split = shared.split_size(&inner.core);
            let frame = drpc_wire::effective_split_size(split);
            // The messages after the first join this round while the
            // credit allows each and their bytes fit one reservation of
            // the write budget, taken at once (or not at all).
            let mut end = next + 1;
            let mut extra_reserved = 0;
            if end < batch.len() {
                let wanted = (batch.end(batch.len() - 1) - batch.end(next)).min(SEND_BATCH_ROUND);
                if shared.writer.try_reserve_send(wanted) {
                    extra_reserved = wanted;
                }
            }
            let mut extra = 0;
            while end < batch.len() {
                let len = batch.message(end).len();
                if extra + len > extra_reserved || !inner.core.send_allowed(len.min(frame)) {
                    break;
                }
                // Sending was open for the first message under this lock.
                if inner.core.begin_message().is_err() {
                    break;
                }
                inner.core.debit(len);
                extra += len;
                end += 1;
            }
            shared.writer.unreserve(extra_reserved - extra);
            let held = reserved + extra;
            let result = shared.writer.append_reserved(held, |buf| {
                for (k, i) in (next..end).enumerate() {
                    let id = Id::new(first_id.stream, first_id.message + k as u64);
                    append_packet(buf, id, Kind::MESSAGE, false, batch.message(i), split);
                }
            });
            if let Err(e) = result {
                shared.writer.unreserve(held);
                return Err(shared.err(inner.core.check_cancel(StreamErrorKind::ConnectionLost(e))));
            }
            drop(inner);
            next = end;
        }
        Ok(())
    }

    /// Receives the next message; `Ok(None)` is the clean end of the
    /// peer's sending (its CloseSend or Close). Queued messages are
    /// delivered before a remote termination is reported.
    pub async fn recv(&self) -> Result<Option<Bytes>, StreamError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The poll form of [`Stream::recv`], for `futures::Stream`
    /// implementations; the task of the last call is woken when a message
    /// or the end arrives.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        match inner.core.recv() {
            Recv::Empty => {
                register(&mut inner.recv_wakers, cx.waker());
                Poll::Pending
            }
            Recv::Message(data) => {
                shared.send_grant(&mut inner);
                shared.release(inner, false);
                Poll::Ready(shared.decompressed(data).map(Some))
            }
            Recv::End => Poll::Ready(Ok(None)),
            Recv::Failed(e) => Poll::Ready(Err(shared.err(e))),
        }
    }

    /// Moves the messages already queued into `out`, oldest first, in one
    /// step: at least one, and then more while fewer than `max_messages`
    /// and [`RECV_BATCH_BYTES`] bytes were taken. Returns how many were
    /// taken; `Ok(0)` is the clean end of the peer's sending. Waits, as
    /// [`Stream::poll_recv`] does, while nothing is queued.
    ///
    /// Messages taken are the consumer's: they no longer count against the
    /// stream's queue, and a flow-controlled stream grants their credit
    /// back at once. [`RecvBatch`] hands them out one by one.
    ///
    /// On a compressed stream it takes one message at a time, decompressed,
    /// so that a message that does not decompress fails its own call only
    /// ([`RecvBatch`] takes them in batches and decompresses each as it
    /// hands it out).
    pub fn poll_recv_many(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
        max_messages: usize,
    ) -> Poll<Result<usize, StreamError>> {
        if self.shared.compression.is_none() {
            return self.poll_take(cx, out, max_messages);
        }
        Poll::Ready(match ready!(self.poll_recv(cx)) {
            Ok(Some(data)) => {
                out.push_back(data);
                Ok(1)
            }
            Ok(None) => Ok(0),
            Err(e) => Err(e),
        })
    }

    /// [`Stream::poll_recv_many`] taking the payloads as they arrived
    /// (compressed, on a compressed stream).
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
        max_messages: usize,
    ) -> Poll<Result<usize, StreamError>> {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        let (mut taken, mut bytes) = (0, 0);
        loop {
            match inner.core.recv() {
                Recv::Message(data) => {
                    taken += 1;
                    bytes += data.len();
                    out.push_back(data);
                    if taken >= max_messages.max(1) || bytes >= RECV_BATCH_BYTES {
                        break;
                    }
                }
                _ if taken > 0 => break,
                Recv::Empty => {
                    register(&mut inner.recv_wakers, cx.waker());
                    return Poll::Pending;
                }
                Recv::End => return Poll::Ready(Ok(0)),
                Recv::Failed(e) => return Poll::Ready(Err(shared.err(e))),
            }
        }
        shared.send_grant(&mut inner);
        shared.release(inner, false);
        Poll::Ready(Ok(taken))
    }

    /// Half close: sends CloseSend unless sending is already over (then a
    /// silent no-op).
    pub fn close_send(&self) -> Result<(), StreamError> {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        let result = match inner.core.close_send() {
            Some(id) => {
                // A send waiting for writer room now has its answer.
                let waiting = std::mem::take(&mut inner.term_wakers);
                waiting.into_iter().for_each(Waker::wake);
                shared.append_terminal(&mut inner, id, Kind::CLOSE_SEND, false, &[])
            }
            None => Ok(()),
        };
        let out = result
            .map_err(|e| shared.err(inner.core.check_cancel(StreamErrorKind::ConnectionLost(e))));
        shared.release(inner, false);
        out
    }

    /// Ends the stream: sends Close unless already terminated (then a
    /// silent no-op).
    pub fn close(&self) -> Result<(), StreamError> {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        let result = match inner.core.close() {
            Some(id) => shared.append_terminal(&mut inner, id, Kind::CLOSE, false, &[]),
            None => Ok(()),
        };
        let out = result.map_err(|e| shared.err(StreamErrorKind::ConnectionLost(e)));
        shared.release(inner, false);
        out
    }

    /// Ends the stream with `err` (its code and text reach the peer), unless
    /// already terminated (then a silent no-op).
    pub fn send_error(&self, err: &CodedError) -> Result<(), StreamError> {
        Stream::send_error_shared(&self.shared, err)
    }

    fn send_error_shared(shared: &Shared, err: &CodedError) -> Result<(), StreamError> {
        let mut inner = lock(&shared.inner);
        let result = match inner.core.send_error() {
            Some(id) => shared.append_error(&mut inner, id, err, false),
            None => Ok(()),
        };
        let out = result.map_err(|e| shared.err(StreamErrorKind::ConnectionLost(e)));
        shared.release(inner, false);
        out
    }

    /// Cancels the stream with `reason` (use
    /// [`StreamErrorKind::Canceled`] or [`StreamErrorKind::DeadlineExceeded`]):
    /// sends Cancel (control bit set) unless already terminated; the
    /// connection and other streams go on. Receives then fail with
    /// `reason`, sends with `Eof`.
    pub fn cancel(&self, reason: StreamErrorKind) {
        self.shared.cancel(reason);
    }

    /// Replaces `err` with the cancellation if the stream was cancelled, so
    /// that an operation racing its own cancellation reports the
    /// cancellation rather than a bare end of stream (multiplexing.md §5.2).
    pub fn check_cancel(&self, err: StreamError) -> StreamError {
        let inner = lock(&self.shared.inner);
        StreamError::new(err.stream_id(), inner.core.check_cancel(err.into_kind()))
    }

    /// Whether the stream has terminated (nothing more will be sent).
    pub fn is_terminated(&self) -> bool {
        lock(&self.shared.inner).core.is_terminated()
    }

    /// A handle on the same stream that does not cancel it when dropped:
    /// for watching its termination or cancelling it from elsewhere (a
    /// deadline timer, a server's task).
    pub fn watch(&self) -> StreamWatch {
        StreamWatch {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the stream has terminated.
    pub async fn terminated(&self) {
        wait_terminated(&self.shared).await
    }
}

/// The most bytes of a [`MessageBatch`] that [`Stream::send_batch`]
/// appends at once beyond its first message: rounds stay short, so the
/// writer's high-water mark and the write budget keep their meaning.
pub const SEND_BATCH_ROUND: usize = 64 * 1024;

/// The most bytes [`Stream::poll_recv_many`] takes in one call once it has
/// a message: what a consumer holds beyond the stream's window or queue
/// bounds stays small.
pub const RECV_BATCH_BYTES: usize = 64 * 1024;

/// How many messages [`RecvBatch`] takes from its stream at once.
pub const RECV_BATCH_MESSAGES: usize = 64;

/// A consumer's side of a stream's receive queue: takes every message
/// already queued in one step ([`Stream::poll_recv_many`]) and hands them
/// out one at a time, so that a stream of small messages costs one lock
/// and one accounting per batch instead of per message.
///
/// It keeps the stream's rules: messages come in order, a local close or
/// cancel discards what the batch still holds (as it discards the queue),
/// and an end or error is reported only after every message before it.
/// The batch holds at most [`RECV_BATCH_MESSAGES`] messages and about
/// [`RECV_BATCH_BYTES`] bytes.
#[derive(Debug, Default)]
pub struct RecvBatch {
    messages: VecDeque<Bytes>,
}

impl RecvBatch {
    /// An empty batch.
    pub fn new() -> RecvBatch {
        RecvBatch::default()
    }

    /// Receives the next message of `stream` as [`Stream::recv`] does.
    /// A batch must always be used with the same stream.
    pub async fn recv(&mut self, stream: &Stream) -> Result<Option<Bytes>, StreamError> {
        poll_fn(|cx| self.poll_recv(stream, cx)).await
    }

    /// The poll form of [`RecvBatch::recv`].
    pub fn poll_recv(
        &mut self,
        stream: &Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        if !self.messages.is_empty() {
            if !stream.shared.discarded.load(Ordering::Acquire) {
                return Poll::Ready(self.next(stream));
            }
            self.messages.clear();
        }
        match ready!(stream.poll_take(cx, &mut self.messages, RECV_BATCH_MESSAGES)) {
            Ok(0) => Poll::Ready(Ok(None)),
            Ok(_) => Poll::Ready(self.next(stream)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// The next message the batch holds, decompressed on a compressed
    /// stream (a failure fails this receive only; the next goes on).
    fn next(&mut self, stream: &Stream) -> Result<Option<Bytes>, StreamError> {
        match self.messages.pop_front() {
            Some(data) => stream.shared.decompressed(data).map(Some),
            None => Ok(None),
        }
    }

    /// How many messages the batch holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

async fn wait_terminated(shared: &Shared) {
    poll_fn(|cx| {
        let mut inner = lock(&shared.inner);
        if inner.core.is_terminated() {
            Poll::Ready(())
        } else {
            register(&mut inner.term_wakers, cx.waker());
            Poll::Pending
        }
    })
    .await
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Whatever the stream still held is freed with it.
        let held = lock(&self.inner).held;
        self.writer.budget().release(held);
    }
}

/// Takes a terminated stream out of its connection's live count, once.
fn settle(inner: &mut Inner) {
    if inner.core.is_terminated()
        && let Some(live) = inner.live.take()
    {
        live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let (terminated, send_closed, kind) = {
            let inner = lock(&self.shared.inner);
            (
                inner.core.is_terminated(),
                inner.core.is_send_closed(),
                inner.core.kind(),
            )
        };
        if terminated {
            return;
        }
        if kind == StreamKind::Server && send_closed {
            let mut inner = lock(&self.shared.inner);
            if let Some(id) = inner.core.abandon()
                && let Err(e) = self
                    .shared
                    .append_terminal(&mut inner, id, Kind::CLOSE, false, &[])
            {
                tracing::debug!(stream = self.shared.id, error = %e, "close not sent");
            }
            self.shared.release(inner, false);
        } else {
            self.shared
                .cancel(StreamErrorKind::Canceled(Initiator::Local));
        }
    }
}

impl StreamHandle {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Which side opened the stream.
    pub fn kind(&self) -> StreamKind {
        self.shared.kind
    }

    /// The compression of the stream's Message payloads, if any.
    pub fn compression(&self) -> Option<Compression> {
        self.shared.compression
    }

    /// Writes InvokeMetadata (when `metadata` is non-empty) and Invoke for
    /// `rpc` in one step, so that a cancel can never land between them
    /// (multiplexing.md §3.8). The connection does this when it opens a
    /// client stream, once: a second Invoke would make the peer end the
    /// connection, which is why only the connection's side has it.
    ///
    /// The metadata sent is `metadata` without the keys the connection
    /// owns: the flow-control offer (`drpc-rs-flow`) when it makes one,
    /// and `drpc-compression` exactly when the stream is compressed (an
    /// application's own value for either is never sent).
    pub fn write_invoke(&self, rpc: &[u8], metadata: &Metadata) -> Result<(), StreamError> {
        self.write_opening(rpc, metadata, None)
    }

    /// Makes the unary request written next offer flow control in its
    /// InvokeMetadata, as a stream's opening does (in auto mode), so that
    /// a server of this implementation answers with its acceptance, which
    /// lists what it decompresses. Call before `write_unary`.
    pub fn offer_flow_control_on_unary(&self) {
        lock(&self.shared.inner).core.set_offer_on_unary();
    }

    /// Writes a whole unary request in one step: InvokeMetadata (when
    /// `metadata` is non-empty), Invoke, the Message and CloseSend, appended
    /// together so that they leave in a single write when the connection
    /// is idle. The message does not wait for writer room.
    ///
    /// On a compressed stream the InvokeMetadata carries
    /// [`drpc_wire::COMPRESSION_METADATA_KEY`] and the message goes
    /// compressed. If the message is refused (over the maximum packet
    /// size, before or after compression), nothing is written and the
    /// stream ends silently: dropping it sends nothing.
    pub fn write_unary(
        &self,
        rpc: &[u8],
        metadata: &Metadata,
        message: &Bytes,
    ) -> Result<(), StreamError> {
        self.write_request(
            rpc,
            metadata,
            Payload::Shared(std::slice::from_ref(message)),
        )
    }

    /// As [`StreamHandle::write_unary`], with the request encoded in `buf`,
    /// which it empties: a small request is copied straight into the
    /// connection's write buffer (`buf` keeps its allocation), the parts of
    /// a large one go by reference.
    pub fn write_unary_encoded(
        &self,
        rpc: &[u8],
        metadata: &Metadata,
        buf: &mut MessageBuf,
    ) -> Result<(), StreamError> {
        let result = match buf.as_contiguous() {
            Some(bytes) => self.write_request(rpc, metadata, Payload::Borrowed(bytes)),
            None => {
                let parts = buf.take_parts();
                self.write_request(rpc, metadata, Payload::Shared(&parts))
            }
        };
        buf.clear();
        result
    }

    /// A unary request: compressed first on a compressed stream, outside
    /// the stream's lock.
    fn write_request(
        &self,
        rpc: &[u8],
        metadata: &Metadata,
        message: Payload<'_>,
    ) -> Result<(), StreamError> {
        if let Some(compression) = self.shared.compression {
            let compressed = self
                .shared
                .compress(compression, message)
                .map_err(|e| self.unopened(e))?;
            return self.write_opening(
                rpc,
                metadata,
                Some(Payload::Shared(std::slice::from_ref(&compressed))),
            );
        }
        self.write_opening(rpc, metadata, Some(message))
    }

    /// Ends a stream whose opening was refused before anything was
    /// written, silently: it never existed for the peer.
    fn unopened(&self, err: StreamError) -> StreamError {
        let mut inner = lock(&self.shared.inner);
        inner.core.connection_lost(err.kind().clone());
        self.shared.release(inner, false);
        err
    }

    fn write_opening(
        &self,
        rpc: &[u8],
        metadata: &Metadata,
        message: Option<Payload<'_>>,
    ) -> Result<(), StreamError> {
        let shared = &*self.shared;
        if let Some(m) = &message {
            shared.check_size(m.len()).map_err(|e| self.unopened(e))?;
        }
        let mut inner = lock(&shared.inner);
        // A unary call carries one message each way: nothing to negotiate,
        // unless the connection asks (to learn what the server accepts).
        let offer = match message {
            Some(_) if !inner.core.offers_on_unary() => None,
            _ => inner.core.offer_flow_control(),
        };
        let mut encoded = Vec::new();
        let offered = offer.as_ref().map(FlowParams::to_metadata_value);
        // The connection's own keys replace the application's: a
        // compression key is sent exactly when the stream compresses, as
        // the fork's client does.
        let compressed = shared.compression.map(|c| c.as_metadata_value());
        encode_metadata(
            &mut encoded,
            metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .filter(|(k, _)| *k != FLOW_CONTROL_METADATA_KEY && *k != COMPRESSION_METADATA_KEY)
                .chain(offered.as_deref().map(|v| (FLOW_CONTROL_METADATA_KEY, v)))
                .chain(compressed.map(|v| (COMPRESSION_METADATA_KEY, v))),
        );
        // A connection that ended before the call could be written (the
        // server closed it at once, say) is what the call reports.
        let (md_id, invoke_id) = match inner.core.begin_invoke(!encoded.is_empty()) {
            Ok(ids) => ids,
            Err(e) => return Err(shared.err(inner.core.opening_failure(e))),
        };
        let unary = match message {
            Some(m) => {
                inner.core.debit(m.len());
                let id = inner.core.begin_message().map_err(|e| shared.err(e))?;
                // Sending was open a moment ago under the same lock, so
                // CloseSend is always granted here.
                let close_id = inner.core.close_send();
                Some((m, id, close_id))
            }
            None => None,
        };
        let split = shared.split_size(&inner.core);
        // A large shared message goes by reference, in its own append after
        // the Invoke; one that is copied anyway shares the Invoke's append
        // (one write).
        let inline = unary.and_then(|(m, id, close_id)| {
            m.contiguous()
                .filter(|b| b.len() < crate::ZERO_COPY_MIN || m.is_borrowed())
                .map(|b| (b, id, close_id))
        });
        let mut result = shared.writer.append(|buf| {
            if let Some(md_id) = md_id {
                append_packet(buf, md_id, Kind::INVOKE_METADATA, false, &encoded, split);
            }
            append_packet(buf, invoke_id, Kind::INVOKE, false, rpc, split);
            if let Some((m, id, close_id)) = inline {
                append_packet(buf, id, Kind::MESSAGE, false, m, split);
                if let Some(close_id) = close_id {
                    append_frame(buf, close_id, Kind::CLOSE_SEND, true, false, &[]);
                }
            }
        });
        if let (Ok(()), Some((m, id, close_id)), None) = (&result, unary, inline) {
            result = shared
                .append_message(id, m, split)
                .and_then(|()| match close_id {
                    Some(close_id) => shared.append_control(close_id, Kind::CLOSE_SEND, false, &[]),
                    None => Ok(()),
                });
        }
        let out = result
            .map_err(|e| shared.err(inner.core.check_cancel(StreamErrorKind::ConnectionLost(e))));
        shared.release(inner, false);
        out
    }

    /// Routes one inbound frame of this stream; never waits. `alone` says
    /// whether this is its connection's only active stream: a stream
    /// without flow control whose queue is over its bounds then keeps
    /// queueing (the connection's memory budget stops the reader instead),
    /// and otherwise fails alone with
    /// [`StreamErrorKind::QueueOverflow`]. An error is fatal for the
    /// connection.
    pub fn handle_frame(&self, frame: Frame, alone: bool) -> Result<(), ConnectionError> {
        self.handle_frames(frame, || None, alone)
    }

    /// As [`StreamHandle::handle_frame`] for `first` and then each frame
    /// `more` returns, until it returns `None` or the stream terminates:
    /// one lock, one accounting and at most one wake-up for a run of frames
    /// that arrived together. Each frame gets exactly the treatment
    /// `handle_frame` would give it. `more` runs under the stream's lock,
    /// so it must only take frames that are already buffered.
    pub fn handle_frames(
        &self,
        first: Frame,
        mut more: impl FnMut() -> Option<Frame>,
        alone: bool,
    ) -> Result<(), ConnectionError> {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        let mut changed = false;
        let mut frame = first;
        let result = loop {
            let inbound = match inner.core.handle_frame(frame) {
                Ok(inbound) => inbound,
                Err(e) => break Err(e),
            };
            let inbound = match inbound {
                Inbound::QueueFull(data) if alone => {
                    inner.core.force_enqueue(data);
                    Inbound::Queued
                }
                Inbound::QueueFull(_) => match inner.core.fail_overflow() {
                    Some((id, err)) => Inbound::Failed(id, err),
                    None => Inbound::Nothing,
                },
                other => other,
            };
            match inbound {
                Inbound::Nothing => {}
                Inbound::Queued | Inbound::StateChanged => changed = true,
                other => {
                    shared.answer(&mut inner, other);
                    changed = true;
                }
            }
            // Later frames of a terminated stream go the usual way (its
            // registry entry decides), not through this run.
            if inner.core.is_terminated() {
                break Ok(());
            }
            match more() {
                Some(next) => frame = next,
                None => break Ok(()),
            }
        };
        shared.release(inner, changed);
        result
    }

    /// Hands the stream one unit of `live`, the connection's count of live
    /// streams, which the caller already added: it is taken back when the
    /// stream terminates, before its last packet is appended, so that the
    /// count is exact as the peer sees it (the stream limit is checked
    /// against it in O(1)). Taken back at once if the stream has already
    /// terminated.
    pub fn release_on_termination(&self, live: Arc<AtomicUsize>) {
        let mut inner = lock(&self.shared.inner);
        // Already counted: keep one unit only.
        if let Some(previous) = inner.live.replace(live) {
            previous.fetch_sub(1, Ordering::AcqRel);
        }
        settle(&mut inner);
    }

    /// If the stream has queued past its bounds (as the connection's only
    /// stream), keeps what the bounds allow, drops the rest and fails the
    /// stream alone, as a shared stream would have: the connection calls
    /// this when it is out of memory and no longer has one stream only.
    /// Returns whether it did.
    pub fn shed_overflow(&self) -> bool {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        match inner.core.shed_overflow() {
            Some((id, err)) => {
                shared.answer(&mut inner, Inbound::Failed(id, err));
                shared.release(inner, true);
                true
            }
            None => false,
        }
    }

    /// Applies a WindowUpdate's credit to this stream's sender (dropped
    /// when the stream has no flow control or has terminated).
    pub fn window_update(&self, delta: u64) {
        let mut inner = lock(&self.shared.inner);
        if inner.core.grant(delta) {
            let waiting = std::mem::take(&mut inner.credit_wakers);
            drop(inner);
            waiting.into_iter().for_each(Waker::wake);
        }
    }

    /// Takes a client's flow-control offer (an auto server, at accept): the
    /// acceptance is appended at once, ahead of anything the handler sends.
    /// Returns whether the stream is now flow-controlled.
    pub fn accept_flow_control(&self, offer: FlowParams) -> bool {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        let Some((id, own)) = inner.core.accept_flow_control(offer) else {
            return false;
        };
        if let Err(e) = shared.writer.append(|buf| {
            // The server decompresses whatever a call asks for that it
            // knows: said here, so that the client may compress later calls.
            FlowNegotiation::Accept(own, CompressionSet::supported()).append_to(buf, id)
        }) {
            tracing::debug!(stream = shared.id, error = %e, "flow-control acceptance not sent");
        }
        true
    }

    /// Ends the stream because its connection ended; `reason` is what the
    /// application's receive reports after any queued messages.
    pub fn connection_lost(&self, reason: StreamErrorKind) {
        let mut inner = lock(&self.shared.inner);
        inner.core.connection_lost(reason);
        self.shared.release(inner, false);
    }

    /// Cancels the stream as [`Stream::cancel`] does (used for deadlines).
    pub fn cancel(&self, reason: StreamErrorKind) {
        self.shared.cancel(reason);
    }

    /// Runs `hook` once, when the stream terminates (at once if it already
    /// has), outside every lock of the stream. Several hooks run in the
    /// order they were added.
    pub fn on_terminate(&self, hook: impl FnOnce() + Send + 'static) {
        let mut inner = lock(&self.shared.inner);
        if inner.announced {
            drop(inner);
            hook();
        } else {
            inner.on_terminate.push(Box::new(hook));
        }
    }

    /// Ends the stream with `err`, as [`Stream::send_error`] does.
    pub fn send_error(&self, err: &CodedError) -> Result<(), StreamError> {
        Stream::send_error_shared(&self.shared, err)
    }

    /// Whether the stream has terminated.
    pub fn is_terminated(&self) -> bool {
        lock(&self.shared.inner).core.is_terminated()
    }

    /// Waits until the stream has terminated.
    pub async fn terminated(&self) {
        wait_terminated(&self.shared).await
    }
}
