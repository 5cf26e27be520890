//! `pere-http`: PERE on the wire, over raw hyper 1.x.
//!
//! - [`server::run`] serves a [`pere_core::Hub`]: PERE's endpoints
//!   (`/push`, `/feed`, `/feedback`, `/receipts`, `/admin/*`), CORS, the
//!   embedded web pages, metrics, graceful shutdown.
//! - [`sse`] writes and reads Server-Sent Events by hand: the encoder the
//!   server uses and the WHATWG decoder the client uses.
//! - [`client`] publishes, subscribes (with reconnect and `Last-Event-ID`)
//!   and sends receipts; the `pere-pub` and `pere-sub` tools are built on it.
//!
//! Errors: [`Error`] for the server and client, [`ApiError`] for what a
//! request gets back (docs/PROTOCOL.md §8).

pub mod activity;
pub mod body;
pub mod client;
mod direct;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
pub mod limits;
pub mod metrics;
pub mod router;
pub mod server;
pub mod sse;
mod stall;
pub mod tls;
pub mod webhook;

pub use error::{ApiError, Error, Result};
pub use server::{Cors, ServerConfig, bind, run};
