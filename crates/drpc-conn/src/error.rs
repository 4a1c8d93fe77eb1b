//! The client's error type.

use std::fmt;
use std::io;

use drpc_stream::{ConnectionError, EncodingError, Initiator, StreamError, StreamErrorKind};
use drpc_wire::{Code, WireError};

/// Why a call failed.
///
/// # Codes
///
/// [`Error::code`] gives every failure a gRPC [`Code`] to match on, the
/// server's for a remote error and, for failures noticed here, the code
/// gRPC gives them:
///
/// | failure                                                  | code                |
/// |----------------------------------------------------------|---------------------|
/// | the server's error with a code                           | that code           |
/// | the server's error without one (code 0)                  | `None` (but [`Code::ResourceExhausted`] for a fork peer's "rpc error: code = ResourceExhausted" text) |
/// | cancelled here (dropped call, `cancel`, token), or by the server's Cancel | [`Code::Canceled`] |
/// | the deadline passed here                                 | [`Code::DeadlineExceeded`] |
/// | a message refused as too large here (a compressed response declaring more than the limit included), a receive queue or window overflow | [`Code::ResourceExhausted`] |
/// | connecting failed ([`Error::Connect`]), not connected ([`Error::Unavailable`]), the connection ended or broke the protocol | [`Code::Unavailable`] |
/// | the request did not encode, the response did not decode or decompress | [`Code::Internal`]  |
/// | the stream ended without a message: a unary call without a response, a send after the call ended (receive to learn why) | [`Code::Unknown`] |
/// | the call was used after it ended (send after `close_send`, …) | [`Code::FailedPrecondition`] |
///
/// The predicates ([`Error::is_unavailable`], [`Error::is_too_large`],
/// [`Error::is_deadline_exceeded`], [`Error::is_canceled`], …) are true
/// for the local and the remote form of a failure alike.
///
/// # Display
///
/// `Display` is the code's name, a colon and what happened, then the
/// stream when it is known: `NotFound: no such key (stream 3)`,
/// `DeadlineExceeded: deadline exceeded (stream 5)`,
/// `Unavailable: connecting to 127.0.0.1:4000: Connection refused (os error 111)`.
/// A server's error without a code shows its message alone.
///
/// # Source
///
/// `source()` is the server's [`drpc_wire::CodedError`] for a remote
/// error (so [`drpc_wire::code_of`] finds its code), the I/O error of a
/// failed connect or transport, the framing error of a peer that broke
/// the protocol, the codec's error; nothing otherwise.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The call's stream failed: the server's error, a cancellation, the
    /// deadline, the connection ending. See [`Error::code`],
    /// [`Error::is_canceled`] and friends.
    Stream(StreamError),
    /// The request could not be encoded.
    Encode(EncodingError),
    /// The response could not be decoded.
    Decode(EncodingError),
    /// Connecting to `addr` failed.
    Connect {
        /// The address dialled (a `host:port`, a socket path).
        addr: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The call failed fast: the client is not connected to `addr` (a
    /// reconnecting channel between connections) for `reason` (the last
    /// connect error, say).
    Unavailable {
        /// The address the client connects to.
        addr: String,
        /// Why it is not connected.
        reason: String,
    },
    /// A `tower` layer between the caller and the channel failed the call
    /// with an error of its own (code Unknown); see
    /// [`from_layer_error`](crate::from_layer_error).
    Layer(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Stream(e) => StreamDisplay(e).fmt(f),
            Error::Encode(e) => write!(f, "Internal: encoding the request: {e}"),
            Error::Decode(e) => write!(f, "Internal: decoding the response: {e}"),
            Error::Connect { addr, source } => {
                write!(f, "Unavailable: connecting to {addr}: {source}")
            }
            Error::Unavailable { addr, reason } => {
                write!(f, "Unavailable: not connected to {addr}: {reason}")
            }
            Error::Layer(e) => write!(f, "Unknown: a service layer failed the call: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Stream(e) => match e.kind() {
                StreamErrorKind::Remote(remote) => Some(remote),
                StreamErrorKind::ConnectionLost(ConnectionError::Io(io)) => Some(&**io),
                StreamErrorKind::ConnectionLost(ConnectionError::Wire(w)) => Some(w),
                _ => None,
            },
            Error::Encode(e) | Error::Decode(e) => Some(e),
            Error::Connect { source, .. } => Some(source),
            Error::Unavailable { .. } => None,
            Error::Layer(e) => Some(&**e),
        }
    }
}

impl From<StreamError> for Error {
    fn from(e: StreamError) -> Error {
        Error::Stream(e)
    }
}

/// A stream error as users see it: code, text without the connection
/// layer's jargon, stream.
struct StreamDisplay<'a>(&'a StreamError);

impl fmt::Display for StreamDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if let Some(code) = stream_code(e) {
            write!(f, "{code}: ")?;
        }
        match e.kind() {
            StreamErrorKind::Remote(remote) => f.write_str(remote.message())?,
            StreamErrorKind::Canceled(Initiator::Local) => f.write_str("call canceled")?,
            StreamErrorKind::Canceled(Initiator::Remote) => f.write_str("canceled by the peer")?,
            StreamErrorKind::DeadlineExceeded => f.write_str("deadline exceeded")?,
            StreamErrorKind::Eof => f.write_str("the stream ended (EOF)")?,
            StreamErrorKind::ConnectionLost(c) => write_connection_error(f, c)?,
            other => write!(f, "{other}")?,
        }
        if e.stream_id() != 0 {
            write!(f, " (stream {})", e.stream_id())?;
        }
        Ok(())
    }
}

/// The connection's end as users see it: "connection closed: …" for
/// drpc-stream's Go-compatible "manager closed: …".
fn write_connection_error(f: &mut fmt::Formatter<'_>, e: &ConnectionError) -> fmt::Result {
    match e {
        ConnectionError::Closed => f.write_str("connection closed by the client"),
        ConnectionError::Eof => f.write_str("connection closed by the peer"),
        ConnectionError::Io(io) => write!(f, "connection failed: {io}"),
        ConnectionError::Wire(w) => write!(f, "connection ended: {w}"),
        other => {
            let text = other.to_string();
            let text = text.strip_prefix("manager closed: ").unwrap_or(&text);
            write!(f, "connection ended: {text}")
        }
    }
}

/// The code of a stream error, local or remote (see [`Error`]'s table).
fn stream_code(e: &StreamError) -> Option<Code> {
    Some(match e.kind() {
        StreamErrorKind::Remote(remote) => match remote.code() {
            // A fork peer's gRPC-mapped text without a code.
            0 if e.is_resource_exhausted() => Code::ResourceExhausted,
            0 => return None,
            code => Code::from(code),
        },
        StreamErrorKind::Canceled(_) => Code::Canceled,
        StreamErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        StreamErrorKind::ConnectionLost(_) => Code::Unavailable,
        StreamErrorKind::Eof => Code::Unknown,
        // A response that did not decompress: as gRPC reports one (over
        // the size limit, ResourceExhausted, below).
        StreamErrorKind::Decompress { .. } if !e.is_resource_exhausted() => Code::Internal,
        StreamErrorKind::SendClosed
        | StreamErrorKind::TerminatedByClose
        | StreamErrorKind::TerminatedBySendError
        | StreamErrorKind::ClosedByRemote => Code::FailedPrecondition,
        _ if e.is_resource_exhausted() => Code::ResourceExhausted,
        // Refused: the connection's limit of concurrent streams.
        _ => Code::Unavailable,
    })
}

impl Error {
    /// The error of a failed connect to `addr` ([`Error::Connect`]).
    pub fn connect(addr: impl Into<String>, source: io::Error) -> Error {
        Error::Connect {
            addr: addr.into(),
            source,
        }
    }

    /// The error of a call that failed fast because the client is not
    /// connected to `addr`, for `reason` ([`Error::Unavailable`]).
    pub fn unavailable(addr: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Unavailable {
            addr: addr.into(),
            reason: reason.into(),
        }
    }

    fn stream_kind(&self) -> Option<&StreamErrorKind> {
        match self {
            Error::Stream(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The stream the error belongs to, when the call had one.
    pub fn stream_id(&self) -> Option<u64> {
        match self {
            Error::Stream(e) if e.stream_id() != 0 => Some(e.stream_id()),
            _ => None,
        }
    }

    /// The failure's code: the server's, or the one gRPC gives a failure
    /// noticed here (the table of [`Error`]). `None` only for a server's
    /// error without a code.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Stream(e) => stream_code(e),
            Error::Encode(_) | Error::Decode(_) => Some(Code::Internal),
            Error::Connect { .. } | Error::Unavailable { .. } => Some(Code::Unavailable),
            Error::Layer(_) => Some(Code::Unknown),
        }
    }

    /// The code the server attached to its error (`None` without one, or
    /// for any failure noticed here).
    pub fn remote_code(&self) -> Option<Code> {
        match self {
            Error::Stream(e) => e.code().map(Code::from),
            _ => None,
        }
    }

    /// The server's error message, if the server ended the call with one.
    pub fn remote_message(&self) -> Option<&str> {
        match self.stream_kind() {
            Some(StreamErrorKind::Remote(e)) => Some(e.message()),
            _ => None,
        }
    }

    /// Whether the call was cancelled, by the caller (dropping the call,
    /// an explicit cancel) or by the server (its Cancel, or an error with
    /// code Canceled).
    pub fn is_canceled(&self) -> bool {
        self.code() == Some(Code::Canceled)
    }

    /// Whether the server cancelled the call.
    pub fn is_canceled_by_remote(&self) -> bool {
        matches!(
            self.stream_kind(),
            Some(StreamErrorKind::Canceled(Initiator::Remote))
        )
    }

    /// Whether the call's deadline passed: noticed here, or by the server,
    /// which then ends the call with code DeadlineExceeded; which of the
    /// two comes first is a race.
    pub fn is_deadline_exceeded(&self) -> bool {
        self.code() == Some(Code::DeadlineExceeded)
    }

    /// Whether the server could not be reached: connecting failed, the
    /// client was not connected, the connection ended under the call, or
    /// the server answered with code Unavailable (a server shutting down
    /// does). The call may or may not have run, unless it failed to
    /// connect.
    pub fn is_unavailable(&self) -> bool {
        self.code() == Some(Code::Unavailable)
    }

    /// Whether the connection ended (the call may or may not have run), or
    /// could not be made.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::ConnectionLost(_)))
            || matches!(self, Error::Connect { .. } | Error::Unavailable { .. })
    }

    /// Whether the connection ended because the peer broke the protocol
    /// (including a message over the size limit).
    pub fn is_protocol_error(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::ConnectionLost(e)) if e.is_protocol_violation())
    }

    /// Whether a message was too large: refused by this side before it
    /// was sent or when it arrived (the call failed alone), refused by the
    /// peer (ResourceExhausted), or a single frame over the limit that
    /// ended the connection.
    pub fn is_too_large(&self) -> bool {
        match self {
            Error::Stream(e) => {
                e.is_too_large()
                    || matches!(
                        e.kind(),
                        StreamErrorKind::ConnectionLost(ConnectionError::Wire(
                            WireError::DataOverflow { .. }
                        ))
                    )
            }
            _ => false,
        }
    }

    /// Whether a limit of this side or of the peer ended the call alone
    /// (code ResourceExhausted): a message too large, more data than a
    /// receive queue or flow-control window holds, or the server's error
    /// with that code.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(self, Error::Stream(e) if e.is_resource_exhausted())
    }

    /// Whether the server ended the call without sending a response (Go's
    /// `io.EOF` from a unary call).
    pub fn is_missing_response(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::Eof))
    }
}
