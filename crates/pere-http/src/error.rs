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
    /// Timed out.
    #[error("timed out: {0}")]
    Timeout(String),
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

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error response: status, stable `code`, human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code (an API: never reuse a retired one).
    pub code: &'static str,
    /// A sentence saying what was wrong, including the offending value.
    pub message: String,
    /// For `405`: the methods allowed.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// `400` with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404 not_found` for a path nothing serves.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("nothing is served at `{}`", escape(path)),
        )
    }

    /// `405 method_not_allowed` with the `Allow` list.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
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
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry shortly",
        )
    }

    /// `401 unauthorized`: auth is on and the token is missing or unknown.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// `403 forbidden`: the token does not grant this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The JSON body `{"error","code"}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message, "code": self.code }).to_string()
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
        let (status, code) = match &err {
            E::InvalidName { kind, .. } => (
                StatusCode::BAD_REQUEST,
                match kind {
                    NameKind::Channel => "invalid_channel",
                    NameKind::Pattern => "invalid_channel",
                    NameKind::Device => "invalid_device",
                    NameKind::EventType => "invalid_event_type",
                },
            ),
            E::InvalidEventId(_) => (StatusCode::BAD_REQUEST, "invalid_event_id"),
            E::EmptyPayload => (StatusCode::BAD_REQUEST, "empty_body"),
            E::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            E::PayloadNotUtf8 { .. } => (StatusCode::BAD_REQUEST, "invalid_utf8"),
            E::InvalidIdempotencyKey(_) => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            E::StatusTooLong { .. } => (StatusCode::BAD_REQUEST, "status_too_long"),
            E::UnknownEvent { .. } => (StatusCode::NOT_FOUND, "unknown_event"),
            E::NotRecipient { .. } => (StatusCode::CONFLICT, "not_a_recipient"),
            E::UnknownMember { .. } => (StatusCode::NOT_FOUND, "unknown_member"),
            E::TooManyChannels { .. } => (StatusCode::BAD_REQUEST, "too_many_channels"),
            E::ChannelLimit { .. } => (StatusCode::INSUFFICIENT_STORAGE, "channel_limit"),
            E::NoChannel => (StatusCode::BAD_REQUEST, "missing_channel"),
            E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            E::StoreUnavailable(_) | E::Io { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            E::InvalidToken(_) => (StatusCode::BAD_REQUEST, "invalid_token"),
            E::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::UnknownToken(_) => (StatusCode::NOT_FOUND, "unknown_token"),
            E::AuthDisabled => (StatusCode::CONFLICT, "auth_disabled"),
            E::Config(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_map_to_statuses_and_codes() {
        let e: ApiError = pere_core::ChannelName::new("a b").unwrap_err().into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_channel")
        );
        let e: ApiError = pere_core::Error::PayloadTooLarge { size: 2, limit: 1 }.into();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let body: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(body["code"], "payload_too_large");
        assert!(body["error"].as_str().unwrap().contains("limit"));
    }
}
