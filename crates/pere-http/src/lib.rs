//! `pere-http`: PERE on the wire, over raw hyper 1.x.
//!
//! - [`server`] serves a [`pere_core::Hub`] ([`server::run`]): PERE's
//!   endpoints (`/push`, `/feed`, `/feedback`, `/receipts`, `/admin/*`),
//!   CORS, the embedded web pages, metrics, graceful shutdown. Each
//!   connection lives in one module, `server::conn`.
//! - [`client`] publishes, subscribes (with reconnect and `Last-Event-ID`)
//!   and sends receipts; the `pere-pub` and `pere-sub` tools are built on it.
//!   Nothing of the server imports the client, and the reverse.
//! - [`sse`], shared by both: the encoder the server writes with and the
//!   WHATWG decoder the client reads with.
//! - [`tls`], shared by both: the server's certificate and the client's
//!   trust (rustls).
//!
//! Errors: [`Error`] for the server and client; [`ApiError`] for what a
//! request gets back, its code one of [`ErrorCode`], the one table of every
//! error answer (docs/PROTOCOL.md §8).

pub mod cli;
pub mod client;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;
pub mod sse;
pub mod tls;

pub use error::{ApiError, Error, ErrorCode, Result};
pub use server::{Cors, ServerConfig, bind, run};
