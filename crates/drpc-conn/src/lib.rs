//! The DRPC client connection (Go's `drpcconn`).
//!
//! A [`Conn`] makes unary and streaming calls over one transport, many at
//! once (multiplexed) or, with [`ConnOptions::sequential`], one at a time
//! for stock Go servers. Messages go through an
//! [`Encoding`]: protobuf via prost by default.
//!
//! * **Metadata and deadlines** travel in [`CallOptions`]. The remaining
//!   time reaches the server in the reserved metadata key `drpc-timeout`
//!   (gRPC's timeout format, e.g. `250m`; see
//!   [`drpc_wire::TIMEOUT_METADATA_KEY`]); a Rust server cancels the
//!   handler when it passes, a stock Go server sees one more pair.
//! * **Cancellation the Rust way**: dropping a call's future or a
//!   [`ClientStream`] sends Cancel for that call and nothing else; so do
//!   [`ClientStream::cancel`] and a token given to
//!   [`CallOptions::cancel_on`].
//! * **Compression** ([`CallOptions::compression`], or for every call
//!   [`ConnOptions::compression`]): CockroachDB's fork's per-call Snappy
//!   compression of every message, both ways. Off by default. Configured,
//!   it compresses at once: only toward servers that accept it (the fork,
//!   or a server of this implementation), since a stock Go server would
//!   hand the compressed bytes to its decoder. Negotiated
//!   ([`ConnOptions::compression_if_accepted`],
//!   [`CallOptions::compression_if_accepted`]), it waits for the server
//!   to say it decompresses it, which a server of this implementation does
//!   when it accepts a call's flow-control offer: safe toward any server.
//! * **Settings** of a connection ([`ConnOptions`]): message size, stream
//!   limits, flow control, receive queues, memory budgets, sequential
//!   mode, compression; what they take ([`FlowControl`],
//!   [`MemoryBudget`], the defaults) is re-exported here.
//! * **Errors** ([`Error`]) say whether the server answered with an error
//!   (its code and message), the call was cancelled or ran out of time, or
//!   the connection was lost or broke the protocol.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use drpc_conn::{CallOptions, Conn, ConnOptions, Raw};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! # let (io, peer) = tokio::io::duplex(4096);
//! # let server = drpc_manager::Manager::new(peer, drpc_manager::Role::Server, Default::default());
//! # tokio::spawn(async move {
//! #     let call = server.accept().await?;
//! #     let req = call.stream.recv().await?.unwrap_or_default();
//! #     call.stream.send(&req).await?;
//! #     call.stream.close_send()?;
//! #     call.stream.terminated().await;
//! #     anyhow::Ok(())
//! # });
//! let conn = Conn::new(io, ConnOptions::default());
//! let opts = CallOptions::new().timeout(std::time::Duration::from_secs(5));
//! let reply: Bytes = conn.unary_with(&Raw, "/echo.Echo/Say", &Bytes::from("hi"), &opts).await?;
//! assert_eq!(reply, "hi");
//! # Ok(())
//! # }
//! ```
//!
//! # Channel
//!
//! A [`Channel`] is the client handle for production: it dials lazily,
//! dials again with jittered exponential [`Backoff`] when its connection
//! ends, fails calls fast with [`Error::Unavailable`] (naming the address
//! and the last connect error) while it cannot connect, keeps a pool of
//! connections in sequential mode, and spreads calls over many servers
//! ([`Channel::balance_list`], [`Channel::balance_channel`]). It is an
//! [`Invoker`], so generated clients take it as they take a [`Conn`], and
//! a `tower::Service` of [`Request`]s, so `tower` layers wrap its unary
//! calls ([`ServiceInvoker`] hands the stack to a generated client);
//! [`with_interceptor`] changes the options of every call.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use drpc_conn::{CallOptions, Endpoint, Invoker, Raw, ServiceInvoker, with_interceptor};
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! # let mut mux = drpc_mux::Mux::new();
//! # mux.unary("/echo.Echo/Say", Raw, |ctx: drpc_mux::RequestContext, req: Bytes| async move {
//! #     let token = ctx.metadata().get("authorization").cloned().unwrap_or_default();
//! #     Ok(Bytes::from(format!("{} ({token})", String::from_utf8_lossy(&req))))
//! # });
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?.to_string();
//! # let server = drpc_server::Server::new(mux);
//! # tokio::spawn(async move { server.serve_tcp(listener).await });
//! let channel = Endpoint::tcp(addr)
//!     .connect_timeout(Duration::from_secs(2))
//!     .connect_lazy(); // `GreeterDrpcClient::new(channel.clone())` works too
//!
//! // An interceptor: every call, unary or streaming, carries a token.
//! let authed = with_interceptor(channel.clone(), |_path, opts| {
//!     Ok(opts.metadata("authorization", "Bearer t0k3n"))
//! });
//! let reply: Bytes = authed
//!     .invoke(&Raw, "/echo.Echo/Say", &Bytes::from("hi"), &CallOptions::new())
//!     .await?;
//! assert_eq!(reply, "hi (Bearer t0k3n)");
//!
//! // tower layers over unary calls; streaming calls go to the channel.
//! let layered = ServiceInvoker::new(
//!     ServiceBuilder::new()
//!         .timeout(Duration::from_secs(1))
//!         .concurrency_limit(32)
//!         .service(authed.clone()),
//!     authed,
//! );
//! let reply: Bytes = layered
//!     .invoke(&Raw, "/echo.Echo/Say", &Bytes::from("again"), &CallOptions::new())
//!     .await?;
//! assert_eq!(reply, "again (Bearer t0k3n)");
//! # Ok(())
//! # }
//! ```

//! # TLS
//!
//! With the `tls` feature (rustls, without a crypto provider) or
//! `tls-ring` (with rustls' ring provider), a channel dials TLS over TCP:
//! `Endpoint::tcp(addr).tls(server_name, config)` runs a handshake with
//! a rustls `ClientConfig` on every connection it makes, checking the
//! server's certificate against `server_name`, and keeps every other
//! setting of the endpoint (connect timeout, keepalive, TCP_NODELAY, the
//! migration header, sent inside TLS). Mutual TLS is a matter of the
//! `ClientConfig` (`with_client_auth_cert`). `Conn::connect_tls` dials
//! one connection the same way. The `tls` module re-exports rustls, its
//! `ClientConfig` and `ServerName`, so that no other dependency is
//! needed; `Endpoint::tls` has an example. The server side is
//! drpc-server's `serve_tls`, with the same features.

mod channel;
mod conn;
mod error;
mod header;
mod invoker;
mod service;
#[cfg(feature = "tls")]
pub mod tls;

pub use channel::{
    Backoff, Channel, Connectivity, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_TCP_KEEPALIVE, Endpoint, ResponseFuture,
};
pub use conn::{CallOptions, ClientReceiver, ClientSender, ClientStream, Conn, ConnOptions};
pub use drpc_stream::EncodingError;
pub use drpc_stream::{Encoding, Prost, Raw};
pub use drpc_wire::Metadata;
pub use drpc_wire::{Code, CodedError, Compression, Status};
pub use error::Error;
pub use header::{WithMigrationHeader, with_migration_header};
pub use invoker::{Invoker, Responses};
pub use service::{
    InterceptedChannel, Interceptor, Request, ServiceInvoker, from_layer_error, with_interceptor,
};
pub use tokio_util::sync::CancellationToken;

// What the options take, so that setting them needs no other crate.
pub use drpc_manager::{
    DEFAULT_CONNECTION_MEMORY, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_SHARED_MEMORY,
    DEFAULT_SHARED_WRITE_MEMORY, ManagerOptions,
};
pub use drpc_stream::{
    ConnectionError, DEFAULT_RECV_QUEUE_BYTES, DEFAULT_RECV_QUEUE_MESSAGES,
    DEFAULT_WRITER_HIGH_WATER, FlowControl, FlowControlError, FlowControlMode, MemoryBudget,
    StreamOptions,
};

/// The default largest message sent and accepted
/// ([`ConnOptions::max_message_size`]): 4 MiB, as Go's.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = drpc_wire::DEFAULT_MAX_PACKET_SIZE;
