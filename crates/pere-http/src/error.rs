//! [`Error`] for the server and client, and [`ApiError`]: the one place where
//! a failure becomes an HTTP status and the JSON body of docs/PROTOCOL.md §8.

use hyper::StatusCode;
use pere_core::NameKind;

/// What the server or the client can fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hub error.
    #[error(transparent)]
    Core(#[from] pere_core::Error),
    /// Binding, accepting or reading a socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with an error.
    #[error("{status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The server's `error` sentence (or the body).
        message: String,
        /// The server's `code`.
        code: Option<String>,
    },
    /// A response could not be understood.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// An address or URL could not be used.
    #[error("invalid address `{0}`")]
    Address(String),
    /// A webhook URL that cannot be used, and why.
    #[error("invalid URL `{url}`: {why}")]
    WebhookUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Timed out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A subscriber stopped reconnecting: its bound on failed attempts was
    /// reached (the sentence says which and why).
    #[error("{0}")]
    GaveUp(String),
    /// A certificate or key could not be used, or a TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The webhook is the server's own listening address: each overdue
    /// notice would come back to the server as a request.
    #[error(
        "the webhook {url} is this server's own address ({addr}): overdue notices would be posted back to the server itself; give the URL of the backend that should receive them"
    )]
    WebhookLoop {
        /// The webhook's URL.
        url: String,
        /// The listening address it reaches.
        addr: std::net::SocketAddr,
    },
    /// A publish whose answer was lost: the server may or may not have
    /// stored it. Publishing again with the same idempotency key is safe
    /// (it answers with the first result if there was one).
    #[error("{source}; the outcome is unknown: the event may have been published")]
    Unconfirmed {
        /// The last failure.
        #[source]
        source: Box<Error>,
        /// The `Idempotency-Key` every attempt carried.
        idempotency_key: String,
    },
}

/// Every error code of docs/PROTOCOL.md §8, with its status: the server's
/// handlers and connection layer answer with these, and the client reads
/// them back ([`Error::code`]). A code is an API: never reuse a retired one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A channel or pattern name is invalid.
    InvalidChannel,
    /// A device id is invalid.
    InvalidDevice,
    /// `event=` is invalid or reserved.
    InvalidEventType,
    /// An event id is not a decimal u64.
    InvalidEventId,
    /// `Idempotency-Key` is empty, too long or not printable ASCII.
    InvalidIdempotencyKey,
    /// A query parameter's value.
    InvalidParameter,
    /// A header that is not visible ASCII.
    InvalidHeader,
    /// A malformed percent-escape, or a path not starting with `/`.
    InvalidPath,
    /// A payload, receipt body, path or query that is not UTF-8.
    InvalidUtf8,
    /// A body that is not what the endpoint takes.
    InvalidBody,
    /// A token's length, characters or grants.
    InvalidToken,
    /// Not parseable as HTTP, or two different tokens in one request.
    InvalidRequest,
    /// A publish with an empty payload.
    EmptyBody,
    /// `GET /feed` with no channel.
    MissingChannel,
    /// A receipt without a device.
    MissingDevice,
    /// A receipt without an event id.
    MissingEventId,
    /// A receipt status over 1024 bytes.
    StatusTooLong,
    /// A stream asks for too many channels.
    TooManyChannels,
    /// A query parameter an API endpoint does not take.
    UnknownParameter,
    /// The token is missing, unknown, revoked or not `Bearer`.
    Unauthorized,
    /// The token does not grant this.
    Forbidden,
    /// Nothing is served at this path.
    NotFound,
    /// No retained event with this id on a matching channel.
    UnknownEvent,
    /// The device is not known on this subscription.
    UnknownMember,
    /// The token is not live.
    UnknownToken,
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The request head or body did not arrive in time.
    RequestTimeout,
    /// Token management while auth is off.
    AuthDisabled,
    /// A receipt from a device the event was not for.
    NotARecipient,
    /// A body over its limit.
    PayloadTooLarge,
    /// A receipt batch of more than 10,000 items.
    BatchTooLarge,
    /// A request target over 65,534 bytes.
    UriTooLong,
    /// The server holds `--max-streams` streams.
    TooManyStreams,
    /// The device holds `--max-streams-per-device` streams.
    TooManyDeviceStreams,
    /// The request head is over `--max-header-bytes`.
    HeadersTooLarge,
    /// A failure with no other code.
    Internal,
    /// The server is shutting down.
    ShuttingDown,
    /// The store failed; writes are refused until it recovers.
    StoreUnavailable,
    /// Out of file descriptors for another stream.
    OverCapacity,
    /// A publish would open more channels than `--max-channels`.
    ChannelLimit,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidChannel,
        Self::InvalidDevice,
        Self::InvalidEventType,
        Self::InvalidEventId,
        Self::InvalidIdempotencyKey,
        Self::InvalidParameter,
        Self::InvalidHeader,
        Self::InvalidPath,
        Self::InvalidUtf8,
        Self::InvalidBody,
        Self::InvalidToken,
        Self::InvalidRequest,
        Self::EmptyBody,
        Self::MissingChannel,
        Self::MissingDevice,
        Self::MissingEventId,
        Self::StatusTooLong,
        Self::TooManyChannels,
        Self::UnknownParameter,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::UnknownEvent,
        Self::UnknownMember,
        Self::UnknownToken,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::AuthDisabled,
        Self::NotARecipient,
        Self::PayloadTooLarge,
        Self::BatchTooLarge,
        Self::UriTooLong,
        Self::TooManyStreams,
        Self::TooManyDeviceStreams,
        Self::HeadersTooLarge,
        Self::Internal,
        Self::ShuttingDown,
        Self::StoreUnavailable,
        Self::OverCapacity,
        Self::ChannelLimit,
    ];

    /// The code as it is on the wire (`"code"` of the JSON body).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidDevice => "invalid_device",
            Self::InvalidEventType => "invalid_event_type",
            Self::InvalidEventId => "invalid_event_id",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::InvalidParameter => "invalid_parameter",
            Self::InvalidHeader => "invalid_header",
            Self::InvalidPath => "invalid_path",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidBody => "invalid_body",
            Self::InvalidToken => "invalid_token",
            Self::InvalidRequest => "invalid_request",
            Self::EmptyBody => "empty_body",
            Self::MissingChannel => "missing_channel",
            Self::MissingDevice => "missing_device",
            Self::MissingEventId => "missing_event_id",
            Self::StatusTooLong => "status_too_long",
            Self::TooManyChannels => "too_many_channels",
            Self::UnknownParameter => "unknown_parameter",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::UnknownEvent => "unknown_event",
            Self::UnknownMember => "unknown_member",
            Self::UnknownToken => "unknown_token",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::AuthDisabled => "auth_disabled",
            Self::NotARecipient => "not_a_recipient",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BatchTooLarge => "batch_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::TooManyStreams => "too_many_streams",
            Self::TooManyDeviceStreams => "too_many_device_streams",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Internal => "internal",
            Self::ShuttingDown => "shutting_down",
            Self::StoreUnavailable => "store_unavailable",
            Self::OverCapacity => "over_capacity",
            Self::ChannelLimit => "channel_limit",
        }
    }

    /// The HTTP status every answer with this code has.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::InvalidChannel
            | Self::InvalidDevice
            | Self::InvalidEventType
            | Self::InvalidEventId
            | Self::InvalidIdempotencyKey
            | Self::InvalidParameter
            | Self::InvalidHeader
            | Self::InvalidPath
            | Self::InvalidUtf8
            | Self::InvalidBody
            | Self::InvalidToken
            | Self::InvalidRequest
            | Self::EmptyBody
            | Self::MissingChannel
            | Self::MissingDevice
            | Self::MissingEventId
            | Self::StatusTooLong
            | Self::TooManyChannels
            | Self::UnknownParameter => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::UnknownEvent | Self::UnknownMember | Self::UnknownToken => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::AuthDisabled | Self::NotARecipient => StatusCode::CONFLICT,
            Self::PayloadTooLarge | Self::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::TooManyStreams | Self::TooManyDeviceStreams => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ShuttingDown | Self::StoreUnavailable | Self::OverCapacity => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::ChannelLimit => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// The code named `code` on the wire, if this version knows it.
    pub fn from_wire(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// Whether a request refused with this code may succeed unchanged
    /// later: the server was busy or failing, not the request wrong.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ShuttingDown
                | Self::StoreUnavailable
                | Self::OverCapacity
                | Self::TooManyStreams
                | Self::TooManyDeviceStreams
        )
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The server's error code, for an error answer from a PERE server of
    /// this version or an older one (`None` for a code it does not know,
    /// or an answer without one, e.g. from a proxy).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Status { code, .. } => code.as_deref().and_then(ErrorCode::from_wire),
            Error::Unconfirmed { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error response: a stable [`ErrorCode`] (which gives the status) and a
/// human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong, as the API names it.
    pub code: ErrorCode,
    /// A sentence saying what was wrong, including the offending value.
    pub message: String,
    /// For `405`: the methods allowed.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// The HTTP status of the answer (the code's).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// `404 not_found` for a path nothing serves.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("nothing is served at `{}`", escape(path)),
        )
    }

    /// `405 method_not_allowed` with the `Allow` list.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed on `{}` (allowed: {allow})",
                    escape(method),
                    escape(path)
                ),
            )
        }
    }

    /// `503 shutting_down`.
    pub fn shutting_down() -> Self {
        Self::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down; retry shortly",
        )
    }

    /// `401 unauthorized`: auth is on and the token is missing or unknown.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// `403 forbidden`: the token does not grant this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// The JSON body `{"error","code"}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message, "code": self.code.as_str() }).to_string()
    }
}

/// Shortens and escapes client-supplied text for an error message.
pub(crate) fn escape(text: &str) -> String {
    const SHOWN: usize = 80;
    let mut out: String = text
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > SHOWN {
        out.push('…');
    }
    out
}

impl From<pere_core::Error> for ApiError {
    fn from(err: pere_core::Error) -> Self {
        use pere_core::Error as E;
        let message = err.to_string();
        let code = match &err {
            E::InvalidName { kind, .. } => match kind {
                NameKind::Channel => ErrorCode::InvalidChannel,
                NameKind::Pattern => ErrorCode::InvalidChannel,
                NameKind::Device => ErrorCode::InvalidDevice,
                NameKind::EventType => ErrorCode::InvalidEventType,
            },
            E::InvalidEventId(_) => ErrorCode::InvalidEventId,
            E::EmptyPayload => ErrorCode::EmptyBody,
            E::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            E::PayloadNotUtf8 { .. } => ErrorCode::InvalidUtf8,
            E::InvalidIdempotencyKey(_) => ErrorCode::InvalidIdempotencyKey,
            E::StatusTooLong { .. } => ErrorCode::StatusTooLong,
            E::UnknownEvent { .. } => ErrorCode::UnknownEvent,
            E::NotRecipient { .. } => ErrorCode::NotARecipient,
            E::UnknownMember { .. } => ErrorCode::UnknownMember,
            E::TooManyChannels { .. } => ErrorCode::TooManyChannels,
            E::ChannelLimit { .. } => ErrorCode::ChannelLimit,
            E::NoChannel => ErrorCode::MissingChannel,
            E::ShuttingDown => ErrorCode::ShuttingDown,
            E::StoreUnavailable(_) | E::Io { .. } => ErrorCode::StoreUnavailable,
            E::InvalidToken(_) => ErrorCode::InvalidToken,
            E::Unauthorized(_) => ErrorCode::Unauthorized,
            E::Forbidden(_) => ErrorCode::Forbidden,
            E::UnknownToken(_) => ErrorCode::UnknownToken,
            E::AuthDisabled => ErrorCode::AuthDisabled,
            E::Config(_) => ErrorCode::Internal,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` counts errors in an array indexed by the discriminant:
    /// `ALL` must list every code, in declaration order.
    #[test]
    fn all_lists_every_code_at_its_discriminant() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(
                *code as usize, i,
                "{code} is out of place in ErrorCode::ALL"
            );
        }
        let last = *ErrorCode::ALL.last().unwrap();
        assert_eq!(last as usize + 1, ErrorCode::ALL.len());
    }

    #[test]
    fn core_errors_map_to_statuses_and_codes() {
        let e: ApiError = pere_core::ChannelName::new("a b").unwrap_err().into();
        assert_eq!(
            (e.status(), e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidChannel)
        );
        let e: ApiError = pere_core::Error::PayloadTooLarge { size: 2, limit: 1 }.into();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["code"], "payload_too_large");
        assert!(body["error"].as_str().unwrap().contains("limit"));
    }
}
