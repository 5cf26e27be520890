//! `names`: PROTOCOL §1's names and patterns, against a spec written here.

use pere_core::{ChannelName, DeviceId, EventType, Pattern};

use super::{Input, assert_printable, text};

// ---- names ----------------------------------------------------------------

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// PROTOCOL §1 for channels, written independently of `pere_core`.
fn spec_channel(s: &str) -> bool {
    (1..=200).contains(&s.len()) && s.bytes().all(is_channel_byte)
}

fn spec_device(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| is_channel_byte(b) || b == b'@')
}

fn spec_event_type(s: &str) -> bool {
    spec_channel(s) && !s.starts_with("pere.")
}

fn spec_pattern(s: &str) -> bool {
    let segments: Vec<&str> = s.split('.').collect();
    (1..=200).contains(&s.len())
        && s.bytes().all(|b| is_channel_byte(b) || b == b'*')
        && segments.iter().enumerate().all(|(i, seg)| {
            !seg.contains('*') || *seg == "*" || (*seg == "**" && i + 1 == segments.len())
        })
}

/// Whether the segments of a pattern match those of a channel: `*` is one
/// segment, a last `**` one or more.
fn spec_matches(pattern: &[&str], channel: &[&str]) -> bool {
    match pattern.split_first() {
        None => channel.is_empty(),
        Some((&"**", [])) => !channel.is_empty(),
        Some((&"*", rest)) => !channel.is_empty() && spec_matches(rest, &channel[1..]),
        Some((literal, rest)) => {
            channel.first() == Some(literal) && spec_matches(rest, &channel[1..])
        }
    }
}

/// Checks one name type against its spec: accepted exactly when the spec
/// says so, shown and serialized as written, rejected with a printable
/// error.
macro_rules! check_name {
    ($ty:ty, $spec:expr, $s:expr) => {{
        let s: &str = $s;
        let json = serde_json::to_string(s).expect("a string serializes");
        let parsed = <$ty>::new(s);
        assert_eq!(
            parsed.is_ok(),
            $spec(s),
            "{} {s:?}: {parsed:?}",
            stringify!($ty)
        );
        match &parsed {
            Ok(name) => {
                assert_eq!(name.as_str(), s);
                assert_eq!(name.to_string(), s);
                assert_eq!(s.parse::<$ty>().ok().as_ref(), Some(name));
                assert_eq!(serde_json::to_string(name).ok(), Some(json.clone()));
                let back: $ty = serde_json::from_str(&json).expect("its JSON reads back");
                assert_eq!(&back, name);
            }
            Err(err) => {
                assert_printable(&err.to_string());
                assert!(serde_json::from_str::<$ty>(&json).is_err());
            }
        }
        parsed.ok()
    }};
}

/// `names`: `ChannelName`, `Pattern`, `DeviceId` and `EventType` accept
/// exactly PROTOCOL §1, round-trip through `Display`, `as_str` and serde,
/// and pattern matching and grant coverage agree with the spec.
///
/// Input: three texts separated by `0xFF`.
pub fn names(data: &[u8]) {
    let mut input = Input::new(data);
    let texts = [text(input.field()), text(input.field()), text(input.rest())];
    let mut channels = Vec::new();
    let mut patterns = Vec::new();
    for s in &texts {
        channels.push(check_name!(ChannelName, spec_channel, s));
        patterns.push(check_name!(Pattern, spec_pattern, s));
        check_name!(DeviceId, spec_device, s);
        check_name!(EventType, spec_event_type, s);
    }
    for (pattern, channel) in patterns.iter().zip(&channels) {
        let Some(pattern) = pattern else { continue };
        assert_eq!(pattern.exact().is_some(), !pattern.as_str().contains('*'));
        assert_eq!(pattern.exact(), channel.as_ref());
        assert!(pattern.is_covered_by(pattern), "{pattern:?} covers itself");
        if let Some(channel) = channel {
            assert!(pattern.matches(channel));
            assert_eq!(&Pattern::from(channel.clone()), pattern);
        }
    }
    for (i, j, k) in [
        (0, 1, 2),
        (0, 2, 1),
        (1, 0, 2),
        (1, 2, 0),
        (2, 0, 1),
        (2, 1, 0),
    ] {
        let Some(pattern) = &patterns[i] else {
            continue;
        };
        if let Some(channel) = &channels[j] {
            let segments: Vec<&str> = pattern.as_str().split('.').collect();
            let parts: Vec<&str> = channel.segments().collect();
            assert_eq!(
                pattern.matches(channel),
                spec_matches(&segments, &parts),
                "{pattern:?} against {channel:?}"
            );
            // A channel is covered by a grant exactly when the grant
            // matches it.
            assert_eq!(
                Pattern::from(channel.clone()).is_covered_by(pattern),
                pattern.matches(channel),
                "{channel:?} covered by {pattern:?}"
            );
        }
        // Coverage is sound: whatever a covered pattern matches, the
        // covering one matches too.
        if let (Some(other), Some(channel)) = (&patterns[j], &channels[k])
            && pattern.is_covered_by(other)
            && pattern.matches(channel)
        {
            assert!(
                other.matches(channel),
                "{pattern:?} is covered by {other:?}, which misses {channel:?}"
            );
        }
    }
}
