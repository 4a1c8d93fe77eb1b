//! The Error packet payload (protocol.md §10) and numeric error codes in
//! the spirit of Go's `drpcerr`.

use std::error::Error as StdError;

use bytes::BufMut;

/// The code the generated "unimplemented" stubs send (gRPC's number).
pub const UNIMPLEMENTED: u64 = 12;

/// The code of a stream failed for exceeding a limit of its receiver: a
/// message over the size limit, or more data than the receiver's queue or
/// window allows (gRPC's ResourceExhausted, as the fork maps those
/// failures, mux-fork-2026.md §2.4).
pub const RESOURCE_EXHAUSTED: u64 = 8;

/// How many `source()` links [`code_of`] follows, as Go's `drpcerr.Code`.
const MAX_CHAIN: usize = 100;

/// An error that carries a DRPC code: what a received Error packet decodes
/// to, and what a handler returns to choose the code its client sees.
///
/// Code 0 means "no code", as in Go. `Display` is the message alone, which
/// is the text that travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    code: u64,
    message: String,
}

impl CodedError {
    /// An error with `code` (0 for none) and `message`.
    pub fn new(code: u64, message: impl Into<String>) -> CodedError {
        CodedError {
            code,
            message: message.into(),
        }
    }

    /// The code; 0 when none was attached.
    pub fn code(&self) -> u64 {
        self.code
    }

    /// The message text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Encodes the error as an Error packet payload.
    pub fn append_to<B: BufMut + ?Sized>(&self, buf: &mut B) {
        append_error(buf, self.code, self.message.as_bytes());
    }

    /// Decodes an Error packet payload (never fails: a payload shorter than
    /// the 8-byte code becomes a message with Go's note, and no code).
    pub fn decode(payload: &[u8]) -> CodedError {
        match payload.split_first_chunk::<8>() {
            Some((code, text)) => CodedError {
                code: u64::from_be_bytes(*code),
                message: String::from_utf8_lossy(text).into_owned(),
            },
            None => CodedError {
                code: 0,
                message: format!(
                    "{} (drpcwire note: invalid error data)",
                    String::from_utf8_lossy(payload)
                ),
            },
        }
    }
}

/// Appends an Error payload: the code as 8 bytes big-endian, then the text.
pub fn append_error<B: BufMut + ?Sized>(buf: &mut B, code: u64, message: &[u8]) {
    buf.put_u64(code);
    buf.put_slice(message);
}

/// The code of an error: the first [`CodedError`] found by walking
/// `source()` from `err`, at most 100 steps; 0 when there is none.
pub fn code_of(err: &(dyn StdError + 'static)) -> u64 {
    let mut current = Some(err);
    for _ in 0..MAX_CHAIN {
        let Some(e) = current else { break };
        if let Some(coded) = e.downcast_ref::<CodedError>() {
            return coded.code;
        }
        current = e.source();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boom_42_matches_capture() {
        let mut buf = Vec::new();
        CodedError::new(42, "boom").append_to(&mut buf);
        assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 0x2a, b'b', b'o', b'o', b'm']);
        assert_eq!(CodedError::decode(&buf), CodedError::new(42, "boom"));
    }

    #[test]
    fn round_trip_code_5() {
        let mut buf = Vec::new();
        append_error(&mut buf, 5, b"test");
        let e = CodedError::decode(&buf);
        assert_eq!((e.code(), e.message()), (5, "test"));
        assert_eq!(e.to_string(), "test");
    }

    #[test]
    fn short_payload_gets_the_note() {
        let e = CodedError::decode(b"short");
        assert_eq!(e.code(), 0);
        assert_eq!(e.message(), "short (drpcwire note: invalid error data)");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] CodedError);

    #[derive(Debug, thiserror::Error)]
    #[error("opaque: {0}")]
    struct Opaque(CodedError);

    #[test]
    fn code_walks_the_source_chain() {
        assert_eq!(code_of(&CodedError::new(5, "x")), 5);
        assert_eq!(code_of(&Outer(CodedError::new(7, "x"))), 7);
        // A wrapper that hides its cause hides the code, as in Go.
        assert_eq!(code_of(&Opaque(CodedError::new(7, "x"))), 0);
        assert_eq!(code_of(&std::io::Error::other("plain")), 0);
    }
}
