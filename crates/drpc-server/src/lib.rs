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
//! * [`Server::shutdown`] stops accepting, lets in-flight RPCs finish
//!   within a grace period, cancels the rest, and returns once every
//!   connection task has ended.
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

mod server;

pub use server::{
    DEFAULT_MAX_CONNECTIONS, INLINE_STEP_HARD_LIMIT, INLINE_STEP_LIMIT, Server, ServerOptions,
};
