//! Server-Sent Events, written and read by hand.
//!
//! - [`encode`] turns events, `retry` and comments into `text/event-stream`
//!   bytes, LF-terminated and with the quirks PERE's Ruby client needs
//!   (docs/PROTOCOL.md §3). It is the server's hot path: [`event_frame`] builds an
//!   event's frame once, at its exact size, for every stream to share.
//! - [`decode`] is the client side: a streaming [`Decoder`] implementing the
//!   WHATWG "interpret an event stream" algorithm, fed bytes cut anywhere and
//!   producing [`Item`]s, with bounded memory.
//!
//! The two agree on one thing above all: `decode(encode(event))` gives back
//! the event, its payload changed only by CRLF and CR becoming LF, which SSE
//! cannot carry.
//!
//! ```
//! use pere_http::sse::{Decoder, Item, SseEvent, event_frame};
//!
//! let frame = event_frame(Some("1"), None, "line 1\r\nline 2\n")?;
//! assert_eq!(&frame[..], b"id: 1\ndata: line 1\ndata: line 2\ndata: \n\n");
//!
//! let mut items = Vec::new();
//! Decoder::new().feed(&frame, &mut items);
//! assert_eq!(
//!     items,
//!     [Item::Event(SseEvent {
//!         id: "1".into(),
//!         event: "message".into(),
//!         data: "line 1\nline 2\n".into(),
//!     })]
//! );
//! # Ok::<(), pere_http::sse::EncodeError>(())
//! ```

pub mod decode;
pub mod encode;

pub use decode::{DEFAULT_MAX_LINE, DecodeError, Decoder, Item, SseEvent};
pub use encode::{EncodeError, KEEPALIVE, encode_comment, encode_event, encode_retry, event_frame};

/// The reconnection time PERE's server sends in each stream's `retry` and
/// its client assumes until a server says otherwise (docs/PROTOCOL.md §3):
/// 3000 ms, the WHATWG suggestion. Both sides read it from here.
pub const DEFAULT_RETRY: std::time::Duration = std::time::Duration::from_millis(3000);
