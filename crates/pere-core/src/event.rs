//! Events: [`EventId`], [`Timestamp`], [`Event`] and the id [`Sequencer`].

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::error::Error;
use crate::name::{ChannelName, DeviceId, EventType, printable};

/// A hub-wide event id: strictly increasing across channels and restarts.
///
/// Rendered on the wire as a decimal string (the SSE `id:` field and JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u64);

impl EventId {
    /// The id before every event ("from the beginning").
    pub const ZERO: EventId = EventId(0);

    /// Parses a decimal id: ASCII digits only, no sign, no spaces, fits a u64.
    ///
    /// # Errors
    /// [`Error::InvalidEventId`] with the (escaped, shortened) input.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidEventId(printable(text)));
        }
        text.parse::<u64>()
            .map(EventId)
            .map_err(|_| Error::InvalidEventId(printable(text)))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Wall-clock time in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Timestamp(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// RFC 3339 in UTC with millisecond precision, as PERE wrote times
    /// (`2014-12-01T09:35:33.876Z`).
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => {
                let format = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                t.format(&format).unwrap_or_else(|_| self.0.to_string())
            }
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// One published event. Immutable once built; shared by every device's queue
/// as `Arc<Event>`.
#[derive(Clone)]
pub struct Event {
    /// Hub-wide id.
    pub id: EventId,
    /// The channel it was published on.
    pub channel: ChannelName,
    /// The SSE event type; `None` is the default `message`.
    pub kind: Option<EventType>,
    /// The publishing device, when it said who it is.
    pub device: Option<DeviceId>,
    /// When it was published.
    pub time: Timestamp,
    /// The payload: UTF-8 text, checked when the event is built.
    pub payload: Bytes,
    /// The publisher's idempotency key, kept so a retry finds the first result.
    pub idempotency_key: Option<Box<str>>,
}

/// How many encodings of one event a transport may cache per fan-out
/// (pere-http: plain SSE, and the JSON envelope of `?envelope=json`).
pub const FRAME_FORMS: usize = 2;

/// The wire encodings of one event, built once by the transport for all the
/// streams of one fan-out and shared by their deliveries (pere-core never
/// looks inside). It lives as long as a queued delivery holds it, not for
/// the event's retention: a retained event keeps only its payload.
#[derive(Debug, Default)]
pub struct FrameCache {
    forms: [OnceLock<Bytes>; FRAME_FORMS],
}

impl FrameCache {
    /// Encoding number `form`, built by `encode` the first time it is asked
    /// for (`form` past [`FRAME_FORMS`] is encoded every time).
    pub fn get_or_init(&self, form: usize, encode: impl FnOnce() -> Bytes) -> Bytes {
        match self.forms.get(form) {
            Some(slot) => slot.get_or_init(encode).clone(),
            None => encode(),
        }
    }
}

impl Event {
    /// The payload as text.
    pub fn payload_str(&self) -> &str {
        // The constructor paths (`Hub::publish`, recovery) only accept UTF-8.
        std::str::from_utf8(&self.payload).unwrap_or_default()
    }

    /// The event type as written on the wire (`message` when unset).
    pub fn kind_str(&self) -> &str {
        self.kind.as_ref().map_or("message", EventType::as_str)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .field("time", &self.time)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Checks that a payload is non-empty, within `limit` and UTF-8.
///
/// # Errors
/// [`Error::EmptyPayload`], [`Error::PayloadTooLarge`] or
/// [`Error::PayloadNotUtf8`].
pub fn validate_payload(payload: &[u8], limit: usize) -> Result<(), Error> {
    if payload.is_empty() {
        return Err(Error::EmptyPayload);
    }
    if payload.len() > limit {
        return Err(Error::PayloadTooLarge {
            size: payload.len(),
            limit,
        });
    }
    std::str::from_utf8(payload).map_err(|e| Error::PayloadNotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(())
}

/// Hands out strictly increasing ids: `max(last + 1, now in µs)`.
///
/// Using the clock as a floor keeps ids increasing across restarts even of an
/// in-memory hub that remembers nothing, so a client's `Last-Event-ID` from
/// before a restart still means "after this point". A clock that steps back
/// only slows ids down to `last + 1`; it never repeats one.
#[derive(Debug)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// A sequencer whose next id is above `last` (the highest id ever stored).
    pub fn after(last: EventId) -> Self {
        Self { last: last.0 }
    }

    /// The last id handed out (or the floor it started from).
    pub fn last(&self) -> EventId {
        EventId(self.last)
    }

    /// The next id, for an event published at `now`.
    pub fn next(&mut self, now: Timestamp) -> EventId {
        let clock = u64::try_from(now.0).unwrap_or(0);
        self.last = self.last.saturating_add(1).max(clock);
        EventId(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_strict_decimal_only() {
        assert_eq!(EventId::parse("42").unwrap(), EventId(42));
        assert_eq!(
            EventId::parse("18446744073709551615").unwrap(),
            EventId(u64::MAX)
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "18446744073709551616",
            "1.0",
            "abc",
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sequencer_is_strictly_increasing_even_if_the_clock_goes_back() {
        let mut seq = Sequencer::after(EventId(100));
        let a = seq.next(Timestamp(50));
        let b = seq.next(Timestamp(50));
        let c = seq.next(Timestamp(1_000));
        let d = seq.next(Timestamp(10));
        assert_eq!([a.0, b.0, c.0, d.0], [101, 102, 1_000, 1_001]);
    }

    #[test]
    fn sequencer_starts_above_a_previous_run() {
        let mut first = Sequencer::after(EventId::ZERO);
        let now = Timestamp::now();
        let last = first.next(now);
        // A restart with nothing remembered still starts at the clock, which
        // has moved on (explicit times: reading the clock twice here raced).
        let mut second = Sequencer::after(EventId::ZERO);
        assert!(second.next(Timestamp(now.0 + 1)) > last);
        assert_eq!(last.0, u64::try_from(now.0).unwrap());
    }

    #[test]
    fn timestamps_render_like_pere() {
        assert_eq!(
            Timestamp(1_417_426_533_876_000).to_rfc3339(),
            "2014-12-01T09:35:33.876Z"
        );
    }

    #[test]
    fn payload_validation() {
        assert!(validate_payload(b"", 10).is_err());
        assert!(validate_payload(b"hello", 4).is_err());
        assert!(matches!(
            validate_payload(b"ok\xff", 10),
            Err(Error::PayloadNotUtf8 { offset: 2 })
        ));
        assert!(validate_payload("héllo".as_bytes(), 10).is_ok());
    }
}
