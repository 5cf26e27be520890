//! Durations as operators write them on a command line or in a `PERE_*`
//! variable: one syntax for the server and both tools.

use std::time::Duration;

/// The units a duration may carry, for error messages and help texts.
pub const UNITS: &str = "ms, s, m, h or d";

/// Parses a duration: seconds (`90`, `0.5`), or a number with `ms`, `s`,
/// `m`, `h` or `d` (`500ms`, `90s`, `1.5m`, `24h`, `7d`).
///
/// # Errors
/// A sentence naming the text and what would be accepted: not a
/// non-negative number, an unknown unit, or too long to represent.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit.trim_start() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use {UNITS})"
            ));
        }
    };
    let not_a_duration = || format!("`{text}` is not a duration (try 90, 0.5, 500ms, 15m, 24h)");
    // Whole numbers are exact (no float rounding of 86400000 ms and the
    // like); a fraction is rounded to the millisecond.
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(scale)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{text}` is too long a duration"));
    }
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0 && !number.starts_with('.'))
        .ok_or_else(not_a_duration)?;
    let ms = (n * scale as f64).round();
    if ms > u64::MAX as f64 {
        return Err(format!("`{text}` is too long a duration"));
    }
    Ok(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_unit_and_fractions() {
        let ms = |t: &str| parse_duration(t).unwrap().as_millis();
        assert_eq!(ms("90"), 90_000);
        assert_eq!(ms(" 90s "), 90_000);
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("0.5"), 500);
        assert_eq!(ms("1.5m"), 90_000);
        assert_eq!(ms("24h"), 86_400_000);
        assert_eq!(ms("7d"), 604_800_000);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms("0.0004"), 0);
        assert_eq!(ms("18446744073709551615ms"), u64::MAX as u128);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for bad in ["", "s", "-1", "1e3", "abc", ".5", "1.2.3", "NaN", "inf"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("not a duration") || err.contains("unknown unit"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_duration("5 weeks")
                .unwrap_err()
                .contains("unknown unit `weeks`")
        );
        assert!(
            parse_duration("99999999999999999999d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(
            parse_duration("18446744073709551615d")
                .unwrap_err()
                .contains("too long")
        );
    }
}
