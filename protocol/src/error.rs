//! Stable error codes.
//!
//! Clients match on the code string, so a code is never renamed or reused
//! for another meaning. New codes may be added; a client that does not know
//! one treats it as a failure of the request (the human `message` says
//! more). Removing a code is a new protocol version.

use std::fmt;

/// An error code of PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The line is not valid JSON. The connection stays open.
    BadJson,
    /// A missing or ill-typed field; the message names the field.
    BadRequest,
    /// `op` names no operation.
    UnknownOp,
    /// A queue, group or topic name outside the allowed alphabet or length.
    InvalidName,
    /// A payload larger than the server accepts.
    PayloadTooLarge,
    /// A line longer than `max_frame_bytes`; the connection is closed.
    FrameTooLarge,
    /// No such queue or subscription.
    NotFound,
    /// `create` of an existing queue with other settings.
    Conflict,
    /// A publish past `max_length`/`max_bytes` with `overflow = reject`.
    QueueFull,
    /// Authentication is required, or failed.
    Unauthorized,
    /// The authenticated user may not do this.
    Forbidden,
    /// An I/O error: the message was **not** stored.
    Storage,
    /// The server is shutting down.
    ShuttingDown,
    /// The server holds as many connections as it accepts.
    TooManyConnections,
    /// A request line did not complete in time; the connection is closed.
    Timeout,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidName,
        ErrorCode::PayloadTooLarge,
        ErrorCode::FrameTooLarge,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::QueueFull,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Storage,
        ErrorCode::ShuttingDown,
        ErrorCode::TooManyConnections,
        ErrorCode::Timeout,
    ];

    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Storage => "storage",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The code for a wire string, if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request: a code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, naming the field or queue.
    pub message: String,
}

impl WireError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        WireError::new(ErrorCode::BadRequest, message)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
