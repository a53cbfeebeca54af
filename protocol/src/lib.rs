//! GMQ's wire protocol (PROTOCOL.md, version 1): newline-delimited JSON over
//! TCP.
//!
//! - [`frame`]: splitting a byte stream into request lines, with the
//!   `max_frame_bytes` cap enforced as bytes arrive.
//! - [`request`]: parsing a line into a validated [`Request`] (or a GMQ
//!   [`LegacyRequest`]), with the error code each mistake gets.
//! - [`reply`]: encoding replies, push frames and GMQ-shaped replies.
//! - [`error`]: the stable error codes.
//!
//! ```
//! use gmq_protocol::{parse, Parsed, Reply, Request};
//!
//! let Parsed::Request { id, request } = parse(br#"{"id":7,"op":"ping"}"#) else { panic!() };
//! assert_eq!(request, Request::Ping);
//! let line = Reply::ok(id.as_ref()).field("version", "1").finish();
//! assert_eq!(&line[..], b"{\"id\":7,\"ok\":true,\"version\":\"1\"}\n");
//! ```
//!
//! This crate knows nothing of the engine or of sockets: the server maps
//! requests onto the engine, and clients use the same types.

pub mod b64;
pub mod error;
pub mod frame;
pub mod reply;
pub mod request;

pub use error::{ErrorCode, WireError};
pub use frame::{FrameTooLarge, LineFramer};
pub use reply::{legacy_reply, push_frame, Delivered, Reply};
pub use request::{
    decode_base64, parse, valid_name, AckMode, Consume, Fsync, Id, LegacyRequest, Overflow, Parsed, Request, Retention,
    Settings, Start, WireMessage, DEFAULT_GROUP, DEFAULT_PREFETCH,
};

/// The protocol version `ping` reports.
pub const PROTOCOL_VERSION: u32 = 1;
