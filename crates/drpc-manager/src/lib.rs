//! The DRPC connection core: many concurrent streams over one transport.
//!
//! A [`Manager`] owns one transport (anything `AsyncRead + AsyncWrite`). A
//! client opens streams with [`Manager::open_stream`]; a server takes the
//! streams its peer opens with [`Manager::accept`], or has them handed to a
//! callback on the reader task ([`Manager::with_acceptor`], what
//! `drpc-server` uses: one task switch less per RPC). The design is
//! CockroachDB's stream multiplexing (multiplexing.md); with
//! [`ManagerOptions::sequential`] a client also talks to the original,
//! one-stream-at-a-time Go implementation.
//!
//! # How it works
//!
//! **Two tasks per connection.**
//!
//! * The *reader* is the only reader of the transport and the single
//!   authority on its health. It decodes frames
//!   ([`drpc_wire::FrameReader::coalescing`]: no copy per frame, and the
//!   frames of a large message read straight into one buffer), looks the stream id up in the registry and hands
//!   the frame to that stream, which assembles its own packets (frames of
//!   different streams interleave). On a server, Invoke and InvokeMetadata
//!   frames of unregistered ids are assembled per id until the Invoke is
//!   complete; the reader then registers the stream and passes it to the
//!   accept loop or the acceptor callback. Frames of unknown or finished streams are dropped.
//!   When a Message frame is followed by more of the same stream's Message
//!   frames already in the read buffer, the whole run goes to the stream
//!   in one step ([`drpc_stream::StreamHandle::handle_frames`]): one
//!   registry lookup, one stream lock and one wake-up for all of them, the
//!   bytes not yet routed charged to the budget for the run (sequential
//!   connections, which check ids frame by frame, go one by one).
//! * The *writer* drains the connection's [`drpc_stream::MuxWriter`]:
//!   streams append whole frames to one shared buffer under a short lock
//!   and the writer swaps the buffer out and writes it in one call, so
//!   frames of concurrent streams leave in batches. A unary call's Invoke,
//!   Message and CloseSend are appended back to back and normally leave in
//!   one write.
//!
//! **Locks.** Each stream has one mutex (its state and queue); the writer
//! has one (its buffer); the registry has one (id → stream). The order is
//! stream, then writer; the registry lock is never held while taking
//! another. A stream checks its state and appends its frames under its own
//! lock, so nothing is written for a stream after it terminated — which is
//! what lets a stock sequential Go client use a multiplexing server.
//!
//! **Queues and backpressure.** See the next section: the reader never
//! waits for one stream; message senders wait while the writer holds more
//! than its high-water mark, and for credit when their stream is
//! flow-controlled.
//!
//! **Who terminates what.**
//!
//! * Connection-scoped (multiplexing.md §4): a read error or end of file,
//!   a write error in the writer task, any framing or protocol violation,
//!   [`Manager::close`], or dropping the last [`Manager`]. Termination
//!   stops the writer (unsent bytes are discarded), stops both tasks (the
//!   transport is closed when both halves are dropped) and ends every
//!   stream at once: a client's streams fail with the connection error, a
//!   server's see a peer that went away as a cancellation.
//! * Stream-scoped: Error, Cancel, Close and CloseSend from the peer, and
//!   the application's own close or cancel. Cancelling one stream sends
//!   Cancel and ends only that stream. An Invoke beyond
//!   [`ManagerOptions::max_concurrent_streams`] is refused with an Error
//!   on that stream.
//! * A terminated stream removes itself from the registry; in sequential
//!   mode that is also when the next stream may start.
//!
//! # Flow control, memory and isolation
//!
//! The rule: **no stream can stop its connection's reader, and nothing a
//! peer sends can make a connection hold more than its budget.** The
//! reader always goes on reading while the connection is within its
//! memory budget, so a Cancel, a frame of another stream, an end of file
//! or a reset is always seen.
//!
//! **The memory budget.** Every connection charges what it holds for its
//! peer to a [`drpc_stream::MemoryBudget`]
//! ([`ManagerOptions::max_connection_memory`], 32 MiB by default), which is
//! also charged through to a budget shared by every connection made with
//! the same options ([`ManagerOptions::shared_memory`], 256 MiB by default:
//! a server's connections share it). Charged: messages received and not
//! yet taken by the application, half-assembled packets, Invokes still
//! assembling (their metadata at its parsed size, which the peer cannot
//! inflate: [`ManagerOptions::max_metadata_size`] bounds it), the path and
//! metadata of every stream being served until it ends, and every byte
//! waiting for the writer task — Error replies and stream-limit refusals
//! included. Before reading each frame the reader checks both budgets; over
//! either it stops reading until the application takes messages or the
//! transport drains the writer. That is TCP backpressure on the peer: it
//! pauses the whole connection, but only when the connection as a whole
//! holds too much, never because of one stream. [`Manager::held_bytes`]
//! reports the count.
//!
//! **A stream whose application does not read.** What happens depends on
//! the stream's flow control:
//!
//! * *Flow-controlled* (below): the peer may have at most the window it was
//!   granted plus one message queued. It never has more unless it ignores
//!   the protocol, and then its stream fails alone: an abortive Error
//!   (control bit) with ResourceExhausted goes to the peer, and the local
//!   application reads what was queued, then
//!   [`drpc_stream::StreamErrorKind::QueueOverflow`].
//! * *Not flow-controlled*, the connection's only active stream (a
//!   sequential stock peer, say): its queue keeps growing, up to the
//!   connection's budget, and then the reader pauses — TCP backpressure is
//!   the right tool when nobody else shares the connection.
//! * *Not flow-controlled*, sharing the connection: once its queue holds
//!   [`drpc_stream::StreamOptions::recv_queue_messages`] messages or
//!   [`drpc_stream::StreamOptions::recv_queue_bytes`] bytes, the stream
//!   fails alone with ResourceExhausted, as above, so that the others keep
//!   flowing. Waiting instead would stall every stream of the connection
//!   (head-of-line blocking), which is what the fork's peers do without
//!   flow control and what made multiplexing unsafe.
//!
//! **Per-stream limits.** A message larger than
//! [`drpc_stream::StreamOptions::max_packet_size`] fails its stream alone,
//! in both directions: refused before it is sent
//! ([`drpc_stream::StreamErrorKind::MessageTooLarge`]), or, received, with
//! an abortive ResourceExhausted to the peer and
//! [`drpc_stream::StreamErrorKind::ReceivedTooLarge`] locally
//! (`is_too_large()` is true on all of these). A single frame that
//! declares more than the limit still ends the connection: its bytes cannot
//! be skipped without reading them. The stream limit
//! ([`ManagerOptions::max_concurrent_streams`]) is checked in O(1) against a
//! count that a stream leaves before its last packet is written, so a peer
//! that opens its next call as soon as the last one ended is never refused.
//!
//! **Flow control** ([`drpc_stream::FlowControl`], per connection, in
//! [`drpc_stream::StreamOptions::flow_control`]) is CockroachDB's fork's,
//! on the wire (mux-fork-2026.md §2): each stream's sender has a credit
//! balance, starts with the receiver's window (the fork's 2 MiB in `fork`
//! mode, 8 MiB between peers of this implementation in `auto`), may start
//! a Message only while its first frame (at most 64 KiB) fits, and may
//! overdraw with the rest of it, so a message larger than the window still
//! goes. The receiver grants back what its application consumed with a
//! `WindowUpdate` (kind 8, control bit, message id 0, one varint) once at
//! least the threshold (512 KiB; 1 MiB in `auto`) has accumulated, and never after the
//! stream ended. The reader takes WindowUpdates out before any id check,
//! in every mode, and drops one that does not conform or that arrives with
//! flow control off: a fork peer's grant never ends a connection. Three
//! modes:
//!
//! * `auto` (the default): flow control on the streams whose peer has shown
//!   it speaks it, none elsewhere. A client stream (not a unary call: one
//!   message each way needs no window) offers it with the InvokeMetadata
//!   key `drpc-rs-flow`, which stock and fork servers ignore. A server in
//!   auto mode answers with a negotiation packet (kind 9, control bit, the
//!   stream's next message id: a peer that does not know it ignores it),
//!   gates its own Messages by the client's window from then on, and
//!   grants with WindowUpdates (safe: the client has shown it takes them
//!   out). The client counts its Messages from the start but waits for
//!   credit only once it has the answer; then it sends a "gating" marker
//!   (kind 9 again) and the server holds it to the server's window from
//!   there, the earlier bytes exempt. A client therefore never sends a
//!   stock or fork server anything but one metadata entry, and never
//!   waits for credit a server will not send; a server sends kind 8 or 9
//!   only to a client that asked.
//! * `fork`: every stream gated and granted from the start, as the fork's
//!   peers with flow control on assume (they cannot announce it): use it,
//!   with [`ManagerOptions::fork_flow_control`], for such peers, on both
//!   sides.
//! * `off`: never gate, never grant.
//!
//! [`drpc_stream::FlowControl::with_window`] checks the liveness rule when
//! options are built (window ≥ one frame, threshold ≤ window − one frame):
//! otherwise a receiver holding back less than a threshold could leave its
//! sender with less than a frame of credit forever.
//!
//! # Compression
//!
//! Per stream, chosen by the client, as CockroachDB's fork does it
//! (mux-fork-2026.md §4): a client stream opened with a
//! [`drpc_wire::Compression`] ([`ManagerOptions::compression`] for every
//! stream, [`Manager::open_stream_with`] for one) carries the
//! InvokeMetadata entry `drpc-compression: snappy`, and every Message
//! payload of the stream, both ways, is one Snappy block (the block
//! format, not the framed one; an empty message is the byte `00`); with
//! drpc-wire's `minlz` feature, `minlz-fastest` too. Nothing
//! else is compressed: not Invoke, InvokeMetadata, Error, Cancel, Close,
//! CloseSend, WindowUpdate or the flow-control negotiation.
//!
//! * **Limits and flow control count compressed bytes.** A message is
//!   compressed before its size is checked and its credit taken, and
//!   split into frames after; received, it is queued, charged to the
//!   memory budget and granted back compressed, and decompressed only as
//!   the application takes it. A message over
//!   [`drpc_stream::StreamOptions::max_packet_size`] before or after
//!   compression is refused before sending; received, a block declaring
//!   more than that limit is refused before anything is allocated for it
//!   (a decompression bomb costs nothing).
//! * **A payload that does not decompress fails that receive only**
//!   ([`drpc_stream::StreamErrorKind::Decompress`], whose text begins
//!   `protocol error: `): the next receive returns the next message, and
//!   the stream and the connection go on, as in the fork.
//! * **Server.** The key is taken out of the metadata the handler sees
//!   ([`Incoming::metadata`]) and the stream compresses as the client
//!   asked ([`drpc_stream::Stream::compression`]). A value this side does
//!   not know (`minlz-fastest` too, unless drpc-wire's `minlz` feature is
//!   on) refuses that stream alone with an Error packet, code
//!   Unimplemented, text `protocol error: unsupported compression:
//!   "<name>"`. The fork's server ends the whole connection
//!   instead; being liberal costs nothing here, since nothing of the
//!   stream has been read.
//! * **Configured or negotiated.** The server never answers the key, and
//!   a stock (storj) server would pass it to its handler and hand the
//!   compressed bytes to its decoder: set [`ManagerOptions::compression`]
//!   only toward servers known to accept it (the fork, or a server of
//!   this implementation). [`ManagerOptions::compression_if_accepted`]
//!   is safe toward any server: a server of this implementation lists
//!   what it decompresses when it accepts a stream's flow-control offer
//!   (kind 9, [`drpc_wire::FlowNegotiation::Accept`]), and the client
//!   compresses only the streams it opens after that
//!   ([`Manager::peer_compressions`]). Servers that never accept an offer
//!   (stock Go, the fork, flow control off) get plain streams.
//!
//! # Example
//!
//! ```
//! use drpc_manager::{Manager, ManagerOptions, Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let client = Manager::new(client_io, Role::Client, ManagerOptions::default());
//! let server = Manager::new(server_io, Role::Server, ManagerOptions::default());
//!
//! let call = client.open_stream("/service.Service/Method1", &Default::default()).await?;
//! call.send(b"ping").await?;
//! call.close_send()?;
//!
//! let incoming = server.accept().await?;
//! assert_eq!(incoming.rpc, "/service.Service/Method1");
//! assert_eq!(incoming.stream.recv().await?.as_deref(), Some(&b"ping"[..]));
//! incoming.stream.send(b"pong").await?;
//! incoming.stream.close_send()?;
//!
//! assert_eq!(call.recv().await?.as_deref(), Some(&b"pong"[..]));
//! assert_eq!(call.recv().await?, None);
//! client.close().await;
//! # Ok(())
//! # }
//! ```

mod invoke;
mod manager;
mod options;

pub use manager::{Incoming, Manager};
pub use options::{
    DEFAULT_ACCEPT_BACKLOG, DEFAULT_CONNECTION_MEMORY, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_METADATA_SIZE, DEFAULT_SHARED_MEMORY, DEFAULT_SHARED_WRITE_MEMORY, ManagerOptions,
    Role,
};
