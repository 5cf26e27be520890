//! Validated names: [`ChannelName`], [`Pattern`], [`DeviceId`] and [`EventType`].
//!
//! Each type exists only if its text is valid (docs/PROTOCOL.md §1), so the hub, the
//! store and the SSE encoder never re-check a name and never panic on one.
//! Names are cheap to clone (`Arc<str>`): they are hash keys everywhere.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, NameKind};

/// Longest channel name or pattern, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest device id, in bytes.
pub const MAX_DEVICE_LEN: usize = 128;
/// Longest event type, in bytes (same charset and limit as a channel).
pub const MAX_EVENT_TYPE_LEN: usize = MAX_CHANNEL_LEN;
/// Event types with this prefix belong to the server's control events.
pub const RESERVED_EVENT_PREFIX: &str = "pere.";

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

fn is_device_byte(b: u8) -> bool {
    is_channel_byte(b) || b == b'@'
}

/// Checks length and charset, naming the first offending byte in the error.
fn check(
    kind: NameKind,
    text: &str,
    max: usize,
    allowed: fn(u8) -> bool,
    allowed_desc: &'static str,
) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidName {
        kind,
        name: printable(text),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if text.len() > max {
        return Err(invalid(format!(
            "it is {} bytes long, the limit is {max}",
            text.len()
        )));
    }
    if let Some((at, c)) = text.char_indices().find(|(_, c)| {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        bytes.len() != 1 || !allowed(bytes[0])
    }) {
        return Err(invalid(format!(
            "{} at byte {at} is not allowed (only {allowed_desc})",
            describe_char(c)
        )));
    }
    Ok(())
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\0' => "a NUL byte".into(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        // Invisible or reordering characters (line separators, bidi
        // overrides, combining marks) are named, never shown raw: an error
        // ends up in logs, which must read as they are.
        c if !matches!(c, '\'' | '"' | '\\') && c.escape_debug().nth(1).is_some() => {
            format!("character U+{:04X}", c as u32)
        }
        c => format!("`{c}`"),
    }
}

/// Shortens and escapes a rejected name so an error message stays readable
/// and can never smuggle control characters into a log line.
pub(crate) fn printable(text: &str) -> String {
    const SHOWN: usize = 64;
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

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A channel name: 1–200 bytes of `A-Z a-z 0-9 _ - . :`; `.` separates segments.
    ChannelName
);

impl ChannelName {
    /// Validates `text` as a channel name (docs/PROTOCOL.md §1).
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the offending byte or the length.
    pub fn new(text: &str) -> Result<Self, Error> {
        check(
            NameKind::Channel,
            text,
            MAX_CHANNEL_LEN,
            is_channel_byte,
            "A-Z a-z 0-9 _ - . :",
        )?;
        Ok(Self(Arc::from(text)))
    }

    /// The `.`-separated segments of the name.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

name_type!(
    /// A device id: 1–128 bytes of `A-Z a-z 0-9 _ - . : @`.
    DeviceId
);

impl DeviceId {
    /// Validates `text` as a device id (docs/PROTOCOL.md §1).
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the offending byte or the length.
    pub fn new(text: &str) -> Result<Self, Error> {
        check(
            NameKind::Device,
            text,
            MAX_DEVICE_LEN,
            is_device_byte,
            "A-Z a-z 0-9 _ - . : @",
        )?;
        Ok(Self(Arc::from(text)))
    }
}

name_type!(
    /// An SSE event type chosen by a publisher: a channel-like name outside the
    /// reserved `pere.` prefix. The default type `message` is written as no
    /// `event:` line at all.
    EventType
);

impl EventType {
    /// Validates `text` as a publisher's event type (docs/PROTOCOL.md §2).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad charset or length, or for the reserved
    /// `pere.` prefix.
    pub fn new(text: &str) -> Result<Self, Error> {
        check(
            NameKind::EventType,
            text,
            MAX_EVENT_TYPE_LEN,
            is_channel_byte,
            "A-Z a-z 0-9 _ - . :",
        )?;
        if text.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(Error::InvalidName {
                kind: NameKind::EventType,
                name: printable(text),
                reason: format!("the prefix `{RESERVED_EVENT_PREFIX}` is reserved for the server"),
            });
        }
        Ok(Self(Arc::from(text)))
    }

    /// Whether this is the default type, `message`.
    pub fn is_message(&self) -> bool {
        &*self.0 == "message"
    }
}

/// One segment of a [`Pattern`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**` (last segment only): one or more segments.
    Rest,
}

/// A subscription: a channel name, or a pattern where a whole segment may be
/// `*` (exactly one segment) or the last segment may be `**` (one or more).
///
/// `orders.*` matches `orders.eu` but not `orders.eu.paris`; `orders.**`
/// matches both. A pattern without wildcards is an exact channel.
#[derive(Clone)]
pub struct Pattern {
    text: Arc<str>,
    segments: Arc<[Segment]>,
    exact: Option<ChannelName>,
}

impl Pattern {
    /// Validates `text` as a channel name or pattern (docs/PROTOCOL.md §1).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad charset or length, a `*` or `**`
    /// mixed with other characters in one segment, or `**` not last.
    pub fn new(text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidName {
            kind: NameKind::Pattern,
            name: printable(text),
            reason: reason.to_string(),
        };
        check(
            NameKind::Pattern,
            text,
            MAX_CHANNEL_LEN,
            |b| is_channel_byte(b) || b == b'*',
            "A-Z a-z 0-9 _ - . : and whole-segment * or **",
        )?;
        let parts: Vec<&str> = text.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "*" => Segment::One,
                "**" if i == last => Segment::Rest,
                "**" => return Err(invalid("`**` may only be the last segment")),
                p if p.contains('*') => {
                    return Err(invalid(
                        "a wildcard must be a whole segment (`a.*`, not `a*`)",
                    ));
                }
                p => Segment::Literal(p.into()),
            };
            segments.push(segment);
        }
        let exact = if segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            Some(ChannelName::new(text)?)
        } else {
            None
        };
        Ok(Self {
            text: Arc::from(text),
            segments: segments.into(),
            exact,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The channel, when this pattern has no wildcard.
    pub fn exact(&self) -> Option<&ChannelName> {
        self.exact.as_ref()
    }

    /// Whether `channel` is matched by this pattern.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        if let Some(exact) = &self.exact {
            return exact == channel;
        }
        let mut parts = channel.segments();
        for segment in self.segments.iter() {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every channel this pattern matches is also matched by `other`
    /// (used to check a subscription against a token's grants).
    pub fn is_covered_by(&self, other: &Pattern) -> bool {
        // Walk both segment lists; `other` must be at least as general at
        // every position.
        let (mine, theirs) = (&self.segments, &other.segments);
        let mut i = 0;
        loop {
            match (mine.get(i), theirs.get(i)) {
                (None, None) => return true,
                (_, Some(Segment::Rest)) => return mine.get(i).is_some(),
                (Some(Segment::Rest), _) => return false,
                (Some(_), Some(Segment::One)) => {}
                (Some(Segment::Literal(a)), Some(Segment::Literal(b))) if a == b => {}
                _ => return false,
            }
            i += 1;
        }
    }

    /// Whether some channel is matched by both patterns (a stream on this
    /// pattern still receives something under a grant of `other`).
    pub fn overlaps(&self, other: &Pattern) -> bool {
        // Segments are independent: position by position they must be able
        // to agree, and a `**` on either side absorbs whatever (non-empty)
        // rest the other has.
        let (mine, theirs) = (&self.segments, &other.segments);
        let mut i = 0;
        loop {
            match (mine.get(i), theirs.get(i)) {
                (None, None) => return true,
                (Some(Segment::Rest), Some(_)) | (Some(_), Some(Segment::Rest)) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Segment::Literal(a)), Some(Segment::Literal(b))) if a != b => return false,
                _ => {}
            }
            i += 1;
        }
    }
}

impl From<ChannelName> for Pattern {
    fn from(channel: ChannelName) -> Self {
        let segments: Arc<[Segment]> = channel
            .segments()
            .map(|s| Segment::Literal(s.into()))
            .collect();
        Self {
            text: channel.0.clone(),
            segments,
            exact: Some(channel),
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for Pattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl Borrow<str> for Pattern {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).expect("valid channel in test")
    }

    fn pat(s: &str) -> Pattern {
        Pattern::new(s).expect("valid pattern in test")
    }

    #[test]
    fn invisible_characters_are_named_not_shown_in_errors() {
        // Found by the `names` fuzz target: a bidi override reached the
        // error message raw and could reorder a log line.
        for (name, shown) in [
            ("a\u{202e}b", "character U+202E"),
            ("a\u{2028}b", "character U+2028"),
            ("a\u{301}", "character U+0301"),
            ("a\u{7f}", "control character U+007F"),
        ] {
            let message = ChannelName::new(name).unwrap_err().to_string();
            assert!(message.contains(shown), "{message}");
            assert!(!message.chars().any(|c| c == name.chars().nth(1).unwrap()));
        }
        let message = ChannelName::new("é").unwrap_err().to_string();
        assert!(message.contains("`é` at byte 0"), "{message}");
    }

    #[test]
    fn channel_names_follow_the_protocol_charset() {
        for ok in [
            "a",
            "CHANNEL_1",
            "orders.eu.paris",
            "a-b_c:d.e",
            &"x".repeat(200),
        ] {
            assert!(ChannelName::new(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a*",
            "é",
            "a\0",
            "a\nb",
            &"x".repeat(201),
            "..%2F",
        ] {
            assert!(ChannelName::new(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn error_names_the_offending_character() {
        let err = ChannelName::new("a b").unwrap_err().to_string();
        assert!(err.contains("a space"), "{err}");
        let err = ChannelName::new("a\0b").unwrap_err().to_string();
        assert!(err.contains("NUL"), "{err}");
        assert!(!err.contains('\0'), "raw NUL must not reach the message");
    }

    #[test]
    fn device_ids_allow_at_sign() {
        assert!(DeviceId::new("user@host").is_ok());
        assert!(DeviceId::new("W0039123456789").is_ok());
        assert!(DeviceId::new(&"d".repeat(128)).is_ok());
        assert!(DeviceId::new(&"d".repeat(129)).is_err());
        assert!(DeviceId::new("a/b").is_err());
        assert!(DeviceId::new("").is_err());
    }

    #[test]
    fn event_types_reject_the_reserved_prefix() {
        assert!(EventType::new("update").is_ok());
        assert!(EventType::new("message").unwrap().is_message());
        assert!(EventType::new("pere.hello").is_err());
        assert!(EventType::new("a b").is_err());
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        let p = pat("orders.*");
        assert!(p.matches(&ch("orders.eu")));
        assert!(!p.matches(&ch("orders.eu.paris")));
        assert!(!p.matches(&ch("orders")));
        assert!(!p.matches(&ch("other.eu")));
        let mid = pat("orders.*.paris");
        assert!(mid.matches(&ch("orders.eu.paris")));
        assert!(!mid.matches(&ch("orders.eu.lyon")));
    }

    #[test]
    fn double_star_matches_one_or_more_segments() {
        let p = pat("orders.**");
        assert!(p.matches(&ch("orders.eu")));
        assert!(p.matches(&ch("orders.eu.paris")));
        assert!(!p.matches(&ch("orders")));
        assert!(pat("**").matches(&ch("anything.at.all")));
    }

    #[test]
    fn wildcards_must_be_whole_segments() {
        for bad in ["orders*", "or*ders.x", "a.**.b", "***", "a.b*"] {
            assert!(Pattern::new(bad).is_err(), "{bad} should be invalid");
        }
        assert!(pat("a.b").exact().is_some());
        assert!(pat("a.*").exact().is_none());
    }

    #[test]
    fn coverage_of_patterns_by_grants() {
        assert!(pat("orders.eu").is_covered_by(&pat("orders.*")));
        assert!(pat("orders.*").is_covered_by(&pat("orders.**")));
        assert!(pat("orders.eu.paris").is_covered_by(&pat("orders.**")));
        assert!(!pat("orders.**").is_covered_by(&pat("orders.*")));
        assert!(!pat("orders.*").is_covered_by(&pat("orders.eu")));
        assert!(pat("a").is_covered_by(&pat("**")));
        assert!(!pat("a.b").is_covered_by(&pat("a")));
    }

    #[test]
    fn overlapping_patterns_share_a_channel() {
        assert!(pat("orders.*").overlaps(&pat("orders.eu")));
        assert!(pat("orders.eu").overlaps(&pat("*.eu")));
        assert!(pat("orders.**").overlaps(&pat("*.eu.paris")));
        assert!(pat("*.b").overlaps(&pat("a.*")));
        assert!(pat("**").overlaps(&pat("a.b.c")));
        assert!(!pat("orders.*").overlaps(&pat("orders.eu.paris")));
        assert!(!pat("orders.**").overlaps(&pat("orders")));
        assert!(!pat("a.*").overlaps(&pat("b.*")));
        assert!(!pat("a").overlaps(&pat("a.b")));
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors_without_panicking(s in "\\PC{0,40}") {
            let _ = ChannelName::new(&s);
            let _ = Pattern::new(&s);
            let _ = DeviceId::new(&s);
            let _ = EventType::new(&s);
        }

        #[test]
        fn an_exact_pattern_matches_only_its_channel(
            a in "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}",
            b in "[a-z]{1,5}(\\.[a-z]{1,5}){0,3}",
        ) {
            let p = pat(&a);
            prop_assert_eq!(p.matches(&ch(&b)), a == b);
        }

        #[test]
        fn coverage_agrees_with_matching(
            chan in "[ab](\\.[ab]){0,3}",
            p in "([ab*])(\\.[ab*]){0,2}(\\.\\*\\*)?",
            g in "([ab*])(\\.[ab*]){0,2}(\\.\\*\\*)?",
        ) {
            let (p, g, c) = (pat(&p), pat(&g), ch(&chan));
            if p.is_covered_by(&g) && p.matches(&c) {
                prop_assert!(g.matches(&c), "{p} covered by {g} but {c} escapes");
            }
        }
    }
}
