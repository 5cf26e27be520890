//! [`LogPos`]: a position in the cluster log, which is a Redis Stream id.

use std::fmt;
use std::str::FromStr;

use crate::error::EngineError;

/// A position in the cluster log: the Redis Stream id `MS-SEQ` of an entry
/// (the primary's clock in milliseconds at the append, and a counter within
/// that millisecond). Positions are totally ordered as the log is.
///
/// [`LogPos::ZERO`] is "before the first entry": tailing from it reads the
/// whole log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Milliseconds since the Unix epoch, by the primary's clock.
    pub ms: u64,
    /// Counter within that millisecond.
    pub seq: u64,
}

impl LogPos {
    /// Before every entry.
    pub const ZERO: LogPos = LogPos { ms: 0, seq: 0 };

    /// Parses a stream id given as bytes by Redis.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<LogPos, EngineError> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                EngineError::Protocol(format!(
                    "`{}` is not a stream id",
                    String::from_utf8_lossy(bytes)
                ))
            })
    }
}

impl fmt::Display for LogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The error of parsing a [`LogPos`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a log position (MS-SEQ)")]
pub struct ParseLogPosError(String);

impl FromStr for LogPos {
    type Err = ParseLogPosError;

    fn from_str(s: &str) -> Result<LogPos, ParseLogPosError> {
        let err = || ParseLogPosError(s.to_owned());
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        // `u64::from_str` takes a leading `+`; Redis never writes one.
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(LogPos {
            ms: ms.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_print_and_order_like_stream_ids() {
        let a: LogPos = "1700000000000-0".parse().unwrap();
        let b: LogPos = "1700000000000-12".parse().unwrap();
        let c: LogPos = "1700000000001-0".parse().unwrap();
        assert!(LogPos::ZERO < a && a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-12");
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-+2",
            "1-2-3",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<LogPos>().is_err(), "{bad}");
        }
    }
}
