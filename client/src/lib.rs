//! An async client for GMQ (PROTOCOL.md): one TCP connection, any number of
//! requests in flight on it (pipelining), subscriptions as streams of
//! deliveries, and errors that carry the server's stable code.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let config = gmq_server::Config { listen: "127.0.0.1:0".into(), data_dir: dir.path().into(), ..Default::default() };
//! # let server = gmq_server::start(config).await?;
//! # let addr = server.local_addr()?.to_string();
//! # tokio::spawn(server.serve(std::future::pending()));
//! use gmq_client::{Client, ConsumeOptions, Message};
//!
//! let client = Client::connect(&addr).await?;
//! let offset = client.publish("jobs", Message::new("hello")).await?.offset;
//! let got = client.consume("jobs", &ConsumeOptions::manual(10)).await?;
//! assert_eq!((got[0].offset, &got[0].payload[..]), (offset, &b"hello"[..]));
//! client.ack("jobs", "default", &[got[0].offset]).await?;
//!
//! // A subscription pushes deliveries as they come.
//! let mut sub = client.subscribe("jobs", &ConsumeOptions::manual(64).group("workers")).await?;
//! client.publish("jobs", Message::new("world")).await?;
//! let d = sub.next().await.expect("a delivery")?;
//! sub.ack(&[d.offset]).await?;
//! # Ok(())
//! # }
//! ```
//!
//! A [`Client`] is cheap to clone; clones share the connection, and their
//! requests are pipelined on it. Replies come back in request order, so
//! requests issued from one task are stored in the order issued.

mod client;
mod types;

pub use client::{Client, Options, Subscription};
pub use gmq_protocol::{ErrorCode, Start};
pub use types::{start_json, ConsumeOptions, Delivery, Error, Message, Published, QueueInfo, Routed};
