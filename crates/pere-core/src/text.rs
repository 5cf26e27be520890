//! Text from clients shown to people: in the server's log, on a
//! subscriber's terminal.

use std::fmt;

/// Shows a client's free text (a receipt's status, an event's data) on one
/// line: control characters escaped (`\n`, `\u{1b}`), tabs kept,
/// everything else as it is. Printed raw, a newline in it made a line of
/// the client's choosing (a forged log record), and an escape sequence
/// reached an operator's terminal.
#[derive(Clone, Copy, Debug)]
pub struct OneLine<'a>(pub &'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c.is_control() && c != '\t') {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let shown = |s: &str| OneLine(s).to_string();
        assert_eq!(shown(r#"{"a":"b\\c"} can't é"#), r#"{"a":"b\\c"} can't é"#);
        assert_eq!(shown("a\tb"), "a\tb");
        assert_eq!(
            shown("ok\n2026 INFO forged\u{1b}[2J\r\u{85}"),
            r"ok\n2026 INFO forged\u{1b}[2J\r\u{85}"
        );
        assert!(!shown("x\u{0}\u{7f}y").chars().any(char::is_control));
    }
}
