//! A client handle that heals: [`Channel`].

mod balance;
mod endpoint;
mod subchannel;

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use drpc_stream::{Encoding, Raw, StreamError};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tower::discover::{Change, Discover};

use self::balance::{Balancer, ChangeStream};
use self::subchannel::{CallKind, Lease, Subchannel};
use crate::{CallOptions, ClientStream, Conn, Error, Invoker, Request};

pub use endpoint::{
    Backoff, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TCP_KEEPALIVE, Endpoint,
};

/// The state of a channel's connections (gRPC's connectivity states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Connectivity {
    /// No connection and none being made: the next call dials.
    Idle = 0,
    /// The first attempt (or the first after a connection ended) is under
    /// way; calls wait for it.
    Connecting = 1,
    /// Connected: calls go out at once.
    Ready = 2,
    /// The last attempt failed; the channel retries with backoff, and
    /// calls fail fast with [`Error::Unavailable`] meanwhile.
    TransientFailure = 3,
}

impl Connectivity {
    fn from_u8(n: u8) -> Connectivity {
        match n {
            1 => Connectivity::Connecting,
            2 => Connectivity::Ready,
            3 => Connectivity::TransientFailure,
            _ => Connectivity::Idle,
        }
    }
}

/// A client handle that connects by itself and heals (tonic's `Channel`):
/// give it to a generated client instead of a [`Conn`].
///
/// * **Lazy**: it dials at the first call ([`Endpoint::connect_lazy`]), or
///   before ([`Endpoint::connect`]).
/// * **It heals**: when the connection ends it dials again at once, then,
///   while attempts fail, with jittered exponential [`Backoff`]. Calls made
///   while an attempt is under way and no attempt has failed yet wait for
///   it (at most the connect timeout, and never past the call's own
///   deadline or cancellation); after a failed attempt they fail
///   fast with [`Error::Unavailable`], which names the address and the
///   last connect error, until a connection is made again (or, with
///   [`Channel::wait_for_ready`], wait for one).
/// * **Nothing is retried for you.** Calls in flight on a connection that
///   ends fail as the connection reports it (`is_unavailable()` is true);
///   add a retry layer ([`Channel`] is a [`tower::Service`]) to retry.
/// * **Sequential mode** ([`ConnOptions::sequential`](crate::ConnOptions::sequential)),
///   for stock Go servers that serve one stream per connection at a time:
///   a pool of connections, one call each, idle ones reused, up to
///   [`Endpoint::max_connections`] (16); past that, calls queue on the
///   connection with the shortest queue.
/// * **Many servers**: [`Channel::balance_list`] and
///   [`Channel::balance_channel`] spread calls with power of two choices.
///
/// Cheap to clone; clones share the connections. When the last clone is
/// dropped, dialing stops and the connections close once their calls are
/// done.
///
/// Without any layer, a call costs what it costs on a [`Conn`] plus one
/// uncontended lock and one reference count: [`Invoker`] for `Channel`
/// takes the connection and calls it.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
    wait_for_ready: bool,
}

struct Inner {
    kind: Kind,
    shutdown: CancellationToken,
}

enum Kind {
    Single(Arc<Subchannel>),
    Balanced(Arc<Balancer>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Channel");
        match &self.inner.kind {
            Kind::Single(sub) => d.field("endpoint", &sub.endpoint),
            Kind::Balanced(_) => d.field("balanced", &true),
        };
        d.field("connectivity", &self.connectivity())
            .field("wait_for_ready", &self.wait_for_ready)
            .finish()
    }
}

impl Channel {
    /// A channel to `endpoint` that dials at its first call (as
    /// [`Endpoint::connect_lazy`]).
    pub fn new(endpoint: Endpoint) -> Channel {
        let shutdown = CancellationToken::new();
        let sub = Subchannel::new(endpoint, Arc::new(Notify::new()), shutdown.clone());
        Channel::from_kind(Kind::Single(sub), shutdown)
    }

    pub(crate) fn with_conn(endpoint: Endpoint, conn: Conn) -> Channel {
        let channel = Channel::new(endpoint);
        if let Kind::Single(sub) = &channel.inner.kind {
            sub.adopt(conn);
        }
        channel
    }

    fn from_kind(kind: Kind, shutdown: CancellationToken) -> Channel {
        Channel {
            inner: Arc::new(Inner { kind, shutdown }),
            wait_for_ready: false,
        }
    }

    /// A channel over a fixed set of endpoints, each with its own settings:
    /// every call goes to the less busy of two endpoints picked at random
    /// among those connected (power of two choices on the calls in
    /// flight). An endpoint whose connection ends or whose attempt fails
    /// is left out while it redials with backoff; a call that finds its
    /// endpoint failing before anything was sent moves to another. With no
    /// endpoint connected, calls fail fast with [`Error::Unavailable`].
    /// Every endpoint is dialed at the first call.
    pub fn balance_list(endpoints: impl IntoIterator<Item = Endpoint>) -> Channel {
        let shutdown = CancellationToken::new();
        let balancer = Balancer::new(Arc::new(Notify::new()), shutdown.clone());
        for endpoint in endpoints {
            balancer.insert(endpoint);
        }
        Channel::from_kind(Kind::Balanced(balancer), shutdown)
    }

    /// A balanced channel (as [`Channel::balance_list`]) whose endpoints
    /// come and go through the returned sender: [`Change::Insert`] adds
    /// one (or replaces the one of the same key), [`Change::Remove`] takes
    /// one out (calls in flight on it go on). Until an endpoint is added,
    /// calls fail fast. Must be called within a tokio runtime.
    pub fn balance_channel<K>(capacity: usize) -> (Channel, mpsc::Sender<Change<K, Endpoint>>)
    where
        K: Hash + Eq + Send + Clone + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Channel::balance_discover(ChangeStream(rx)), tx)
    }

    /// A balanced channel whose endpoints come from `discover`, any
    /// [`tower::discover::Discover`] of [`Endpoint`]s (a stream of
    /// `Result<Change<K, Endpoint>, E>`). The set stays as it is when the
    /// stream ends or fails. Must be called within a tokio runtime.
    pub fn balance_discover<D>(discover: D) -> Channel
    where
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Send,
    {
        let shutdown = CancellationToken::new();
        let balancer = Balancer::new(Arc::new(Notify::new()), shutdown.clone());
        tokio::spawn(balance::run_discover(balancer.clone(), discover));
        Channel::from_kind(Kind::Balanced(balancer), shutdown)
    }

    /// This handle, with calls that wait for a connection instead of
    /// failing fast while the channel is not connected (gRPC's
    /// `wait_for_ready`; default off). A waiting call ends when a
    /// connection is made, at its deadline or cancellation
    /// ([`CallOptions`]), or when it is dropped. Other clones keep their
    /// setting.
    pub fn wait_for_ready(mut self, wait: bool) -> Channel {
        self.wait_for_ready = wait;
        self
    }

    /// The state of the connections: for a balanced channel, the best
    /// state among its endpoints.
    pub fn connectivity(&self) -> Connectivity {
        match &self.inner.kind {
            Kind::Single(sub) => sub.connectivity(),
            Kind::Balanced(balancer) => balancer.connectivity(),
        }
    }

    /// Each endpoint's address and state (one for a channel to one
    /// endpoint), for metrics and health checks.
    pub fn endpoints(&self) -> Vec<(String, Connectivity)> {
        match &self.inner.kind {
            Kind::Single(sub) => vec![(sub.address().to_owned(), sub.connectivity())],
            Kind::Balanced(balancer) => balancer.endpoints(),
        }
    }

    /// A connection for one call, waiting no longer than the call's
    /// deadline and cancellation token allow (the call itself is bounded by
    /// them once it starts).
    async fn lease(&self, kind: CallKind, opts: &CallOptions) -> Result<Lease, Error> {
        let acquire = async {
            match &self.inner.kind {
                Kind::Single(sub) => sub.acquire(kind, self.wait_for_ready).await,
                Kind::Balanced(balancer) => balancer.acquire(kind, self.wait_for_ready).await,
            }
        };
        let (deadline, cancel) = (opts.get_deadline(), opts.get_cancellation_token());
        if deadline.is_none() && cancel.is_none() {
            return acquire.await;
        }
        tokio::select! {
            biased;
            lease = acquire => lease,
            reason = crate::conn::ended(deadline, cancel.cloned()) => {
                Err(StreamError::new(0, reason).into())
            }
        }
    }

    /// Makes a unary call with the given encoding (as
    /// [`Conn::unary_with`]) on a connection of the channel.
    pub async fn unary_with<Req, Resp, E>(
        &self,
        encoding: &E,
        rpc: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, Error>
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let lease = self.lease(CallKind::Unary, opts).await?;
        lease.conn().unary_with(encoding, rpc, req, opts).await
    }

    /// Opens a streaming call with the given encoding (as
    /// [`Conn::stream_with`]) on a connection of the channel.
    pub async fn stream_with<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        opts: &CallOptions,
    ) -> Result<ClientStream<Req, Resp, E>, Error>
    where
        E: Encoding<Req> + Encoding<Resp>,
    {
        let lease = self.lease(CallKind::Stream, opts).await?;
        lease.conn().stream_with(encoding, rpc, opts).await
    }
}

impl Invoker for Channel {
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
        self.unary_with(encoding, rpc, req, opts)
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
        self.stream_with(encoding, rpc, opts)
    }
}

/// The future of a unary call made through [`tower::Service::call`] on a
/// [`Channel`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Bytes, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl tower::Service<Request> for Channel {
    type Response = Bytes;
    type Error = Error;
    type Future = ResponseFuture;

    /// Always ready: connection trouble shows in the call's result, as
    /// [`Error::Unavailable`].
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    /// Makes the request's unary call; the response is the encoded reply.
    fn call(&mut self, request: Request) -> ResponseFuture {
        let channel = self.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let (path, message, options) = request.into_parts();
                channel.unary_with(&Raw, &path, &message, &options).await
            }),
        }
    }
}
