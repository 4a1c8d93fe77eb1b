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
//! The context's peer is the client's TCP address when tonic knows it
//! (`tonic::Request::remote_addr`: served by tonic's transport over TCP);
//! otherwise it is unknown. Its stream id is 0.
//!
//! # Interceptors and layers: one configuration, enforced on both
//!
//! The generated adapter holds a [`Middleware`]: the interceptor and the
//! `tower` layers a [`Mux`](crate::Mux) was configured with. Built from
//! the mux,
//!
//! ```text
//! let mut mux = Mux::new();
//! register_echo_drpc(&mut mux, service.clone());
//! mux.with_interceptor(auth).layer(limits);                    // configure once
//! let grpc = EchoServer::new(EchoGrpcAdapter::from_mux(service, &mux)); // gRPC
//! let drpc = Server::new(mux);                                  // DRPC
//! ```
//!
//! it runs them on every gRPC call exactly as the mux does on DRPC calls:
//! the interceptor on the context it builds (with the method's path), then
//! the layers, which see a [`Call`] of [`Protocol::Grpc`], then the
//! implementation. A call they reject gets their error as the gRPC status
//! (code 16 stays Unauthenticated); what they add to the context's
//! extensions the implementation sees. Nothing else has to be remembered
//! when serving: the checks travel with the adapter.
//! `EchoGrpcAdapter::new(service)` has no middleware (the health service,
//! say); `with_middleware` takes any [`Middleware`].
//!
//! For a streaming method, the adapter awaits the layers until they call
//! the implementation: a call they reject fails at once with their
//! status, as a unary call does, rather than as a stream that ends in an
//! error.
//!
//! A panic in the interceptor, a layer or the implementation fails the
//! call with Internal, `internal error: handler panicked`, as the DRPC
//! server answers one; tonic does not see it.
//!
//! An [`Interceptor`] is also a tonic interceptor
//! ([`tonic::service::Interceptor`]): the older way,
//! `EchoServer::with_interceptor(EchoGrpcAdapter::new(service), auth)`,
//! still works. An interceptor attached through tonic's hook runs after the
//! adapter's own (the mux's, with `from_mux`), never in place of it, so that
//! adding one for gRPC cannot switch the mux's checks off; the same
//! interceptor attached both ways runs once.
//!
//! The generated adapter's types exist only in the crate that generates
//! them, so these sketches are not compiled here; `drpc-codegen-tests`'
//! `grpc_layers` and `grpc_interceptor` tests run them.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use drpc_wire::{Code, CodedError, Metadata, parse_timeout};
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::Protocol;
use crate::layer::{Call, Continuation};
use crate::{
    ConnectionInfo, Interceptor, Middleware, PeerInfo, RequestContext, RequestStream, ResponseSink,
};

/// How many responses a streaming handler may get ahead of the gRPC
/// transport.
const RESPONSE_BUFFER: usize = 16;

/// The context of a gRPC call: its ASCII metadata, the deadline of its
/// `grpc-timeout` header and the peer's TCP address, if tonic knows it.
/// It runs no [`Interceptor`] and its token is never cancelled:
/// [`unary`], [`client_streaming`] and [`spawn_responses`], which the
/// generated adapters call, do both.
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
    let ctx = RequestContext::new(rpc.to_owned(), 0, metadata, deadline, cancel);
    match request.remote_addr() {
        Some(addr) => ctx.with_connection(Arc::new(ConnectionInfo::new(PeerInfo::tcp(addr)))),
        None => ctx,
    }
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

/// The error of a call whose interceptor, layers or handler panicked: the
/// DRPC server's.
fn panicked() -> CodedError {
    CodedError::internal("internal error: handler panicked")
}

/// `fut`, a panic in it becoming [`panicked`]'s error.
async fn catching<T>(fut: impl Future<Output = Result<T, CodedError>>) -> Result<T, CodedError> {
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(panicked())),
        },
    )
    .await
}

/// The context of a call, checked by the middleware's interceptor, then by
/// one attached to the request through tonic's hook (unless it is the same
/// one), and the token to cancel when the call ends.
fn start<T>(
    middleware: &Middleware,
    rpc: &str,
    request: &tonic::Request<T>,
) -> Result<(RequestContext, CancellationToken), tonic::Status> {
    let cancel = CancellationToken::new();
    let mut ctx = context_with(rpc, request, cancel.clone());
    let own = middleware.interceptor();
    let attached = request
        .extensions()
        .get::<Interceptor>()
        .filter(|attached| own.is_none_or(|own| !own.is_same(attached)));
    for interceptor in own.into_iter().chain(attached) {
        std::panic::catch_unwind(AssertUnwindSafe(|| interceptor.intercept(&mut ctx)))
            .unwrap_or_else(|_| Err(panicked()))
            .map_err(status)?;
    }
    Ok((ctx, cancel))
}

/// The error of a unary or client-streaming call whose layers answered
/// success without a response: they did not call the handler, or hid its
/// error.
fn no_response() -> CodedError {
    CodedError::internal("the layers answered without the handler's response")
}

/// Runs the handler of a call with one response through the middleware's
/// layers, if any.
async fn respond<Req, Resp, F, Fut>(
    middleware: &Middleware,
    ctx: RequestContext,
    request: Req,
    handler: F,
) -> Result<Resp, CodedError>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnOnce(RequestContext, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, CodedError>> + Send + 'static,
{
    let Some(layers) = middleware.layers() else {
        return catching(handler(ctx, request)).await;
    };
    let (tx, rx) = oneshot::channel();
    let next: Continuation = Box::new(move |ctx| {
        Box::pin(async move {
            let response = handler(ctx, request).await?;
            let _ = tx.send(response);
            Ok(())
        })
    });
    catching(layers.run(Call::grpc(ctx, next))).await?;
    match rx.await {
        Ok(response) => Ok(response),
        Err(_) => Err(no_response()),
    }
}

/// Serves a unary gRPC call: builds its context, runs the middleware (the
/// interceptor, then the layers), then `handler`; the context's token is
/// cancelled when this returns or is dropped (the client went away). A
/// panic in any of them fails the call with Internal.
pub async fn unary<Req, Resp, F, Fut>(
    middleware: &Middleware,
    rpc: &str,
    request: tonic::Request<Req>,
    handler: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnOnce(RequestContext, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, CodedError>> + Send + 'static,
{
    let (ctx, cancel) = start(middleware, rpc, &request)?;
    let _cancel = cancel.drop_guard();
    reply(respond(middleware, ctx, request.into_inner(), handler).await)
}

/// Serves a client-streaming gRPC call as [`unary`] does, the handler
/// receiving tonic's request stream as a [`RequestStream`].
pub async fn client_streaming<Req, Resp, F, Fut>(
    middleware: &Middleware,
    rpc: &str,
    request: tonic::Request<tonic::Streaming<Req>>,
    handler: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: FnOnce(RequestContext, GrpcRequests<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, CodedError>> + Send + 'static,
{
    let (ctx, cancel) = start(middleware, rpc, &request)?;
    let _cancel = cancel.drop_guard();
    let requests = GrpcRequests::new(request.into_inner());
    reply(respond(middleware, ctx, requests, handler).await)
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
/// went away) or when the call's deadline passes. The middleware runs
/// first: the interceptor, then the layers (in the task), which this
/// awaits until they call the handler, so that a call they reject fails
/// at once with their error, the handler not called. A panic in any of
/// them fails the call with Internal. The context's token is cancelled
/// when the task ends or the stream is dropped.
pub async fn spawn_responses<Req, T, F, Fut>(
    middleware: &Middleware,
    rpc: &str,
    request: tonic::Request<Req>,
    handler: F,
) -> Result<tonic::Response<GrpcResponses<T>>, tonic::Status>
where
    Req: Send + 'static,
    T: Send + 'static,
    F: FnOnce(RequestContext, Req, GrpcSink<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), CodedError>> + Send + 'static,
{
    let (ctx, cancel) = start(middleware, rpc, &request)?;
    let deadline = ctx.deadline();
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    let sink = GrpcSink(tx.clone());
    let request = request.into_inner();
    // Cancels the token if dropped, before this returns as after.
    let mut responses = GrpcResponses {
        rx,
        cancel: cancel.clone(),
    };
    let Some(layers) = middleware.layers() else {
        spawn_streaming(handler(ctx, request, sink), tx, cancel, deadline);
        return Ok(tonic::Response::new(responses));
    };
    let (started_tx, started_rx) = oneshot::channel();
    let next: Continuation = Box::new(move |ctx| {
        let _ = started_tx.send(());
        Box::pin(handler(ctx, request, sink))
    });
    spawn_streaming(layers.run(Call::grpc(ctx, next)), tx, cancel, deadline);
    if started_rx.await.is_err() {
        // The layers dropped the call without running the handler: with
        // their error (which the task sends first, the handler's sink
        // gone with the call), or without one (an empty stream, as over
        // DRPC).
        if let Some(Err(status)) = responses.rx.recv().await {
            return Err(status);
        }
    }
    Ok(tonic::Response::new(responses))
}

/// Runs `running` (a streaming call's layers and handler) in a task of its
/// own, until it ends, `cancel` is cancelled or `deadline` passes; its
/// error, or the deadline's, goes into `tx`.
fn spawn_streaming(
    running: impl Future<Output = Result<(), CodedError>> + Send + 'static,
    tx: mpsc::Sender<Result<impl Send + 'static, tonic::Status>>,
    cancel: CancellationToken,
    deadline: Option<Instant>,
) {
    tokio::spawn(async move {
        let _cancel = cancel.clone().drop_guard();
        let deadline_passed = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            r = catching(running) => r,
            _ = cancel.cancelled() => return,
            _ = deadline_passed => Err(CodedError::deadline_exceeded("context deadline exceeded")),
        };
        if let Err(e) = outcome {
            let _ = tx.send(Err(status(e))).await;
        }
    });
}
