//! Routes a DRPC RPC path to its handler (Go's `drpcmux`).
//!
//! A [`Mux`] maps paths such as `/service.Service/Method1` to typed
//! handlers of the four RPC shapes. Messages go through an
//! [`Encoding`] ([`Prost`] for
//! protobuf). The server (`drpc-server`) calls [`Handler::handle`] once per
//! RPC and sends the final CloseSend, or the Error a handler returns with
//! its code. Generated code implements [`Description`] to register a whole
//! service at once. An [`Interceptor`] checks every call before its
//! handler (authentication, say), over DRPC and over the gRPC adapter
//! alike.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use drpc_mux::{Mux, RequestContext};
//! use drpc_stream::Raw;
//! use drpc_wire::CodedError;
//!
//! let mut mux = Mux::new();
//! mux.unary("/echo.Echo/Say", Raw, |_ctx: RequestContext, req: Bytes| async move {
//!     if req.is_empty() {
//!         return Err(CodedError::invalid_argument("empty request"));
//!     }
//!     Ok(req)
//! });
//! assert_eq!(mux.routes().len(), 1);
//! ```

mod context;
#[cfg(feature = "grpc")]
pub mod grpc;
mod intercept;
mod mux;
mod quote;
mod typed;

pub use context::{
    ConnectionInfo, Extensions, PeerAddr, PeerInfo, RequestContext, UnixCredentials,
};
pub use drpc_stream::{Encoding, Prost, Raw};
pub use drpc_wire::{Code, CodedError, Status, UNIMPLEMENTED};
pub use intercept::Interceptor;
pub use mux::{BoxFuture, Description, Handler, MethodDesc, MethodKind, Mux, ServerCall};
pub use typed::{RequestStream, ResponseSink, ServerReceiver, ServerSender};
