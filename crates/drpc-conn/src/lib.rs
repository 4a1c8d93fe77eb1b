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
//! * **Errors** ([`Error`]) say whether the server answered with an error
//!   (its code and message), the call was cancelled or ran out of time, or
//!   the connection was lost or broke the protocol.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use drpc_conn::{CallOptions, Conn, ConnOptions};
//! use drpc_stream::Raw;
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

mod conn;
mod error;
mod invoker;

pub use conn::{CallOptions, ClientReceiver, ClientSender, ClientStream, Conn, ConnOptions};
pub use drpc_stream::{Encoding, Prost, Raw};
pub use drpc_wire::Metadata;
pub use error::Error;
pub use invoker::{Invoker, Responses};
pub use tokio_util::sync::CancellationToken;
