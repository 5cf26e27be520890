//! What goes on the log ([`NewEntry`], [`IdemKey`]), what an append
//! answers ([`Appended`]), what a tail reads back ([`Entry`]), and the
//! parsing of the Redis replies that carry them.
//!
//! Replies are parsed from [`redis::Value`] by hand rather than through
//! redis-rs's typed stream replies, which would copy every blob into a
//! `HashMap` of `Value`s first: here each blob's `Vec<u8>` becomes the
//! entry's [`Bytes`] without a copy.

use bytes::Bytes;
use redis::Value;

use crate::LogPos;
use crate::error::{EngineError, Result};

/// One node batch to append: its encoded records, plus one idempotency key
/// slot per event it publishes.
#[derive(Clone, Debug, Default)]
pub struct NewEntry {
    /// The batch's encoded records: opaque to the engine.
    pub blob: Bytes,
    /// One per event the batch publishes, in order: `idem.len()` is the
    /// entry's event count.
    pub idem: Vec<Option<IdemKey>>,
    /// The caller's number for this entry, rising from one entry to the
    /// next, or `None`. The log takes a serial at most once, and none
    /// below the highest it took from this engine (this process: another
    /// engine, even for the same node, counts on its own): a retry of an
    /// append whose outcome is unknown, with the same serial, lands at
    /// most once, whichever of the two Redis runs first
    /// ([`Appended::again`], [`EngineError::Stale`]).
    pub serial: Option<u64>,
}

/// A publisher's idempotency key, scoped like docs/PROTOCOL.md §2 says: per
/// channel and per publisher.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdemKey {
    /// The channel published to.
    pub channel: String,
    /// The publisher's identity (its token), if auth is on.
    pub publisher: Option<String>,
    /// The `Idempotency-Key` header.
    pub key: String,
}

impl IdemKey {
    /// The Redis key under `prefix`, unambiguous for any strings: each part
    /// is length-prefixed, and "no publisher" is `-` (never a length).
    pub(crate) fn redis_key(&self, prefix: &str) -> String {
        let publisher = match &self.publisher {
            None => "-".to_owned(),
            Some(p) => format!("{}:{p}", p.len()),
        };
        format!(
            "{prefix}:idem:{}:{}:{publisher}:{}",
            self.channel.len(),
            self.channel,
            self.key
        )
    }
}

/// What [`crate::Engine::append`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Where the entry sits on the log.
    pub pos: LogPos,
    /// The first event id: event `i` of the entry has id `first_id + i`
    /// (0 when the entry publishes no event).
    pub first_id: u64,
    /// Redis `TIME` in µs when the entry was appended.
    pub time: u64,
    /// `(event index, original id)` of each event whose idempotency key was
    /// already known: that event must not be published again, and its
    /// publisher gets the original id.
    pub duplicates: Vec<(u32, u64)>,
    /// The log had taken this [`NewEntry::serial`] already: nothing was
    /// appended, `pos` is where the earlier append landed, and `first_id`
    /// and `time` are 0.
    pub again: bool,
}

/// An entry read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its position.
    pub pos: LogPos,
    /// The position of the entry before it when it was appended (the log's
    /// chain, checked by the tail).
    pub prev: LogPos,
    /// The node that appended it.
    pub node: String,
    /// The batch's encoded records, as appended.
    pub blob: Bytes,
    /// The first event id (see [`Appended::first_id`]).
    pub first_id: u64,
    /// How many events the batch publishes.
    pub events: u32,
    /// The duplicates found at append time (see [`Appended::duplicates`]).
    pub duplicates: Vec<(u32, u64)>,
    /// Redis `TIME` in µs at the append: the cluster's clock for this entry.
    pub time: u64,
}

/// What an event of an entry became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A new event with this id.
    New(u64),
    /// A retry of an event published before with this id.
    Duplicate(u64),
}

impl Entry {
    /// What event `index` of this entry became: a new id, or a duplicate of
    /// an earlier one. `None` past the entry's events.
    pub fn slot(&self, index: u32) -> Option<Slot> {
        if index >= self.events {
            return None;
        }
        Some(match self.duplicates.iter().find(|(i, _)| *i == index) {
            Some((_, original)) => Slot::Duplicate(*original),
            None => Slot::New(self.first_id + u64::from(index)),
        })
    }
}

fn protocol(what: impl std::fmt::Display) -> EngineError {
    EngineError::Protocol(what.to_string())
}

fn int(value: &Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(protocol(format_args!("expected an integer, got {other:?}"))),
    }
}

fn uint(value: &Value) -> Result<u64> {
    u64::try_from(int(value)?).map_err(|_| protocol("a negative id"))
}

fn bulk(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(protocol(format_args!("expected a string, got {other:?}"))),
    }
}

fn number<T: std::str::FromStr>(field: &str, bytes: &[u8]) -> Result<T> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format_args!("field `{field}` is not a number")))
}

/// Parses the append script's reply `{pos, first, time, i1, id1, …}`.
pub(crate) fn parse_appended(reply: Value) -> Result<Appended> {
    let Value::Array(items) = reply else {
        return Err(protocol(format_args!("append replied {reply:?}")));
    };
    if let [Value::BulkString(what), value] = items.as_slice() {
        return match what.as_slice() {
            b"again" => Ok(Appended {
                pos: LogPos::from_bytes(&bulk(value.clone())?)?,
                first_id: 0,
                time: 0,
                duplicates: Vec::new(),
                again: true,
            }),
            b"stale" => Err(EngineError::Stale {
                last: number("serial", &bulk(value.clone())?)?,
            }),
            other => Err(protocol(format_args!(
                "append replied {:?}",
                String::from_utf8_lossy(other)
            ))),
        };
    }
    if items.len() < 3 || items.len() % 2 == 0 {
        return Err(protocol(format_args!(
            "append replied {} items",
            items.len()
        )));
    }
    let mut items = items.into_iter();
    let pos = LogPos::from_bytes(&bulk(items.next().unwrap_or_default())?)?;
    let first_id = uint(&items.next().unwrap_or_default())?;
    let time = uint(&items.next().unwrap_or_default())?;
    let mut duplicates = Vec::new();
    while let (Some(index), Some(original)) = (items.next(), items.next()) {
        let index = u32::try_from(int(&index)?).map_err(|_| protocol("a bad event index"))?;
        duplicates.push((index, uint(&original)?));
    }
    Ok(Appended {
        pos,
        first_id,
        time,
        duplicates,
        again: false,
    })
}

/// Parses the `dup` field: `i:id,i:id` or empty.
fn parse_duplicates(bytes: &[u8]) -> Result<Vec<(u32, u64)>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    bytes
        .split(|b| *b == b',')
        .map(|pair| {
            let colon = pair
                .iter()
                .position(|b| *b == b':')
                .ok_or_else(|| protocol("field `dup` is not index:id pairs"))?;
            Ok((
                number("dup", &pair[..colon])?,
                number("dup", &pair[colon + 1..])?,
            ))
        })
        .collect()
}

/// Parses one stream entry `[id, [field, value, …]]`.
pub(crate) fn parse_entry(value: Value) -> Result<Entry> {
    let Value::Array(parts) = value else {
        return Err(protocol(format_args!("a stream entry is {value:?}")));
    };
    let [id, fields] = <[Value; 2]>::try_from(parts)
        .map_err(|parts| protocol(format_args!("a stream entry has {} parts", parts.len())))?;
    let pos = LogPos::from_bytes(&bulk(id)?)?;
    let fields = match fields {
        Value::Array(fields) if fields.len() % 2 == 0 => fields,
        other => return Err(protocol(format_args!("entry {pos} has fields {other:?}"))),
    };
    let (mut node, mut prev, mut blob, mut first, mut events, mut time, mut dup) =
        (None, None, None, None, None, None, None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let value = bulk(value)?;
        match bulk(name)?.as_slice() {
            b"node" => {
                node = Some(String::from_utf8(value).map_err(|_| protocol("a node id in binary"))?)
            }
            b"prev" => prev = Some(LogPos::from_bytes(&value)?),
            b"blob" => blob = Some(Bytes::from(value)),
            b"first" => first = Some(number("first", &value)?),
            b"events" => events = Some(number("events", &value)?),
            b"time" => time = Some(number("time", &value)?),
            b"dup" => dup = Some(parse_duplicates(&value)?),
            // Fields a later version adds are not ours to judge.
            _ => {}
        }
    }
    let missing = |field: &str| protocol(format_args!("entry {pos} has no `{field}`"));
    Ok(Entry {
        pos,
        prev: prev.ok_or_else(|| missing("prev"))?,
        node: node.ok_or_else(|| missing("node"))?,
        blob: blob.ok_or_else(|| missing("blob"))?,
        first_id: first.ok_or_else(|| missing("first"))?,
        events: events.ok_or_else(|| missing("events"))?,
        duplicates: dup.ok_or_else(|| missing("dup"))?,
        time: time.ok_or_else(|| missing("time"))?,
    })
}

/// Parses an `XREAD` reply on one stream: nil on timeout, else
/// `[[stream, [entry, …]]]`.
pub(crate) fn parse_xread(reply: Value) -> Result<Vec<Entry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => return Err(protocol(format_args!("XREAD replied {other:?}"))),
    };
    let mut entries = Vec::new();
    for stream in streams {
        let Value::Array(parts) = stream else {
            return Err(protocol("XREAD replied a stream that is not a pair"));
        };
        let [_name, list] = <[Value; 2]>::try_from(parts)
            .map_err(|_| protocol("XREAD replied a stream that is not a pair"))?;
        let Value::Array(list) = list else {
            return Err(protocol("XREAD replied a stream without entries"));
        };
        for entry in list {
            entries.push(parse_entry(entry)?);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            s(id),
            Value::Array(fields.iter().flat_map(|(k, v)| [s(k), s(v)]).collect()),
        ])
    }

    const FULL: &[(&str, &str)] = &[
        ("node", "a"),
        ("prev", "5-0"),
        ("events", "3"),
        ("first", "100"),
        ("time", "99"),
        ("dup", "1:7,2:8"),
        ("blob", "xyz"),
    ];

    #[test]
    fn a_full_entry_parses_and_its_slots_say_new_or_duplicate() {
        let entry = parse_entry(entry_value("6-1", FULL)).unwrap();
        assert_eq!(entry.pos, LogPos { ms: 6, seq: 1 });
        assert_eq!(entry.prev, LogPos { ms: 5, seq: 0 });
        assert_eq!(entry.node, "a");
        assert_eq!(&entry.blob[..], b"xyz");
        assert_eq!((entry.first_id, entry.events, entry.time), (100, 3, 99));
        assert_eq!(entry.duplicates, vec![(1, 7), (2, 8)]);
        assert_eq!(entry.slot(0), Some(Slot::New(100)));
        assert_eq!(entry.slot(1), Some(Slot::Duplicate(7)));
        assert_eq!(entry.slot(3), None);
    }

    #[test]
    fn entries_missing_a_field_or_malformed_are_protocol_errors() {
        for skip in 0..FULL.len() {
            let fields: Vec<_> = FULL
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, f)| *f)
                .collect();
            let err = parse_entry(entry_value("6-1", &fields)).unwrap_err();
            assert!(matches!(err, EngineError::Protocol(_)), "{skip}: {err}");
        }
        let bad: &[(&str, &str)] = &[
            ("events", "-1"),
            ("first", "x"),
            ("dup", "1"),
            ("dup", "1:x"),
            ("prev", "5"),
        ];
        for (field, value) in bad {
            let fields: Vec<_> = FULL
                .iter()
                .map(|(k, v)| if k == field { (*k, *value) } else { (*k, *v) })
                .collect();
            assert!(
                parse_entry(entry_value("6-1", &fields)).is_err(),
                "{field}={value}"
            );
        }
        assert!(parse_entry(entry_value("x", FULL)).is_err());
        assert!(parse_entry(Value::Int(1)).is_err());
        assert!(parse_entry(Value::Array(vec![s("1-1")])).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut fields = FULL.to_vec();
        fields.push(("later", "1"));
        assert!(parse_entry(entry_value("6-1", &fields)).is_ok());
    }

    #[test]
    fn xread_replies_parse_in_order_and_nil_is_no_entry() {
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        let reply = Value::Array(vec![Value::Array(vec![
            s("pere:log"),
            Value::Array(vec![entry_value("6-1", FULL), entry_value("6-2", FULL)]),
        ])]);
        let entries = parse_xread(reply).unwrap();
        assert_eq!(
            entries
                .iter()
                .map(|e| e.pos.to_string())
                .collect::<Vec<_>>(),
            ["6-1", "6-2"]
        );
        assert!(parse_xread(Value::Array(vec![s("x")])).is_err());
        assert!(parse_xread(Value::Okay).is_err());
    }

    #[test]
    fn append_replies_parse_with_their_duplicates() {
        let reply = Value::Array(vec![
            s("7-0"),
            Value::Int(10),
            Value::Int(9),
            Value::Int(1),
            Value::Int(4),
        ]);
        let appended = parse_appended(reply).unwrap();
        assert_eq!(appended.pos, LogPos { ms: 7, seq: 0 });
        assert_eq!((appended.first_id, appended.time), (10, 9));
        assert_eq!(appended.duplicates, vec![(1, 4)]);
        assert!(parse_appended(Value::Array(vec![s("7-0"), Value::Int(1)])).is_err());
        assert!(
            parse_appended(Value::Array(vec![s("7-0"), Value::Int(-1), Value::Int(1)])).is_err()
        );
    }

    #[test]
    fn a_serial_taken_before_or_overtaken_appends_nothing() {
        let again = parse_appended(Value::Array(vec![s("again"), s("7-3")])).unwrap();
        assert!(again.again);
        assert_eq!(again.pos, LogPos { ms: 7, seq: 3 });
        assert_eq!(
            parse_appended(Value::Array(vec![s("stale"), s("12")])),
            Err(EngineError::Stale { last: 12 })
        );
        for bad in [["again", "x"], ["stale", "-1"], ["other", "1"]] {
            assert!(
                parse_appended(Value::Array(vec![s(bad[0]), s(bad[1])])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn idempotency_keys_are_unambiguous() {
        let key = |channel: &str, publisher: Option<&str>, key: &str| {
            IdemKey {
                channel: channel.into(),
                publisher: publisher.map(Into::into),
                key: key.into(),
            }
            .redis_key("p")
        };
        assert_eq!(key("a", None, "k"), "p:idem:1:a:-:k");
        assert_eq!(key("a", Some("b"), "k"), "p:idem:1:a:1:b:k");
        // The same bytes split differently give different keys.
        assert_ne!(key("a:1", Some("b"), "k"), key("a", Some("1:b"), "k"));
        assert_ne!(key("a", Some("-"), "k"), key("a", None, "k"));
    }
}
