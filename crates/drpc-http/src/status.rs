//! Errors as HTTP answers: Twirp's error body and status table, which Go's
//! `drpchttp` also follows.

use bytes::Bytes;
use drpc_wire::Code;
use http::StatusCode;

/// The code of an error body: the snake-case name of a gRPC code
/// (`not_found`), Go's `drpcerr(N)` for another number, `unknown` for
/// an error without a code.
pub fn code_name(code: Option<Code>) -> String {
    let name = match code {
        None | Some(Code::Ok) | Some(Code::Unknown) => "unknown",
        Some(Code::Canceled) => "canceled",
        Some(Code::InvalidArgument) => "invalid_argument",
        Some(Code::DeadlineExceeded) => "deadline_exceeded",
        Some(Code::NotFound) => "not_found",
        Some(Code::AlreadyExists) => "already_exists",
        Some(Code::PermissionDenied) => "permission_denied",
        Some(Code::ResourceExhausted) => "resource_exhausted",
        Some(Code::FailedPrecondition) => "failed_precondition",
        Some(Code::Aborted) => "aborted",
        Some(Code::OutOfRange) => "out_of_range",
        Some(Code::Unimplemented) => "unimplemented",
        Some(Code::Internal) => "internal",
        Some(Code::Unavailable) => "unavailable",
        Some(Code::DataLoss) => "data_loss",
        Some(Code::Unauthenticated) => "unauthenticated",
        Some(other) => return format!("drpcerr({})", other.as_u64()),
    };
    name.to_owned()
}

/// The HTTP status of an error with `code`: Twirp's table (and Go
/// `drpchttp`'s); 500 for codes outside it.
pub fn http_status(code: Option<Code>) -> StatusCode {
    match code {
        Some(Code::Canceled) => StatusCode::REQUEST_TIMEOUT,
        Some(Code::InvalidArgument) => StatusCode::BAD_REQUEST,
        Some(Code::DeadlineExceeded) => StatusCode::REQUEST_TIMEOUT,
        Some(Code::NotFound) => StatusCode::NOT_FOUND,
        Some(Code::AlreadyExists) => StatusCode::CONFLICT,
        Some(Code::PermissionDenied) => StatusCode::FORBIDDEN,
        Some(Code::ResourceExhausted) => StatusCode::TOO_MANY_REQUESTS,
        Some(Code::FailedPrecondition) => StatusCode::PRECONDITION_FAILED,
        Some(Code::Aborted) => StatusCode::CONFLICT,
        Some(Code::OutOfRange) => StatusCode::BAD_REQUEST,
        Some(Code::Unimplemented) => StatusCode::NOT_IMPLEMENTED,
        Some(Code::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
        Some(Code::Unauthenticated) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error the bridge answers with: its code, the HTTP status, and the
/// message of its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: Option<Code>,
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    /// A failure with the status of `code` from the table.
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code: Some(code),
            status: http_status(Some(code)),
            message: message.into(),
        }
    }

    /// A failure with `status` in place of the table's.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Failure {
        self.status = status;
        self
    }

    /// A failed call: the server's code and message when the server
    /// answered with an error, the client's code and description of a
    /// failure noticed before (the connection, the deadline).
    pub(crate) fn from_call(err: &drpc_conn::Error) -> Failure {
        let code = err.code();
        let message = match err.remote_message() {
            Some(message) => message.to_owned(),
            None => err.to_string(),
        };
        Failure {
            code,
            status: http_status(code),
            message,
        }
    }

    /// `{"code":"…","msg":"…"}`.
    pub(crate) fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "code": code_name(self.code),
            "msg": self.message,
        });
        Bytes::from(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_a_name_and_a_status() {
        let table = [
            (Code::Canceled, "canceled", 408),
            (Code::Unknown, "unknown", 500),
            (Code::InvalidArgument, "invalid_argument", 400),
            (Code::DeadlineExceeded, "deadline_exceeded", 408),
            (Code::NotFound, "not_found", 404),
            (Code::AlreadyExists, "already_exists", 409),
            (Code::PermissionDenied, "permission_denied", 403),
            (Code::ResourceExhausted, "resource_exhausted", 429),
            (Code::FailedPrecondition, "failed_precondition", 412),
            (Code::Aborted, "aborted", 409),
            (Code::OutOfRange, "out_of_range", 400),
            (Code::Unimplemented, "unimplemented", 501),
            (Code::Internal, "internal", 500),
            (Code::Unavailable, "unavailable", 503),
            (Code::DataLoss, "data_loss", 500),
            (Code::Unauthenticated, "unauthenticated", 401),
        ];
        for (code, name, status) in table {
            assert_eq!(code_name(Some(code)), name);
            assert_eq!(http_status(Some(code)).as_u16(), status, "{name}");
        }
        assert_eq!(code_name(None), "unknown");
        assert_eq!(http_status(None), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code_name(Some(Code::from(42))), "drpcerr(42)");
        assert_eq!(
            http_status(Some(Code::from(42))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn bodies_are_json_with_code_and_msg() {
        let failure = Failure::new(Code::NotFound, "no \"such\" key");
        let body: serde_json::Value = serde_json::from_slice(&failure.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "not_found", "msg": "no \"such\" key"})
        );
    }
}
