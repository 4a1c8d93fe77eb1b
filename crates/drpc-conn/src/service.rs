//! `tower` and interceptors: a unary call as a [`Request`], any
//! `tower::Service` of requests as an [`Invoker`], and closures that
//! change every call's options.

use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_stream::{Encoding, StreamError, StreamErrorKind};
use futures_util::future::{Either, Ready, ready};
use tower::BoxError;
use tower::Service;

use crate::{CallOptions, ClientStream, Error, Invoker, Metadata};

/// A unary call as `tower` sees it: the RPC's path, the encoded request
/// message, and the call's [`CallOptions`] (metadata, deadline,
/// cancellation). The response of such a call is the encoded reply,
/// [`Bytes`].
///
/// [`Channel`](crate::Channel) serves it as a [`tower::Service`]; layers
/// may read what the caller set ([`Request::metadata`],
/// [`Request::deadline`], the token in [`Request::options`]) and change it
/// ([`Request::insert_metadata`], [`Request::set_timeout`]) on the way.
#[derive(Debug, Clone)]
pub struct Request {
    path: String,
    message: Bytes,
    options: CallOptions,
}

impl Request {
    /// A call of `path` (`/package.Service/Method`) with the encoded
    /// `message` and no options.
    pub fn new(path: impl Into<String>, message: Bytes) -> Request {
        Request::with_options(path, message, CallOptions::new())
    }

    /// A call of `path` with the encoded `message` and `options`.
    pub fn with_options(path: impl Into<String>, message: Bytes, options: CallOptions) -> Request {
        Request {
            path: path.into(),
            message,
            options,
        }
    }

    /// The RPC's path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The encoded request message.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// The call's metadata pairs ([`CallOptions::get_metadata`]).
    pub fn metadata(&self) -> &Metadata {
        self.options.get_metadata()
    }

    /// The call's deadline, if it has one ([`CallOptions::get_deadline`]):
    /// a layer can take the time left from it.
    pub fn deadline(&self) -> Option<Instant> {
        self.options.get_deadline()
    }

    /// The call's options.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// The call's options, to replace or rebuild.
    pub fn options_mut(&mut self) -> &mut CallOptions {
        &mut self.options
    }

    /// Adds (or replaces) a metadata pair.
    pub fn insert_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.options = std::mem::take(&mut self.options).metadata(key, value);
    }

    /// Sets a deadline `timeout` from now (an earlier one already set
    /// stays).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.options = std::mem::take(&mut self.options).timeout(timeout);
    }

    /// Sets a deadline (an earlier one already set stays).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.options = std::mem::take(&mut self.options).deadline(deadline);
    }

    /// The path, the message and the options.
    pub fn into_parts(self) -> (String, Bytes, CallOptions) {
        (self.path, self.message, self.options)
    }
}

/// The error of a `tower` stack, as an [`Error`]: an [`Error`] (boxed by a
/// layer) is itself again; a `tower` timeout
/// ([`tower::timeout::error::Elapsed`]) is a deadline error
/// ([`Error::is_deadline_exceeded`]); a load-shed layer's `Overloaded` is
/// [`Error::Unavailable`] (the call was not sent: trying again later, or
/// elsewhere, may work, as gRPC says of Unavailable); anything else (an
/// authorization layer's refusal, a closed buffer) is [`Error::Layer`],
/// code Unknown, keeping the layer's error as its source.
/// [`ServiceInvoker`] applies it.
pub fn from_layer_error(err: BoxError) -> Error {
    let err = match err.downcast::<Error>() {
        Ok(e) => return *e,
        Err(err) => err,
    };
    if err.is::<tower::timeout::error::Elapsed>() {
        return StreamError::new(0, StreamErrorKind::DeadlineExceeded).into();
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return Error::unavailable("a local service layer", err.to_string());
    }
    Error::Layer(err)
}

/// Makes any `tower::Service` of [`Request`]s an [`Invoker`], so that a
/// generated client takes a channel wrapped in layers:
///
/// ```
/// use std::time::Duration;
/// use drpc_conn::{Channel, Endpoint, ServiceInvoker};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = Endpoint::tcp("127.0.0.1:4000").connect_lazy();
/// let service = ServiceBuilder::new()
///     .concurrency_limit(64)
///     .service(channel.clone());
/// let invoker = ServiceInvoker::new(service, channel);
/// // let client = GreeterDrpcClient::new(invoker);
/// # drop(invoker);
/// # }
/// ```
///
/// **Unary calls** are encoded, go through the service as a [`Request`],
/// and the [`Bytes`] it answers are decoded.
///
/// **Streaming calls** do not go through the service (a `tower` service
/// answers one request with one response): they are opened on `streams`,
/// the second invoker, usually the channel the layers wrap (or that
/// channel with an interceptor, [`InterceptedChannel`]). Layers do not see
/// them.
///
/// Each call clones the service (as `tower` services are used from many
/// tasks) and waits for it to be ready. The service's errors may be any
/// that `tower` layers produce: they become [`Error`]s through
/// [`from_layer_error`].
#[derive(Debug, Clone)]
pub struct ServiceInvoker<S, I> {
    service: S,
    streams: I,
}

impl<S, I> ServiceInvoker<S, I> {
    /// Unary calls through `service`, streaming calls on `streams`.
    pub fn new(service: S, streams: I) -> Self {
        ServiceInvoker { service, streams }
    }

    /// The service unary calls go through.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The invoker streaming calls are opened on.
    pub fn streams(&self) -> &I {
        &self.streams
    }
}

impl<S, I> Invoker for ServiceInvoker<S, I>
where
    S: Service<Request, Response = Bytes> + Clone + Send + Sync,
    S::Error: Into<BoxError>,
    S::Future: Send,
    I: Invoker,
{
    fn invoke<Req, Resp, E>(
        &self,
        encoding: &E,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> impl Future<Output = Result<Resp, Error>> + Send
    where
        Req: Sync,
        Resp: Send,
        E: Encoding<Req> + Encoding<Resp>,
    {
        let mut service = self.service.clone();
        async move {
            let mut buf = Vec::new();
            <E as Encoding<Req>>::encode(encoding, req, &mut buf).map_err(Error::Encode)?;
            let request = Request::with_options(rpc, Bytes::from(buf), opts.clone());
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| from_layer_error(e.into()))?;
            let reply = service
                .call(request)
                .await
                .map_err(|e| from_layer_error(e.into()))?;
            <E as Encoding<Resp>>::decode(encoding, reply).map_err(Error::Decode)
        }
    }

    fn open<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        opts: &CallOptions,
    ) -> impl Future<Output = Result<ClientStream<Req, Resp, E>, Error>> + Send
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        self.streams.open(encoding, rpc, opts)
    }
}

/// Changes the options of every call before it is made (tonic's
/// `Interceptor`): adds metadata (a token, a trace id), sets a deadline,
/// or refuses the call with an error. It sees the RPC's path.
///
/// Any `Fn(&str, CallOptions) -> Result<CallOptions, Error>` is one.
pub trait Interceptor: Send + Sync + 'static {
    /// The options for a call of `path`, from those it was made with.
    fn intercept(&self, path: &str, options: CallOptions) -> Result<CallOptions, Error>;
}

impl<F> Interceptor for F
where
    F: Fn(&str, CallOptions) -> Result<CallOptions, Error> + Send + Sync + 'static,
{
    fn intercept(&self, path: &str, options: CallOptions) -> Result<CallOptions, Error> {
        self(path, options)
    }
}

/// An invoker (a [`Channel`](crate::Channel), a [`Conn`](crate::Conn), a
/// [`ServiceInvoker`]) whose calls, unary and streaming, pass through an
/// [`Interceptor`] first; also a `tower::Service` of [`Request`]s when
/// the inner one is. Built by [`with_interceptor`].
#[derive(Clone)]
pub struct InterceptedChannel<I, F> {
    inner: I,
    interceptor: F,
}

impl<I: fmt::Debug, F> fmt::Debug for InterceptedChannel<I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptedChannel")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// `inner`, with `interceptor` run before each of its calls:
///
/// ```
/// use drpc_conn::{Channel, Endpoint, with_interceptor};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = Endpoint::tcp("127.0.0.1:4000").connect_lazy();
/// let authed = with_interceptor(channel, |_path, opts| {
///     Ok(opts.metadata("authorization", "Bearer s3cret"))
/// });
/// // let client = GreeterDrpcClient::new(authed);
/// # drop(authed);
/// # }
/// ```
pub fn with_interceptor<I, F>(inner: I, interceptor: F) -> InterceptedChannel<I, F>
where
    F: Fn(&str, CallOptions) -> Result<CallOptions, Error> + Send + Sync + 'static,
{
    InterceptedChannel { inner, interceptor }
}

impl<I, F: Interceptor> InterceptedChannel<I, F> {
    /// `inner`, with `interceptor` run before each of its calls (for an
    /// interceptor that is a type of its own; closures go through
    /// [`with_interceptor`]).
    pub fn new(inner: I, interceptor: F) -> Self {
        InterceptedChannel { inner, interceptor }
    }

    /// The invoker underneath.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The invoker underneath.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

impl<I: Invoker, F: Interceptor> Invoker for InterceptedChannel<I, F> {
    fn invoke<Req, Resp, E>(
        &self,
        encoding: &E,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> impl Future<Output = Result<Resp, Error>> + Send
    where
        Req: Sync,
        Resp: Send,
        E: Encoding<Req> + Encoding<Resp>,
    {
        let opts = self.interceptor.intercept(rpc, opts.clone());
        async move {
            let opts = opts?;
            self.inner.invoke(encoding, rpc, req, &opts).await
        }
    }

    fn open<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        opts: &CallOptions,
    ) -> impl Future<Output = Result<ClientStream<Req, Resp, E>, Error>> + Send
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let opts = self.interceptor.intercept(rpc, opts.clone());
        async move {
            let opts = opts?;
            self.inner.open(encoding, rpc, &opts).await
        }
    }
}

impl<S, F> Service<Request> for InterceptedChannel<S, F>
where
    S: Service<Request>,
    S::Error: From<Error>,
    F: Interceptor,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (path, message, options) = request.into_parts();
        match self.interceptor.intercept(&path, options) {
            Ok(options) => Either::Right(
                self.inner
                    .call(Request::with_options(path, message, options)),
            ),
            Err(e) => Either::Left(ready(Err(e.into()))),
        }
    }
}
