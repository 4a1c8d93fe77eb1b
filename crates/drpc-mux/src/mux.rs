//! The router.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use drpc_stream::{Encoding, MessageBuf, Stream};
use drpc_wire::CodedError;

use tower::{BoxError, Layer, Service};

use crate::layer::{Call, CallService, Middleware};
use crate::quote::{MAX_QUOTED_NAME, quote_bounded};
use crate::typed::{ServerReceiver, ServerSender, stream_failure};
use crate::{Interceptor, RequestContext};

/// A boxed, sendable future: what handlers return at the mux boundary.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One RPC as the server hands it to a [`Handler`].
///
/// The stream is shared: the server keeps a reference so that it can send
/// the final CloseSend or Error once the handler returns.
#[derive(Debug)]
pub struct ServerCall {
    /// The RPC's stream.
    pub stream: Arc<Stream>,
    /// What the handler knows about the call.
    pub ctx: RequestContext,
}

/// Serves RPCs (Go's `drpc.Handler`).
///
/// `Ok(())` makes the server end the call with CloseSend; an error is sent
/// to the client as an Error packet carrying its code and text.
pub trait Handler: Send + Sync + 'static {
    /// Serves one RPC.
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>>;

    /// The name under which the server's metrics count calls to `rpc`
    /// (their `method` label), shared so that counting a call copies no
    /// string; `None` for a path this handler does not serve, which the
    /// server counts under one `unknown` label: a peer choosing the paths
    /// it calls cannot grow the metrics' label sets.
    ///
    /// [`Mux`] answers with the registered path. The default gives every
    /// path its own label, allocated per call: a handler that serves
    /// arbitrary paths (a proxy, say) should override it to bound them.
    fn method_label(&self, rpc: &str) -> Option<Arc<str>> {
        Some(Arc::from(rpc))
    }
}

/// The four shapes of an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// Streams both ways.
    Bidi,
}

/// One method of a service, as a [`Description`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDesc {
    /// The RPC path, `/package.Service/Method`.
    pub rpc: &'static str,
    /// The method's shape.
    pub kind: MethodKind,
}

/// A service whose methods can be registered into a [`Mux`] (what the
/// code generator implements, in place of Go's reflection).
pub trait Description: Send + Sync + 'static {
    /// The methods, in proto declaration order.
    fn methods(&self) -> &'static [MethodDesc];
    /// Registers every method into `mux`.
    fn register(self: Arc<Self>, mux: &mut Mux);
}

pub(crate) type Route = Arc<dyn Fn(ServerCall) -> BoxFuture<Result<(), CodedError>> + Send + Sync>;

/// A registered method: its shape, its handler, and its path as
/// [`Handler::method_label`] shares it.
type Entry = (MethodKind, Route, Arc<str>);

/// Routes an RPC path to its handler (Go's `drpcmux.Mux`).
///
/// Registering a path twice replaces the earlier handler. An unknown path
/// fails that RPC with code 12 (Unimplemented) and the reference
/// implementation's text, `protocol error: unknown rpc: "/the/path"`, the
/// path quoted as Go's `%q` does, and only its first 1 KiB (a longer one
/// is followed by `... (N bytes)`); the connection is unaffected.
#[derive(Default, Clone)]
pub struct Mux {
    /// Looked up once per call. foldhash rather than SipHash: the table
    /// holds only registered paths, so a peer choosing the path it sends
    /// cannot make lookups slower than the longest probe among them.
    routes: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// The interceptor and the layers run around every routed call;
    /// without them, a call costs two checks of an `Option`.
    middleware: Middleware,
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux")
            .field("routes", &self.routes())
            .field("middleware", &self.middleware)
            .finish()
    }
}

fn encode_failure(e: drpc_stream::EncodingError) -> CodedError {
    CodedError::new(0, e.to_string())
}

impl Mux {
    /// An empty router.
    pub fn new() -> Mux {
        Mux::default()
    }

    /// Registers every method of a service.
    pub fn register<D: Description>(&mut self, service: Arc<D>) -> &mut Self {
        service.register(self);
        self
    }

    /// Runs `interceptor` before the handler of every call to a registered
    /// path (replacing the interceptor set before), and before the
    /// [layers](Mux::layer): a call it rejects fails with its error,
    /// unseen by the layers and the handler; what it adds to the context's
    /// extensions they see. The gRPC adapter built from this mux
    /// (`SvcGrpcAdapter::from_mux`) runs it too.
    pub fn with_interceptor(&mut self, interceptor: Interceptor) -> &mut Self {
        self.middleware.with_interceptor(interceptor);
        self
    }

    /// The interceptor set by [`Mux::with_interceptor`].
    pub fn interceptor(&self) -> Option<&Interceptor> {
        self.middleware.interceptor()
    }

    /// Wraps every call to a registered path in a `tower` layer, whose
    /// service gets the call as a [`Call`] (path, metadata, peer,
    /// deadline, extensions, protocol) and wraps a [`CallService`] (the
    /// layers added before, then the handler). The gRPC adapter built from
    /// this mux (`SvcGrpcAdapter::from_mux`) runs the very same stack, so
    /// that both protocols get the same checks, limits and accounting.
    ///
    /// - **Order**: the [interceptor](Mux::with_interceptor) runs first,
    ///   then the layers, the one added last first (as in axum: each call
    ///   wraps what is there), then the handler. Compose with
    ///   `tower::ServiceBuilder` for the usual top-to-bottom order.
    /// - **Errors**: the layers' services may fail with any error that
    ///   converts into a [`BoxError`]; the client gets it as
    ///   [`layer_error`](crate::layer_error) maps it (a [`CodedError`]
    ///   keeps its code, `tower`'s timeout is DeadlineExceeded, its load
    ///   shedding Unavailable, anything else Unknown).
    /// - **Which calls**: only those to registered paths, as for the
    ///   interceptor (an unknown path costs its Unimplemented answer
    ///   alone); [`SkipPaths`](crate::SkipPaths) opts methods out of one
    ///   layer.
    /// - **What they span**: over DRPC the layers wrap the whole route,
    ///   receiving the request and sending the response included, so a
    ///   timeout or a concurrency permit also counts a slow client's
    ///   time; over gRPC, tonic receives and sends outside them, and they
    ///   wrap the implementation alone (a streaming one until it returns).
    /// - **Cost**: the layer wraps the stack once, here; each call then
    ///   clones the stack (the layers' services' clones, boxed), waits for
    ///   it to be ready and calls it (its futures boxed, as a type-erased
    ///   stack's are). Without layers a call costs one check of an
    ///   `Option`.
    ///
    /// The services must be `Clone + Send + Sync` (as tonic's and axum's
    /// layers must).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use drpc_mux::{Call, CodedError, Mux};
    /// use tower::ServiceBuilder;
    ///
    /// /// What the handler can read from the context's extensions.
    /// #[derive(Debug)]
    /// struct Tenant(String);
    ///
    /// let calls = Arc::new(AtomicUsize::new(0));
    /// let counted = calls.clone();
    /// let mut mux = Mux::new();
    /// mux.layer(
    ///     ServiceBuilder::new()
    ///         // DeadlineExceeded for a call still running after 5 s.
    ///         .timeout(Duration::from_secs(5))
    ///         // At most 64 calls in their handlers at once; others wait.
    ///         .concurrency_limit(64)
    ///         // Rejects calls without a tenant, with the code chosen.
    ///         .filter(|call: Call| match call.metadata().get("tenant") {
    ///             Some(_) => Ok(call),
    ///             None => Err(CodedError::permission_denied("no tenant")),
    ///         })
    ///         // Counts calls and tells handlers the tenant.
    ///         .map_request(move |mut call: Call| {
    ///             counted.fetch_add(1, Ordering::Relaxed);
    ///             let tenant = call.metadata().get("tenant").cloned().unwrap_or_default();
    ///             call.ctx_mut().extensions_mut().insert(Tenant(tenant));
    ///             call
    ///         }),
    /// );
    /// assert!(mux.middleware().has_layers());
    /// ```
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: Layer<CallService>,
        L::Service: Service<Call, Response = ()> + Clone + Send + Sync + 'static,
        <L::Service as Service<Call>>::Error: Into<BoxError>,
        <L::Service as Service<Call>>::Future: Send + 'static,
    {
        self.middleware.layer(layer);
        self
    }

    /// The interceptor and layers configured on this mux: build the gRPC
    /// adapter with them (`SvcGrpcAdapter::from_mux` does) for the same
    /// checks over gRPC. Clones share them; configure the mux first, as
    /// what is added later does not reach a clone taken before.
    pub fn middleware(&self) -> &Middleware {
        &self.middleware
    }

    /// The registered paths and their shapes, sorted by path.
    pub fn routes(&self) -> Vec<(&str, MethodKind)> {
        let mut routes: Vec<_> = self
            .routes
            .iter()
            .map(|(p, (k, _, _))| (p.as_str(), *k))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        routes
    }

    /// Registers `handler` for `rpc`: it runs once per call, with its own
    /// copy of `encoding`, and its future is boxed here, at the boundary.
    fn route<E, H, Fut>(
        &mut self,
        rpc: &str,
        kind: MethodKind,
        encoding: E,
        handler: H,
    ) -> &mut Self
    where
        E: Clone + Send + Sync + 'static,
        H: Fn(ServerCall, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CodedError>> + Send + 'static,
    {
        let route: Route = Arc::new(move |call| Box::pin(handler(call, encoding.clone())));
        self.routes
            .insert(rpc.to_owned(), (kind, route, Arc::from(rpc)));
        self
    }

    /// Registers a unary method: the mux receives and decodes the request,
    /// calls `f`, and sends the encoded response.
    pub fn unary<Req, Resp, E, F, Fut>(&mut self, rpc: &str, encoding: E, f: F) -> &mut Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: Encoding<Req> + Encoding<Resp> + Clone,
        F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, CodedError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.route(
            rpc,
            MethodKind::Unary,
            encoding,
            move |call: ServerCall, encoding: E| {
                let f = f.clone();
                async move {
                    let req = recv_request(&call.stream, &encoding).await?;
                    let resp = f(call.ctx, req).await?;
                    send_response(&call.stream, &encoding, resp).await
                }
            },
        )
    }

    /// Registers a server-streaming method: the mux receives and decodes
    /// the request, and `f` sends responses through the sender.
    pub fn server_streaming<Req, Resp, E, F, Fut>(
        &mut self,
        rpc: &str,
        encoding: E,
        f: F,
    ) -> &mut Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: Encoding<Req> + Encoding<Resp> + Clone,
        F: Fn(RequestContext, Req, ServerSender<Resp, E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CodedError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.route(
            rpc,
            MethodKind::ServerStreaming,
            encoding,
            move |call: ServerCall, encoding: E| {
                let f = f.clone();
                async move {
                    let req = recv_request(&call.stream, &encoding).await?;
                    let sender = ServerSender::new(call.stream, encoding);
                    f(call.ctx, req, sender).await
                }
            },
        )
    }

    /// Registers a client-streaming method: `f` receives the requests and
    /// returns the one response, which the mux sends.
    pub fn client_streaming<Req, Resp, E, F, Fut>(
        &mut self,
        rpc: &str,
        encoding: E,
        f: F,
    ) -> &mut Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: Encoding<Req> + Encoding<Resp> + Clone,
        F: Fn(RequestContext, ServerReceiver<Req, E>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, CodedError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.route(
            rpc,
            MethodKind::ClientStreaming,
            encoding,
            move |call: ServerCall, encoding: E| {
                let f = f.clone();
                async move {
                    let receiver = ServerReceiver::new(call.stream.clone(), encoding.clone());
                    let resp = f(call.ctx, receiver).await?;
                    send_response(&call.stream, &encoding, resp).await
                }
            },
        )
    }

    /// Registers a bidirectional method: `f` gets both halves.
    pub fn bidi<Req, Resp, E, F, Fut>(&mut self, rpc: &str, encoding: E, f: F) -> &mut Self
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        E: Encoding<Req> + Encoding<Resp> + Clone,
        F: Fn(RequestContext, ServerReceiver<Req, E>, ServerSender<Resp, E>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<(), CodedError>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.route(
            rpc,
            MethodKind::Bidi,
            encoding,
            move |call: ServerCall, encoding: E| {
                let f = f.clone();
                async move {
                    let receiver = ServerReceiver::new(call.stream.clone(), encoding.clone());
                    let sender = ServerSender::new(call.stream, encoding);
                    f(call.ctx, receiver, sender).await
                }
            },
        )
    }
}

/// Encodes and sends the single response of a unary or client-streaming
/// call, by reference (its buffer is its own).
async fn send_response<Resp, E: Encoding<Resp>>(
    stream: &Stream,
    encoding: &E,
    resp: Resp,
) -> Result<(), CodedError> {
    let mut buf = MessageBuf::new();
    encoding
        .encode_to(&resp, &mut buf)
        .map_err(encode_failure)?;
    drop(resp);
    stream.send_encoded(&mut buf).await.map_err(stream_failure)
}

/// Receives and decodes the single request of a unary or server-streaming
/// call. A client that closed without sending one gets Go's `EOF`.
async fn recv_request<Req, E: Encoding<Req>>(
    stream: &Stream,
    encoding: &E,
) -> Result<Req, CodedError> {
    match stream.recv().await.map_err(stream_failure)? {
        Some(data) => encoding.decode(data).map_err(encode_failure),
        None => Err(CodedError::new(0, "EOF")),
    }
}

/// The error of a call to a path no route serves: the reference
/// implementation's text, with a bounded quote of the path (the peer
/// chooses it, up to the maximum packet size).
fn unknown_rpc(rpc: &str) -> CodedError {
    CodedError::unimplemented(format!(
        "protocol error: unknown rpc: {}",
        quote_bounded(rpc.as_bytes(), MAX_QUOTED_NAME)
    ))
}

impl Handler for Mux {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        match self.routes.get(call.ctx.rpc()) {
            Some((_, route, _)) => {
                let mut call = call;
                if let Some(interceptor) = self.middleware.interceptor()
                    && let Err(err) = interceptor.intercept(&mut call.ctx)
                {
                    return Box::pin(async move { Err(err) });
                }
                match self.middleware.layers() {
                    None => route(call),
                    Some(layers) => layers.run(Call::drpc(call.ctx, route.clone(), call.stream)),
                }
            }
            None => {
                let err = unknown_rpc(call.ctx.rpc());
                Box::pin(async move { Err(err) })
            }
        }
    }

    fn method_label(&self, rpc: &str) -> Option<Arc<str>> {
        self.routes.get(rpc).map(|(_, _, label)| label.clone())
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(&self, call: ServerCall) -> BoxFuture<Result<(), CodedError>> {
        (**self).handle(call)
    }

    fn method_label(&self, rpc: &str) -> Option<Arc<str>> {
        (**self).method_label(rpc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_rpc_errors_read_as_the_reference_ones() {
        let err = unknown_rpc("/service.Service/Nope");
        assert_eq!(err.kind(), drpc_wire::Code::Unimplemented);
        assert_eq!(
            err.message(),
            r#"protocol error: unknown rpc: "/service.Service/Nope""#
        );
    }

    #[test]
    fn the_mux_labels_registered_paths_alone_and_shares_them() {
        let mut mux = Mux::new();
        mux.unary(
            "/a.B/C",
            drpc_stream::Raw,
            |_, req: bytes::Bytes| async move { Ok(req) },
        );
        let label = mux.method_label("/a.B/C").expect("registered");
        assert_eq!(&*label, "/a.B/C");
        let again = mux.method_label("/a.B/C").expect("registered");
        assert!(Arc::ptr_eq(&label, &again), "one allocation per route");
        assert_eq!(mux.method_label("/a.B/Nope"), None);
        assert_eq!(
            Arc::new(mux).method_label("/a.B/C").as_deref(),
            Some("/a.B/C")
        );
    }

    #[test]
    fn unknown_rpc_errors_are_short_whatever_the_path() {
        let name = format!("/{}", "\u{0}".repeat(4 << 20));
        let err = unknown_rpc(&name);
        assert_eq!(err.kind(), drpc_wire::Code::Unimplemented);
        assert!(
            err.message().len() < 5 * MAX_QUOTED_NAME,
            "{}",
            err.message().len()
        );
        assert!(
            err.message().ends_with("\"... (4194305 bytes)"),
            "{}",
            &err.message()[err.message().len() - 40..]
        );
    }
}
