//! One DRPC stream: the state machine of an RPC and its receive queue.
//!
//! A stream is one RPC on a connection. This crate holds its rules (which
//! packet may follow which, what every operation returns after each kind
//! of termination) and nothing about sockets or tasks: the connection
//! (`drpc-manager`) feeds it frames through a [`StreamHandle`] and drains
//! the [`MuxWriter`] it writes into; the application uses the [`Stream`].
//!
//! # Design
//!
//! * **One lock per stream.** A stream's state (a sans-IO state machine),
//!   its receive queue and the wakers of whoever waits on it sit behind one
//!   short mutex. Every operation takes it, decides, appends its frames to
//!   the connection's [`MuxWriter`] *while still holding it*, and releases
//!   it before waking anyone. Because the check and the append happen under
//!   the same lock, no frame of a stream is ever appended after the stream
//!   terminated, and no Cancel can land between an InvokeMetadata and its
//!   Invoke, or between the frames of one message.
//! * **Writes never do I/O.** [`MuxWriter::append`] is a memcpy under the
//!   writer's lock (lock order: stream, then writer; the writer never takes
//!   a stream lock). Message sends wait only while the writer holds more
//!   than its high-water mark; control packets never wait.
//! * **Large messages are not copied on the way out.** An [`Encoding`]
//!   writes into a [`MessageBuf`]; with [`Prost`], a `bytes::Bytes` field of
//!   at least [`ZERO_COPY_MIN`] bytes stays a reference to the caller's
//!   memory, and [`Stream::send_encoded`] queues it in the [`MuxWriter`] by
//!   reference too, so it goes from the message to the socket in one
//!   vectored write.
//! * **Receive queue, flow control, isolation.** Each stream queues
//!   received messages and hands them out as the [`bytes::Bytes`] they
//!   arrived in (no copy). [`StreamHandle::handle_frame`] never waits: a
//!   flow-controlled stream ([`FlowControl`]) holds its peer to the window
//!   it granted plus one message; a stream without flow control is bounded
//!   in messages and bytes while it shares its connection, and fails alone
//!   with [`StreamErrorKind::QueueOverflow`] past the bound (a message over
//!   the size limit fails it with [`StreamErrorKind::ReceivedTooLarge`]);
//!   the peer then gets an abortive Error with ResourceExhausted. What a
//!   stream holds is charged to its connection's [`MemoryBudget`], which
//!   is what makes the connection stop reading. The whole design, with the
//!   reasons, is in `drpc-manager`'s crate documentation. Queued messages
//!   are delivered before a termination by the peer, a limit or the
//!   connection is reported; a local close or cancel discards them.
//! * **Batches.** A stream of small messages costs about one lock, one
//!   accounting and one wake-up per batch, not per message: the connection
//!   routes a run of one stream's frames that arrived together in one step
//!   ([`StreamHandle::handle_frames`]), a consumer takes every queued
//!   message at once ([`Stream::poll_recv_many`], handed out one by one by
//!   [`RecvBatch`]), and [`Stream::send_batch`] appends a [`MessageBatch`]
//!   under one lock of the stream and one of the writer. Each message still
//!   goes through exactly the rules it would alone (order, credit, bounds,
//!   cancellation).
//! * **Credit.** A flow-controlled sender waits until the next message's
//!   first frame fits its balance; a grant, a cancel or the stream's end
//!   wakes it. Receives grant consumed bytes back in WindowUpdates.
//! * **Compression** (CockroachDB's fork's, mux-fork-2026.md §4). A
//!   stream made with [`new_stream_with_compression`] compresses every
//!   Message payload it sends, in one [`drpc_wire::Compression`] block,
//!   and decompresses every one it receives; the application sees plain
//!   messages. Compression happens outside the stream's lock, before the
//!   size check, the credit and the write budget, which therefore count
//!   compressed bytes (a message in parts is gathered into one buffer
//!   first); a message is also refused if it is over the maximum packet
//!   size before compression, since that bounds what the peer
//!   decompresses. Decompression happens as the application takes a
//!   message ([`Stream::recv`], [`RecvBatch`], one at a time in
//!   [`Stream::poll_recv_many`]), outside the lock, after the queue and
//!   the grants counted it compressed; a block that declares more than
//!   the maximum packet size is refused before anything is allocated. A
//!   message that does not decompress fails that receive alone with
//!   [`StreamErrorKind::Decompress`]: the next receive returns the next
//!   message, and the stream and its connection go on, as in the fork.
//!   Without compression the only cost is one branch per send and
//!   receive.
//! * **Termination.** First error wins. After termination, `close_send`,
//!   `close`, `send_error` and `cancel` are silent no-ops that send
//!   nothing. The results of sends and receives after each kind of
//!   termination follow semantics.md §3.6 ([`StreamErrorKind`]).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use drpc_stream::{FlowControl, MuxWriter, StreamKind, StreamOptions, new_stream};
//!
//! # futures_executor::block_on(async {
//! let writer = Arc::new(MuxWriter::new(0));
//! // Without flow control, as with a stock peer: nothing to negotiate.
//! let opts = StreamOptions { flow_control: FlowControl::off(), ..StreamOptions::default() };
//! let (stream, handle) = new_stream(1, StreamKind::Client, writer.clone(), &opts);
//! // The connection's side writes the opening; the application's sends.
//! handle.write_invoke(b"/service.Service/Method1", &Default::default())?;
//! stream.send(&[0x08, 0x05]).await?;
//! stream.close_send()?;
//! // Invoke, Message and CloseSend wait together for the connection's writer task.
//! assert_eq!(writer.buffered(), 28 + 6 + 4);
//! # Ok::<(), drpc_stream::StreamError>(())
//! # }).unwrap();
//! ```

mod budget;
mod core;
mod encoding;
mod error;
mod flow;
mod mux_writer;
mod queue;
mod stream;
mod sync;

pub use budget::MemoryBudget;
pub use core::QUEUED_MESSAGE_COST;
#[cfg(feature = "prost")]
pub use encoding::Prost;
pub use encoding::{Encoding, EncodingError, MessageBatch, MessageBuf, Raw};
pub use error::{ConnectionError, Initiator, StreamError, StreamErrorKind};
pub use flow::{FlowControl, FlowControlError, FlowControlMode};
pub use mux_writer::{Batch, DEFAULT_WRITER_HIGH_WATER, MuxDrain, MuxWriter, ZERO_COPY_MIN};
pub use queue::{DEFAULT_RECV_QUEUE_BYTES, DEFAULT_RECV_QUEUE_MESSAGES};
pub use stream::{
    RECV_BATCH_BYTES, RECV_BATCH_MESSAGES, RecvBatch, SEND_BATCH_ROUND, Stream, StreamHandle,
    StreamKind, StreamOptions, StreamWatch, new_stream, new_stream_with_compression,
};
