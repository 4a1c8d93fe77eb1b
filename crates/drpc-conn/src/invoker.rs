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

type NextResponse<Resp, E> =
    Pin<Box<dyn Future<Output = (Option<Result<Resp, Error>>, ClientReceiver<Resp, E>)> + Send>>;

/// The responses of a server-streaming call, as a [`futures_core::Stream`].
///
/// The stream ends after the server's clean end or after the first error.
/// Dropping it before the end cancels the call.
pub struct Responses<Resp, E> {
    state: ResponsesState<Resp, E>,
}

enum ResponsesState<Resp, E> {
    Idle(ClientReceiver<Resp, E>),
    Receiving(NextResponse<Resp, E>),
    Done,
}

impl<Resp, E> std::fmt::Debug for Responses<Resp, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            ResponsesState::Idle(_) => "idle",
            ResponsesState::Receiving(_) => "receiving",
            ResponsesState::Done => "done",
        };
        f.debug_struct("Responses").field("state", &state).finish()
    }
}

impl<Resp, E> Responses<Resp, E>
where
    Resp: Send + 'static,
    E: Encoding<Resp>,
{
    /// Wraps the receiving half of a call.
    pub fn new(receiver: ClientReceiver<Resp, E>) -> Self {
        Responses {
            state: ResponsesState::Idle(receiver),
        }
    }

    /// Receives the next response: `Ok(None)` at the server's clean end.
    pub async fn message(&mut self) -> Result<Option<Resp>, Error> {
        match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }
}

impl<Resp, E> Unpin for Responses<Resp, E> {}

impl<Resp, E> Stream for Responses<Resp, E>
where
    Resp: Send + 'static,
    E: Encoding<Resp>,
{
    type Item = Result<Resp, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match std::mem::replace(&mut self.state, ResponsesState::Done) {
                ResponsesState::Done => return Poll::Ready(None),
                ResponsesState::Idle(mut receiver) => {
                    self.state = ResponsesState::Receiving(Box::pin(async move {
                        let next = receiver.recv().await.transpose();
                        (next, receiver)
                    }));
                }
                ResponsesState::Receiving(mut fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.state = ResponsesState::Receiving(fut);
                        return Poll::Pending;
                    }
                    Poll::Ready((next, receiver)) => {
                        if matches!(next, Some(Ok(_))) {
                            self.state = ResponsesState::Idle(receiver);
                        }
                        return Poll::Ready(next);
                    }
                },
            }
        }
    }
}
