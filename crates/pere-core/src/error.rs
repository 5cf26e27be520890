//! The hub's [`Error`] and [`Result`].
//!
//! Variants carry what the user supplied, so a message reads as a sentence
//! about their input. `pere-http` maps each variant to a status and a stable
//! `code` string in one place.

use std::fmt;
use std::path::PathBuf;

/// What kind of name failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A channel name.
    Channel,
    /// A subscription pattern.
    Pattern,
    /// A device id.
    Device,
    /// A publisher's event type.
    EventType,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Channel => "channel name",
            NameKind::Pattern => "channel pattern",
            NameKind::Device => "device id",
            NameKind::EventType => "event type",
        })
    }
}

/// Everything the hub can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name is not valid (docs/PROTOCOL.md §1).
    #[error("{kind} `{name}` is invalid: {reason}")]
    InvalidName {
        /// Which kind of name.
        kind: NameKind,
        /// The rejected text, shortened and escaped.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An event id is not a decimal u64.
    #[error("event id `{0}` is not a decimal number")]
    InvalidEventId(String),
    /// A payload is empty.
    #[error("the event payload is empty")]
    EmptyPayload,
    /// A payload is larger than the configured limit.
    #[error("the event payload is {size} bytes, the limit is {limit}")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A payload is not UTF-8 text.
    #[error("the event payload is not UTF-8 text (invalid byte at offset {offset})")]
    PayloadNotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// An idempotency key is empty, too long or not printable ASCII.
    #[error("the idempotency key is invalid: {0}")]
    InvalidIdempotencyKey(String),
    /// A receipt status is too long.
    #[error("the receipt status is {size} bytes, the limit is {limit}")]
    StatusTooLong {
        /// Size of the rejected status.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No retained event has this id on this channel.
    #[error("no retained event {id} on `{channel}`")]
    UnknownEvent {
        /// The channel or pattern the receipt named.
        channel: String,
        /// The event id.
        id: String,
    },
    /// A device acknowledged an event that was never written to it and whose
    /// audience it is not in (a typo in the device id, another device's id).
    #[error(
        "device `{device}` cannot acknowledge event {id}: it was never sent it and is not in its audience (check the device id; a device that subscribes after the publish may acknowledge an event once it was replayed to it)"
    )]
    NotRecipient {
        /// The event id.
        id: String,
        /// The device.
        device: String,
    },
    /// A device membership that does not exist.
    #[error("device `{device}` is not a member of `{subscription}`")]
    UnknownMember {
        /// The subscription.
        subscription: String,
        /// The device.
        device: String,
    },
    /// A stream asked for more channels than allowed.
    #[error("a stream may subscribe to at most {limit} channels, {requested} were asked for")]
    TooManyChannels {
        /// How many were requested.
        requested: usize,
        /// The limit.
        limit: usize,
    },
    /// The hub holds [`HubConfig::max_channels`] channels: a publish may
    /// not open another one until retention frees some.
    ///
    /// [`HubConfig::max_channels`]: crate::HubConfig::max_channels
    #[error(
        "the server holds {limit} channels, its limit (--max-channels): publish on an existing channel, or wait until retention frees some"
    )]
    ChannelLimit {
        /// The limit.
        limit: usize,
    },
    /// A subscribe request named no channel.
    #[error("no channel to subscribe to")]
    NoChannel,
    /// The hub is shutting down and takes no new work.
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// The store failed; the hub refuses writes until it takes them again.
    #[error("the event store is unavailable: {0}")]
    StoreUnavailable(String),
    /// A store I/O error, with the file it concerns.
    #[error("store error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A token is malformed (the message never contains its value).
    #[error("the token is invalid: {0}")]
    InvalidToken(String),
    /// Auth is on and the caller presented no token, or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's token does not grant what it asked for.
    #[error("{0}")]
    Forbidden(String),
    /// No token has this value (named by fingerprint only).
    #[error("no token {0} exists")]
    UnknownToken(String),
    /// Tokens were managed while auth is off (other than creating the first
    /// admin token, which turns it on).
    #[error(
        "auth is off: start the server with --auth FILE, or create an admin token first (that turns auth on)"
    )]
    AuthDisabled,
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// `Result` with the hub's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
