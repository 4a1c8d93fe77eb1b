//! Serves DRPC (Go's `drpcserver`): accepts transports and runs a task per
//! RPC.
//!
//! A [`Server`] wraps a [`Handler`](drpc_mux::Handler), normally a
//! [`Mux`](drpc_mux::Mux). For each connection it runs a multiplexing
//! [`Manager`](drpc_manager::Manager); for each RPC, a task that calls the
//! handler and ends the stream with CloseSend, or with an Error carrying
//! the handler's code. Stock sequential Go clients and multiplexing
//! clients are served on the same listener without any setting.
//!
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

pub use server::{DEFAULT_MAX_CONNECTIONS, Server, ServerOptions};
