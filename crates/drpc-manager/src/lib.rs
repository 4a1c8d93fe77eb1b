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
//! **Queues and backpressure.** Each stream queues what it received
//! (bounded in messages and bytes); when a queue is full the reader waits
//! for that stream's application, holding up the whole connection (see
//! `drpc-stream`). Message senders wait while the writer holds more than
//! its high-water mark.
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
    DEFAULT_MAX_METADATA_SIZE, DEFAULT_SHARED_MEMORY, ManagerOptions, Role,
};
