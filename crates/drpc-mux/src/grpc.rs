//! Serving one implementation over gRPC (tonic) as well as DRPC: the
//! pieces the generated gRPC adapters use.
//!
//! The code generator (`drpc-codegen` with its `grpc` feature) emits, for
//! each service, a `SvcGrpcAdapter` implementing tonic's server trait on
//! top of the DRPC server trait. These helpers translate between the two:
//! request metadata and the `grpc-timeout` deadline into a
//! [`RequestContext`], tonic's request streams into [`RequestStream`],
//! [`ResponseSink`] into tonic's response streams, and [`CodedError`]
//! codes into gRPC status codes ([`tonic_code`], [`drpc_code`]: DRPC's
//! [`Code`] is gRPC's codes by convention).
//!
//! Each call gets a [`RequestContext`] whose cancellation token is
//! cancelled when the gRPC call ends, whichever way (the handler returned,
//! the client went away, the deadline passed), as the DRPC server does:
//! work a handler hands to other tasks can watch
//! [`RequestContext::cancelled`].
//!
//! # Interceptors
//!
//! An [`Interceptor`] is also a tonic interceptor
//! ([`tonic::service::Interceptor`]): serving the generated adapter with
//! it, through the generated server's `with_interceptor`,
//!
//! ```text
//! let auth: drpc_mux::Interceptor = /* … */;
//! mux.with_interceptor(auth.clone()); // DRPC
//! let grpc = EchoServer::with_interceptor(EchoGrpcAdapter(service), auth); // gRPC
//! ```
//!
//! makes the adapter run it, with the method's path, on the context it
//! builds for each call, before the implementation: a call it rejects gets
//! its error as the gRPC status (code 16 stays Unauthenticated), and what
//! it adds to the context's extensions the implementation sees, exactly as
//! over DRPC. (tonic's hook does not see the method's path; it only hands
//! the interceptor to the adapter, which does.) The generated adapter's
//! types exist only in the crate that generates them, so this sketch is not
//! compiled here; `drpc-codegen-tests`' `grpc_interceptor` test runs it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use drpc_wire::{Code, CodedError, Metadata, parse_timeout};
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Interceptor, RequestContext, RequestStream, ResponseSink};

/// How many responses a streaming handler may get ahead of the gRPC
/// transport.
const RESPONSE_BUFFER: usize = 16;

/// The context of a gRPC call: its ASCII metadata and the deadline of its
/// `grpc-timeout` header. It runs no [`Interceptor`] and its token is
/// never cancelled: [`unary`], [`client_streaming`] and
/// [`spawn_responses`], which the generated adapters call, do both.
pub fn context<T>(rpc: &str, request: &tonic::Request<T>) -> RequestContext {
    context_with(rpc, request, CancellationToken::new())
}

fn context_with<T>(
    rpc: &str,
    request: &tonic::Request<T>,
    cancel: CancellationToken,
) -> RequestContext {
    let headers = request.metadata().clone().into_headers();
    let mut metadata = Metadata::new();
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            metadata.insert(name.as_str().to_owned(), value.to_owned());
        }
    }
    let deadline = metadata
        .remove("grpc-timeout")
        .and_then(|v| parse_timeout(&v))
        .map(|t| Instant::now() + t);
    RequestContext::new(rpc.to_owned(), 0, metadata, deadline, cancel)
}

/// Attaches itself to the request, for the generated adapter to run (see
/// [the module](self)); it rejects nothing itself.
impl tonic::service::Interceptor for Interceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.extensions_mut().insert(self.clone());
        Ok(request)
    }
}

/// The context of a call, checked by the [`Interceptor`] attached to the
/// request if there is one, and the guard that cancels its token when the
/// call ends.
fn start<T>(
    rpc: &str,
    request: &tonic::Request<T>,
) -> Result<(RequestContext, CancellationToken), tonic::Status> {
    let cancel = CancellationToken::new();
    let mut ctx = context_with(rpc, request, cancel.clone());
    if let Some(interceptor) = request.extensions().get::<Interceptor>() {
        interceptor.intercept(&mut ctx).map_err(status)?;
    }
    Ok((ctx, cancel))
}

/// Serves a unary gRPC call: builds its context, runs the attached
/// [`Interceptor`], then `handler`; the context's token is cancelled when
/// this returns or is dropped (the client went away).
pub async fn unary<Req, Resp, F, Fut>(
    rpc: &str,
    request: tonic::Request<Req>,
    handler: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: FnOnce(RequestContext, Req) -> Fut,
    Fut: Future<Output = Result<Resp, CodedError>>,
{
    let (ctx, cancel) = start(rpc, &request)?;
    let _cancel = cancel.drop_guard();
    reply(handler(ctx, request.into_inner()).await)
}

/// Serves a client-streaming gRPC call as [`unary`] does, the handler
/// receiving tonic's request stream as a [`RequestStream`].
pub async fn client_streaming<Req, Resp, F, Fut>(
    rpc: &str,
    request: tonic::Request<tonic::Streaming<Req>>,
    handler: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: FnOnce(RequestContext, GrpcRequests<Req>) -> Fut,
    Fut: Future<Output = Result<Resp, CodedError>>,
{
    let (ctx, cancel) = start(rpc, &request)?;
    let _cancel = cancel.drop_guard();
    reply(handler(ctx, GrpcRequests::new(request.into_inner())).await)
}

/// A DRPC error's code as a gRPC status code: codes 1 to 16 are gRPC's
/// codes; 0 ("no code": still an error) and any other number are
/// Unknown.
pub fn tonic_code(code: Code) -> tonic::Code {
    match code.as_u64() {
        c @ 1..=16 => tonic::Code::from(c as i32),
        _ => tonic::Code::Unknown,
    }
}

/// A gRPC status code as DRPC's: the same code.
pub fn drpc_code(code: tonic::Code) -> Code {
    Code::from_u64(code as u64)
}

/// A DRPC error as a gRPC status, its code mapped by [`tonic_code`].
pub fn status(err: CodedError) -> tonic::Status {
    tonic::Status::new(tonic_code(err.kind()), err.message())
}

/// A gRPC status as a DRPC error with the same code.
pub fn coded(status: tonic::Status) -> CodedError {
    CodedError::new(drpc_code(status.code()), status.message())
}

/// A unary handler's result as tonic's.
pub fn reply<T>(result: Result<T, CodedError>) -> Result<tonic::Response<T>, tonic::Status> {
    result.map(tonic::Response::new).map_err(status)
}

/// A tonic request stream as a [`RequestStream`].
#[derive(Debug)]
pub struct GrpcRequests<T>(tonic::Streaming<T>);

impl<T> GrpcRequests<T> {
    /// Wraps tonic's request stream.
    pub fn new(streaming: tonic::Streaming<T>) -> Self {
        GrpcRequests(streaming)
    }
}

impl<T: Send + 'static> RequestStream<T> for GrpcRequests<T> {
    async fn recv(&mut self) -> Result<Option<T>, CodedError> {
        self.0.message().await.map_err(coded)
    }
}

/// Where a streaming handler's responses go on their way to tonic.
#[derive(Debug)]
pub struct GrpcSink<T>(mpsc::Sender<Result<T, tonic::Status>>);

impl<T: Clone + Send + Sync + 'static> ResponseSink<T> for GrpcSink<T> {
    async fn send(&mut self, msg: &T) -> Result<(), CodedError> {
        self.0
            .send(Ok(msg.clone()))
            .await
            .map_err(|_| CodedError::canceled("context canceled"))
    }
}

/// The responses of a streaming handler, as tonic's response stream.
/// Dropping it (the client went away) cancels the handler.
pub struct GrpcResponses<T> {
    rx: mpsc::Receiver<Result<T, tonic::Status>>,
    cancel: CancellationToken,
}

impl<T> fmt::Debug for GrpcResponses<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcResponses").finish_non_exhaustive()
    }
}

impl<T> Stream for GrpcResponses<T> {
    type Item = Result<T, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl<T> Drop for GrpcResponses<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Runs a streaming handler in its own task, its responses flowing into
/// the returned stream; its error, if any, ends the stream as a status.
/// The handler gets the call's context and request (a message, or tonic's
/// request stream); it is dropped when the returned stream is (the client
/// went away) or when the call's deadline passes. The [`Interceptor`]
/// attached to the request runs first: a call it rejects fails with its
/// error, the handler not called. The context's token is cancelled when
/// the handler's task ends or the stream is dropped.
pub fn spawn_responses<Req, T, F, Fut>(
    rpc: &str,
    request: tonic::Request<Req>,
    handler: F,
) -> Result<tonic::Response<GrpcResponses<T>>, tonic::Status>
where
    T: Send + 'static,
    F: FnOnce(RequestContext, Req, GrpcSink<T>) -> Fut,
    Fut: Future<Output = Result<(), CodedError>> + Send + 'static,
{
    let (ctx, cancel) = start(rpc, &request)?;
    let deadline = ctx.deadline();
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    let running = handler(ctx, request.into_inner(), GrpcSink(tx.clone()));
    let token = cancel.clone();
    tokio::spawn(async move {
        let _cancel = token.clone().drop_guard();
        let deadline_passed = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            r = running => r,
            _ = token.cancelled() => return,
            _ = deadline_passed => Err(CodedError::deadline_exceeded("context deadline exceeded")),
        };
        if let Err(e) = outcome {
            let _ = tx.send(Err(status(e))).await;
        }
    });
    Ok(tonic::Response::new(GrpcResponses { rx, cancel }))
}
