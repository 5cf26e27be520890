//! `pere-core`: the transport-agnostic heart of PERE, a push hub that knows,
//! per event and per device, whether each event was delivered and
//! acknowledged.
//!
//! - [`Hub`] is the handle an application embeds: [`Hub::publish`],
//!   [`Hub::subscribe`] (a [`Subscription`] yields replayed then live
//!   events), [`Hub::ack`], and the queries behind PERE's admin and receipts
//!   endpoints.
//! - Names are validated once, by their types: [`ChannelName`], [`Pattern`]
//!   (`orders.*`, `orders.**`), [`DeviceId`], [`EventType`].
//! - [`EventStore`] is where events and the journal live: [`MemoryStore`]
//!   keeps retained events in memory (with [`Retention`]).
//! - The receipt ledger ([`EventReceipts`]) tracks each event's audience
//!   through `pending` → `delivered` → `acked`; [`Presence`] tracks who is
//!   online, per subscription.
//! - [`auth`]: bearer [`Token`]s and their [`Grants`] in the hub's
//!   [`AuthRegistry`]; run-time changes are journaled and apply to open
//!   streams at once.
//!
//! Nothing here speaks HTTP: `pere-http` puts this hub on the wire.
//!
//! # Embedding the hub
//!
//! ```
//! use pere_core::{ChannelName, DeviceId, Hub, HubConfig, MemoryStore, Pattern, Publish};
//! use pere_core::{Resume, SubscribeRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pere_core::Result<()> {
//! let hub = Hub::open(HubConfig::default(), MemoryStore::default()).await?;
//!
//! // A device subscribes to every channel under `orders.`.
//! let device = DeviceId::new("terminal-7")?;
//! let mut stream = hub
//!     .subscribe(
//!         SubscribeRequest {
//!             device: Some(device.clone()),
//!             patterns: vec![Pattern::new("orders.**")?],
//!             resume: Resume::Auto,
//!         },
//!         None,
//!     )
//!     .await?;
//!
//! // A service publishes; the device is in the event's audience.
//! let channel = ChannelName::new("orders.eu")?;
//! let published = hub.publish(Publish::new(channel.clone(), r#"{"order":42}"#)).await?;
//! assert_eq!(published.recipients, 1);
//!
//! // The device receives it (which marks it delivered) and acknowledges it.
//! let event = stream.next().await.expect("the event");
//! assert_eq!(event.payload_str(), r#"{"order":42}"#);
//! hub.ack(&Pattern::from(channel.clone()), &device, event.id, "printed").await?;
//!
//! // The publisher can prove it: one recipient, delivered and acked.
//! let summary = hub.receipt_summary(&Pattern::from(channel), published.id)?;
//! assert_eq!((summary.recipients, summary.delivered, summary.acked), (1, 1, 1));
//!
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod config;
pub mod duration;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzzing;
mod hub;
pub mod jwt;
pub mod ledger;
pub mod log;
pub mod metrics;
mod name;
pub mod presence;
mod queue;
pub mod receipt_log;
pub mod text;

pub use auth::{AuthRegistry, Grants, Token, TokenHash};
pub use config::{
    DEFAULT_HISTORY, DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_AGE, DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_CHANNELS_PER_STREAM, DEFAULT_MAX_PAYLOAD, DEFAULT_MEMBER_TTL, DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_CAPACITY, HubConfig, MAX_STATUS_LEN, Retention,
};
pub use error::{Error, NameKind, Result};
pub use event::{Event, EventId, FRAME_FORMS, FrameCache, Sequencer, Timestamp, validate_payload};
pub use hub::cluster;
pub use hub::{
    Acked, ChannelInfo, Connections, Gap, Hello, Hub, MAX_IDEMPOTENCY_KEY_LEN, Outgoing,
    PatternInfo, Publish, Published, Resume, Stats, StoreHealth, StoreOutage, SubscribeRequest,
    Subscription,
};
pub use ledger::{
    DeviceReceipt, EventReceipts, Mark, OverdueNotice, ReceiptChange, ReceiptState, ReceiptSummary,
    ReceiptUpdate,
};
pub use log::{
    DEFAULT_SEGMENT_SIZE, Damage, EventStore, Evicted, FileStore, FileStoreConfig, Fsync,
    MemoryStore, Record, Recovered,
};
pub use name::{
    ChannelName, DeviceId, EventType, MAX_CHANNEL_LEN, MAX_DEVICE_LEN, Pattern,
    RESERVED_EVENT_PREFIX,
};
pub use presence::{Op, Presence};
pub use receipt_log::{Followed, ReceiptFollower, ReceiptLog};

/// The README's Rust examples, compiled and run by `cargo test` so the
/// README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
