//! The on-disk record format of the file store.
//!
//! A record is framed as
//!
//! ```text
//! len: u32 LE | crc32c: u32 LE | lsn: u64 LE | kind: u8 | body
//! ```
//!
//! where `len` counts the bytes after the checksum (`lsn`, `kind`, `body`)
//! and the CRC-32C covers exactly those bytes. The `lsn` (log sequence
//! number) identifies a record for its whole life, even when compaction
//! copies it to another segment. Bodies are little-endian fixed-width
//! integers and length-prefixed strings; every name is re-validated on
//! decode, so a record that decodes is one the hub could have written.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Grants, TokenHash};
use crate::event::{Event, EventId, Timestamp};
use crate::log::Record;
use crate::name::{ChannelName, DeviceId, EventType, Pattern};

/// Bytes before a record's checksummed part: `len` and `crc`.
pub const FRAME_HEADER: usize = 8;
/// Largest record accepted, in bytes after the frame header. A length field
/// above it is damage, not a record.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

const KIND_EVENT: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_JOINED: u8 = 3;
const KIND_CURSOR: u8 = 4;
const KIND_PRESENCE: u8 = 5;
const KIND_LEFT: u8 = 6;
const KIND_TRIM: u8 = 7;
const KIND_NOTICE: u8 = 8;
/// Added after the first release: logs written before it simply have none.
const KIND_TOKEN: u8 = 9;
/// Added later still, the same way.
const KIND_ACKING: u8 = 10;
/// And after that one.
const KIND_REPLAYED: u8 = 11;
/// And that one.
const KIND_ACKED_UPTO: u8 = 12;

// The flag bits each kind defines. Any other bit set, like a field its flag
// says is absent yet holding a value, is rejected, not ignored: such bytes
// passed the checksum, so they come from a bug or from a writer of another
// version, whose meaning this one cannot know. Reading them as the nearest
// record would misread them; recovery sets a malformed record aside instead.
// So a record that decodes re-encodes to exactly the bytes on disk.
/// Event flags: has a type (1), a device (2), an idempotency key (4).
const EVENT_FLAGS: u8 = 0b111;
/// Presence flags: online (1), has a last event id (2).
const PRESENCE_FLAGS: u8 = 0b11;

/// A record as stored: the hub's records plus the store's own bookkeeping.
#[derive(Clone, Debug)]
pub enum Stored {
    /// A record of the hub's journal.
    Hub(Record),
    /// Events of `channel` up to `upto` were dropped for retention.
    Trim {
        /// The channel.
        channel: ChannelName,
        /// The highest id dropped.
        upto: EventId,
    },
}

/// Why bytes did not decode to a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame announces: a torn write.
    Truncated,
    /// A length field outside `1..=MAX_RECORD`.
    BadLength(u32),
    /// The checksum does not match.
    Checksum,
    /// The bytes check out but do not form a valid record.
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("the record is cut short (torn write)"),
            DecodeError::BadLength(n) => write!(f, "the record length {n} is impossible"),
            DecodeError::Checksum => f.write_str("the record's checksum does not match"),
            DecodeError::Malformed(why) => write!(f, "the record is malformed: {why}"),
        }
    }
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Names are at most 200 bytes (checked by their types).
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn put_str32(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

/// Appends the framed encoding of `record` with `lsn` to `out`.
pub fn encode(out: &mut Vec<u8>, lsn: u64, record: &Stored) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    match record {
        Stored::Hub(Record::Event(e)) => {
            out.push(KIND_EVENT);
            out.extend_from_slice(&e.id.0.to_le_bytes());
            out.extend_from_slice(&e.time.0.to_le_bytes());
            let flags = u8::from(e.kind.is_some())
                | u8::from(e.device.is_some()) << 1
                | u8::from(e.idempotency_key.is_some()) << 2;
            out.push(flags);
            put_str8(out, e.channel.as_str());
            if let Some(kind) = &e.kind {
                put_str8(out, kind.as_str());
            }
            if let Some(device) = &e.device {
                put_str8(out, device.as_str());
            }
            if let Some(key) = &e.idempotency_key {
                put_str32(out, key.as_bytes());
            }
            put_str32(out, &e.payload);
        }
        Stored::Hub(Record::Ack {
            id,
            device,
            status,
            at,
        }) => {
            out.push(KIND_ACK);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, device.as_str());
            put_str32(out, status.as_bytes());
        }
        Stored::Hub(Record::Joined {
            subscription,
            device,
            head,
            at,
        }) => {
            out.push(KIND_JOINED);
            out.extend_from_slice(&head.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::Cursor {
            subscription,
            device,
            cursor,
            at,
        }) => {
            out.push(KIND_CURSOR);
            out.extend_from_slice(&cursor.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::Acking {
            subscription,
            device,
            id,
            at,
        }) => {
            out.push(KIND_ACKING);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::AckedUpto {
            subscription,
            device,
            upto,
            channels,
            at,
        }) => {
            out.push(KIND_ACKED_UPTO);
            out.extend_from_slice(&upto.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
            // A member's channels with unacknowledged events: the hub lists
            // at most 1024 (its walk), and a longer list is cut rather than
            // corrupt the frame.
            let n = channels.len().min(u32::MAX as usize);
            out.extend_from_slice(&(n as u32).to_le_bytes());
            for (channel, upto) in &channels[..n] {
                put_str8(out, channel.as_str());
                out.extend_from_slice(&upto.0.to_le_bytes());
            }
        }
        Stored::Hub(Record::Replayed { device, ids, at }) => {
            out.push(KIND_REPLAYED);
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, device.as_str());
            // A replay is of retained events: far fewer than u32::MAX.
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.0.to_le_bytes());
            }
        }
        Stored::Hub(Record::Presence {
            subscription,
            device,
            online,
            last_event_id,
            at,
        }) => {
            out.push(KIND_PRESENCE);
            out.extend_from_slice(&at.0.to_le_bytes());
            out.push(u8::from(*online) | u8::from(last_event_id.is_some()) << 1);
            out.extend_from_slice(&last_event_id.unwrap_or_default().0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::Left {
            subscription,
            device,
            at,
        }) => {
            out.push(KIND_LEFT);
            out.extend_from_slice(&at.0.to_le_bytes());
            put_str8(out, subscription.as_str());
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::Notice {
            id,
            device,
            sent,
            at,
        }) => {
            out.push(KIND_NOTICE);
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(&at.0.to_le_bytes());
            out.push(u8::from(*sent));
            put_str8(out, device.as_str());
        }
        Stored::Hub(Record::Token { token, grants, at }) => {
            out.push(KIND_TOKEN);
            out.extend_from_slice(&token.0);
            out.extend_from_slice(&at.0.to_le_bytes());
            match grants {
                None => out.push(0),
                Some(g) => {
                    out.push(1 | u8::from(g.admin) << 1);
                    put_str8(out, g.subject.as_str());
                    for list in [&g.subscribe, &g.publish] {
                        // Grants come from JSON bodies of bounded size; a
                        // list longer than u16 is cut rather than corrupt
                        // the frame (the admin API refuses such lists).
                        let n = list.len().min(u16::MAX as usize);
                        out.extend_from_slice(&(n as u16).to_le_bytes());
                        for p in &list[..n] {
                            put_str8(out, p.as_str());
                        }
                    }
                }
            }
        }
        Stored::Trim { channel, upto } => {
            out.push(KIND_TRIM);
            out.extend_from_slice(&upto.0.to_le_bytes());
            put_str8(out, channel.as_str());
        }
    }
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over a record body.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Malformed("a field runs past the record"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    fn str8(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| DecodeError::Malformed("a name is not UTF-8"))
    }

    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str32(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes32()?)
            .map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }

    fn channel(&mut self) -> Result<ChannelName, DecodeError> {
        ChannelName::new(self.str8()?).map_err(|_| DecodeError::Malformed("invalid channel name"))
    }

    fn pattern(&mut self) -> Result<Pattern, DecodeError> {
        Pattern::new(self.str8()?).map_err(|_| DecodeError::Malformed("invalid subscription"))
    }

    fn device(&mut self) -> Result<DeviceId, DecodeError> {
        DeviceId::new(self.str8()?).map_err(|_| DecodeError::Malformed("invalid device id"))
    }
}

/// Reads the frame at the start of `bytes`: returns the record's total size
/// (frame header included) and its checksummed part, or why it is not a
/// whole, intact record.
pub fn frame(bytes: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    if bytes.len() < FRAME_HEADER {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if len < 9 || len as usize > MAX_RECORD {
        return Err(DecodeError::BadLength(len));
    }
    let total = FRAME_HEADER + len as usize;
    if bytes.len() < total {
        return Err(DecodeError::Truncated);
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[FRAME_HEADER..total];
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok((total, body))
}

/// Decodes a checksummed part (as returned by [`frame`]) into its lsn and
/// record.
pub fn decode(body: &[u8]) -> Result<(u64, Stored), DecodeError> {
    let mut r = Reader { bytes: body };
    let lsn = r.u64()?;
    let kind = r.u8()?;
    let record = match kind {
        KIND_EVENT => {
            let id = EventId(r.u64()?);
            let time = Timestamp(r.i64()?);
            let flags = r.u8()?;
            if flags & !EVENT_FLAGS != 0 {
                return Err(DecodeError::Malformed("unknown event flags"));
            }
            let channel = r.channel()?;
            let kind = if flags & 1 != 0 {
                Some(
                    EventType::new(r.str8()?)
                        .map_err(|_| DecodeError::Malformed("invalid event type"))?,
                )
            } else {
                None
            };
            let device = if flags & 2 != 0 {
                Some(r.device()?)
            } else {
                None
            };
            let idempotency_key = if flags & 4 != 0 {
                Some(r.str32()?.into())
            } else {
                None
            };
            let payload = r.bytes32()?;
            if std::str::from_utf8(payload).is_err() {
                return Err(DecodeError::Malformed("the payload is not UTF-8"));
            }
            Stored::Hub(Record::Event(Arc::new(Event {
                id,
                channel,
                kind,
                device,
                time,
                payload: Bytes::copy_from_slice(payload),
                idempotency_key,
            })))
        }
        KIND_ACK => Stored::Hub(Record::Ack {
            id: EventId(r.u64()?),
            at: Timestamp(r.i64()?),
            device: r.device()?,
            status: Arc::from(r.str32()?),
        }),
        KIND_JOINED => {
            let head = EventId(r.u64()?);
            let at = Timestamp(r.i64()?);
            Stored::Hub(Record::Joined {
                head,
                at,
                subscription: r.pattern()?,
                device: r.device()?,
            })
        }
        KIND_CURSOR => {
            let cursor = EventId(r.u64()?);
            let at = Timestamp(r.i64()?);
            Stored::Hub(Record::Cursor {
                cursor,
                at,
                subscription: r.pattern()?,
                device: r.device()?,
            })
        }
        KIND_ACKING => {
            let id = EventId(r.u64()?);
            let at = Timestamp(r.i64()?);
            Stored::Hub(Record::Acking {
                id,
                at,
                subscription: r.pattern()?,
                device: r.device()?,
            })
        }
        KIND_ACKED_UPTO => {
            let upto = EventId(r.u64()?);
            let at = Timestamp(r.i64()?);
            let subscription = r.pattern()?;
            let device = r.device()?;
            let n = r.u32()? as usize;
            // At least 10 bytes each: no allocation past the record.
            let mut channels: Vec<(ChannelName, EventId)> =
                Vec::with_capacity(n.min(r.bytes.len() / 10));
            for _ in 0..n {
                let channel = r.channel()?;
                if channels.last().is_some_and(|(last, _)| *last >= channel) {
                    return Err(DecodeError::Malformed("channels out of order"));
                }
                channels.push((channel, EventId(r.u64()?)));
            }
            Stored::Hub(Record::AckedUpto {
                upto,
                at,
                subscription,
                device,
                channels,
            })
        }
        KIND_REPLAYED => {
            let at = Timestamp(r.i64()?);
            let device = r.device()?;
            let n = r.u32()? as usize;
            let mut ids = Vec::with_capacity(n.min(r.bytes.len() / 8));
            for _ in 0..n {
                let id = EventId(r.u64()?);
                // As written: in id order, once each (so one byte string
                // per record).
                if ids.last().is_some_and(|last| *last >= id) {
                    return Err(DecodeError::Malformed("replayed ids out of order"));
                }
                ids.push(id);
            }
            if ids.is_empty() {
                return Err(DecodeError::Malformed("a replay of no events"));
            }
            Stored::Hub(Record::Replayed { device, ids, at })
        }
        KIND_PRESENCE => {
            let at = Timestamp(r.i64()?);
            let flags = r.u8()?;
            if flags & !PRESENCE_FLAGS != 0 {
                return Err(DecodeError::Malformed("unknown presence flags"));
            }
            let last = EventId(r.u64()?);
            if flags & 2 == 0 && last != EventId::ZERO {
                return Err(DecodeError::Malformed("a last event id without its flag"));
            }
            Stored::Hub(Record::Presence {
                at,
                online: flags & 1 != 0,
                last_event_id: (flags & 2 != 0).then_some(last),
                subscription: r.pattern()?,
                device: r.device()?,
            })
        }
        KIND_LEFT => {
            let at = Timestamp(r.i64()?);
            Stored::Hub(Record::Left {
                at,
                subscription: r.pattern()?,
                device: r.device()?,
            })
        }
        KIND_NOTICE => {
            let id = EventId(r.u64()?);
            let at = Timestamp(r.i64()?);
            let sent = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Malformed("a flag is neither 0 nor 1")),
            };
            Stored::Hub(Record::Notice {
                id,
                at,
                sent,
                device: r.device()?,
            })
        }
        KIND_TOKEN => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(r.take(32)?);
            let at = Timestamp(r.i64()?);
            let flags = r.u8()?;
            let grants = match flags {
                0 => None,
                1 | 3 => {
                    let subject = r.device()?;
                    let mut lists = [Vec::new(), Vec::new()];
                    for list in &mut lists {
                        let b = r.take(2)?;
                        let n = u16::from_le_bytes([b[0], b[1]]);
                        for _ in 0..n {
                            list.push(r.pattern()?);
                        }
                    }
                    let [subscribe, publish] = lists;
                    Some(Grants {
                        subject,
                        subscribe,
                        publish,
                        admin: flags & 2 != 0,
                    })
                }
                _ => return Err(DecodeError::Malformed("unknown token flags")),
            };
            Stored::Hub(Record::Token {
                token: TokenHash(hash),
                grants,
                at,
            })
        }
        KIND_TRIM => {
            let upto = EventId(r.u64()?);
            Stored::Trim {
                upto,
                channel: r.channel()?,
            }
        }
        _ => return Err(DecodeError::Malformed("unknown record kind")),
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::Malformed("bytes left after the record"));
    }
    Ok((lsn, record))
}

#[cfg(test)]
mod tests;
