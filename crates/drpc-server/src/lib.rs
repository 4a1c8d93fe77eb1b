//! Serves DRPC (Go's `drpcserver`): accepts transports and runs each RPC,
//! in a task of its own whenever it has to wait.
//!
//! A [`Server`] wraps a [`Handler`](drpc_mux::Handler), normally a
//! [`Mux`](drpc_mux::Mux). For each connection it runs a multiplexing
//! [`Manager`](drpc_manager::Manager); for each RPC, it calls the handler
//! and ends the stream with CloseSend, or with an Error carrying the
//! handler's code. Stock sequential Go clients and multiplexing clients are
//! served on the same listener without any setting.
//!
//! * An RPC first runs on its connection's reader task, with the request
//!   that came with it already queued; one that has to wait moves to a task
//!   of its own. Most unary calls so cost no task and no hand-over between
//!   threads ([`ServerOptions::inline_first_poll`], on by default; first
//!   steps over [`INLINE_STEP_LIMIT`] close together, or one over
//!   [`INLINE_STEP_HARD_LIMIT`], turn it off for that connection).
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
