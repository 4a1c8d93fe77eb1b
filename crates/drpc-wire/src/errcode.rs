//! The Error packet payload (protocol.md §10) and numeric error codes in
//! the spirit of Go's `drpcerr`, named as gRPC's status codes.

use std::error::Error as StdError;
use std::fmt;

use bytes::BufMut;

/// An error code: one of gRPC's 17 status codes, which DRPC codes follow
/// by convention, or any other number a peer sent.
///
/// The one code type of the workspace: what a handler attaches to its
/// [`CodedError`], what a client's error reports, what the gRPC adapter
/// maps to and from `tonic::Code`. On the wire a code is a `u64`; every
/// number is a valid `Code` ([`Code::from_u64`]), and two codes are equal
/// exactly when their numbers are, so the named constants work as match
/// patterns:
///
/// ```
/// use drpc_wire::Code;
///
/// fn retry(code: Option<Code>) -> bool {
///     match code {
///         Some(Code::Unavailable | Code::ResourceExhausted) => true,
///         Some(Code::NotFound) => false,
///         Some(other) => other.as_u64() == 42,
///         None => false,
///     }
/// }
/// assert!(retry(Some(Code::from(14))));
/// assert!(retry(Some(Code::from_u64(42))));
/// assert_eq!(Code::NotFound.to_string(), "NotFound");
/// assert_eq!(Code::from(42).to_string(), "Code(42)");
/// ```
///
/// Code 0 ([`Code::Ok`]) is "no code" on the wire, as in Go: an error
/// packet carrying it has no code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Code(u64);

#[allow(non_upper_case_globals)] // named as gRPC's codes, for matching as tonic's
impl Code {
    /// 0: not an error; on the wire, "no code".
    pub const Ok: Code = Code(0);
    /// 1: the operation was cancelled, typically by the caller.
    pub const Canceled: Code = Code(1);
    /// 2: an unknown error.
    pub const Unknown: Code = Code(2);
    /// 3: the client specified an invalid argument.
    pub const InvalidArgument: Code = Code(3);
    /// 4: the deadline passed before the operation could complete.
    pub const DeadlineExceeded: Code = Code(4);
    /// 5: some requested entity was not found.
    pub const NotFound: Code = Code(5);
    /// 6: the entity a client tried to create already exists.
    pub const AlreadyExists: Code = Code(6);
    /// 7: the caller may not execute the operation.
    pub const PermissionDenied: Code = Code(7);
    /// 8: some resource has been exhausted: a quota, a message size
    /// limit, a receive queue or flow-control window.
    pub const ResourceExhausted: Code = Code(8);
    /// 9: the system is not in a state required for the operation.
    pub const FailedPrecondition: Code = Code(9);
    /// 10: the operation was aborted, typically by a concurrency issue.
    pub const Aborted: Code = Code(10);
    /// 11: the operation was attempted past the valid range.
    pub const OutOfRange: Code = Code(11);
    /// 12: the operation is not implemented or supported.
    pub const Unimplemented: Code = Code(12);
    /// 13: an internal error: an invariant of the system is broken.
    pub const Internal: Code = Code(13);
    /// 14: the service is currently unavailable; retrying may help.
    pub const Unavailable: Code = Code(14);
    /// 15: unrecoverable data loss or corruption.
    pub const DataLoss: Code = Code(15);
    /// 16: the request lacks valid authentication credentials.
    pub const Unauthenticated: Code = Code(16);

    /// The code with number `code` (any number: those above 16 have no
    /// name).
    pub const fn from_u64(code: u64) -> Code {
        Code(code)
    }

    /// The code's number, as it travels on the wire.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// gRPC's name of the code ("NotFound"), `None` for numbers above 16.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "OK",
            1 => "Canceled",
            2 => "Unknown",
            3 => "InvalidArgument",
            4 => "DeadlineExceeded",
            5 => "NotFound",
            6 => "AlreadyExists",
            7 => "PermissionDenied",
            8 => "ResourceExhausted",
            9 => "FailedPrecondition",
            10 => "Aborted",
            11 => "OutOfRange",
            12 => "Unimplemented",
            13 => "Internal",
            14 => "Unavailable",
            15 => "DataLoss",
            16 => "Unauthenticated",
            _ => return None,
        })
    }

    /// Whether this is one of gRPC's 17 codes (0 to 16).
    pub const fn is_known(self) -> bool {
        self.0 <= 16
    }
}

/// gRPC's name ("NotFound", "OK" for 0), or `Code(42)` for other numbers,
/// as Go's `codes.Code` prints.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Code({})", self.0),
        }
    }
}

/// As `Display`: the name, or `Code(n)`.
impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<u64> for Code {
    fn from(code: u64) -> Code {
        Code(code)
    }
}

impl From<Code> for u64 {
    fn from(code: Code) -> u64 {
        code.0
    }
}

/// The code the generated "unimplemented" stubs send, as a number
/// ([`Code::Unimplemented`]).
pub const UNIMPLEMENTED: u64 = Code::Unimplemented.as_u64();

/// The code of a stream failed for exceeding a limit of its receiver: a
/// message over the size limit, or more data than the receiver's queue or
/// window allows (gRPC's ResourceExhausted, as the fork maps those
/// failures, mux-fork-2026.md §2.4), as a number
/// ([`Code::ResourceExhausted`]).
pub const RESOURCE_EXHAUSTED: u64 = Code::ResourceExhausted.as_u64();

/// How many `source()` links [`code_of`] follows, as Go's `drpcerr.Code`.
const MAX_CHAIN: usize = 100;

/// An error that carries a DRPC code: what a received Error packet decodes
/// to, and what a handler returns to choose the code its client sees.
///
/// Build it as gRPC's `Status`: [`CodedError::not_found`],
/// [`CodedError::invalid_argument`] and so on, one per [`Code`], or
/// [`CodedError::new`] with any code ([`Status`] is another name for it).
///
/// ```
/// use drpc_wire::{Code, CodedError, Status};
///
/// let err = Status::not_found("no such key");
/// assert_eq!(err.kind(), Code::NotFound);
/// assert_eq!(err.code(), 5);
/// assert_eq!(err.to_string(), "no such key");
/// assert_eq!(CodedError::new(42, "boom").kind(), Code::from(42));
/// ```
///
/// Code 0 means "no code", as in Go. `Display` is the message alone, which
/// is the text that travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    code: u64,
    message: String,
}

/// gRPC's name for an error with a code and a message: the same type as
/// [`CodedError`].
pub type Status = CodedError;

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> CodedError {
                CodedError::new(Code::$code, message)
            }
        )*
    };
}

impl CodedError {
    /// An error with `code` (a [`Code`] or its number; 0 for none) and
    /// `message`.
    pub fn new(code: impl Into<Code>, message: impl Into<String>) -> CodedError {
        CodedError {
            code: code.into().as_u64(),
            message: message.into(),
        }
    }

    constructors! {
        /// An error with code [`Code::Canceled`] (1).
        canceled => Canceled,
        /// An error with code [`Code::Unknown`] (2).
        unknown => Unknown,
        /// An error with code [`Code::InvalidArgument`] (3).
        invalid_argument => InvalidArgument,
        /// An error with code [`Code::DeadlineExceeded`] (4).
        deadline_exceeded => DeadlineExceeded,
        /// An error with code [`Code::NotFound`] (5).
        not_found => NotFound,
        /// An error with code [`Code::AlreadyExists`] (6).
        already_exists => AlreadyExists,
        /// An error with code [`Code::PermissionDenied`] (7).
        permission_denied => PermissionDenied,
        /// An error with code [`Code::ResourceExhausted`] (8).
        resource_exhausted => ResourceExhausted,
        /// An error with code [`Code::FailedPrecondition`] (9).
        failed_precondition => FailedPrecondition,
        /// An error with code [`Code::Aborted`] (10).
        aborted => Aborted,
        /// An error with code [`Code::OutOfRange`] (11).
        out_of_range => OutOfRange,
        /// An error with code [`Code::Unimplemented`] (12).
        unimplemented => Unimplemented,
        /// An error with code [`Code::Internal`] (13).
        internal => Internal,
        /// An error with code [`Code::Unavailable`] (14).
        unavailable => Unavailable,
        /// An error with code [`Code::DataLoss`] (15).
        data_loss => DataLoss,
        /// An error with code [`Code::Unauthenticated`] (16).
        unauthenticated => Unauthenticated,
    }

    /// The code's number, as on the wire; 0 when none was attached.
    pub fn code(&self) -> u64 {
        self.code
    }

    /// The code, for matching ([`Code::Ok`] when none was attached), as
    /// `std::io::Error::kind` is to its raw number.
    pub fn kind(&self) -> Code {
        Code(self.code)
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

    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];

    #[test]
    fn codes_round_trip_with_grpc_names() {
        for (n, name) in NAMES.iter().enumerate() {
            let code = Code::from_u64(n as u64);
            assert_eq!(code.as_u64(), n as u64);
            assert_eq!(u64::from(code), n as u64);
            assert_eq!(Code::from(n as u64), code);
            assert_eq!(code.name(), Some(*name));
            assert_eq!(code.to_string(), *name);
            assert_eq!(format!("{code:?}"), *name);
            assert!(code.is_known());
        }
        for n in [17, 42, u64::MAX] {
            let code = Code::from(n);
            assert_eq!(code.as_u64(), n);
            assert_eq!(code.name(), None);
            assert!(!code.is_known());
            assert_eq!(code.to_string(), format!("Code({n})"));
        }
        assert_eq!(Code::default(), Code::Ok);
    }

    #[test]
    fn named_codes_have_grpc_numbers() {
        let named = [
            Code::Ok,
            Code::Canceled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for (n, code) in named.into_iter().enumerate() {
            assert_eq!(code.as_u64(), n as u64);
        }
        assert_eq!(UNIMPLEMENTED, 12);
        assert_eq!(RESOURCE_EXHAUSTED, 8);
    }

    #[test]
    fn codes_match_as_patterns() {
        let describe = |code: Code| match code {
            Code::NotFound => "not found",
            Code::Unavailable | Code::DeadlineExceeded => "retry",
            other if other.as_u64() == 42 => "ours",
            _ => "other",
        };
        assert_eq!(describe(Code::from(5)), "not found");
        assert_eq!(describe(Code::from(14)), "retry");
        assert_eq!(describe(Code::from(42)), "ours");
        assert_eq!(describe(Code::Internal), "other");
    }

    #[test]
    fn constructors_set_their_code_and_keep_the_wire_text() {
        type Make = fn(&'static str) -> CodedError;
        let cases: [(Make, Code); 16] = [
            (|m| CodedError::canceled(m), Code::Canceled),
            (|m| CodedError::unknown(m), Code::Unknown),
            (|m| CodedError::invalid_argument(m), Code::InvalidArgument),
            (|m| CodedError::deadline_exceeded(m), Code::DeadlineExceeded),
            (|m| CodedError::not_found(m), Code::NotFound),
            (|m| CodedError::already_exists(m), Code::AlreadyExists),
            (|m| CodedError::permission_denied(m), Code::PermissionDenied),
            (
                |m| CodedError::resource_exhausted(m),
                Code::ResourceExhausted,
            ),
            (
                |m| CodedError::failed_precondition(m),
                Code::FailedPrecondition,
            ),
            (|m| CodedError::aborted(m), Code::Aborted),
            (|m| CodedError::out_of_range(m), Code::OutOfRange),
            (|m| CodedError::unimplemented(m), Code::Unimplemented),
            (|m| CodedError::internal(m), Code::Internal),
            (|m| CodedError::unavailable(m), Code::Unavailable),
            (|m| CodedError::data_loss(m), Code::DataLoss),
            (|m| CodedError::unauthenticated(m), Code::Unauthenticated),
        ];
        for (make, code) in cases {
            let err = make("why");
            assert_eq!(err.kind(), code);
            assert_eq!(err.code(), code.as_u64());
            assert_eq!(err.message(), "why");
            // Display is the wire text: the message alone.
            assert_eq!(err.to_string(), "why");
            let mut buf = Vec::new();
            err.append_to(&mut buf);
            assert_eq!(buf[..8], code.as_u64().to_be_bytes());
            assert_eq!(&buf[8..], b"why");
            assert_eq!(CodedError::decode(&buf), err);
        }
        let status: Status = Status::new(Code::NotFound, "x");
        assert_eq!(status, CodedError::not_found("x"));
        assert_eq!(
            CodedError::new(7u64, "x"),
            CodedError::permission_denied("x")
        );
        assert_eq!(CodedError::new(0, "x").kind(), Code::Ok);
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
