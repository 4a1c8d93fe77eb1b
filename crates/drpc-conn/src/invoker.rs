//! What generated clients are generic over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use drpc_stream::Encoding;
use futures_core::Stream;

use crate::{CallOptions, ClientReceiver, ClientStream, Conn, Error};

/// Something that makes DRPC calls: a [`Conn`], or anything wrapping one
/// (a pool, an interceptor, a test double). Generated clients are generic
/// over it.
pub trait Invoker: Send + Sync {
    /// Makes a unary call.
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
        E: Encoding<Req> + Encoding<Resp>;

    /// Opens a streaming call.
    fn open<Req, Resp, E>(
        &self,
        encoding: E,
        rpc: &str,
        opts: &CallOptions,
    ) -> impl Future<Output = Result<ClientStream<Req, Resp, E>, Error>> + Send
    where
        E: Encoding<Req> + Encoding<Resp>;
}

impl Invoker for Conn {
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

impl<T: Invoker> Invoker for Arc<T> {
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
        (**self).invoke(encoding, rpc, req, opts)
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
        (**self).open(encoding, rpc, opts)
    }
}

/// The responses of a server-streaming call, as a [`futures_core::Stream`].
///
/// The stream ends after the server's clean end or after the first error.
/// Dropping it before the end cancels the call.
pub struct Responses<Resp, E> {
    /// `None` once the stream has ended.
    receiver: Option<ClientReceiver<Resp, E>>,
}

impl<Resp, E> std::fmt::Debug for Responses<Resp, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.receiver.is_some() {
            "open"
        } else {
            "done"
        };
        f.debug_struct("Responses").field("state", &state).finish()
    }
}

impl<Resp, E> Responses<Resp, E>
where
    E: Encoding<Resp>,
{
    /// Wraps the receiving half of a call.
    pub fn new(receiver: ClientReceiver<Resp, E>) -> Self {
        Responses {
            receiver: Some(receiver),
        }
    }

    /// Receives the next response: `Ok(None)` at the server's clean end.
    pub async fn message(&mut self) -> Result<Option<Resp>, Error> {
        match std::future::poll_fn(|cx| self.poll_message(cx)).await {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Resp, Error>>> {
        let Some(receiver) = &mut self.receiver else {
            return Poll::Ready(None);
        };
        let next = std::task::ready!(receiver.poll_recv(cx)).transpose();
        if !matches!(next, Some(Ok(_))) {
            // The end, or the first error: nothing more will come.
            self.receiver = None;
        }
        Poll::Ready(next)
    }
}

impl<Resp, E> Unpin for Responses<Resp, E> {}

impl<Resp, E> Stream for Responses<Resp, E>
where
    E: Encoding<Resp>,
{
    type Item = Result<Resp, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_message(cx)
    }
}
