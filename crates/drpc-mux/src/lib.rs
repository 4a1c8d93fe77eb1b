//! Routes a DRPC RPC path to its handler (Go's `drpcmux`).
//!
//! A [`Mux`] maps paths such as `/service.Service/Method1` to typed
//! handlers of the four RPC shapes. Messages go through an
//! [`Encoding`] ([`Prost`] for
//! protobuf). The server (`drpc-server`) calls [`Handler::handle`] once per
//! RPC and sends the final CloseSend, or the Error a handler returns with
//! its code. Generated code implements [`Description`] to register a whole
//! service at once.
//!
//! # Middleware
//!
//! Two kinds of middleware run around every call to a registered path,
//! over DRPC and over the gRPC adapter alike ([`Middleware`]):
//!
//! - an [`Interceptor`] ([`Mux::with_interceptor`]), a closure for the
//!   common case: check the metadata, the path or the peer, reject the
//!   call, or add values to the context's extensions for the handler;
//! - `tower` layers ([`Mux::layer`]) over a [`Call`]: the call's context
//!   (path, metadata, peer, deadline, cancellation, extensions), which
//!   [`Protocol`] carried it and, over DRPC, its message stream. They can
//!   do what an interceptor does, and what needs the whole call: time it,
//!   limit how many run at once, bound how long they take, see how they
//!   ended. [`SkipPaths`] opts methods out of a layer; their errors reach
//!   the client as [`layer_error`] maps them.
//!
//! The interceptor runs first, then the layers (the one added last
//! first), then the handler. Neither runs for an unknown path, which is
//! answered Unimplemented. Without them a call costs two checks of an
//! `Option`.
//!
//! The gRPC adapter that `drpc-codegen` generates (feature `grpc`, see
//! the `grpc` module) takes the mux's middleware when built with
//! `SvcGrpcAdapter::from_mux(server, &mux)`: gRPC calls then get the same
//! interceptor and the same layers, with nothing else to remember.
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
mod layer;
mod mux;
mod quote;
mod typed;

pub use context::{
    ConnectionInfo, Extensions, PeerAddr, PeerInfo, RequestContext, UnixCredentials,
};
pub use drpc_stream::{Encoding, Prost, Raw};
pub use drpc_wire::{Code, CodedError, Status, UNIMPLEMENTED};
pub use intercept::Interceptor;
pub use layer::{
    Call, CallService, Middleware, Protocol, SkipPaths, SkipPathsService, layer_error,
};
pub use mux::{BoxFuture, Description, Handler, MethodDesc, MethodKind, Mux, ServerCall};
pub use typed::{RequestStream, ResponseSink, ServerReceiver, ServerSender};
