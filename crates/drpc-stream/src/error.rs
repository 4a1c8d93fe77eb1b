//! Typed errors: what ended a stream, and what ended a connection.

use std::fmt;
use std::io;
use std::sync::Arc;

use drpc_wire::{CodedError, Compression, CompressionError, Kind, MetadataError, WireError};

/// Who ended something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// This side: the application or the library on its behalf.
    Local,
    /// The peer, by a packet it sent.
    Remote,
}

/// Why a connection ended. Every stream of the connection ends with it.
///
/// `Display` reproduces the reference implementation's texts
/// (protocol.md §15).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The application closed the connection.
    #[error("manager closed: Close called")]
    Closed,
    /// The peer closed the transport.
    #[error("manager closed: EOF")]
    Eof,
    /// Reading or writing the transport failed.
    #[error("manager closed: {0}")]
    Io(Arc<io::Error>),
    /// The peer's bytes broke the framing rules.
    #[error("manager closed: {0}")]
    Wire(#[from] WireError),
    /// The peer sent Invoke or InvokeMetadata on a stream that exists.
    #[error("protocol error: invoke on existing stream (stream {stream})")]
    InvokeOnExistingStream {
        /// The stream concerned.
        stream: u64,
    },
    /// The peer sent a packet of an unknown kind without the control bit.
    #[error("internal error: unknown packet kind: {kind} (stream {stream})")]
    UnknownKind {
        /// The stream concerned.
        stream: u64,
        /// The kind received.
        kind: Kind,
    },
    /// The peer sent InvokeMetadata that does not decode.
    #[error("{source} (stream {stream})")]
    InvalidMetadata {
        /// The stream concerned.
        stream: u64,
        /// What was wrong with it.
        source: MetadataError,
    },
    /// The peer sent an InvokeMetadata larger than the connection accepts.
    #[error("protocol error: invoke metadata over {limit} bytes (stream {stream})")]
    MetadataTooLarge {
        /// The stream concerned.
        stream: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer speaks another protocol: its first bytes were `seen` (an
    /// HTTP/2 preface, an HTTP/1 request, a TLS handshake).
    #[error("protocol error: not DRPC: the peer sent {seen}")]
    WrongProtocol {
        /// What the first bytes were.
        seen: &'static str,
    },
    /// The peer started more streams than the connection allows to be
    /// pending (Invoke still incomplete) at once.
    #[error("protocol error: too many pending invokes (limit {limit})")]
    TooManyPendingInvokes {
        /// The limit that was exceeded.
        limit: usize,
    },
}

impl ConnectionError {
    /// Wraps an I/O error, turning a clean end of file into [`ConnectionError::Eof`].
    pub fn from_io(err: io::Error) -> ConnectionError {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            ConnectionError::Eof
        } else {
            ConnectionError::Io(Arc::new(err))
        }
    }

    /// Whether the peer's bytes broke the protocol (as opposed to the
    /// transport failing or the application closing).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            ConnectionError::Wire(_)
                | ConnectionError::InvokeOnExistingStream { .. }
                | ConnectionError::UnknownKind { .. }
                | ConnectionError::InvalidMetadata { .. }
                | ConnectionError::MetadataTooLarge { .. }
                | ConnectionError::TooManyPendingInvokes { .. }
                | ConnectionError::WrongProtocol { .. }
        )
    }
}

/// Why an operation on a stream failed.
///
/// The variants follow the table of semantics.md §3.6: after each kind of
/// termination, sends and receives fail in the way Go's (and gRPC's) do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StreamErrorKind {
    /// The stream ended for a reason that the receive side reports (Go's
    /// `io.EOF` from Send after a remote Error, Cancel or a local cancel).
    #[error("EOF")]
    Eof,
    /// Send after this side's CloseSend.
    #[error("drpc: send closed")]
    SendClosed,
    /// Send or receive after this side's Close.
    #[error("drpc: stream terminated by sending close")]
    TerminatedByClose,
    /// Receive after this side sent an Error.
    #[error("drpc: stream terminated by sending error")]
    TerminatedBySendError,
    /// Send after the peer's Close.
    #[error("closed: remote closed the stream")]
    ClosedByRemote,
    /// The peer ended the stream with an Error packet.
    #[error("{0}")]
    Remote(CodedError),
    /// The stream was cancelled, by this side or by the peer's Cancel.
    #[error("context canceled")]
    Canceled(Initiator),
    /// The stream's deadline passed.
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    /// The connection ended, taking the stream with it.
    #[error("{0}")]
    ConnectionLost(ConnectionError),
    /// A message was larger than the maximum packet size; it was not sent
    /// (peers refuse such packets by ending the connection) and the stream
    /// goes on.
    #[error("message of {size} bytes exceeds the maximum packet size of {limit} bytes")]
    MessageTooLarge {
        /// The message's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer sent a message larger than this side accepts. The stream
    /// failed alone (the peer was told with ResourceExhausted); the
    /// connection goes on.
    #[error("message too large: message size {size} exceeds maximum of {limit} bytes")]
    ReceivedTooLarge {
        /// How large the message had grown when it was refused.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The peer sent more than this side could queue for the stream: more
    /// than the window it was granted (flow control), or, without flow
    /// control, more than the stream's queue holds while other streams
    /// share the connection. The stream failed alone (the peer was told
    /// with ResourceExhausted); the connection goes on.
    #[error("receive queue cap exceeded: receive queue exceeded its {cap}-byte cap")]
    QueueOverflow {
        /// The cap in bytes.
        cap: usize,
    },
    /// The connection already had its maximum of concurrent streams; the
    /// stream was never opened.
    #[error("too many concurrent streams: refused: at most {limit} concurrent streams")]
    Refused {
        /// The limit.
        limit: usize,
    },
    /// A received message of a compressed stream did not decompress: not a
    /// valid block, or declaring more than the maximum packet size (refused
    /// before anything was allocated). Only that receive failed: the
    /// stream and the connection go on, and the next receive returns the
    /// next message, as the fork's `MsgRecv` does.
    #[error("protocol error: {source}")]
    Decompress {
        /// The stream's compression.
        compression: Compression,
        /// What was wrong with the payload.
        source: CompressionError,
    },
}

/// An operation on stream `stream_id` failed; [`StreamError::kind`] says
/// why.
#[derive(Debug, Clone)]
pub struct StreamError {
    stream_id: u64,
    kind: StreamErrorKind,
}

impl StreamError {
    /// Builds an error of stream `stream_id`.
    pub fn new(stream_id: u64, kind: StreamErrorKind) -> StreamError {
        StreamError { stream_id, kind }
    }

    /// The stream the error belongs to.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Why the operation failed.
    pub fn kind(&self) -> &StreamErrorKind {
        &self.kind
    }

    /// Consumes the error, returning why the operation failed.
    pub fn into_kind(self) -> StreamErrorKind {
        self.kind
    }

    /// Whether the connection the stream belonged to is still usable.
    pub fn connection_survives(&self) -> bool {
        !matches!(self.kind, StreamErrorKind::ConnectionLost(_))
    }

    /// Whether the stream was cancelled (locally or remotely).
    pub fn is_canceled(&self) -> bool {
        matches!(self.kind, StreamErrorKind::Canceled(_))
    }

    /// Whether a message was too large: refused here before sending,
    /// refused here on receipt (a compressed one included, whose declared
    /// length was over the limit), or refused by the peer
    /// (ResourceExhausted with the fork's "message too large" text).
    pub fn is_too_large(&self) -> bool {
        match &self.kind {
            StreamErrorKind::MessageTooLarge { .. }
            | StreamErrorKind::ReceivedTooLarge { .. }
            | StreamErrorKind::Decompress {
                source: CompressionError::TooLarge { .. },
                ..
            } => true,
            StreamErrorKind::Remote(e) => {
                is_remote_resource_exhausted(e) && e.message().contains("message too large")
            }
            _ => false,
        }
    }

    /// Whether a limit of this side or of the peer ended the stream, or
    /// failed a receive (gRPC's ResourceExhausted): a message too large,
    /// or more data than a queue or window holds.
    pub fn is_resource_exhausted(&self) -> bool {
        match &self.kind {
            StreamErrorKind::MessageTooLarge { .. }
            | StreamErrorKind::ReceivedTooLarge { .. }
            | StreamErrorKind::QueueOverflow { .. }
            | StreamErrorKind::Decompress {
                source: CompressionError::TooLarge { .. },
                ..
            } => true,
            StreamErrorKind::Remote(e) => is_remote_resource_exhausted(e),
            _ => false,
        }
    }

    /// The code of a remote error; `None` for every other kind of error or
    /// when the remote attached no code.
    pub fn code(&self) -> Option<u64> {
        match &self.kind {
            StreamErrorKind::Remote(e) if e.code() != 0 => Some(e.code()),
            _ => None,
        }
    }
}

/// Code 8, or a fork peer's gRPC-mapped text (mux-fork-2026.md §2.4).
fn is_remote_resource_exhausted(e: &CodedError) -> bool {
    e.code() == drpc_wire::RESOURCE_EXHAUSTED
        || e.message()
            .starts_with("rpc error: code = ResourceExhausted")
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for StreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StreamErrorKind::Remote(e) => Some(e),
            StreamErrorKind::ConnectionLost(e) => Some(e),
            _ => None,
        }
    }
}
