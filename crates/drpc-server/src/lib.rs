//! Serves DRPC (Go's `drpcserver`): accepts transports and runs each RPC
//! in a task of its own.
//!
//! A [`Server`] wraps a [`Handler`](drpc_mux::Handler), normally a
//! [`Mux`](drpc_mux::Mux). For each connection it runs a multiplexing
//! [`Manager`](drpc_manager::Manager); for each RPC, it calls the handler
//! and ends the stream with CloseSend, or with an Error carrying the
//! handler's code. Stock sequential Go clients and multiplexing clients are
//! served on the same listener without any setting.
//!
//! * Every RPC runs in a task of its own, so a handler that blocks its
//!   thread delays the other calls of its connection by no more than the
//!   runtime's scheduling: a watchdog wakes an idle worker when a handler's
//!   poll has lasted about 10 ms, which then takes over the connection's
//!   I/O. [`ServerOptions::inline_first_poll`] (off by default) runs first
//!   steps on the connection's reader task instead, for handlers known
//!   never to block, which saves a task per unary call.
//! * Connections, streams and memory are bounded (`drpc-manager`'s
//!   budgets, flow control and per-stream limits); the defaults of
//!   [`ServerOptions`] keep a server with 1 GiB of memory safe from any
//!   peers (see the README's worst-case formula).
//! * A handler that panics fails only its RPC (code 13, `internal error`);
//!   the server goes on.
//! * A call the client cancels, whose deadline passes (the client's
//!   `drpc-timeout` metadata) or whose connection ends has its handler
//!   future dropped; its [`RequestContext`](drpc_mux::RequestContext) is
//!   cancelled for any work it handed off.
//! * Who calls: handlers see the peer's address
//!   ([`RequestContext::peer`](drpc_mux::RequestContext::peer),
//!   [`peer_addr`](drpc_mux::RequestContext::peer_addr)) for TCP and Unix
//!   sockets, and what a transport adds to [`PeerInfo`] (the
//!   [`UnixCredentials`] of a Unix peer, say). [`Server::serve_incoming`]
//!   serves any listener (a stream of transports, each with its
//!   [`PeerInfo`]) with every limit applied; `serve_tcp` and `serve_unix`
//!   are made of it.
//! * Connection hygiene: a connection beyond
//!   [`ServerOptions::max_connections`] is closed at once; one that sends
//!   nothing within [`ServerOptions::handshake_timeout`] (off by default:
//!   clients that dial ahead send nothing until their first call) or has no
//!   stream and receives nothing for [`ServerOptions::idle_timeout`] (one
//!   hour) is closed.
//! * [`Server::shutdown`] stops accepting at once (the listeners are
//!   closed), tells running handlers
//!   ([`RequestContext::shutting_down`](drpc_mux::RequestContext::shutting_down),
//!   a future to select on), lets in-flight RPCs finish within a grace
//!   period, cancels the rest, and returns once every connection task has
//!   ended.
//! * TLS (the `tls` feature, with rustls; `tls-ring` adds rustls' ring
//!   provider): `Server::serve_tls` serves a TCP listener over TLS,
//!   handshakes running concurrently within a timeout, with every limit
//!   applied; over mutual TLS handlers see the client's certificate chain
//!   (`PeerCertificates`, in [`PeerInfo::extensions`]). `tls::connector`
//!   is the client side, for `drpc-conn`'s `Endpoint::from_connector`.
//! * Observability: a [`tracing`] span per connection and per call (at
//!   `INFO`, with method, peer, stream id, code and duration), inside
//!   which handlers run; events for connections opened, closed (with the
//!   reason) and refused, and for every call's end; metrics through the
//!   [`metrics`] facade, off unless a recorder is installed. The names
//!   are in [`observe`].
//! * Everything a user sets is a builder method of [`ServerOptions`]
//!   (message size, streams per connection, flow control, memory budgets,
//!   timeouts, connections), with the types it takes re-exported here:
//!   no need to depend on the internal crates.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use drpc_mux::{Mux, RequestContext};
//! use drpc_server::Server;
//! use drpc_stream::Raw;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let mut mux = Mux::new();
//! mux.unary("/echo.Echo/Say", Raw, |_: RequestContext, req: Bytes| async move { Ok(req) });
//! let server = Server::new(mux);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server.serve_tcp(listener).await
//! # }
//! ```

pub mod observe;
mod server;
#[cfg(feature = "tls")]
pub mod tls;

pub use server::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, INLINE_STEP_HARD_LIMIT, INLINE_STEP_LIMIT,
    SUGGESTED_HANDSHAKE_TIMEOUT, Server, ServerOptions,
};

#[cfg(feature = "tls")]
pub use tls::PeerCertificates;

// What handlers learn about their peer, and what `serve_incoming` takes.
pub use drpc_mux::{ConnectionInfo, Extensions, PeerAddr, PeerInfo, UnixCredentials};

// What the options take and return, so that setting them needs no other
// crate.
pub use drpc_manager::{
    DEFAULT_CONNECTION_MEMORY, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_METADATA_SIZE,
    DEFAULT_SHARED_MEMORY, DEFAULT_SHARED_WRITE_MEMORY, ManagerOptions,
};
pub use drpc_stream::{
    ConnectionError, FlowControl, FlowControlError, FlowControlMode, MemoryBudget, StreamOptions,
};

/// The default largest message accepted and sent
/// ([`ServerOptions::max_message_size`]): 4 MiB, as Go's.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = drpc_wire::DEFAULT_MAX_PACKET_SIZE;

pub mod shared_port;
pub use shared_port::{Rewind, SharedPort, SniffOptions};
