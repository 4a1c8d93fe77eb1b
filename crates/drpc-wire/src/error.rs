//! The typed errors of the wire layer.

use crate::{Id, Kind};

/// A violation of the wire protocol found while parsing frames or assembling
/// packets. Every variant is fatal for the connection it was read from
/// (protocol.md §15); `Display` reproduces the reference implementation's
/// text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A varint's 10th byte still had its continuation bit set.
    #[error("protocol error: drpc: varint too long")]
    VarintTooLong,

    /// A frame id (stream, message) was lower than the last one accepted on
    /// the connection. Only raised by [`crate::ConnectionIdOrder`], the
    /// original one-stream-at-a-time rule.
    #[error("protocol error: id monotonicity violation (fr:{frame} r:{last})")]
    IdMonotonicity {
        /// The offending frame's id.
        frame: Id,
        /// The lowest id the connection would still have accepted.
        last: Id,
    },

    /// A frame of a stream went back to a message id lower than one already
    /// started or completed on that stream.
    #[error(
        "protocol error: message id monotonicity violation on stream {stream}: got {got}, expected >= {expected}"
    )]
    MessageIdRegression {
        /// The stream the frame belongs to.
        stream: u64,
        /// The frame's message id.
        got: u64,
        /// The lowest message id still acceptable.
        expected: u64,
    },

    /// A frame continued a packet (same id) with a different kind.
    #[error("protocol error: packet kind change (fr:{frame} pkt:{packet})")]
    KindChange {
        /// The frame's kind.
        frame: Kind,
        /// The kind of the packet under assembly.
        packet: Kind,
    },

    /// A packet (or a single frame) was larger than the configured maximum
    /// packet size.
    #[error("protocol error: data overflow (len:{len})")]
    DataOverflow {
        /// The size the packet would have reached.
        len: u64,
    },

    /// A frame was given to the assembler of another stream. This is a bug
    /// in the caller's routing, reported rather than trusted.
    #[error("protocol error: frame stream mismatch: got stream {got}, expected {expected}")]
    StreamMismatch {
        /// The frame's stream id.
        got: u64,
        /// The assembler's stream id.
        expected: u64,
    },
}
