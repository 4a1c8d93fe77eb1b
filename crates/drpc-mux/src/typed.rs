//! Typed halves of a server stream.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use drpc_stream::{Encoding, MessageBatch, MessageBuf, RecvBatch, Stream, StreamErrorKind};
use drpc_wire::CodedError;

/// Turns a stream failure into the error a handler returns: the original
/// text, no code (the stream is over, so nothing more reaches the peer
/// anyway, except after a local decode failure).
pub(crate) fn stream_failure(err: drpc_stream::StreamError) -> CodedError {
    match err.into_kind() {
        StreamErrorKind::Remote(e) => e,
        other => CodedError::new(0, other.to_string()),
    }
}

/// A source of request messages, as a streaming handler sees it.
///
/// Implemented by [`ServerReceiver`]; other transports (a gRPC adapter,
/// a test) implement it too, so that one handler serves them all.
pub trait RequestStream<T>: Send {
    /// The next message; `Ok(None)` once the client closed its sending side.
    fn recv(&mut self) -> impl Future<Output = Result<Option<T>, CodedError>> + Send;
}

/// A sink of response messages, as a streaming handler sees it.
///
/// Implemented by [`ServerSender`]; other transports implement it too.
pub trait ResponseSink<T>: Send {
    /// Sends one message.
    fn send(&mut self, msg: &T) -> impl Future<Output = Result<(), CodedError>> + Send;

    /// Sends several messages, in order. [`ServerSender`] appends them to
    /// the connection together, which makes a run of small messages far
    /// cheaper than one `send` each; the default sends them one by one.
    fn send_all<'a, I>(&mut self, msgs: I) -> impl Future<Output = Result<(), CodedError>> + Send
    where
        T: Sync + 'a,
        I: IntoIterator<Item = &'a T> + Send,
        I::IntoIter: Send,
    {
        async move {
            for msg in msgs {
                self.send(msg).await?;
            }
            Ok(())
        }
    }
}

/// Receives the client's messages of type `Req`.
pub struct ServerReceiver<Req, E> {
    stream: Arc<Stream>,
    encoding: E,
    /// Requests taken from the stream together, handed out one by one.
    batch: RecvBatch,
    _req: PhantomData<fn() -> Req>,
}

/// Sends messages of type `Resp` to the client.
pub struct ServerSender<Resp, E> {
    stream: Arc<Stream>,
    encoding: E,
    buf: MessageBuf,
    batch: MessageBatch,
    _resp: PhantomData<fn(Resp)>,
}

impl<Req, E> fmt::Debug for ServerReceiver<Req, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerReceiver")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl<Resp, E> fmt::Debug for ServerSender<Resp, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSender")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl<Req, E: Encoding<Req>> ServerReceiver<Req, E> {
    pub(crate) fn new(stream: Arc<Stream>, encoding: E) -> Self {
        ServerReceiver {
            stream,
            encoding,
            batch: RecvBatch::new(),
            _req: PhantomData,
        }
    }

    /// The next message; `Ok(None)` once the client closed its sending side.
    /// A message that does not decode is an error with code 0 (Go sends the
    /// decoder's text).
    pub async fn recv(&mut self) -> Result<Option<Req>, CodedError> {
        match self
            .batch
            .recv(&self.stream)
            .await
            .map_err(stream_failure)?
        {
            None => Ok(None),
            Some(data) => self
                .encoding
                .decode(data)
                .map(Some)
                .map_err(|e| CodedError::new(0, e.to_string())),
        }
    }
}

impl<Resp, E: Encoding<Resp>> ServerSender<Resp, E> {
    pub(crate) fn new(stream: Arc<Stream>, encoding: E) -> Self {
        ServerSender {
            stream,
            encoding,
            buf: MessageBuf::new(),
            batch: MessageBatch::new(),
            _resp: PhantomData,
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Resp) -> Result<(), CodedError> {
        self.buf.clear();
        self.encoding
            .encode_to(msg, &mut self.buf)
            .map_err(|e| CodedError::new(0, e.to_string()))?;
        self.stream
            .send_encoded(&mut self.buf)
            .await
            .map_err(stream_failure)
    }
}

impl<Resp, E: Encoding<Resp>> ServerSender<Resp, E> {
    /// Sends every message of `msgs`, in order, appending as many as the
    /// stream's credit and the connection's write buffer allow together
    /// ([`Stream::send_batch`]): the way to send a run of small messages.
    /// A large one (at least [`drpc_stream::ZERO_COPY_MIN`] bytes) goes
    /// alone, as [`ServerSender::send`] sends it: by reference, uncopied.
    /// A message that does not encode fails the call before any of those
    /// after it is sent.
    pub async fn send_all<'a, I>(&mut self, msgs: I) -> Result<(), CodedError>
    where
        Resp: 'a,
        I: IntoIterator<Item = &'a Resp>,
    {
        self.batch.clear();
        for msg in msgs {
            match self.batch.push_small(&self.encoding, msg) {
                Ok(true) => {}
                // Large: alone, by reference, after what the batch holds.
                Ok(false) => {
                    self.flush_batch().await?;
                    self.send(msg).await?;
                }
                Err(e) => {
                    self.flush_batch().await?;
                    return Err(CodedError::new(0, e.to_string()));
                }
            }
        }
        self.flush_batch().await
    }

    async fn flush_batch(&mut self) -> Result<(), CodedError> {
        self.stream
            .send_batch(&mut self.batch)
            .await
            .map_err(stream_failure)
    }
}

impl<Req: Send, E: Encoding<Req>> RequestStream<Req> for ServerReceiver<Req, E> {
    fn recv(&mut self) -> impl Future<Output = Result<Option<Req>, CodedError>> + Send {
        ServerReceiver::recv(self)
    }
}

impl<Resp: Sync, E: Encoding<Resp>> ResponseSink<Resp> for ServerSender<Resp, E> {
    fn send(&mut self, msg: &Resp) -> impl Future<Output = Result<(), CodedError>> + Send {
        ServerSender::send(self, msg)
    }

    fn send_all<'a, I>(&mut self, msgs: I) -> impl Future<Output = Result<(), CodedError>> + Send
    where
        Resp: 'a,
        I: IntoIterator<Item = &'a Resp> + Send,
        I::IntoIter: Send,
    {
        ServerSender::send_all(self, msgs)
    }
}
