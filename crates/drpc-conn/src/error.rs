//! The client's error type.

use std::io;

use drpc_stream::{ConnectionError, EncodingError, Initiator, StreamError, StreamErrorKind};
use drpc_wire::WireError;

/// gRPC's status numbers, which DRPC codes follow by convention.
const CODE_CANCELED: u64 = 1;
const CODE_DEADLINE_EXCEEDED: u64 = 4;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call's stream failed: the server's error, a cancellation, the
    /// deadline, the connection ending. See [`Error::code`],
    /// [`Error::is_canceled`] and friends.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The request could not be encoded.
    #[error("encoding the request: {0}")]
    Encode(EncodingError),
    /// The response could not be decoded.
    #[error("decoding the response: {0}")]
    Decode(EncodingError),
    /// Connecting failed.
    #[error("connecting: {0}")]
    Connect(#[from] io::Error),
}

impl Error {
    fn stream_kind(&self) -> Option<&StreamErrorKind> {
        match self {
            Error::Stream(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// The code the server attached to its error (`None` without one, or
    /// for any other failure).
    pub fn code(&self) -> Option<u64> {
        match self {
            Error::Stream(e) => e.code(),
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
    /// gRPC's code 1, Canceled).
    pub fn is_canceled(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::Canceled(_)))
            || self.code() == Some(CODE_CANCELED)
    }

    /// Whether the server cancelled the call.
    pub fn is_canceled_by_remote(&self) -> bool {
        matches!(
            self.stream_kind(),
            Some(StreamErrorKind::Canceled(Initiator::Remote))
        )
    }

    /// Whether the call's deadline passed: noticed here, or by the server,
    /// which then ends the call with gRPC's code 4 (DeadlineExceeded);
    /// which of the two comes first is a race.
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::DeadlineExceeded))
            || self.code() == Some(CODE_DEADLINE_EXCEEDED)
    }

    /// Whether the connection ended (the call may or may not have run).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::ConnectionLost(_)))
            || matches!(self, Error::Connect(_))
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
    /// (gRPC's ResourceExhausted): a message too large, or more data than
    /// a receive queue or flow-control window holds.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(self, Error::Stream(e) if e.is_resource_exhausted())
    }

    /// Whether the server ended the call without sending a response (Go's
    /// `io.EOF` from a unary call).
    pub fn is_missing_response(&self) -> bool {
        matches!(self.stream_kind(), Some(StreamErrorKind::Eof))
    }
}
